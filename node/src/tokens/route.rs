//! The requester side of AI tokens: every node answers model requests by routing each to a
//! provider of the model, under a standing contract with it.
//!
//! - **Candidates** are the nodes whose live advert lists the model, this node included: those
//!   that failed a request here in the last ten minutes last, then by what the request may cost
//!   at their prices, their measured decode speed, their load, and the contracts this node's
//!   ledger holds settled with them.
//! - **Standing contracts** ([`Pool`]): a request runs under an open contract with the provider
//!   that has budget and time left; otherwise one is negotiated first (one negotiation for many
//!   requests: `tokens.contract_budget_tokens` over `tokens.contract_secs`). A contract whose
//!   budget or time runs out, or whose provider failed it, is closed once idle; the provider
//!   then delivers its receipt and the contract settles.
//! - **Fail-over**: a provider that refuses or fails before the first token is left for the next
//!   candidate; after the first token an error ends the request.
//! - **Receipts**: each request ends with the provider's signed usage receipt, checked (parties,
//!   contract, request number, the request's hash, the model, the text received, the cost at the
//!   contract's prices, the budget, a bound on the prompt tokens), countersigned, appended to
//!   this node's ledger (durable before the client hears of the usage), and sent back.
//! - **Replicas** ([`replicas`]): a greedy request may be served by several providers of one
//!   model file at once and answered with the text a majority returned, evidence stored against
//!   a provider whose text differed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use suanli_protocol::ledger::EntryBody;
use suanli_protocol::tokens::{
    Finish, GenerateRequest, ModelInfo, Prompt, TokensRequest, TokensResponse, UsageReceipt,
};
use suanli_protocol::wire::ErrorCode;
use suanli_protocol::{CoSigned, ContractId, Credits, Hash32, Keypair, NodeId, PriceTerms, Signed};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

mod replicas;

pub use replicas::Replicated;

use super::serve::Serving;
use crate::clock::now_ms;
use crate::config::TokensConfig;
use crate::ledger::LedgerHandle;
use crate::market::Market;
use crate::mesh::MeshView;
use crate::network::NetworkHandle;
use crate::network::tokens::{FrameReader, TokenStream};

/// Providers one request tries before it fails.
const CANDIDATES_PER_REQUEST: usize = 3;
/// A contract is not used for new requests this long before its time is up (or a quarter of
/// its time, for a short one).
const EXPIRY_MARGIN_MS: u64 = 30_000;
/// How long a request waits for a new standing contract to be signed.
const NEGOTIATION_WAIT: Duration = Duration::from_secs(15);
/// How long a closing contract waits between attempts to tell its provider.
const CLOSE_RETRY: Duration = Duration::from_secs(2);
/// Recent failures remembered per provider (for ranking).
const FAILURE_MEMORY_MS: u64 = 10 * 60 * 1000;

/// What a routed request produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completed {
    pub provider: NodeId,
    pub contract_id: ContractId,
    pub seq: u32,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub finish: Finish,
    pub cost: Credits,
    /// The provider's usage receipt, countersigned by this node and in its ledger.
    pub receipt: CoSigned<UsageReceipt>,
}

/// Why a request was not served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("the model `{0}` does not exist in the mesh")]
    ModelNotFound(String),
    #[error("{0}")]
    ContextLength(String),
    #[error("{0}")]
    BadRequest(String),
    /// No provider served it; the reasons, one per provider tried.
    #[error("no provider served the request: {}", .0.join("; "))]
    NoProvider(Vec<String>),
    /// It failed after text was sent.
    #[error("{0}")]
    Failed(String),
    /// Fewer distinct providers of one model file than the replicas asked for.
    #[error("{0}")]
    NotEnoughProviders(String),
    /// No majority of the replicas returned the same text; the runs that completed cost `cost`.
    #[error("{message}")]
    ReplicasDisagree { message: String, cost: Credits },
    #[error("the node is shutting down")]
    ShuttingDown,
}

impl RouteError {
    /// A short name of the kind of error (a metrics label).
    pub fn code(&self) -> &'static str {
        match self {
            RouteError::ModelNotFound(_) => "model_not_found",
            RouteError::ContextLength(_) => "context_length",
            RouteError::BadRequest(_) => "bad_request",
            RouteError::NoProvider(_) => "no_provider",
            RouteError::Failed(_) => "failed",
            RouteError::NotEnoughProviders(_) => "not_enough_providers",
            RouteError::ReplicasDisagree { .. } => "replicas_disagree",
            RouteError::ShuttingDown => "shutting_down",
        }
    }
}

/// A model as the mesh offers it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MeshModel {
    pub info: ModelInfo,
    pub providers: Vec<NodeId>,
}

/// A standing contract this node holds as requester.
#[derive(Debug, Clone)]
struct Standing {
    contract_id: ContractId,
    provider: NodeId,
    model: String,
    model_sha256: Hash32,
    price: PriceTerms,
    budget: u64,
    next_seq: u32,
    /// Tokens of its countersigned receipts.
    used: u64,
    /// Tokens reserved by requests in flight (prompt bound + max_tokens each).
    reserved: u64,
    in_flight: u32,
    /// No new request after this (its time minus a margin).
    usable_until_ms: u64,
    /// Takes new requests.
    usable: bool,
    closing: bool,
}

/// The standing contracts of this node, by contract.
#[derive(Debug, Default)]
struct Pool {
    contracts: HashMap<ContractId, Standing>,
}

/// One request's hold on a standing contract.
#[derive(Debug, Clone, Copy)]
struct Lease {
    contract_id: ContractId,
    seq: u32,
    need: u64,
}

/// The requester side of AI tokens.
#[derive(Clone)]
pub struct Router {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router").finish_non_exhaustive()
    }
}

struct Inner {
    me: NodeId,
    keypair: Keypair,
    network: NetworkHandle,
    mesh: MeshView,
    ledger: LedgerHandle,
    market: Market,
    serving: Serving,
    config: TokensConfig,
    pool: Mutex<Pool>,
    /// Negotiations run one at a time (two requests needing a contract share the first).
    opening: tokio::sync::Mutex<()>,
    failures: Mutex<HashMap<NodeId, Vec<u64>>>,
    negotiations: std::sync::atomic::AtomicU64,
    metrics: crate::metrics::Metrics,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

/// What a [`Router`] needs.
#[derive(Debug)]
pub struct RouterParts {
    pub keypair: Keypair,
    pub network: NetworkHandle,
    pub mesh: MeshView,
    pub ledger: LedgerHandle,
    pub market: Market,
    pub serving: Serving,
    pub config: TokensConfig,
    /// Where requests are counted.
    pub metrics: crate::metrics::Metrics,
    pub cancel: CancellationToken,
}

impl Router {
    /// The router; closes the standing contracts a previous run of this node left open (their
    /// requests' answers went with that run).
    pub fn start(parts: RouterParts) -> Router {
        let router = Router {
            inner: Arc::new(Inner {
                me: parts.keypair.node_id(),
                keypair: parts.keypair,
                network: parts.network,
                mesh: parts.mesh,
                ledger: parts.ledger,
                market: parts.market,
                serving: parts.serving,
                config: parts.config,
                pool: Mutex::new(Pool::default()),
                opening: tokio::sync::Mutex::new(()),
                failures: Mutex::new(HashMap::new()),
                negotiations: std::sync::atomic::AtomicU64::new(0),
                metrics: parts.metrics,
                cancel: parts.cancel,
                tasks: TaskTracker::new(),
            }),
        };
        for (contract_id, provider) in router.inner.market.open_sessions() {
            info!(contract = %contract_id, %provider, "closing a standing contract of an earlier run");
            router.spawn_close(contract_id, provider);
        }
        router
    }

    /// The standing contracts open here: those this node holds as requester, then those it
    /// serves.
    pub fn session_views(&self) -> Vec<super::SessionView> {
        let mut views: Vec<super::SessionView> = self
            .pool()
            .contracts
            .values()
            .map(|standing| super::SessionView {
                contract_id: standing.contract_id,
                side: super::SessionSide::Requester,
                peer: standing.provider,
                model: standing.model.clone(),
                budget_tokens: standing.budget,
                used_tokens: standing.used,
                reserved_tokens: standing.reserved,
                in_flight: standing.in_flight,
                closing: standing.closing || !standing.usable,
            })
            .collect();
        views.extend(self.inner.serving.session_views());
        views
    }

    fn pool(&self) -> std::sync::MutexGuard<'_, Pool> {
        self.inner.pool.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Standing contracts negotiated by this node since it started.
    pub fn negotiations(&self) -> u64 {
        self.inner
            .negotiations
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Every model the mesh offers (this node's included), by name, with its providers; the
    /// description is the cheapest provider's.
    pub fn models(&self) -> Vec<MeshModel> {
        let mut models: Vec<MeshModel> = Vec::new();
        for entry in self.inner.mesh.snapshot(now_ms()) {
            for info in &entry.advert.models {
                match models.iter_mut().find(|m| m.info.name == info.name) {
                    Some(model) => {
                        model.providers.push(entry.advert.node);
                        if price_key(info) < price_key(&model.info) {
                            model.info = info.clone();
                        }
                    }
                    None => models.push(MeshModel {
                        info: info.clone(),
                        providers: vec![entry.advert.node],
                    }),
                }
            }
        }
        models.sort_by(|a, b| a.info.name.cmp(&b.info.name));
        models
    }

    /// Providers of `model`, best first, with their description of it.
    fn candidates(&self, model: &str, request: &GenerateRequest) -> Vec<(NodeId, ModelInfo)> {
        let now = now_ms();
        let failures = {
            let mut failures = self
                .inner
                .failures
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            failures.retain(|_, times| {
                times.retain(|at| now.saturating_sub(*at) < FAILURE_MEMORY_MS);
                !times.is_empty()
            });
            failures
                .iter()
                .map(|(node, times)| (*node, times.len()))
                .collect::<HashMap<_, _>>()
        };
        // This node's ledger history with each: contracts settled with it.
        let settled: HashMap<String, u64> = self
            .inner
            .ledger
            .balances()
            .unwrap_or_default()
            .into_iter()
            .map(|balance| (balance.node_id, balance.settlements))
            .collect();
        let prompt = request.prompt.text_bytes().div_ceil(4) as u128;
        let mut found: Vec<(NodeId, ModelInfo, u16)> = self
            .inner
            .mesh
            .snapshot(now)
            .into_iter()
            .filter_map(|entry| {
                let info = entry.advert.models.iter().find(|m| m.name == model)?;
                // A provider this node's ledger shows to be dishonest gets no more requests.
                (entry.advert.load_permille < 1000
                    && !self
                        .inner
                        .market
                        .reputation()
                        .distrusted(&entry.advert.node))
                .then(|| (entry.advert.node, info.clone(), entry.advert.load_permille))
            })
            .collect();
        let max_tokens = u128::from(request.max_tokens);
        found.sort_by_key(|(node, info, load)| {
            let cost = prompt * u128::from(info.per_million_prompt.micro())
                + max_tokens * u128::from(info.per_million_completion.micro());
            (
                failures.get(node).copied().unwrap_or(0),
                cost,
                std::cmp::Reverse(info.decode_tokens_per_s),
                *load,
                std::cmp::Reverse(settled.get(&node.to_string()).copied().unwrap_or(0)),
            )
        });
        found
            .into_iter()
            .map(|(node, info, _)| (node, info))
            .collect()
    }

    fn remember_failure(&self, provider: NodeId) {
        self.inner
            .failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(provider)
            .or_default()
            .push(now_ms());
    }

    /// `max_tokens` of a request that gives none.
    pub fn default_max_tokens(&self) -> u32 {
        self.inner.config.default_max_tokens
    }

    /// Starts serving `request` on a task of its own, which outlives its reader: a client that
    /// goes away (the text receiver dropped) stops generation, and the request is still
    /// receipted, countersigned and billed for what was generated.
    pub fn serve(&self, request: GenerateRequest) -> Generating {
        let (text_tx, text) = mpsc::channel(crate::inference::STREAM_BUFFER);
        let (done_tx, done) = tokio::sync::oneshot::channel();
        let router = self.clone();
        let cancel = self.inner.cancel.child_token();
        self.inner.tasks.spawn(async move {
            let started = std::time::Instant::now();
            let result = router.generate(&request, text_tx, cancel).await;
            if let Err(error) = &result {
                debug!(model = %request.model, %error, "request not served");
            }
            router.count(&request.model, started, result.as_ref().err());
            let _ = done_tx.send(result);
        });
        Generating { text, done }
    }

    /// Counts a request that ended (its tokens are counted with each receipt recorded).
    pub(super) fn count(
        &self,
        model: &str,
        started: std::time::Instant,
        error: Option<&RouteError>,
    ) {
        // A name the mesh does not serve is the client's text: never a label.
        let model = match error {
            Some(RouteError::ModelNotFound(_) | RouteError::BadRequest(_)) => "unknown",
            _ => model,
        };
        let outcome = error.map_or("ok", RouteError::code);
        self.inner
            .metrics
            .token_request(model, outcome, started.elapsed().as_secs_f64());
    }

    /// Serves `request` through the mesh, sending its text to `text` as it comes. When `text`
    /// closes or `cancel` fires, generation stops and what was generated is billed.
    pub async fn generate(
        &self,
        request: &GenerateRequest,
        text: mpsc::Sender<String>,
        cancel: CancellationToken,
    ) -> Result<Completed, RouteError> {
        if self.inner.cancel.is_cancelled() {
            return Err(RouteError::ShuttingDown);
        }
        request
            .validate()
            .map_err(|error| RouteError::BadRequest(error.to_string()))?;
        let candidates = self.candidates(&request.model, request);
        if candidates.is_empty() {
            if self.models().iter().any(|m| m.info.name == request.model) {
                return Err(RouteError::NoProvider(vec![
                    "every provider of the model is fully loaded".into(),
                ]));
            }
            return Err(RouteError::ModelNotFound(request.model.clone()));
        }
        let mut reasons = Vec::new();
        for (provider, info) in candidates.into_iter().take(CANDIDATES_PER_REQUEST) {
            // A provider may refuse a contract that just ran out: one more with a fresh one.
            for _ in 0..2 {
                match self
                    .try_provider(provider, &info, request, &text, &cancel)
                    .await
                {
                    Ok(done) => return Ok(done),
                    Err(Attempt::Fatal(error)) => return Err(error),
                    Err(Attempt::Retry(reason)) => {
                        debug!(%provider, %reason, "fresh contract");
                        continue;
                    }
                    Err(Attempt::Next(reason)) => {
                        self.remember_failure(provider);
                        reasons.push(format!("{provider}: {reason}"));
                        break;
                    }
                }
            }
            if self.inner.cancel.is_cancelled() || cancel.is_cancelled() {
                return Err(RouteError::ShuttingDown);
            }
        }
        Err(RouteError::NoProvider(reasons))
    }

    async fn try_provider(
        &self,
        provider: NodeId,
        info: &ModelInfo,
        request: &GenerateRequest,
        text: &mpsc::Sender<String>,
        cancel: &CancellationToken,
    ) -> Result<Completed, Attempt> {
        let need = prompt_bound(&request.prompt).saturating_add(u64::from(request.max_tokens));
        let lease = self.lease(provider, info, need).await?;
        let result = self
            .stream_request(provider, lease, request, text, cancel)
            .await;
        self.release(lease, &result);
        result
    }

    /// A request's place under a standing contract with `provider`, negotiated first if none
    /// has room.
    async fn lease(&self, provider: NodeId, info: &ModelInfo, need: u64) -> Result<Lease, Attempt> {
        if let Some(lease) = self.take_lease(provider, &info.name, need) {
            return Ok(lease);
        }
        let _opening = self.inner.opening.lock().await;
        if let Some(lease) = self.take_lease(provider, &info.name, need) {
            return Ok(lease);
        }
        self.retire(provider, &info.name, need);
        let config = &self.inner.config;
        let budget = config.contract_budget_tokens.max(need);
        let max_price = Credits(
            u64::try_from(
                u128::from(budget) * u128::from(config.max_price_per_million) / 1_000_000 + 1,
            )
            .unwrap_or(u64::MAX),
        );
        self.inner
            .negotiations
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let signed = self
            .inner
            .market
            .open_session(
                info,
                provider,
                budget,
                config.contract_secs,
                max_price,
                NEGOTIATION_WAIT,
            )
            .await
            .map_err(Attempt::Next)?;
        let secs_ms = config.contract_secs.saturating_mul(1000);
        let standing = Standing {
            usable_until_ms: signed
                .expires_at_ms
                .saturating_sub(EXPIRY_MARGIN_MS.min(secs_ms / 4)),
            contract_id: signed.contract_id,
            provider,
            model: info.name.clone(),
            model_sha256: signed.model_sha256,
            price: signed.price,
            budget,
            next_seq: 1,
            used: 0,
            reserved: 0,
            in_flight: 0,
            usable: true,
            closing: false,
        };
        info!(contract = %signed.contract_id, %provider, model = %info.name, budget, "standing contract signed");
        self.pool().contracts.insert(signed.contract_id, standing);
        self.take_lease(provider, &info.name, need)
            .ok_or_else(|| Attempt::Next("the new contract cannot hold the request".into()))
    }

    /// Closes (once idle) the contracts with `provider` for `model` that cannot take a request
    /// needing `need` tokens any more (spent, or their time nearly up): a new one replaces them.
    fn retire(&self, provider: NodeId, model: &str, need: u64) {
        let now = now_ms();
        let closing: Vec<ContractId> = {
            let mut pool = self.pool();
            pool.contracts
                .values_mut()
                .filter(|s| s.usable && s.provider == provider && s.model == model)
                .filter(|s| {
                    now >= s.usable_until_ms || s.budget.saturating_sub(s.used + s.reserved) < need
                })
                .filter_map(|s| {
                    s.usable = false;
                    let close = s.in_flight == 0 && !s.closing;
                    s.closing |= close;
                    close.then_some(s.contract_id)
                })
                .collect()
        };
        for id in closing {
            self.spawn_close(id, provider);
        }
    }

    fn take_lease(&self, provider: NodeId, model: &str, need: u64) -> Option<Lease> {
        let now = now_ms();
        let mut pool = self.pool();
        let standing = pool.contracts.values_mut().find(|s| {
            s.usable
                && s.provider == provider
                && s.model == model
                && s.in_flight < super::serve::MAX_STREAMS_PER_SESSION as u32
                && now < s.usable_until_ms
                && s.budget.saturating_sub(s.used + s.reserved) >= need
        })?;
        let seq = standing.next_seq;
        standing.next_seq += 1;
        standing.in_flight += 1;
        standing.reserved += need;
        Some(Lease {
            contract_id: standing.contract_id,
            seq,
            need,
        })
    }

    /// Ends a request's hold; a contract that failed it, or has too little left, is closed once
    /// idle.
    fn release(&self, lease: Lease, result: &Result<Completed, Attempt>) {
        let close = {
            let mut pool = self.pool();
            let Some(standing) = pool.contracts.get_mut(&lease.contract_id) else {
                return;
            };
            standing.in_flight = standing.in_flight.saturating_sub(1);
            standing.reserved = standing.reserved.saturating_sub(lease.need);
            match result {
                Ok(done) => {
                    standing.used +=
                        u64::from(done.prompt_tokens) + u64::from(done.completion_tokens);
                }
                // The client's mistake says nothing about the contract.
                Err(Attempt::Fatal(RouteError::ContextLength(_) | RouteError::BadRequest(_))) => {}
                Err(_) => standing.usable = false,
            }
            let left = standing.budget.saturating_sub(standing.used);
            if left < 64 || now_ms() >= standing.usable_until_ms {
                standing.usable = false;
            }
            let close = !standing.usable && standing.in_flight == 0 && !standing.closing;
            if close {
                standing.closing = true;
            }
            close.then_some(standing.provider)
        };
        if let Some(provider) = close {
            self.spawn_close(lease.contract_id, provider);
        }
    }

    async fn open_stream(&self, provider: NodeId) -> Result<TokenStream, String> {
        if provider == self.inner.me {
            let (ours, theirs) = TokenStream::local_pair(self.inner.me);
            let serving = self.inner.serving.clone();
            self.inner
                .tasks
                .spawn(async move { serving.serve_stream(theirs).await });
            return Ok(ours);
        }
        self.inner
            .network
            .open_token_stream(provider)
            .await
            .map_err(|error| error.to_string())
    }

    async fn stream_request(
        &self,
        provider: NodeId,
        lease: Lease,
        request: &GenerateRequest,
        text: &mpsc::Sender<String>,
        cancel: &CancellationToken,
    ) -> Result<Completed, Attempt> {
        let stream = self.open_stream(provider).await.map_err(Attempt::Next)?;
        let (reader, mut writer) = stream.split();
        writer
            .send(&TokensRequest::Generate {
                contract_id: lease.contract_id,
                seq: lease.seq,
                request: request.clone(),
            })
            .await
            .map_err(|error| Attempt::Next(error.to_string()))?;
        let (frames_tx, mut frames) = mpsc::channel::<Result<TokensResponse, String>>(16);
        let reading = tokio::spawn(read_responses(reader, frames_tx));
        let _reading = AbortOnDrop(reading);
        let mut received = String::new();
        let mut stopped = false;
        let signed = loop {
            let frame = tokio::select! {
                frame = frames.recv() => frame,
                () = cancel.cancelled(), if !stopped => {
                    stopped = true;
                    let _ = writer.send(&TokensRequest::Stop).await;
                    continue;
                }
                () = text.closed(), if !stopped => {
                    stopped = true;
                    let _ = writer.send(&TokensRequest::Stop).await;
                    continue;
                }
            };
            let committed = !received.is_empty();
            let fail = |message: String| {
                if committed {
                    Attempt::Fatal(RouteError::Failed(message))
                } else {
                    Attempt::Next(message)
                }
            };
            match frame {
                Some(Ok(TokensResponse::Text(piece))) => {
                    if piece.len() > suanli_protocol::tokens::MAX_TEXT_FRAME_BYTES {
                        self.inner
                            .market
                            .penalize_peer(provider, "oversized text frame".into())
                            .await;
                        return Err(fail("the provider sent an oversized text frame".into()));
                    }
                    received.push_str(&piece);
                    if !stopped && text.send(piece).await.is_err() {
                        stopped = true;
                        let _ = writer.send(&TokensRequest::Stop).await;
                    }
                }
                Some(Ok(TokensResponse::Done(signed))) => break signed,
                Some(Ok(TokensResponse::Error(error))) => {
                    return Err(match error.code {
                        ErrorCode::ContextLength if !committed => {
                            Attempt::Fatal(RouteError::ContextLength(error.message))
                        }
                        ErrorCode::BadRequest if !committed => {
                            Attempt::Fatal(RouteError::BadRequest(error.message))
                        }
                        ErrorCode::NotFound | ErrorCode::Unavailable if !committed => {
                            Attempt::Retry(error.message)
                        }
                        _ => fail(error.message),
                    });
                }
                Some(Ok(TokensResponse::Recorded)) => {
                    return Err(fail("the provider answered out of turn".into()));
                }
                Some(Err(message)) => return Err(fail(message)),
                None => return Err(fail("the provider closed the stream".into())),
            }
        };
        let receipt = self
            .check_receipt(provider, lease, request, &received, &signed)
            .map_err(|message| {
                warn!(%provider, contract = %lease.contract_id, %message, "usage receipt refused");
                Attempt::Fatal(RouteError::Failed(format!(
                    "the provider's usage receipt does not check: {message}"
                )))
            })?;
        let (countersigned, _) = CoSigned::countersign(signed, &self.inner.keypair)
            .map_err(|error| Attempt::Fatal(RouteError::Failed(error.to_string())))?;
        // Durable here before the client hears of the usage, and before the provider does.
        self.inner
            .ledger
            .append(EntryBody::Usage(countersigned.clone()))
            .await
            .map_err(|error| Attempt::Fatal(RouteError::Failed(format!("ledger: {error}"))))?;
        self.inner.metrics.tokens_receipted(
            &request.model,
            "requester",
            receipt.prompt_tokens,
            receipt.completion_tokens,
        );
        if writer
            .send(&TokensRequest::Countersigned(countersigned.clone()))
            .await
            .is_ok()
        {
            // The provider's acknowledgement; a lost one is made up for at the close.
            let _ = tokio::time::timeout(Duration::from_secs(5), frames.recv()).await;
        }
        writer.close().await;
        Ok(Completed {
            provider,
            contract_id: lease.contract_id,
            seq: lease.seq,
            prompt_tokens: receipt.prompt_tokens,
            completion_tokens: receipt.completion_tokens,
            finish: receipt.finish,
            cost: receipt.cost,
            receipt: countersigned,
        })
    }

    /// The checks of a provider's usage receipt before countersigning it.
    fn check_receipt(
        &self,
        provider: NodeId,
        lease: Lease,
        request: &GenerateRequest,
        received: &str,
        signed: &Signed<UsageReceipt>,
    ) -> Result<UsageReceipt, String> {
        let receipt = signed.verify().map_err(|error| error.to_string())?;
        let standing = self
            .pool()
            .contracts
            .get(&lease.contract_id)
            .cloned()
            .ok_or("the contract is gone")?;
        let check = |ok: bool, what: &str| if ok { Ok(()) } else { Err(what.to_owned()) };
        check(receipt.provider == provider, "provider")?;
        check(receipt.requester == self.inner.me, "requester")?;
        check(receipt.contract_id == lease.contract_id, "contract")?;
        check(receipt.seq == lease.seq, "request number")?;
        let hash = request.hash().map_err(|error| error.to_string())?;
        check(receipt.request_hash == hash, "request hash")?;
        check(
            receipt.model_sha256 == standing.model_sha256,
            "model sha256",
        )?;
        check(
            receipt.output_hash == Hash32::of(received.as_bytes()),
            "output hash (the text received differs)",
        )?;
        check(
            receipt.completion_tokens <= request.max_tokens,
            "completion tokens above max_tokens",
        )?;
        check(
            u64::from(receipt.prompt_tokens) <= prompt_bound(&request.prompt),
            "prompt tokens above what the prompt can hold",
        )?;
        check(
            receipt.completion_tokens > 0 || received.is_empty(),
            "text without completion tokens",
        )?;
        let tokens = u64::from(receipt.prompt_tokens) + u64::from(receipt.completion_tokens);
        check(
            standing.used.saturating_add(tokens) <= standing.budget,
            "beyond the contract's budget",
        )?;
        let cost = standing
            .price
            .cost_of_tokens(
                u64::from(receipt.prompt_tokens),
                u64::from(receipt.completion_tokens),
            )
            .map_err(|error| error.to_string())?;
        check(receipt.cost == cost, "cost at the contract's prices")?;
        Ok(receipt)
    }

    /// Closes a standing contract: tells its provider (again every [`CLOSE_RETRY`] until it
    /// answers, re-sending countersigned receipts it lacks), which then delivers its receipt.
    fn spawn_close(&self, contract_id: ContractId, provider: NodeId) {
        let router = self.clone();
        self.inner.tasks.spawn(async move {
            loop {
                match router.close_once(contract_id, provider).await {
                    Ok(()) => break,
                    Err(reason) => debug!(contract = %contract_id, %reason, "close retried"),
                }
                let ended = router
                    .inner
                    .ledger
                    .contract_docs(contract_id)
                    .ok()
                    .flatten()
                    .is_none_or(|docs| docs.settlement.is_some() || docs.failure.is_some());
                if ended {
                    break;
                }
                tokio::select! {
                    () = router.inner.cancel.cancelled() => return,
                    () = tokio::time::sleep(CLOSE_RETRY) => {}
                }
            }
            router.pool().contracts.remove(&contract_id);
        });
    }

    async fn close_once(&self, contract_id: ContractId, provider: NodeId) -> Result<(), String> {
        let receipts = self
            .inner
            .ledger
            .usage_receipts(contract_id)
            .map_err(|error| error.to_string())?;
        let count = u32::try_from(receipts.len()).unwrap_or(u32::MAX);
        let answer = self
            .exchange(
                provider,
                &TokensRequest::Close {
                    contract_id,
                    receipts: count,
                },
            )
            .await?;
        match answer {
            TokensResponse::Recorded => {
                info!(contract = %contract_id, %provider, requests = count, "standing contract closed");
                Ok(())
            }
            TokensResponse::Error(error) if error.code == ErrorCode::Unavailable => {
                // The provider lacks receipts this node countersigned: send them again.
                for receipt in receipts {
                    self.exchange(provider, &TokensRequest::Countersigned(receipt))
                        .await?;
                }
                Err(error.message)
            }
            other => Err(format!("unexpected answer {other:?}")),
        }
    }

    /// One request and its one answer on a fresh stream.
    async fn exchange(
        &self,
        provider: NodeId,
        request: &TokensRequest,
    ) -> Result<TokensResponse, String> {
        let stream = self.open_stream(provider).await?;
        let (mut reader, mut writer) = stream.split();
        writer
            .send(request)
            .await
            .map_err(|error| error.to_string())?;
        let answer = reader
            .recv::<TokensResponse>()
            .await
            .map_err(|error| error.to_string())?
            .ok_or("the provider closed the stream")?;
        writer.close().await;
        Ok(answer)
    }

    /// Closes every idle standing contract and waits up to `limit` for the providers to hear
    /// of it (at a stop: they then deliver, and the contracts settle now or at the next start).
    pub async fn close_all(&self, limit: Duration) {
        let idle: Vec<(ContractId, NodeId)> = {
            let mut pool = self.pool();
            pool.contracts
                .values_mut()
                .filter(|s| s.in_flight == 0 && !s.closing)
                .map(|s| {
                    s.usable = false;
                    s.closing = true;
                    (s.contract_id, s.provider)
                })
                .collect()
        };
        let closes = idle
            .into_iter()
            .map(|(id, provider)| async move { self.close_once(id, provider).await });
        let _ = tokio::time::timeout(limit, futures::future::join_all(closes)).await;
    }

    /// Waits for the router's tasks (at a stop, after the node's cancellation).
    pub async fn stopped(&self) {
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }
}

/// A request being served ([`Router::serve`]): its text as it comes, then how it ended.
#[derive(Debug)]
pub struct Generating {
    pub text: mpsc::Receiver<String>,
    pub done: tokio::sync::oneshot::Receiver<Result<Completed, RouteError>>,
}

/// How a try with one provider ended, when it did not serve the request.
#[derive(Debug)]
enum Attempt {
    /// Ask the next provider.
    Next(String),
    /// Ask this provider again under a fresh contract.
    Retry(String),
    /// The request is over.
    Fatal(RouteError),
}

/// The most prompt tokens a prompt can take: a byte-level tokenizer makes at most one token of a
/// byte, and a chat template adds a few per message and a default system prompt.
pub fn prompt_bound(prompt: &Prompt) -> u64 {
    let messages = match prompt {
        Prompt::Chat(messages) => messages.len() as u64,
        Prompt::Text(_) => 0,
    };
    (prompt.text_bytes() as u64)
        .saturating_add(messages.saturating_mul(8))
        .saturating_add(64)
}

fn price_key(info: &ModelInfo) -> (Credits, Credits) {
    (info.per_million_completion, info.per_million_prompt)
}

async fn read_responses(
    mut reader: FrameReader,
    sink: mpsc::Sender<Result<TokensResponse, String>>,
) {
    loop {
        let frame = match reader.recv::<TokensResponse>().await {
            Ok(Some(frame)) => Ok(frame),
            Ok(None) => break,
            Err(error) => Err(error.to_string()),
        };
        let failed = frame.is_err();
        if sink.send(frame).await.is_err() || failed {
            break;
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
