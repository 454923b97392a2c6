//! Criterion micro-benchmarks of the protocol's hot paths: the codec, signing and verifying
//! documents (one at a time and batched), advert validation as a node does it on every gossip
//! message, and ledger chain verification. `cargo bench -p suanli-protocol`.
//!
//! Timings only; nothing here asserts one.

// Fixture construction cannot fail with these fixed inputs; a failure is a bug worth a panic.
#![allow(clippy::expect_used)]

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use suanli_protocol::advert::CapacityAdvert;
use suanli_protocol::ledger::{
    EntryBody, LedgerEntry, entry_hash, verify_chain, verify_chain_batched,
};
use suanli_protocol::signed::{SignatureBatch, SignatureCheck};
use suanli_protocol::wire::{GossipMessage, WireMessage};
use suanli_protocol::{
    CoSigned, Contract, ContractId, Credits, ExecutorKind, Gpu, Hash32, JobId, Keypair, Limits,
    PriceTerms, Receipt, Resources, Settlement, Signed, Usage, codec,
};

const NOW: u64 = 1_800_000_000_000;

fn requester() -> Keypair {
    Keypair::from_secret_bytes([0x11; 32])
}

fn provider() -> Keypair {
    Keypair::from_secret_bytes([0x22; 32])
}

fn limits() -> Limits {
    Limits {
        fuel: 10_000_000,
        memory_bytes: 64 << 20,
        wall_time_ms: 5_000,
        output_bytes: 1 << 20,
        tasks: 1,
    }
}

fn price() -> PriceTerms {
    PriceTerms::fuel(Credits(100), Credits(1_000))
}

fn contract(nonce: u64) -> Contract {
    Contract {
        job_id: JobId(Hash32::of(&nonce.to_be_bytes())),
        job_hash: Hash32::of(b"spec"),
        module_hash: Hash32::of(b"module"),
        stdin_hash: Hash32::of(b""),
        requester: requester().node_id(),
        provider: provider().node_id(),
        offer: Hash32::of(b"offer"),
        price: price(),
        max_cost: price().max_cost(&limits()).expect("cost"),
        limits: limits(),
        deadline_ms: NOW + 60_000,
        nonce,
        created_at_ms: NOW,
    }
}

/// Contract, receipt and settlement of job `nonce`, as the provider's ledger holds them.
fn deal(nonce: u64) -> [EntryBody; 3] {
    let proposal = Signed::sign(&contract(nonce), &requester()).expect("sign");
    let contract_id = ContractId(proposal.digest());
    let (cosigned, _) = CoSigned::countersign(proposal, &provider()).expect("countersign");
    let usage = Usage {
        fuel: 500_000,
        wall_time_ms: 12,
        memory_bytes: 1 << 20,
        output_bytes: 5,
        prompt_tokens: 0,
        completion_tokens: 0,
        cluster: None,
    };
    let cost = price().cost(&usage).expect("cost");
    let receipt = Signed::sign(
        &Receipt {
            contract_id,
            job_id: JobId(Hash32::of(&nonce.to_be_bytes())),
            provider: provider().node_id(),
            requester: requester().node_id(),
            outcome: suanli_protocol::Outcome::Succeeded {
                exit_code: 0,
                output_hash: Hash32::of(b"hello"),
                output_len: 5,
            },
            usage,
            cost,
            finished_at_ms: NOW + 20,
        },
        &provider(),
    )
    .expect("receipt");
    let proposed = Signed::sign(
        &Settlement {
            contract_id,
            receipt: receipt.digest(),
            provider: provider().node_id(),
            requester: requester().node_id(),
            cost,
            settled_at_ms: NOW + 21,
        },
        &provider(),
    )
    .expect("settlement");
    let (settlement, _) = CoSigned::countersign(proposed, &requester()).expect("countersign");
    [
        EntryBody::Contract(cosigned),
        EntryBody::Receipt(receipt),
        EntryBody::Settlement(settlement),
    ]
}

/// A raw ledger of `jobs` deals (3 entries each), owned by the provider.
fn ledger(jobs: u64) -> Vec<Vec<u8>> {
    let mut prev_hash = Hash32::ZERO;
    (0..jobs)
        .flat_map(deal)
        .enumerate()
        .map(|(seq, body)| {
            let raw = LedgerEntry {
                seq: seq as u64,
                timestamp_ms: NOW + seq as u64,
                prev_hash,
                body,
            }
            .encode()
            .expect("entry");
            prev_hash = entry_hash(&raw);
            raw
        })
        .collect()
}

fn advert(key: &Keypair) -> CapacityAdvert {
    CapacityAdvert {
        node: key.node_id(),
        seq: 3,
        issued_at_ms: NOW,
        ttl_ms: 30_000,
        region: "eu-west".into(),
        listen_addrs: vec!["/ip4/127.0.0.1/tcp/4001".into()],
        total: Resources {
            cpu_cores: 64,
            memory_bytes: 256 << 30,
            gpus: vec![Gpu {
                model: "H100".into(),
                memory_bytes: 80 << 30,
                count: 8,
            }],
        },
        free: Resources {
            cpu_cores: 32,
            memory_bytes: 128 << 30,
            gpus: vec![],
        },
        executors: vec![ExecutorKind::Wasm],
        prices: price(),
        load_permille: 250,
        software_version: "suanli/0.1.0".into(),
        models: Vec::new(),
        cluster: None,
    }
}

fn codec_benches(c: &mut Criterion) {
    let entry = LedgerEntry {
        seq: 7,
        timestamp_ms: NOW,
        prev_hash: Hash32::of(b"prev"),
        body: deal(1)[0].clone(),
    };
    let raw = entry.encode().expect("entry");
    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Bytes(raw.len() as u64));
    group.bench_function("encode ledger entry (co-signed contract)", |b| {
        b.iter(|| black_box(&entry).encode())
    });
    group.bench_function("decode ledger entry (co-signed contract)", |b| {
        b.iter(|| LedgerEntry::decode(black_box(&raw)))
    });
    let contract = contract(1);
    let bytes = codec::encode(&contract).expect("encode");
    group.bench_function("encode contract", |b| {
        b.iter(|| codec::encode(black_box(&contract)))
    });
    group.bench_function("decode contract", |b| {
        b.iter(|| codec::decode::<Contract>(black_box(&bytes), 4096))
    });
    group.finish();
}

fn signing_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("signing");
    let document = contract(1);
    group.bench_function("sign contract (encode + ed25519)", |b| {
        b.iter(|| Signed::sign(black_box(&document), &requester()))
    });
    let proposal = Signed::sign(&document, &requester()).expect("sign");
    group.bench_function("verify signed contract (verify_strict + decode)", |b| {
        b.iter(|| black_box(&proposal).verify())
    });
    let (cosigned, _) = CoSigned::countersign(proposal.clone(), &provider()).expect("cosign");
    group.bench_function("verify co-signed contract (2 signatures)", |b| {
        b.iter(|| black_box(&cosigned).verify())
    });
    let checks: Vec<SignatureCheck> = (0..256u64)
        .map(|nonce| {
            let signed = Signed::sign(&contract(nonce), &requester()).expect("sign");
            SignatureCheck {
                kind: "contract",
                signer: signed.signer(),
                message: signed.message(),
                signature: *signed.signature(),
            }
        })
        .collect();
    group.throughput(Throughput::Elements(checks.len() as u64));
    group.bench_function("strict batch verify, 256 signatures", |b| {
        b.iter_batched(
            || {
                let mut batch = SignatureBatch::new([3; 32]);
                for check in &checks {
                    batch.push(check.clone());
                }
                batch
            },
            |mut batch| batch.verify(),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn advert_benches(c: &mut Criterion) {
    let key = provider();
    let signed = Signed::sign(&advert(&key), &key).expect("advert");
    let message = GossipMessage::Advert(signed).to_bytes().expect("message");
    let mut group = c.benchmark_group("advert");
    group.throughput(Throughput::Bytes(message.len() as u64));
    // What the network task does with every gossiped advert before it enters the view.
    group.bench_function("decode + verify + validate gossiped advert", |b| {
        b.iter(|| {
            let GossipMessage::Advert(signed) =
                GossipMessage::from_bytes(black_box(&message)).expect("decode")
            else {
                unreachable!("an advert was encoded")
            };
            let advert = signed.verify().expect("verify");
            advert.validate(NOW).expect("valid");
            advert
        })
    });
    group.finish();
}

fn ledger_benches(c: &mut Criterion) {
    let raws = ledger(100);
    let owner = provider().node_id();
    let mut group = c.benchmark_group("ledger");
    group.throughput(Throughput::Elements(raws.len() as u64));
    group.sample_size(20);
    group.bench_function("verify chain of 300 entries, strict", |b| {
        b.iter(|| verify_chain(owner, raws.iter().map(Vec::as_slice)))
    });
    group.bench_function(
        "verify chain of 300 entries, batched (128 entries/batch)",
        |b| b.iter(|| verify_chain_batched(owner, raws.iter().map(Vec::as_slice), 128, [5; 32])),
    );
    group.finish();
    // A longer ledger, for the batch size (the per-batch torsion checks are amortized over the
    // batch).
    let raws = ledger(1000);
    let mut group = c.benchmark_group("ledger");
    group.throughput(Throughput::Elements(raws.len() as u64));
    group.sample_size(10);
    for batch_entries in [128, 1024] {
        group.bench_function(
            format!("verify chain of 3000 entries, batched ({batch_entries} entries/batch)"),
            |b| {
                b.iter(|| {
                    verify_chain_batched(
                        owner,
                        raws.iter().map(Vec::as_slice),
                        batch_entries,
                        [5; 32],
                    )
                })
            },
        );
    }
    group.finish();
}

/// A node id's text form and back, as logs, the API, the CLI and exports use them.
fn identity_benches(c: &mut Criterion) {
    let id = suanli_protocol::Keypair::from_secret_bytes([7; 32]).node_id();
    let text = id.to_string();
    let mut group = c.benchmark_group("identity");
    group.bench_function("node id to text", |b| b.iter(|| black_box(&id).to_string()));
    group.bench_function("node id from text", |b| {
        b.iter(|| black_box(&text).parse::<suanli_protocol::NodeId>())
    });
    group.bench_function("node id to peer id", |b| {
        b.iter(|| black_box(&id).to_peer_id())
    });
    group.finish();
}

criterion_group!(
    benches,
    identity_benches,
    codec_benches,
    signing_benches,
    advert_benches,
    ledger_benches
);
criterion_main!(benches);
