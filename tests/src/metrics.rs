//! A node's `/metrics`, read with Prometheus's own OpenMetrics parser
//! (`tests/python/parse_metrics.py`, through the pinned `prometheus-client`).

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use crate::models::python;

/// Every sample of `api`'s `/metrics`, as `name{label="value",…}` → value (labels sorted).
pub fn scrape(api: &str) -> BTreeMap<String, f64> {
    let output = python()
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("python/parse_metrics.py"))
        .arg(format!("{api}/metrics"))
        .output()
        .expect("run parse_metrics.py");
    assert!(
        output.status.success(),
        "/metrics does not parse: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| {
            let sample: Value = serde_json::from_str(line).expect("a JSON sample");
            let labels: BTreeMap<String, String> =
                serde_json::from_value(sample["labels"].clone()).expect("labels");
            let labels: Vec<String> = labels
                .iter()
                .map(|(key, value)| format!("{key}=\"{value}\""))
                .collect();
            let name = sample["name"].as_str().expect("name");
            let key = if labels.is_empty() {
                name.to_owned()
            } else {
                format!("{name}{{{}}}", labels.join(","))
            };
            (key, sample["value"].as_f64().expect("value"))
        })
        .collect()
}

pub fn value(samples: &BTreeMap<String, f64>, key: &str) -> f64 {
    samples.get(key).copied().unwrap_or(0.0)
}
