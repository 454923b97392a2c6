//! API errors: one type decides the HTTP status and the JSON body ([`ErrorBody`], whose code is
//! an [`ApiErrorCode`]).

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::types::{ApiErrorCode, ErrorBody, ErrorDetail};
use crate::network::NetworkStopped;
use crate::storage::{Health, StorageError};

/// Everything a handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    InvalidModule(String),
    /// A module beyond the protocol's complexity caps (the message names the cap).
    #[error("{0}")]
    ModuleTooComplex(String),
    #[error("{0}")]
    TooLarge(String),
    /// The request conflicts with the object's state (cancelling a job that has ended).
    #[error("{0}")]
    Conflict(String),
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
    /// The node's disk is (nearly) full: it takes no new work until space is freed.
    #[error("{0}")]
    InsufficientStorage(String),
    /// The node's storage failed; it takes no new work until it is restarted.
    #[error("{0}")]
    StorageFailed(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    ForbiddenHost(String),
    #[error("{0}")]
    RequestTimeout(String),
    #[error("{0}")]
    UriTooLong(String),
    #[error("{0}")]
    HeadersTooLarge(String),
    /// The token's rate is used up: try again after `retry_after_secs`.
    #[error("{message}")]
    RateLimited {
        message: String,
        retry_after_secs: u64,
    },
    #[error("{0}")]
    QuotaExhausted(String),
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, ApiErrorCode) {
        match self {
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, ApiErrorCode::NotFound),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, ApiErrorCode::BadRequest),
            ApiError::InvalidModule(_) => (StatusCode::BAD_REQUEST, ApiErrorCode::InvalidModule),
            ApiError::ModuleTooComplex(_) => {
                (StatusCode::BAD_REQUEST, ApiErrorCode::ModuleTooComplex)
            }
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, ApiErrorCode::TooLarge),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, ApiErrorCode::Conflict),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, ApiErrorCode::Internal),
            ApiError::Busy(_) => (StatusCode::SERVICE_UNAVAILABLE, ApiErrorCode::Busy),
            ApiError::PeerFailed(_) => (StatusCode::BAD_GATEWAY, ApiErrorCode::PeerFailed),
            ApiError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                ApiErrorCode::MethodNotAllowed,
            ),
            ApiError::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, ApiErrorCode::Unavailable),
            ApiError::InsufficientStorage(_) => (
                StatusCode::INSUFFICIENT_STORAGE,
                ApiErrorCode::InsufficientStorage,
            ),
            ApiError::StorageFailed(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, ApiErrorCode::StorageFailed)
            }
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, ApiErrorCode::Unauthorized),
            ApiError::ForbiddenHost(_) => (StatusCode::FORBIDDEN, ApiErrorCode::ForbiddenHost),
            ApiError::RequestTimeout(_) => {
                (StatusCode::REQUEST_TIMEOUT, ApiErrorCode::RequestTimeout)
            }
            ApiError::UriTooLong(_) => (StatusCode::URI_TOO_LONG, ApiErrorCode::UriTooLong),
            ApiError::HeadersTooLarge(_) => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                ApiErrorCode::HeadersTooLarge,
            ),
            ApiError::RateLimited { .. } => {
                (StatusCode::TOO_MANY_REQUESTS, ApiErrorCode::RateLimited)
            }
            ApiError::QuotaExhausted(_) => {
                (StatusCode::TOO_MANY_REQUESTS, ApiErrorCode::QuotaExhausted)
            }
        }
    }
}

impl From<NetworkStopped> for ApiError {
    fn from(_: NetworkStopped) -> Self {
        ApiError::Unavailable
    }
}

impl ApiError {
    /// The answer to work refused because the storage is in `health`.
    pub fn not_accepting(health: Health) -> ApiError {
        let message = health.refusal().unwrap_or_default();
        match health {
            Health::DiskFull { .. } => ApiError::InsufficientStorage(message),
            Health::Failed { .. } => ApiError::StorageFailed(message),
            Health::Healthy => ApiError::Internal("refused while healthy".into()),
        }
    }
}

impl From<StorageError> for ApiError {
    fn from(error: StorageError) -> Self {
        match error {
            StorageError::DiskFull { .. } => ApiError::InsufficientStorage(error.to_string()),
            StorageError::Failed(_) => ApiError::StorageFailed(error.to_string()),
            error => ApiError::Internal(error.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let body = ErrorBody {
            error: ErrorDetail {
                code,
                message: self.to_string(),
            },
        };
        let mut response = (status, Json(body)).into_response();
        let headers = response.headers_mut();
        match &self {
            ApiError::Unauthorized(_) => {
                headers.insert(
                    axum::http::header::WWW_AUTHENTICATE,
                    axum::http::HeaderValue::from_static("Bearer"),
                );
            }
            ApiError::RateLimited {
                retry_after_secs, ..
            } => {
                headers.insert(
                    axum::http::header::RETRY_AFTER,
                    axum::http::HeaderValue::from(*retry_after_secs),
                );
            }
            _ => {}
        }
        response
    }
}
