//! A small client of the node's HTTP API.

use std::time::Duration;

use anyhow::{anyhow, bail};
use serde_json::Value;

/// Talks to one node's API.
#[derive(Debug, Clone)]
pub struct ApiClient {
    base: String,
    http: reqwest::Client,
}

impl ApiClient {
    pub fn new(base: &str) -> anyhow::Result<ApiClient> {
        ApiClient::with_timeout(base, Duration::from_secs(30))
    }

    /// A client whose requests may take up to `timeout` (e.g. an audit of a large ledger).
    pub fn with_timeout(base: &str, timeout: Duration) -> anyhow::Result<ApiClient> {
        let base = base.trim_end_matches('/').to_owned();
        if !base.starts_with("http://") && !base.starts_with("https://") {
            bail!("--api must be an http:// URL, got {base:?}");
        }
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|error| anyhow!("HTTP client: {error}"))?;
        Ok(ApiClient { base, http })
    }

    fn unreachable(&self, error: &reqwest::Error) -> anyhow::Error {
        let reason = if error.is_connect() {
            "connection refused or host unreachable (is `suanli run` running?)".to_owned()
        } else if error.is_timeout() {
            "timed out".to_owned()
        } else {
            error.to_string()
        };
        anyhow!("cannot reach the node API at {}: {reason}", self.base)
    }

    /// Sends a request to `path`; `body` makes it a JSON POST, else a GET.
    async fn send(
        &self,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(String, reqwest::Response)> {
        let url = format!("{}{path}", self.base);
        let request = match body {
            Some(body) => self.http.post(&url).json(body),
            None => self.http.get(&url),
        };
        let response = request
            .send()
            .await
            .map_err(|error| self.unreachable(&error))?;
        Ok((url, response))
    }

    /// GETs `path` and returns its JSON, or a one-line error (API error bodies included).
    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let (url, response) = self.send(path, None).await?;
        Self::json_answer(&url, response).await
    }

    /// POSTs a JSON body to `path` and returns the JSON answer.
    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let (url, response) = self.send(path, Some(body)).await?;
        Self::json_answer(&url, response).await
    }

    /// GETs raw bytes (job output).
    pub async fn get_bytes(&self, path: &str) -> anyhow::Result<Vec<u8>> {
        let (url, response) = self.send(path, None).await?;
        if !response.status().is_success() {
            let status = response.status();
            return Err(Self::json_answer(&url, response)
                .await
                .err()
                .unwrap_or_else(|| anyhow!("{url}: {status}")));
        }
        Ok(response
            .bytes()
            .await
            .map_err(|error| anyhow!("{url}: {error}"))?
            .to_vec())
    }

    async fn json_answer(url: &str, response: reqwest::Response) -> anyhow::Result<Value> {
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .map_err(|error| anyhow!("{url}: not a JSON answer ({error})"))?;
        if !status.is_success() {
            let message = body
                .pointer("/error/message")
                .and_then(Value::as_str)
                .unwrap_or("no message");
            bail!("{url}: {status}: {message}");
        }
        Ok(body)
    }
}
