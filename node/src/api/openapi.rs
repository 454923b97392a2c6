//! The API's OpenAPI 3.1 document, served at `GET /v1/openapi.json`.
//!
//! Every route the node serves is one row of [`ROUTES`]: method, path, query string, body and
//! answers, each answer and body named by the Rust type the handler serializes or reads. The
//! schemas are generated from those types (schemars: JSON Schema 2020-12, the dialect of OpenAPI
//! 3.1) into `components.schemas`, so the document changes with the types and cannot drift from
//! them. Answers are described as the node serializes them, bodies and query strings as it reads
//! them. A unit test checks that every route the router registers has its row.
//!
//! Whether an operation needs a token is asked of [`crate::auth::guard::needs_token`] itself.
//! The document is built once, on its first request.

use std::sync::OnceLock;

use axum::http::{Method, header};
use axum::response::IntoResponse;
use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{Map, Value, json};

use super::types::{
    AuditQuery, AuditReport, Balance, ConsistencyProof, ConsistencyQuery, EntriesPage, EntryQuery,
    EntryView, EquivocationRecord, ErrorBody, EvidencePage, EvidenceQuery, HealthView,
    InclusionProof, InclusionQuery, JobEventView, JobListQuery, JobPage, JobQuery, JobView,
    LedgerQuery, MeshNodeView, NodeView, PeerInfo, RawEntriesPage, SessionView, SubmitRequest,
    SubmitResponse, TokenView, VerifyReport, Witnessed,
};
use crate::openai::{
    ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, CompletionRequest, ModelList,
    TextCompletion, TextCompletionChunk,
};

/// Writes a type's schema (a `$ref` into `components.schemas` for a named type).
type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

/// An HTTP method of [`ROUTES`] (`Copy`, unlike [`Method`], so that rows are constants).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Get,
    Post,
    Delete,
}

impl Verb {
    pub fn method(self) -> Method {
        match self {
            Verb::Get => Method::GET,
            Verb::Post => Method::POST,
            Verb::Delete => Method::DELETE,
        }
    }
}

/// One route of the API.
#[derive(Debug)]
pub struct Route {
    pub verb: Verb,
    pub path: &'static str,
    summary: &'static str,
    /// The type its query string is read into: each field is an `in: query` parameter.
    query: Option<SchemaFn>,
    /// The type its JSON body is read into.
    body: Option<SchemaFn>,
    /// The success status, what it means, and what it carries.
    status: u16,
    answer: &'static str,
    content: &'static [Content],
    /// The shape of its errors.
    errors: Errors,
}

/// What a success answer carries, by media type.
#[derive(Debug)]
enum Content {
    /// `application/json` of this schema.
    Json(SchemaFn),
    /// `text/event-stream`: server-sent events whose `data` is JSON of this schema (given as the
    /// media type's `x-event-data`, since OpenAPI 3.1 has no field for it).
    Events(SchemaFn),
    /// Text of this media type.
    Text(&'static str),
    /// `application/octet-stream`: bytes as stored.
    Bytes,
}

/// The shape of a route's error answers.
#[derive(Debug, Clone, Copy)]
enum Errors {
    /// [`ErrorBody`].
    Api,
    /// OpenAI's (`crate::openai::ErrorBody`), from the handler; the access guard's refusals
    /// still have the API's.
    OpenAi,
}

fn schema<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    generator.subschema_for::<T>()
}

/// A query type's own schema (never a `$ref`), whose properties become parameters.
fn inline<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    T::json_schema(generator)
}

/// `GET /v1/ledger`: every field, or only the raw bytes with `fields=raw`.
fn ledger_page(generator: &mut SchemaGenerator) -> Schema {
    let all = generator.subschema_for::<EntriesPage>();
    let raw = generator.subschema_for::<RawEntriesPage>();
    schemars::json_schema!({"oneOf": [all, raw]})
}

/// `GET /v1/jobs/{id}/events`: `snapshot` and `end` carry the job, every other event one step.
fn job_event_data(generator: &mut SchemaGenerator) -> Schema {
    let job = generator.subschema_for::<JobView>();
    let step = generator.subschema_for::<JobEventView>();
    schemars::json_schema!({"oneOf": [job, step]})
}

/// Any JSON object (this document).
fn object(_: &mut SchemaGenerator) -> Schema {
    schemars::json_schema!({"type": "object"})
}

/// A route that takes nothing and answers JSON of `answer` with 200.
const fn get(path: &'static str, summary: &'static str, answer: &'static [Content]) -> Route {
    Route {
        verb: Verb::Get,
        path,
        summary,
        query: None,
        body: None,
        status: 200,
        answer: summary,
        content: answer,
        errors: Errors::Api,
    }
}

/// Every route the router serves ([`super::router`]), in the order of docs/api.md.
pub const ROUTES: &[Route] = &[
    Route {
        answer: "The console's page; its script and style are under `/console/`.",
        ..get("/", "The web console", &[Content::Text("text/html")])
    },
    get(
        "/console/app.js",
        "The web console's script",
        &[Content::Text("text/javascript")],
    ),
    get(
        "/console/style.css",
        "The web console's style",
        &[Content::Text("text/css")],
    ),
    get(
        "/healthz",
        "Whether the node runs and serves its API",
        &[Content::Json(schema::<HealthView>)],
    ),
    get(
        "/metrics",
        "Prometheus metrics (OpenMetrics text)",
        &[Content::Text("application/openmetrics-text")],
    ),
    Route {
        answer: "This document.",
        ..get(
            "/v1/openapi.json",
            "This API's OpenAPI 3.1 document, generated from the handlers' types",
            &[Content::Json(object)],
        )
    },
    get(
        "/v1/node",
        "This node: id, version, listen addresses, capacity, prices, uptime, storage health",
        &[Content::Json(schema::<NodeView>)],
    ),
    get(
        "/v1/peers",
        "Connected peers, each with its standing in this node's ledger and why",
        &[Content::Json(schema::<Vec<PeerInfo>>)],
    ),
    get(
        "/v1/mesh",
        "Every node in the capacity view, this one included: its newest valid advert",
        &[Content::Json(schema::<Vec<MeshNodeView>>)],
    ),
    Route {
        verb: Verb::Post,
        body: Some(schema::<SubmitRequest>),
        status: 202,
        answer: "Accepted: the job's id. `GET /v1/jobs/{id}` follows it.",
        ..get(
            "/v1/jobs",
            "Submit a WebAssembly job to the mesh",
            &[Content::Json(schema::<SubmitResponse>)],
        )
    },
    Route {
        query: Some(inline::<JobListQuery>),
        ..get(
            "/v1/jobs",
            "Jobs submitted here, oldest first, one page (a token sees its own)",
            &[Content::Json(schema::<JobPage>)],
        )
    },
    Route {
        query: Some(inline::<JobQuery>),
        ..get(
            "/v1/jobs/{id}",
            "One job: state, provider, contract, usage, cost, attempts (long-polls with `wait_ms`)",
            &[Content::Json(schema::<JobView>)],
        )
    },
    Route {
        verb: Verb::Delete,
        status: 202,
        answer: "Cancelled: the job as it was. 409 when it has ended already.",
        ..get(
            "/v1/jobs/{id}",
            "Cancel a job",
            &[Content::Json(schema::<JobView>)],
        )
    },
    Route {
        answer: "The job's stdout, as the provider returned it (404 until the job has an output).",
        ..get("/v1/jobs/{id}/output", "A job's output", &[Content::Bytes])
    },
    Route {
        answer: "Server-sent events, each named as its step (`snapshot`, `quote`, `offer`, \
                 `decline`, `contract`, `running`, `receipt`, `settlement`, `failover`, `end`) \
                 with a JSON `data`: `snapshot` and `end` the job (a `JobView`), the others a \
                 `JobEventView`. The stream closes after `end`.",
        ..get(
            "/v1/jobs/{id}/events",
            "A job's steps as they happen",
            &[Content::Events(job_event_data)],
        )
    },
    Route {
        query: Some(inline::<EvidenceQuery>),
        ..get(
            "/v1/evidence",
            "Evidence against providers of replicated jobs whose result differed, one page",
            &[Content::Json(schema::<EvidencePage>)],
        )
    },
    Route {
        query: Some(inline::<LedgerQuery>),
        answer: "Entries with every field, or with `fields=raw` only their stored bytes.",
        ..get(
            "/v1/ledger",
            "A range of ledger entries, and the ledger's durable size and head",
            &[Content::Json(ledger_page)],
        )
    },
    get(
        "/v1/ledger/verify",
        "Full verification of the ledger's chain and signatures",
        &[Content::Json(schema::<VerifyReport>)],
    ),
    Route {
        query: Some(inline::<EntryQuery>),
        answer: "The entry as JSON, or with `raw=1` its exact stored bytes.",
        ..get(
            "/v1/ledger/entry/{index}",
            "One ledger entry",
            &[Content::Json(schema::<EntryView>), Content::Bytes],
        )
    },
    Route {
        query: Some(inline::<InclusionQuery>),
        ..get(
            "/v1/ledger/proof/inclusion",
            "An RFC 6962 inclusion proof of one entry in the ledger's Merkle tree",
            &[Content::Json(schema::<InclusionProof>)],
        )
    },
    Route {
        query: Some(inline::<ConsistencyQuery>),
        ..get(
            "/v1/ledger/proof/consistency",
            "An RFC 6962 consistency proof between two sizes of the ledger's Merkle tree",
            &[Content::Json(schema::<ConsistencyProof>)],
        )
    },
    get(
        "/v1/ledger/checkpoint",
        "The latest signed checkpoint of this node's ledger (a C2SP signed note)",
        &[Content::Text("text/plain")],
    ),
    get(
        "/v1/ledger/witnessed",
        "The checkpoints this node holds for other nodes",
        &[Content::Json(schema::<Vec<Witnessed>>)],
    ),
    get(
        "/v1/ledger/equivocations",
        "The equivocation proofs this node holds",
        &[Content::Json(schema::<Vec<EquivocationRecord>>)],
    ),
    Route {
        query: Some(inline::<AuditQuery>),
        ..get(
            "/v1/ledger/audit",
            "Audit a peer's ledger against this one",
            &[Content::Json(schema::<AuditReport>)],
        )
    },
    get(
        "/v1/balances",
        "Net credits per peer, from the settlements in this node's ledger",
        &[Content::Json(schema::<Vec<Balance>>)],
    ),
    get(
        "/v1/tokens",
        "API tokens and their spending (a token sees only itself)",
        &[Content::Json(schema::<Vec<TokenView>>)],
    ),
    get(
        "/v1/sessions",
        "Standing contracts (model sessions) open here, either side",
        &[Content::Json(schema::<Vec<SessionView>>)],
    ),
    Route {
        errors: Errors::OpenAi,
        ..get(
            "/v1/models",
            "The models the mesh offers (OpenAI's shape, with a `suanli` object per model)",
            &[Content::Json(schema::<ModelList>)],
        )
    },
    Route {
        verb: Verb::Post,
        body: Some(schema::<ChatCompletionRequest>),
        answer: "The completion (with a `suanli` object: provider, contract, cost), or with \
                 `stream: true` server-sent events of chunks ending with `data: [DONE]`.",
        errors: Errors::OpenAi,
        ..get(
            "/v1/chat/completions",
            "An OpenAI chat completion, routed to a provider of the mesh",
            &[
                Content::Json(schema::<ChatCompletion>),
                Content::Events(schema::<ChatCompletionChunk>),
            ],
        )
    },
    Route {
        verb: Verb::Post,
        body: Some(schema::<CompletionRequest>),
        answer: "The completion (with a `suanli` object: provider, contract, cost), or with \
                 `stream: true` server-sent events of chunks ending with `data: [DONE]`.",
        errors: Errors::OpenAi,
        ..get(
            "/v1/completions",
            "An OpenAI text completion, routed to a provider of the mesh",
            &[
                Content::Json(schema::<TextCompletion>),
                Content::Events(schema::<TextCompletionChunk>),
            ],
        )
    },
];

/// `GET /v1/openapi.json`.
pub async fn serve() -> impl IntoResponse {
    static TEXT: OnceLock<String> = OnceLock::new();
    let text = TEXT.get_or_init(|| document().to_string());
    ([(header::CONTENT_TYPE, "application/json")], text.as_str())
}

/// A generator of schemas into `components.schemas`.
fn generator(settings: SchemaSettings) -> SchemaGenerator {
    settings
        .with(|settings| {
            settings.definitions_path = "/components/schemas".into();
            settings.meta_schema = None;
        })
        .with_transform(string_enum)
        .into_generator()
}

/// Writes an enum of strings that schemars gives as a `oneOf` (its values have docs, or one is
/// serde's `other`) as one `enum`, as client generators expect; the values' docs go into its
/// description.
fn string_enum(schema: &mut Schema) {
    let Some(options) = schema.get("oneOf").and_then(Value::as_array) else {
        return;
    };
    let mut values = Vec::new();
    let mut notes = Vec::new();
    for option in options {
        let Some(option) = option.as_object() else {
            return;
        };
        let these = match (option.get("const"), option.get("enum")) {
            (Some(value), None) => vec![value.clone()],
            (None, Some(Value::Array(values))) => values.clone(),
            _ => return,
        };
        let plain = option
            .keys()
            .all(|key| matches!(key.as_str(), "type" | "const" | "enum" | "description"));
        if option.get("type") != Some(&json!("string")) || !plain {
            return;
        }
        if let (Some(Value::String(note)), [value]) = (option.get("description"), &these[..]) {
            let value = value.as_str().unwrap_or_default();
            notes.push(format!("- `{value}`: {}", note.replace('\n', " ")));
        }
        values.extend(these);
    }
    let Some(object) = schema.as_object_mut() else {
        return;
    };
    object.remove("oneOf");
    object.insert("type".into(), "string".into());
    object.insert("enum".into(), values.into());
    if !notes.is_empty() {
        let mut description = object
            .get("description")
            .and_then(Value::as_str)
            .map(|text| format!("{text}\n\n"))
            .unwrap_or_default();
        description.push_str(&notes.join("\n"));
        object.insert("description".into(), description.into());
    }
}

/// The OpenAPI document of [`ROUTES`].
pub fn document() -> Value {
    // Answers as the node writes them; bodies and query strings as it reads them.
    let mut answers = generator(SchemaSettings::draft2020_12().for_serialize());
    let mut requests = generator(SchemaSettings::draft2020_12().for_deserialize());
    let mut paths = Map::new();
    for route in ROUTES {
        let operation = operation(route, &mut answers, &mut requests);
        let item = paths
            .entry(route.path)
            .or_insert_with(|| Value::Object(Map::new()));
        item[route.verb.method().as_str().to_ascii_lowercase()] = operation;
    }
    let mut schemas = answers.take_definitions(true);
    for (name, schema) in requests.take_definitions(true) {
        // A type both read and written (`ExecutorName`) has one schema either way: checked by
        // the tests, which build this document.
        let written = schemas.entry(name).or_insert_with(|| schema.clone());
        debug_assert_eq!(*written, schema, "read and written differently");
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "suanli node API",
            "version": env!("CARGO_PKG_VERSION"),
            "summary": "The HTTP API every suanli node serves (docs/api.md).",
            "description": "Generated from the Rust types the handlers serialize and read \
                (`suanli_node::api::types`). Ids and hashes travel as text: 64 hex digits, node \
                ids as `12D3KooW…`. Every error has the body `ErrorBody` and a status its \
                `error.code` determines, except that the OpenAI-compatible routes answer their \
                own errors in OpenAI's shape.",
            "license": {
                "name": env!("CARGO_PKG_LICENSE"),
                "identifier": env!("CARGO_PKG_LICENSE"),
            },
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API token of `suanli token create` (`suanli_…`). Over \
                        loopback, a request without one acts as the node's operator while \
                        `api.local_without_token` is true (the default), unless a browser \
                        marked it as another site's. Public routes take a token too; an \
                        unknown, revoked or expired one is a 401 everywhere.",
                },
            },
        },
    })
}

fn operation(
    route: &Route,
    answers: &mut SchemaGenerator,
    requests: &mut SchemaGenerator,
) -> Value {
    let mut parameters = path_parameters(route.path);
    if let Some(query) = route.query {
        parameters.extend(query_parameters(query(requests)));
    }
    let mut content = Map::new();
    for kind in route.content {
        let (media, item) = match kind {
            Content::Json(schema) => ("application/json", json!({"schema": schema(answers)})),
            Content::Events(data) => (
                "text/event-stream",
                json!({"schema": {"type": "string"}, "x-event-data": data(answers)}),
            ),
            Content::Text(media) => (*media, json!({"schema": {"type": "string"}})),
            Content::Bytes => ("application/octet-stream", json!({})),
        };
        content.insert(media.to_owned(), item);
    }
    let error = match route.errors {
        Errors::Api => json!({
            "description": "An error; `error.code` says which (docs/api.md).",
            "content": {"application/json": {"schema": answers.subschema_for::<ErrorBody>()}},
        }),
        Errors::OpenAi => json!({
            "description": "An error: the handler's in OpenAI's shape; the access guard's \
                refusals (401, 403, 414, 429, 431) in the API's (`ErrorBody`).",
            "content": {"application/json": {"schema": {"anyOf": [
                answers.subschema_for::<crate::openai::ErrorBody<'static>>(),
                answers.subschema_for::<ErrorBody>(),
            ]}}},
        }),
    };
    let security = if crate::auth::guard::needs_token(&route.verb.method(), route.path) {
        json!([{"bearer": []}])
    } else {
        // Public: a token is taken, never needed.
        json!([{}, {"bearer": []}])
    };
    let mut responses = Map::new();
    responses.insert(
        route.status.to_string(),
        json!({"description": route.answer, "content": content}),
    );
    responses.insert("4XX".into(), error.clone());
    responses.insert("5XX".into(), error);
    let mut operation = json!({
        "operationId": operation_id(route),
        "summary": route.summary,
        "security": security,
        "responses": responses,
    });
    if !parameters.is_empty() {
        operation["parameters"] = Value::Array(parameters);
    }
    if let Some(body) = route.body {
        operation["requestBody"] = json!({
            "required": true,
            "content": {"application/json": {"schema": body(requests)}},
        });
    }
    operation
}

/// `get_v1_jobs_id_events` for `GET /v1/jobs/{id}/events`.
fn operation_id(route: &Route) -> String {
    let mut id = route.verb.method().as_str().to_ascii_lowercase();
    for word in route.path.split(|c: char| !c.is_ascii_alphanumeric()) {
        if !word.is_empty() {
            id.push('_');
            id.push_str(word);
        }
    }
    if route.path == "/" {
        id.push_str("_console");
    }
    id
}

/// The `{name}` segments of a path.
fn path_parameters(path: &str) -> Vec<Value> {
    path.split('/')
        .filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}'))
        .map(|name| {
            let (schema, description) = match name {
                "index" => (
                    json!({"type": "integer", "format": "uint64", "minimum": 0}),
                    "The entry's index in the ledger, from 0.",
                ),
                _ => (json!({"type": "string"}), "The job's id (64 hex digits)."),
            };
            json!({
                "name": name,
                "in": "path",
                "required": true,
                "description": description,
                "schema": schema,
            })
        })
        .collect()
}

/// One `in: query` parameter per property of a query type's schema.
fn query_parameters(schema: Schema) -> Vec<Value> {
    let schema = schema.to_value();
    let required = schema["required"].as_array().cloned().unwrap_or_default();
    let Some(properties) = schema["properties"].as_object() else {
        return Vec::new();
    };
    properties
        .iter()
        .map(|(name, property)| {
            let mut property = property.clone();
            let description = property
                .as_object_mut()
                .and_then(|property| property.remove("description"));
            not_null(&mut property);
            let mut parameter = json!({
                "name": name,
                "in": "query",
                "required": required.contains(&Value::from(name.as_str())),
                "schema": property,
            });
            if let Some(description) = description {
                parameter["description"] = description;
            }
            parameter
        })
        .collect()
}

/// Drops `null` from a parameter's schema: a query string can leave a field out, not send null.
fn not_null(schema: &mut Value) {
    let Some(object) = schema.as_object_mut() else {
        return;
    };
    if let Some(Value::Array(types)) = object.get_mut("type") {
        types.retain(|kind| kind != "null");
        if let [only] = types.as_slice() {
            let only = only.clone();
            object.insert("type".into(), only);
        }
    }
    if let Some(Value::Array(any_of)) = object.get_mut("anyOf") {
        any_of.retain(|option| option.get("type").is_none_or(|kind| kind != "null"));
        if let [only] = any_of.as_slice() {
            let only = only.clone();
            object.remove("anyOf");
            if let Value::Object(only) = only {
                object.extend(only);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// The `(METHOD, path)` of every `.route(PATH, get(…).post(…))` in the router's sources.
    fn registered() -> BTreeSet<(String, String)> {
        let sources = [
            include_str!("mod.rs"),
            include_str!("ledger.rs"),
            include_str!("openai.rs"),
            include_str!("console.rs"),
        ];
        // The router is these files' routes and nothing merged from elsewhere.
        let merged: Vec<&str> = include_str!("mod.rs")
            .split(".merge(")
            .skip(1)
            .map(|rest| rest.split(')').next().unwrap_or_default())
            .collect();
        assert_eq!(
            merged,
            ["console::routes(", "ledger::routes(", "openai::routes("]
        );
        let mut routes = BTreeSet::new();
        for source in sources {
            for rest in source.split(".route(").skip(1) {
                // The call's text, up to its closing parenthesis.
                let mut depth = 1;
                let end = rest
                    .char_indices()
                    .find(|&(_, c)| {
                        depth += match c {
                            '(' => 1,
                            ')' => -1,
                            _ => 0,
                        };
                        depth == 0
                    })
                    .map(|(end, _)| end)
                    .expect("a closed .route( call");
                let call = &rest[..end];
                let (path, handlers) = call.split_once(',').expect("path, handlers");
                let path = path.trim();
                let path = match path.strip_prefix("PATHS[") {
                    Some(index) => {
                        let index: usize = index.trim_end_matches(']').parse().expect("index");
                        super::super::CONSOLE_PATHS[index].to_owned()
                    }
                    None => path.trim_matches('"').to_owned(),
                };
                let mut found = false;
                for (name, method) in [
                    ("get(", "GET"),
                    ("post(", "POST"),
                    ("put(", "PUT"),
                    ("patch(", "PATCH"),
                    ("delete(", "DELETE"),
                ] {
                    for (at, _) in handlers.match_indices(name) {
                        let before = handlers[..at].chars().next_back();
                        if before.is_none_or(|c| !(c.is_alphanumeric() || c == '_')) {
                            routes.insert((method.to_owned(), path.clone()));
                            found = true;
                        }
                    }
                }
                assert!(found, "no method in .route({call})");
            }
        }
        routes
    }

    #[test]
    fn every_registered_route_is_documented_and_every_documented_one_registered() {
        let registered = registered();
        assert!(registered.len() >= 28, "{registered:?}");
        assert!(registered.contains(&("DELETE".into(), "/v1/jobs/{id}".into())));
        let documented: BTreeSet<(String, String)> = ROUTES
            .iter()
            .map(|route| (route.verb.method().to_string(), route.path.to_owned()))
            .collect();
        assert_eq!(documented.len(), ROUTES.len(), "a route is listed twice");
        let missing: Vec<_> = registered.difference(&documented).collect();
        assert!(
            missing.is_empty(),
            "routes without a row in ROUTES: {missing:?}"
        );
        let extra: Vec<_> = documented.difference(&registered).collect();
        assert!(
            extra.is_empty(),
            "rows of ROUTES no router registers: {extra:?}"
        );
    }

    /// Every `$ref` of `value`.
    fn refs<'a>(value: &'a Value, found: &mut Vec<&'a str>) {
        match value {
            Value::Object(object) => {
                if let Some(Value::String(target)) = object.get("$ref") {
                    found.push(target);
                }
                object.values().for_each(|value| refs(value, found));
            }
            Value::Array(values) => values.iter().for_each(|value| refs(value, found)),
            _ => {}
        }
    }

    #[test]
    fn the_document_describes_every_route_with_schemas_of_the_types() {
        let document = document();
        let schemas = document["components"]["schemas"]
            .as_object()
            .expect("schemas");
        let mut targets = Vec::new();
        refs(&document, &mut targets);
        for target in &targets {
            let name = target
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("{target}"));
            assert!(schemas.contains_key(name), "{target} resolves to nothing");
        }
        let mut ids = BTreeSet::new();
        for route in ROUTES {
            let method = route.verb.method().as_str().to_ascii_lowercase();
            let operation = &document["paths"][route.path][method];
            assert!(operation.is_object(), "{:?} {}", route.verb, route.path);
            assert!(ids.insert(operation["operationId"].as_str().expect("id")));
        }
        assert_eq!(
            document["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
                ["$ref"],
            "#/components/schemas/SubmitRequest"
        );
        // Ids travel as text; enums as their snake_case names, `unknown` included.
        let job = &schemas["JobView"];
        assert_eq!(job["properties"]["job_id"]["type"], "string");
        assert_eq!(
            job["properties"]["state"]["$ref"],
            "#/components/schemas/JobState"
        );
        assert_eq!(
            schemas["JobState"]["enum"],
            json!(["queued", "negotiating", "running", "succeeded", "failed"])
        );
        assert_eq!(schemas["ApiErrorCode"]["type"], "string");
        let codes = schemas["ApiErrorCode"]["enum"].as_array().expect("codes");
        assert_eq!(codes[0], "not_found");
        assert_eq!(codes.last(), Some(&json!("unknown")));
        assert!(
            schemas["ApiErrorCode"]["description"]
                .as_str()
                .is_some_and(|text| text.contains("\n- `not_found`: 404: no such route"))
        );
        assert_eq!(
            schemas["ExecutorName"]["enum"],
            json!(["wasm", "llm", "slurm", "batch", "unknown"])
        );
        // Query strings become parameters, required where the type requires them.
        let inclusion = &document["paths"]["/v1/ledger/proof/inclusion"]["get"]["parameters"];
        assert_eq!(
            inclusion,
            &json!([
                {"name": "index", "in": "query", "required": true,
                 "schema": {"type": "integer", "format": "uint64", "minimum": 0}},
                {"name": "size", "in": "query", "required": false,
                 "description": "Tree size; the durable head's when absent.",
                 "schema": {"type": "integer", "format": "uint64", "minimum": 0}},
            ])
        );
        // The public reads say so; the rest need a token.
        assert_eq!(
            document["paths"]["/v1/openapi.json"]["get"]["security"],
            json!([{}, {"bearer": []}])
        );
        assert_eq!(
            document["paths"]["/v1/balances"]["get"]["security"],
            json!([{"bearer": []}])
        );
    }
}
