//! A small client of the node's HTTP API. Answers are deserialized into the types of
//! [`crate::api::types`], the ones the handlers serialize; an error answer ([`ErrorBody`])
//! becomes a one-line error with its message.

use std::time::Duration;

use anyhow::{anyhow, bail};
use reqwest::StatusCode;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::types::ErrorBody;

/// Talks to one node's API.
#[derive(Debug, Clone)]
pub struct ApiClient {
    base: String,
    http: reqwest::Client,
}

impl ApiClient {
    /// Most time a request may take by default.
    pub const TIMEOUT: Duration = Duration::from_secs(30);

    pub fn new(base: &str) -> anyhow::Result<ApiClient> {
        ApiClient::connect(base, None, ApiClient::TIMEOUT)
    }

    /// A client that sends `token` as `Authorization: Bearer` with every request, and whose
    /// requests may take up to `timeout` (e.g. an audit of a large ledger).
    pub fn connect(
        base: &str,
        token: Option<&str>,
        timeout: Duration,
    ) -> anyhow::Result<ApiClient> {
        ApiClient::build(base, token, |builder| builder.timeout(timeout))
    }

    /// A client for answers that stream for as long as they need (a job's events): no limit on
    /// the whole request, only on each wait for the next bytes ([`Self::STREAM_READ_TIMEOUT`];
    /// the node sends a keep-alive every 15 s).
    pub fn connect_streaming(base: &str, token: Option<&str>) -> anyhow::Result<ApiClient> {
        ApiClient::build(base, token, |builder| {
            builder
                .connect_timeout(Self::TIMEOUT)
                .read_timeout(Self::STREAM_READ_TIMEOUT)
        })
    }

    /// Longest silence of a streamed answer.
    pub const STREAM_READ_TIMEOUT: Duration = Duration::from_secs(60);

    fn build(
        base: &str,
        token: Option<&str>,
        limits: impl FnOnce(reqwest::ClientBuilder) -> reqwest::ClientBuilder,
    ) -> anyhow::Result<ApiClient> {
        let base = base.trim_end_matches('/').to_owned();
        if !base.starts_with("http://") && !base.starts_with("https://") {
            bail!("--api must be an http:// URL, got {base:?}");
        }
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = token {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| anyhow!("--token: not a valid header value"))?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let http = limits(reqwest::Client::builder())
            .default_headers(headers)
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

    /// Sends a request to `path` (a JSON POST with `body`, else a GET) and returns its URL,
    /// status and whole body.
    async fn send<B: Serialize + ?Sized>(
        &self,
        path: &str,
        body: Option<&B>,
    ) -> anyhow::Result<(String, StatusCode, Vec<u8>)> {
        let url = format!("{}{path}", self.base);
        let request = match body {
            Some(body) => self.http.post(&url).json(body),
            None => self.http.get(&url),
        };
        self.send_request(url, request).await
    }

    async fn send_request(
        &self,
        url: String,
        request: reqwest::RequestBuilder,
    ) -> anyhow::Result<(String, StatusCode, Vec<u8>)> {
        let response = request
            .send()
            .await
            .map_err(|error| self.unreachable(&error))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|error| anyhow!("{url}: {error}"))?;
        Ok((url, status, bytes.to_vec()))
    }

    /// GETs `path` and returns its answer as `T`, or a one-line error (API errors included).
    pub async fn get_json<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let (url, status, body) = self.send::<()>(path, None).await?;
        Self::json_answer(&url, status, &body)
    }

    /// DELETEs `path` and returns its answer as `T`.
    pub async fn delete_json<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let url = format!("{}{path}", self.base);
        let request = self.http.delete(&url);
        let (url, status, body) = self.send_request(url, request).await?;
        Self::json_answer(&url, status, &body)
    }

    /// POSTs `body` as JSON to `path` and returns its answer as `T`.
    pub async fn post_json<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        let (url, status, answer) = self.send(path, Some(body)).await?;
        Self::json_answer(&url, status, &answer)
    }

    /// GETs raw bytes (job output, entries, the checkpoint note).
    pub async fn get_bytes(&self, path: &str) -> anyhow::Result<Vec<u8>> {
        let (url, status, body) = self.send::<()>(path, None).await?;
        if !status.is_success() {
            return Err(Self::error_answer(&url, status, &body));
        }
        Ok(body)
    }

    fn json_answer<T: DeserializeOwned>(
        url: &str,
        status: StatusCode,
        body: &[u8],
    ) -> anyhow::Result<T> {
        if !status.is_success() {
            return Err(Self::error_answer(url, status, body));
        }
        serde_json::from_slice(body)
            .map_err(|error| anyhow!("{url}: not the JSON answer expected ({error})"))
    }

    /// POSTs `body` as JSON to `path` and returns the response as it streams (an error answer
    /// becomes a one-line error).
    pub async fn post_stream<B: Serialize + ?Sized>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<reqwest::Response> {
        let url = format!("{}{path}", self.base);
        let request = self.http.post(&url).json(body);
        self.stream(url, request).await
    }

    /// GETs `path` and returns the response as it streams (an error answer becomes a one-line
    /// error).
    pub async fn get_stream(&self, path: &str) -> anyhow::Result<reqwest::Response> {
        let url = format!("{}{path}", self.base);
        let request = self.http.get(&url);
        self.stream(url, request).await
    }

    async fn stream(
        &self,
        url: String,
        request: reqwest::RequestBuilder,
    ) -> anyhow::Result<reqwest::Response> {
        let response = request
            .send()
            .await
            .map_err(|error| self.unreachable(&error))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.bytes().await.unwrap_or_default();
            return Err(Self::error_answer(&url, status, &body));
        }
        Ok(response)
    }

    /// The message of an error answer: suanli's shape, or OpenAI's (the `/v1/chat/…` routes).
    pub fn error_answer(url: &str, status: StatusCode, body: &[u8]) -> anyhow::Error {
        if let Ok(answer) = serde_json::from_slice::<ErrorBody>(body) {
            return anyhow!("{url}: {status}: {}", answer.error.message);
        }
        let openai = serde_json::from_slice::<serde_json::Value>(body).ok();
        match openai
            .as_ref()
            .and_then(|value| value["error"]["message"].as_str())
        {
            Some(message) => anyhow!("{url}: {status}: {message}"),
            None => anyhow!("{url}: {status}: no message"),
        }
    }
}
