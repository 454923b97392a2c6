//! Prometheus metrics, served at `GET /metrics` in the OpenMetrics text format
//! (`prometheus-client`).
//!
//! Two kinds: what happens is counted as it happens, by the piece that does it (jobs ending, model
//! requests, ledger appends, storage barriers — each piece owns its own counters and histograms
//! and hands clones to [`Metrics`] to be read); what *is* (peers, ledger size, balances, load) is
//! read from the node's state when Prometheus scrapes ([`Scrape`]), so no copy of it can go stale.
//! Every label's values are bounded: states and outcomes are enums, models are the mesh's
//! (at most [`MAX_MODEL_LABELS`] distinct), and credit is reported for the
//! [`MAX_PEER_SERIES`] peers with the largest balances.

use std::sync::{Arc, Mutex, PoisonError};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// Most distinct model names labelled; further ones are counted as `other`.
pub const MAX_MODEL_LABELS: usize = 64;
/// Most peers whose credit is reported (the largest balances, either way).
pub const MAX_PEER_SERIES: usize = 256;

/// Buckets of durations, seconds: 1 ms to about 9 minutes.
pub fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 20))
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelOutcome {
    model: String,
    outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabel {
    model: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    model: String,
    /// `prompt` or `completion`.
    kind: String,
    /// `requester` (requests this node sent to the mesh) or `provider` (requests it served).
    side: String,
}

/// The counters and histograms this node keeps; cheap to clone (shared).
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    jobs_finished: Family<StateLabel, Counter>,
    job_seconds: Family<StateLabel, Histogram, fn() -> Histogram>,
    token_requests: Family<ModelOutcome, Counter>,
    token_request_seconds: Family<ModelLabel, Histogram, fn() -> Histogram>,
    tokens: Family<TokenLabels, Counter>,
    /// The model names labelled so far.
    models: Mutex<Vec<String>>,
    /// Histograms other pieces own (the ledger's appends, the storage's barriers), registered
    /// under their names.
    owned: Mutex<Vec<(&'static str, &'static str, Histogram)>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            inner: Arc::new(Inner {
                jobs_finished: Family::default(),
                job_seconds: Family::new_with_constructor(duration_histogram),
                token_requests: Family::default(),
                token_request_seconds: Family::new_with_constructor(duration_histogram),
                tokens: Family::default(),
                models: Mutex::new(Vec::new()),
                owned: Mutex::new(Vec::new()),
            }),
        }
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// A job this node placed reached its final state after `seconds` (from its submission).
    pub fn job_finished(&self, state: &str, seconds: f64) {
        let label = StateLabel {
            state: state.to_owned(),
        };
        self.inner.jobs_finished.get_or_create(&label).inc();
        self.inner
            .job_seconds
            .get_or_create(&label)
            .observe(seconds);
    }

    /// A model request this node routed to the mesh ended (`outcome`: `ok` or the error's
    /// code) after `seconds`.
    pub fn token_request(&self, model: &str, outcome: &str, seconds: f64) {
        let model = self.model_label(model);
        self.inner
            .token_requests
            .get_or_create(&ModelOutcome {
                model: model.clone(),
                outcome: outcome.to_owned(),
            })
            .inc();
        self.inner
            .token_request_seconds
            .get_or_create(&ModelLabel { model })
            .observe(seconds);
    }

    /// A usage receipt both parties signed is in this node's ledger: `side` is `requester`
    /// (this node sent the request) or `provider` (it served it).
    pub fn tokens_receipted(&self, model: &str, side: &str, prompt: u32, completion: u32) {
        let model = self.model_label(model);
        for (kind, count) in [("prompt", prompt), ("completion", completion)] {
            self.inner
                .tokens
                .get_or_create(&TokenLabels {
                    model: model.clone(),
                    kind: kind.to_owned(),
                    side: side.to_owned(),
                })
                .inc_by(u64::from(count));
        }
    }

    /// Registers a histogram another piece owns and records into.
    pub fn register_histogram(&self, name: &'static str, help: &'static str, histogram: Histogram) {
        self.inner
            .owned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((name, help, histogram));
    }

    /// `model`, or `other` once [`MAX_MODEL_LABELS`] names are labelled.
    fn model_label(&self, model: &str) -> String {
        let mut models = self
            .inner
            .models
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if models.iter().any(|known| known == model) {
            return model.to_owned();
        }
        if models.len() < MAX_MODEL_LABELS {
            models.push(model.to_owned());
            return model.to_owned();
        }
        "other".to_owned()
    }

    /// The OpenMetrics text of everything counted here and of `scrape`.
    pub fn encode(&self, scrape: &Scrape) -> Result<String, std::fmt::Error> {
        let mut registry = Registry::with_prefix("suanli");
        let inner = &self.inner;
        registry.register(
            "jobs_finished",
            "Jobs placed by this node that reached a final state",
            inner.jobs_finished.clone(),
        );
        registry.register_with_unit(
            "job_duration",
            "Time from a job's submission to its final state",
            Unit::Seconds,
            inner.job_seconds.clone(),
        );
        registry.register(
            "token_requests",
            "Model requests this node routed to the mesh, by model and outcome",
            inner.token_requests.clone(),
        );
        registry.register_with_unit(
            "token_request_duration",
            "Time from a model request's arrival to its end",
            Unit::Seconds,
            inner.token_request_seconds.clone(),
        );
        registry.register(
            "tokens",
            "Tokens receipted by both parties, by model, kind and this node's side",
            inner.tokens.clone(),
        );
        for (name, help, histogram) in inner
            .owned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            registry.register_with_unit(*name, *help, Unit::Seconds, histogram.clone());
        }
        scrape.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry)?;
        Ok(text)
    }
}

/// The node's state when Prometheus scrapes, read by the API handler.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    pub peers: u64,
    pub connections: u64,
    pub mesh_nodes: u64,
    pub ledger_entries: u64,
    pub ledger_appended: u64,
    pub storage_barriers: u64,
    pub storage_shared_barriers: u64,
    pub storage_available_bytes: u64,
    pub jobs_in_flight: u64,
    pub contracts_driven: u64,
    pub notifications_pending: u64,
    /// Places taken (offers outstanding plus contracts running), slots, places in all.
    pub load: (u64, u64, u64),
    pub gossip_accepted: u64,
    pub gossip_ignored: u64,
    pub gossip_rejected: u64,
    pub gossip_received_bytes: u64,
    pub gossip_published: u64,
    pub gossip_published_bytes: u64,
    /// Net micro-credits per peer (what it owes this node), by node id.
    pub credit: Vec<(String, i128)>,
    /// Open standing contracts this node serves.
    pub sessions_served: u64,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictLabel {
    verdict: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabel {
    peer: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PlaceLabel {
    /// `in_use`, `slots` or `capacity`.
    places: String,
}

fn gauge(value: u64) -> Gauge {
    let gauge = Gauge::default();
    gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
    gauge
}

fn counter(value: u64) -> Counter {
    let counter = Counter::default();
    counter.inc_by(value);
    counter
}

impl Scrape {
    fn register(&self, registry: &mut Registry) {
        for (name, help, value) in [
            ("peers", "Peers connected", self.peers),
            ("connections", "Connections open to peers", self.connections),
            (
                "mesh_nodes",
                "Nodes in this node's capacity view (itself included)",
                self.mesh_nodes,
            ),
            (
                "ledger_entries",
                "Durable entries in this node's ledger",
                self.ledger_entries,
            ),
            (
                "storage_available_bytes",
                "Bytes free on the data dir's filesystem",
                self.storage_available_bytes,
            ),
            (
                "jobs_in_flight",
                "Jobs submitted here and not final yet",
                self.jobs_in_flight,
            ),
            (
                "contracts_driven",
                "Contracts with a running driver",
                self.contracts_driven,
            ),
            (
                "notifications_pending",
                "Contracts whose counterparty must still hear how this node ended them",
                self.notifications_pending,
            ),
            (
                "sessions_served",
                "Standing contracts (model sessions) this node serves",
                self.sessions_served,
            ),
        ] {
            registry.register(name, help, gauge(value));
        }
        for (name, help, value) in [
            (
                "ledger_appended",
                "Entries appended to the ledger since the node started",
                self.ledger_appended,
            ),
            (
                "storage_barriers",
                "Durability barriers run (sled flush and fsyncs) since the node started",
                self.storage_barriers,
            ),
            (
                "storage_shared_barriers",
                "Callers whose writes a barrier run by another covered",
                self.storage_shared_barriers,
            ),
            (
                "gossip_published",
                "Gossip messages this node published",
                self.gossip_published,
            ),
        ] {
            registry.register(name, help, counter(value));
        }
        registry.register_with_unit(
            "gossip_received",
            "Bytes of gossip messages received",
            Unit::Bytes,
            counter(self.gossip_received_bytes),
        );
        registry.register_with_unit(
            "gossip_published",
            "Bytes of gossip messages this node published",
            Unit::Bytes,
            counter(self.gossip_published_bytes),
        );
        let verdicts: Family<VerdictLabel, Counter> = Family::default();
        for (verdict, value) in [
            ("accepted", self.gossip_accepted),
            ("ignored", self.gossip_ignored),
            ("rejected", self.gossip_rejected),
        ] {
            verdicts
                .get_or_create(&VerdictLabel {
                    verdict: verdict.to_owned(),
                })
                .inc_by(value);
        }
        registry.register(
            "gossip_messages",
            "Gossip messages received, by verdict (accepted: stored and forwarded)",
            verdicts,
        );
        let places: Family<PlaceLabel, Gauge> = Family::default();
        let (in_use, slots, capacity) = self.load;
        for (label, value) in [("in_use", in_use), ("slots", slots), ("capacity", capacity)] {
            places
                .get_or_create(&PlaceLabel {
                    places: label.to_owned(),
                })
                .set(i64::try_from(value).unwrap_or(i64::MAX));
        }
        registry.register(
            "executor_places",
            "Provider places: in use (offers and running contracts), job slots, and all (slots plus queue)",
            places,
        );
        let mut credit = self.credit.clone();
        credit.sort_by_key(|(_, net)| std::cmp::Reverse(net.unsigned_abs()));
        credit.truncate(MAX_PEER_SERIES);
        let balances: Family<PeerLabel, Gauge> = Family::default();
        for (peer, net) in credit {
            balances
                .get_or_create(&PeerLabel { peer })
                .set(i64::try_from(net).unwrap_or(if net < 0 { i64::MIN } else { i64::MAX }));
        }
        registry.register(
            "credit_micro",
            "Net micro-credits per peer from settlements (positive: the peer owes this node)",
            balances,
        );
    }
}
