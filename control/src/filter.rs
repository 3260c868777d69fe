//! The XDP filter as the admin API sees it: read and change the pinned
//! maps through `portcullis-xdp`, as `portcullisctl filter` does locally.

use std::path::Path;
use std::time::Duration;

use portcullis_proto::pb::admin as pb;
use portcullis_xdp::{Cidr, Filter, List, Proto};
use tonic::Status;

fn parse_port(s: &str) -> Result<(Proto, u16), Status> {
    let bad = || Status::invalid_argument(format!("ports: {s:?} is not PROTO:PORT, e.g. tcp:7000"));
    let (proto, port) = s.split_once(':').ok_or_else(bad)?;
    let proto = match proto {
        "tcp" => Proto::Tcp,
        "udp" => Proto::Udp,
        _ => return Err(bad()),
    };
    Ok((proto, port.parse().map_err(|_| bad())?))
}

fn parse_cidrs(cidrs: &[String]) -> Result<Vec<Cidr>, Status> {
    if cidrs.is_empty() {
        return Err(Status::invalid_argument("cidrs: give at least one address or CIDR"));
    }
    cidrs.iter().map(|c| c.parse().map_err(|e| Status::invalid_argument(format!("cidrs: {e}")))).collect()
}

fn failed(e: impl std::fmt::Display) -> Status {
    Status::failed_precondition(format!("XDP filter: {e}"))
}

/// The filter's state; `loaded = false` with the reason if its maps cannot
/// be opened.
pub fn state(pin_dir: &Path, top: usize) -> pb::FilterState {
    match read(pin_dir, top) {
        Ok(s) => s,
        Err(e) => pb::FilterState { loaded: false, error: e.message().into(), ..Default::default() },
    }
}

fn read(pin_dir: &Path, top: usize) -> Result<pb::FilterState, Status> {
    let filter = Filter::at(pin_dir);
    let mut rules = filter.rules().map_err(failed)?;
    rules.purge_expired().map_err(failed)?;
    let r = rules.rates().map_err(failed)?;
    let counter = |name: &str, value: u64| pb::Counter { name: name.into(), value, label: String::new() };
    Ok(pb::FilterState {
        loaded: true,
        error: String::new(),
        attached: filter.attached(),
        verdicts: rules.counters().map_err(failed)?.into_iter().map(|(v, n)| counter(v.name(), n)).collect(),
        udp_rate: r.udp_rate,
        udp_burst: r.udp_burst,
        syn_rate: r.syn_rate,
        syn_burst: r.syn_burst,
        ports: rules
            .ports()
            .map_err(failed)?
            .into_iter()
            .map(|(p, n)| format!("{}:{n}", if p == Proto::Udp { "udp" } else { "tcp" }))
            .collect(),
        blocked: rules
            .blocked()
            .map_err(failed)?
            .into_iter()
            .map(|e| pb::FilterEntry {
                cidr: e.cidr.to_string(),
                expires_in_ms: e.expires_in.map_or(0, |d| d.as_millis().max(1) as u64),
            })
            .collect(),
        allowed: rules.list(List::Allow).map_err(failed)?.iter().map(|c| c.to_string()).collect(),
        top_sources: rules
            .top_sources(top)
            .map_err(failed)?
            .into_iter()
            .map(|s| counter(&s.addr.to_string(), s.dropped))
            .collect(),
        feeds: rules
            .feeds()
            .map_err(failed)?
            .into_iter()
            .map(|f| pb::FeedState {
                name: f.name,
                entries_v4: f.entries_v4,
                entries_v6: f.entries_v6,
                drops: f.drops,
                loaded_unix_ms: f.loaded.duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as u64,
            })
            .collect(),
    })
}

/// Applies a change; returns a description for the event log.
pub fn change(pin_dir: &Path, c: &pb::FilterChange) -> Result<String, Status> {
    use pb::filter_change::Op;
    let mut rules = Filter::at(pin_dir).rules().map_err(failed)?;
    let op = Op::try_from(c.op).unwrap_or(Op::Unspecified);
    match op {
        Op::Block => {
            let ttl = (c.ttl_ms > 0).then(|| Duration::from_millis(c.ttl_ms));
            for cidr in parse_cidrs(&c.cidrs)? {
                rules.block_for(cidr, ttl).map_err(failed)?;
            }
        }
        Op::Unblock | Op::Disallow => {
            let list = if op == Op::Unblock { List::Block } else { List::Allow };
            for cidr in parse_cidrs(&c.cidrs)? {
                rules.remove(list, cidr).map_err(failed)?;
            }
        }
        Op::Allow => {
            for cidr in parse_cidrs(&c.cidrs)? {
                rules.add(List::Allow, cidr).map_err(failed)?;
            }
        }
        Op::SetRates => {
            let mut cfg = rules.rates().map_err(failed)?;
            cfg.udp_rate = c.udp_rate.unwrap_or(cfg.udp_rate);
            cfg.udp_burst = c.udp_burst.unwrap_or(cfg.udp_burst);
            cfg.syn_rate = c.syn_rate.unwrap_or(cfg.syn_rate);
            cfg.syn_burst = c.syn_burst.unwrap_or(cfg.syn_burst);
            rules.set_rates(cfg).map_err(|e| Status::invalid_argument(format!("rates: {e}")))?;
        }
        Op::AddPort | Op::RemovePort => {
            if c.ports.is_empty() {
                return Err(Status::invalid_argument("ports: give at least one PROTO:PORT"));
            }
            for p in &c.ports {
                let (proto, port) = parse_port(p)?;
                if op == Op::AddPort {
                    rules.add_port(proto, port).map_err(failed)?;
                } else {
                    rules.remove_port(proto, port).map_err(failed)?;
                }
            }
        }
        Op::Unspecified => {
            return Err(Status::invalid_argument(
                "op: give block, unblock, allow, disallow, set_rates, add_port or remove_port",
            ))
        }
    }
    let ttl = if op == Op::Block && c.ttl_ms > 0 { format!(" for {} ms", c.ttl_ms) } else { String::new() };
    Ok(format!("{} {}{ttl}", op.as_str_name().to_lowercase(), [c.cidrs.join(" "), c.ports.join(" ")].join(" ").trim()))
}
