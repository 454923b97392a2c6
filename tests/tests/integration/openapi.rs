//! `GET /v1/openapi.json` of a real node: public, a valid OpenAPI 3.1 document by
//! `openapi-spec-validator` (pinned by `scripts/setup-python.sh`), and saying what clients rely
//! on: every route of the table it is built from, `POST /v1/jobs`'s body, `JobView`'s fields.

use std::time::Duration;

use serde_json::{Value, json};
use suanli_node::api::openapi::ROUTES;
use suanli_tests::models::python;
use suanli_tests::process::RunningNode;
use tempfile::TempDir;

#[test]
fn the_node_serves_a_valid_openapi_document_of_its_routes() {
    let dir = TempDir::new().expect("tempdir");
    let node = RunningNode::start(dir.path(), &[], Duration::from_secs(60));
    let url = format!("{}/v1/openapi.json", node.api);
    let response = reqwest::blocking::get(&url).expect("GET /v1/openapi.json");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let text = response.text().expect("body");
    let document: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(document["openapi"], "3.1.0");
    assert_eq!(document["info"]["version"], env!("CARGO_PKG_VERSION"));

    for route in ROUTES {
        let method = route.verb.method().as_str().to_ascii_lowercase();
        assert!(
            document["paths"][route.path][&method].is_object(),
            "{method} {} is not in the document",
            route.path
        );
    }
    let schemas = &document["components"]["schemas"];
    let submit = &document["paths"]["/v1/jobs"]["post"];
    assert_eq!(
        submit["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/SubmitRequest"
    );
    assert!(schemas["SubmitRequest"]["properties"]["module_wat"].is_object());
    assert_eq!(
        submit["responses"]["202"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/SubmitResponse"
    );
    let job = &schemas["JobView"];
    assert_eq!(job["properties"]["job_id"]["type"], "string");
    let state = job["properties"]["state"]["$ref"]
        .as_str()
        .and_then(|target| target.strip_prefix("#/components/schemas/"))
        .expect("state names a schema");
    assert_eq!(
        schemas[state]["enum"],
        json!(["queued", "negotiating", "running", "succeeded", "failed"])
    );
    let required = job["required"].as_array().expect("required");
    assert!(required.contains(&json!("job_id")) && required.contains(&json!("state")));

    // The validator reads a file; its output is kept for the log.
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, &text).expect("write the document");
    let output = python()
        .args(["-m", "openapi_spec_validator", "--schema", "3.1"])
        .args(["--validation-errors", "all"])
        .arg(&file)
        .output()
        .expect("run python3 -m openapi_spec_validator");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "the validator refused it:\n{said}");
    assert!(said.contains("OK"), "{said}");
}
