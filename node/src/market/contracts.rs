//! One owner per contract: a driver runs the contract's machine (`suanli_protocol::engine`) and
//! performs what it asks — sends, answers, appends, runs — and the registry routes every request
//! about a contract to its driver.
//!
//! ```text
//!  inbound Execute / Deliver / Reconcile ──route(contract id)──▶ Registry ──Mail (bounded)──▶ Driver
//!        (no driver: one is started for it, from the ledger)                                │ machine.handle
//!  outbox answers ────────────────────────────────────────────────────────────────────────▶ │ effects, in order:
//!                                                                 send (answer comes back)  ◀┤
//!                                                  append: output, outbox note, entries;     │
//!                                                  then Durable / AppendFailed at once       │
//!                                                  run / stop run (provider), answer, end    ┘
//! ```
//!
//! A requester's driver runs inside its job's task (the job awaits the attempt's end); a
//! provider's driver, and one started for a contract that has no driver (a final contract asked
//! about again, an unknown one to adopt), runs as its own task under the market's tracker. A
//! driver registers once its contract has an id and leaves the registry when its machine has
//! ended with nothing in flight, so a contract never has two drivers.
//!
//! Must never: answer or send anything a machine did not ask for; feed any input between an
//! append and its result; keep a contract's machine alive after the node's cancellation (its
//! durable state is in the ledger, and the next start resumes it).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use suanli_protocol::engine::provider::{self, Provider};
use suanli_protocol::engine::requester::{self, Requester};
use suanli_protocol::engine::{
    Append, AttemptEnd, Context, Effect, Held, Outbound, RequestKind, RunOrder, RunReport,
};
use suanli_protocol::wire::{ErrorCode, ExecuteRequest, MarketRequest, MarketResponse, WireError};
use suanli_protocol::{Contract, ContractId, ExecutorKind, NodeId};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::Market;
use crate::clock::now_ms;
use crate::executor::JobInput;
use crate::network::PeerHold;

/// Requests one contract's driver holds before new ones are answered "busy".
const MAILBOX: usize = 32;
/// How often a requester's driver checks that the provider running its job is still connected.
const WATCH_EVERY: Duration = Duration::from_millis(500);

/// Something for a contract's driver.
#[derive(Debug)]
pub(super) enum Mail {
    /// A request from a peer (or from this node, in-process), to be answered.
    Inbound {
        from: NodeId,
        request: MarketRequest,
        reply: oneshot::Sender<MarketResponse>,
    },
    /// The answer to the outbox's notification; `done` says whether everything it taught is
    /// durable (the note can go).
    Notified {
        answer: MarketResponse,
        done: oneshot::Sender<bool>,
    },
}

/// A node's side of a contract. A contract it placed with itself has both, each with its driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Side {
    Requester,
    Provider,
}

/// One side of one contract: what the registry routes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct Route {
    pub(super) id: ContractId,
    pub(super) side: Side,
}

impl Route {
    pub(super) fn requester(id: ContractId) -> Route {
        Route {
            id,
            side: Side::Requester,
        }
    }

    pub(super) fn provider(id: ContractId) -> Route {
        Route {
            id,
            side: Side::Provider,
        }
    }

    /// The side `me` holds of `contract`: the requester's when it is its requester (a contract
    /// with itself is settled by its requester side).
    pub(super) fn held_by(me: NodeId, id: ContractId, contract: &Contract) -> Route {
        if contract.requester == me {
            Route::requester(id)
        } else {
            Route::provider(id)
        }
    }
}

/// Where each contract's driver is.
#[derive(Debug, Default)]
pub(super) struct Registry {
    routes: Mutex<HashMap<Route, mpsc::Sender<Mail>>>,
}

impl Registry {
    fn routes(&self) -> std::sync::MutexGuard<'_, HashMap<Route, mpsc::Sender<Mail>>> {
        self.routes
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Registers a driver for `id`; `None` when another driver has it.
    pub(super) fn register(&self, id: Route) -> Option<mpsc::Receiver<Mail>> {
        let mut routes = self.routes();
        if routes.get(&id).is_some_and(|sender| !sender.is_closed()) {
            return None;
        }
        let (sender, inbox) = mpsc::channel(MAILBOX);
        routes.insert(id, sender);
        Some(inbox)
    }

    /// Removes `id` unless mail is waiting for its driver (then the driver must go on).
    fn leave(&self, id: Route, inbox: &mut mpsc::Receiver<Mail>) -> bool {
        let mut routes = self.routes();
        if !inbox.is_empty() {
            return false;
        }
        routes.remove(&id);
        inbox.close();
        true
    }

    pub(super) fn len(&self) -> usize {
        self.routes().len()
    }
}

impl Market {
    /// Hands `mail` to the driver of contract `id`, starting one from the ledger when there is
    /// none. `false` when the driver's mailbox is full (the mail is dropped: its sender hears
    /// "busy" or nothing, and tries again).
    #[must_use]
    pub(super) fn route(&self, id: Route, mut mail: Mail) -> bool {
        for _ in 0..3 {
            let sender = {
                let mut routes = self.inner.registry.routes();
                match routes.get(&id) {
                    Some(sender) if !sender.is_closed() => sender.clone(),
                    _ => {
                        // The mail is in a new driver's inbox before the driver starts: a
                        // driver that found its inbox empty would leave (an ended contract's
                        // does at once), and the mail sent after it would find the route
                        // closed, as often as it was tried (seen under load in CI).
                        let (sender, inbox) = mpsc::channel(MAILBOX);
                        if sender.try_send(mail).is_err() {
                            return false;
                        }
                        routes.insert(id, sender);
                        let market = self.clone();
                        self.inner
                            .tasks
                            .spawn(async move { market.drive_on_demand(id, inbox).await });
                        return true;
                    }
                }
            };
            match sender.try_send(mail) {
                Ok(()) => return true,
                Err(mpsc::error::TrySendError::Full(_)) => return false,
                // The driver left between the lookup and the send: start again.
                Err(mpsc::error::TrySendError::Closed(back)) => mail = back,
            }
        }
        false
    }

    /// Asks the driver of `id` to answer `request` from `from`.
    pub(super) async fn ask_contract(
        &self,
        id: Route,
        from: NodeId,
        request: MarketRequest,
    ) -> MarketResponse {
        let (reply, answer) = oneshot::channel();
        let mail = Mail::Inbound {
            from,
            request,
            reply,
        };
        if !self.route(id, mail) {
            return busy("this contract's queue is full; try again");
        }
        answer
            .await
            .unwrap_or_else(|_| busy("the contract's driver stopped; try again"))
    }

    /// A driver started for a request about a contract that had none: from the ledger (a final
    /// contract, or an open one whose driver was not started yet), or adopted from the request.
    async fn drive_on_demand(self, id: Route, mut inbox: mpsc::Receiver<Mail>) {
        loop {
            match self.on_demand_machine(id, &mut inbox).await {
                Some(machine) => {
                    let driver = Driver::new(self.clone(), machine, None);
                    driver.run_registered(id, inbox).await;
                    return;
                }
                None if self.inner.registry.leave(id, &mut inbox) => return,
                // Mail came meanwhile: it is handled the same way before the route goes.
                // Returning here would drop it unanswered and leave its route behind, one for
                // every contract id a peer makes up and asks about twice at once.
                None => {}
            }
        }
    }

    /// The machine for a driver started on demand; `None` when the first mail was answered
    /// without one (an unknown contract, or one whose owner is not running yet).
    async fn on_demand_machine(
        &self,
        route: Route,
        inbox: &mut mpsc::Receiver<Mail>,
    ) -> Option<(
        Machine,
        Vec<Effect>,
        Option<oneshot::Sender<MarketResponse>>,
    )> {
        let id = route.id;
        let held = match self.inner.ledger.contract_docs(id) {
            Ok(docs) => docs.map(Held::from_ledger).transpose(),
            Err(error) => {
                warn!(%id, %error, "cannot read a contract");
                answer_all(inbox, busy("cannot read the contract now; try again"));
                return None;
            }
        };
        let held = match held {
            Ok(held) => held,
            Err(error) => {
                error!(%id, %error, "a contract in this node's ledger does not decode");
                answer_all(inbox, busy("cannot read the contract now; try again"));
                return None;
            }
        };
        let keypair = self.inner.keypair.clone();
        let ctx = Context {
            keypair: &keypair,
            now_ms: now_ms(),
        };
        match (route.side, held) {
            (Side::Requester, Some(held)) if !held.status().is_final() => {
                // Its job task drives it (it registers shortly after a start): try again.
                answer_all(inbox, busy("this contract is being resumed; try again"));
                None
            }
            (Side::Requester, Some(held)) => Some((
                Machine::Requester(Box::new(Requester::ended(held))),
                Vec::new(),
                None,
            )),
            // Ended, or placed by this node with itself (its requester side records it).
            (Side::Provider, Some(held))
                if held.status().is_final() || held.contract().requester == self.inner.node_id =>
            {
                Some((
                    Machine::Provider(Box::new(Provider::ended(&ctx, held))),
                    Vec::new(),
                    None,
                ))
            }
            (Side::Provider, Some(held)) => {
                let output = self.inner.jobs.output(&id).ok().flatten();
                let (machine, effects) = Provider::resume(&ctx, held, output);
                Some((Machine::Provider(Box::new(machine)), effects, None))
            }
            (side, None) => {
                // Only a `Reconcile` can bring a contract this node does not hold.
                let mail = inbox.recv().await?;
                let Mail::Inbound {
                    from,
                    request: MarketRequest::Reconcile(docs),
                    reply,
                } = mail
                else {
                    reply_to(mail, not_found());
                    return None;
                };
                let (machine, effects) = match side {
                    Side::Requester => {
                        let (machine, effects) = Requester::adopt(&ctx, from, &docs);
                        (machine.map(|m| Machine::Requester(Box::new(m))), effects)
                    }
                    Side::Provider => {
                        let (machine, effects) = Provider::adopt(&ctx, from, &docs);
                        (machine.map(|m| Machine::Provider(Box::new(m))), effects)
                    }
                };
                match machine {
                    Some(machine) => {
                        info!(%id, peer = %from, "adopting a contract a peer holds and this node does not");
                        Some((machine, effects, Some(reply)))
                    }
                    None => {
                        let response = self.answer_refused(from, effects).await;
                        let _ = reply.send(response.unwrap_or_else(not_found));
                        None
                    }
                }
            }
        }
    }
}

/// Either side's machine.
#[derive(Debug)]
pub(super) enum Machine {
    Requester(Box<Requester>),
    Provider(Box<Provider>),
}

/// An input for either machine.
#[derive(Debug)]
enum Input {
    Answer {
        to: RequestKind,
        answer: Result<MarketResponse, String>,
    },
    Inbound {
        from: NodeId,
        request: MarketRequest,
    },
    RunFinished(RunReport),
    Durable,
    AppendFailed(String),
    Tick,
    PeerLost,
    /// The submitter cancelled the job (requester only).
    Cancel,
}

impl Machine {
    fn handle(&mut self, ctx: &Context<'_>, input: Input) -> Vec<Effect> {
        match self {
            Machine::Requester(machine) => {
                let input = match input {
                    Input::Answer { to, answer } => requester::Input::Answer { to, answer },
                    Input::Inbound { from, request } => requester::Input::Inbound { from, request },
                    Input::Durable => requester::Input::Durable,
                    Input::AppendFailed(message) => requester::Input::AppendFailed(message),
                    Input::Tick => requester::Input::Tick,
                    Input::PeerLost => requester::Input::PeerLost,
                    Input::Cancel => requester::Input::Cancel,
                    Input::RunFinished(_) => return Vec::new(),
                };
                machine.handle(ctx, input)
            }
            Machine::Provider(machine) => {
                let input = match input {
                    Input::Answer { to, answer } => provider::Input::Answer { to, answer },
                    Input::Inbound { from, request } => provider::Input::Inbound { from, request },
                    Input::Durable => provider::Input::Durable,
                    Input::AppendFailed(message) => provider::Input::AppendFailed(message),
                    Input::Tick => provider::Input::Tick,
                    Input::RunFinished(report) => provider::Input::RunFinished(report),
                    Input::PeerLost | Input::Cancel => return Vec::new(),
                };
                machine.handle(ctx, input)
            }
        }
    }

    fn contract_id(&self) -> Option<ContractId> {
        match self {
            Machine::Requester(machine) => machine.contract_id(),
            Machine::Provider(machine) => machine.contract_id(),
        }
    }

    fn counterparty(&self) -> NodeId {
        match self {
            Machine::Requester(machine) => machine.provider(),
            Machine::Provider(machine) => machine.requester(),
        }
    }

    fn wake_at(&self) -> Option<u64> {
        match self {
            Machine::Requester(machine) => machine.wake_at(),
            Machine::Provider(machine) => machine.wake_at(),
        }
    }

    fn is_ended(&self) -> bool {
        match self {
            Machine::Requester(machine) => machine.is_ended(),
            Machine::Provider(machine) => machine.is_ended(),
        }
    }

    fn watches_peer(&self) -> bool {
        match self {
            Machine::Requester(machine) => machine.watches_peer(),
            Machine::Provider(_) => false,
        }
    }

    fn held(&self) -> Option<&Held> {
        match self {
            Machine::Requester(machine) => machine.held(),
            Machine::Provider(machine) => machine.held(),
        }
    }
}

/// What a requester's driver sends with `Execute`: the job's spec bytes, module and stdin.
#[derive(Debug)]
pub(super) struct Payload {
    pub(super) spec: Vec<u8>,
    pub(super) module: Arc<Vec<u8>>,
    pub(super) stdin: Arc<Vec<u8>>,
}

type Answering =
    Pin<Box<dyn Future<Output = (RequestKind, Result<MarketResponse, String>)> + Send>>;
type Running = Pin<Box<dyn Future<Output = RunReport> + Send>>;

/// Runs one contract's machine.
pub(super) struct Driver {
    market: Market,
    machine: Machine,
    initial: Vec<Effect>,
    initial_reply: Option<oneshot::Sender<MarketResponse>>,
    payload: Option<Arc<Payload>>,
    sends: FuturesUnordered<Answering>,
    run: Option<(CancellationToken, Running)>,
    lost_since: Option<Instant>,
    end: Option<AttemptEnd>,
    /// Cancelled when the submitter cancels the job (a requester's attempt); `None` once told.
    job_cancel: Option<CancellationToken>,
    /// Keeps the counterparty connected while the contract runs: the peer manager never lets go
    /// of it (the requester would take that for a lost provider).
    _hold: PeerHold,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("contract", &self.machine.contract_id())
            .finish_non_exhaustive()
    }
}

impl Driver {
    /// A driver for `machine`, which has just produced `effects` (performed first, answering
    /// `reply` if one of them answers). `payload`: a requester's job, for `Execute`.
    pub(super) fn new(
        market: Market,
        machine: (
            Machine,
            Vec<Effect>,
            Option<oneshot::Sender<MarketResponse>>,
        ),
        payload: Option<Arc<Payload>>,
    ) -> Driver {
        let (machine, initial, initial_reply) = machine;
        let hold = market.inner.network.hold(machine.counterparty());
        Driver {
            _hold: hold,
            market,
            machine,
            initial,
            initial_reply,
            payload,
            sends: FuturesUnordered::new(),
            run: None,
            lost_since: None,
            end: None,
            job_cancel: None,
        }
    }

    /// Tells the machine (a requester's) when `cancel` is cancelled: the submitter cancelled
    /// the job.
    pub(super) fn cancelled_by(mut self, cancel: CancellationToken) -> Driver {
        self.job_cancel = Some(cancel);
        self
    }

    /// Runs a requester's attempt to its end (registering once the contract has an id), and
    /// returns how it ended; `None` when the node stopped first. `on_signed` learns the contract
    /// id once the contract is durable.
    pub(super) async fn run_attempt(
        mut self,
        on_signed: &mut (dyn FnMut(ContractId) + Send),
    ) -> Option<AttemptEnd> {
        let initial = std::mem::take(&mut self.initial);
        let reply = self.initial_reply.take();
        self.perform(initial, reply).await;
        // Before the proposal: nothing can reach it by contract id.
        while self.machine.contract_id().is_none() && !self.machine.is_ended() {
            if !self.wait_unregistered().await {
                return None;
            }
        }
        let Some(id) = self.machine.contract_id() else {
            return self.end;
        };
        let id = Route::requester(id);
        let inbox = loop {
            if let Some(inbox) = self.market.inner.registry.register(id) {
                break inbox;
            }
            // A driver started on demand still holds it; it leaves at once.
            tokio::time::sleep(Duration::from_millis(20)).await;
            if self.market.inner.cancel.is_cancelled() {
                return None;
            }
        };
        self.run(id, inbox, Some(on_signed)).await
    }

    /// Waits for the next event of a machine that has no contract id yet.
    async fn wait_unregistered(&mut self) -> bool {
        let cancel = self.market.inner.cancel.clone();
        let job_cancel = self.job_cancel.clone();
        tokio::select! {
            biased;
            _ = cancel.cancelled() => false,
            () = cancelled_or_never(job_cancel) => {
                self.job_cancel = None;
                self.step(Input::Cancel, None).await;
                true
            }
            Some((to, answer)) = self.sends.next(), if !self.sends.is_empty() => {
                self.step(Input::Answer { to, answer }, None).await;
                true
            }
            _ = sleep_until_ms(self.machine.wake_at()) => {
                self.step(Input::Tick, None).await;
                true
            }
        }
    }

    /// Runs the machine, registered under `id`, until it has ended with nothing in flight or the
    /// node stops.
    pub(super) async fn run_registered(
        self,
        id: Route,
        inbox: mpsc::Receiver<Mail>,
    ) -> Option<AttemptEnd> {
        self.run(id, inbox, None).await
    }

    async fn run(
        mut self,
        id: Route,
        mut inbox: mpsc::Receiver<Mail>,
        mut on_signed: Option<&mut (dyn FnMut(ContractId) + Send)>,
    ) -> Option<AttemptEnd> {
        let initial = std::mem::take(&mut self.initial);
        let reply = self.initial_reply.take();
        self.perform(initial, reply).await;
        let cancel = self.market.inner.cancel.clone();
        let mut watch = tokio::time::interval(WATCH_EVERY);
        watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.market
                .inner
                .provider
                .occupy(id.id, &self.machine, &self.market.inner.serving);
            if self.machine.held().is_some()
                && let Some(on_signed) = on_signed.take()
            {
                on_signed(id.id);
            }
            if self.machine.is_ended()
                && self.run.is_none()
                && self.market.inner.registry.leave(id, &mut inbox)
            {
                break;
            }
            let job_cancel = self.job_cancel.clone();
            tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    // Everything durable stays; the next start resumes the contract.
                    self.market.inner.registry.leave(id, &mut inbox);
                    answer_all(&mut inbox, busy("the node is stopping"));
                    break;
                }
                mail = inbox.recv() => {
                    let Some(mail) = mail else { break };
                    self.on_mail(mail).await;
                }
                () = cancelled_or_never(job_cancel) => {
                    self.job_cancel = None;
                    self.step(Input::Cancel, None).await;
                }
                Some((to, answer)) = self.sends.next(), if !self.sends.is_empty() => {
                    self.step(Input::Answer { to, answer }, None).await;
                }
                report = run_future(&mut self.run), if self.run.is_some() => {
                    self.run = None;
                    self.step(Input::RunFinished(report), None).await;
                }
                _ = sleep_until_ms(self.machine.wake_at()) => {
                    self.step(Input::Tick, None).await;
                }
                _ = watch.tick(), if self.machine.watches_peer() => self.watch_peer().await,
            }
        }
        if let Some((cancel, _)) = self.run.take() {
            cancel.cancel();
        }
        if id.side == Side::Provider {
            self.market.inner.provider.release(id.id);
            // A provider keeps a run's output only to deliver it again (for a contract with
            // itself, the requester side owns it).
            let remote = self
                .machine
                .held()
                .is_some_and(|held| held.contract().requester != self.market.inner.node_id);
            if self.machine.is_ended() && remote {
                self.market.inner.jobs.drop_output(&id.id);
            }
        }
        self.end
    }

    async fn on_mail(&mut self, mail: Mail) {
        match mail {
            Mail::Inbound {
                from,
                request,
                reply,
            } => {
                self.step(Input::Inbound { from, request }, Some(reply))
                    .await
            }
            Mail::Notified { answer, done } => {
                self.step(
                    Input::Answer {
                        to: RequestKind::Reconcile,
                        answer: Ok(answer),
                    },
                    None,
                )
                .await;
                let _ = done.send(self.machine.is_ended());
            }
        }
    }

    /// Reports the provider lost once it has been disconnected for the configured grace.
    async fn watch_peer(&mut self) {
        let peer = self.machine.counterparty();
        if peer == self.market.inner.node_id {
            return;
        }
        let connected = self
            .market
            .inner
            .network
            .is_connected(peer)
            .await
            .unwrap_or(false);
        if connected {
            self.lost_since = None;
            return;
        }
        let since = *self.lost_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= self.market.inner.jobs_config.provider_lost_after() {
            self.lost_since = None;
            info!(%peer, "provider lost while running a job");
            self.step(Input::PeerLost, None).await;
        }
    }

    async fn step(&mut self, input: Input, reply: Option<oneshot::Sender<MarketResponse>>) {
        let effects = {
            let keypair = &self.market.inner.keypair;
            let ctx = Context {
                keypair,
                now_ms: now_ms(),
            };
            self.machine.handle(&ctx, input)
        };
        self.perform(effects, reply).await;
    }

    /// Performs `effects` in order. An append is made durable, and its result fed back at once,
    /// before anything else happens to the machine.
    async fn perform(
        &mut self,
        mut effects: Vec<Effect>,
        mut reply: Option<oneshot::Sender<MarketResponse>>,
    ) {
        loop {
            let mut appended = None;
            for effect in effects {
                match effect {
                    Effect::Send(outbound) => self.send(outbound),
                    Effect::Respond(response) => {
                        if let Some(reply) = reply.take() {
                            let _ = reply.send(response);
                        }
                    }
                    Effect::Append(append) => {
                        appended = Some(self.append(append).await);
                        break;
                    }
                    Effect::Penalize(reason) => {
                        let peer = self.machine.counterparty();
                        self.market.penalize(peer, reason).await;
                    }
                    Effect::Run(order) => self.start_run(order),
                    Effect::StopRun => {
                        if let Some((cancel, _)) = self.run.take() {
                            cancel.cancel();
                        }
                    }
                    Effect::Finished(end) => {
                        debug!(contract = ?end.contract_id(), "attempt ended");
                        self.end = Some(end);
                    }
                    Effect::Fault(fault) => {
                        error!(contract = ?self.machine.contract_id(), %fault, "contract engine fault")
                    }
                }
            }
            let Some(result) = appended else { break };
            let input = match result {
                Ok(()) => Input::Durable,
                Err(message) => Input::AppendFailed(message),
            };
            let keypair = &self.market.inner.keypair;
            let ctx = Context {
                keypair,
                now_ms: now_ms(),
            };
            effects = self.machine.handle(&ctx, input);
        }
        if let Some(reply) = reply {
            let _ = reply.send(busy("try again"));
        }
    }

    /// Stores what must be durable with the entries (the output; the note to tell the
    /// counterparty), then appends the entries in one barrier.
    async fn append(&mut self, append: Append) -> Result<(), String> {
        let inner = &self.market.inner;
        let id = self.machine.held().map(Held::id).or_else(|| {
            append
                .entries
                .iter()
                .find_map(|entry| super::entry_contract(entry.body()))
        });
        if let Some(id) = id {
            if let Some(output) = &append.output {
                inner
                    .jobs
                    .put_output(&id, output)
                    .map_err(|error| error.to_string())?;
            }
            if append.notify {
                inner.outbox.note(id).map_err(|error| error.to_string())?;
            }
        }
        // The engine verified or signed every signature in them: appended as checked.
        match inner.ledger.append_checked(append.entries).await {
            Ok(_) => {
                if append.notify {
                    inner.outbox.wake();
                }
                Ok(())
            }
            Err(error) => {
                warn!(contract = ?id, %error, "ledger append failed; retried");
                Err(error.to_string())
            }
        }
    }

    fn send(&mut self, outbound: Outbound) {
        let kind = outbound.kind();
        let request = match outbound {
            Outbound::Request(request) => request,
            Outbound::Execute(contract_id) => match &self.payload {
                Some(payload) => MarketRequest::Execute(ExecuteRequest {
                    contract_id,
                    spec: payload.spec.clone(),
                    module: payload.module.as_ref().clone(),
                    stdin: payload.stdin.as_ref().clone(),
                }),
                None => {
                    // Only a job's own attempt sends Execute.
                    error!(%contract_id, "Execute without the job's payload");
                    return;
                }
            },
        };
        let market = self.market.clone();
        let peer = self.machine.counterparty();
        self.sends.push(Box::pin(async move {
            let answer = market
                .send(peer, request)
                .await
                .map_err(|error| error.to_string());
            (kind, answer)
        }));
    }

    /// Runs the job when a slot is free, stoppable at any time.
    fn start_run(&mut self, order: RunOrder) {
        let cancel = self.market.inner.cancel.child_token();
        let market = self.market.clone();
        let stop = cancel.clone();
        if order.spec.executor == ExecutorKind::Llm {
            // A model session: it runs until it is closed or its budget or time runs out.
            let future = async move {
                market
                    .inner
                    .serving
                    .run_session(order.contract_id, &order.spec, order.limits, stop)
                    .await
            };
            self.run = Some((cancel, Box::pin(future)));
            return;
        }
        if order.spec.executor.on_cluster() {
            // On the cluster: the Slurm job is cancelled when this run is stopped, and keeps
            // running when the node stops (the next start re-attaches to it).
            let future = async move {
                let Some(cluster) = market.inner.cluster.clone() else {
                    return cancelled_report();
                };
                cluster
                    .run(
                        order.contract_id,
                        &order.spec,
                        order.module,
                        order.stdin,
                        stop,
                        market.inner.cancel.clone(),
                    )
                    .await
            };
            self.run = Some((cancel, Box::pin(future)));
            return;
        }
        let future = async move {
            let provider = &market.inner.provider;
            let permit = tokio::select! {
                permit = provider.run_slot() => permit,
                _ = stop.cancelled() => None,
            };
            if permit.is_none() {
                return cancelled_report();
            }
            let result = market
                .inner
                .executor
                .run(JobInput {
                    module: Arc::new(order.module),
                    args: order.spec.args,
                    env: order.spec.env,
                    stdin: order.stdin,
                    limits: order.limits,
                    cancel: stop,
                })
                .await;
            drop(permit);
            let (mut outcome, mut output) = (result.outcome, result.stdout);
            if market.inner.corrupt_output {
                corrupt(&mut outcome, &mut output);
            }
            RunReport {
                outcome,
                usage: result.usage,
                output,
            }
        };
        self.run = Some((cancel, Box::pin(future)));
    }
}

/// Test only (`provider.test_corrupt_output`): turns a completed run's output into another of
/// the same length and signs for that, as a provider that cheats would. Everything after it
/// (receipt, signatures, delivery) is the real protocol.
fn corrupt(outcome: &mut suanli_protocol::Outcome, output: &mut [u8]) {
    if let suanli_protocol::Outcome::Succeeded { output_hash, .. } = outcome {
        for byte in output.iter_mut() {
            *byte ^= 0x20;
        }
        *output_hash = suanli_protocol::Hash32::of(output);
    }
}

async fn run_future(run: &mut Option<(CancellationToken, Running)>) -> RunReport {
    match run {
        Some((_, future)) => future.as_mut().await,
        None => std::future::pending().await,
    }
}

/// A run that never started (the node is stopping): never reported as the run's outcome (the
/// machine has ended the contract or the driver is gone).
fn cancelled_report() -> RunReport {
    RunReport {
        outcome: suanli_protocol::Outcome::Failed {
            reason: suanli_protocol::FailureReason::Cancelled,
            message: "stopped before it started".into(),
        },
        usage: Default::default(),
        output: Vec::new(),
    }
}

/// Until `cancel` is cancelled; forever without one.
async fn cancelled_or_never(cancel: Option<CancellationToken>) {
    match cancel {
        Some(cancel) => cancel.cancelled_owned().await,
        None => std::future::pending().await,
    }
}

/// Sleeps until Unix time `at_ms`, or forever.
async fn sleep_until_ms(at_ms: Option<u64>) {
    match at_ms {
        Some(at) => {
            let wait = at.saturating_sub(now_ms());
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
        None => std::future::pending().await,
    }
}

fn busy(message: &str) -> MarketResponse {
    MarketResponse::Error(WireError::new(ErrorCode::Unavailable, message))
}

fn not_found() -> MarketResponse {
    MarketResponse::Error(WireError::new(ErrorCode::NotFound, "no such contract"))
}

fn reply_to(mail: Mail, response: MarketResponse) {
    match mail {
        Mail::Inbound { reply, .. } => {
            let _ = reply.send(response);
        }
        Mail::Notified { done, .. } => {
            let _ = done.send(false);
        }
    }
}

/// Answers every mail waiting in `inbox` with `response`.
fn answer_all(inbox: &mut mpsc::Receiver<Mail>, response: MarketResponse) {
    while let Ok(mail) = inbox.try_recv() {
        reply_to(mail, response.clone());
    }
}
