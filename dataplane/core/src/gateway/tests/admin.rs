//! Operator commands through the workers' inboxes, the event log, and a new
//! configuration applied to running workers.

use std::sync::{Arc, Mutex};

use super::*;
use crate::admin::{AdminAnswer, AdminOp, AdminReply, EventKind, KickTarget, PushTarget, SessionFilter};
use crate::shard::CrossMsg;

/// Sends `op` to every worker and collects the answers.
fn ask_all(h: &mut Harness, op: impl Fn() -> AdminOp) -> Vec<AdminAnswer> {
    let answers = Arc::new(Mutex::new(Vec::new()));
    let shared = h.cores[0].shared().clone();
    for w in 0..h.cores.len() {
        let answers = answers.clone();
        let reply = AdminReply::new(move |a| answers.lock().unwrap().push(a));
        shared.send(w, CrossMsg::Admin { op: op(), reply }).unwrap();
    }
    h.flush();
    let out = std::mem::take(&mut *answers.lock().unwrap());
    assert_eq!(out.len(), h.cores.len(), "every worker answered");
    out
}

fn listed(answers: Vec<AdminAnswer>) -> Vec<(u64, String)> {
    let mut all: Vec<(u64, String)> = answers
        .into_iter()
        .flat_map(|a| match a {
            AdminAnswer::Sessions(s) => s,
            other => panic!("{other:?}"),
        })
        .map(|s| (s.id, s.user))
        .collect();
    all.sort();
    all
}

#[test]
fn sessions_are_listed_in_pages_and_by_user_group_and_address_on_every_worker() {
    let mut h = Harness::with_workers("", 2);
    let mut conns = Vec::new();
    for i in 0..6 {
        let c = h.connect_from(i % 2, Codec::Protobuf, [10, 0, 0, (i % 3) as u8 + 1]);
        h.login(c, &format!("u{i}"));
        conns.push(c);
    }
    h.send_msg(conns[4], cmd::JOIN_GROUP, 5, &GroupRequest { group: "g".into() });
    let all =
        listed(ask_all(&mut h, || AdminOp::ListSessions { filter: SessionFilter::default(), after: 0, limit: 100 }));
    assert_eq!(all.len(), 6);
    // A page: each worker gives its lowest ids above `after`.
    let after = all[1].0;
    let page = listed(ask_all(&mut h, || AdminOp::ListSessions { filter: SessionFilter::default(), after, limit: 1 }));
    assert_eq!(page.len(), 2, "one per worker");
    assert!(page.iter().all(|(id, _)| *id > after));
    let by = |filter: SessionFilter| move || AdminOp::ListSessions { filter: filter.clone(), after: 0, limit: 100 };
    let u3 = listed(ask_all(&mut h, by(SessionFilter { user: Some("u3".into()), ..Default::default() })));
    assert_eq!(u3.iter().map(|s| s.1.as_str()).collect::<Vec<_>>(), ["u3"]);
    let g = listed(ask_all(&mut h, by(SessionFilter { group: Some("g".into()), ..Default::default() })));
    assert_eq!(g.iter().map(|s| s.1.as_str()).collect::<Vec<_>>(), ["u4"]);
    let from = listed(ask_all(&mut h, by(SessionFilter { address: Some([10, 0, 0, 2].into()), ..Default::default() })));
    let mut users: Vec<&str> = from.iter().map(|s| s.1.as_str()).collect();
    users.sort();
    assert_eq!(users, ["u1", "u4"]);
}

#[test]
fn operator_kicks_and_pushes_reach_sessions_on_any_worker_and_are_logged() {
    let mut h = Harness::with_workers("", 2);
    let a = h.connect_on(0, Codec::Protobuf);
    let b = h.connect_on(1, Codec::Json);
    h.login(a, "alice");
    h.login(b, "bob");
    h.take(a);
    h.take(b);
    let pushed =
        ask_all(&mut h, || AdminOp::Push { target: PushTarget::All, cmd: 1500, payload: Arc::from(&b"notice"[..]) });
    assert_eq!(pushed.iter().map(|a| if let AdminAnswer::Count(n) = a { *n } else { 0 }).sum::<usize>(), 2);
    for c in [a, b] {
        let frames = h.take(c);
        assert_eq!((frames[0].cmd, frames[0].flags, &*frames[0].payload), (1500, flags::PUSH, &b"notice"[..]));
    }
    let kicked = ask_all(&mut h, || AdminOp::Kick {
        target: KickTarget::User("bob".into()),
        reason: "cheating".into(),
        reconnect: true,
    });
    assert!(kicked.contains(&AdminAnswer::Count(1)));
    let frames = h.take(b);
    let kick: Kick = h.form(b).decode(&frames[0].payload).unwrap();
    assert_eq!((frames[0].cmd, kick.reason.as_str(), kick.reconnect), (cmd::KICK, "cheating", true));
    assert!(h.closed.contains(&b));
    let log = h.cores[0].shared().events().after(0, 100);
    let kinds: Vec<(EventKind, &str)> = log.iter().map(|e| (e.kind, e.user.as_str())).collect();
    assert!(kinds.contains(&(EventKind::Login, "alice")) && kinds.contains(&(EventKind::Login, "bob")));
    let kick = log.iter().find(|e| e.kind == EventKind::Kick).unwrap();
    assert_eq!((kick.user.as_str(), kick.detail.as_str(), kick.worker), ("bob", "cheating", 1));
    assert!(log.iter().any(|e| e.kind == EventKind::Logout && e.user == "bob"), "{log:?}");
}

#[test]
fn a_new_config_keeps_the_links_of_servers_that_stay_and_retires_the_others() {
    let mut h = Harness::new("");
    h.links_up();
    let c = h.connect(Codec::Protobuf);
    h.login(c, "alice");
    let base = config("");
    let text = |servers: &str, rate: u32| {
        base.to_toml_redacted()
            .replace("<hidden>", SECRET)
            .replace("servers = [\"127.0.0.1:9000\", \"127.0.0.1:9001\"]", servers)
            .replace(&format!("session_rate = {}", base.limits.session_rate), &format!("session_rate = {rate}"))
    };
    let new = Config::parse(&text("servers = [\"127.0.0.1:9001\", \"127.0.0.1:9002\"]", 5), "new").unwrap();
    h.cores[0].apply_config(&new);
    h.flush();
    // 9001 kept its link (id 1, still up); 9000 is retired; 9002 connects.
    let views = h.cores[0].link_views();
    let addrs: Vec<String> = views.iter().map(|v| v.addr.to_string()).collect();
    assert_eq!(addrs, ["127.0.0.1:9001", "127.0.0.1:9002"]);
    assert!(views[0].up && !views[1].up);
    assert_eq!(h.cores[0].links[0].state, LinkState::Retired);
    assert_eq!(h.connects, [(0, 2)], "only the new server is connected");
    assert_eq!(h.cores[0].router.services()[0].links, [1, 2]);
    // Requests go to the servers of the new config only.
    for seq in 10..14 {
        h.send(c, &Envelope::new(1000, seq, 0, b"x"));
    }
    assert!(h.link_frames(0).is_empty(), "nothing to the removed server");
    assert_eq!(h.link_frames(1).iter().filter(|k| matches!(k, Kind::Request(_))).count(), 4);
    // The limits changed too: 5 frames/s now.
    assert_eq!(h.cores[0].limits.session_rate.0, 5);
    // Put back, the old server gets its old link id again.
    let back = Config::parse(&text("servers = [\"127.0.0.1:9000\", \"127.0.0.1:9001\"]", 50), "back").unwrap();
    h.cores[0].apply_config(&back);
    h.flush();
    assert_eq!(h.cores[0].router.services()[0].links, [0, 1]);
    assert_eq!(h.cores[0].links[2].state, LinkState::Retired);
    assert!(h.connects.contains(&(0, 0)));
}

#[test]
fn config_changes_say_what_applies_live_and_limit_errors_name_the_key() {
    let old = config("");
    let mut new_text = old.to_toml_redacted().replace("<hidden>", SECRET);
    new_text = new_text
        .replace(&format!("ip_rate = {}", old.limits.ip_rate), "ip_rate = 10")
        .replace(&format!("workers = {}", old.gateway.workers), "workers = 3");
    let new = Config::parse(&new_text, "new").unwrap();
    let (live, restart) = old.changes(&new);
    assert_eq!(live, ["limits.ip_rate"]);
    assert_eq!(restart, ["gateway.workers"]);
    let mut effective = new.clone();
    effective.keep_restart_keys(&old);
    assert_eq!((effective.gateway.workers, effective.limits.ip_rate), (old.gateway.workers, 10));

    let changed = old.with_limits([("session_rate", "7"), ("pair_burst", "9")]).unwrap();
    assert_eq!((changed.limits.session_rate, changed.limits.pair_burst), (7, 9));
    let err = old.with_limits([("session_rate", "-1")]).unwrap_err().to_string();
    assert!(err.contains("limits.session_rate"), "{err}");
    let err = old.with_limits([("no_such", "1")]).unwrap_err().to_string();
    assert!(err.contains("limits.no_such") && err.contains("no such limit"), "{err}");
    let err = old.with_limits([("ip_rate", "ten")]).unwrap_err().to_string();
    assert!(err.contains("limits.ip_rate"), "{err}");
}

#[test]
fn a_drained_server_keeps_the_sessions_it_has_and_gets_no_new_ones() {
    let mut h = Harness::new("");
    h.links_up();
    let old = h.connect(Codec::Protobuf);
    h.login(old, "old");
    for seq in 10..12 {
        h.send(old, &Envelope::new(1000, seq, 0, b"x")); // round robin: one request to each server
    }
    let addr: SocketAddr = "127.0.0.1:9000".parse().unwrap();
    ask_all(&mut h, || AdminOp::Drain { addr, drained: true });
    h.link_sent.clear();
    let new = h.connect(Codec::Protobuf);
    h.login(new, "new");
    for seq in 10..16 {
        h.send(new, &Envelope::new(1000, seq, 0, b"x"));
        h.send(old, &Envelope::new(1000, seq + 10, 0, b"x"));
    }
    let to_drained: Vec<u64> = h
        .link_frames(0)
        .into_iter()
        .filter_map(|k| if let Kind::Request(r) = k { Some(r.session_id) } else { None })
        .collect();
    let old_id = h.cores[0].session_of(old).unwrap();
    assert!(!to_drained.is_empty() && to_drained.iter().all(|s| *s == old_id), "{to_drained:?}");
    assert!(h.cores[0].link_views()[0].drained);
    ask_all(&mut h, || AdminOp::Drain { addr, drained: false });
    assert!(!h.cores[0].link_views()[0].drained);
    let drains: Vec<EventKind> = h.cores[0].shared().events().after(0, 100).iter().map(|e| e.kind).collect();
    assert!(drains.contains(&EventKind::BackendDrain) && drains.contains(&EventKind::BackendUndrain));
}
