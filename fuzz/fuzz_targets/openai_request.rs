//! The OpenAI-compatible request bodies, `POST /v1/chat/completions` and `POST
//! /v1/completions`: JSON parsed by `parse_body` and converted by `to_generate` into the
//! `GenerateRequest` a model session sends to its provider, as the handlers do.
//!
//! `node/src/openai/requests.rs` is compiled here as it is (it names nothing of the node), so
//! the target runs the node's own code without building axum, candle and libp2p.
//!
//! Properties: nothing panics; a parsed body re-serialises to JSON that parses again; a request
//! `to_generate` accepts is valid (`GenerateRequest::validate`), keeps OpenAI's bounds on
//! sampling, and fits the `/suanli/tokens/1` frame it travels in, and asks for replicas only
//! greedy and unstreamed; a refused one is a 400 whose
//! error body serialises, and in-range sampling fields are never what it names as at fault.
#![no_main]

#[path = "../../node/src/openai/requests.rs"]
#[allow(dead_code)]
mod requests;

use libfuzzer_sys::fuzz_target;
use requests::{ApiError, ChatCompletionRequest, CompletionRequest, parse_body};
use suanli_protocol::hash::Hash32;
use suanli_protocol::negotiation::ContractId;
use suanli_protocol::tokens::{GenerateRequest, MAX_STOP_SEQUENCES, TokensRequest};
use suanli_protocol::wire::WireMessage;

const DEFAULT_MAX_TOKENS: u32 = 256;

/// Checks what `to_generate` made of a request whose sampling fields are `options`.
fn check(options: &requests::Options, result: Result<GenerateRequest, ApiError>) {
    match result {
        Ok(request) => {
            assert_eq!(request.validate(), Ok(()));
            // Replicas are accepted only where their runs can be compared.
            let replicas = options
                .replica_count()
                .expect("an accepted request's replicas");
            assert!((1..=8).contains(&replicas));
            if replicas > 1 {
                assert_eq!(request.sampling.temperature_milli, 0);
                assert!(!options.streaming());
            }
            assert!(request.sampling.temperature_milli <= 2000);
            assert!((1..=1000).contains(&request.sampling.top_p_milli));
            assert!(request.stop.len() <= MAX_STOP_SEQUENCES);
            request.hash().expect("a valid request hashes");
            let frame = TokensRequest::Generate {
                contract_id: ContractId(Hash32::ZERO),
                seq: u32::MAX,
                request,
            };
            frame
                .to_bytes()
                .expect("a valid request fits its tokens frame");
        }
        Err(error) => {
            assert_eq!(error.status, http::StatusCode::BAD_REQUEST);
            assert!(error.body().is_object());
            // A refusal names the field at fault: sampling fields within OpenAI's ranges are
            // never the reason.
            let temperature = options.temperature.unwrap_or(1.0);
            let top_p = options.top_p.unwrap_or(1.0);
            if (0.0..=2.0).contains(&temperature) && top_p > 0.0 && top_p <= 1.0 {
                assert!(
                    !matches!(error.param.as_deref(), Some("temperature" | "top_p")),
                    "refused in-range sampling (temperature {temperature}, top_p {top_p}): {}",
                    error.message
                );
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = parse_body::<ChatCompletionRequest>(data) {
        let text = serde_json::to_vec(&request).expect("a parsed body serialises");
        assert!(parse_body::<ChatCompletionRequest>(&text).is_ok());
        let _ = request.options.streaming();
        let _ = request.options.include_usage();
        check(&request.options, request.to_generate(DEFAULT_MAX_TOKENS));
    }
    if let Ok(request) = parse_body::<CompletionRequest>(data) {
        let text = serde_json::to_vec(&request).expect("a parsed body serialises");
        assert!(parse_body::<CompletionRequest>(&text).is_ok());
        check(&request.options, request.to_generate(DEFAULT_MAX_TOKENS));
    }
});
