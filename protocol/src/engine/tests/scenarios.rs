//! Scenarios of both machines in the simulated world, without and with faults.

use super::sim::{Faults, Sim, Stats};

#[test]
fn a_contract_settles_on_both_sides_without_faults() {
    let mut sim = Sim::new(1, Faults::NONE);
    sim.run(0);
    sim.check();
    assert_eq!(sim.settled_contracts(), 1, "{}", sim.trace());
    assert_eq!(sim.contracts(), 1, "{}", sim.trace());
}

/// One remote contract costs exactly the signature work `VERIFIES_PER_CONTRACT` and
/// `SIGNS_PER_CONTRACT` state (the throughput benchmark's floor uses them): each party checks
/// each of the other's signatures once, and nothing it signed or checked already, appends
/// included. A re-check that creeps back fails here.
#[test]
fn a_contract_checks_each_signature_once() {
    use super::sim::SignatureWork;
    use crate::engine::{SIGNS_PER_CONTRACT, VERIFIES_PER_CONTRACT};

    let mut sim = Sim::new(1, Faults::NONE);
    sim.run(0);
    let [requester, provider] = sim.signatures;
    sim.check();
    assert_eq!(sim.settled_contracts(), 1, "{}", sim.trace());
    // Requester: the offer, the countersignature, the receipt, the settlement half; it signs
    // the contract and the settlement's countersignature. Provider: the proposal and the
    // settlement's countersignature; it signs the offer, the countersignature, the receipt and
    // the settlement half.
    assert_eq!(
        requester,
        SignatureWork {
            verifies: 4,
            signs: 2
        },
        "{}",
        sim.trace()
    );
    assert_eq!(
        provider,
        SignatureWork {
            verifies: 2,
            signs: 4
        },
        "{}",
        sim.trace()
    );
    assert_eq!(
        requester.verifies + provider.verifies,
        u64::from(VERIFIES_PER_CONTRACT)
    );
    assert_eq!(
        requester.signs + provider.signs,
        u64::from(SIGNS_PER_CONTRACT)
    );
}

/// Seeds run by the storm test; `SUANLI_SIM_SEEDS` runs more (e.g. 100000 overnight).
fn seeds() -> u64 {
    std::env::var("SUANLI_SIM_SEEDS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(400)
}

#[test]
fn every_contract_ends_the_same_way_on_both_sides_through_a_storm() {
    let mut total = Stats::default();
    for seed in 0..seeds() {
        let mut sim = Sim::new(seed, Faults::STORM);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            sim.run(30_000);
            sim.check();
        }));
        if let Err(panic) = outcome {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            panic!("seed {seed}: {message}");
        }
        total += sim.stats;
    }
    // The storm must reach the paths it is meant to test, or passing proves little.
    assert!(total.settled > 0 && total.failed > 0, "{total:?}");
    assert!(total.cancelled > 0, "{total:?}");
    assert!(total.resumed > 0 && total.adopted > 0, "{total:?}");
    assert!(
        total.failed_appends > 0 && total.failed_with_receipt > 0,
        "{total:?}"
    );
}

/// Replays one seed of the storm with its whole trace: `SUANLI_SIM_SEED=N cargo test -p
/// suanli-protocol replay_one_seed -- --ignored --nocapture`.
#[test]
#[ignore = "a debugging aid: replays the seed in SUANLI_SIM_SEED"]
fn replay_one_seed() {
    let seed = std::env::var("SUANLI_SIM_SEED")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(0);
    let mut sim = Sim::new(seed, Faults::STORM);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        sim.run(30_000);
        sim.check();
    }));
    // A debugging aid run by hand: the trace is its output.
    #[allow(clippy::print_stdout)]
    {
        println!("{}", sim.full_trace());
    }
    assert!(outcome.is_ok(), "seed {seed} failed");
}

/// A provider whose delivery the requester answers without deciding delivers again after its
/// backoff, not at once: an undecided (or hostile) requester cannot make it resend the output
/// as fast as the round trip.
#[test]
fn an_undecided_answer_to_a_delivery_waits_for_the_backoff() {
    use crate::ContractDocs;
    use crate::advert::tests::NOW;
    use crate::engine::provider::{Input, Provider};
    use crate::engine::{Context, Effect, Held, Outbound, RequestKind};
    use crate::fixtures::{cosigned_contract, provider, signed_receipt};
    use crate::wire::{MarketRequest, MarketResponse};

    let docs = ContractDocs {
        contract: cosigned_contract(),
        receipt: Some(signed_receipt()),
        settlement: None,
        failure: None,
    };
    let keypair = provider();
    let held = Held::from_ledger(docs.clone()).unwrap();
    let at = |now_ms| Context {
        keypair: &keypair,
        now_ms,
    };
    let deliveries = |effects: &[Effect]| {
        effects
            .iter()
            .filter(|effect| {
                matches!(
                    effect,
                    Effect::Send(Outbound::Request(MarketRequest::Deliver(_)))
                )
            })
            .count()
    };
    let now = NOW + 100;
    let (mut machine, effects) = Provider::resume(&at(now), held, Some(b"hello".to_vec()));
    assert_eq!(deliveries(&effects), 1, "{effects:?}");
    let mut sent = 1;
    let mut clock = now;
    // The requester answers each delivery with what it holds: the contract, no decision.
    let undecided = ContractDocs {
        receipt: None,
        ..docs
    };
    for _ in 0..20 {
        let effects = machine.handle(
            &at(clock),
            Input::Answer {
                to: RequestKind::Deliver,
                answer: Ok(MarketResponse::Reconciled(Box::new(undecided.clone()))),
            },
        );
        assert_eq!(
            deliveries(&effects),
            0,
            "delivered again at once: {effects:?}"
        );
        let wake = machine.wake_at().expect("a retry is scheduled");
        assert!(wake > clock, "retry at {wake}, now {clock}");
        clock = wake;
        let effects = machine.handle(&at(clock), Input::Tick);
        sent += deliveries(&effects);
    }
    assert_eq!(sent, 21);
    // 20 retries with a doubling backoff take far longer than 20 round trips.
    assert!(clock - now >= 20 * 200, "{}", clock - now);
}
