//! `suanli token create|list|revoke`: the API tokens of a data dir ([`crate::auth::store`]).
//! They work on the token file whether the node runs or not (a running node reads the change
//! before its next request); `list` also asks the running node what each token has spent.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{anyhow, bail};
use clap::{Args, Subcommand};

use super::{ClientArgs, DataDirArg, output};
use crate::api::types::{TokenState, TokenView};
use crate::auth::store::{self, NewToken, TokenRecord};
use crate::clock::now_ms;
use crate::data_dir::DataDir;

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it (once: only its SHA-256 is stored).
    Create(CreateArgs),
    /// List the tokens, with what each has spent when the node is running.
    List {
        #[command(flatten)]
        data_dir: DataDirArg,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Revoke a token (by name or id); it is refused from the node's next request on.
    Revoke {
        #[command(flatten)]
        data_dir: DataDirArg,
        /// The token's name or id.
        token: String,
    },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    #[command(flatten)]
    pub data_dir: DataDirArg,
    /// A name for the token (unique; letters, digits, `-_.@`).
    #[arg(long)]
    pub name: String,
    /// Most credits its jobs and model requests may spend, in all (e.g. 250 or 0.5).
    #[arg(long, value_name = "CREDITS")]
    pub quota_credits: Option<String>,
    /// Most requests: N, N/s, N/m or N/h.
    #[arg(long, value_name = "R/s")]
    pub rate: Option<String>,
    /// Valid for: N followed by s, m, h or d (e.g. 30d).
    #[arg(long, value_name = "DURATION")]
    pub expires: Option<String>,
    /// Print the token and its record as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn execute(command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Create(args) => create(args),
        TokenCommand::List { data_dir, client } => list(data_dir, client).await,
        TokenCommand::Revoke { data_dir, token } => {
            let data_dir = DataDir::resolve(data_dir.data_dir)?;
            let record = store::revoke(&data_dir, &token, now_ms())?;
            output::line(&format!("revoked {} ({})", record.name, record.id))
        }
    }
}

fn create(args: CreateArgs) -> anyhow::Result<()> {
    let data_dir = DataDir::resolve(args.data_dir.data_dir)?;
    let now = now_ms();
    let new = NewToken {
        name: args.name,
        quota_micro: args
            .quota_credits
            .as_deref()
            .map(parse_credits)
            .transpose()?,
        rate_per_sec: args.rate.as_deref().map(parse_rate).transpose()?,
        expires_ms: args
            .expires
            .as_deref()
            .map(|text| {
                parse_duration(text).map(|duration| {
                    now.saturating_add(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
                })
            })
            .transpose()?,
    };
    let (record, token) = store::create(&data_dir, new, now)?;
    tracing::info!(name = %record.name, id = %record.id, "API token created");
    if args.json {
        return output::json(&serde_json::json!({
            "token": token,
            "id": record.id,
            "name": record.name,
            "expires_ms": record.expires_ms,
            "quota": record.quota_micro,
            "rate_per_sec": record.rate_per_sec,
        }));
    }
    // The token alone on stdout (for `TOKEN=$(suanli token create ...)`); the advice on stderr.
    output::note(&format!(
        "token {:?} ({}) created; it is shown only now: keep it secret",
        record.name, record.id
    ))?;
    output::line(&token)
}

async fn list(data_dir: DataDirArg, client: ClientArgs) -> anyhow::Result<()> {
    let data_dir = DataDir::resolve(data_dir.data_dir)?;
    let file = store::load(&store::tokens_path(&data_dir))?;
    // Spending lives in the node's database: ask the node, if it runs.
    let spent: Option<HashMap<String, TokenView>> = match client.client() {
        Ok(api) => match api.get_json::<Vec<TokenView>>("/v1/tokens").await {
            Ok(views) => Some(
                views
                    .into_iter()
                    .map(|view| (view.id.clone(), view))
                    .collect(),
            ),
            Err(error) => {
                output::note(&format!("spending not shown: {error:#}"))?;
                None
            }
        },
        Err(error) => return Err(error),
    };
    let now = now_ms();
    let views: Vec<TokenListing> = file
        .tokens
        .iter()
        .map(|record| TokenListing::new(record, spent.as_ref(), now))
        .collect();
    if client.json {
        return output::json(&views);
    }
    let credits = |micro: u64| suanli_protocol::Credits(micro).to_string();
    let rows: Vec<Vec<String>> = views
        .iter()
        .map(|view| {
            vec![
                view.id.clone(),
                view.name.clone(),
                output::label(&view.state),
                output::or_dash(view.quota.map(credits)),
                output::or_dash(
                    view.spend
                        .as_ref()
                        .map(|spend| credits(spend.jobs_spent + spend.model_spent)),
                ),
                output::or_dash(view.spend.as_ref().map(|spend| credits(spend.reserved))),
                output::or_dash(view.spend.as_ref().map(|spend| spend.jobs)),
                output::or_dash(view.rate_per_sec),
            ]
        })
        .collect();
    output::table(
        &[
            "ID", "NAME", "STATE", "QUOTA", "SPENT", "RESERVED", "JOBS", "RATE/S",
        ],
        &rows,
    )
}

/// One line of `suanli token list --json`: the file's record, and the node's figures when it
/// answered.
#[derive(Debug, serde::Serialize)]
struct TokenListing {
    id: String,
    name: String,
    state: TokenState,
    created_ms: u64,
    expires_ms: Option<u64>,
    quota: Option<u64>,
    rate_per_sec: Option<f64>,
    revoked_ms: Option<u64>,
    spend: Option<TokenView>,
}

impl TokenListing {
    fn new(record: &TokenRecord, spent: Option<&HashMap<String, TokenView>>, now: u64) -> Self {
        TokenListing {
            id: record.id.clone(),
            name: record.name.clone(),
            state: TokenState::of(record, now),
            created_ms: record.created_ms,
            expires_ms: record.expires_ms,
            quota: record.quota_micro,
            rate_per_sec: record.rate_per_sec,
            revoked_ms: record.revoked_ms,
            spend: spent.and_then(|spent| spent.get(&record.id).cloned()),
        }
    }
}

/// Credits, as decimal text with up to six places, in micro-credits.
pub fn parse_credits(text: &str) -> anyhow::Result<u64> {
    let bad = || anyhow!("{text:?}: not an amount of credits (e.g. 250 or 0.5)");
    let (whole, fraction) = text.trim().split_once('.').unwrap_or((text.trim(), ""));
    if whole.is_empty() && fraction.is_empty()
        || fraction.len() > 6
        || !whole
            .chars()
            .chain(fraction.chars())
            .all(|c| c.is_ascii_digit())
    {
        return Err(bad());
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| bad())?
    };
    let fraction: u64 = format!("{fraction:0<6}").parse().map_err(|_| bad())?;
    whole
        .checked_mul(1_000_000)
        .and_then(|micro| micro.checked_add(fraction))
        .ok_or_else(bad)
}

/// A rate: N, N/s, N/m or N/h, in requests per second.
pub fn parse_rate(text: &str) -> anyhow::Result<f64> {
    let (count, per) = text.trim().split_once('/').unwrap_or((text.trim(), "s"));
    let seconds = match per {
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => bail!("{text:?}: a rate is N, N/s, N/m or N/h"),
    };
    let count: f64 = count
        .parse()
        .map_err(|_| anyhow!("{text:?}: a rate is N, N/s, N/m or N/h"))?;
    if !(count.is_finite() && count > 0.0) {
        bail!("{text:?}: a rate must be above 0");
    }
    Ok(count / seconds)
}

/// A duration: N followed by s, m, h or d.
pub fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let text = text.trim();
    let bad = || anyhow!("{text:?}: a duration is N followed by s, m, h or d (e.g. 30d)");
    let unit = text.chars().last().ok_or_else(bad)?;
    let seconds: u64 = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return Err(bad()),
    };
    let count: u64 = text[..text.len() - 1].parse().map_err(|_| bad())?;
    if count == 0 {
        return Err(bad());
    }
    count
        .checked_mul(seconds)
        .map(Duration::from_secs)
        .ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_rates_and_durations_parse_or_say_why() {
        assert_eq!(parse_credits("250").unwrap(), 250_000_000);
        assert_eq!(parse_credits("0.5").unwrap(), 500_000);
        assert_eq!(parse_credits(".000001").unwrap(), 1);
        for bad in ["", ".", "1.0000001", "-1", "1e3", "x", "18446744073710"] {
            assert!(parse_credits(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_rate("5").unwrap(), 5.0);
        assert_eq!(parse_rate("5/s").unwrap(), 5.0);
        assert_eq!(parse_rate("120/m").unwrap(), 2.0);
        for bad in ["0", "-1/s", "5/d", "NaN", "inf", "x/s"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_duration("30d").unwrap(),
            Duration::from_secs(30 * 86_400)
        );
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        for bad in ["", "d", "0d", "5w", "-1h", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
