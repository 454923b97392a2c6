//! Writes the seed corpora: real messages built with the protocol's own constructors, one file
//! each, under `<dir>/<target>/`. Run from the repository root:
//! `cargo run --manifest-path fuzz/Cargo.toml --example seed -- fuzz/seeds`.

use std::fs;
use std::path::Path;

use suanli_fuzz as sample;
use suanli_protocol::ContractDocs;
use suanli_protocol::codec;
use suanli_protocol::merkle::{ConsistencyProof, InclusionProof};
use suanli_protocol::tiles::{push_bundle_entry, tiles_of_tree};
use suanli_protocol::wire::{
    Delivery, ErrorCode, ExecuteRequest, GossipMessage, LedgerRequest, LedgerResponse,
    MarketRequest, MarketResponse, ViewPage, ViewRequest, WireError, WireMessage,
};

fn write(dir: &Path, target: &str, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let dir = dir.join(target);
    fs::create_dir_all(&dir)?;
    fs::write(dir.join(name), bytes)
}

fn with(selector: u8, bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![selector];
    out.extend_from_slice(bytes);
    out
}

fn bundle(entries: &[Vec<u8>]) -> Vec<u8> {
    let mut bundle = Vec::new();
    for entry in entries {
        push_bundle_entry(&mut bundle, entry).expect("sample entries fit a bundle");
    }
    bundle
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "fuzz/seeds".into());
    let dir = Path::new(&dir);

    // wire
    let docs = ContractDocs {
        contract: sample::cosigned_contract(),
        receipt: Some(sample::receipt()),
        settlement: Some(sample::cosigned_settlement()),
        failure: None,
    };
    let wire: Vec<(&str, Vec<u8>)> = vec![
        ("quote", MarketRequest::Quote(sample::quote()).to_bytes()?),
        (
            "propose",
            MarketRequest::Propose(sample::proposal()).to_bytes()?,
        ),
        (
            "execute",
            MarketRequest::Execute(ExecuteRequest {
                contract_id: sample::contract_id(),
                spec: sample::quote().spec,
                module: b"(module)".to_vec(),
                stdin: Vec::new(),
            })
            .to_bytes()?,
        ),
        (
            "deliver",
            MarketRequest::Deliver(Delivery {
                receipt: sample::receipt(),
                settlement: sample::settlement(),
                output: b"hello".to_vec(),
            })
            .to_bytes()?,
        ),
        (
            "reconcile",
            MarketRequest::Reconcile(Box::new(docs.clone())).to_bytes()?,
        ),
        ("offer", MarketResponse::Offer(sample::offer()).to_bytes()?),
        (
            "decline",
            MarketResponse::Decline(sample::decline()).to_bytes()?,
        ),
        (
            "countersigned",
            MarketResponse::Countersigned(sample::cosigned_contract()).to_bytes()?,
        ),
        (
            "reconciled",
            MarketResponse::Reconciled(Box::new(docs)).to_bytes()?,
        ),
        (
            "error",
            MarketResponse::Error(WireError::new(ErrorCode::BadRequest, "no")).to_bytes()?,
        ),
        (
            "ledger-range",
            LedgerRequest::Range { from: 0, limit: 16 }.to_bytes()?,
        ),
        (
            "ledger-prove",
            LedgerRequest::Prove { size1: 2, size2: 5 }.to_bytes()?,
        ),
        (
            "ledger-checkpoint",
            LedgerResponse::Checkpoint {
                note: Some(sample::checkpoint(5).into_note()),
            }
            .to_bytes()?,
        ),
        (
            "ledger-entries",
            LedgerResponse::Entries {
                from: 0,
                entries: sample::ledger()
                    .into_iter()
                    .take(2)
                    .map(serde_bytes::ByteBuf::from)
                    .collect(),
                checkpoint: Some(sample::checkpoint(2).into_note()),
            }
            .to_bytes()?,
        ),
        (
            "ledger-proof",
            LedgerResponse::Proof(sample::prefix_proof(2, 5)).to_bytes()?,
        ),
        (
            "gossip-advert",
            GossipMessage::Advert(sample::advert()).to_bytes()?,
        ),
        (
            "gossip-checkpoint",
            GossipMessage::Checkpoint {
                note: sample::checkpoint(5).into_note(),
            }
            .to_bytes()?,
        ),
        (
            "gossip-equivocation",
            GossipMessage::Equivocation(sample::equivocation()).to_bytes()?,
        ),
        (
            "view-request",
            ViewRequest {
                after: Some(sample::requester()),
            }
            .to_bytes()?,
        ),
        (
            "view-page",
            ViewPage {
                adverts: vec![sample::advert()],
                more: true,
            }
            .to_bytes()?,
        ),
    ];
    for (name, bytes) in &wire {
        write(dir, "wire", name, bytes)?;
    }

    // signed_documents: selector = kind | form << 5 (0 wire, 1 harness-signed, 2 cosigned);
    // bit 4 picks the provider's key for harness signing.
    let documents: Vec<(&str, u8, Vec<u8>, Vec<u8>)> = vec![
        (
            "offer",
            0x10,
            codec::encode(&sample::offer())?,
            sample::offer().bytes().to_vec(),
        ),
        (
            "decline",
            0x11,
            codec::encode(&sample::decline())?,
            sample::decline().bytes().to_vec(),
        ),
        (
            "contract",
            0x02,
            codec::encode(&sample::cosigned_contract())?,
            sample::proposal().bytes().to_vec(),
        ),
        (
            "receipt",
            0x13,
            codec::encode(&sample::receipt())?,
            sample::receipt().bytes().to_vec(),
        ),
        (
            "settlement",
            0x14,
            codec::encode(&sample::cosigned_settlement())?,
            sample::settlement().bytes().to_vec(),
        ),
        (
            "failure",
            0x05,
            codec::encode(&sample::failure())?,
            sample::failure().bytes().to_vec(),
        ),
        (
            "evidence",
            0x06,
            codec::encode(&sample::evidence())?,
            sample::evidence().bytes().to_vec(),
        ),
    ];
    for (name, selector, wire, document) in &documents {
        write(
            dir,
            "signed_documents",
            &format!("{name}-wire"),
            &with(*selector, wire),
        )?;
        write(
            dir,
            "signed_documents",
            &format!("{name}-signed"),
            &with(selector | 0x20, document),
        )?;
        if matches!(*name, "contract" | "settlement") {
            write(
                dir,
                "signed_documents",
                &format!("{name}-cosigned"),
                &with(selector | 0x40, document),
            )?;
        }
    }

    // advert
    write(
        dir,
        "advert",
        "wire",
        &with(0, &codec::encode(&sample::advert())?),
    )?;
    write(dir, "advert", "signed", &with(1, sample::advert().bytes()))?;
    let mut clocked = vec![0x81];
    clocked.extend_from_slice(&30_000u64.to_le_bytes());
    clocked.extend_from_slice(sample::advert().bytes());
    write(dir, "advert", "signed-clock", &clocked)?;

    // checkpoint_note
    let note = sample::checkpoint(5).into_note();
    let body = note
        .split("\n\n")
        .next()
        .map(|text| format!("{text}\n"))
        .unwrap_or_default();
    write(dir, "checkpoint_note", "note", &with(0, note.as_bytes()))?;
    write(dir, "checkpoint_note", "body", &with(1, body.as_bytes()))?;
    let mut offered = with(2, body.as_bytes());
    offered.push(0);
    offered.extend_from_slice(&codec::encode(&sample::prefix_proof(3, 5))?);
    write(dir, "checkpoint_note", "witness", &offered)?;
    let small = sample::checkpoint(3).into_note();
    let small_body = small
        .split("\n\n")
        .next()
        .map(|text| format!("{text}\n"))
        .unwrap_or_default();
    let mut fork = with(3, small_body.as_bytes());
    fork.push(0);
    fork.extend_from_slice(body.as_bytes());
    fork.push(0);
    fork.extend_from_slice(&codec::encode(&sample::prefix_proof(3, 5))?);
    write(dir, "checkpoint_note", "equivocation-bodies", &fork)?;
    write(
        dir,
        "checkpoint_note",
        "equivocation-wire",
        &with(4, &codec::encode(&sample::equivocation())?),
    )?;

    // ledger_entry: owner bit 0 (requester), relink bit 1.
    let ledger = sample::ledger();
    write(
        dir,
        "ledger_entry",
        "chain",
        &with(0, &bundle(&ledger[..3])),
    )?;
    write(
        dir,
        "ledger_entry",
        "chain-relinked",
        &with(2, &bundle(&ledger)),
    )?;
    write(
        dir,
        "ledger_entry",
        "first",
        &with(0, &bundle(&ledger[..1])),
    )?;

    // merkle_proof
    let tree = sample::tree();
    let inclusion = InclusionProof::from_tree(&tree, 1, 5)?;
    let consistency = ConsistencyProof::from_tree(&tree, 2, 5)?;
    write(
        dir,
        "merkle_proof",
        "inclusion",
        &with(0, serde_json::to_string(&inclusion)?.as_bytes()),
    )?;
    write(
        dir,
        "merkle_proof",
        "consistency",
        &with(1, serde_json::to_string(&consistency)?.as_bytes()),
    )?;
    let mut differential = vec![2];
    differential.extend_from_slice(&7u16.to_le_bytes());
    differential.extend_from_slice(&3u16.to_le_bytes());
    differential.extend_from_slice(&6u16.to_le_bytes());
    write(dir, "merkle_proof", "tree", &differential)?;

    // tiles
    write(dir, "tiles", "bundle", &with(0, &bundle(&ledger)))?;
    let mut from_files = vec![1];
    from_files.extend_from_slice(&5u64.to_le_bytes());
    for tile in tiles_of_tree(&tree, 5)? {
        from_files.extend_from_slice(&tile.to_bytes());
    }
    write(dir, "tiles", "files", &from_files)?;
    let mut real = vec![2];
    real.extend_from_slice(&300u16.to_le_bytes());
    real.extend_from_slice(&290u16.to_le_bytes());
    real.extend_from_slice(&[1, 0, 0, 4]);
    write(dir, "tiles", "tree", &real)?;

    // http_job: bodies as the CLI and the docs send them (docs/api.md).
    let jobs = [
        (
            "wat",
            r#"{"module_wat":"(module (func (export \"_start\")))"}"#.to_owned(),
        ),
        (
            "full",
            format!(
                r#"{{"module_base64":"AGFzbQEAAAA=","args":["--n","10"],"env":{{"MODE":"fast"}},"stdin_base64":"aGVsbG8=","limits":{{"fuel":1000000,"memory_bytes":67108864,"timeout_ms":5000,"max_output_bytes":1048576,"tasks":1}},"max_price":1000,"placement":{{"provider":"{}","remote_only":true,"region":"eu"}},"executor":"wasm"}}"#,
                sample::provider()
            ),
        ),
        (
            "slurm",
            r#"{"module_wat":"(module)","limits":{"tasks":4},"executor":"slurm"}"#.to_owned(),
        ),
        (
            "batch",
            r##"{"module_base64":"IyEvYmluL3NoCmVjaG8gaGkK","executor":"batch"}"##.to_owned(),
        ),
    ];
    for (name, body) in &jobs {
        write(dir, "http_job", name, body.as_bytes())?;
    }

    // openai_request: what the openai Python client sends.
    let requests = [
        (
            "chat",
            r#"{"model":"qwen2.5-0.5b-instruct","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Say hi"}],"max_tokens":16,"temperature":0,"seed":-1}"#,
        ),
        (
            "chat-parts",
            r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}],"max_completion_tokens":8,"top_p":0.5,"stop":["\n","END"],"stream":true,"stream_options":{"include_usage":true},"n":1,"user":"x"}"#,
        ),
        (
            "completion",
            r#"{"model":"m","prompt":"Once upon a time","max_tokens":32,"stop":"."}"#,
        ),
        // Refused as a bad temperature until the smallest nucleus was kept (docs/fuzzing.md).
        (
            "chat-tiny-top-p",
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"top_p":0.0001}"#,
        ),
        (
            "completion-array",
            r#"{"model":"m","prompt":["one"],"echo":false,"temperature":1.5}"#,
        ),
        // suanli's own field: a replicated greedy request.
        (
            "chat-replicas",
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0,"replicas":3}"#,
        ),
    ];
    for (name, body) in &requests {
        write(dir, "openai_request", name, body.as_bytes())?;
    }

    // frame: a cap, then a quote request and a checkpoint answer as the codec frames them.
    let mut frames = 65535u16.to_le_bytes().to_vec();
    for message in [&wire[0].1, &wire[12].1] {
        frames.extend_from_slice(&(message.len() as u32).to_be_bytes());
        frames.extend_from_slice(message);
    }
    write(dir, "frame", "two", &frames)?;
    let mut refused = 16u16.to_le_bytes().to_vec();
    refused.extend_from_slice(&[0, 0, 0, 5, b'h', b'e', b'l', b'l', b'o', 0, 0, 1, 0]);
    write(dir, "frame", "over-cap", &refused)?;
    Ok(())
}
