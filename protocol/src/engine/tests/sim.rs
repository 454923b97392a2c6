//! A deterministic simulation of a requester and a provider driving the engine's machines over a
//! lossy, reordering network, with crashes (a crash loses everything not in the ledger) and
//! appends that fail (a full disk). Every run is replayable from its seed.
//!
//! The simulation is a driver like the node's: it routes requests to machines by contract id,
//! rebuilds final contracts on demand, adopts unknown ones, resumes open ones after a restart,
//! keeps the notification outbox, and makes appends durable before feeding `Durable`. After a
//! storm of faults the network heals and the simulation runs until nothing is left to do; then
//! both ledgers must agree on every contract.

use std::collections::{BTreeMap, BTreeSet};

use crate::advert::tests::NOW;
use crate::engine::provider::{self, Policy, Provider};
use crate::engine::requester::{self, JobTerms, Requester};
use crate::engine::{
    AttemptEnd, Context, Effect, Held, Outbound, RequestKind, RunOrder, RunReport, Status,
};
use crate::fixtures;
use crate::hash::Hash32;
use crate::identity::Keypair;
use crate::job::JobSpec;
use crate::job::tests::sample_spec;
use crate::ledger::EntryBody;
use crate::negotiation::{ContractDocs, ContractId, Offer, Outcome, QuoteRequest, Usage};
use crate::signed::{Signed, counts};
use crate::wire::{ErrorCode, ExecuteRequest, MarketRequest, MarketResponse, WireError};

pub(super) const REQUESTER: usize = 0;
pub(super) const PROVIDER: usize = 1;
/// How long the requester's driver waits before it reports a provider lost.
const LOST_AFTER_MS: u64 = 2_000;
/// How long a request waits for an answer before the sender is told it failed.
const REQUEST_TIMEOUT_MS: u64 = 1_000;
const OUTBOX_EVERY_MS: u64 = 1_000;
const WATCH_EVERY_MS: u64 = 250;
const MAX_ATTEMPTS: u32 = 12;
/// Simulated time allowed after the storm for everything to end.
const HEAL_BUDGET_MS: u64 = 600_000;

/// A small deterministic generator (splitmix64).
#[derive(Debug, Clone)]
pub(super) struct Rng(u64);

impl Rng {
    pub(super) fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn chance(&mut self, per_mille: u64) -> bool {
        self.next() % 1000 < per_mille
    }

    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low + 1)
    }
}

/// How hostile the world is, in per mille.
#[derive(Debug, Clone, Copy)]
pub(super) struct Faults {
    /// A message (request or answer) is lost.
    pub loss: u64,
    /// A node crashes just before an append becomes durable (the append is lost).
    pub crash_before_append: u64,
    /// A node crashes right after an append became durable, before acting on it.
    pub crash_after_append: u64,
    /// An append fails (full disk); the node lives on.
    pub disk_full: u64,
    /// A node crashes at any delivered message.
    pub crash_anywhere: u64,
    /// The submitter cancels the job at any delivered message (every live attempt hears it).
    pub cancel: u64,
    /// Largest extra delay of a message, ms (reordering).
    pub jitter_ms: u64,
}

impl Faults {
    pub(super) const NONE: Faults = Faults {
        loss: 0,
        crash_before_append: 0,
        crash_after_append: 0,
        disk_full: 0,
        crash_anywhere: 0,
        cancel: 0,
        jitter_ms: 5,
    };

    pub(super) const STORM: Faults = Faults {
        loss: 100,
        crash_before_append: 40,
        crash_after_append: 40,
        disk_full: 40,
        crash_anywhere: 10,
        cancel: 10,
        jitter_ms: 400,
    };
}

/// What happened in a run, to show the storm reached the paths it is meant to.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Stats {
    pub crashes: u64,
    pub resumed: u64,
    pub adopted: u64,
    pub failed_appends: u64,
    pub lost_messages: u64,
    /// Contracts that ended failed on both sides although the provider holds a receipt.
    pub failed_with_receipt: u64,
    pub settled: u64,
    pub failed: u64,
    /// Contracts failed as cancelled by the submitter.
    pub cancelled: u64,
}

/// The signature work one node did in a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct SignatureWork {
    /// `verify_strict` calls.
    pub verifies: u64,
    /// Signatures made.
    pub signs: u64,
}

impl std::ops::AddAssign for Stats {
    fn add_assign(&mut self, other: Stats) {
        self.crashes += other.crashes;
        self.resumed += other.resumed;
        self.adopted += other.adopted;
        self.failed_appends += other.failed_appends;
        self.lost_messages += other.lost_messages;
        self.failed_with_receipt += other.failed_with_receipt;
        self.settled += other.settled;
        self.failed += other.failed;
        self.cancelled += other.cancelled;
    }
}

/// Which machine an answer or a timer is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    Attempt(u64),
    Provider(ContractId),
    /// A notification from the outbox.
    Outbox(ContractId),
}

#[derive(Debug, Clone)]
struct Reply {
    key: Key,
    kind: RequestKind,
    /// The sender's incarnation: answers to an earlier one are dropped.
    epoch: u64,
}

#[derive(Debug, Clone)]
enum Body {
    Request {
        request: MarketRequest,
        reply: Reply,
    },
    Answer {
        reply: Reply,
        answer: Result<MarketResponse, String>,
    },
}

#[allow(clippy::large_enum_variant)] // a test's event queue
#[derive(Debug, Clone)]
enum Event {
    Message {
        from: usize,
        to: usize,
        body: Body,
    },
    RunDone {
        contract_id: ContractId,
        epoch: u64,
    },
    Wake {
        node: usize,
        key: Key,
        epoch: u64,
    },
    Restart {
        node: usize,
    },
    Outbox {
        node: usize,
        epoch: u64,
    },
    Watch {
        epoch: u64,
    },
    NewAttempt {
        epoch: u64,
    },
    /// The submitter cancels the job: every live attempt of the requester hears it.
    Cancel {
        epoch: u64,
    },
}

#[derive(Debug)]
struct Node {
    keypair: Keypair,
    up: bool,
    epoch: u64,
    down_since: u64,
    // Durable.
    ledger: Vec<EntryBody>,
    outputs: BTreeMap<ContractId, Vec<u8>>,
    outbox: BTreeSet<ContractId>,
    // Volatile.
    attempts: BTreeMap<u64, Requester>,
    providers: BTreeMap<ContractId, Provider>,
    offers: BTreeMap<Hash32, (QuoteRequest, Signed<Offer>)>,
    runs: BTreeMap<ContractId, u64>,
}

impl Node {
    fn new(keypair: Keypair) -> Node {
        Node {
            keypair,
            up: true,
            epoch: 0,
            down_since: 0,
            ledger: Vec::new(),
            outputs: BTreeMap::new(),
            outbox: BTreeSet::new(),
            attempts: BTreeMap::new(),
            providers: BTreeMap::new(),
            offers: BTreeMap::new(),
            runs: BTreeMap::new(),
        }
    }

    /// The documents this node's ledger holds of `id`, and how many entries of each kind.
    fn docs(&self, id: ContractId) -> Option<ContractDocs> {
        let mut docs: Option<ContractDocs> = None;
        for entry in &self.ledger {
            match entry {
                EntryBody::Contract(contract) if ContractId(contract.digest()) == id => {
                    docs = Some(ContractDocs {
                        contract: contract.clone(),
                        receipt: None,
                        settlement: None,
                        failure: None,
                    });
                }
                EntryBody::Receipt(receipt) => {
                    if let (Some(docs), Ok(decoded)) = (&mut docs, receipt.decode_unverified())
                        && decoded.contract_id == id
                    {
                        docs.receipt = Some(receipt.clone());
                    }
                }
                EntryBody::Settlement(settlement) => {
                    if let (Some(docs), Ok(decoded)) = (&mut docs, settlement.decode_unverified())
                        && decoded.contract_id == id
                    {
                        docs.settlement = Some(settlement.clone());
                    }
                }
                EntryBody::Failure(failure) => {
                    if let (Some(docs), Ok(decoded)) = (&mut docs, failure.decode_unverified())
                        && decoded.contract_id == id
                    {
                        docs.failure = Some(failure.clone());
                    }
                }
                _ => {}
            }
        }
        docs
    }

    fn contract_ids(&self) -> BTreeSet<ContractId> {
        self.ledger
            .iter()
            .filter_map(|entry| match entry {
                EntryBody::Contract(contract) => Some(ContractId(contract.digest())),
                _ => None,
            })
            .collect()
    }

    fn held(&self, id: ContractId) -> Option<Held> {
        self.docs(id)
            .map(|docs| Held::from_ledger(docs).expect("own ledger decodes"))
    }
}

/// The requester's job: always the same spec, module and stdin.
#[derive(Debug)]
struct Job {
    terms: JobTerms,
    module: Vec<u8>,
    stdin: Vec<u8>,
    attempts: u32,
    next_attempt: u64,
    /// Contracts reported settled by `Finished`.
    settled_reported: BTreeSet<ContractId>,
}

/// The world.
#[derive(Debug)]
pub(super) struct Sim {
    now: u64,
    rng: Rng,
    faults: Faults,
    nodes: [Node; 2],
    queue: BTreeMap<(u64, u64), Event>,
    seq: u64,
    job: Job,
    healed: bool,
    wakes: BTreeMap<(usize, Key, u64), u32>,
    pub(super) stats: Stats,
    /// Per node (requester, provider): what its machines and its offers cost.
    pub(super) signatures: [SignatureWork; 2],
    trace: Vec<String>,
}

impl Sim {
    pub(super) fn new(seed: u64, faults: Faults) -> Sim {
        let spec: JobSpec = sample_spec();
        let nonce = u128::from(seed) + 1;
        let job = Job {
            terms: JobTerms {
                job_id: spec.job_id(nonce).expect("job id"),
                spec,
                nonce,
                deadline_grace_ms: 3_000,
            },
            module: b"module".to_vec(),
            stdin: Vec::new(),
            attempts: 0,
            next_attempt: 0,
            settled_reported: BTreeSet::new(),
        };
        let mut sim = Sim {
            now: NOW,
            rng: Rng::new(seed),
            faults,
            nodes: [
                Node::new(fixtures::requester()),
                Node::new(fixtures::provider()),
            ],
            queue: BTreeMap::new(),
            seq: 0,
            job,
            healed: false,
            wakes: BTreeMap::new(),
            stats: Stats::default(),
            signatures: [SignatureWork::default(); 2],
            trace: Vec::new(),
        };
        sim.at(NOW, Event::NewAttempt { epoch: 0 });
        sim.at(NOW, Event::Watch { epoch: 0 });
        for node in [REQUESTER, PROVIDER] {
            sim.at(NOW, Event::Outbox { node, epoch: 0 });
        }
        sim
    }

    fn at(&mut self, time: u64, event: Event) {
        self.seq += 1;
        self.queue.insert((time, self.seq), event);
    }

    fn log(&mut self, line: String) {
        self.trace.push(format!("{:>7} {line}", self.now - NOW));
    }

    /// Every line of the trace.
    pub(super) fn full_trace(&self) -> String {
        self.trace.join("\n")
    }

    /// The trace so far, for a failing run's report.
    pub(super) fn trace(&self) -> String {
        let start = self.trace.len().saturating_sub(400);
        self.trace[start..].join("\n")
    }

    /// Runs the storm for `storm_ms`, then heals the world and runs until every contract has
    /// ended on both sides and nothing is in flight. Panics (with the trace) when it does not.
    pub(super) fn run(&mut self, storm_ms: u64) {
        let heal_at = NOW + storm_ms;
        let give_up = heal_at + HEAL_BUDGET_MS;
        loop {
            if self.now >= heal_at && !self.healed {
                self.healed = true;
                self.faults = Faults::NONE;
                self.log("-- storm over".into());
                for node in [REQUESTER, PROVIDER] {
                    if !self.nodes[node].up {
                        self.restart(node);
                    }
                }
            }
            if self.now >= heal_at && self.settled_down() {
                return;
            }
            assert!(
                self.now < give_up,
                "not settled {} ms after the storm\n{}",
                HEAL_BUDGET_MS,
                self.trace()
            );
            let Some(((time, _), event)) = self.queue.pop_first() else {
                panic!("nothing left to do\n{}", self.trace());
            };
            self.now = self.now.max(time);
            self.step(event);
        }
    }

    /// Everything ended on both sides, the job is over, and no message is in flight.
    fn settled_down(&self) -> bool {
        let job_over = self.job_settled() || self.job.attempts >= MAX_ATTEMPTS;
        let idle = self.nodes.iter().all(|node| {
            node.up
                && node.attempts.is_empty()
                && node.providers.is_empty()
                && node.outbox.is_empty()
        });
        let quiet = !self
            .queue
            .values()
            .any(|event| matches!(event, Event::Message { .. } | Event::RunDone { .. }));
        let all_final = [REQUESTER, PROVIDER].iter().all(|&node| {
            let node = &self.nodes[node];
            node.contract_ids()
                .into_iter()
                .all(|id| node.held(id).is_some_and(|held| held.status().is_final()))
        });
        job_over && idle && quiet && all_final
    }

    fn job_settled(&self) -> bool {
        let node = &self.nodes[REQUESTER];
        node.contract_ids().into_iter().any(|id| {
            node.held(id)
                .is_some_and(|held| held.status() == Status::Settled)
        })
    }

    fn ctx_now(&self) -> u64 {
        self.now
    }

    /// Handles one event; its signature work is the node's it happens on (an event never
    /// steps the other node: what it sends is queued).
    fn step(&mut self, event: Event) {
        let node = match &event {
            Event::Message { to, .. } => *to,
            Event::RunDone { .. } => PROVIDER,
            Event::Wake { node, .. } | Event::Restart { node } | Event::Outbox { node, .. } => {
                *node
            }
            Event::Watch { .. } | Event::NewAttempt { .. } | Event::Cancel { .. } => REQUESTER,
        };
        let (verifies, signs) = (counts::verifies(), counts::signs());
        self.handle_event(event);
        let work = &mut self.signatures[node];
        work.verifies += counts::verifies() - verifies;
        work.signs += counts::signs() - signs;
    }

    fn handle_event(&mut self, event: Event) {
        match event {
            Event::Message { from, to, body } => self.on_message(from, to, body),
            Event::Cancel { epoch } => {
                if !self.nodes[REQUESTER].up || self.nodes[REQUESTER].epoch != epoch {
                    return;
                }
                let attempts: Vec<u64> = self.nodes[REQUESTER].attempts.keys().copied().collect();
                for attempt in attempts {
                    if self.nodes[REQUESTER].epoch != epoch {
                        return;
                    }
                    self.log(format!("R cancels the job ({attempt})"));
                    self.feed(REQUESTER, Key::Attempt(attempt), Input::Cancel, None);
                }
            }
            Event::RunDone { contract_id, epoch } => {
                let node = &mut self.nodes[PROVIDER];
                if node.epoch != epoch || node.runs.remove(&contract_id).is_none() {
                    return;
                }
                let report = RunReport {
                    outcome: Outcome::Succeeded {
                        exit_code: 0,
                        output_hash: Hash32::of(b"hello"),
                        output_len: 5,
                    },
                    usage: Usage {
                        fuel: 500_000,
                        wall_time_ms: 12,
                        memory_bytes: 1 << 20,
                        output_bytes: 5,
                        prompt_tokens: 0,
                        completion_tokens: 0,
                        cluster: None,
                    },
                    output: b"hello".to_vec(),
                };
                self.log(format!("P run done {contract_id}"));
                self.feed_provider(contract_id, provider::Input::RunFinished(report), None);
            }
            Event::Wake { node, key, epoch } => {
                if self.nodes[node].epoch != epoch || !self.nodes[node].up {
                    return;
                }
                let due = self.wake_at(node, key).is_some_and(|at| at <= self.now);
                if due {
                    let spins = self.wakes.entry((node, key, self.now)).or_default();
                    *spins += 1;
                    assert!(
                        *spins < 100,
                        "{key:?} wakes forever at one time\n{}",
                        self.trace()
                    );
                    self.feed(node, key, Input::Tick, None);
                }
            }
            Event::Restart { node } => self.restart(node),
            Event::Outbox { node, epoch } => {
                if self.nodes[node].epoch == epoch && self.nodes[node].up {
                    self.send_outbox(node);
                }
                let epoch = self.nodes[node].epoch;
                self.at(self.now + OUTBOX_EVERY_MS, Event::Outbox { node, epoch });
            }
            Event::Watch { epoch } => {
                if self.nodes[REQUESTER].epoch == epoch && self.nodes[REQUESTER].up {
                    self.watch_provider();
                }
                let epoch = self.nodes[REQUESTER].epoch;
                self.at(self.now + WATCH_EVERY_MS, Event::Watch { epoch });
            }
            Event::NewAttempt { epoch } => {
                if self.nodes[REQUESTER].epoch == epoch && self.nodes[REQUESTER].up {
                    self.maybe_start_attempt();
                }
            }
        }
    }

    fn maybe_start_attempt(&mut self) {
        let requester = &self.nodes[REQUESTER];
        let open = !requester.attempts.is_empty();
        if open || self.job_settled() || self.job.attempts >= MAX_ATTEMPTS {
            return;
        }
        if self.now < self.job.next_attempt {
            return;
        }
        self.job.attempts += 1;
        let attempt = self.next_key();
        let keypair = self.nodes[REQUESTER].keypair.clone();
        let ctx = Context {
            keypair: &keypair,
            now_ms: self.ctx_now(),
        };
        let (machine, effects) = Requester::start(
            &ctx,
            self.job.terms.clone(),
            self.nodes[PROVIDER].keypair.node_id(),
            attempt,
        );
        self.log(format!("R starts attempt {attempt}"));
        self.nodes[REQUESTER].attempts.insert(attempt, machine);
        self.perform(REQUESTER, Key::Attempt(attempt), effects, None);
    }

    fn schedule_attempt(&mut self) {
        self.job.next_attempt = self.now + 200;
        let epoch = self.nodes[REQUESTER].epoch;
        self.at(self.now + 200, Event::NewAttempt { epoch });
    }

    fn watch_provider(&mut self) {
        let provider = &self.nodes[PROVIDER];
        if provider.up || self.now < provider.down_since + LOST_AFTER_MS {
            return;
        }
        let watching: Vec<u64> = self.nodes[REQUESTER]
            .attempts
            .iter()
            .filter(|(_, machine)| machine.watches_peer())
            .map(|(attempt, _)| *attempt)
            .collect();
        for attempt in watching {
            self.log(format!("R reports the provider lost ({attempt})"));
            self.feed(REQUESTER, Key::Attempt(attempt), Input::PeerLost, None);
        }
    }

    fn crash(&mut self, node: usize) {
        let name = name(node);
        let state = &mut self.nodes[node];
        if !state.up {
            return;
        }
        state.up = false;
        state.epoch += 1;
        state.down_since = self.now;
        state.attempts.clear();
        state.providers.clear();
        state.offers.clear();
        state.runs.clear();
        self.log(format!("{name} CRASHES"));
        self.stats.crashes += 1;
        let back = self.now + self.rng.between(100, 4_000);
        self.at(back, Event::Restart { node });
    }

    fn restart(&mut self, node: usize) {
        if self.nodes[node].up {
            return;
        }
        self.nodes[node].up = true;
        self.log(format!("{} restarts", name(node)));
        let me = self.nodes[node].keypair.node_id();
        let keypair = self.nodes[node].keypair.clone();
        for id in self.nodes[node].contract_ids() {
            let Some(held) = self.nodes[node].held(id) else {
                continue;
            };
            if held.status().is_final() {
                continue;
            }
            let ctx = Context {
                keypair: &keypair,
                now_ms: self.now,
            };
            if held.contract().requester == me {
                let attempt = self.next_key();
                let (machine, effects) =
                    Requester::resume(&ctx, held, Some(self.job.terms.clone()));
                self.nodes[node].attempts.insert(attempt, machine);
                self.log(format!("R resumes {id} as attempt {attempt}"));
                self.stats.resumed += 1;
                self.perform(node, Key::Attempt(attempt), effects, None);
            } else {
                let output = self.nodes[node].outputs.get(&id).cloned();
                let (machine, effects) = Provider::resume(&ctx, held, output);
                self.nodes[node].providers.insert(id, machine);
                self.log(format!("P resumes {id}"));
                self.stats.resumed += 1;
                self.perform(node, Key::Provider(id), effects, None);
            }
        }
        let epoch = self.nodes[node].epoch;
        self.at(self.now + 1, Event::Outbox { node, epoch });
        if node == REQUESTER {
            self.at(self.now + 1, Event::Watch { epoch });
            self.at(self.now + 1, Event::NewAttempt { epoch });
        }
    }

    fn send_outbox(&mut self, node: usize) {
        let ids: Vec<ContractId> = self.nodes[node].outbox.iter().copied().collect();
        for id in ids {
            let Some(docs) = self.nodes[node].docs(id) else {
                continue;
            };
            let request = MarketRequest::Reconcile(Box::new(docs));
            let reply = Reply {
                key: Key::Outbox(id),
                kind: RequestKind::Reconcile,
                epoch: self.nodes[node].epoch,
            };
            self.send(node, 1 - node, Body::Request { request, reply });
        }
    }

    /// Puts a message on the wire: lost, delayed, or answered with a timeout when the
    /// destination is down.
    fn send(&mut self, from: usize, to: usize, body: Body) {
        let delay = 1 + self.rng.between(0, self.faults.jitter_ms);
        if self.rng.chance(self.faults.loss) {
            self.log(format!("lost: {}", describe(&body)));
            self.stats.lost_messages += 1;
            // Whoever waits for an answer times out.
            let (waiter, reply) = match body {
                Body::Request { reply, .. } => (from, reply),
                Body::Answer { reply, .. } => (to, reply),
            };
            let answer = Body::Answer {
                reply,
                answer: Err("timeout".into()),
            };
            self.at(
                self.now + REQUEST_TIMEOUT_MS,
                Event::Message {
                    from: 1 - waiter,
                    to: waiter,
                    body: answer,
                },
            );
            return;
        }
        self.at(self.now + delay, Event::Message { from, to, body });
    }

    fn on_message(&mut self, from: usize, to: usize, body: Body) {
        if !self.nodes[to].up {
            if let Body::Request { reply, .. } = body {
                let answer = Body::Answer {
                    reply,
                    answer: Err("unreachable".into()),
                };
                self.at(
                    self.now + REQUEST_TIMEOUT_MS,
                    Event::Message {
                        from: to,
                        to: from,
                        body: answer,
                    },
                );
            }
            return;
        }
        if self.rng.chance(self.faults.cancel) {
            let epoch = self.nodes[REQUESTER].epoch;
            self.at(self.now, Event::Cancel { epoch });
        }
        if self.rng.chance(self.faults.crash_anywhere) {
            if let Body::Request { reply, .. } = body {
                self.broken(Responder { to: from, reply });
            }
            return self.crash(to);
        }
        match body {
            Body::Answer { reply, answer } => {
                if reply.epoch != self.nodes[to].epoch {
                    return;
                }
                self.log(format!(
                    "{} gets answer to {:?}: {}",
                    name(to),
                    reply.kind,
                    brief(&answer)
                ));
                if let Key::Outbox(id) = reply.key {
                    return self.on_outbox_answer(to, id, answer);
                }
                self.feed(
                    to,
                    reply.key,
                    Input::Answer {
                        to: reply.kind,
                        answer,
                    },
                    None,
                );
            }
            Body::Request { request, reply } => {
                self.log(format!("{} gets {}", name(to), describe_request(&request)));
                self.on_request(from, to, request, reply);
            }
        }
    }

    fn on_outbox_answer(
        &mut self,
        node: usize,
        id: ContractId,
        answer: Result<MarketResponse, String>,
    ) {
        let Ok(MarketResponse::Reconciled(_)) = &answer else {
            return;
        };
        let input = Input::Answer {
            to: RequestKind::Reconcile,
            answer,
        };
        let epoch = self.nodes[node].epoch;
        // One machine per contract: a live one gets the answer.
        if let Some(key) = self.live(node, id) {
            self.feed(node, key, input, None);
        } else if let Some(held) = self.nodes[node].held(id) {
            let keypair = self.nodes[node].keypair.clone();
            let ctx = Context {
                keypair: &keypair,
                now_ms: self.now,
            };
            if node == REQUESTER {
                let mut machine = Requester::ended(held);
                let effects = machine.handle(&ctx, input.requester());
                self.transient_requester(node, machine, effects, None);
            } else {
                let mut machine = Provider::ended(&ctx, held);
                let effects = machine.handle(&ctx, input.provider());
                self.transient_provider(node, machine, effects, None);
            }
        }
        // Heard, and whatever the answer taught is durable: the note is done.
        let state = &self.nodes[node];
        if state.up && state.epoch == epoch && self.live(node, id).is_none() {
            self.nodes[node].outbox.remove(&id);
        }
    }

    /// The live machine of contract `id` on `node`, if any.
    fn live(&self, node: usize, id: ContractId) -> Option<Key> {
        if self.nodes[node].providers.contains_key(&id) {
            return Some(Key::Provider(id));
        }
        self.nodes[node]
            .attempts
            .iter()
            .find(|(_, machine)| machine.contract_id() == Some(id))
            .map(|(attempt, _)| Key::Attempt(*attempt))
    }

    fn on_request(&mut self, from: usize, to: usize, request: MarketRequest, reply: Reply) {
        let responder = Responder { to: from, reply };
        let from_id = self.nodes[from].keypair.node_id();
        let keypair = self.nodes[to].keypair.clone();
        let ctx = Context {
            keypair: &keypair,
            now_ms: self.now,
        };
        match request {
            MarketRequest::Quote(quote) => {
                let offer = Offer {
                    provider: keypair.node_id(),
                    requester: from_id,
                    job_id: quote.job_id,
                    price: fixtures::price(),
                    max_cost: fixtures::price()
                        .max_cost(&self.job.terms.spec.limits)
                        .expect("max cost"),
                    valid_until_ms: self.now + 10_000,
                    reservation: self.seq,
                };
                let signed = Signed::sign(&offer, &keypair).expect("sign offer");
                self.nodes[to]
                    .offers
                    .insert(signed.digest(), (quote, signed.clone()));
                self.answer(to, responder, Ok(MarketResponse::Offer(signed)));
            }
            MarketRequest::Propose(proposal) => {
                let offer_digest = proposal
                    .decode_unverified()
                    .map(|contract| contract.offer)
                    .unwrap_or(Hash32::ZERO);
                let Some((quote, offer)) = self.nodes[to].offers.remove(&offer_digest) else {
                    return self.answer(
                        to,
                        responder,
                        Ok(MarketResponse::Error(WireError::new(
                            ErrorCode::NotFound,
                            "no such offer",
                        ))),
                    );
                };
                let policy = Policy {
                    max_deadline_slack_ms: 600_000,
                };
                let (machine, effects) =
                    Provider::propose(&ctx, from_id, &quote, &offer, proposal, policy);
                match machine {
                    Some(machine) => {
                        let id = machine
                            .contract_id()
                            .expect("a proposed contract has an id");
                        self.nodes[to].providers.insert(id, machine);
                        self.perform(to, Key::Provider(id), effects, Some(responder));
                    }
                    None => self.perform(
                        to,
                        Key::Provider(ContractId(Hash32::ZERO)),
                        effects,
                        Some(responder),
                    ),
                }
            }
            MarketRequest::Execute(execute) => {
                let id = execute.contract_id;
                self.for_provider(to, id, from_id, MarketRequest::Execute(execute), responder);
            }
            MarketRequest::Deliver(delivery) => {
                let id = delivery
                    .receipt
                    .decode_unverified()
                    .map(|receipt| receipt.contract_id)
                    .unwrap_or(ContractId(Hash32::ZERO));
                self.for_requester(to, id, from_id, MarketRequest::Deliver(delivery), responder);
            }
            MarketRequest::Reconcile(docs) => {
                let id = docs.contract_id();
                let me = keypair.node_id();
                let to_requester = docs
                    .contract
                    .decode_unverified()
                    .is_ok_and(|contract| contract.requester == me);
                if to_requester {
                    self.for_requester(to, id, from_id, MarketRequest::Reconcile(docs), responder);
                } else {
                    self.for_provider(to, id, from_id, MarketRequest::Reconcile(docs), responder);
                }
            }
        }
    }

    /// A request for the requester side of contract `id`: its live attempt, else the ledger.
    fn for_requester(
        &mut self,
        node: usize,
        id: ContractId,
        from: crate::identity::NodeId,
        request: MarketRequest,
        responder: Responder,
    ) {
        let live = self.nodes[node]
            .attempts
            .iter()
            .find(|(_, machine)| machine.contract_id() == Some(id))
            .map(|(attempt, _)| *attempt);
        let input = Input::Inbound { from, request };
        if let Some(attempt) = live {
            return self.feed(node, Key::Attempt(attempt), input, Some(responder));
        }
        let keypair = self.nodes[node].keypair.clone();
        let ctx = Context {
            keypair: &keypair,
            now_ms: self.now,
        };
        match self.nodes[node].held(id) {
            Some(held) => {
                assert!(
                    held.status().is_final(),
                    "an open contract without a machine\n{}",
                    self.trace()
                );
                let mut machine = Requester::ended(held);
                let effects = machine.handle(&ctx, input.requester());
                self.transient_requester(node, machine, effects, Some(responder));
            }
            None => match input.requester() {
                requester::Input::Inbound {
                    request: MarketRequest::Reconcile(docs),
                    ..
                } => {
                    let (machine, effects) = Requester::adopt(&ctx, from, &docs);
                    self.log(format!("R adopts {id}"));
                    self.stats.adopted += 1;
                    match machine {
                        Some(machine) => {
                            self.transient_requester(node, machine, effects, Some(responder));
                        }
                        None => self.perform(node, Key::Attempt(0), effects, Some(responder)),
                    }
                }
                _ => self.answer(
                    node,
                    responder,
                    Ok(MarketResponse::Error(WireError::new(
                        ErrorCode::NotFound,
                        "no such contract",
                    ))),
                ),
            },
        }
    }

    /// A request for the provider side of contract `id`.
    fn for_provider(
        &mut self,
        node: usize,
        id: ContractId,
        from: crate::identity::NodeId,
        request: MarketRequest,
        responder: Responder,
    ) {
        let input = Input::Inbound { from, request };
        if self.nodes[node].providers.contains_key(&id) {
            return self.feed(node, Key::Provider(id), input, Some(responder));
        }
        let keypair = self.nodes[node].keypair.clone();
        let ctx = Context {
            keypair: &keypair,
            now_ms: self.now,
        };
        match self.nodes[node].held(id) {
            Some(held) => {
                assert!(
                    held.status().is_final(),
                    "an open contract without a machine\n{}",
                    self.trace()
                );
                let mut machine = Provider::ended(&ctx, held);
                let effects = machine.handle(&ctx, input.provider());
                self.transient_provider(node, machine, effects, Some(responder));
            }
            None => match input.provider() {
                provider::Input::Inbound {
                    request: MarketRequest::Reconcile(docs),
                    ..
                } => {
                    let (machine, effects) = Provider::adopt(&ctx, from, &docs);
                    self.log(format!("P adopts {id}"));
                    self.stats.adopted += 1;
                    match machine {
                        Some(machine) => {
                            self.transient_provider(node, machine, effects, Some(responder));
                        }
                        None => self.perform(node, Key::Provider(id), effects, Some(responder)),
                    }
                }
                _ => self.answer(
                    node,
                    responder,
                    Ok(MarketResponse::Error(WireError::new(
                        ErrorCode::NotFound,
                        "no such contract",
                    ))),
                ),
            },
        }
    }

    /// Runs a machine built only to answer (a final or adopted contract) until it is idle.
    fn transient_requester(
        &mut self,
        node: usize,
        machine: Requester,
        effects: Vec<Effect>,
        responder: Option<Responder>,
    ) {
        let attempt = self.next_key();
        self.nodes[node].attempts.insert(attempt, machine);
        self.perform(node, Key::Attempt(attempt), effects, responder);
    }

    fn next_key(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn transient_provider(
        &mut self,
        node: usize,
        machine: Provider,
        effects: Vec<Effect>,
        responder: Option<Responder>,
    ) {
        let Some(id) = machine.contract_id() else {
            return self.perform(
                node,
                Key::Provider(ContractId(Hash32::ZERO)),
                effects,
                responder,
            );
        };
        self.nodes[node].providers.insert(id, machine);
        self.perform(node, Key::Provider(id), effects, responder);
    }

    fn wake_at(&self, node: usize, key: Key) -> Option<u64> {
        match key {
            Key::Attempt(attempt) => self.nodes[node].attempts.get(&attempt)?.wake_at(),
            Key::Provider(id) => self.nodes[node].providers.get(&id)?.wake_at(),
            Key::Outbox(_) => None,
        }
    }

    fn feed(&mut self, node: usize, key: Key, input: Input, responder: Option<Responder>) {
        match key {
            Key::Attempt(attempt) => {
                let keypair = self.nodes[node].keypair.clone();
                let ctx = Context {
                    keypair: &keypair,
                    now_ms: self.now,
                };
                let Some(machine) = self.nodes[node].attempts.get_mut(&attempt) else {
                    if let Some(responder) = responder {
                        let busy = WireError::new(ErrorCode::Unavailable, "gone");
                        self.answer(node, responder, Ok(MarketResponse::Error(busy)));
                    }
                    return;
                };
                let effects = machine.handle(&ctx, input.requester());
                self.perform(node, key, effects, responder);
            }
            Key::Provider(id) => self.feed_provider(id, input.provider(), responder),
            Key::Outbox(_) => {}
        }
    }

    fn feed_provider(
        &mut self,
        id: ContractId,
        input: provider::Input,
        responder: Option<Responder>,
    ) {
        let keypair = self.nodes[PROVIDER].keypair.clone();
        let ctx = Context {
            keypair: &keypair,
            now_ms: self.now,
        };
        let Some(machine) = self.nodes[PROVIDER].providers.get_mut(&id) else {
            return;
        };
        let effects = machine.handle(&ctx, input);
        self.perform(PROVIDER, Key::Provider(id), effects, responder);
    }

    /// Performs `effects` of the machine at `key`, in order, as a node's driver does.
    fn perform(
        &mut self,
        node: usize,
        key: Key,
        effects: Vec<Effect>,
        mut responder: Option<Responder>,
    ) {
        let epoch = self.nodes[node].epoch;
        for effect in effects {
            if !self.nodes[node].up || self.nodes[node].epoch != epoch {
                // Crashed: the connection broke, the sender hears nothing more.
                if let Some(responder) = responder.take() {
                    self.broken(responder);
                }
                return;
            }
            match effect {
                Effect::Send(outbound) => {
                    let kind = outbound.kind();
                    let request = match outbound {
                        Outbound::Request(request) => request,
                        Outbound::Execute(contract_id) => MarketRequest::Execute(ExecuteRequest {
                            contract_id,
                            spec: self.job.terms.spec.encode().expect("spec"),
                            module: self.job.module.clone(),
                            stdin: self.job.stdin.clone(),
                        }),
                    };
                    self.log(format!(
                        "{} sends {}",
                        name(node),
                        describe_request(&request)
                    ));
                    let reply = Reply { key, kind, epoch };
                    self.send(node, 1 - node, Body::Request { request, reply });
                }
                Effect::Respond(response) => {
                    if let Some(responder) = responder.take() {
                        self.answer(node, responder, Ok(response));
                    }
                }
                Effect::Append(append) => {
                    let result = self.append(node, key, append);
                    let Some(result) = result else {
                        if let Some(responder) = responder.take() {
                            self.broken(responder);
                        }
                        return;
                    };
                    let input = match result {
                        Ok(()) => Input::Durable,
                        Err(message) => Input::AppendFailed(message),
                    };
                    return self.feed_inner(node, key, input, responder);
                }
                Effect::Penalize(reason) => self.log(format!("{} penalizes: {reason}", name(node))),
                Effect::Run(order) => self.start_run(order),
                Effect::StopRun => {
                    if let Key::Provider(id) = key {
                        self.nodes[PROVIDER].runs.remove(&id);
                    }
                }
                Effect::Finished(end) => self.finished(end),
                Effect::Fault(fault) => panic!("fault: {fault}\n{}", self.trace()),
            }
        }
        if let Some(responder) = responder.take() {
            self.answer(
                node,
                responder,
                Ok(MarketResponse::Error(WireError::new(
                    ErrorCode::Unavailable,
                    "no answer",
                ))),
            );
        }
        self.after_step(node, key);
    }

    /// `feed` for the durable/failed report of an append, keeping the pending responder.
    fn feed_inner(&mut self, node: usize, key: Key, input: Input, responder: Option<Responder>) {
        self.feed(node, key, input, responder);
    }

    fn after_step(&mut self, node: usize, key: Key) {
        let epoch = self.nodes[node].epoch;
        let (ended, wake) = match key {
            Key::Attempt(attempt) => match self.nodes[node].attempts.get(&attempt) {
                Some(machine) => (machine.is_ended(), machine.wake_at()),
                None => return,
            },
            Key::Provider(id) => match self.nodes[node].providers.get(&id) {
                Some(machine) => (machine.is_ended(), machine.wake_at()),
                None => return,
            },
            Key::Outbox(_) => return,
        };
        if ended {
            match key {
                Key::Attempt(attempt) => {
                    self.nodes[node].attempts.remove(&attempt);
                    if node == REQUESTER {
                        self.schedule_attempt();
                    }
                }
                Key::Provider(id) => {
                    self.nodes[node].providers.remove(&id);
                }
                Key::Outbox(_) => {}
            }
            return;
        }
        if let Some(at) = wake {
            self.at(at.max(self.now), Event::Wake { node, key, epoch });
        }
    }

    /// Makes an append durable, or not. `None`: the node crashed.
    fn append(
        &mut self,
        node: usize,
        key: Key,
        append: crate::engine::Append,
    ) -> Option<Result<(), String>> {
        if self.rng.chance(self.faults.crash_before_append) {
            self.log(format!("{} crashes before an append", name(node)));
            self.crash(node);
            return None;
        }
        if self.rng.chance(self.faults.disk_full) {
            self.log(format!("{} append fails (disk full)", name(node)));
            self.stats.failed_appends += 1;
            return Some(Err("disk full".into()));
        }
        let kinds: Vec<&str> = append
            .entries
            .iter()
            .map(|entry| entry.body().kind())
            .collect();
        self.log(format!("{} appends {kinds:?}", name(node)));
        let state = &mut self.nodes[node];
        let contract_id = match key {
            Key::Provider(id) => Some(id),
            _ => append
                .entries
                .iter()
                .find_map(|entry| entry_contract(entry.body())),
        };
        if let (Some(output), Some(id)) = (append.output, contract_id) {
            state.outputs.insert(id, output);
        }
        if append.notify
            && let Some(id) = contract_id
        {
            state.outbox.insert(id);
        }
        // What the node's ledger checks of an engine's entry (its signatures were checked by
        // the machine that made the append).
        let owner = state.keypair.node_id();
        for entry in append.entries {
            assert!(
                entry.check_owner(owner).is_ok(),
                "{} appends an entry it is not a party to",
                name(node)
            );
            state.ledger.push(entry.into_body());
        }
        if self.rng.chance(self.faults.crash_after_append) {
            self.log(format!("{} crashes after an append", name(node)));
            self.crash(node);
            return None;
        }
        Some(Ok(()))
    }

    fn start_run(&mut self, order: RunOrder) {
        let epoch = self.nodes[PROVIDER].epoch;
        self.nodes[PROVIDER].runs.insert(order.contract_id, epoch);
        let done = self.now + self.rng.between(20, 1_500);
        self.at(
            done,
            Event::RunDone {
                contract_id: order.contract_id,
                epoch,
            },
        );
    }

    fn finished(&mut self, end: AttemptEnd) {
        self.log(format!("R attempt ends: {}", brief_end(&end)));
        if let AttemptEnd::Settled {
            output,
            contract_id,
            ..
        } = &end
        {
            assert_eq!(output, b"hello");
            self.job.settled_reported.insert(*contract_id);
        }
    }

    /// The requester of `responder` learns its connection broke.
    fn broken(&mut self, responder: Responder) {
        let body = Body::Answer {
            reply: responder.reply,
            answer: Err("connection closed".into()),
        };
        let to = responder.to;
        self.at(
            self.now + REQUEST_TIMEOUT_MS,
            Event::Message {
                from: 1 - to,
                to,
                body,
            },
        );
    }

    fn answer(
        &mut self,
        node: usize,
        responder: Responder,
        answer: Result<MarketResponse, String>,
    ) {
        let body = Body::Answer {
            reply: responder.reply,
            answer,
        };
        self.send(node, responder.to, body);
    }

    /// Checks the ledgers after the run: every contract either node holds is held by both, ended
    /// the same way, with the same documents, each recorded once; at most one settlement per job.
    pub(super) fn check(&mut self) {
        let requester = &self.nodes[REQUESTER];
        let provider = &self.nodes[PROVIDER];
        let ids: BTreeSet<ContractId> = requester
            .contract_ids()
            .union(&provider.contract_ids())
            .copied()
            .collect();
        let mut settled = 0;
        for id in &ids {
            for node in [requester, provider] {
                let counts = entry_counts(node, *id);
                assert!(
                    counts.values().all(|count| *count == 1),
                    "{} recorded {id} twice: {counts:?}\n{}",
                    node.keypair.node_id(),
                    self.trace()
                );
            }
            let (Some(ours), Some(theirs)) = (requester.docs(*id), provider.docs(*id)) else {
                panic!("{id} is in one ledger only\n{}", self.trace());
            };
            assert!(
                ours.settlement.is_some() != ours.failure.is_some(),
                "requester: {id} not ended exactly once\n{}",
                self.trace()
            );
            assert!(
                theirs.settlement.is_some() != theirs.failure.is_some(),
                "provider: {id} not ended exactly once\n{}",
                self.trace()
            );
            assert_eq!(ours.contract, theirs.contract);
            assert_eq!(
                ours.receipt,
                theirs.receipt,
                "{id} receipts differ\n{}",
                self.trace()
            );
            assert_eq!(
                ours.settlement,
                theirs.settlement,
                "{id} settlements differ\n{}",
                self.trace()
            );
            if ours.settlement.is_some() {
                settled += 1;
            }
        }
        assert!(
            settled <= 1,
            "the job was settled {settled} times\n{}",
            self.trace()
        );
        for id in &ids {
            let docs = requester.docs(*id).expect("checked above");
            if docs.settlement.is_some() {
                self.stats.settled += 1;
            } else {
                self.stats.failed += 1;
                if docs.receipt.is_some() {
                    self.stats.failed_with_receipt += 1;
                }
                let cancelled = docs.failure.as_ref().is_some_and(|failure| {
                    failure.decode_unverified().is_ok_and(|record| {
                        record.failure == crate::negotiation::AttemptFailure::Cancelled
                    })
                });
                self.stats.cancelled += u64::from(cancelled);
            }
        }
        // A settlement reported to the job is in the ledger (the job's view never runs ahead
        // of it; after a crash the node reads the job's end back from the ledger).
        for id in &self.job.settled_reported {
            assert!(
                requester
                    .docs(*id)
                    .is_some_and(|docs| docs.settlement.is_some()),
                "{id} reported settled, not in the ledger\n{}",
                self.trace()
            );
        }
    }

    pub(super) fn settled_contracts(&self) -> usize {
        let node = &self.nodes[REQUESTER];
        node.contract_ids()
            .into_iter()
            .filter(|id| {
                node.held(*id)
                    .is_some_and(|held| held.status() == Status::Settled)
            })
            .count()
    }

    pub(super) fn contracts(&self) -> usize {
        self.nodes[PROVIDER]
            .contract_ids()
            .len()
            .max(self.nodes[REQUESTER].contract_ids().len())
    }
}

/// Where an inbound request's answer goes.
#[derive(Debug)]
struct Responder {
    to: usize,
    reply: Reply,
}

/// An input for either machine (the simulation routes them by key).
#[derive(Debug, Clone)]
enum Input {
    Answer {
        to: RequestKind,
        answer: Result<MarketResponse, String>,
    },
    Inbound {
        from: crate::identity::NodeId,
        request: MarketRequest,
    },
    Durable,
    AppendFailed(String),
    Tick,
    PeerLost,
    Cancel,
}

impl Input {
    fn requester(self) -> requester::Input {
        match self {
            Input::Answer { to, answer } => requester::Input::Answer { to, answer },
            Input::Inbound { from, request } => requester::Input::Inbound { from, request },
            Input::Durable => requester::Input::Durable,
            Input::AppendFailed(message) => requester::Input::AppendFailed(message),
            Input::Tick => requester::Input::Tick,
            Input::PeerLost => requester::Input::PeerLost,
            Input::Cancel => requester::Input::Cancel,
        }
    }

    fn provider(self) -> provider::Input {
        match self {
            Input::Answer { to, answer } => provider::Input::Answer { to, answer },
            Input::Inbound { from, request } => provider::Input::Inbound { from, request },
            Input::Durable => provider::Input::Durable,
            Input::AppendFailed(message) => provider::Input::AppendFailed(message),
            Input::Tick | Input::PeerLost | Input::Cancel => provider::Input::Tick,
        }
    }
}

fn entry_contract(entry: &EntryBody) -> Option<ContractId> {
    match entry {
        EntryBody::Contract(contract) => Some(ContractId(contract.digest())),
        EntryBody::Receipt(receipt) => receipt.decode_unverified().ok().map(|r| r.contract_id),
        EntryBody::Settlement(settlement) => {
            settlement.decode_unverified().ok().map(|s| s.contract_id)
        }
        EntryBody::Failure(failure) => failure.decode_unverified().ok().map(|f| f.contract_id),
        EntryBody::Usage(usage) => usage.decode_unverified().ok().map(|u| u.contract_id),
        EntryBody::Misbehaviour(_) => None,
    }
}

fn entry_counts(node: &Node, id: ContractId) -> BTreeMap<&'static str, usize> {
    let mut counts = BTreeMap::new();
    for entry in &node.ledger {
        if entry_contract(entry) == Some(id) {
            *counts.entry(entry.kind()).or_default() += 1;
        }
    }
    counts
}

fn name(node: usize) -> &'static str {
    if node == REQUESTER { "R" } else { "P" }
}

fn describe(body: &Body) -> String {
    match body {
        Body::Request { request, .. } => describe_request(request),
        Body::Answer { reply, answer } => format!("answer to {:?}: {}", reply.kind, brief(answer)),
    }
}

fn describe_request(request: &MarketRequest) -> String {
    match request {
        MarketRequest::Quote(_) => "Quote".into(),
        MarketRequest::Propose(proposal) => format!("Propose {}", ContractId(proposal.digest())),
        MarketRequest::Execute(execute) => format!("Execute {}", execute.contract_id),
        MarketRequest::Deliver(_) => "Deliver".into(),
        MarketRequest::Reconcile(docs) => format!(
            "Reconcile {} (receipt {}, settlement {}, failure {})",
            docs.contract_id(),
            docs.receipt.is_some(),
            docs.settlement.is_some(),
            docs.failure.is_some()
        ),
    }
}

fn brief(answer: &Result<MarketResponse, String>) -> String {
    match answer {
        Err(error) => format!("error {error}"),
        Ok(MarketResponse::Offer(_)) => "Offer".into(),
        Ok(MarketResponse::Decline(_)) => "Decline".into(),
        Ok(MarketResponse::Countersigned(_)) => "Countersigned".into(),
        Ok(MarketResponse::Accepted { .. }) => "Accepted".into(),
        Ok(MarketResponse::Reconciled(docs)) => format!(
            "Reconciled (receipt {}, settlement {}, failure {})",
            docs.receipt.is_some(),
            docs.settlement.is_some(),
            docs.failure.is_some()
        ),
        Ok(MarketResponse::Error(error)) => format!("Error {:?} {}", error.code, error.message),
    }
}

fn brief_end(end: &AttemptEnd) -> String {
    match end {
        AttemptEnd::Settled { contract_id, .. } => format!("settled {contract_id}"),
        AttemptEnd::Failed {
            contract_id,
            failure,
            message,
        } => format!("failed {contract_id} {failure:?}: {message}"),
        other => format!("{other:?}"),
    }
}
