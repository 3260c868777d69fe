//! The admin API's client side, for `portcullisctl` and tests: a channel to
//! control with the operator token on every call (TLS when the URL is
//! `https://`), and the human tables the CLI prints.

use std::path::Path;

use pb::admin_client::AdminClient;
use portcullis_proto::pb::admin as pb;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// A client of the admin API.
pub type Client = AdminClient<InterceptedService<Channel, Bearer>>;

/// Connects to control at `url` (`http://host:port` or `https://…`, then
/// `ca` is the PEM certificate to trust) with `token` (none: calls are
/// refused as unauthenticated).
pub async fn connect(url: &str, token: Option<&str>, ca: Option<&Path>) -> anyhow::Result<Client> {
    let mut endpoint = Endpoint::from_shared(url.to_string()).map_err(|e| anyhow::anyhow!("--control {url}: {e}"))?;
    if url.starts_with("https://") {
        let mut tls = ClientTlsConfig::new();
        if let Some(ca) = ca {
            let pem = std::fs::read(ca).map_err(|e| anyhow::anyhow!("--ca {}: {e}", ca.display()))?;
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        endpoint = endpoint.tls_config(tls)?;
    }
    let channel = endpoint
        .connect_timeout(std::time::Duration::from_secs(3))
        .connect()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach the control plane at {url}: {e}"))?;
    let bearer = match token {
        Some(t) => {
            Some(format!("Bearer {t}").parse().map_err(|_| anyhow::anyhow!("the token is not printable ASCII"))?)
        }
        None => None,
    };
    Ok(AdminClient::with_interceptor(channel, Bearer(bearer)))
}

/// Left-aligned columns, the header first.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  "));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out += &line(r.iter().map(String::as_str).collect());
    }
    out
}

fn counter(list: &[pb::Counter], name: &str) -> u64 {
    list.iter().filter(|c| c.name == name).map(|c| c.value).sum()
}

/// `portcullisctl status`.
pub fn show_status(s: &pb::ClusterStatus) -> String {
    let mut out = String::new();
    let rows: Vec<Vec<String>> = s
        .nodes
        .iter()
        .flat_map(|n| {
            n.workers.iter().map(move |w| {
                vec![
                    n.node.clone(),
                    n.io.clone(),
                    w.worker.to_string(),
                    w.connections.to_string(),
                    w.sessions.to_string(),
                    w.links_up.to_string(),
                    w.in_flight.to_string(),
                    counter(&w.counters, "frames_in").to_string(),
                    counter(&w.counters, "frames_out").to_string(),
                    w.counters.iter().filter(|c| c.name.starts_with("drop_")).map(|c| c.value).sum::<u64>().to_string(),
                ]
            })
        })
        .collect();
    out += &table(
        &["NODE", "IO", "WORKER", "CONNS", "SESSIONS", "LINKS", "IN-FLIGHT", "FRAMES-IN", "FRAMES-OUT", "REFUSED"],
        &rows,
    );
    for n in &s.nodes {
        out += &format!("{}: {} users, {} groups, up {} s\n", n.node, n.users, n.groups, n.uptime_ms / 1000);
        let mut refusals: Vec<(String, u64)> = Vec::new();
        for w in &n.workers {
            for c in w.counters.iter().filter(|c| c.name.starts_with("drop_") && c.value > 0) {
                match refusals.iter_mut().find(|r| r.0 == c.name) {
                    Some(r) => r.1 += c.value,
                    None => refusals.push((c.name.clone(), c.value)),
                }
            }
        }
        if !refusals.is_empty() {
            let list: Vec<String> = refusals.iter().map(|(n, v)| format!("{} {v}", &n[5..])).collect();
            out += &format!("  refused: {}\n", list.join(", "));
        }
    }
    for d in &s.unreachable {
        out += &format!("{}: UNREACHABLE ({})\n", d.node, d.error);
    }
    if let Some(f) = &s.filter {
        out += &show_filter(f);
    }
    out
}

/// `portcullisctl filter status` through control.
pub fn show_filter(f: &pb::FilterState) -> String {
    if !f.loaded {
        return format!("XDP filter: not available ({})\n", f.error);
    }
    let rate = |r: u32, b: u32| if r == 0 { "unlimited".to_string() } else { format!("{r}/s burst {b}") };
    let verdicts: Vec<String> = f.verdicts.iter().map(|v| format!("{} {}", v.name, v.value)).collect();
    let blocked: Vec<String> = f
        .blocked
        .iter()
        .map(|e| match e.expires_in_ms {
            0 => format!("{} (permanent)", e.cidr),
            ms => format!("{} (expires in {}s)", e.cidr, ms.div_ceil(1000)),
        })
        .collect();
    let mut out = format!(
        "XDP filter on {}\n  verdicts: {}\n  rates: udp {}, syn {}\n  gateway ports: {}\n  blocked: {}\n  allowed: {}\n",
        if f.attached.is_empty() { "no interface".to_string() } else { f.attached.join(", ") },
        verdicts.join(", "),
        rate(f.udp_rate, f.udp_burst),
        rate(f.syn_rate, f.syn_burst),
        f.ports.join(" "),
        blocked.join(", "),
        f.allowed.join(", "),
    );
    if !f.feeds.is_empty() {
        let feeds: Vec<String> = f
            .feeds
            .iter()
            .map(|x| format!("{} ({} entries, {} dropped)", x.name, x.entries_v4 + x.entries_v6, x.drops))
            .collect();
        out += &format!("  threat feeds: {}\n", feeds.join(", "));
    }
    if !f.top_sources.is_empty() {
        let top: Vec<String> = f.top_sources.iter().map(|s| format!("{} {}", s.name, s.value)).collect();
        out += &format!("  top rate-limited sources: {}\n", top.join(", "));
    }
    out
}

/// `portcullisctl sessions list`.
pub fn show_sessions(p: &pb::SessionPage) -> String {
    let rows: Vec<Vec<String>> = p
        .sessions
        .iter()
        .map(|s| {
            vec![
                s.session_id.to_string(),
                s.node.clone(),
                s.worker.to_string(),
                s.user_id.clone(),
                s.device_id.clone(),
                if s.connected { s.address.clone() } else { "(detached)".into() },
                s.groups.join(","),
                s.unacked.to_string(),
            ]
        })
        .collect();
    let mut out = table(&["SESSION", "NODE", "WORKER", "USER", "DEVICE", "ADDRESS", "GROUPS", "UNACKED"], &rows);
    if !p.next_page_token.is_empty() {
        out += &format!("more: --page-token {}\n", p.next_page_token);
    }
    out
}

/// `portcullisctl backends list`.
pub fn show_backends(b: &pb::BackendList) -> String {
    let rows: Vec<Vec<String>> = b
        .services
        .iter()
        .flat_map(|s| {
            s.servers.iter().map(move |v| {
                let state = match (v.drained, v.draining) {
                    (true, _) => "drained",
                    (_, true) => "draining",
                    _ => "active",
                };
                vec![
                    s.name.clone(),
                    v.addr.clone(),
                    v.weight.to_string(),
                    v.health.clone(),
                    format!("{}/{}", v.links_up, v.workers),
                    state.into(),
                    v.in_flight.to_string(),
                ]
            })
        })
        .collect();
    table(&["SERVICE", "SERVER", "WEIGHT", "HEALTH", "LINKS", "STATE", "IN-FLIGHT"], &rows)
}

/// One event, one line.
pub fn show_event(e: &pb::Event) -> String {
    let mut parts = vec![format!("#{}", e.seq), e.node.clone(), e.kind.clone()];
    if e.session_id != 0 {
        parts.push(format!("session={}", e.session_id));
    }
    for (k, v) in [("user", &e.user_id), ("address", &e.address), ("detail", &e.detail)] {
        if !v.is_empty() {
            parts.push(format!("{k}={v:?}"));
        }
    }
    parts.join(" ")
}
