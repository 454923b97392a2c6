//! Capacity adverts as gossip delivers them: a `Signed<CapacityAdvert>` verified
//! (`Signed::verify`) and then validated against the receiver's clock
//! (`CapacityAdvert::validate`), which is what the capacity view stores.
//!
//! The first byte selects the form of the rest: the wire form of the signed advert, or the
//! advert's bytes signed here by the provider's key (so the checks behind the signature are
//! reached). Eight more bytes give the receiver's clock.
//!
//! Properties: nothing panics; an advert that validates is unexpired and within its TTL bounds
//! at that clock, its free resources are within its totals, and signed again its canonical
//! bytes decode to the same advert.
#![no_main]

use libfuzzer_sys::fuzz_target;
use suanli_fuzz::{NOW, PROVIDER, keypair, sign_bytes, split_selector};
use suanli_protocol::CapacityAdvert;
use suanli_protocol::advert::{MAX_CLOCK_SKEW_MS, MAX_LOAD_PERMILLE, MAX_TTL_MS, MIN_TTL_MS};
use suanli_protocol::codec;
use suanli_protocol::signed::{Document, Signed};

fuzz_target!(|data: &[u8]| {
    let Some((selector, rest)) = split_selector(data) else {
        return;
    };
    // The clock: NOW, or NOW shifted by a fuzzed amount.
    let (now, rest) = match rest.split_first_chunk::<8>() {
        Some((clock, tail)) if selector & 0x80 != 0 => (
            NOW.wrapping_add(u64::from_le_bytes(*clock) % (2 * MAX_TTL_MS))
                .wrapping_sub(MAX_TTL_MS),
            tail,
        ),
        _ => (NOW, rest),
    };
    let signed = if selector & 1 == 0 {
        match codec::decode::<Signed<CapacityAdvert>>(rest, CapacityAdvert::MAX_BYTES + 256) {
            Ok(signed) => signed,
            Err(_) => return,
        }
    } else {
        match sign_bytes::<CapacityAdvert>(rest, PROVIDER) {
            Some(signed) => signed,
            None => return,
        }
    };
    let Ok(advert) = signed.verify() else {
        return;
    };
    assert_eq!(signed.signer(), advert.node);
    assert!(advert.check_bounds().is_ok());
    if advert.validate(now).is_ok() {
        assert!((MIN_TTL_MS..=MAX_TTL_MS).contains(&advert.ttl_ms));
        assert!(advert.expires_at_ms() > now);
        assert!(advert.issued_at_ms <= now.saturating_add(MAX_CLOCK_SKEW_MS));
        assert!(advert.load_permille <= MAX_LOAD_PERMILLE);
        assert!(advert.free.cpu_cores <= advert.total.cpu_cores);
        assert!(advert.free.memory_bytes <= advert.total.memory_bytes);
    }
    if advert.node == keypair(PROVIDER).node_id() {
        let again = Signed::sign(&advert, &keypair(PROVIDER)).expect("a verified advert signs");
        assert_eq!(again.decode_unverified().as_ref(), Ok(&advert));
    }
});
