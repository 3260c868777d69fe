//! Tests of the dashboard checker (tests/common/dashboard.rs) on small inline
//! dashboards, and of the shipped config/dashboards/portcullis.json: every
//! expression parses, selects only metrics control documents, filters by
//! `$node` wherever the metric has a node label, and passes
//! `promtool check rules` when promtool is installed (`PROMTOOL` overrides
//! the one on `PATH`). Checking against a live `/metrics` scrape is the
//! end-to-end test's job.

#[path = "common/dashboard.rs"]
mod dashboard;

use dashboard::{
    check_dashboard, check_parses, collect_queries, exposed_names, metric_name, parse_dashboard, promtool_check,
    selectors, substitute_variables, Source,
};
use promql_parser::label::MatchOp;

const SHIPPED: &str = include_str!("../../config/dashboards/portcullis.json");

/// A dashboard with a collapsed row holding a nested panel, a top-level panel,
/// a Loki panel that must be skipped, and the `node` variable.
fn dashboard(nested_expr: &str, top_expr: &str) -> String {
    serde_json::json!({
        "schemaVersion": 39,
        "templating": { "list": [
            { "type": "datasource", "name": "datasource", "query": "prometheus" },
            { "type": "query", "name": "node",
              "datasource": { "type": "prometheus", "uid": "${datasource}" },
              "query": { "query": "label_values(game_node_up{job=\"a\", env=~\"b|c\"}, node)", "refId": "A" } },
            { "type": "query", "name": "label", "query": "label_values(node)" }
        ]},
        "panels": [
            { "type": "row", "title": "Row", "collapsed": true, "panels": [
                { "type": "timeseries", "title": "Nested panel",
                  "datasource": { "type": "prometheus", "uid": "${datasource}" },
                  "targets": [ { "refId": "A", "expr": nested_expr } ] }
            ]},
            { "type": "timeseries", "title": "Top panel",
              "targets": [ { "refId": "B", "expr": top_expr } ] },
            { "type": "logs", "title": "Logs",
              "datasource": { "type": "loki", "uid": "loki" },
              "targets": [ { "refId": "A", "expr": "{app=\"x\"} |= \"error\"" } ] }
        ]
    })
    .to_string()
}

const METRICS: &str = "\
# HELP game_node_up Whether the node is reachable.
# TYPE game_node_up gauge
game_node_up{node=\"a\"} 1
# TYPE game_frames_total counter
game_frames_total{node=\"a\",worker=\"0\"} 12
# TYPE game_latency_seconds histogram
game_latency_seconds_bucket{node=\"a\",le=\"0.1\"} 3
game_latency_seconds_bucket{node=\"a\",le=\"+Inf\"} 4
game_latency_seconds_sum{node=\"a\"} 0.3
game_latency_seconds_count{node=\"a\"} 4
# TYPE game_idle_seconds histogram
";

const GOOD_RATE: &str = "sum by (node) (rate(game_frames_total{node=~\"$node\"}[$__rate_interval]))";
const GOOD_QUANTILE: &str =
    "histogram_quantile(0.99, sum by (le) (rate(game_latency_seconds_bucket{node=~\"${node}\"}[5m])))";

#[test]
fn good_dashboard_passes_and_counts_every_expression() {
    let d = dashboard(GOOD_RATE, GOOD_QUANTILE);
    // Two panel targets and the label_values variable; not the Loki target
    // nor the one-argument label_values.
    assert_eq!(check_dashboard(&d, METRICS), Ok(3));
    assert_eq!(check_parses(&d), Ok(3));
}

#[test]
fn bad_expression_is_reported_with_its_panel_title() {
    let d = dashboard("sum(rate(game_frames_total[5m])", GOOD_QUANTILE);
    let problems = check_dashboard(&d, METRICS).unwrap_err();
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(problems[0].contains("\"Nested panel\""), "{}", problems[0]);
    assert!(problems[0].contains("does not parse"), "{}", problems[0]);
    assert!(problems[0].contains("sum(rate(game_frames_total[5m])"), "{}", problems[0]);
    assert!(check_parses(&d).is_err());
}

#[test]
fn metric_missing_from_the_text_is_reported() {
    let d = dashboard(GOOD_RATE, "game_frames_total / on (node) game_missing_total{node=~\"$node\"}");
    let problems = check_dashboard(&d, METRICS).unwrap_err();
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(problems[0].contains("\"Top panel\""), "{}", problems[0]);
    assert!(problems[0].contains("game_missing_total is not in the metrics text"), "{}", problems[0]);
    // Parsing alone does not look at metrics.
    assert_eq!(check_parses(&d), Ok(3));
}

#[test]
fn histogram_suffixes_need_their_samples_or_a_histogram_family() {
    // game_latency_seconds_count is sampled; game_idle_seconds has only its
    // `# TYPE … histogram` line; game_frames_total is a counter, so
    // game_frames_total_count is not exposed.
    let ok = dashboard(
        "rate(game_latency_seconds_count[5m]) + on () group_left sum(game_latency_seconds_sum)",
        "histogram_quantile(0.5, rate(game_idle_seconds_bucket[5m]))",
    );
    assert_eq!(check_dashboard(&ok, METRICS), Ok(3));
    let bad = dashboard(GOOD_RATE, "rate(game_frames_total_count[5m])");
    let problems = check_dashboard(&bad, METRICS).unwrap_err();
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(problems[0].contains("game_frames_total_count"), "{}", problems[0]);
}

#[test]
fn variable_query_metric_is_checked() {
    let d = dashboard(GOOD_RATE, GOOD_QUANTILE);
    let problems = check_dashboard(&d, &METRICS.replace("game_node_up", "other_up")).unwrap_err();
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(problems[0].starts_with("variable $node"), "{}", problems[0]);
    assert!(problems[0].contains("game_node_up"), "{}", problems[0]);
}

#[test]
fn empty_and_invalid_dashboards_are_problems() {
    assert!(check_dashboard("{ not json", METRICS).unwrap_err()[0].contains("not valid JSON"));
    assert!(check_dashboard("{\"panels\": []}", METRICS).unwrap_err()[0].contains("no Prometheus expression"));
    let problems = check_dashboard(&dashboard("", GOOD_QUANTILE), METRICS).unwrap_err();
    assert!(problems[0].contains("empty expression"), "{problems:#?}");
}

#[test]
fn grafana_variables_are_substituted() {
    assert_eq!(
        substitute_variables(
            "rate(x{a=~\"$node\",b=\"${node}\",c=~\"${node:regex}\",d=\"[[node]]\"}[$__rate_interval])"
        ),
        "rate(x{a=~\"node\",b=\"node\",c=~\"node\",d=\"node\"}[5m])"
    );
    assert_eq!(substitute_variables("x[$__interval] offset $__range"), "x[5m] offset 5m");
    assert_eq!(substitute_variables("x / $__range_s + $__interval_ms"), "x / 300 + 300000");
    // Ranges, subqueries and a lone `$` are left alone.
    assert_eq!(substitute_variables("max_over_time(x[5m:1m]) $ $1"), "max_over_time(x[5m:1m]) $ $1");
}

#[test]
fn exposed_names_reads_samples_and_families() {
    let names = exposed_names(METRICS);
    for name in [
        "game_node_up",
        "game_frames_total",
        "game_latency_seconds",
        "game_latency_seconds_bucket",
        "game_idle_seconds_count",
    ] {
        assert!(names.contains(name), "{name} missing from {names:?}");
    }
    assert!(!names.contains("HELP") && !names.contains("game_frames_total_bucket"));
}

/// The metrics portcullis-control is specified to expose on /metrics, with their
/// label names: a stand-in scrape for checking the shipped dashboard.
const DOCUMENTED: &[(&str, &str, &[&str])] = &[
    ("portcullis_node_up", "gauge", &["node"]),
    ("portcullis_node_uptime_seconds", "gauge", &["node"]),
    ("portcullis_connections", "gauge", &["node", "worker"]),
    ("portcullis_sessions", "gauge", &["node", "worker"]),
    ("portcullis_links_up", "gauge", &["node", "worker"]),
    ("portcullis_requests_in_flight", "gauge", &["node", "worker"]),
    ("portcullis_output_bytes", "gauge", &["node", "worker"]),
    ("portcullis_users", "gauge", &["node"]),
    ("portcullis_groups", "gauge", &["node"]),
    ("portcullis_connections_accepted_total", "counter", &["node", "worker"]),
    ("portcullis_frames_in_total", "counter", &["node", "worker"]),
    ("portcullis_frames_out_total", "counter", &["node", "worker"]),
    ("portcullis_logins_total", "counter", &["node", "worker"]),
    ("portcullis_resumes_total", "counter", &["node", "worker"]),
    ("portcullis_requests_total", "counter", &["node", "worker"]),
    ("portcullis_replies_total", "counter", &["node", "worker"]),
    ("portcullis_pushes_total", "counter", &["node", "worker"]),
    ("portcullis_cross_worker_total", "counter", &["node", "worker"]),
    ("portcullis_sessions_detached_total", "counter", &["node", "worker"]),
    ("portcullis_sessions_expired_total", "counter", &["node", "worker"]),
    ("portcullis_sessions_replaced_total", "counter", &["node", "worker"]),
    ("portcullis_login_timeouts_total", "counter", &["node", "worker"]),
    ("portcullis_slow_consumers_total", "counter", &["node", "worker"]),
    ("portcullis_heartbeat_timeouts_total", "counter", &["node", "worker"]),
    ("portcullis_link_failures_total", "counter", &["node", "worker"]),
    ("portcullis_closed_flooding_total", "counter", &["node", "worker"]),
    ("portcullis_replay_overflows_total", "counter", &["node", "worker"]),
    ("portcullis_refusals_total", "counter", &["node", "worker", "link", "reason"]),
    ("portcullis_escalated_throttles_total", "counter", &["node", "worker"]),
    ("portcullis_escalated_kicks_total", "counter", &["node", "worker"]),
    ("portcullis_escalated_blocks_total", "counter", &["node", "worker"]),
    ("portcullis_io_rx_frames_total", "counter", &["node", "worker"]),
    ("portcullis_io_tx_frames_total", "counter", &["node", "worker"]),
    ("portcullis_io_rx_bytes_total", "counter", &["node", "worker"]),
    ("portcullis_io_tx_bytes_total", "counter", &["node", "worker"]),
    ("portcullis_io_stack_connections", "gauge", &["node", "worker"]),
    ("portcullis_backend_request_duration_seconds", "histogram", &["node", "service"]),
    ("portcullis_client_answer_duration_seconds", "histogram", &["node"]),
    ("portcullis_backend_links_up", "gauge", &["node", "service", "server"]),
    ("portcullis_backend_workers", "gauge", &["node", "service", "server"]),
    ("portcullis_backend_drained", "gauge", &["node", "service", "server"]),
    ("portcullis_backend_in_flight", "gauge", &["node", "service", "server"]),
    ("portcullis_xdp_packets_total", "counter", &["verdict"]),
    ("portcullis_xdp_blocked_entries", "gauge", &[]),
    ("portcullis_control_api_calls_total", "counter", &["method", "outcome"]),
];

#[test]
fn shipped_dashboard_parses() {
    let n = check_parses(SHIPPED).unwrap_or_else(|p| panic!("{}", p.join("\n")));
    println!("{n} expressions parse");
    let queries = collect_queries(&serde_json::from_str(SHIPPED).unwrap());
    assert!(
        queries
            .iter()
            .any(|q| q.source == (Source::Variable { name: "node".into() }) && q.expr == "portcullis_node_up"),
        "the node variable's query was not collected"
    );
    assert!(n >= 40, "only {n} expressions");
}

#[test]
fn shipped_dashboard_uses_only_documented_metrics() {
    let text: String = DOCUMENTED.iter().map(|(name, kind, _)| format!("# TYPE {name} {kind}\n")).collect();
    let n = check_dashboard(SHIPPED, &text).unwrap_or_else(|p| panic!("{}", p.join("\n")));
    // And every documented metric is on the dashboard.
    let used: std::collections::BTreeSet<String> =
        parse_dashboard(SHIPPED).unwrap().iter().flat_map(|(_, e)| dashboard::metric_names(e)).collect();
    let unused: Vec<_> = DOCUMENTED
        .iter()
        .map(|(name, _, _)| *name)
        .filter(|name| {
            !used.iter().any(|u| u.strip_prefix(name).is_some_and(|s| ["", "_bucket", "_sum", "_count"].contains(&s)))
        })
        .collect();
    assert!(unused.is_empty(), "documented but not on the dashboard: {unused:?}");
    println!("{n} expressions use documented metrics only");
}

#[test]
fn shipped_dashboard_filters_by_node() {
    let mut problems = Vec::new();
    for (query, expr) in parse_dashboard(SHIPPED).unwrap() {
        if query.source == (Source::Variable { name: "node".into() }) {
            continue;
        }
        for vs in selectors(&expr) {
            let name = metric_name(vs).unwrap_or_default();
            let base = name.trim_end_matches("_bucket").trim_end_matches("_sum").trim_end_matches("_count");
            let has_node =
                DOCUMENTED.iter().any(|(n, _, labels)| (*n == name || *n == base) && labels.contains(&"node"));
            // `$node` was substituted by its name, `node`.
            let filtered = vs
                .matchers
                .matchers
                .iter()
                .any(|m| m.name == "node" && matches!(m.op, MatchOp::Re(_)) && m.value == "node");
            if has_node != filtered {
                problems.push(format!("{:?}: {name}: has node label {has_node}, filtered {filtered}", query.source));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn promtool_accepts_the_shipped_dashboard_and_rejects_a_bad_one() {
    let Some(result) = promtool_check(SHIPPED) else {
        println!("skipping promtool check: promtool not on PATH (Debian package prometheus; or set PROMTOOL)");
        return;
    };
    let n = result.unwrap_or_else(|p| panic!("{}", p.join("\n")));
    println!("promtool check rules: {n} expressions");
    // The checker can fail: a bad expression (that promql-parser rejects too).
    let bad = dashboard("sum(rate(game_frames_total[5m])", GOOD_QUANTILE);
    let problems = promtool_check(&bad).unwrap().unwrap_err();
    assert!(problems[0].contains("promtool check rules failed"), "{problems:#?}");
    assert!(problems.iter().any(|p| p.contains("Nested panel")), "{problems:#?}");
}
