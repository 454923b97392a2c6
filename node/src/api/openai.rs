//! The OpenAI-compatible endpoints every node serves: `GET /v1/models`,
//! `POST /v1/chat/completions` and `POST /v1/completions`, streamed (SSE) or not. Requests are
//! routed to the mesh by [`crate::tokens::Router`]; the JSON shapes are [`crate::openai`]'s, and
//! errors have OpenAI's shape (`{"error":{"message","type","param","code"}}`), not the rest of
//! the API's.
//!
//! A request runs on a task of its own: a client that disconnects stops generation at the next
//! token, and the tokens generated until then are still receipted and billed.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use serde_json::{Value, json};
use suanli_protocol::Credits;
use suanli_protocol::tokens::{Finish, GenerateRequest, MAX_PROMPT_BYTES};
use tokio::sync::{mpsc, oneshot};

use super::types::ModelView;
use super::{ApiState, BodyError};
use crate::auth::spend::QuotaError;
use crate::auth::{Principal, Spend};
use crate::clock::now_ms;
use crate::openai::{
    ApiError, ChatChunks, ChatCompletionRequest, CompletionRequest, ModelEntry, Options,
    SSE_CONTENT_TYPE, SSE_DONE, TextChunks, Usage, chat_completion, error_event, model_list,
    parse_body, sse_event, text_completion,
};
use crate::tokens::{Completed, Generating, RouteError};

/// Largest request body of these endpoints: the largest prompt, JSON-escaped, with room for the
/// rest.
pub const MAX_BODY_BYTES: usize = 2 * MAX_PROMPT_BYTES + 64 * 1024;

static IDS: AtomicU64 = AtomicU64::new(0);

pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
}

/// `GET /v1/models`: every model the mesh offers.
async fn models(State(state): State<ApiState>) -> Response {
    let created = (now_ms() - state.started.elapsed().as_millis() as u64) / 1000;
    let entries = state
        .tokens
        .models()
        .into_iter()
        .map(|model| {
            let view = ModelView::from(&model.info);
            let providers: Vec<String> = model.providers.iter().map(ToString::to_string).collect();
            ModelEntry::new(&model.info.name, created)
                .with("context_length", json!(view.context))
                .with(
                    "suanli",
                    json!({
                        "context": view.context,
                        "family": view.family,
                        "quantisation": view.quantisation,
                        "sha256": view.sha256,
                        "decode_tokens_per_s": view.decode_tokens_per_s,
                        "price_per_million_prompt": view.price_per_million_prompt,
                        "price_per_million_completion": view.price_per_million_completion,
                        "providers": providers,
                    }),
                )
        })
        .collect();
    axum::Json(model_list(entries)).into_response()
}

async fn chat(State(state): State<ApiState>, request: Request) -> Response {
    handle::<ChatCompletionRequest>(state, request, Shape::Chat).await
}

async fn completions(State(state): State<ApiState>, request: Request) -> Response {
    handle::<CompletionRequest>(state, request, Shape::Text).await
}

/// What both request kinds give the handler.
trait OpenAiRequest: serde::de::DeserializeOwned {
    fn to_generate(&self, default_max_tokens: u32) -> Result<GenerateRequest, ApiError>;
    fn options(&self) -> &Options;
}

impl OpenAiRequest for ChatCompletionRequest {
    fn to_generate(&self, default_max_tokens: u32) -> Result<GenerateRequest, ApiError> {
        ChatCompletionRequest::to_generate(self, default_max_tokens)
    }
    fn options(&self) -> &Options {
        &self.options
    }
}

impl OpenAiRequest for CompletionRequest {
    fn to_generate(&self, default_max_tokens: u32) -> Result<GenerateRequest, ApiError> {
        CompletionRequest::to_generate(self, default_max_tokens)
    }
    fn options(&self) -> &Options {
        &self.options
    }
}

async fn handle<T: OpenAiRequest>(state: ApiState, request: Request, shape: Shape) -> Response {
    let Some(principal) = request.extensions().get::<Principal>().cloned() else {
        return ApiError::internal("no access check ran for this request").into_response();
    };
    let parsed = match read_body(request)
        .await
        .and_then(|body| parse_body::<T>(&body))
    {
        Ok(parsed) => parsed,
        Err(error) => return error.into_response(),
    };
    let generate = match parsed.to_generate(state.tokens.default_max_tokens()) {
        Ok(generate) => generate,
        Err(error) => return error.into_response(),
    };
    // A model request's cost is known only when it ends: the quota admits it while any of the
    // token's quota is left, and its cost is added when it ends.
    let charge_to = match &principal {
        Principal::Token(record) => {
            if let Some(quota) = record.quota_micro {
                match state.access.spend().reserve(&record.id, quota, 0) {
                    Ok(_reservation) => {}
                    Err(QuotaError::Exhausted { .. }) => {
                        return ApiError::insufficient_quota(format!(
                            "the quota of token {:?} is used up",
                            record.name
                        ))
                        .into_response();
                    }
                    Err(error) => return ApiError::internal(error.to_string()).into_response(),
                }
            }
            Some(record.id.clone())
        }
        _ => None,
    };
    match parsed.options().replica_count() {
        Ok(1) => serve(state, generate, shape, parsed.options(), charge_to).await,
        Ok(replicas) => serve_replicated(state, generate, shape, replicas, charge_to).await,
        Err(error) => error.into_response(),
    }
}

/// Which endpoint's answer shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Chat,
    Text,
}

impl Shape {
    fn prompt_param(self) -> &'static str {
        match self {
            Shape::Chat => "messages",
            Shape::Text => "prompt",
        }
    }

    fn id(self) -> String {
        let prefix = match self {
            Shape::Chat => "chatcmpl",
            Shape::Text => "cmpl",
        };
        format!(
            "{prefix}-{:x}{:06x}",
            now_ms(),
            IDS.fetch_add(1, Ordering::Relaxed) & 0xff_ffff
        )
    }
}

/// Reads a body of at most [`MAX_BODY_BYTES`], refusing a larger one with 413.
async fn read_body(request: Request) -> Result<Bytes, ApiError> {
    super::read_body(request, MAX_BODY_BYTES)
        .await
        .map_err(|error| match error {
            BodyError::TooLarge => ApiError::body_too_large(MAX_BODY_BYTES),
            BodyError::Timeout(limit) => ApiError::request_timeout(limit),
            BodyError::Failed(message) => ApiError::bad_request(None, message),
        })
}

/// Hands on a request's end, having added its cost (`cost_of` it, if any) to the token's
/// spending (on a task of its own, so that a client gone before the end is still charged for
/// what was generated).
fn charged<T: Send + 'static>(
    done: oneshot::Receiver<Result<T, RouteError>>,
    spend: Spend,
    token: String,
    cost_of: fn(&Result<T, RouteError>) -> Option<Credits>,
) -> oneshot::Receiver<Result<T, RouteError>> {
    let (forward, receiver) = oneshot::channel();
    tokio::spawn(async move {
        let Ok(result) = done.await else {
            return;
        };
        if let Some(cost) = cost_of(&result)
            && let Err(error) = spend.add_model_cost(&token, cost.micro())
        {
            tracing::warn!(%error, token, "could not add a model request's cost to its token");
        }
        let _ = forward.send(result);
    });
    receiver
}

fn route_error(error: RouteError, shape: Shape, model: &str) -> ApiError {
    match error {
        RouteError::ModelNotFound(model) => ApiError::model_not_found(&model),
        RouteError::ContextLength(message) => {
            ApiError::context_length_exceeded(shape.prompt_param(), message)
        }
        RouteError::BadRequest(message) => ApiError::bad_request(None, message),
        RouteError::NoProvider(reasons) => ApiError::no_provider(model, &reasons),
        RouteError::Failed(message) => ApiError::provider_failed(message),
        RouteError::NotEnoughProviders(message) => ApiError::not_enough_providers(message),
        RouteError::ReplicasDisagree { message, .. } => ApiError::replicas_disagree(message),
        RouteError::ShuttingDown => {
            ApiError::no_provider(model, &["this node is shutting down".into()])
        }
    }
}

/// Where the answer came from and what it cost: a `suanli` object beside OpenAI's fields.
fn provenance(done: &Completed) -> Value {
    json!({
        "provider": done.provider.to_string(),
        "contract_id": done.contract_id.to_string(),
        "request": done.seq,
        "cost_micro": done.cost.micro(),
        "finish": done.finish.name(),
    })
}

fn with_provenance<T: Serialize>(answer: &T, done: &Completed) -> Value {
    let mut value = serde_json::to_value(answer).unwrap_or(Value::Null);
    if let Some(object) = value.as_object_mut() {
        object.insert("suanli".into(), provenance(done));
    }
    value
}

async fn serve(
    state: ApiState,
    request: GenerateRequest,
    shape: Shape,
    options: &Options,
    charge_to: Option<String>,
) -> Response {
    let (streaming, include_usage) = (options.streaming(), options.include_usage());
    let model = request.model.clone();
    let Generating { mut text, done } = state.tokens.serve(request);
    let mut done = match charge_to {
        Some(token) => charged(done, state.access.spend().clone(), token, |result| {
            result.as_ref().ok().map(|completed| completed.cost)
        }),
        None => done,
    };
    if !streaming {
        let mut answer = String::new();
        while let Some(piece) = text.recv().await {
            answer.push_str(&piece);
        }
        let completed = match done.await {
            Ok(Ok(completed)) => completed,
            Ok(Err(error)) => return route_error(error, shape, &model).into_response(),
            Err(_) => return ApiError::internal("the request's task ended").into_response(),
        };
        let usage = Usage::new(completed.prompt_tokens, completed.completion_tokens);
        let id = shape.id();
        let created = now_ms() / 1000;
        let body = match shape {
            Shape::Chat => with_provenance(
                &chat_completion(&id, created, &model, answer, completed.finish, usage),
                &completed,
            ),
            Shape::Text => with_provenance(
                &text_completion(&id, created, &model, answer, completed.finish, usage),
                &completed,
            ),
        };
        return axum::Json(body).into_response();
    }
    // An error before the first text is an HTTP error, not an event.
    let first = tokio::select! {
        piece = text.recv() => piece,
        result = &mut done => match result {
            Ok(Err(error)) => return route_error(error, shape, &model).into_response(),
            Ok(Ok(completed)) => return stream_response(shape, model, include_usage, None, text, Ended::Now(Box::new(completed))),
            Err(_) => return ApiError::internal("the request's task ended").into_response(),
        },
    };
    stream_response(shape, model, include_usage, first, text, Ended::Later(done))
}

/// A request with `replicas` above 1 (greedy, unstreamed): the majority's text, with the
/// `suanli` provenance of a provider of the majority, the cost of every run and the verdict.
async fn serve_replicated(
    state: ApiState,
    request: GenerateRequest,
    shape: Shape,
    replicas: u8,
    charge_to: Option<String>,
) -> Response {
    let model = request.model.clone();
    let done = state.tokens.serve_replicated(request, replicas);
    let done = match charge_to {
        Some(token) => charged(
            done,
            state.access.spend().clone(),
            token,
            |result| match result {
                Ok(replicated) => Some(replicated.cost),
                Err(RouteError::ReplicasDisagree { cost, .. }) => Some(*cost),
                Err(_) => None,
            },
        ),
        None => done,
    };
    let replicated = match done.await {
        Ok(Ok(replicated)) => replicated,
        Ok(Err(error)) => return route_error(error, shape, &model).into_response(),
        Err(_) => return ApiError::internal("the request's task ended").into_response(),
    };
    let completed = &replicated.completed;
    let usage = Usage::new(completed.prompt_tokens, completed.completion_tokens);
    let (id, created) = (shape.id(), now_ms() / 1000);
    let text = replicated.text.clone();
    let mut body = match shape {
        Shape::Chat => with_provenance(
            &chat_completion(&id, created, &model, text, completed.finish, usage),
            completed,
        ),
        Shape::Text => with_provenance(
            &text_completion(&id, created, &model, text, completed.finish, usage),
            completed,
        ),
    };
    if let Some(suanli) = body.get_mut("suanli").and_then(Value::as_object_mut) {
        suanli.insert("cost_micro".into(), json!(replicated.cost.micro()));
        let odd: Vec<String> = replicated.odd.iter().map(ToString::to_string).collect();
        suanli.insert(
            "replicas".into(),
            json!({
                "id": replicated.id.to_string(),
                "asked": replicated.asked,
                "agreeing": replicated.agreeing,
                "odd": odd,
            }),
        );
    }
    axum::Json(body).into_response()
}

/// How a streamed request ends: known already, or still to come.
enum Ended {
    Now(Box<Completed>),
    Later(tokio::sync::oneshot::Receiver<Result<Completed, RouteError>>),
}

/// The SSE answer: events made as the body is read, from the text as it comes. When the client
/// goes away the body is dropped, and with it the text receiver, which stops generation. No task
/// is spawned: the HTTP connection drives the stream.
fn stream_response(
    shape: Shape,
    model: String,
    include_usage: bool,
    first: Option<String>,
    text: mpsc::Receiver<String>,
    ended: Ended,
) -> Response {
    let id = shape.id();
    let created = now_ms() / 1000;
    let mut events = SseEvents {
        chat: ChatChunks::new(&id, created, &model, include_usage),
        plain: TextChunks::new(&id, created, &model, include_usage),
        shape,
        model,
        text,
        ended: Some(ended),
        queue: VecDeque::new(),
    };
    if shape == Shape::Chat {
        let role = sse_event(&events.chat.role());
        events.queue.push_back(role);
    }
    if let Some(first) = first {
        let event = events.piece(&first);
        events.queue.push_back(event);
    }
    let body = futures::stream::unfold(events, |mut events| async move {
        let event = events.next().await?;
        Some((
            Ok::<_, std::convert::Infallible>(Bytes::from(event)),
            events,
        ))
    });
    let mut response = Response::new(Body::from_stream(body));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(SSE_CONTENT_TYPE),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// The events of one streamed answer, in order: those queued (the role, the first piece), the
/// text as it comes, then the finish (with its `suanli` provenance), the usage if asked for, or an
/// error event, and `[DONE]`.
struct SseEvents {
    shape: Shape,
    model: String,
    chat: ChatChunks,
    plain: TextChunks,
    text: mpsc::Receiver<String>,
    ended: Option<Ended>,
    queue: VecDeque<String>,
}

impl SseEvents {
    fn piece(&self, piece: &str) -> String {
        match self.shape {
            Shape::Chat => sse_event(&self.chat.content(piece)),
            Shape::Text => sse_event(&self.plain.text(piece)),
        }
    }

    async fn next(&mut self) -> Option<String> {
        loop {
            if let Some(event) = self.queue.pop_front() {
                return Some(event);
            }
            if let Some(piece) = self.text.recv().await {
                return Some(self.piece(&piece));
            }
            let result = match self.ended.take()? {
                Ended::Now(completed) => Ok(*completed),
                Ended::Later(done) => done
                    .await
                    .unwrap_or_else(|_| Err(RouteError::Failed("the request's task ended".into()))),
            };
            let ending = self.ending(result);
            self.queue.extend(ending);
            self.queue.push_back(SSE_DONE.to_owned());
        }
    }

    fn ending(&self, result: Result<Completed, RouteError>) -> Vec<String> {
        let (shape, chat, plain) = (self.shape, &self.chat, &self.plain);
        match result {
            Ok(completed) => {
                let finish: Finish = completed.finish;
                let usage = Usage::new(completed.prompt_tokens, completed.completion_tokens);
                let mut events = vec![match shape {
                    Shape::Chat => sse_event(&with_provenance(&chat.finish(finish), &completed)),
                    Shape::Text => sse_event(&with_provenance(&plain.finish(finish), &completed)),
                }];
                let usage_event = match shape {
                    Shape::Chat => chat.usage(usage).map(|chunk| sse_event(&chunk)),
                    Shape::Text => plain.usage(usage).map(|chunk| sse_event(&chunk)),
                };
                events.extend(usage_event);
                events
            }
            Err(error) => vec![error_event(&route_error(error, shape, &self.model))],
        }
    }
}
