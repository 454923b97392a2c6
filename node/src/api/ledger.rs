//! Ledger routes: entries, verification, balances, inclusion and consistency proofs; and the
//! conversion of a stored entry into its [`EntryView`], shared with the CLI's offline commands
//! (so an entry reads the same from the API and from a stopped node's data dir).
//!
//! Proofs come from the ledger's in-memory Merkle tree and never reach past the durable head;
//! arguments beyond it are a 400 (a 404 for an entry that does not exist yet).

use axum::Router;
use axum::extract::{FromRef, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use suanli_protocol::ledger::{EntryBody, LedgerEntry, entry_hash};
use suanli_protocol::{ContractId, Outcome};

use super::types::{
    Balance, ConsistencyProof, ConsistencyQuery, EntriesPage, EntryFields, EntryKind, EntryQuery,
    EntryView, InclusionProof, InclusionQuery, LedgerQuery, RawEntriesPage, RawEntry,
    VerifyFailure, VerifyReport,
};
use super::{ApiError, ApiPath, ApiQuery, ApiState};

/// The ledger routes, for any state holding the ledger.
pub fn routes<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    LedgerHandle: FromRef<S>,
{
    Router::new()
        .route("/v1/ledger", get(entries))
        .route("/v1/ledger/verify", get(verify))
        .route("/v1/ledger/entry/{index}", get(entry))
        .route("/v1/ledger/proof/inclusion", get(inclusion_proof))
        .route("/v1/ledger/proof/consistency", get(consistency_proof))
        .route("/v1/balances", get(balances))
}

impl FromRef<ApiState> for LedgerHandle {
    fn from_ref(state: &ApiState) -> LedgerHandle {
        state.ledger.clone()
    }
}
use crate::ledger::{LedgerError, LedgerHandle, StoredEntry};

impl From<&StoredEntry> for EntryView {
    /// Describes a stored entry. Documents are decoded without re-verifying (verification is
    /// `/v1/ledger/verify`); an undecodable entry is shown as such, never hidden.
    fn from(entry: &StoredEntry) -> EntryView {
        let mut view = EntryView {
            index: entry.seq,
            timestamp_ms: 0,
            kind: EntryKind::Undecodable,
            hash: entry_hash(&entry.raw),
            prev_hash: String::new(),
            contract_id: None,
            job_id: None,
            job_hash: None,
            requester: None,
            provider: None,
            cost: None,
            outcome: None,
            fuel: None,
            wall_time_ms: None,
            memory_bytes: None,
            output_bytes: None,
            prompt_tokens: None,
            completion_tokens: None,
            cluster: None,
            detail: None,
            raw_base64: BASE64.encode(&entry.raw),
        };
        let Ok(decoded) = LedgerEntry::decode(&entry.raw) else {
            return view;
        };
        view.timestamp_ms = decoded.timestamp_ms;
        view.prev_hash = decoded.prev_hash.to_string();
        match &decoded.body {
            EntryBody::Contract(contract) => {
                view.kind = EntryKind::Contract;
                view.contract_id = Some(ContractId(contract.digest()));
                if let Ok(contract) = contract.decode_unverified() {
                    view.job_id = Some(contract.job_id);
                    view.job_hash = Some(contract.job_hash);
                    view.requester = Some(contract.requester);
                    view.provider = Some(contract.provider);
                    view.cost = Some(contract.max_cost.micro());
                    view.detail = Some(format!(
                        "max cost {}, fuel limit {}",
                        contract.max_cost.micro(),
                        contract.limits.fuel
                    ));
                }
            }
            EntryBody::Receipt(receipt) => {
                view.kind = EntryKind::Receipt;
                if let Ok(receipt) = receipt.decode_unverified() {
                    view.contract_id = Some(receipt.contract_id);
                    view.job_id = Some(receipt.job_id);
                    view.requester = Some(receipt.requester);
                    view.provider = Some(receipt.provider);
                    view.cost = Some(receipt.cost.micro());
                    view.fuel = Some(receipt.usage.fuel);
                    view.wall_time_ms = Some(receipt.usage.wall_time_ms);
                    view.memory_bytes = Some(receipt.usage.memory_bytes);
                    view.output_bytes = Some(receipt.usage.output_bytes);
                    view.cluster = receipt.usage.cluster;
                    if receipt.usage.prompt_tokens + receipt.usage.completion_tokens > 0 {
                        view.prompt_tokens = Some(receipt.usage.prompt_tokens);
                        view.completion_tokens = Some(receipt.usage.completion_tokens);
                    }
                    view.outcome = Some(match &receipt.outcome {
                        Outcome::Succeeded { exit_code, .. } => {
                            format!("succeeded (exit {exit_code})")
                        }
                        Outcome::Failed { reason, .. } => format!("failed: {}", reason.name()),
                    });
                }
            }
            EntryBody::Settlement(settlement) => {
                view.kind = EntryKind::Settlement;
                if let Ok(settlement) = settlement.decode_unverified() {
                    view.contract_id = Some(settlement.contract_id);
                    view.requester = Some(settlement.requester);
                    view.provider = Some(settlement.provider);
                    view.cost = Some(settlement.cost.micro());
                }
            }
            EntryBody::Failure(failure) => {
                view.kind = EntryKind::Failure;
                if let Ok(failure) = failure.decode_unverified() {
                    view.contract_id = Some(failure.contract_id);
                    view.job_id = Some(failure.job_id);
                    view.outcome = Some(format!("{:?}", failure.failure));
                    view.detail = Some(format!(
                        "counterparty {}: {}",
                        failure.counterparty, failure.message
                    ));
                }
            }
            EntryBody::Usage(usage) => {
                view.kind = EntryKind::Usage;
                let Ok(usage) = usage.decode_unverified() else {
                    return view;
                };
                view.contract_id = Some(usage.contract_id);
                view.requester = Some(usage.requester);
                view.provider = Some(usage.provider);
                view.cost = Some(usage.cost.micro());
                view.outcome = Some(usage.finish.name().to_owned());
                view.prompt_tokens = Some(u64::from(usage.prompt_tokens));
                view.completion_tokens = Some(u64::from(usage.completion_tokens));
                view.detail = Some(format!(
                    "request {}: {} prompt + {} completion tokens, model {}",
                    usage.seq, usage.prompt_tokens, usage.completion_tokens, usage.model_sha256
                ));
            }
            EntryBody::Misbehaviour(evidence) => {
                view.kind = EntryKind::Misbehaviour;
                if let Ok(evidence) = evidence.decode_unverified() {
                    view.outcome = Some(format!("{:?}", evidence.kind));
                    view.detail = Some(format!(
                        "offender {}: {}",
                        evidence.offender, evidence.message
                    ));
                }
            }
        }
        view
    }
}

/// `GET /v1/ledger`: a page of [`EntryView`]s, or of [`RawEntry`]s with `fields=raw`.
pub async fn entries(
    State(ledger): State<LedgerHandle>,
    ApiQuery(query): ApiQuery<LedgerQuery>,
) -> Result<Response, ApiError> {
    let from = query.from.unwrap_or(0);
    let limit = query.limit.unwrap_or(100).clamp(1, 1024);
    let fields = query.fields.unwrap_or_default();
    // Up to 1024 entries read, encoded and serialized: off the async workers.
    let body = tokio::task::spawn_blocking(move || {
        let entries = ledger.range(from, limit).map_err(ledger_error)?;
        let head = ledger.head();
        let json = match fields {
            EntryFields::All => serde_json::to_vec(&EntriesPage {
                size: head.size,
                head: head.head,
                entries: entries.iter().map(EntryView::from).collect(),
            }),
            EntryFields::Raw => serde_json::to_vec(&RawEntriesPage {
                size: head.size,
                head: head.head,
                entries: entries
                    .iter()
                    .map(|entry| RawEntry {
                        index: entry.seq,
                        raw_base64: BASE64.encode(&entry.raw),
                    })
                    .collect(),
            }),
        };
        json.map_err(|error| ApiError::Internal(error.to_string()))
    })
    .await
    .map_err(|error| ApiError::Internal(error.to_string()))??;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

pub async fn verify(State(ledger): State<LedgerHandle>) -> axum::Json<VerifyReport> {
    // Verification reads the whole ledger: off the async workers.
    let report = tokio::task::spawn_blocking(move || ledger.verify()).await;
    axum::Json(report.unwrap_or_else(|error| VerifyReport {
        ok: false,
        entries: 0,
        head: String::new(),
        error: Some(VerifyFailure {
            index: 0,
            message: format!("verification did not run: {error}"),
        }),
    }))
}

pub async fn balances(
    State(ledger): State<LedgerHandle>,
) -> Result<axum::Json<Vec<Balance>>, ApiError> {
    ledger
        .balances()
        .map(axum::Json)
        .map_err(|error| ApiError::Internal(error.to_string()))
}

/// A ledger error as an API error: arguments outside the durable ledger are the caller's.
fn ledger_error(error: LedgerError) -> ApiError {
    match error {
        LedgerError::OutOfRange(_) => ApiError::BadRequest(error.to_string()),
        error => ApiError::Internal(error.to_string()),
    }
}

/// `GET /v1/ledger/proof/inclusion?index=&size=`: the inclusion proof of entry `index` in the
/// tree of the first `size` entries.
pub async fn inclusion_proof(
    State(ledger): State<LedgerHandle>,
    ApiQuery(query): ApiQuery<InclusionQuery>,
) -> Result<axum::Json<InclusionProof>, ApiError> {
    let size = query.size.unwrap_or_else(|| ledger.head().size);
    ledger
        .inclusion_proof(query.index, size)
        .map(axum::Json)
        .map_err(ledger_error)
}

/// `GET /v1/ledger/proof/consistency?from=&to=`: the consistency proof between the trees of the
/// first `from` and the first `to` entries.
pub async fn consistency_proof(
    State(ledger): State<LedgerHandle>,
    ApiQuery(query): ApiQuery<ConsistencyQuery>,
) -> Result<axum::Json<ConsistencyProof>, ApiError> {
    let to = query.to.unwrap_or_else(|| ledger.head().size);
    ledger
        .consistency_proof(query.from, to)
        .map(axum::Json)
        .map_err(ledger_error)
}

/// `GET /v1/ledger/entry/{index}[?raw=1]`: one entry as JSON, or its exact stored bytes.
pub async fn entry(
    State(ledger): State<LedgerHandle>,
    ApiPath(index): ApiPath<String>,
    ApiQuery(query): ApiQuery<EntryQuery>,
) -> Result<Response, ApiError> {
    let index: u64 = index.parse().map_err(|_| {
        ApiError::BadRequest(format!(
            "entry index must be a non-negative integer, got {index:?}"
        ))
    })?;
    let raw = match query.raw.as_deref() {
        None | Some("0" | "false") => false,
        Some("1" | "true") => true,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "raw must be 1, true, 0 or false, got {other:?}"
            )));
        }
    };
    let Some(bytes) = ledger.raw_entry(index).map_err(ledger_error)? else {
        return Err(ApiError::NotFound(format!(
            "no entry {index}: the ledger holds {} entries",
            ledger.head().size
        )));
    };
    if raw {
        return Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response());
    }
    let entry = StoredEntry {
        seq: index,
        raw: bytes,
    };
    Ok(axum::Json(EntryView::from(&entry)).into_response())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::Value;
    use suanli_protocol::Hash32;
    use tempfile::TempDir;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::fixtures::{contract_body, provider};
    use crate::ledger::Store;
    use crate::storage::Storage;

    /// A ledger of `n` entries served over real HTTP on a free port.
    struct Served {
        base: String,
        ledger: LedgerHandle,
        http: reqwest::Client,
        cancel: CancellationToken,
        _dir: TempDir,
    }

    async fn served(n: u64) -> Served {
        let dir = TempDir::new().unwrap();
        let cancel = CancellationToken::new();
        let storage = Storage::open(&dir.path().join("db"), &Default::default()).unwrap();
        let store = Store::open(&storage, provider().node_id()).unwrap();
        let (ledger, _task) = store.start(cancel.clone());
        for nonce in 0..n {
            ledger.append(contract_body(nonce)).await.unwrap();
        }
        let router = routes().with_state(ledger.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let stop = cancel.clone();
        tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
                .unwrap();
        });
        Served {
            base,
            ledger,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            cancel,
            _dir: dir,
        }
    }

    impl Served {
        async fn get(&self, path: &str) -> (u16, Value) {
            let response = self
                .http
                .get(format!("{}{path}", self.base))
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            (status, response.json().await.unwrap())
        }

        async fn error(&self, path: &str, status: u16) -> String {
            let (got, body) = self.get(path).await;
            assert_eq!(got, status, "{path}: {body}");
            let code = body["error"]["code"].as_str().unwrap();
            assert_eq!(
                code,
                if status == 404 {
                    "not_found"
                } else {
                    "bad_request"
                }
            );
            body["error"]["message"].as_str().unwrap().to_owned()
        }
    }

    impl Drop for Served {
        fn drop(&mut self) {
            self.cancel.cancel();
        }
    }

    #[tokio::test]
    async fn inclusion_and_consistency_proofs_over_http() {
        let served = served(7).await;
        let head = served.ledger.head();

        let (status, body) = served.get("/v1/ledger/proof/inclusion?index=3").await;
        assert_eq!(status, 200, "{body}");
        let proof: InclusionProof = serde_json::from_value(body).unwrap();
        assert_eq!((proof.leaf_idx, proof.tree_size), (3, 7));
        proof.verify().unwrap();
        assert_eq!(proof, served.ledger.inclusion_proof(3, 7).unwrap());
        let (_, body) = served
            .get("/v1/ledger/proof/inclusion?index=6&size=7")
            .await;
        let last: InclusionProof = serde_json::from_value(body).unwrap();
        assert_eq!(last.leaf_hash, head.head.0.to_vec());

        let (status, body) = served.get("/v1/ledger/proof/consistency?from=3").await;
        assert_eq!(status, 200, "{body}");
        let proof: ConsistencyProof = serde_json::from_value(body).unwrap();
        assert_eq!((proof.size1, proof.size2), (3, 7));
        proof.verify().unwrap();
        assert_eq!(proof.root2, served.ledger.tree_root(7).unwrap().0.to_vec());
        let (_, body) = served.get("/v1/ledger/proof/consistency?from=2&to=5").await;
        let proof: ConsistencyProof = serde_json::from_value(body).unwrap();
        proof.verify().unwrap();

        // Out of range, malformed or missing arguments: 400 with a reason.
        let message = served
            .error("/v1/ledger/proof/inclusion?index=7", 400)
            .await;
        assert!(message.contains("leaf index 7"), "{message}");
        let message = served
            .error("/v1/ledger/proof/inclusion?index=0&size=8", 400)
            .await;
        assert!(message.contains("tree size 8 is beyond the 7"), "{message}");
        served.error("/v1/ledger/proof/inclusion", 400).await;
        served
            .error("/v1/ledger/proof/inclusion?index=-1", 400)
            .await;
        served
            .error("/v1/ledger/proof/inclusion?index=1&sise=3", 400)
            .await;
        let message = served
            .error("/v1/ledger/proof/consistency?from=5&to=3", 400)
            .await;
        assert!(message.contains("greater"), "{message}");
        let message = served
            .error("/v1/ledger/proof/consistency?from=0", 400)
            .await;
        assert!(message.contains("empty tree"), "{message}");
        served
            .error("/v1/ledger/proof/consistency?from=1&to=99", 400)
            .await;
    }

    #[tokio::test]
    async fn entries_as_json_and_as_raw_bytes() {
        let served = served(3).await;
        let (status, body) = served.get("/v1/ledger/entry/1").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["index"], 1);
        assert_eq!(body["kind"], "contract");

        let response = served
            .http
            .get(format!("{}/v1/ledger/entry/1?raw=1", served.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        assert_eq!(
            response.headers()["content-type"],
            "application/octet-stream"
        );
        let raw = response.bytes().await.unwrap().to_vec();
        assert_eq!(served.ledger.raw_entry(1).unwrap().unwrap(), raw);
        let proof = served.ledger.inclusion_proof(1, 3).unwrap();
        assert_eq!(proof.leaf_hash, entry_hash(&raw).0.to_vec());
        assert_eq!(body["hash"], entry_hash(&raw).to_string());
        assert_ne!(entry_hash(&raw), Hash32::ZERO);

        // The listing, whole or bytes only.
        let (_, page) = served.get("/v1/ledger?from=1&limit=5").await;
        assert_eq!(page["size"], 3);
        assert_eq!(page["entries"][0], serde_json::to_value(&body).unwrap());
        let (_, page) = served.get("/v1/ledger?from=1&fields=raw").await;
        let entries = page["entries"].as_array().unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(
            entries[0],
            serde_json::json!({"index": 1, "raw_base64": BASE64.encode(&raw)})
        );
        served.error("/v1/ledger?fields=some", 400).await;

        let message = served.error("/v1/ledger/entry/3", 404).await;
        assert!(message.contains("holds 3 entries"), "{message}");
        served.error("/v1/ledger/entry/abc", 400).await;
        served.error("/v1/ledger/entry/1?raw=yes", 400).await;
        served
            .error("/v1/ledger/entry/18446744073709551616", 400)
            .await;
    }
}
