//! The Grafana dashboard parses, every PromQL expression in it names only metrics the node exports
//! (`dmutex::obs::metrics::METRICS`), every data source is a dashboard variable (`${datasource}` of type
//! prometheus, `${jaeger}` of type jaeger) rather than a hard-coded uid, and the traces follow the `$service`
//! variable (`OTEL_SERVICE_NAME`). `tests/dashboard_prometheus.rs` runs every expression on a real Prometheus.

use dmutex::obs::metrics::METRICS;
use serde_json::Value;
use std::collections::BTreeSet;

const DASHBOARD: &str = include_str!("../observability/grafana/dashboards/dmutex.json");

/// Every PromQL string in the dashboard: panel target `expr`s and template variable queries.
fn promql(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr", Value::String(s)) => out.push(s.clone()),
                    ("query", Value::String(s)) if s.contains("dmutex_") => out.push(s.clone()),
                    _ => promql(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| promql(v, out)),
        _ => {}
    }
}

/// The `dmutex_*` identifiers of an expression (metric names; label names never start with `dmutex_`).
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(pos) = expr[i..].find("dmutex_") {
        let start = i + pos;
        let preceded_by_ident =
            start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len()
            && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_' || bytes[end] == b':')
        {
            end += 1;
        }
        if !preceded_by_ident {
            names.push(expr[start..end].to_string());
        }
        i = end;
    }
    names
}

/// The exported metric a series name belongs to: itself, or the histogram behind `_bucket`/`_sum`/`_count`.
fn exported(name: &str) -> bool {
    let known = |n: &str, histogram_only: bool| {
        METRICS.iter().any(|(m, kind, _)| *m == n && (!histogram_only || *kind == "histogram"))
    };
    known(name, false)
        || ["_bucket", "_sum", "_count"]
            .iter()
            .any(|s| name.strip_suffix(s).is_some_and(|base| known(base, true)))
}

fn dashboard() -> Value {
    match serde_json::from_str(DASHBOARD) {
        Ok(v) => v,
        Err(e) => panic!("dmutex.json does not parse: {e}"),
    }
}

#[test]
fn every_promql_expression_names_exported_metrics_only() {
    let mut exprs = Vec::new();
    promql(&dashboard(), &mut exprs);
    assert!(exprs.len() >= 15, "expected the panels' expressions, found {exprs:?}");
    let mut used = BTreeSet::new();
    for e in &exprs {
        let names = metric_names(e);
        assert!(!names.is_empty(), "expression names no dmutex metric: {e}");
        for n in names {
            assert!(exported(&n), "{n} (in {e}) is not in dmutex::obs::metrics::METRICS");
            used.insert(n);
        }
    }
    // The panels the issue asks for.
    for needed in [
        "dmutex_acquire_duration_seconds_bucket",
        "dmutex_grants_total",
        "dmutex_messages_sent_total",
        "dmutex_waiting_requests",
        "dmutex_peer_connected",
        "dmutex_lease_expiries_total",
        "dmutex_refused_connections_total",
        "dmutex_bad_frames_total",
        "dmutex_lamport_clock",
    ] {
        assert!(used.contains(needed), "no panel uses {needed}");
    }
}

#[test]
fn the_checker_itself_rejects_unknown_names() {
    assert_eq!(
        metric_names("sum(rate(dmutex_x_total{a=\"dmutex_y\"}[1m]))"),
        vec!["dmutex_x_total", "dmutex_y"]
    );
    assert!(exported("dmutex_acquire_duration_seconds_bucket"));
    assert!(!exported("dmutex_grants_total_bucket"), "only histograms have buckets");
    assert!(!exported("dmutex_no_such_metric"));
}

/// The dashboard's template variable `name`.
fn variable<'a>(d: &'a Value, name: &str) -> &'a Value {
    let vars = d["templating"]["list"].as_array().expect("templating.list");
    vars.iter().find(|v| v["name"] == name).unwrap_or_else(|| panic!("no variable {name}"))
}

#[test]
fn data_sources_and_the_service_are_dashboard_variables() {
    let d = dashboard();
    for (name, kind) in [("datasource", "prometheus"), ("jaeger", "jaeger")] {
        let v = variable(&d, name);
        assert_eq!(v["type"], "datasource", "{name}");
        assert_eq!(v["query"], kind, "{name} lists the {kind} data sources");
    }
    let service = variable(&d, "service");
    assert_eq!(service["type"], "textbox");
    assert_eq!(service["query"], "dmutex", "the default OTEL_SERVICE_NAME");
    // The query variables ask the chosen Prometheus too.
    for name in ["algorithm", "instance"] {
        assert_eq!(variable(&d, name)["datasource"]["uid"], "${datasource}", "{name}");
    }
    // The Jaeger panel and the Explore link search the chosen service on the chosen Jaeger.
    let panels = d["panels"].as_array().unwrap();
    let traces: Vec<&Value> = panels.iter().filter(|p| p["datasource"]["type"] == "jaeger").collect();
    assert!(!traces.is_empty());
    for p in traces {
        assert_eq!(p["targets"][0]["service"], "$service", "{}", p["title"]);
    }
    let link = d["links"][0]["url"].as_str().unwrap();
    assert!(link.contains("${service}") && link.contains("${jaeger}"), "{link}");
    assert!(!DASHBOARD.contains("\"uid\": \"prometheus\"") && !DASHBOARD.contains("\"uid\": \"jaeger\""));
}

/// Acquire latency is shown for grants and for failures apart: an instant 503 or a whole timeout must not
/// move the percentiles of the grants.
#[test]
fn acquire_latency_separates_grants_from_failures() {
    let mut exprs = Vec::new();
    promql(&dashboard(), &mut exprs);
    let latency: Vec<&String> =
        exprs.iter().filter(|e| e.contains("dmutex_acquire_duration_seconds_bucket")).collect();
    assert!(!latency.is_empty());
    for e in &latency {
        assert!(
            e.contains("outcome=\"granted\"") || e.contains("outcome!=\"granted\""),
            "a latency expression mixes outcomes: {e}"
        );
    }
    assert!(latency.iter().any(|e| e.contains("outcome=\"granted\"")));
    assert!(
        latency
            .iter()
            .any(|e| e.contains("outcome!=\"granted\"") && e.contains("by (le, algorithm, outcome)"))
    );
}

#[test]
fn panels_are_well_formed_and_use_the_data_source_variables() {
    let d = dashboard();
    assert_eq!(d["uid"], "dmutex");
    let Some(panels) = d["panels"].as_array() else { panic!("no panels") };
    let mut ids = BTreeSet::new();
    let mut jaeger = 0;
    for p in panels {
        assert!(ids.insert(p["id"].as_u64()), "duplicate or missing id: {p}");
        for key in ["h", "w", "x", "y"] {
            assert!(p["gridPos"][key].is_u64(), "panel {} lacks gridPos.{key}", p["title"]);
        }
        if p["type"] == "row" {
            continue;
        }
        let uid = p["datasource"]["uid"].as_str();
        assert!(
            matches!(uid, Some("${datasource}") | Some("${jaeger}")),
            "panel {} uses {uid:?}",
            p["title"]
        );
        if uid == Some("${jaeger}") {
            jaeger += 1;
        }
        for t in p["targets"].as_array().into_iter().flatten() {
            assert_eq!(
                t["datasource"]["uid"], p["datasource"]["uid"],
                "target data source of {}",
                p["title"]
            );
        }
    }
    assert!(jaeger >= 1, "a traces panel on the Jaeger data source");
}
