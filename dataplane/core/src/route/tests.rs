use super::*;

fn router() -> Router {
    let c = Config::parse(
        r#"
        [[listeners]]
        bind = "127.0.0.1:1"
        [auth]
        kind = "token"
        secret = "0123456789abcdef"
        [[services]]
        name = "a"
        servers = ["127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:4"]
        [[services]]
        name = "b"
        servers = ["127.0.0.1:5"]
        [[routes]]
        commands = [2000, 2999]
        service = "b"
        [[routes]]
        commands = [1000, 1000]
        service = "a"
        "#,
        "t",
    )
    .unwrap();
    Router::new(&c)
}

const KEY: PickKey<'static> = PickKey { user_id: "u", route_key: None };

fn service(balance: Balance, weights: &[u32]) -> Service {
    let servers: Vec<_> = weights.iter().enumerate().map(|(i, w)| (i, format!("10.0.0.{i}:9000"), *w)).collect();
    Service::new("s", balance, false, &servers)
}

#[test]
fn ranges_are_inclusive_and_gaps_unrouted() {
    let r = router();
    assert_eq!(r.service_of(999), None);
    assert_eq!(r.service_of(1000), Some(0));
    assert_eq!(r.service_of(1001), None);
    assert_eq!(r.service_of(2000), Some(1));
    assert_eq!(r.service_of(2999), Some(1));
    assert_eq!(r.service_of(3000), None);
    assert_eq!(r.services()[1].links, [3]);
    assert_eq!(r.service_named("b"), Some(1));
}

#[test]
fn round_robin_skips_unusable_servers() {
    let mut s = service(Balance::RoundRobin, &[1, 1, 1]);
    let picks: Vec<_> = (0..6).map(|_| s.pick(KEY, |_| true, |_| 0).unwrap()).collect();
    assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    let picks: Vec<_> = (0..4).map(|_| s.pick(KEY, |l| l != 1, |_| 0).unwrap()).collect();
    assert_eq!(picks, [0, 2, 0, 2]);
    assert_eq!(s.pick(KEY, |_| false, |_| 0), None);
}

#[test]
fn weighted_follows_weights_smoothly() {
    let mut s = service(Balance::Weighted, &[5, 1, 1]);
    let picks: Vec<_> = (0..7).map(|_| s.pick(KEY, |_| true, |_| 0).unwrap()).collect();
    assert_eq!(picks.iter().filter(|&&p| p == 0).count(), 5);
    assert_eq!(picks.iter().filter(|&&p| p == 1).count(), 1);
    // Smooth: the heavy server is never picked more than twice in a row here.
    assert!(!picks.windows(3).any(|w| w.iter().all(|&p| p == 0)), "{picks:?}");
    // An unusable server's share goes to the others.
    let picks: Vec<_> = (0..60).map(|_| s.pick(KEY, |l| l != 0, |_| 0).unwrap()).collect();
    assert_eq!(picks.iter().filter(|&&p| p == 1).count(), 30);
}

#[test]
fn least_outstanding_prefers_the_idlest_usable_server() {
    let mut s = service(Balance::LeastOutstanding, &[1, 1, 1]);
    let load = |l: LinkId| [5, 2, 9][l];
    assert_eq!(s.pick(KEY, |_| true, load), Some(1));
    assert_eq!(s.pick(KEY, |l| l != 1, load), Some(0));
    // Ties rotate.
    let picks: Vec<_> = (0..3).map(|_| s.pick(KEY, |_| true, |_| 0).unwrap()).collect();
    let mut sorted = picks.clone();
    sorted.sort();
    assert_eq!(sorted, [0, 1, 2], "{picks:?}");
}

#[test]
fn hashing_is_stable_per_key_and_falls_over_to_the_next_server() {
    let mut s = service(Balance::HashRouteKey, &[1, 1, 1, 1]);
    let key = |k: &'static [u8]| PickKey { user_id: "u", route_key: Some(k) };
    let first = s.pick(key(b"room-7"), |_| true, |_| 0).unwrap();
    for _ in 0..10 {
        assert_eq!(s.pick(key(b"room-7"), |_| true, |_| 0), Some(first));
    }
    let fallback = s.pick(key(b"room-7"), |l| l != first, |_| 0).unwrap();
    assert_ne!(fallback, first);
    assert_eq!(s.pick(key(b"room-7"), |_| true, |_| 0), Some(first), "it comes back");
    let mut u = service(Balance::HashUser, &[1, 1, 1, 1]);
    let by_user = |id: &'static str| PickKey { user_id: id, route_key: Some(b"ignored") };
    assert_eq!(u.pick(by_user("alice"), |_| true, |_| 0), u.pick(by_user("alice"), |_| true, |_| 0));
}

fn owners(ring: &HashRing, keys: usize) -> Vec<usize> {
    (0..keys).map(|k| ring.lookup(stable_hash(format!("key-{k}").as_bytes()), |_| true).unwrap()).collect()
}

#[test]
fn hash_ring_spreads_keys_evenly() {
    let addrs: Vec<String> = (0..10).map(|i| format!("10.0.0.{i}:9000")).collect();
    let ring = HashRing::new(addrs.iter().map(|a| (a.as_str(), 1)));
    let mut counts = [0usize; 10];
    for o in owners(&ring, 100_000) {
        counts[o] += 1;
    }
    for c in counts {
        assert!((7_000..13_000).contains(&c), "{counts:?}");
    }
}

#[test]
fn adding_or_removing_one_of_n_servers_moves_about_one_nth_of_keys() {
    const KEYS: usize = 100_000;
    let addrs: Vec<String> = (0..11).map(|i| format!("10.0.0.{i}:9000")).collect();
    let ten = HashRing::new(addrs[..10].iter().map(|a| (a.as_str(), 1)));
    let eleven = HashRing::new(addrs.iter().map(|a| (a.as_str(), 1)));
    let (before, after) = (owners(&ten, KEYS), owners(&eleven, KEYS));
    let moved: Vec<usize> = (0..KEYS).filter(|&k| before[k] != after[k]).collect();
    let share = moved.len() as f64 / KEYS as f64;
    assert!((0.06..0.12).contains(&share), "adding 1 to 10 moved {share:.3} of keys (ideal 0.091)");
    assert!(moved.iter().all(|&k| after[k] == 10), "keys only move to the new server");
    // Removing server 3 of 10 (its ring points vanish) moves its keys only.
    let nine: Vec<&str> = addrs[..10].iter().filter(|a| !a.starts_with("10.0.0.3:")).map(String::as_str).collect();
    let without = HashRing::new(nine.iter().map(|a| (*a, 1)));
    let remap = |i: usize| if i >= 3 { i + 1 } else { i };
    let after: Vec<usize> = owners(&without, KEYS).into_iter().map(remap).collect();
    let moved = (0..KEYS).filter(|&k| before[k] != after[k]).count();
    assert!(moved == before.iter().filter(|&&o| o == 3).count(), "only server 3's keys moved");
    let share = moved as f64 / KEYS as f64;
    assert!((0.07..0.13).contains(&share), "removing 1 of 10 moved {share:.3} (ideal 0.1)");
}
