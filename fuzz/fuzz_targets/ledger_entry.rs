//! Ledger entries as ledger sync (`LedgerResponse::Entries`) and offline audits receive them:
//! `LedgerEntry::decode` and the chain check (`ChainVerifier::push`), one entry at a time and
//! batched (`ChainVerifier::push_batch`).
//!
//! The first byte selects the ledger's owner and the mode; the rest is an entry bundle
//! (big-endian u16 length + bytes per entry):
//! - raw: the entries as received;
//! - relinked: each entry that decodes gets the sequence number and previous-entry hash of its
//!   place in the chain (re-encoded here), so the fuzzer reaches the document checks behind the
//!   links.
//!
//! Properties: nothing panics; a decoded entry re-encodes and decodes to the same value;
//! `push` and `push_batch` reach the same verdict, the same first bad index and error, and the
//! same head.
#![no_main]

use libfuzzer_sys::fuzz_target;
use suanli_fuzz::{PROVIDER, REQUESTER, keypair, split_selector};
use suanli_protocol::hash::Hash32;
use suanli_protocol::ledger::{ChainVerifier, LedgerEntry, entry_hash};
use suanli_protocol::signed::SignatureBatch;
use suanli_protocol::tiles::read_bundle;

fuzz_target!(|data: &[u8]| {
    let Some((selector, rest)) = split_selector(data) else {
        return;
    };
    let Ok(entries) = read_bundle(rest) else {
        return;
    };
    let owner = keypair(if selector & 1 == 0 {
        REQUESTER
    } else {
        PROVIDER
    })
    .node_id();
    let mut raws: Vec<Vec<u8>> = Vec::with_capacity(entries.len());
    for raw in &entries {
        let decoded = LedgerEntry::decode(raw);
        if let Ok(entry) = &decoded {
            let encoded = entry.encode().expect("a decoded entry re-encodes");
            assert_eq!(LedgerEntry::decode(&encoded).as_ref(), Ok(entry));
        }
        if selector & 2 == 0 {
            raws.push(raw.to_vec());
        } else if let Ok(mut entry) = decoded {
            entry.seq = raws.len() as u64;
            entry.prev_hash = raws
                .last()
                .map(|raw| entry_hash(raw))
                .unwrap_or(Hash32::ZERO);
            raws.push(entry.encode().expect("a decoded entry re-encodes"));
        }
    }
    let mut one_by_one = ChainVerifier::new(owner);
    let mut verdict = Ok(());
    for raw in &raws {
        if let Err(error) = one_by_one.push(raw) {
            verdict = Err(error);
            break;
        }
    }
    let mut batched = ChainVerifier::new(owner);
    let slices: Vec<&[u8]> = raws.iter().map(Vec::as_slice).collect();
    let mut batch = SignatureBatch::new([3; 32]);
    let batched_verdict = batched.push_batch(&slices, &mut batch);
    assert_eq!(verdict, batched_verdict, "push and push_batch disagree");
    assert_eq!(one_by_one.head(), batched.head());
});
