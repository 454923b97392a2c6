//! The provider side of AI tokens: the models this node serves, the standing contracts (sessions)
//! running on it, and the requests streamed under them (`/suanli/tokens/1`).
//!
//! A session is the "run" of a standing contract: the contract's driver starts it when the
//! requester's `Execute` arrives ([`Serving::run_session`]) and it ends when the requester sends
//! `Close`, the budget is spent, its time is up, or the contract ends; its report then carries
//! the totals of every countersigned usage receipt, and the contract settles on them like any
//! other run. Its state is rebuilt from the ledger's usage receipts when the run starts again
//! after a crash.
//!
//! Each request: the checks (the contract's requester, model, a fresh `seq`, the budget with
//! every request in flight reserved at its most, at most [`MAX_UNCOUNTERSIGNED`] receipts
//! awaiting their countersignature), a generation permit (`tokens.streams` at once over all
//! models), the text streamed as it is decoded, the receipt signed, and — once the requester
//! sends it back countersigned — appended to the ledger and counted. A receipt the requester
//! never countersigns is never billed; the limit on those bounds what a requester can take
//! without paying to a few requests.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use suanli_protocol::engine::RunReport;
use suanli_protocol::job::Limits;
use suanli_protocol::ledger::EntryBody;
use suanli_protocol::tokens::{
    GenerateRequest, ModelInfo, TokensRequest, TokensResponse, UsageReceipt, session_output,
};
use suanli_protocol::wire::{ErrorCode, WireError};
use suanli_protocol::{
    CoSigned, ContractId, Credits, DeclineCode, Hash32, JobSpec, Keypair, NodeId, Outcome,
    PriceTerms, Signed, Usage,
};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::clock::now_ms;
use crate::config::TokensConfig;
use crate::inference::{Backend, InferenceError, STREAM_BUFFER, ServedModel};
use crate::ledger::LedgerHandle;
use crate::network::tokens::{FrameReader, FrameWriter, TokenStream};

/// Receipts a session may have signed and not yet seen countersigned; beyond, requests wait.
pub const MAX_UNCOUNTERSIGNED: usize = 4;
/// Requests one session generates at once.
pub const MAX_STREAMS_PER_SESSION: usize = 8;
/// How long a request waits for its session to start (its contract's `Execute` may still be on
/// its way).
const SESSION_WAIT: Duration = Duration::from_secs(5);
/// How long a provider waits for a receipt's countersignature.
const COUNTERSIGN_WAIT: Duration = Duration::from_secs(30);
/// A session ends this long before its contract's deadline, so its receipt is delivered in time.
const END_MARGIN_MS: u64 = 10_000;
/// A session whose remaining budget is below this ends (no useful request fits).
const MIN_REMAINING_TOKENS: u64 = 16;

/// A model this node serves, with its prices.
#[derive(Debug, Clone)]
pub struct Offered {
    pub model: ServedModel,
    pub per_million_prompt: Credits,
    pub per_million_completion: Credits,
}

impl Offered {
    /// How adverts describe it.
    pub fn info(&self) -> ModelInfo {
        let model = &self.model;
        ModelInfo {
            name: model.name.clone(),
            family: model.family.clone(),
            context: model.context,
            quantisation: model.quantisation.clone(),
            sha256: model.sha256,
            decode_tokens_per_s: model.decode_tokens_per_s,
            per_million_prompt: self.per_million_prompt,
            per_million_completion: self.per_million_completion,
        }
    }

    /// The price terms of a standing contract for it.
    pub fn terms(&self) -> PriceTerms {
        PriceTerms {
            base: Credits::ZERO,
            per_million_fuel: Credits::ZERO,
            per_million_prompt: self.per_million_prompt,
            per_million_completion: self.per_million_completion,
            per_cpu_second: Credits::ZERO,
        }
    }
}

/// The provider side of AI tokens.
#[derive(Clone)]
pub struct Serving {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Serving {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serving")
            .field("models", &self.inner.models.len())
            .finish_non_exhaustive()
    }
}

struct Inner {
    /// Where requests served are counted.
    metrics: crate::metrics::Metrics,
    keypair: Keypair,
    ledger: LedgerHandle,
    models: Vec<Offered>,
    config: TokensConfig,
    /// Generation permits: requests decoded at once over all models.
    generate: Arc<Semaphore>,
    sessions: Mutex<HashMap<ContractId, Arc<Session>>>,
    /// Test only (`provider.test_corrupt_output`): the text sent and signed for has its ASCII
    /// letters' case swapped, so that a replicated request sees a provider disagree.
    corrupt_output: bool,
    cancel: CancellationToken,
}

/// One standing contract being served.
struct Session {
    contract_id: ContractId,
    requester: NodeId,
    model: usize,
    price: PriceTerms,
    budget: u64,
    max_receipts: usize,
    /// Fired when the session ends (closed, budget spent, time up): requests in flight stop.
    ended: CancellationToken,
    state: Mutex<SessionState>,
}

#[derive(Default)]
struct SessionState {
    /// Countersigned and recorded, by seq.
    receipts: BTreeMap<u32, CoSigned<UsageReceipt>>,
    /// Signed, waiting for the requester's countersignature.
    signed: BTreeMap<u32, Signed<UsageReceipt>>,
    generating: BTreeSet<u32>,
    /// Countersigned receipts being appended.
    recording: BTreeSet<u32>,
    /// Tokens reserved by the requests generating (prompt + max_tokens each).
    reserved: u64,
    prompt: u64,
    completion: u64,
    closed: bool,
}

impl SessionState {
    fn used(&self) -> u64 {
        self.prompt.saturating_add(self.completion)
    }
}

impl Session {
    fn state(&self) -> std::sync::MutexGuard<'_, SessionState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Why a request was refused: the wire error sent back.
type Refusal = (ErrorCode, String);

/// What serving models needs.
#[derive(Debug)]
pub struct ServingParts {
    pub keypair: Keypair,
    pub ledger: LedgerHandle,
    pub models: Vec<Offered>,
    pub config: TokensConfig,
    /// Requests decoded at once over all models.
    pub streams: u32,
    /// Test only: return a different text than generated.
    pub corrupt_output: bool,
    pub metrics: crate::metrics::Metrics,
    pub cancel: CancellationToken,
}

impl Serving {
    pub fn new(parts: ServingParts) -> Serving {
        Serving {
            inner: Arc::new(Inner {
                metrics: parts.metrics,
                keypair: parts.keypair,
                ledger: parts.ledger,
                models: parts.models,
                config: parts.config,
                generate: Arc::new(Semaphore::new(parts.streams.max(1) as usize)),
                sessions: Mutex::new(HashMap::new()),
                corrupt_output: parts.corrupt_output,
                cancel: parts.cancel,
            }),
        }
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<ContractId, Arc<Session>>> {
        self.inner
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The models served, as adverts describe them.
    pub fn models(&self) -> Vec<ModelInfo> {
        self.inner.models.iter().map(Offered::info).collect()
    }

    /// The model served as `name`.
    pub fn model(&self, name: &str) -> Option<&Offered> {
        self.inner.models.iter().find(|m| m.model.name == name)
    }

    /// Whether a contract for a module with this hash is a session (the hash is a served model's).
    pub fn serves_sha(&self, sha256: &Hash32) -> bool {
        self.inner
            .models
            .iter()
            .any(|m| model_hash(&m.model) == *sha256)
    }

    /// The standing contracts this node serves now.
    pub fn session_views(&self) -> Vec<super::SessionView> {
        let sessions: Vec<Arc<Session>> = self.sessions().values().cloned().collect();
        sessions
            .iter()
            .map(|session| {
                let state = session.state();
                super::SessionView {
                    contract_id: session.contract_id,
                    side: super::SessionSide::Provider,
                    peer: session.requester,
                    model: self
                        .inner
                        .models
                        .get(session.model)
                        .map(|offered| offered.model.name.clone())
                        .unwrap_or_default(),
                    budget_tokens: session.budget,
                    used_tokens: state.used(),
                    reserved_tokens: state.reserved,
                    in_flight: u32::try_from(state.generating.len()).unwrap_or(u32::MAX),
                    closing: state.closed || session.ended.is_cancelled(),
                }
            })
            .collect()
    }

    /// Sessions running now.
    pub fn running(&self) -> usize {
        self.sessions().len()
    }

    /// The price terms this node offers for a standing contract of `spec`, or why not.
    pub fn terms(&self, spec: &JobSpec) -> Result<PriceTerms, (DeclineCode, String)> {
        let name = spec.args.first().map(String::as_str).unwrap_or_default();
        let Some(offered) = self.model(name) else {
            return Err((
                DeclineCode::ExecutorUnsupported,
                format!("model {name:?} is not served here"),
            ));
        };
        if model_hash(&offered.model) != spec.module_hash {
            return Err((
                DeclineCode::ExecutorUnsupported,
                format!(
                    "model {name:?} is served here with sha256 {}, not {}",
                    model_hash(&offered.model),
                    spec.module_hash
                ),
            ));
        }
        let config = &self.inner.config;
        let limits = &spec.limits;
        let max_ms = config.max_contract_secs.saturating_mul(1000);
        if limits.fuel > config.max_budget_tokens || limits.wall_time_ms > max_ms {
            return Err((
                DeclineCode::LimitsExceeded,
                format!(
                    "a standing contract here holds at most {} tokens for {} s",
                    config.max_budget_tokens, config.max_contract_secs
                ),
            ));
        }
        if self.running() >= config.max_contracts as usize {
            return Err((
                DeclineCode::Busy,
                format!("{} standing contracts are open here", self.running()),
            ));
        }
        let terms = offered.terms();
        match terms.max_cost(limits) {
            Ok(cost) if cost <= spec.max_price => Ok(terms),
            Ok(cost) => Err((
                DeclineCode::PriceTooLow,
                format!(
                    "max price {} is below this provider's price of up to {} for this budget",
                    spec.max_price.micro(),
                    cost.micro()
                ),
            )),
            Err(_) => Err((DeclineCode::LimitsExceeded, "cost overflows".into())),
        }
    }

    /// Serves standing contract `id` (the "run" of its `Execute`) until it ends, then reports
    /// its totals; `stop` ends it early (the contract ended, or the node stops: the report is
    /// then not used).
    pub async fn run_session(
        &self,
        id: ContractId,
        spec: &JobSpec,
        limits: Limits,
        stop: CancellationToken,
    ) -> RunReport {
        let started = Instant::now();
        let session = match self.open_session(id, spec, limits) {
            Ok(session) => session,
            Err(message) => {
                warn!(contract = %id, %message, "cannot start a session");
                return failed_report(&message);
            }
        };
        let contract_end_ms = session_end_ms(&self.inner.ledger, id, limits);
        let wait_ms = contract_end_ms.saturating_sub(now_ms());
        info!(contract = %id, requester = %session.requester, model = %spec.args.first().cloned().unwrap_or_default(), budget = session.budget, "session started");
        tokio::select! {
            () = session.ended.cancelled() => {}
            () = tokio::time::sleep(Duration::from_millis(wait_ms)) => {
                debug!(contract = %id, "session time is up");
            }
            () = stop.cancelled() => {}
        }
        session.ended.cancel();
        {
            let mut state = session.state();
            state.closed = true;
        }
        // Requests in flight stop at their next token; give them a moment to sign their receipt.
        let settle_by = Instant::now() + Duration::from_secs(5);
        while !session.state().generating.is_empty() && Instant::now() < settle_by {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.sessions().remove(&id);
        let state = session.state();
        let receipts: Vec<CoSigned<UsageReceipt>> = state.receipts.values().cloned().collect();
        let output = session_output(&receipts);
        let usage = Usage {
            fuel: state.used(),
            wall_time_ms: u64::try_from(started.elapsed().as_millis())
                .unwrap_or(u64::MAX)
                .min(limits.wall_time_ms),
            memory_bytes: 0,
            output_bytes: output.len() as u64,
            prompt_tokens: state.prompt,
            completion_tokens: state.completion,
            cluster: None,
        };
        info!(contract = %id, requests = receipts.len(), prompt_tokens = state.prompt, completion_tokens = state.completion, "session ended");
        RunReport {
            outcome: Outcome::Succeeded {
                exit_code: 0,
                output_hash: Hash32::of(&output),
                output_len: output.len() as u64,
            },
            usage,
            output,
        }
    }

    fn open_session(
        &self,
        id: ContractId,
        spec: &JobSpec,
        limits: Limits,
    ) -> Result<Arc<Session>, String> {
        let name = spec.args.first().map(String::as_str).unwrap_or_default();
        let model = self
            .inner
            .models
            .iter()
            .position(|m| m.model.name == name && model_hash(&m.model) == spec.module_hash)
            .ok_or_else(|| format!("model {name:?} is not served here any more"))?;
        let docs = self
            .inner
            .ledger
            .contract_docs(id)
            .map_err(|error| error.to_string())?
            .ok_or("the contract is not in the ledger")?;
        let contract = docs
            .contract
            .decode_unverified()
            .map_err(|error| error.to_string())?;
        let mut state = SessionState::default();
        // After a restart: what was served under it already.
        for receipt in self
            .inner
            .ledger
            .usage_receipts(id)
            .map_err(|error| error.to_string())?
        {
            if let Ok(usage) = receipt.decode_unverified() {
                state.prompt += u64::from(usage.prompt_tokens);
                state.completion += u64::from(usage.completion_tokens);
                state.receipts.insert(usage.seq, receipt);
            }
        }
        let session = Arc::new(Session {
            contract_id: id,
            requester: contract.requester,
            model,
            price: contract.price,
            budget: limits.fuel,
            max_receipts: usize::try_from(limits.output_bytes / 32).unwrap_or(usize::MAX),
            ended: self.inner.cancel.child_token(),
            state: Mutex::new(state),
        });
        self.sessions().insert(id, session.clone());
        Ok(session)
    }

    /// The session of contract `id`, waiting up to [`SESSION_WAIT`] for it to start.
    async fn session(&self, id: &ContractId) -> Option<Arc<Session>> {
        let until = Instant::now() + SESSION_WAIT;
        loop {
            if let Some(session) = self.sessions().get(id).cloned() {
                return Some(session);
            }
            if Instant::now() >= until || self.inner.cancel.is_cancelled() {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Serves one inbound token stream to its end.
    pub async fn serve_stream(&self, stream: TokenStream) {
        let peer = stream.peer();
        let (mut reader, mut writer) = stream.split();
        let first = match reader.recv::<TokensRequest>().await {
            Ok(Some(request)) => request,
            Ok(None) => return,
            Err(error) => {
                debug!(%peer, %error, "token stream: no request");
                return;
            }
        };
        let answer = match first {
            TokensRequest::Generate {
                contract_id,
                seq,
                request,
            } => {
                self.generate(peer, contract_id, seq, request, reader, &mut writer)
                    .await;
                writer.close().await;
                return;
            }
            TokensRequest::Countersigned(receipt) => self.countersigned(peer, receipt).await,
            TokensRequest::Close {
                contract_id,
                receipts,
            } => self.close(peer, contract_id, receipts).await,
            TokensRequest::Receipt { contract_id, seq } => self.receipt(peer, contract_id, seq),
            TokensRequest::Stop => Err((ErrorCode::BadRequest, "nothing to stop".into())),
        };
        let response = answer
            .unwrap_or_else(|(code, message)| TokensResponse::Error(WireError::new(code, message)));
        let _ = writer.send(&response).await;
        writer.close().await;
    }

    async fn generate(
        &self,
        peer: NodeId,
        contract_id: ContractId,
        seq: u32,
        request: GenerateRequest,
        reader: FrameReader,
        writer: &mut FrameWriter,
    ) {
        let admitted = self.admit(peer, contract_id, seq, &request).await;
        let (session, reserved) = match admitted {
            Ok(admitted) => admitted,
            Err((code, message)) => {
                debug!(%peer, contract = %contract_id, seq, %message, "request refused");
                let _ = writer
                    .send(&TokensResponse::Error(WireError::new(code, message)))
                    .await;
                return;
            }
        };
        let result = self
            .generate_admitted(&session, seq, &request, reader, writer)
            .await;
        let mut state = session.state();
        state.generating.remove(&seq);
        state.reserved = state.reserved.saturating_sub(reserved);
        drop(state);
        if let Err(message) = result {
            debug!(%peer, contract = %contract_id, seq, %message, "request ended without a countersigned receipt");
        }
    }

    /// The checks of a request, and its reservation: the session and the tokens reserved.
    async fn admit(
        &self,
        peer: NodeId,
        id: ContractId,
        seq: u32,
        request: &GenerateRequest,
    ) -> Result<(Arc<Session>, u64), Refusal> {
        let session = self.session(&id).await.ok_or((
            ErrorCode::NotFound,
            "no such standing contract is being served here".to_owned(),
        ))?;
        if session.requester != peer {
            return Err((
                ErrorCode::Forbidden,
                "the contract is not the sender's".into(),
            ));
        }
        request
            .validate()
            .map_err(|error| (ErrorCode::BadRequest, error.to_string()))?;
        let offered = self
            .inner
            .models
            .get(session.model)
            .ok_or((ErrorCode::Internal, "model gone".to_owned()))?;
        if request.model != offered.model.name {
            return Err((
                ErrorCode::BadRequest,
                format!("the contract is for model {:?}", offered.model.name),
            ));
        }
        let prompt_tokens = prompt_estimate(&offered.model, request).await?;
        let context = offered.model.context;
        if u64::from(prompt_tokens) + u64::from(request.max_tokens) > u64::from(context) {
            return Err((
                ErrorCode::ContextLength,
                InferenceError::ContextLength {
                    max: context,
                    prompt: prompt_tokens,
                    max_tokens: request.max_tokens,
                }
                .to_string(),
            ));
        }
        let need = u64::from(prompt_tokens) + u64::from(request.max_tokens);
        let mut state = session.state();
        if state.closed {
            return Err((ErrorCode::Unavailable, "the contract is closed".into()));
        }
        if seq == 0
            || state.receipts.contains_key(&seq)
            || state.signed.contains_key(&seq)
            || state.generating.contains(&seq)
        {
            return Err((
                ErrorCode::BadRequest,
                format!("request number {seq} is used already"),
            ));
        }
        if state.signed.len() >= MAX_UNCOUNTERSIGNED {
            return Err((
                ErrorCode::Unavailable,
                "countersign the receipts of earlier requests first".into(),
            ));
        }
        if state.generating.len() >= MAX_STREAMS_PER_SESSION {
            return Err((
                ErrorCode::Unavailable,
                format!("at most {MAX_STREAMS_PER_SESSION} requests at once per contract"),
            ));
        }
        let count = state.receipts.len() + state.signed.len() + state.generating.len();
        let remaining = session
            .budget
            .saturating_sub(state.used())
            .saturating_sub(state.reserved);
        if need > remaining || count >= session.max_receipts {
            return Err((
                ErrorCode::Unavailable,
                format!(
                    "the contract's budget has {remaining} tokens left; this request may take {need}"
                ),
            ));
        }
        state.generating.insert(seq);
        state.reserved += need;
        Ok((session.clone(), need))
    }

    async fn generate_admitted(
        &self,
        session: &Session,
        seq: u32,
        request: &GenerateRequest,
        reader: FrameReader,
        writer: &mut FrameWriter,
    ) -> Result<(), String> {
        let offered = self
            .inner
            .models
            .get(session.model)
            .ok_or("model gone")?
            .clone();
        // Everything the requester sends from now on, read by one task in order.
        let (inbound_tx, mut inbound) = mpsc::channel::<TokensRequest>(4);
        let reading = tokio::spawn(read_frames(reader, inbound_tx));
        let _reading = AbortOnDrop(reading);
        let stop = session.ended.child_token();
        let permit = tokio::select! {
            permit = self.inner.generate.clone().acquire_owned() => permit.map_err(|_| "stopped")?,
            () = stop.cancelled() => return Err("the session ended".into()),
        };
        let (pieces_tx, mut pieces) = mpsc::channel::<String>(STREAM_BUFFER);
        let backend: Backend = offered.model.backend.clone();
        let generation = backend.generate(request, pieces_tx, stop.clone());
        tokio::pin!(generation);
        let mut sending = true;
        let result = loop {
            tokio::select! {
                result = &mut generation => break result,
                piece = pieces.recv() => {
                    if let Some(piece) = piece.map(|piece| self.as_sent(piece))
                        && sending
                        && writer.send(&TokensResponse::Text(piece)).await.is_err()
                    {
                        sending = false;
                        stop.cancel();
                    }
                }
                message = inbound.recv() => match message {
                    Some(TokensRequest::Stop) | None => stop.cancel(),
                    Some(_) => {}
                }
            }
        };
        drop(permit);
        // The pieces decoded before the end.
        while let Ok(piece) = pieces.try_recv().map(|piece| self.as_sent(piece)) {
            if sending && writer.send(&TokensResponse::Text(piece)).await.is_err() {
                sending = false;
            }
        }
        let generation = match result {
            Ok(generation) => generation,
            Err(error) => {
                let code = match error {
                    InferenceError::ContextLength { .. } => ErrorCode::ContextLength,
                    InferenceError::BadRequest(_) => ErrorCode::BadRequest,
                    InferenceError::Failed(_) => ErrorCode::Internal,
                };
                let _ = writer
                    .send(&TokensResponse::Error(WireError::new(
                        code,
                        error.to_string(),
                    )))
                    .await;
                return Err(error.to_string());
            }
        };
        if !sending {
            // Nobody is there to countersign it: the request is not billed.
            return Err("the requester went away before the receipt".into());
        }
        let signed = self.sign_receipt(session, seq, request, &offered, &generation)?;
        session.state().signed.insert(seq, signed.clone());
        writer
            .send(&TokensResponse::Done(signed))
            .await
            .map_err(|error| error.to_string())?;
        // Its countersignature comes on the same stream.
        let countersigned = loop {
            match tokio::time::timeout(COUNTERSIGN_WAIT, inbound.recv()).await {
                Ok(Some(TokensRequest::Countersigned(receipt))) => break receipt,
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => return Err("no countersignature came".into()),
            }
        };
        let answer = match self.countersigned(session.requester, countersigned).await {
            Ok(answer) => answer,
            Err((code, message)) => TokensResponse::Error(WireError::new(code, message)),
        };
        let _ = writer.send(&answer).await;
        Ok(())
    }

    /// Generated text as this node sends and signs for it: itself, but for the test hook.
    fn as_sent(&self, text: String) -> String {
        if self.inner.corrupt_output {
            text.chars()
                .map(|c| {
                    if c.is_ascii_lowercase() {
                        c.to_ascii_uppercase()
                    } else {
                        c.to_ascii_lowercase()
                    }
                })
                .collect()
        } else {
            text
        }
    }

    fn sign_receipt(
        &self,
        session: &Session,
        seq: u32,
        request: &GenerateRequest,
        offered: &Offered,
        generation: &crate::inference::Generation,
    ) -> Result<Signed<UsageReceipt>, String> {
        let cost = session
            .price
            .cost_of_tokens(
                u64::from(generation.prompt_tokens),
                u64::from(generation.completion_tokens),
            )
            .map_err(|error| error.to_string())?;
        let receipt = UsageReceipt {
            contract_id: session.contract_id,
            provider: self.inner.keypair.node_id(),
            requester: session.requester,
            seq,
            request_hash: request.hash().map_err(|error| error.to_string())?,
            model_sha256: model_hash(&offered.model),
            prompt_tokens: generation.prompt_tokens,
            completion_tokens: generation.completion_tokens,
            finish: generation.finish,
            output_hash: Hash32::of(self.as_sent(generation.text.clone()).as_bytes()),
            cost,
            finished_at_ms: now_ms(),
        };
        Signed::sign(&receipt, &self.inner.keypair).map_err(|error| error.to_string())
    }

    /// A countersigned receipt from `peer`: checked against the one this node signed, recorded
    /// (its append is durable before the answer), counted.
    async fn countersigned(
        &self,
        peer: NodeId,
        receipt: CoSigned<UsageReceipt>,
    ) -> Result<TokensResponse, Refusal> {
        let usage = receipt
            .verify()
            .map_err(|error| (ErrorCode::BadRequest, error.to_string()))?;
        let Some(session) = self.sessions().get(&usage.contract_id).cloned() else {
            return Err((
                ErrorCode::NotFound,
                "no such standing contract is being served here".into(),
            ));
        };
        if session.requester != peer || usage.requester != peer {
            return Err((
                ErrorCode::Forbidden,
                "the receipt is not the sender's".into(),
            ));
        }
        {
            let mut state = session.state();
            if state.receipts.contains_key(&usage.seq) {
                return Ok(TokensResponse::Recorded);
            }
            if !state.recording.insert(usage.seq) {
                return Err((
                    ErrorCode::Unavailable,
                    format!("request {}'s receipt is being recorded", usage.seq),
                ));
            }
            let ours = state
                .signed
                .get(&usage.seq)
                .is_some_and(|signed| signed.bytes() == receipt.first().bytes());
            if !ours {
                state.recording.remove(&usage.seq);
                return Err((
                    ErrorCode::BadRequest,
                    format!(
                        "request {} has no receipt of this node to countersign",
                        usage.seq
                    ),
                ));
            }
        }
        let me = self.inner.keypair.node_id();
        let ledger = self.inner.ledger.clone();
        let entry = EntryBody::Usage(receipt.clone());
        // A contract with itself is recorded once, by its requester side.
        let appended = match peer == me {
            true => Ok(()),
            false => ledger.append(entry).await.map(|_| ()),
        };
        let mut state = session.state();
        state.recording.remove(&usage.seq);
        if let Err(error) = appended {
            return Err((ErrorCode::Unavailable, format!("ledger: {error}")));
        }
        state.signed.remove(&usage.seq);
        if state.receipts.insert(usage.seq, receipt).is_none() {
            state.prompt += u64::from(usage.prompt_tokens);
            state.completion += u64::from(usage.completion_tokens);
            if let Some(offered) = self.inner.models.get(session.model) {
                self.inner.metrics.tokens_receipted(
                    &offered.model.name,
                    "provider",
                    usage.prompt_tokens,
                    usage.completion_tokens,
                );
            }
        }
        let remaining = session
            .budget
            .saturating_sub(state.used())
            .saturating_sub(state.reserved);
        if remaining < MIN_REMAINING_TOKENS && state.generating.is_empty() {
            debug!(contract = %usage.contract_id, "budget spent");
            session.ended.cancel();
        }
        Ok(TokensResponse::Recorded)
    }

    async fn close(
        &self,
        peer: NodeId,
        id: ContractId,
        receipts: u32,
    ) -> Result<TokensResponse, Refusal> {
        let Some(session) = self.session(&id).await else {
            // Not running: ended already (or never made here), or not started again yet after a
            // restart (its Execute is on its way): then the requester asks again.
            let docs = self
                .inner
                .ledger
                .contract_docs(id)
                .map_err(|error| (ErrorCode::Unavailable, error.to_string()))?;
            let waiting = docs.is_some_and(|docs| {
                docs.receipt.is_none() && docs.settlement.is_none() && docs.failure.is_none()
            });
            if waiting {
                return Err((
                    ErrorCode::Unavailable,
                    "the contract's session has not started again yet".into(),
                ));
            }
            return Ok(TokensResponse::Recorded);
        };
        if session.requester != peer {
            return Err((
                ErrorCode::Forbidden,
                "the contract is not the sender's".into(),
            ));
        }
        let held = session.state().receipts.len();
        if (held as u64) < u64::from(receipts) {
            return Err((
                ErrorCode::Unavailable,
                format!(
                    "this node holds {held} of the {receipts} countersigned receipts; send them again"
                ),
            ));
        }
        session.state().closed = true;
        session.ended.cancel();
        Ok(TokensResponse::Recorded)
    }

    fn receipt(&self, peer: NodeId, id: ContractId, seq: u32) -> Result<TokensResponse, Refusal> {
        let session = self
            .sessions()
            .get(&id)
            .cloned()
            .ok_or((ErrorCode::NotFound, "no such session".to_owned()))?;
        if session.requester != peer {
            return Err((ErrorCode::Forbidden, "not the sender's".into()));
        }
        let state = session.state();
        match state.signed.get(&seq) {
            Some(signed) => Ok(TokensResponse::Done(signed.clone())),
            None if state.receipts.contains_key(&seq) => Ok(TokensResponse::Recorded),
            None => Err((ErrorCode::NotFound, format!("no receipt for request {seq}"))),
        }
    }
}

/// The hash a standing contract for `model` binds.
pub fn model_hash(model: &ServedModel) -> Hash32 {
    suanli_protocol::tokens::model_hash(&model.name, model.sha256)
}

/// Prompt tokens of `request` as the engine counts them, or a bound (4 bytes a token is the
/// most an upstream's tokenizer is assumed to pack) for an upstream server.
async fn prompt_estimate(model: &ServedModel, request: &GenerateRequest) -> Result<u32, Refusal> {
    match &model.backend {
        Backend::Candle(candle) => {
            let (candle, prompt) = (candle.clone(), request.prompt.clone());
            tokio::task::spawn_blocking(move || candle.prompt_tokens(&prompt))
                .await
                .map_err(|error| (ErrorCode::Internal, error.to_string()))?
                .map_err(|error| match error {
                    InferenceError::BadRequest(message) => (ErrorCode::BadRequest, message),
                    other => (ErrorCode::Internal, other.to_string()),
                })
        }
        Backend::Upstream(_) => {
            Ok(u32::try_from(request.prompt.text_bytes().div_ceil(4)).unwrap_or(u32::MAX))
        }
    }
}

/// When a session of contract `id` ends: its time limit after the contract was made, and before
/// the contract's deadline with a margin to deliver.
fn session_end_ms(ledger: &LedgerHandle, id: ContractId, limits: Limits) -> u64 {
    let contract = ledger
        .contract_docs(id)
        .ok()
        .flatten()
        .and_then(|docs| docs.contract.decode_unverified().ok());
    match contract {
        Some(contract) => contract
            .created_at_ms
            .saturating_add(limits.wall_time_ms)
            .min(contract.deadline_ms.saturating_sub(END_MARGIN_MS)),
        None => now_ms().saturating_add(limits.wall_time_ms),
    }
}

fn failed_report(message: &str) -> RunReport {
    RunReport {
        outcome: Outcome::Failed {
            reason: suanli_protocol::FailureReason::InvalidModule,
            message: suanli_protocol::engine::truncate(message),
        },
        usage: Usage::default(),
        output: Vec::new(),
    }
}

/// Reads a stream's frames in order into `sink` until it ends or the sink is gone.
async fn read_frames(mut reader: FrameReader, sink: mpsc::Sender<TokensRequest>) {
    while let Ok(Some(message)) = reader.recv::<TokensRequest>().await {
        if sink.send(message).await.is_err() {
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
