//! Who may use this node's HTTP API, and how much: API tokens, the loopback exemption, the `Host`
//! check, per-token rates and credit quotas.
//!
//! - [`store`] owns the token file (written by the CLI, read here).
//! - [`guard`] is the middleware every request passes first: request-head bounds, `Host`, who is
//!   asking ([`Principal`]), whether the route needs a token, the token's rate.
//! - [`spend`] owns what each token has spent and reserved, derived from the node's own job
//!   records (and model requests' costs), and refuses work beyond a token's quota.
//!
//! This module never decides what a token's jobs do; it only admits or refuses the request and
//! names the token the work is attributed to.

pub mod guard;
pub mod spend;
pub mod store;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use spend::{Reservation, Spend, SpendView};
pub use store::{StoreError, TokenRecord};

use crate::clock::now_ms;

/// Who a request comes from.
#[derive(Debug, Clone)]
pub enum Principal {
    /// Over loopback without a token, where `api.local_without_token` allows it: the operator.
    Operator,
    /// A request that presented a valid token.
    Token(Arc<TokenRecord>),
    /// No token, from where one is needed: public routes only.
    Anonymous,
}

impl Principal {
    /// The id of the token work is attributed to.
    pub fn token_id(&self) -> Option<&str> {
        match self {
            Principal::Token(record) => Some(&record.id),
            _ => None,
        }
    }

    /// Whether this principal may see a job attributed to `owner`: the operator sees every job,
    /// a token only its own.
    pub fn may_see(&self, owner: Option<&str>) -> bool {
        match self {
            Principal::Operator => true,
            Principal::Token(record) => owner == Some(record.id.as_str()),
            Principal::Anonymous => false,
        }
    }
}

/// The API's access settings (from `[api]`).
#[derive(Debug, Clone)]
pub struct AccessConfig {
    /// The token file.
    pub tokens_path: PathBuf,
    /// Whether a loopback request without a token acts as the operator.
    pub local_without_token: bool,
    /// Host names (besides IP literals and `localhost`) a request's `Host` may name.
    pub hosts: Vec<String>,
    /// Longest time a request's body may take to arrive.
    pub body_timeout: Duration,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("unknown API token")]
    Unknown,
    #[error("{0}")]
    Refused(&'static str),
    #[error("the token file cannot be read: {0}")]
    Store(String),
}

/// The tokens as last read from the file.
#[derive(Debug, Default)]
struct Loaded {
    stamp: Option<store::Stamp>,
    by_id: HashMap<String, Arc<TokenRecord>>,
}

/// A token bucket: `rate` requests a second, bursts of up to `max(rate, 1)`.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The API's access state, shared by the guard and the handlers.
#[derive(Debug, Clone)]
pub struct Access {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: AccessConfig,
    loaded: Mutex<Loaded>,
    buckets: Mutex<HashMap<String, Bucket>>,
    spend: Spend,
}

impl Access {
    /// Reads the token file once (a node does not start on an unreadable one).
    pub fn open(config: AccessConfig, spend: Spend) -> Result<Access, StoreError> {
        let access = Access {
            inner: Arc::new(Inner {
                config,
                loaded: Mutex::new(Loaded::default()),
                buckets: Mutex::new(HashMap::new()),
                spend,
            }),
        };
        access.refresh()?;
        Ok(access)
    }

    pub fn config(&self) -> &AccessConfig {
        &self.inner.config
    }

    pub fn spend(&self) -> &Spend {
        &self.inner.spend
    }

    /// Re-reads the token file if it changed since it was last read.
    fn refresh(&self) -> Result<(), StoreError> {
        let path = &self.inner.config.tokens_path;
        let stamp = store::stamp(path)?;
        let mut loaded = self.inner.loaded.lock().unwrap_or_else(|e| e.into_inner());
        // The default state is "no file", so a missing file is not re-read either.
        if loaded.stamp == stamp {
            return Ok(());
        }
        let file = store::load(path)?;
        loaded.by_id = file
            .tokens
            .into_iter()
            .map(|record| (record.id.clone(), Arc::new(record)))
            .collect();
        loaded.stamp = stamp;
        Ok(())
    }

    /// Tokens usable now (neither revoked nor expired).
    pub fn active_tokens(&self) -> Result<usize, StoreError> {
        self.refresh()?;
        let now = now_ms();
        let loaded = self.inner.loaded.lock().unwrap_or_else(|e| e.into_inner());
        Ok(loaded
            .by_id
            .values()
            .filter(|record| record.refusal(now).is_none())
            .count())
    }

    /// Every token defined, revoked ones too.
    pub fn tokens(&self) -> Result<Vec<Arc<TokenRecord>>, StoreError> {
        self.refresh()?;
        let loaded = self.inner.loaded.lock().unwrap_or_else(|e| e.into_inner());
        let mut tokens: Vec<_> = loaded.by_id.values().cloned().collect();
        tokens.sort_by(|a, b| a.created_ms.cmp(&b.created_ms).then(a.id.cmp(&b.id)));
        Ok(tokens)
    }

    /// The token whose text this is, if it may be used now.
    pub fn authenticate(&self, token: &str) -> Result<Arc<TokenRecord>, AuthError> {
        self.refresh()
            .map_err(|error| AuthError::Store(error.to_string()))?;
        let id = store::token_id(token).ok_or(AuthError::Unknown)?;
        let record = {
            let loaded = self.inner.loaded.lock().unwrap_or_else(|e| e.into_inner());
            loaded.by_id.get(id).cloned().ok_or(AuthError::Unknown)?
        };
        // Digests are compared, not texts: an attacker controls no byte of the digest of a guess.
        if store::digest(token) != record.sha256 {
            return Err(AuthError::Unknown);
        }
        if let Some(reason) = record.refusal(now_ms()) {
            return Err(AuthError::Refused(reason));
        }
        Ok(record)
    }

    /// Takes one request from the token's rate; `Err(wait)` when it has none left.
    pub fn take_rate(&self, record: &TokenRecord) -> Result<(), Duration> {
        let Some(rate) = record.rate_per_sec else {
            return Ok(());
        };
        let burst = rate.max(1.0);
        let now = Instant::now();
        let mut buckets = self.inner.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let bucket = buckets.entry(record.id.clone()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let refill = now.duration_since(bucket.at).as_secs_f64() * rate;
        bucket.tokens = (bucket.tokens + refill).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / rate))
        }
    }

    /// Who a request from `peer` with this `Authorization` value is.
    pub fn principal(
        &self,
        peer: Option<SocketAddr>,
        bearer: Option<&str>,
    ) -> Result<Principal, AuthError> {
        // A bearer value that is not a suanli token is no token at all: OpenAI's clients send
        // the `api_key` they were given (often a placeholder) with every request.
        if let Some(token) = bearer.filter(|token| token.starts_with(store::TOKEN_PREFIX)) {
            return self.authenticate(token).map(Principal::Token);
        }
        let loopback = peer.is_some_and(|peer| is_loopback(peer.ip()));
        Ok(if loopback && self.inner.config.local_without_token {
            Principal::Operator
        } else {
            Principal::Anonymous
        })
    }
}

/// Loopback, IPv4-mapped IPv6 loopback (`::ffff:127.0.0.1`, what a dual-stack listener sees)
/// included.
pub fn is_loopback(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => v4.is_loopback(),
        std::net::IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(v6.is_loopback(), |v4| v4.is_loopback()),
    }
}
