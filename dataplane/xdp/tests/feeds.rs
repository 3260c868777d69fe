//! Threat feeds enforced by the XDP program on a veth pair (root). Each
//! test builds its own pair of namespaces (the veth harness, removed when
//! the test ends, even on failure) and its own pin directory, attaches the
//! filter to the gateway side and sends real frames from the players' side
//! with `BPF_PROG_TEST_RUN` in live-frames mode (an `XDP_TX` program on the
//! players' end of the veth). Without root, namespaces or the compiled
//! program, each test says why and skips.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use portcullis_common::Verdict;
use portcullis_harness::flood::{frame, Kind};
use portcullis_harness::{Harness, GATEWAY_IFACE, GATEWAY_V4, GATEWAY_V6, PLAYER_IFACE};
use portcullis_xdp::testrun::{ifindex, run_live, RawXdp};
use portcullis_xdp::{self as filter, feeds, Cidr, Filter, List};

struct Setup {
    h: Harness,
    filter: Filter,
    dir: PathBuf,
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = self.filter.purge();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

static N: AtomicU32 = AtomicU32::new(0);

fn setup(test: &str) -> Option<Setup> {
    if let Some(why) = portcullis_harness::unavailable() {
        eprintln!("skipping {test}: {why}");
        return None;
    }
    if let Err(e) = filter::program() {
        assert!(std::env::var("PORTCULLIS_REQUIRE_ROOT_TESTS").as_deref() != Ok("1"), "required but: {e}");
        eprintln!("skipping {test}: {e}");
        return None;
    }
    let n = N.fetch_add(1, Ordering::Relaxed);
    let pin = PathBuf::from(format!("/sys/fs/bpf/portcullis-feedtest-{}-{n}", std::process::id()));
    let dir = std::env::temp_dir().join(format!("portcullis-feedtest-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let h = Harness::up().expect("harness");
    let filter = Filter::at(&pin);
    let attached = h.in_gateway(|| filter.attach(GATEWAY_IFACE, false));
    let s = Setup { h, filter, dir };
    match attached {
        Ok(_) => Some(s),
        Err(filter::FilterError::NoBpffs(d))
            if std::env::var("PORTCULLIS_REQUIRE_ROOT_TESTS").as_deref() != Ok("1") =>
        {
            eprintln!("skipping {test}: {d} is not bpffs (./scripts/setup.sh mounts it)");
            None
        }
        Err(e) => panic!("attach: {e}"),
    }
}

const FRAMES: u32 = 500;

impl Setup {
    fn counter(&self, v: Verdict) -> u64 {
        self.filter.rules().unwrap().counters().unwrap().into_iter().find(|(x, _)| *x == v).unwrap().1
    }

    /// Sends [`FRAMES`] UDP frames from `src` to the gateway, for real,
    /// from the players' end of the veth; returns how many the filter
    /// dropped as listed by a feed.
    fn feed_drops_of(&self, src: IpAddr) -> u64 {
        let dst = if src.is_ipv4() { IpAddr::V4(GATEWAY_V4) } else { IpAddr::V6(GATEWAY_V6) };
        let f = frame(Kind::Udp, self.h.gateway_mac, self.h.player_mac, src, dst, 9, 18);
        let before = self.counter(Verdict::DropThreatFeed);
        let seen = self.counter(Verdict::PassOther) + before;
        self.h
            .in_players(|| {
                let tx = RawXdp::returning(3)?;
                run_live(tx.fd(), &f, FRAMES, ifindex(PLAYER_IFACE)?, 0)
            })
            .expect("live frames");
        // The peer's softirq has run by the time the call returns; allow a
        // moment for the rare deferral to ksoftirqd.
        for _ in 0..50 {
            if self.counter(Verdict::PassOther) + self.counter(Verdict::DropThreatFeed) >= seen + u64::from(FRAMES) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.counter(Verdict::DropThreatFeed) - before
    }

    fn load(&self, name: &str, file: &str, text: &str) -> feeds::Parsed {
        let path = self.dir.join(file);
        std::fs::write(&path, text).unwrap();
        let parsed = feeds::load_file(&path).expect("parse");
        self.filter.rules().unwrap().sync_feed(name, &parsed.entries).expect("sync");
        parsed
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// For each format: listed ranges are dropped at XDP and counted as feed
/// drops (for that feed); a reload without a range lets it through again.
#[test]
fn every_format_blocks_its_ranges_and_a_reload_unblocks_what_it_drops() {
    let Some(s) = setup("every_format_blocks_its_ranges_and_a_reload_unblocks_what_it_drops") else { return };
    let cases = [
        (
            "plain",
            "list.txt",
            "# plain list\n198.51.100.0/24\n203.0.113.7  # one host\n2001:db8:bad::/48\n",
            "# plain list\n203.0.113.7\n2001:db8:bad::/48\n",
            ["198.51.100.20", "203.0.113.7"],
        ),
        (
            "firehol",
            "level1.netset",
            "#\n# firehol_level1\n# Entries: 2\n#\n192.0.2.0/25\n100.64.0.0/10\n",
            "#\n# firehol_level1\n#\n100.64.0.0/10\n",
            ["192.0.2.100", "100.100.1.1"],
        ),
        (
            "spamhaus",
            "drop.txt",
            "; Spamhaus DROP List\n198.18.0.0/15 ; SBL1\n2001:db8:5::/48 ; SBL2\n",
            "; Spamhaus DROP List\n2001:db8:5::/48 ; SBL2\n",
            ["198.19.4.4", "2001:db8:5::99"],
        ),
    ];
    for (name, file, first, second, [removed, kept]) in cases {
        let parsed = s.load(name, file, first);
        assert!(parsed.bad_lines == 0, "{name}: {parsed:?}");
        let (removed, kept) = (ip(removed), ip(kept));
        assert_eq!(s.feed_drops_of(removed), u64::from(FRAMES), "{name}: {removed} listed");
        assert_eq!(s.feed_drops_of(kept), u64::from(FRAMES), "{name}: {kept} listed");
        assert_eq!(s.feed_drops_of(ip("192.0.2.200")), 0, "{name}: unlisted passes");
        let listed = s.filter.rules().unwrap().feeds().unwrap();
        let me = listed.iter().find(|f| f.name == name).expect("listed");
        assert_eq!(me.drops, 2 * u64::from(FRAMES), "{name}: counted for its feed");
        s.load(name, file, second);
        assert_eq!(s.feed_drops_of(removed), 0, "{name}: {removed} dropped from the feed passes again");
        assert_eq!(s.feed_drops_of(kept), u64::from(FRAMES), "{name}: {kept} still listed");
        let me = s.filter.rules().unwrap().feeds().unwrap().into_iter().find(|f| f.name == name).unwrap();
        assert_eq!(
            (me.entries_v4 + me.entries_v6) as usize,
            second.lines().filter(|l| l.contains(['.', ':']) && !l.starts_with([';', '#'])).count()
        );
    }
    // An IPv6 source in the plain feed.
    assert_eq!(s.feed_drops_of(ip("2001:db8:bad::1")), u64::from(FRAMES));
    // Removing a feed unblocks its ranges.
    s.filter.rules().unwrap().remove_feed("plain").unwrap().expect("was loaded");
    assert_eq!(s.feed_drops_of(ip("203.0.113.7")), 0);
    assert!(s.filter.rules().unwrap().feeds().unwrap().iter().all(|f| f.name != "plain"));
}

#[test]
fn an_allowlisted_source_inside_a_feed_range_passes() {
    let Some(s) = setup("an_allowlisted_source_inside_a_feed_range_passes") else { return };
    s.load("level1", "l1.netset", "198.51.100.0/24\n");
    s.filter.rules().unwrap().add(List::Allow, "198.51.100.9".parse::<Cidr>().unwrap()).unwrap();
    assert_eq!(s.feed_drops_of(ip("198.51.100.9")), 0, "allowlisted");
    assert_eq!(s.feed_drops_of(ip("198.51.100.10")), u64::from(FRAMES), "its neighbour is not");
    // The operator's blocklist wins over both.
    s.filter.rules().unwrap().add(List::Block, "198.51.100.9".parse::<Cidr>().unwrap()).unwrap();
    let before = s.counter(Verdict::DropBlocklisted);
    assert_eq!(s.feed_drops_of(ip("198.51.100.9")), 0);
    assert_eq!(s.counter(Verdict::DropBlocklisted) - before, u64::from(FRAMES));
}

#[test]
fn feeds_listing_the_same_range_are_loaded_and_removed_independently() {
    let Some(s) = setup("feeds_listing_the_same_range_are_loaded_and_removed_independently") else { return };
    s.load("a", "a.txt", "10.9.0.0/16\n");
    s.load("b", "b.txt", "10.9.0.0/16\n10.10.0.0/16\n");
    s.filter.rules().unwrap().remove_feed("a").unwrap();
    assert_eq!(s.feed_drops_of(ip("10.9.1.1")), u64::from(FRAMES), "still listed by b");
    s.load("b", "b.txt", "10.10.0.0/16\n");
    assert_eq!(s.feed_drops_of(ip("10.9.1.1")), 0, "listed by nobody");
    // An empty or broken file never wipes a feed: the parser refuses it.
    std::fs::write(s.dir.join("b.txt"), "<html>502 Bad Gateway</html>\n").unwrap();
    assert!(feeds::load_file(&s.dir.join("b.txt")).is_err());
    assert!(s.filter.rules().unwrap().sync_feed("b", &[]).is_err());
    assert_eq!(s.feed_drops_of(ip("10.10.3.3")), u64::from(FRAMES));
}

/// The watcher loads a feed, reloads it when the file changes (ranges
/// removed pass again) and keeps the last good feed when the file goes.
#[test]
fn the_watcher_reloads_changed_files_and_keeps_the_last_good_feed() {
    let Some(s) = setup("the_watcher_reloads_changed_files_and_keeps_the_last_good_feed") else { return };
    let path = s.dir.join("watched.netset");
    std::fs::write(&path, "198.51.100.0/24\n203.0.113.0/24\n").unwrap();
    let spec = feeds::FeedSpec { name: "watched".into(), path: path.clone() };
    let watcher = filter::spawn_feed_watcher(s.filter.dir(), vec![spec], Duration::from_millis(50), None).unwrap();
    let wait_for = |what: &str, f: &dyn Fn() -> bool| {
        for _ in 0..100 {
            if f() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("timed out waiting for {what}");
    };
    let entries =
        || s.filter.rules().unwrap().feeds().unwrap().iter().find(|f| f.name == "watched").map(|f| f.entries_v4);
    wait_for("the first load", &|| entries() == Some(2));
    assert_eq!(s.feed_drops_of(ip("198.51.100.1")), u64::from(FRAMES));
    std::fs::write(&path, "203.0.113.0/24\n").unwrap();
    wait_for("the reload", &|| entries() == Some(1));
    assert_eq!(s.feed_drops_of(ip("198.51.100.1")), 0);
    std::fs::remove_file(&path).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(entries(), Some(1), "kept");
    assert_eq!(s.feed_drops_of(ip("203.0.113.1")), u64::from(FRAMES));
    drop(watcher);
}

/// A sync from the watcher's cache is exact, and a change by another
/// process in between (the CLI) makes it read the trie instead.
#[test]
fn a_cached_sync_notices_changes_made_by_another_process() {
    let Some(s) = setup("a_cached_sync_notices_changes_made_by_another_process") else { return };
    let c = |list: &[&str]| -> Vec<Cidr> { list.iter().map(|x| x.parse().unwrap()).collect() };
    let mut cache = None;
    let mut watcher = s.filter.rules().unwrap();
    let r = watcher.sync_feed_cached("c", &c(&["10.20.0.0/16", "10.21.0.0/16"]), &mut cache).unwrap();
    assert_eq!((r.added, r.removed), (2, 0));
    let r = watcher.sync_feed_cached("c", &c(&["10.20.0.0/16", "10.23.0.0/16"]), &mut cache).unwrap();
    assert_eq!((r.added, r.removed), (1, 1), "from the cache: only the change");
    assert_eq!(s.feed_drops_of(ip("10.21.0.1")), 0);
    assert_eq!(s.feed_drops_of(ip("10.23.0.1")), u64::from(FRAMES));
    // Another process replaces the feed.
    s.filter.rules().unwrap().sync_feed("c", &c(&["10.22.0.0/16"])).unwrap();
    let r = watcher.sync_feed_cached("c", &c(&["10.20.0.0/16"]), &mut cache).unwrap();
    assert_eq!((r.added, r.removed), (1, 1), "read from the trie: 10.22 goes, 10.20 comes back");
    assert_eq!(s.feed_drops_of(ip("10.22.0.1")), 0);
    assert_eq!(s.feed_drops_of(ip("10.20.0.1")), u64::from(FRAMES));
    assert_eq!(s.feed_drops_of(ip("10.23.0.1")), 0);
}
