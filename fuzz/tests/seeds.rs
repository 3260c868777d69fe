//! The committed seed corpora are what `portcullis_fuzz::seeds` builds, and
//! each runs through its target without a failure.
//!
//! Regenerate them with
//! `PORTCULLIS_WRITE_SEEDS=1 cargo test --manifest-path fuzz/Cargo.toml --test seeds`.
//! (The fuzzers' own finds go to a scratch corpus, see `scripts/fuzz.sh`.)

use std::path::PathBuf;

use portcullis_fuzz::{kcp, netstack, seeds, targets, websocket, xdp};

fn corpus() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus")
}

#[test]
fn committed_seeds_are_current() {
    let write = std::env::var_os("PORTCULLIS_WRITE_SEEDS").is_some();
    for (target, name, bytes) in seeds::all() {
        let path = corpus().join(target).join(&name);
        if write {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &bytes).unwrap();
        } else {
            let committed =
                std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e} (regenerate the seeds)", path.display()));
            assert!(committed == bytes, "{} is stale: regenerate the seeds", path.display());
        }
    }
}

#[test]
fn seeds_pass_their_targets() {
    let mut xdp = None;
    for (target, name, bytes) in seeds::all() {
        eprintln!("{target}/{name}");
        match target {
            "envelope" => targets::envelope(&bytes),
            "link_frame" => targets::link_frame(&bytes),
            "tokens" => targets::tokens(&bytes),
            "config" => {
                targets::config(&bytes);
                let text = std::str::from_utf8(&bytes).unwrap();
                portcullis_core::Config::parse(text, &name).unwrap_or_else(|e| panic!("{name}: {e}"));
            }
            "netstack" => netstack::run(&bytes),
            "kcp" => kcp::run(&bytes),
            "websocket" => {
                websocket::run(&bytes);
            }
            "xdp" => {
                // SAFETY: geteuid has no preconditions.
                if unsafe { libc::geteuid() } == 0 && portcullis_xdp::program().is_ok() {
                    xdp.get_or_insert_with(xdp::Xdp::init).run(&bytes);
                }
            }
            other => panic!("seed for unknown target {other}"),
        }
    }
}

fn seed(target: &str, name: &str) -> Vec<u8> {
    seeds::all().into_iter().find(|(t, n, _)| *t == target && n == name).expect("seed").2
}

#[test]
fn netstack_seeds_reach_the_core_through_tcp() {
    for name in ["tcp4-protobuf-session", "tcp4-protobuf-session-checksums"] {
        let (s, _) = netstack::run_with_stats(&seed("netstack", name));
        assert_eq!((s.connections, s.logins, s.requests), (1, 1, 1), "{name}: {s:?}");
        assert!(s.frames_in >= 6, "{name}: {s:?}");
        assert!(portcullis_fuzz::shared::spare(), "{name}: the shared state is clean after the run");
    }
    let (s, _) = netstack::run_with_stats(&seed("netstack", "tcp6-text-session"));
    assert_eq!((s.connections, s.logins, s.requests), (1, 1, 1), "{s:?}");
    assert!(s.pushes >= 1, "SEND_TO_GROUP with include_self: {s:?}");
    let (s, _) = netstack::run_with_stats(&seed("netstack", "tcp4-two-clients-timeout"));
    assert_eq!((s.connections, s.logins), (2, 1), "{s:?}");
    let (s, n) = netstack::run_with_stats(&seed("netstack", "syn-cookie-session"));
    assert_eq!((n.syn_cookies_sent, n.syn_cookies_accepted), (1, 1), "{n:?}");
    assert_eq!((s.logins, s.requests), (1, 1), "{s:?}");
}

#[test]
fn websocket_seeds_reach_the_core() {
    for codec in portcullis_proto::Codec::ALL {
        let got = websocket::run(&seed("websocket", &format!("{codec}-session")));
        let mut want = Vec::new();
        for env in seeds::client_session() {
            codec.encode(&env, &mut want);
        }
        assert_eq!(got, want, "{codec}: each envelope reached the core whole, framed");
    }
    assert!(websocket::run(&seed("websocket", "unmasked")).is_empty());
}

#[test]
fn link_seeds_reach_sessions() {
    let s = targets::link_core(&seed("link_frame", "all-kinds"));
    assert_eq!((s.logins, s.requests, s.replies), (1, 1, 1), "{s:?}");
    assert!(s.pushes >= 3, "user, group, broadcast: {s:?}");
    assert!(portcullis_fuzz::shared::spare(), "the shared state is clean after the run");
}

#[test]
fn kcp_seeds_reach_the_core_through_the_handshake() {
    let (s, k) = kcp::run_with_stats(&seed("kcp", "handshake-login-close"));
    assert_eq!((k.opened, k.closed_by_peer), (1, 1), "{k:?}");
    assert_eq!((s.connections, s.logins, s.requests), (1, 1, 1), "{s:?}");
    let (s, k) = kcp::run_with_stats(&seed("kcp", "two-clients-dead-peers"));
    // Closed at the login timeout or as dead peers; silent either way.
    assert_eq!((k.opened, k.dead_peers + k.dead_links), (2, 2), "{k:?}");
    assert!(s.frames_in >= 6, "{s:?}");
    let (s, k) = kcp::run_with_stats(&seed("kcp", "bad-datagrams"));
    assert_eq!((s.connections, k.opened, k.bad_cookies), (0, 0, 1), "{s:?} {k:?}");
}
