//! Replicated token requests: one greedy request served by `k` distinct providers of one model
//! file at once, each under its own standing contract, and answered with the text a strict
//! majority of the `k` returned (docs/rfcs/010-replicas.md, "Token requests").
//!
//! ```text
//! candidates of the model, one model file ─▶ k runs at once (a failed run tries the next)
//!   ─▶ each run's receipt checked, countersigned, in the ledger (as any request)
//!   ─▶ majority of the output hashes ─▶ evidence against each odd provider (durable) ─▶ answer
//! ```
//!
//! Greedy decoding on one model file and one engine is deterministic, so honest providers
//! return the same text; an upstream server (no model file) cannot be compared and is never a
//! replica. Every run that completed is billed, whatever the verdict: each provider served the
//! request. The evidence ([`TokenMismatch`]) is the request and the receipts both parties
//! signed; anyone can verify it, and this node's reputation counts it against the odd provider.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use suanli_protocol::job::MAX_REPLICAS;
use suanli_protocol::replicas::{TokenMismatch, majority};
use suanli_protocol::tokens::{Finish, GenerateRequest, ModelInfo, model_hash};
use suanli_protocol::{Credits, Hash32, JobId, NodeId};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::{Attempt, CANDIDATES_PER_REQUEST, Completed, RouteError, Router};
use crate::clock::now_ms;
use crate::market::{EvidenceKind, MismatchRecord};

/// Tries at storing evidence before the answer goes without it.
const EVIDENCE_TRIES: u32 = 3;
const EVIDENCE_RETRY: Duration = Duration::from_millis(200);

/// A replicated request's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replicated {
    /// Names the replicated request (the `group` of any evidence it stored).
    pub id: JobId,
    /// The majority's text.
    pub text: String,
    /// A run of the majority (its provider, contract and usage answer the client).
    pub completed: Completed,
    /// Replicas asked for.
    pub asked: u8,
    /// Runs that returned the majority's text.
    pub agreeing: usize,
    /// The providers whose text differed (evidence is stored against each).
    pub odd: Vec<NodeId>,
    /// What every completed run cost together.
    pub cost: Credits,
}

/// One replica's completed run.
struct Run {
    completed: Completed,
    text: String,
}

/// How a replica's slot ended without a run.
enum SlotError {
    /// The request itself is at fault (every provider would refuse it).
    Fatal(RouteError),
    /// Every provider the slot tried failed, one reason each.
    Failed(Vec<String>),
}

impl Router {
    /// Serves `request` on `replicas` distinct providers and answers with the majority's text,
    /// on a task of its own: a client that goes away does not stop the runs, which are billed
    /// and compared as if it had stayed.
    pub fn serve_replicated(
        &self,
        request: GenerateRequest,
        replicas: u8,
    ) -> tokio::sync::oneshot::Receiver<Result<Replicated, RouteError>> {
        let (done_tx, done) = tokio::sync::oneshot::channel();
        let router = self.clone();
        self.inner.tasks.spawn(async move {
            let started = std::time::Instant::now();
            let result = router.generate_replicated(&request, replicas).await;
            router.count(&request.model, started, result.as_ref().err());
            let _ = done_tx.send(result);
        });
        done
    }

    /// [`Self::serve_replicated`], awaited.
    pub async fn generate_replicated(
        &self,
        request: &GenerateRequest,
        replicas: u8,
    ) -> Result<Replicated, RouteError> {
        if self.inner.cancel.is_cancelled() {
            return Err(RouteError::ShuttingDown);
        }
        request
            .validate()
            .map_err(|error| RouteError::BadRequest(error.to_string()))?;
        if !(2..=MAX_REPLICAS).contains(&replicas) {
            return Err(RouteError::BadRequest(format!(
                "replicas must be between 2 and {MAX_REPLICAS}, got {replicas}"
            )));
        }
        if request.sampling.temperature_milli != 0 {
            return Err(RouteError::BadRequest(
                "replicas compare the providers' text, which only greedy decoding \
                 (temperature 0) reproduces"
                    .into(),
            ));
        }
        let k = usize::from(replicas);
        let mut candidates = self.replica_candidates(request, k)?;
        let spare: VecDeque<_> = candidates
            .split_off(k)
            .into_iter()
            .take(CANDIDATES_PER_REQUEST)
            .collect();
        let spare = Mutex::new(spare);
        let id = request_id(request);
        let cancel = self.inner.cancel.child_token();
        let slots = candidates
            .into_iter()
            .map(|first| self.replica_slot(first, &spare, request, &cancel));
        let mut runs = Vec::with_capacity(k);
        let mut reasons = Vec::new();
        let mut fatal = None;
        for slot in futures::future::join_all(slots).await {
            match slot {
                Ok(run) => runs.push(run),
                Err(SlotError::Failed(failed)) => reasons.extend(failed),
                Err(SlotError::Fatal(error)) => fatal = Some(error),
            }
        }
        let cost = runs
            .iter()
            .map(|run| run.completed.cost.micro())
            .fold(0u64, u64::saturating_add);
        let cost = Credits(cost);
        if let Some(error) = fatal {
            return Err(error);
        }
        if self.inner.cancel.is_cancelled() {
            return Err(RouteError::ShuttingDown);
        }
        // A run cut short (the node stopping) casts no vote.
        let votes: Vec<Hash32> = runs
            .iter()
            .filter(|run| run.completed.finish != Finish::Cancelled)
            .map(|run| run.completed.receipt_output())
            .collect();
        let Some(agreed) = majority(&votes, k) else {
            let mut message = format!(
                "no majority of the {k} replicas returned the same text: {} completed, with {} \
                 different texts",
                votes.len(),
                distinct(&votes)
            );
            if !reasons.is_empty() {
                message.push_str("; failed: ");
                message.push_str(&reasons.join("; "));
            }
            warn!(request = %id, %message, "replicated request undecided");
            return Err(RouteError::ReplicasDisagree { message, cost });
        };
        let (agreeing, odd): (Vec<Run>, Vec<Run>) = runs
            .into_iter()
            .filter(|run| run.completed.finish != Finish::Cancelled)
            .partition(|run| run.completed.receipt_output() == agreed);
        let mut odd_providers = Vec::with_capacity(odd.len());
        for run in &odd {
            self.remember_failure(run.completed.provider);
            self.store_evidence(id, request, run, &agreeing).await;
            odd_providers.push(run.completed.provider);
        }
        let winner = agreeing
            .into_iter()
            .next()
            .ok_or_else(|| RouteError::Failed("a majority without runs".into()))?;
        let agreeing = votes.iter().filter(|vote| **vote == agreed).count();
        info!(request = %id, asked = k, agreeing, odd = odd_providers.len(), "replicated request decided");
        Ok(Replicated {
            id,
            text: winner.text,
            completed: winner.completed,
            asked: replicas,
            agreeing,
            odd: odd_providers,
            cost,
        })
    }

    /// The candidates of `request`'s model that serve the model file the best-ranked candidate
    /// serves, when at least `k` do, best first. An upstream server (no model file) is never
    /// one: its text cannot be compared.
    fn replica_candidates(
        &self,
        request: &GenerateRequest,
        k: usize,
    ) -> Result<Vec<(NodeId, ModelInfo)>, RouteError> {
        let candidates = self.candidates(&request.model, request);
        if candidates.is_empty() && !self.models().iter().any(|m| m.info.name == request.model) {
            return Err(RouteError::ModelNotFound(request.model.clone()));
        }
        let mut by_file: HashMap<Hash32, usize> = HashMap::new();
        for (_, info) in &candidates {
            if info.sha256 != Hash32::ZERO {
                *by_file
                    .entry(model_hash(&info.name, info.sha256))
                    .or_default() += 1;
            }
        }
        let file = candidates.iter().find_map(|(_, info)| {
            let file = model_hash(&info.name, info.sha256);
            (info.sha256 != Hash32::ZERO && by_file.get(&file).copied().unwrap_or(0) >= k)
                .then_some(file)
        });
        let Some(file) = file else {
            let most = by_file.values().copied().max().unwrap_or(0);
            return Err(RouteError::NotEnoughProviders(format!(
                "replicas = {k} needs {k} distinct providers of one model file of `{}`; the mesh \
                 has {most} with capacity now ({} in all, upstream servers not counted)",
                request.model,
                candidates.len()
            )));
        };
        Ok(candidates
            .into_iter()
            .filter(|(_, info)| model_hash(&info.name, info.sha256) == file)
            .collect())
    }

    /// One replica: its first provider, then, while they fail, the spare candidates no other
    /// slot took.
    async fn replica_slot(
        &self,
        first: (NodeId, ModelInfo),
        spare: &Mutex<VecDeque<(NodeId, ModelInfo)>>,
        request: &GenerateRequest,
        cancel: &CancellationToken,
    ) -> Result<Run, SlotError> {
        let mut reasons = Vec::new();
        let mut next = Some(first);
        while let Some((provider, info)) = next {
            let info = &info;
            // A provider may refuse a contract that just ran out: one more with a fresh one.
            for _ in 0..2 {
                let (text_tx, text_rx) = mpsc::channel(crate::inference::STREAM_BUFFER);
                let run = async move {
                    let text_tx = text_tx;
                    self.try_provider(provider, info, request, &text_tx, cancel)
                        .await
                };
                let (result, text) = tokio::join!(run, collect(text_rx));
                match result {
                    Ok(completed) => return Ok(Run { completed, text }),
                    Err(Attempt::Fatal(
                        error @ (RouteError::ContextLength(_) | RouteError::BadRequest(_)),
                    )) => return Err(SlotError::Fatal(error)),
                    Err(Attempt::Retry(_)) => continue,
                    Err(Attempt::Fatal(error)) => {
                        self.remember_failure(provider);
                        reasons.push(format!("{provider}: {error}"));
                        break;
                    }
                    Err(Attempt::Next(reason)) => {
                        self.remember_failure(provider);
                        reasons.push(format!("{provider}: {reason}"));
                        break;
                    }
                }
            }
            if cancel.is_cancelled() {
                break;
            }
            next = spare.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
        }
        Err(SlotError::Failed(reasons))
    }

    /// Stores, durably, the evidence that `odd`'s text differs from the majority's, and counts
    /// it against its provider. Evidence that cannot be stored after a few tries is logged and
    /// the answer goes on: the runs and their receipts are in the ledger either way.
    async fn store_evidence(
        &self,
        id: JobId,
        request: &GenerateRequest,
        odd: &Run,
        agreeing: &[Run],
    ) {
        let evidence = TokenMismatch {
            request: request.clone(),
            odd: odd.completed.receipt.clone(),
            majority: agreeing
                .iter()
                .take(usize::from(MAX_REPLICAS) - 1)
                .map(|run| run.completed.receipt.clone())
                .collect(),
        };
        let verified = match evidence.verify() {
            Ok(verified) => verified,
            Err(error) => {
                warn!(request = %id, %error, "token evidence does not verify; not stored");
                return;
            }
        };
        let bytes = match evidence.encode() {
            Ok(bytes) => bytes,
            Err(error) => {
                warn!(request = %id, %error, "token evidence does not encode");
                return;
            }
        };
        let record = MismatchRecord {
            group: id,
            kind: EvidenceKind::Tokens,
            provider: verified.offender,
            contract_id: verified.odd_contract,
            at_ms: now_ms(),
            evidence: bytes,
        };
        let market = &self.inner.market;
        for attempt in 1..=EVIDENCE_TRIES {
            match market.jobs().put_mismatch_durably(&record).await {
                Ok(()) => {
                    market
                        .reputation()
                        .record_mismatch(record.provider, record.group);
                    warn!(request = %id, provider = %record.provider, "a replica's text differs from the majority's; evidence stored");
                    return;
                }
                Err(error) if attempt < EVIDENCE_TRIES => {
                    warn!(request = %id, %error, "cannot store token evidence; retried");
                    tokio::time::sleep(EVIDENCE_RETRY).await;
                }
                Err(error) => {
                    error!(request = %id, provider = %record.provider, %error, "cannot store token evidence; the answer goes without it");
                }
            }
        }
    }
}

impl Completed {
    /// The output hash the provider signed for (checked against the text received).
    fn receipt_output(&self) -> Hash32 {
        self.receipt
            .decode_unverified()
            .map_or(Hash32::ZERO, |receipt| receipt.output_hash)
    }
}

/// A fresh id for a replicated request.
fn request_id(request: &GenerateRequest) -> JobId {
    let mut random = [0u8; 16];
    // Without randomness the time still makes it unique enough for a record's key.
    let _ = getrandom::fill(&mut random);
    let request_hash = request.hash().unwrap_or(Hash32::ZERO);
    JobId(suanli_protocol::hash::tagged(
        "token-replicas",
        &[&request_hash.0, &random, &now_ms().to_le_bytes()],
    ))
}

fn distinct(votes: &[Hash32]) -> usize {
    votes.iter().collect::<HashSet<_>>().len()
}

async fn collect(mut pieces: mpsc::Receiver<String>) -> String {
    let mut text = String::new();
    while let Some(piece) = pieces.recv().await {
        text.push_str(&piece);
    }
    text
}
