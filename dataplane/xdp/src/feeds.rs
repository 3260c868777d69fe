//! Threat-intelligence feeds: parsing feed files and keeping them loaded
//! in the XDP filter's feed tries.
//!
//! # Formats
//!
//! One parser reads every common format, line by line:
//!
//! - plain lists of IPs and CIDRs, IPv4 and IPv6, `#` comments (whole
//!   lines or after an entry);
//! - FireHOL `.netset` / `.ipset` (the same, with `#` headers);
//! - Spamhaus DROP / EDROP / DROPv6 (`1.2.3.0/24 ; SBL123`, `;` comments);
//! - CSV-ish lists whose first field is the address (`1.2.3.4,comment`).
//!
//! # Bad lines
//!
//! A line that is not an address is **skipped and counted**, and the first
//! few are reported with the file and line number ([`Parsed::bad`]): public
//! feeds occasionally carry a junk line, and refusing a 100 000-entry feed
//! for one of them would leave the host unprotected. A file with bad lines
//! and **no** good ones is an error ([`FeedError::Empty`]): a truncated or
//! wrong file must not wipe a loaded feed, so the watcher keeps the last
//! good one. An intentionally empty feed is removed with
//! [`Rules::remove_feed`](crate::Rules::remove_feed) instead.
//!
//! Entries are normalised (host bits cleared) and deduplicated; ranges
//! inside other ranges of the same feed are kept (the trie answers with the
//! longest match either way).
//!
//! # Loading
//!
//! [`Rules::sync_feed`](crate::Rules::sync_feed) makes the tries list
//! exactly a feed's entries by difference (adds the new ranges, deletes the
//! gone ones), so a reload takes effect in place with no window where the
//! feed is half loaded or absent. [`spawn_feed_watcher`] reloads files when
//! they change.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crate::{Cidr, Filter, FilterError};

/// How many bad lines a [`Parsed`] keeps the text of (all are counted).
pub const BAD_LINES_KEPT: usize = 5;

/// A feed file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// The file cannot be read.
    #[error("feed {path}: cannot read it: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Nothing in the file is an address: refused, so that a broken file
    /// does not wipe a loaded feed.
    #[error("feed {path}: no address in it ({bad} bad line(s){first}); the loaded feed, if any, is kept")]
    Empty {
        /// The file.
        path: String,
        /// Bad lines.
        bad: usize,
        /// The first bad line, as `: line N: …`, if any.
        first: String,
    },
    /// A feed name that cannot be stored.
    #[error("feed name {0:?}: give 1 to 48 bytes of letters, digits, '-', '_' or '.'")]
    BadName(String),
    /// Every feed slot is taken.
    #[error("{0} feeds are loaded already: remove one first (portcullisctl filter feed remove <name>)")]
    TooMany(u32),
    /// The filter's maps.
    #[error(transparent)]
    Filter(#[from] FilterError),
}

/// A bad line of a feed file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine {
    /// Line number, from 1.
    pub line: usize,
    /// Why, with the text.
    pub reason: String,
}

/// A parsed feed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Parsed {
    /// The entries, deduplicated, in file order.
    pub entries: Vec<Cidr>,
    /// Lines that were not addresses (skipped).
    pub bad_lines: usize,
    /// The first [`BAD_LINES_KEPT`] of them.
    pub bad: Vec<BadLine>,
}

impl Parsed {
    /// IPv4 and IPv6 entries.
    pub fn counts(&self) -> (usize, usize) {
        let v4 = self.entries.iter().filter(|c| c.addr.is_ipv4()).count();
        (v4, self.entries.len() - v4)
    }

    /// The bad lines, one per line, each naming `path` and its line.
    pub fn describe_bad(&self, path: &str) -> String {
        let mut s: Vec<String> = self.bad.iter().map(|b| format!("{path}:{}: {}", b.line, b.reason)).collect();
        if self.bad_lines > self.bad.len() {
            s.push(format!("{path}: … and {} more bad line(s)", self.bad_lines - self.bad.len()));
        }
        s.join("\n")
    }
}

/// Parses the text of a feed in any supported format (see the module docs).
pub fn parse(text: &str) -> Parsed {
    let mut out = Parsed::default();
    let mut seen = HashSet::new();
    for (i, line) in text.lines().enumerate() {
        // Comments: `#` anywhere, `;` (Spamhaus) anywhere.
        let line = line.split(['#', ';']).next().unwrap_or("");
        // The first field: CSV or whitespace separated lists carry notes after it.
        let field = line.split([',', ' ', '\t']).find(|f| !f.is_empty()).unwrap_or("").trim();
        if field.is_empty() {
            continue;
        }
        match field.parse::<Cidr>() {
            Ok(c) => {
                if seen.insert(c) {
                    out.entries.push(c);
                }
            }
            Err(e) => {
                out.bad_lines += 1;
                if out.bad.len() < BAD_LINES_KEPT {
                    out.bad.push(BadLine { line: i + 1, reason: e.to_string() });
                }
            }
        }
    }
    out
}

/// Reads and parses the feed file at `path`; a file with no address is an
/// error ([`FeedError::Empty`]).
pub fn load_file(path: &Path) -> Result<Parsed, FeedError> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| FeedError::Read { path: shown.clone(), source })?;
    let parsed = parse(&String::from_utf8_lossy(&bytes));
    if parsed.entries.is_empty() {
        let first = parsed.bad.first().map_or(String::new(), |b| format!(": line {}: {}", b.line, b.reason));
        return Err(FeedError::Empty { path: shown, bad: parsed.bad_lines, first });
    }
    Ok(parsed)
}

/// Whether `name` can name a feed.
pub fn valid_name(name: &str) -> bool {
    (1..=portcullis_common::FEED_NAME_LEN).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// A loaded feed, as [`Rules::feeds`](crate::Rules::feeds) lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedStatus {
    /// Its name.
    pub name: String,
    /// Its slot (bit of the trie values, index of its drop counter).
    pub id: u32,
    /// IPv4 ranges.
    pub entries_v4: u32,
    /// IPv6 ranges.
    pub entries_v6: u32,
    /// When it was last synced.
    pub loaded: SystemTime,
    /// Packets dropped because of it (summed over CPUs).
    pub drops: u64,
}

/// What a sync changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Ranges added.
    pub added: usize,
    /// Ranges removed.
    pub removed: usize,
    /// Ranges the feed lists after the sync.
    pub entries: usize,
}

/// A feed the watcher keeps loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedSpec {
    /// Its name.
    pub name: String,
    /// Its file.
    pub path: PathBuf,
}

/// What identifies a version of a file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
}

fn stamp(path: &Path) -> std::io::Result<Stamp> {
    let m = std::fs::metadata(path)?;
    Ok(Stamp { modified: m.modified().ok(), len: m.len() })
}

/// One feed's state in the watcher.
#[derive(Debug)]
struct Watched {
    spec: FeedSpec,
    stamp: Option<Stamp>,
    /// A hash of the content last loaded: a rewrite with the same content
    /// (a cron job fetching an unchanged list) costs no sync.
    content: Option<u64>,
    /// Whether the last attempt failed (logs once per failure streak).
    failing: bool,
    /// The last sync, so that a reload costs what changed.
    cache: Option<crate::FeedCache>,
}

fn content_hash(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// Loads `spec` into the filter at `filter` if the file changed since
/// `w`'s last load; logs what changed.
fn poll_one(filter: &Filter, w: &mut Watched) {
    let name = &w.spec.name;
    let path = w.spec.path.display().to_string();
    let now_stamp = match stamp(&w.spec.path) {
        Ok(s) => s,
        Err(e) => {
            if !w.failing {
                tracing::warn!("feed {name}: cannot read {path}: {e}; keeping the feed as last loaded");
                w.failing = true;
            }
            return;
        }
    };
    if w.stamp == Some(now_stamp) && !w.failing {
        return;
    }
    let started = Instant::now();
    let bytes = match std::fs::read(&w.spec.path) {
        Ok(b) => b,
        Err(e) => {
            if !w.failing {
                tracing::warn!("feed {name}: cannot read {path}: {e}; keeping the feed as last loaded");
                w.failing = true;
            }
            return;
        }
    };
    let hash = content_hash(&bytes);
    w.stamp = Some(now_stamp);
    if w.content == Some(hash) && !w.failing {
        return;
    }
    let parsed = parse(&String::from_utf8_lossy(&bytes));
    if parsed.bad_lines > 0 {
        tracing::warn!("feed {name}: {} bad line(s) skipped:\n{}", parsed.bad_lines, parsed.describe_bad(&path));
    }
    if parsed.entries.is_empty() {
        if !w.failing {
            tracing::warn!("feed {name}: {path} lists no address; keeping the feed as last loaded");
        }
        w.failing = true;
        return;
    }
    match filter.rules().and_then(|mut r| r.sync_feed_cached(name, &parsed.entries, &mut w.cache)) {
        Ok(report) => {
            w.content = Some(hash);
            w.failing = false;
            tracing::info!(
                "feed {name}: {} entries from {path} (+{} −{}) in {} ms",
                report.entries,
                report.added,
                report.removed,
                started.elapsed().as_millis()
            );
        }
        Err(e) => {
            if !w.failing {
                tracing::warn!("feed {name}: cannot load it into the XDP filter: {e}; will retry");
            }
            w.failing = true;
            // Retry at the next poll even if the file stays as it is.
            w.stamp = None;
        }
    }
}

/// The feed watcher's thread; stops when dropped.
pub struct FeedWatcher {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FeedWatcher {
    /// Stops the thread and waits for it.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

impl Drop for FeedWatcher {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Starts a thread that loads every feed of `specs` into the filter pinned
/// at `pin_dir` at once, then checks the files every `interval` and
/// reloads those whose size, time or content changed. A file that becomes
/// unreadable or lists nothing leaves its feed as last loaded (logged
/// once). Feeds loaded earlier under other names are left alone. The thread
/// ends when the watcher is dropped or `stop` is set.
pub fn spawn_feed_watcher(
    pin_dir: impl Into<PathBuf>,
    specs: Vec<FeedSpec>,
    interval: Duration,
    stop: Option<Arc<AtomicBool>>,
) -> std::io::Result<FeedWatcher> {
    let stop = stop.unwrap_or_default();
    let filter = Filter::at(pin_dir);
    let stop2 = stop.clone();
    let mut watched: Vec<Watched> = specs
        .into_iter()
        .map(|spec| Watched { spec, stamp: None, content: None, failing: false, cache: None })
        .collect();
    let thread = std::thread::Builder::new().name("portcullis-feeds".into()).spawn(move || {
        while !stop2.load(Ordering::Relaxed) {
            for w in &mut watched {
                poll_one(&filter, w);
            }
            let until = Instant::now() + interval;
            while !stop2.load(Ordering::Relaxed) {
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                std::thread::park_timeout(left.min(Duration::from_millis(200)));
            }
        }
    })?;
    Ok(FeedWatcher { stop, thread: Some(thread) })
}

/// Trie entries of one family: address and prefix length.
pub(crate) type Entries<const N: usize> = Vec<([u8; N], u8)>;

/// IPv4 entries first, then IPv6, each sorted: the order syncs apply in.
pub(crate) fn split(entries: &[Cidr]) -> (Entries<4>, Entries<16>) {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for c in entries {
        match c.addr {
            IpAddr::V4(a) => v4.push((a.octets(), c.prefix)),
            IpAddr::V6(a) => v6.push((a.octets(), c.prefix)),
        }
    }
    v4.sort_unstable();
    v4.dedup();
    v6.sort_unstable();
    v6.dedup();
    (v4, v6)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidrs(p: &Parsed) -> Vec<String> {
        p.entries.iter().map(|c| c.to_string()).collect()
    }

    #[test]
    fn plain_lists_with_comments_and_blank_lines() {
        let p = parse("# my list\n\n192.0.2.7\n198.51.100.0/24  # office\n  2001:db8::/32\n2001:db8::1\r\n");
        assert_eq!(cidrs(&p), ["192.0.2.7/32", "198.51.100.0/24", "2001:db8::/32", "2001:db8::1/128"]);
        assert_eq!((p.bad_lines, p.counts()), (0, (2, 2)));
    }

    #[test]
    fn firehol_netsets_and_ipsets() {
        let netset = "#\n# firehol_level1\n#\n# Maintainer      : FireHOL\n# Entries         : 2\n#\n0.0.0.0/8\n\
                      1.10.16.0/20\n223.254.0.0/16\n";
        assert_eq!(cidrs(&parse(netset)), ["0.0.0.0/8", "1.10.16.0/20", "223.254.0.0/16"]);
        let ipset = "# blocklist_de.ipset\n1.2.3.4\n5.6.7.8\n1.2.3.4\n";
        let p = parse(ipset);
        assert_eq!(cidrs(&p), ["1.2.3.4/32", "5.6.7.8/32"], "duplicates once");
    }

    #[test]
    fn spamhaus_drop_edrop_and_dropv6() {
        let drop = "; Spamhaus DROP List 2026/12/01 - (c) 2026 The Spamhaus Project\n\
                    ; Last-Modified: Tue, 01 Dec 2026 00:00:00 GMT\n\
                    1.10.16.0/20 ; SBL256894\n1.19.0.0/16 ; SBL434604\n";
        assert_eq!(cidrs(&parse(drop)), ["1.10.16.0/20", "1.19.0.0/16"]);
        let v6 = "; Spamhaus DROPv6\n2001:678:738::/48 ; SBL635837\n2a06:e480::/29;SBL301771\n";
        assert_eq!(cidrs(&parse(v6)), ["2001:678:738::/48", "2a06:e480::/29"]);
    }

    #[test]
    fn csv_first_field_and_host_bits_cleared() {
        let p = parse("203.0.113.9/24,scanner,2026-12-01\n10.1.2.3\tnote\n");
        assert_eq!(cidrs(&p), ["203.0.113.0/24", "10.1.2.3/32"]);
    }

    #[test]
    fn bad_lines_are_skipped_counted_and_named() {
        let mut text = String::from("192.0.2.1\nnot-an-ip\n10.0.0.0/33\n::/129\n");
        for _ in 0..10 {
            text.push_str("garbage\n");
        }
        let p = parse(&text);
        assert_eq!(cidrs(&p), ["192.0.2.1/32"]);
        assert_eq!(p.bad_lines, 13);
        assert_eq!(p.bad.len(), BAD_LINES_KEPT);
        assert_eq!((p.bad[0].line, p.bad[1].line, p.bad[2].line), (2, 3, 4));
        let text = p.describe_bad("/etc/feeds/x.txt");
        assert!(text.contains("/etc/feeds/x.txt:2: bad CIDR \"not-an-ip\""), "{text}");
        assert!(text.contains("at most 32") && text.contains("8 more bad line(s)"), "{text}");
    }

    #[test]
    fn a_file_with_nothing_usable_is_an_error_naming_it() {
        let dir = std::env::temp_dir().join(format!("portcullis-feed-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("junk.netset");
        std::fs::write(&junk, "# header\n<html>oops</html>\n").unwrap();
        let e = load_file(&junk).unwrap_err().to_string();
        assert!(e.contains("junk.netset") && e.contains("no address") && e.contains("line 2"), "{e}");
        std::fs::write(&junk, "").unwrap();
        assert!(matches!(load_file(&junk), Err(FeedError::Empty { bad: 0, .. })));
        let e = load_file(&dir.join("missing")).unwrap_err().to_string();
        assert!(e.contains("missing") && e.contains("cannot read"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn binary_junk_does_not_panic() {
        let bytes: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let p = parse(&String::from_utf8_lossy(&bytes));
        assert!(p.entries.len() <= p.bad_lines + p.entries.len());
    }

    #[test]
    fn names_are_short_and_plain() {
        assert!(valid_name("firehol_level1") && valid_name("spamhaus-drop.v6"));
        for bad in ["", "a b", "x/y", &"n".repeat(49)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn split_sorts_and_dedups_by_family() {
        let entries: Vec<Cidr> =
            ["10.0.0.0/8", "2001:db8::/32", "1.2.3.4", "10.0.0.0/8"].iter().map(|s| s.parse().unwrap()).collect();
        let (v4, v6) = split(&entries);
        assert_eq!(v4, vec![([1, 2, 3, 4], 32), ([10, 0, 0, 0], 8)]);
        assert_eq!(v6.len(), 1);
    }
}
