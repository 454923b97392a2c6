//! API errors: one type decides the HTTP status and the JSON body.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::network::NetworkStopped;

/// Everything a handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    InvalidModule(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Internal(String),
    #[error("{0}")]
    Busy(String),
    /// A peer this request needed did not answer, or answered out of protocol.
    #[error("{0}")]
    PeerFailed(String),
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    #[error("the node is shutting down")]
    Unavailable,
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::InvalidModule(_) => (StatusCode::BAD_REQUEST, "invalid_module"),
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            ApiError::Busy(_) => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
            ApiError::PeerFailed(_) => (StatusCode::BAD_GATEWAY, "peer_failed"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        }
    }
}

impl From<NetworkStopped> for ApiError {
    fn from(_: NetworkStopped) -> Self {
        ApiError::Unavailable
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let body = serde_json::json!({ "error": { "code": code, "message": self.to_string() } });
        (status, Json(body)).into_response()
    }
}
