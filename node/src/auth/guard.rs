//! The middleware every API request passes before its handler, in this order:
//! 1. the request head's bounds (target length, header count and size: 414 and 431 with the JSON
//!    error body; hyper's own, larger limits answer without one);
//! 2. `Host`: an IP literal, `localhost` or a name in `api.hosts` (403 otherwise), so that a web
//!    page cannot reach a loopback node through a name it re-binds to 127.0.0.1;
//! 3. who is asking ([`Principal`]): a valid bearer token, else the operator over loopback where
//!    `api.local_without_token` allows it and no browser marked the request as another site's
//!    ([`from_another_site`]), else anonymous; a bad token is a 401 even where none is needed;
//! 4. whether the route needs a token ([`needs_token`]): an anonymous request gets 401;
//! 5. the token's rate (429 with `Retry-After`).
//!
//! It then hands the handler the principal and the body's deadline as request extensions.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{Access, AuthError, Principal};
use crate::api::ApiError;

/// Longest request target read (path and query).
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// Most header bytes (names and values) read.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;
/// Most headers read.
pub const MAX_HEADERS: usize = 128;

/// When the request's body must have arrived by (a request extension).
#[derive(Debug, Clone, Copy)]
pub struct BodyDeadline(pub Instant);

/// Whether a request needs a token (or the loopback exemption). Reading the node, the mesh, the
/// models and the ledger is public: the ledger is there to be audited, and peers sync it anyway.
/// Everything that submits work, costs credits, or reads another's jobs needs one.
pub fn needs_token(method: &Method, path: &str) -> bool {
    if method != Method::GET && method != Method::HEAD {
        return true;
    }
    // The audit (it asks a peer for its ledger) and a whole verification cost this node work
    // out of proportion to the request.
    let public = matches!(
        path,
        "/healthz"
            | "/v1/node"
            | "/v1/mesh"
            | "/v1/peers"
            | "/v1/models"
            | "/v1/ledger"
            | "/v1/openapi.json"
    ) || crate::api::CONSOLE_PATHS.contains(&path)
        || (path.starts_with("/v1/ledger/")
            && !matches!(path, "/v1/ledger/audit" | "/v1/ledger/verify"));
    !public
}

/// Whether a `Host` header value may be served: an IP literal (a rebound name never is one),
/// `localhost`, or one of `hosts`.
pub fn host_allowed(host: &str, hosts: &[String]) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        return rest
            .split_once(']')
            .is_some_and(|(ip, _)| ip.parse::<std::net::Ipv6Addr>().is_ok());
    } else {
        host.rsplit_once(':').map_or(host, |(name, _)| name)
    };
    name.parse::<IpAddr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || hosts
            .iter()
            .any(|allowed| allowed.eq_ignore_ascii_case(name))
}

/// Checks the request head; `Err` is the answer.
fn check_head(request: &Request, access: &Access) -> Result<(), ApiError> {
    let target = request
        .uri()
        .path_and_query()
        .map_or(0, |target| target.as_str().len());
    if target > MAX_URI_BYTES {
        return Err(ApiError::UriTooLong(format!(
            "the request target of {target} bytes exceeds {MAX_URI_BYTES} bytes"
        )));
    }
    let headers = request.headers();
    let bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if headers.len() > MAX_HEADERS || bytes > MAX_HEADER_BYTES {
        return Err(ApiError::HeadersTooLarge(format!(
            "{} headers of {bytes} bytes exceed {MAX_HEADERS} headers or {MAX_HEADER_BYTES} bytes",
            headers.len()
        )));
    }
    if let Some(host) = headers.get(header::HOST) {
        let host = host.to_str().unwrap_or("");
        if !host_allowed(host, &access.config().hosts) {
            return Err(ApiError::ForbiddenHost(format!(
                "Host {host:?} is not served here (IP literals, localhost, or a name in api.hosts)"
            )));
        }
    }
    Ok(())
}

/// The bearer token of an `Authorization` header; `Err` when the header is there but is not one.
fn bearer(request: &Request) -> Result<Option<&str>, ApiError> {
    let Some(value) = request.headers().get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|value| {
            let (scheme, token) = value.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .filter(|token| !token.is_empty())
        .map(Some)
        .ok_or_else(|| ApiError::Unauthorized("Authorization must be `Bearer <token>`".into()))
}

/// Whether a browser marked the request as sent by another site's page: an `Origin` other than
/// the API's own, or `Sec-Fetch-Site` saying so. Such a request never acts as the operator, so a
/// page open in the operator's browser cannot spend this node's credit through its loopback API
/// (a form post or an image tag needs no CORS permission to be sent).
pub fn from_another_site(request: &Request) -> bool {
    let headers = request.headers();
    let text = |name| {
        headers
            .get(name)
            .map(|value: &axum::http::HeaderValue| value.to_str().unwrap_or("?"))
    };
    if let Some(origin) = text(header::ORIGIN) {
        let own = text(header::HOST).unwrap_or("");
        let origin_host = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"));
        if origin_host != Some(own) {
            return true;
        }
    }
    text(axum::http::HeaderName::from_static("sec-fetch-site"))
        .is_some_and(|site| !matches!(site, "same-origin" | "none"))
}

fn principal(request: &Request, access: &Access) -> Result<Principal, ApiError> {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| *peer)
        // A page's request is never the operator's, whatever address it comes from.
        .filter(|_| !from_another_site(request));
    access
        .principal(peer, bearer(request)?)
        .map_err(|error| match error {
            AuthError::Store(message) => {
                tracing::error!(%message, "API token file unreadable: every token is refused");
                ApiError::Internal(message)
            }
            error => ApiError::Unauthorized(error.to_string()),
        })
}

/// The middleware (see the module docs).
pub async fn guard(State(access): State<Access>, mut request: Request, next: Next) -> Response {
    let admitted = (|| {
        check_head(&request, &access)?;
        let principal = principal(&request, &access)?;
        if matches!(principal, Principal::Anonymous)
            && needs_token(request.method(), request.uri().path())
        {
            return Err(ApiError::Unauthorized(
                "this route needs an API token: `Authorization: Bearer <token>` \
                 (`suanli token create` on the node)"
                    .into(),
            ));
        }
        if let Principal::Token(record) = &principal {
            access
                .take_rate(record)
                .map_err(|wait| ApiError::RateLimited {
                    message: format!(
                        "token {:?} is over its rate of {}/s; retry in {} ms",
                        record.name,
                        record.rate_per_sec.unwrap_or_default(),
                        wait.as_millis()
                    ),
                    retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
                })?;
        }
        Ok(principal)
    })();
    match admitted {
        Ok(principal) => {
            let deadline = Instant::now() + access.config().body_timeout;
            request.extensions_mut().insert(principal);
            request.extensions_mut().insert(BodyDeadline(deadline));
            next.run(request).await
        }
        Err(error) => {
            tracing::debug!(%error, path = request.uri().path(), "API request refused");
            error.into_response()
        }
    }
}

/// How long is left until the request's body deadline (the default one where no guard ran, as
/// in handler tests).
pub fn body_time_left(request: &Request, default: Duration) -> Duration {
    request
        .extensions()
        .get::<BodyDeadline>()
        .map_or(default, |BodyDeadline(deadline)| {
            deadline.saturating_duration_since(Instant::now())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_ip_literals_localhost_or_configured_names() {
        let hosts = vec!["node.example.org".to_owned()];
        for ok in [
            "127.0.0.1",
            "127.0.0.1:7070",
            "[::1]:7070",
            "[::1]",
            "10.1.2.3:80",
            "localhost:7070",
            "LOCALHOST",
            "node.example.org:443",
        ] {
            assert!(host_allowed(ok, &hosts), "{ok}");
        }
        for refused in [
            "evil.example.com",
            "evil.example.com:7070",
            "127.0.0.1.nip.io:7070",
            "[::1",
            "[evil]:80",
            "",
        ] {
            assert!(!host_allowed(refused, &hosts), "{refused}");
        }
    }

    #[test]
    fn reading_public_state_needs_no_token_and_everything_else_does() {
        for path in [
            "/healthz",
            "/v1/node",
            "/v1/mesh",
            "/v1/peers",
            "/v1/models",
            "/v1/ledger",
            "/v1/ledger/entry/0",
            "/v1/ledger/checkpoint",
            "/v1/openapi.json",
            "/",
            "/console/app.js",
            "/console/style.css",
        ] {
            assert!(!needs_token(&Method::GET, path), "{path}");
        }
        for path in [
            "/v1/jobs",
            "/v1/jobs/x",
            "/v1/balances",
            "/v1/ledger/audit",
            "/v1/ledger/verify",
            "/v1/ledgers",
            "/v1/tokens",
            "/console/",
            "/console/other.js",
        ] {
            assert!(needs_token(&Method::GET, path), "{path}");
        }
        assert!(needs_token(&Method::POST, "/v1/chat/completions"));
        assert!(needs_token(&Method::POST, "/v1/node"));
        assert!(needs_token(&Method::DELETE, "/v1/jobs/x"));
    }

    fn request(headers: &[(&str, &str)]) -> Request {
        let mut builder = axum::http::Request::builder().uri("/v1/jobs");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(axum::body::Body::empty()).unwrap()
    }

    #[test]
    fn pages_of_other_sites_are_told_apart_from_tools_and_the_api_s_own() {
        for tool in [
            vec![],
            vec![("host", "127.0.0.1:7070")],
            vec![
                ("host", "127.0.0.1:7070"),
                ("origin", "http://127.0.0.1:7070"),
            ],
            vec![
                ("host", "localhost:7070"),
                ("sec-fetch-site", "same-origin"),
            ],
            vec![("sec-fetch-site", "none")],
        ] {
            assert!(!from_another_site(&request(&tool)), "{tool:?}");
        }
        for page in [
            vec![
                ("host", "127.0.0.1:7070"),
                ("origin", "https://evil.example"),
            ],
            vec![("host", "127.0.0.1:7070"), ("origin", "null")],
            vec![
                ("host", "127.0.0.1:7070"),
                ("origin", "http://127.0.0.1:8080"),
            ],
            vec![("host", "127.0.0.1:7070"), ("sec-fetch-site", "cross-site")],
            vec![("sec-fetch-site", "same-site")],
        ] {
            assert!(from_another_site(&request(&page)), "{page:?}");
        }
    }
}
