//! Prometheus `/metrics`: on each scrape, control asks every dataplane for
//! its status and game servers, reads the XDP filter's counters, and writes
//! all of it with its own API call counts in the classic text format (the
//! `prometheus` crate's encoder; `promtool check metrics` accepts it).
//!
//! Names: `portcullis_` prefix, `_total` counters, base units (seconds,
//! bytes). Refusals and drops of the core are one family,
//! `portcullis_refusals_total{link, reason}`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use portcullis_proto::pb::admin as pb;
use prometheus::proto::{Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType};

use crate::admin::Control;

/// IO counters that are levels, not counts.
const IO_GAUGES: &[&str] = &["stack_connections", "stack_shards", "stack_buffers_backed"];

#[derive(Default)]
struct Families(BTreeMap<String, MetricFamily>);

enum Value<'a> {
    Counter(u64),
    Gauge(f64),
    Histogram(&'a pb::Histogram),
}

impl Families {
    fn add(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: Value<'_>) {
        let family = self.0.entry(name.to_string()).or_insert_with(|| {
            let mut f = MetricFamily::default();
            f.set_name(name.to_string());
            f.set_help(help.to_string());
            f.set_field_type(match value {
                Value::Counter(_) => MetricType::COUNTER,
                Value::Gauge(_) => MetricType::GAUGE,
                Value::Histogram(_) => MetricType::HISTOGRAM,
            });
            f
        });
        let mut m = Metric::default();
        m.set_label(
            labels
                .iter()
                .map(|(k, v)| {
                    let mut l = LabelPair::default();
                    l.set_name(k.to_string());
                    l.set_value(v.to_string());
                    l
                })
                .collect(),
        );
        match value {
            Value::Counter(n) => {
                let mut c = Counter::default();
                c.set_value(n as f64);
                m.set_counter(c);
            }
            Value::Gauge(v) => {
                let mut g = Gauge::default();
                g.set_value(v);
                m.set_gauge(g);
            }
            Value::Histogram(h) => {
                let mut out = Histogram::default();
                out.set_sample_count(h.count);
                out.set_sample_sum(h.sum_seconds);
                out.set_bucket(
                    h.bounds_seconds
                        .iter()
                        .zip(&h.counts)
                        .map(|(&le, &n)| {
                            let mut b = Bucket::default();
                            b.set_upper_bound(le);
                            b.set_cumulative_count(n);
                            b
                        })
                        .collect(),
                );
                m.set_histogram(out);
            }
        }
        family.mut_metric().push(m);
    }
}

/// Sums histograms of the same name and label (over workers).
fn merge(into: &mut BTreeMap<(String, String), pb::Histogram>, h: &pb::Histogram) {
    let e = into.entry((h.name.clone(), h.label.clone())).or_insert_with(|| pb::Histogram {
        counts: vec![0; h.counts.len()],
        count: 0,
        sum_seconds: 0.0,
        ..h.clone()
    });
    for (a, b) in e.counts.iter_mut().zip(&h.counts) {
        *a += b;
    }
    e.count += h.count;
    e.sum_seconds += h.sum_seconds;
}

/// The text of one scrape.
pub async fn render(control: &Control) -> String {
    let mut f = Families::default();
    let (nodes, down) = control.node_statuses("").await.unwrap_or_default();
    for n in &nodes {
        let node = n.node.as_str();
        f.add(
            "portcullis_node_up",
            "1 if control reaches the dataplane's agent API",
            &[("node", node)],
            Value::Gauge(1.0),
        );
        f.add(
            "portcullis_node_uptime_seconds",
            "Seconds since the dataplane started",
            &[("node", node)],
            Value::Gauge(n.uptime_ms as f64 / 1e3),
        );
        f.add("portcullis_users", "Users logged in", &[("node", node)], Value::Gauge(n.users as f64));
        f.add("portcullis_groups", "Groups with members", &[("node", node)], Value::Gauge(n.groups as f64));
        let mut hist = BTreeMap::new();
        for w in &n.workers {
            let worker = w.worker.to_string();
            let l = [("node", node), ("worker", worker.as_str())];
            for (name, help, v) in [
                ("portcullis_connections", "Client connections open", w.connections),
                ("portcullis_sessions", "Sessions (connected or waiting for RESUME)", w.sessions),
                ("portcullis_links_up", "Game-server links up", w.links_up),
                ("portcullis_requests_in_flight", "Requests awaiting game servers", w.in_flight),
                ("portcullis_output_bytes", "Bytes queued for clients", w.output_bytes),
            ] {
                f.add(name, help, &l, Value::Gauge(v as f64));
            }
            for c in &w.counters {
                if let Some(reason) = c.name.strip_prefix("drop_") {
                    let link = portcullis_core::security::link_of_counter(&c.name).unwrap_or("gateway");
                    let l = [("node", node), ("worker", worker.as_str()), ("link", link), ("reason", reason)];
                    f.add(
                        "portcullis_refusals_total",
                        "Frames, connections and messages refused or dropped, by the check (link) and reason",
                        &l,
                        Value::Counter(c.value),
                    );
                } else {
                    let name = if c.name == "connections" { "connections_accepted" } else { c.name.as_str() };
                    f.add(
                        &format!("portcullis_{name}_total"),
                        &format!("Core counter {}", c.name),
                        &l,
                        Value::Counter(c.value),
                    );
                }
            }
            for c in &w.io {
                if IO_GAUGES.contains(&c.name.as_str()) {
                    f.add(
                        &format!("portcullis_io_{}", c.name),
                        &format!("IO backend level {}", c.name),
                        &l,
                        Value::Gauge(c.value as f64),
                    );
                } else {
                    f.add(
                        &format!("portcullis_io_{}_total", c.name),
                        &format!("IO backend counter {}", c.name),
                        &l,
                        Value::Counter(c.value),
                    );
                }
            }
            for h in &w.latencies {
                merge(&mut hist, h);
            }
        }
        for ((name, label), h) in &hist {
            match name.as_str() {
                "backend_request" => f.add(
                    "portcullis_backend_request_duration_seconds",
                    "Game-server round trip: request sent to reply received",
                    &[("node", node), ("service", label)],
                    Value::Histogram(h),
                ),
                _ => f.add(
                    "portcullis_client_answer_duration_seconds",
                    "A client's business request to its answer (reply or error)",
                    &[("node", node)],
                    Value::Histogram(h),
                ),
            }
        }
    }
    for d in &down {
        f.add(
            "portcullis_node_up",
            "1 if control reaches the dataplane's agent API",
            &[("node", &d.node)],
            Value::Gauge(0.0),
        );
    }
    for (node, list) in control.backends().await {
        for s in &list.services {
            for v in &s.servers {
                let l = [("node", node.as_str()), ("service", s.name.as_str()), ("server", v.addr.as_str())];
                f.add(
                    "portcullis_backend_links_up",
                    "Workers whose link to the game server is up",
                    &l,
                    Value::Gauge(v.links_up.into()),
                );
                f.add(
                    "portcullis_backend_workers",
                    "Workers that link to the game server",
                    &l,
                    Value::Gauge(v.workers.into()),
                );
                f.add(
                    "portcullis_backend_drained",
                    "1 if an operator drained the game server",
                    &l,
                    Value::Gauge(u8::from(v.drained).into()),
                );
                f.add(
                    "portcullis_backend_in_flight",
                    "Requests awaiting the game server",
                    &l,
                    Value::Gauge(v.in_flight as f64),
                );
            }
        }
    }
    let filter = control.filter_state(0);
    f.add(
        "portcullis_xdp_loaded",
        "1 if control reads the XDP filter's maps",
        &[],
        Value::Gauge(u8::from(filter.loaded).into()),
    );
    if filter.loaded {
        for v in &filter.verdicts {
            f.add(
                "portcullis_xdp_packets_total",
                "Packets seen by the XDP filter, by verdict",
                &[("verdict", &v.name)],
                Value::Counter(v.value),
            );
        }
        f.add(
            "portcullis_xdp_blocked_entries",
            "Entries of the XDP blocklist",
            &[],
            Value::Gauge(filter.blocked.len() as f64),
        );
    }
    for (method, outcome, n) in control.calls.snapshot() {
        f.add(
            "portcullis_control_api_calls_total",
            "Admin API calls by method and outcome",
            &[("method", method), ("outcome", outcome)],
            Value::Counter(n),
        );
    }
    let families: Vec<MetricFamily> = f.0.into_values().collect();
    prometheus::TextEncoder::new().encode_to_string(&families).unwrap_or_else(|e| format!("# encoding failed: {e}\n"))
}

/// Serves `/metrics` on `addr` until the process ends.
pub async fn serve(addr: SocketAddr, control: Arc<Control>) -> anyhow::Result<()> {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let control = control.clone();
            async move {
                (
                    [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
                    render(&control).await,
                )
            }
        }),
    );
    let listener =
        tokio::net::TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("metrics.listen = {addr}: {e}"))?;
    tracing::info!("metrics on http://{addr}/metrics");
    axum::serve(listener, app).await?;
    Ok(())
}
