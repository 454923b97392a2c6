//! Signed and co-signed documents of every kind (offer, decline, contract, receipt,
//! settlement, failure record, misbehaviour evidence, usage receipt), read as a peer's are:
//! `Signed::verify`, `CoSigned::verify`, and their deferred (batched) forms.
//!
//! The first byte selects the kind and how the rest is read:
//! - as the wire form of a `Signed<T>` / `CoSigned<T>` (signatures as the fuzzer wrote them);
//! - as the document's bytes, signed (and countersigned) here with a known key, so the fuzzer
//!   reaches the decoding, party and bounds checks behind the signature.
//!
//! Properties: nothing panics; `verify` and `verify_deferred` (everything but the signature,
//! which goes to a batch) agree on every input but a bad signature; a document `verify`
//! accepts is one `Signed::sign` accepts, and the canonical bytes it signs are no longer than
//! the accepted ones and decode to the same document.
#![no_main]

use libfuzzer_sys::fuzz_target;
use suanli_fuzz::{PROVIDER, REQUESTER, countersign_bytes, keypair, sign_bytes, split_selector};
use suanli_protocol::codec;
use suanli_protocol::negotiation::{
    Contract, Decline, Evidence, FailureRecord, Offer, Receipt, Settlement,
};
use suanli_protocol::signed::{
    CoSigned, CoSignedDocument, Document, SignatureBatch, Signed, VerifyError,
};
use suanli_protocol::tokens::UsageReceipt;

fn signer_secret(data: &[u8], selector: u8) -> [u8; 32] {
    let _ = data;
    if selector & 0x10 == 0 {
        REQUESTER
    } else {
        PROVIDER
    }
}

fn check_signed<T: Document + PartialEq + std::fmt::Debug>(signed: &Signed<T>) {
    let verdict = signed.verify();
    let mut batch = SignatureBatch::new([7; 32]);
    let deferred = signed.verify_deferred(&mut batch);
    match &verdict {
        Ok(document) => {
            // Same checks but the signature: same document, and the one deferred signature
            // is the one `verify` checked.
            assert_eq!(deferred.as_ref(), Ok(document));
            assert_eq!(batch.len(), 1);
            // What a verifier accepts, its signer can sign, and the canonical bytes it signs
            // decode to the same document (accepted bytes may use longer varints).
            let secret = if document.signer() == keypair(REQUESTER).node_id() {
                REQUESTER
            } else {
                PROVIDER
            };
            if document.signer() == keypair(secret).node_id() {
                let again =
                    Signed::sign(document, &keypair(secret)).expect("a verified document signs");
                assert!(again.bytes().len() <= signed.bytes().len());
                assert_eq!(again.decode_unverified().as_ref(), Ok(document));
            }
        }
        // `verify` refused it: either the deferred checks refuse it too, or only the signature
        // (left to the batch) is bad.
        Err(VerifyError::BadSignature { .. }) => {}
        Err(_) => assert!(
            deferred.is_err(),
            "verify refused what verify_deferred accepted"
        ),
    }
}

fn check_cosigned<T: CoSignedDocument + PartialEq + std::fmt::Debug>(cosigned: &CoSigned<T>) {
    check_signed(cosigned.first());
    let verdict = cosigned.verify();
    let mut batch = SignatureBatch::new([9; 32]);
    let deferred = cosigned.verify_deferred(&mut batch);
    match &verdict {
        Ok(document) => {
            assert_eq!(deferred.as_ref(), Ok(document));
            assert_eq!(batch.len(), 2);
        }
        Err(VerifyError::BadSignature { .. }) => {}
        Err(_) => assert!(
            deferred.is_err(),
            "verify refused what verify_deferred accepted"
        ),
    }
}

fn wire_signed<T: Document + PartialEq + std::fmt::Debug>(data: &[u8]) {
    if let Ok(signed) = codec::decode::<Signed<T>>(data, T::MAX_BYTES + 256) {
        check_signed(&signed);
    }
}

fn wire_cosigned<T: CoSignedDocument + PartialEq + std::fmt::Debug>(data: &[u8]) {
    if let Ok(cosigned) = codec::decode::<CoSigned<T>>(data, T::MAX_BYTES + 256) {
        check_cosigned(&cosigned);
    }
}

fn harness_signed<T: Document + PartialEq + std::fmt::Debug>(data: &[u8], secret: [u8; 32]) {
    if let Some(signed) = sign_bytes::<T>(data, secret) {
        check_signed(&signed);
    }
}

fn harness_cosigned<T: CoSignedDocument + PartialEq + std::fmt::Debug>(
    data: &[u8],
    secret: [u8; 32],
) {
    let Some(signed) = sign_bytes::<T>(data, secret) else {
        return;
    };
    let other = if secret == REQUESTER {
        PROVIDER
    } else {
        REQUESTER
    };
    if let Some(cosigned) = countersign_bytes(&signed, other) {
        check_cosigned(&cosigned);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((selector, rest)) = split_selector(data) else {
        return;
    };
    let secret = signer_secret(rest, selector);
    // Low 3 bits: the kind; bits 5-6: wire form, harness-signed or harness-cosigned.
    match (selector & 0x07, (selector >> 5) & 0x03) {
        (0, 0) => wire_signed::<Offer>(rest),
        (0, _) => harness_signed::<Offer>(rest, secret),
        (1, 0) => wire_signed::<Decline>(rest),
        (1, _) => harness_signed::<Decline>(rest, secret),
        (2, 0) => wire_cosigned::<Contract>(rest),
        (2, 1) => harness_signed::<Contract>(rest, secret),
        (2, _) => harness_cosigned::<Contract>(rest, secret),
        (3, 0) => wire_signed::<Receipt>(rest),
        (3, _) => harness_signed::<Receipt>(rest, secret),
        (4, 0) => wire_cosigned::<Settlement>(rest),
        (4, 1) => harness_signed::<Settlement>(rest, secret),
        (4, _) => harness_cosigned::<Settlement>(rest, secret),
        (5, 0) => wire_signed::<FailureRecord>(rest),
        (5, _) => harness_signed::<FailureRecord>(rest, secret),
        (6, 0) => wire_signed::<Evidence>(rest),
        (6, _) => harness_signed::<Evidence>(rest, secret),
        (7, 0) => wire_cosigned::<UsageReceipt>(rest),
        (7, 1) => harness_signed::<UsageReceipt>(rest, secret),
        (_, _) => harness_cosigned::<UsageReceipt>(rest, secret),
    }
});
