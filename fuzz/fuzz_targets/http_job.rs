//! The `POST /v1/jobs` body: JSON into a `SubmitRequest` (as the API's `ApiJson` extractor
//! reads it, with serde_json), checked into a `Submission` (`Submission::from_request`, what
//! the handler runs), and the job spec the market validates (`Submission::spec`,
//! `JobSpec::validate`) and encodes for quoting.
//!
//! `node/src/submission.rs` is compiled here as it is (it names nothing of the node), so the
//! target runs the node's own code without building wasmtime, candle and libp2p.
//!
//! Properties: nothing panics; a parsed body re-serialises and parses to the same value; an
//! accepted submission keeps module and stdin within their caps and holds exactly the bytes
//! the body gave (the base64 reader is strict, so the module's base64 is the text sent); a spec
//! that validates encodes and decodes to the same spec.
#![no_main]

#[path = "../../node/src/submission.rs"]
#[allow(dead_code)]
mod submission;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use libfuzzer_sys::fuzz_target;
use suanli_protocol::JobSpec;
use suanli_protocol::job::{MAX_MODULE_BYTES, MAX_STDIN_BYTES};
use submission::{Submission, SubmitRequest};

fuzz_target!(|data: &[u8]| {
    let Ok(request) = serde_json::from_slice::<SubmitRequest>(data) else {
        return;
    };
    let text = serde_json::to_vec(&request).expect("a parsed body serialises");
    assert_eq!(
        serde_json::from_slice::<SubmitRequest>(&text).as_ref().ok(),
        Some(&request)
    );
    let Ok(checked) = Submission::from_request(request.clone()) else {
        return;
    };
    assert!(checked.module.len() <= MAX_MODULE_BYTES);
    assert!(checked.stdin.len() <= MAX_STDIN_BYTES);
    match (&request.module_base64, &request.module_wat) {
        (Some(encoded), None) => assert_eq!(&BASE64.encode(&checked.module), encoded),
        (None, Some(wat)) => assert_eq!(checked.module, wat.as_bytes()),
        _ => panic!("accepted a body without exactly one module field"),
    }
    match &request.stdin_base64 {
        Some(encoded) => assert_eq!(&BASE64.encode(&checked.stdin), encoded),
        None => assert!(checked.stdin.is_empty()),
    }
    let spec = checked.spec();
    if spec.validate().is_ok() {
        let bytes = spec.encode().expect("a valid spec encodes");
        assert_eq!(JobSpec::decode(&bytes).as_ref(), Ok(&spec));
    }
});
