//! `GET /v1/tokens`: the API tokens and their spending ([`crate::auth`] owns both).

use axum::Json;
use axum::extract::State;

use super::types::TokenView;
use super::{ApiError, ApiState, Who};
use crate::auth::Principal;
use crate::clock::now_ms;

pub async fn tokens(
    State(state): State<ApiState>,
    Who(principal): Who,
) -> Result<Json<Vec<TokenView>>, ApiError> {
    let records = match &principal {
        Principal::Operator => state
            .access
            .tokens()
            .map_err(|error| ApiError::Internal(error.to_string()))?,
        Principal::Token(record) => vec![record.clone()],
        Principal::Anonymous => return Err(ApiError::Unauthorized("needs a token".into())),
    };
    let now = now_ms();
    records
        .iter()
        .map(|record| {
            let spend = state
                .access
                .spend()
                .view(&record.id)
                .map_err(|error| ApiError::Internal(error.to_string()))?;
            Ok(TokenView::new(record, spend, now))
        })
        .collect::<Result<_, ApiError>>()
        .map(Json)
}
