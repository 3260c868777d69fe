//! `portcullis-feed-bench`: what threat feeds cost, and XDP against
//! nftables on the same drops (root; run by `benches/scripts/xdp-vs-nft.sh`,
//! which builds the namespace and cleans up).
//!
//! - `gen-feed`: writes a realistic feed of non-overlapping IPv4 ranges
//!   (mostly /32 and /24, some /16–/23; no private, loopback or multicast
//!   space), deterministic for a seed.
//! - `load`: feed load figures on a filter loaded (not attached) under a
//!   pin directory: parse, first sync, resync unchanged, resync with 1 %
//!   changed, and the feed trie's kernel memory per entry (the map's
//!   `memlock` in fdinfo, which is what the kernel accounts to it).
//! - `live`: traffic generated inside the kernel with `BPF_PROG_TEST_RUN`
//!   in live-frames mode: an `XDP_TX` program run on `bgen` sends 64-byte
//!   UDP frames to its veth peer `bgw`, whose XDP program (and, for passed
//!   frames, the kernel's stack and nftables) runs in the softirq of the
//!   same CPU, inline. **Method**: the sending thread is pinned to one CPU;
//!   CPU per frame = (the thread's CPU time, `CLOCK_THREAD_CPUTIME_ID`,
//!   which includes the inline softirq work as this kernel has no
//!   `IRQ_TIME_ACCOUNTING`, + the CPU time of that CPU's `ksoftirqd`, for
//!   any work deferred to it) / frames. The kernel's own per-frame time
//!   (`duration` of the test run) is printed beside it as a cross-check.
//!   Several runs per case; the median and the spread are printed.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use portcullis_common::Verdict;
use portcullis_harness::flood::{self, Kind};
use portcullis_xdp::testrun::{ifindex, run_live, RawXdp};
use portcullis_xdp::{feeds, Cidr, Filter, List};

/// Measures threat feeds and XDP against nftables.
#[derive(Parser)]
#[command(version)]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write a feed of non-overlapping IPv4 ranges.
    GenFeed {
        /// Output file.
        #[arg(long)]
        out: PathBuf,
        /// Ranges.
        #[arg(long, default_value_t = 100_000)]
        count: usize,
        /// PRNG seed.
        #[arg(long, default_value_t = 13)]
        seed: u64,
    },
    /// Feed load figures.
    Load {
        /// The feed file.
        #[arg(long)]
        feed: PathBuf,
        /// Pin directory for a filter loaded for the measurement (removed after).
        #[arg(long)]
        pin_dir: PathBuf,
        /// Runs per figure.
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// XDP against nftables, CPU per frame.
    Live {
        /// The network namespace holding the veth pair bgen–bgw.
        #[arg(long)]
        netns: String,
        /// Pin directory for the filter (removed after).
        #[arg(long)]
        pin_dir: PathBuf,
        /// The feed file (its ranges go to the XDP feed and to the nft set).
        #[arg(long)]
        feed: PathBuf,
        /// Frames per run.
        #[arg(long, default_value_t = 1_000_000)]
        frames: u32,
        /// Runs per case.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// CPU to pin the sender to.
        #[arg(long, default_value_t = 1)]
        cpu: usize,
    },
}

fn main() -> anyhow::Result<()> {
    match Args::parse().command {
        Cmd::GenFeed { out, count, seed } => gen_feed(&out, count, seed),
        Cmd::Load { feed, pin_dir, runs } => {
            let r = load(&feed, &pin_dir, runs);
            let _ = Filter::at(&pin_dir).purge();
            r
        }
        Cmd::Live { netns, pin_dir, feed, frames, runs, cpu } => {
            let r = live(&netns, &pin_dir, &feed, frames, runs, cpu);
            let _ = Filter::at(&pin_dir).purge();
            r
        }
    }
}

/// splitmix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Whether a range may be in the generated feed: public unicast space, and
/// not the ranges the benchmark sends from as "unlisted" or "blocklisted".
fn public(a: u32) -> bool {
    let [o1, o2, ..] = a.to_be_bytes();
    !(o1 == 0
        || o1 == 10
        || o1 == 127
        || o1 >= 224
        || (o1 == 192 && o2 == 168)
        || (o1 == 172 && (16..32).contains(&o2))
        || (o1 == 198 && (18..20).contains(&o2))
        || (o1 == 100 && (64..128).contains(&o2)))
}

/// `count` non-overlapping ranges, sorted.
fn ranges(count: usize, seed: u64) -> Vec<(u32, u8)> {
    let mut rng = Rng(seed);
    let mut out: Vec<(u32, u8)> = Vec::new();
    let mut want = count + count / 8;
    loop {
        while out.len() < want {
            let r = rng.next();
            let len = match r % 100 {
                0..=59 => 32,
                60..=84 => 24,
                85..=94 => 20 + (r >> 8) % 4,
                _ => 16 + (r >> 8) % 4,
            } as u8;
            let a = ((r >> 32) as u32) & (u32::MAX << (32 - u32::from(len)));
            if public(a) {
                out.push((a, len));
            }
        }
        out.sort_unstable();
        // Drop ranges inside (or equal to) the one before.
        let mut kept: Vec<(u32, u8)> = Vec::with_capacity(out.len());
        for (a, len) in out.drain(..) {
            if let Some(&(pa, plen)) = kept.last() {
                let end = u64::from(pa) + (1u64 << (32 - u32::from(plen)));
                if u64::from(a) < end {
                    continue;
                }
            }
            kept.push((a, len));
        }
        if kept.len() >= count {
            // Keep every n-th so the feed still spans the whole space.
            let step = kept.len() as f64 / count as f64;
            return (0..count).map(|i| kept[(i as f64 * step) as usize]).collect();
        }
        out = kept;
        want = out.len() + (count - out.len()) * 2;
    }
}

fn gen_feed(out: &Path, count: usize, seed: u64) -> anyhow::Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(out).with_context(|| format!("{}", out.display()))?);
    writeln!(f, "#\n# portcullis-feed-bench generated feed, seed {seed}\n# Entries: {count}\n#")?;
    for (a, len) in ranges(count, seed) {
        if len == 32 {
            writeln!(f, "{}", Ipv4Addr::from(a))?;
        } else {
            writeln!(f, "{}/{len}", Ipv4Addr::from(a))?;
        }
    }
    f.flush()?;
    Ok(())
}

fn median_spread(mut xs: Vec<f64>) -> (f64, f64, f64) {
    xs.sort_by(|a, b| a.total_cmp(b));
    let m = if xs.len() % 2 == 1 { xs[xs.len() / 2] } else { (xs[xs.len() / 2 - 1] + xs[xs.len() / 2]) / 2.0 };
    (m, xs[0], xs[xs.len() - 1])
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The kernel's accounting of a pinned map's memory (`memlock` in fdinfo).
fn map_memlock(path: &Path) -> anyhow::Result<u64> {
    use std::os::fd::AsRawFd;
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    #[repr(C)]
    struct ObjGet {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        _pad: u32,
    }
    let mut attr = ObjGet { pathname: c.as_ptr() as u64, bpf_fd: 0, file_flags: 0, path_fd: 0, _pad: 0 };
    const BPF_OBJ_GET: libc::c_long = 7;
    // SAFETY: BPF_OBJ_GET reads the NUL-terminated path named in `attr`.
    let fd =
        unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_GET, &mut attr as *mut ObjGet, std::mem::size_of::<ObjGet>()) };
    if fd < 0 {
        bail!("opening {}: {}", path.display(), std::io::Error::last_os_error());
    }
    // SAFETY: a new fd the kernel just returned.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))?;
    info.lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse().ok())
        .context("no memlock in fdinfo")
}

fn load(feed: &Path, pin_dir: &Path, runs: usize) -> anyhow::Result<()> {
    let filter = Filter::at(pin_dir);
    let _loaded = filter.load_detached()?;
    let trie = pin_dir.join("maps").join(portcullis_common::maps::FEED_V4);
    let empty_mem = map_memlock(&trie)?;
    let (mut parse_ms, mut first_ms, mut same_ms, mut changed_ms, mut cached_ms, mut remove_ms) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut entries = 0;
    let mut per_entry = 0.0;
    for run in 0..runs {
        let t = Instant::now();
        let parsed = feeds::load_file(feed)?;
        parse_ms.push(ms(t.elapsed()));
        entries = parsed.entries.len();
        let mut rules = filter.rules()?;
        let t = Instant::now();
        rules.sync_feed("bench", &parsed.entries)?;
        first_ms.push(ms(t.elapsed()));
        if run == 0 {
            per_entry = (map_memlock(&trie)? - empty_mem) as f64 / entries as f64;
        }
        let t = Instant::now();
        let r = rules.sync_feed("bench", &parsed.entries)?;
        same_ms.push(ms(t.elapsed()));
        assert_eq!((r.added, r.removed), (0, 0));
        // 1 % changed: the first 1 % of ranges replaced by others.
        let n = entries / 100;
        let mut changed: Vec<Cidr> = parsed.entries[n..].to_vec();
        let mut rng = Rng(run as u64 + 99);
        while changed.len() < entries {
            let a = (rng.next() >> 32) as u32;
            if public(a) {
                changed.push(Cidr { addr: Ipv4Addr::from(a).into(), prefix: 32 });
            }
        }
        let t = Instant::now();
        let r = rules.sync_feed("bench", &changed)?;
        changed_ms.push(ms(t.elapsed()));
        assert!(r.removed == n && r.added >= n - n / 100, "{r:?}");
        // The watcher's way: it remembers its last sync.
        let mut cache = None;
        rules.sync_feed_cached("bench", &parsed.entries, &mut cache)?;
        let t = Instant::now();
        let r = rules.sync_feed_cached("bench", &changed, &mut cache)?;
        cached_ms.push(ms(t.elapsed()));
        assert!(r.removed == n && r.added >= n - n / 100, "{r:?}");
        let t = Instant::now();
        rules.remove_feed("bench")?;
        remove_ms.push(ms(t.elapsed()));
    }
    println!("feed load, {entries} entries from {} ({runs} runs; median [min–max] ms):", feed.display());
    for (what, xs) in [
        ("parse the file", parse_ms),
        ("first sync (empty → loaded)", first_ms),
        ("resync, unchanged", same_ms),
        ("resync, 1 % changed", changed_ms),
        ("resync, 1 % changed, cached", cached_ms),
        ("remove the feed", remove_ms),
    ] {
        let (m, lo, hi) = median_spread(xs);
        println!("  {what:<30} {m:>9.1} [{lo:.1}–{hi:.1}]");
    }
    println!("  kernel memory of FEED_V4 per entry (fdinfo memlock): {per_entry:.0} bytes");
    Ok(())
}

fn pin_to_cpu(cpu: usize) -> anyhow::Result<()> {
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET writes inside it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: sets the calling thread's affinity from a valid set.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) } != 0 {
        bail!("pinning to CPU {cpu}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: fills the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The pid of `ksoftirqd/<cpu>`.
fn ksoftirqd(cpu: usize) -> anyhow::Result<u32> {
    let want = format!("ksoftirqd/{cpu}");
    for e in std::fs::read_dir("/proc")? {
        let e = e?;
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        if std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == want) {
            return Ok(pid);
        }
    }
    bail!("no {want}")
}

/// A task's CPU time, ns (`/proc/<pid>/schedstat`).
fn task_cpu_ns(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

const GEN_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const GW_IP: [u8; 4] = [10, 99, 0, 1];
/// Sources of the blocklist case and of unlisted traffic (outside any feed).
const BLOCKED_NET: [u8; 4] = [198, 18, 5, 0];
const UNLISTED: [u8; 4] = [198, 19, 7, 7];

/// A 64-byte Ethernet/IPv4/UDP frame from `src` to the gateway's discard
/// port (valid checksums, so the kernel's stack takes it when it is passed).
fn frame_from(src: [u8; 4]) -> Vec<u8> {
    flood::frame(Kind::Udp, GW_MAC, GEN_MAC, src.into(), GW_IP.into(), 9, 64 - 14 - 20 - 8)
}

struct Bench {
    gen: RawXdp,
    gen_if: u32,
    gw_if: u32,
    frames: u32,
    runs: usize,
    ksoftirqd: u32,
}

/// One case's result: CPU ns per frame (median, min, max) and the kernel's
/// per-frame time (median).
struct Row {
    name: String,
    cpu: (f64, f64, f64),
    kernel: f64,
}

impl Bench {
    /// Sends `frames` frames per run from each of `sources` in turn.
    fn measure(&self, name: &str, sources: &[[u8; 4]]) -> anyhow::Result<Row> {
        let frames: Vec<Vec<u8>> = sources.iter().map(|s| frame_from(*s)).collect();
        // Warm-up.
        run_live(self.gen.fd(), &frames[0], self.frames / 10, self.gen_if, 0)?;
        let (mut cpu, mut kernel) = (Vec::new(), Vec::new());
        for run in 0..self.runs {
            let f = &frames[run % frames.len()];
            let (t0, k0) = (thread_cpu_ns(), task_cpu_ns(self.ksoftirqd));
            let r = run_live(self.gen.fd(), f, self.frames, self.gen_if, 0)?;
            let (t1, k1) = (thread_cpu_ns(), task_cpu_ns(self.ksoftirqd));
            cpu.push(((t1 - t0) + (k1 - k0)) as f64 / f64::from(self.frames));
            kernel.push(f64::from(r.ns_per_run));
        }
        let row = Row { name: name.into(), cpu: median_spread(cpu), kernel: median_spread(kernel).0 };
        eprintln!("  {name}: {:.0} ns/frame", row.cpu.0);
        Ok(row)
    }
}

fn nft(script: &str) -> anyhow::Result<Duration> {
    let path = std::env::temp_dir().join(format!("portcullis-feed-bench-{}.nft", std::process::id()));
    std::fs::write(&path, script)?;
    let t = Instant::now();
    let out = Command::new("nft").arg("-f").arg(&path).output().context("running nft")?;
    let took = t.elapsed();
    let _ = std::fs::remove_file(&path);
    if !out.status.success() {
        bail!("nft -f: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(took)
}

fn nft_flush() -> anyhow::Result<()> {
    nft("flush ruleset\n").map(|_| ())
}

/// An nft ruleset dropping `what` (`ip saddr …` match) at `hook`.
fn nft_drop(hook: &str, set: Option<&[Cidr]>, matcher: &str) -> String {
    let (family, chain) = match hook {
        "ingress" => ("netdev", "type filter hook ingress device \"bgw\" priority 0;"),
        _ => ("ip", "type filter hook prerouting priority raw;"),
    };
    let mut s = format!("flush ruleset\ntable {family} pcbench {{\n");
    if let Some(set) = set {
        s += "  set feed { type ipv4_addr; flags interval; auto-merge;\n    elements = { ";
        let items: Vec<String> = set.iter().map(|c| c.to_string()).collect();
        s += &items.join(",\n      ");
        s += " }\n  }\n";
    }
    s += &format!("  chain c {{ {chain} policy accept;\n    {matcher} drop\n  }}\n}}\n");
    s
}

fn live(netns: &str, pin_dir: &Path, feed: &Path, frames: u32, runs: usize, cpu: usize) -> anyhow::Result<()> {
    portcullis_xdp::netns::enter(netns)?;
    pin_to_cpu(cpu)?;
    let parsed = feeds::load_file(feed)?;
    let v4: Vec<[u8; 4]> = parsed
        .entries
        .iter()
        .filter_map(|c| match c.addr {
            std::net::IpAddr::V4(a) => Some(a.octets()),
            std::net::IpAddr::V6(_) => None,
        })
        .collect();
    // Sources inside the feed, spread over it (the first address of a range).
    let listed: Vec<[u8; 4]> = (0..8).map(|i| v4[i * v4.len() / 8 + 7]).collect();
    let blocked: Vec<[u8; 4]> = vec![[BLOCKED_NET[0], BLOCKED_NET[1], BLOCKED_NET[2], 9]];
    let unlisted = vec![UNLISTED];
    let b = Bench {
        gen: RawXdp::returning(3)?,
        gen_if: ifindex("bgen")?,
        gw_if: ifindex("bgw")?,
        frames,
        runs,
        ksoftirqd: ksoftirqd(cpu)?,
    };
    let mut rows = Vec::new();
    eprintln!("measuring ({runs} runs × {frames} frames per case, CPU {cpu}):");
    // 1. The generator alone: it drops its own frames, nothing is sent.
    {
        let drop_gen = RawXdp::returning(1)?;
        let g = Bench { gen: drop_gen, ..b.shallow()? };
        rows.push(g.measure("generator alone (its program returns XDP_DROP)", &unlisted)?);
    }
    // 2. Bare XDP_DROP on the peer.
    let drop_prog = RawXdp::returning(1)?;
    {
        let _link = drop_prog.attach(b.gw_if)?;
        rows.push(b.measure("sent to the peer, bare XDP_DROP there", &unlisted)?);
    }
    // 3. XDP_PASS then nftables (prerouting raw, then netdev ingress).
    let pass_prog = RawXdp::returning(2)?;
    let cidrs: Vec<Cidr> = parsed.entries.iter().copied().filter(|c| c.addr.is_ipv4()).collect();
    let mut nft_load = Duration::ZERO;
    {
        let _link = pass_prog.attach(b.gw_if)?;
        for hook in ["prerouting", "ingress"] {
            nft(&nft_drop(hook, None, "ip saddr 198.18.5.0/24"))?;
            rows.push(b.measure(&format!("XDP_PASS + nft {hook} rule drop"), &blocked)?);
            nft_load = nft(&nft_drop(hook, Some(&cidrs), "ip saddr @feed"))?;
            rows.push(b.measure(&format!("XDP_PASS + nft {hook} set ({} ranges) drop", cidrs.len()), &listed)?);
        }
    }
    // 4. Passed frames: bare XDP_PASS, then the Portcullis program without
    // and with the feed, then bare XDP_PASS again; all followed by the same
    // nft ingress drop, so that only the XDP program differs.
    nft(&nft_drop("ingress", None, "ip saddr 198.19.7.7"))?;
    {
        let _link = pass_prog.attach(b.gw_if)?;
        rows.push(b.measure("XDP_PASS + nft ingress rule drop (unlisted source)", &unlisted)?);
    }
    let filter = Filter::at(pin_dir);
    filter.attach("bgw", true)?;
    rows.push(b.measure("Portcullis pass, no feed (+ nft ingress drop)", &unlisted)?);
    let t = Instant::now();
    filter.rules()?.sync_feed("bench", &parsed.entries)?;
    let xdp_load = t.elapsed();
    rows.push(b.measure("Portcullis pass, feed loaded (+ nft ingress drop)", &unlisted)?);
    filter.detach("bgw")?;
    {
        let _link = pass_prog.attach(b.gw_if)?;
        rows.push(b.measure("XDP_PASS + nft ingress rule drop (unlisted, again)", &unlisted)?);
    }
    nft_flush()?;
    // 5. Drops by the Portcullis program (the feed stays loaded).
    filter.attach("bgw", true)?;
    let counter = |v: Verdict| -> anyhow::Result<u64> {
        Ok(filter.rules()?.counters()?.into_iter().find(|(x, _)| *x == v).map_or(0, |x| x.1))
    };
    filter.rules()?.add(List::Block, Cidr { addr: Ipv4Addr::from(BLOCKED_NET).into(), prefix: 24 })?;
    let before = counter(Verdict::DropBlocklisted)?;
    rows.push(b.measure("Portcullis blocklist drop", &blocked)?);
    anyhow::ensure!(counter(Verdict::DropBlocklisted)? > before, "the blocklist case did not drop");
    let before = counter(Verdict::DropThreatFeed)?;
    rows.push(b.measure(&format!("Portcullis feed drop ({} ranges)", parsed.entries.len()), &listed)?);
    let dropped = counter(Verdict::DropThreatFeed)? - before;
    anyhow::ensure!(dropped >= u64::from(frames) * runs as u64, "the feed case dropped {dropped} frames only");
    nft_flush()?;
    filter.detach("bgw")?;
    // The program alone (plain BPF_PROG_TEST_RUN, no veth): the same maps,
    // with the blocklist entry and the feed loaded.
    let loaded = filter.load_detached()?;
    let mut alone = Vec::new();
    for (name, sources) in [("blocklist drop", &blocked), ("feed drop", &listed), ("pass, unlisted", &unlisted)] {
        let mut ns = Vec::new();
        for run in 0..runs {
            let f = frame_from(sources[run % sources.len()]);
            ns.push(f64::from(loaded.test_run(&f, frames)?.ns_per_run));
        }
        alone.push((name, median_spread(ns)));
    }
    filter.rules()?.remove_feed("bench")?;
    let f = frame_from(UNLISTED);
    let ns: Vec<f64> =
        (0..runs).map(|_| loaded.test_run(&f, frames).map(|r| f64::from(r.ns_per_run))).collect::<Result<_, _>>()?;
    alone.push(("pass, unlisted, no feed", median_spread(ns)));
    print_rows(&rows, frames, runs);
    println!();
    println!("the Portcullis program alone (BPF_PROG_TEST_RUN, {frames} repeats × {runs} runs; median [min–max] ns):");
    for (name, (m, lo, hi)) in alone {
        println!("  {name:<30} {m:>6.0} [{lo:.0}–{hi:.0}]");
    }
    println!(
        "loading the {} ranges: XDP feed sync {:.0} ms, nft set (nft -f) {:.0} ms",
        cidrs.len(),
        ms(xdp_load),
        ms(nft_load)
    );
    Ok(())
}

impl Bench {
    fn shallow(&self) -> anyhow::Result<Bench> {
        Ok(Bench {
            gen: RawXdp::returning(3)?,
            gen_if: self.gen_if,
            gw_if: self.gw_if,
            frames: self.frames,
            runs: self.runs,
            ksoftirqd: self.ksoftirqd,
        })
    }
}

fn print_rows(rows: &[Row], frames: u32, runs: usize) {
    let find = |prefix: &str| rows.iter().find(|r| r.name.starts_with(prefix)).map_or(f64::NAN, |r| r.cpu.0);
    let gen = find("generator alone");
    let bare = find("sent to the peer");
    println!();
    println!(
        "CPU per 64-byte frame, {runs} runs × {frames} frames; median [min–max] ns; kernel = test-run time per frame"
    );
    println!("{:<58} {:>8} {:>17} {:>8} {:>9}", "case", "ns", "spread", "kernel", "+gen ns");
    for r in rows {
        println!(
            "{:<58} {:>8.0} {:>17} {:>8.0} {:>9.0}",
            r.name,
            r.cpu.0,
            format!("[{:.0}–{:.0}]", r.cpu.1, r.cpu.2),
            r.kernel,
            r.cpu.0 - gen
        );
    }
    let drop_cost = |name: &str| find(name) - gen;
    println!();
    println!("cost of a drop over the generator (ns) and nft/XDP ratios:");
    let xdp_block = drop_cost("Portcullis blocklist drop");
    let xdp_feed = drop_cost("Portcullis feed drop");
    println!("  bare XDP_DROP                 {:>7.0}", bare - gen);
    println!("  Portcullis blocklist drop     {xdp_block:>7.0}");
    println!("  Portcullis feed drop          {xdp_feed:>7.0}");
    // Ratios two ways: the whole receive path of a dropped frame (from the
    // generator on: veth delivery and NAPI included, which every case pays),
    // and the filtering work alone (over a bare XDP_DROP, which is what a
    // frame costs the receiver when nothing looks at it).
    let over_bare = |x: f64| x - (bare - gen);
    println!("  {:<34} {:>7} {:>16} {:>16}", "", "ns", "nft/XDP (path)", "nft/XDP (work)");
    for hook in ["prerouting", "ingress"] {
        let rule = drop_cost(&format!("XDP_PASS + nft {hook} rule drop"));
        let set = drop_cost(&format!("XDP_PASS + nft {hook} set"));
        println!(
            "  nft {hook:<10} rule vs blocklist   {rule:>7.0} {:>15.1}× {:>15.1}×",
            rule / xdp_block,
            over_bare(rule) / over_bare(xdp_block)
        );
        println!(
            "  nft {hook:<10} set vs feed         {set:>7.0} {:>15.1}× {:>15.1}×",
            set / xdp_feed,
            over_bare(set) / over_bare(xdp_feed)
        );
    }
    let base = (find("XDP_PASS + nft ingress rule drop (unlisted source")
        + find("XDP_PASS + nft ingress rule drop (unlisted, again"))
        / 2.0;
    println!(
        "  Portcullis on passed frames: {:+.0} ns without a feed, {:+.0} ns with the feed (over a bare XDP_PASS, \
         mean of the runs before and after)",
        find("Portcullis pass, no feed") - base,
        find("Portcullis pass, feed loaded") - base
    );
}
