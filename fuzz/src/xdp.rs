//! The `xdp` harness: the compiled XDP program loaded (not attached) with
//! its maps pinned in a private directory, every input run through it with
//! `BPF_PROG_TEST_RUN`.
//!
//! Rules of the private filter: gateway ports udp/tcp 7000; blocklist
//! 10.99.0.0/16 and fd99::/32; allowlist 10.88.0.0/16 and fd88::/32; UDP
//! and SYN buckets of 1000/s with a burst of 5 — so inputs can reach every
//! verdict.
//!
//! Checked per run: the program returns XDP_DROP or XDP_PASS (XDP_REDIRECT
//! is possible only with a registered AF_XDP socket; XDP_ABORTED never),
//! and exactly one per-reason counter grew by one, a drop reason for
//! XDP_DROP, a pass reason for XDP_PASS. Reading the counters costs six
//! map look-ups; `PORTCULLIS_FUZZ_XDP_CHECK_EVERY=N` reads them every N
//! runs instead and compares the sums of drops and passes.
//!
//! The pin directory is `/sys/fs/bpf/portcullis-fuzz-<pid>`, removed at
//! exit; directories of dead fuzzers are removed at start.

use std::path::PathBuf;
use std::sync::OnceLock;

use portcullis_common::{FilterConfig, Verdict};
use portcullis_xdp::{Filter, List, Loaded, Proto, Rules};

/// XDP actions.
pub const XDP_ABORTED: u32 = 0;
/// Drop.
pub const XDP_DROP: u32 = 1;
/// Pass to the kernel.
pub const XDP_PASS: u32 = 2;
/// Redirect (to an AF_XDP socket).
pub const XDP_REDIRECT: u32 = 4;

/// Frames longer than this are cut (BPF_PROG_TEST_RUN refuses more than
/// about a page without fragments).
pub const MAX_FRAME: usize = 2048;
/// Shorter frames are refused by the kernel (EINVAL): not run.
pub const MIN_FRAME: usize = 14;

const PIN_PREFIX: &str = "portcullis-fuzz-";

/// The loaded filter and the state of the counter checks.
pub struct Xdp {
    loaded: Loaded,
    rules: Rules,
    check_every: u64,
    runs: u64,
    /// Counters at the last check.
    last: [u64; Verdict::COUNT as usize],
    /// Drops and passes since the last check, by action.
    since: [u64; 2],
}

static PIN: OnceLock<PathBuf> = OnceLock::new();

extern "C" fn remove_pins() {
    if let Some(dir) = PIN.get() {
        let _ = Filter::at(dir).purge();
    }
}

fn counters(rules: &Rules) -> [u64; Verdict::COUNT as usize] {
    let mut c = [0; Verdict::COUNT as usize];
    for (v, n) in rules.counters().expect("reading the counters") {
        c[v as usize] = n;
    }
    c
}

fn is_drop(v: usize) -> bool {
    matches!(
        Verdict::ALL[v],
        Verdict::DropMalformed | Verdict::DropBlocklisted | Verdict::DropRateLimited | Verdict::DropThreatFeed
    )
}

impl Xdp {
    /// Loads the filter, or exits: with 0 and a message when not root, with
    /// 1 when the program cannot be loaded.
    pub fn init() -> Xdp {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("xdp fuzz target: skipped, BPF_PROG_TEST_RUN needs root");
            std::process::exit(0);
        }
        if let Err(e) = portcullis_xdp::program() {
            eprintln!("xdp fuzz target: {e}");
            std::process::exit(1);
        }
        if let Ok(dir) = std::fs::read_dir("/sys/fs/bpf") {
            for e in dir.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(pid) = name.strip_prefix(PIN_PREFIX) {
                    if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                        let _ = Filter::at(e.path()).purge();
                    }
                }
            }
        }
        let pin = PIN.get_or_init(|| PathBuf::from(format!("/sys/fs/bpf/{PIN_PREFIX}{}", std::process::id())));
        // SAFETY: registers a plain function without arguments.
        unsafe { libc::atexit(remove_pins) };
        let filter = Filter::at(pin);
        let loaded = filter.load_detached().unwrap_or_else(|e| {
            eprintln!("xdp fuzz target: cannot load the filter: {e}");
            std::process::exit(1)
        });
        let mut rules = filter.rules().expect("opening the pinned maps");
        rules.add_port(Proto::Udp, 7000).expect("port");
        rules.add_port(Proto::Tcp, 7000).expect("port");
        for (list, cidr) in [
            (List::Block, "10.99.0.0/16"),
            (List::Block, "fd99::/32"),
            (List::Allow, "10.88.0.0/16"),
            (List::Allow, "fd88::/32"),
        ] {
            rules.add(list, cidr.parse().expect("cidr")).expect("list");
        }
        rules
            .set_rates(FilterConfig {
                udp_rate: 1000,
                udp_burst: 5,
                syn_rate: 1000,
                syn_burst: 5,
                ..FilterConfig::default()
            })
            .expect("rates");
        let check_every =
            std::env::var("PORTCULLIS_FUZZ_XDP_CHECK_EVERY").ok().and_then(|v| v.parse().ok()).unwrap_or(1).max(1);
        let last = counters(&rules);
        Xdp { loaded, rules, check_every, runs: 0, last, since: [0; 2] }
    }

    /// Runs one packet and checks the verdict and the counters.
    pub fn run(&mut self, data: &[u8]) {
        if data.len() < MIN_FRAME {
            return;
        }
        let packet = &data[..data.len().min(MAX_FRAME)];
        let r = self.loaded.test_run(packet, 1).unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN failed: {e}"));
        assert_ne!(r.action, XDP_ABORTED, "the program aborted on {packet:02x?}");
        assert!(matches!(r.action, XDP_DROP | XDP_PASS), "unexpected XDP action {} on {packet:02x?}", r.action);
        self.since[usize::from(r.action == XDP_PASS)] += 1;
        self.runs += 1;
        if !self.runs.is_multiple_of(self.check_every) {
            return;
        }
        let now = counters(&self.rules);
        let delta: Vec<u64> = now.iter().zip(self.last).map(|(n, l)| n - l).collect();
        let drops: u64 = delta.iter().enumerate().filter(|(v, _)| is_drop(*v)).map(|(_, d)| d).sum();
        let passes: u64 = delta.iter().enumerate().filter(|(v, _)| !is_drop(*v)).map(|(_, d)| d).sum();
        assert_eq!(
            [drops, passes],
            self.since,
            "counters (by reason {delta:?}) do not match the actions of the last {} runs; last packet {packet:02x?}",
            self.check_every
        );
        if self.check_every == 1 {
            // One reason per run: make each one a distinct edge, so that
            // libFuzzer keeps inputs reaching each verdict.
            let v = delta.iter().position(|&d| d == 1).expect("one counter grew");
            match Verdict::ALL[v] {
                Verdict::PassOther => std::hint::black_box(0),
                Verdict::PassGateway => std::hint::black_box(1),
                Verdict::Redirected => std::hint::black_box(2),
                Verdict::DropMalformed => std::hint::black_box(3),
                Verdict::DropBlocklisted => std::hint::black_box(4),
                Verdict::DropRateLimited => std::hint::black_box(5),
                Verdict::DropThreatFeed => std::hint::black_box(6),
            };
        }
        self.last = now;
        self.since = [0; 2];
    }
}
