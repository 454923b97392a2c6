//! The web console: a page over this node's own API (`node/console/`: HTML, CSS and script,
//! built into the binary; nothing is fetched from elsewhere). It is served to anyone, as the
//! public reads are; what it shows beyond them needs the API token typed into it, sent as
//! `Authorization: Bearer` with each of its requests.

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use super::ApiState;

const INDEX_HTML: &str = include_str!("../../console/index.html");
const APP_JS: &str = include_str!("../../console/app.js");
const STYLE_CSS: &str = include_str!("../../console/style.css");

/// The console's paths: each is public ([`crate::auth::guard::needs_token`]).
pub const PATHS: [&str; 3] = ["/", "/console/app.js", "/console/style.css"];

/// Only this origin's scripts, styles and connections; never in a frame.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

pub fn routes() -> Router<ApiState> {
    Router::new()
        .route(PATHS[0], get(|| async { asset("text/html", INDEX_HTML) }))
        .route(PATHS[1], get(|| async { asset("text/javascript", APP_JS) }))
        .route(PATHS[2], get(|| async { asset("text/css", STYLE_CSS) }))
}

fn asset(kind: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, format!("{kind}; charset=utf-8")),
            (
                header::CONTENT_SECURITY_POLICY,
                CONTENT_SECURITY_POLICY.to_owned(),
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_owned()),
            // A node upgraded in place serves its new console at once.
            (header::CACHE_CONTROL, "no-cache".to_owned()),
        ],
        body,
    )
}
