//! The XDP flood filter's userspace side: load and attach the program
//! (`ebpf/portcullis-ebpf`), pin it and its maps under
//! `/sys/fs/bpf/portcullis/` so that it keeps protecting the host while no
//! process holds it, and manage its rules from any process through the
//! pinned maps.
//!
//! Layout of the pin directory:
//!
//! ```text
//! /sys/fs/bpf/portcullis/maps/<MAP>      every map, reused by later loads
//! /sys/fs/bpf/portcullis/links/<iface>   the attachment of one interface
//! ```
//!
//! Blocklist entries may expire ([`Rules::block_for`]). The program itself
//! stops applying an entry at its expiry, with no userspace process
//! running; the entry stays in the map, where it no longer blocks, until
//! [`Rules::purge_expired`] (run by the CLI whenever it lists) removes it.
//! Expiries are CLOCK_MONOTONIC times, the clock of `bpf_ktime_get_ns`: a
//! process in another time namespace must not write them.

use portcullis_common::cidr;
pub mod feeds;
pub mod netns;
pub mod testrun;

use std::collections::HashMap as StdHashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, Map, MapData, MapError, PerCpuArray, PerCpuValues};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{Xdp, XdpMode};
use aya::EbpfLoader;
pub use cidr::{Cidr, CidrError};
pub use feeds::{spawn_feed_watcher, FeedError, FeedSpec, FeedStatus, FeedWatcher, Parsed, SyncReport};
use portcullis_common::{
    block_value, ip_proto, maps, port_index, Bucket, FeedInfo, FeedValue, FilterConfig, Verdict, BLOCK_PERMANENT,
    MAX_FEEDS,
};

/// Largest rate or burst: keeps the bucket arithmetic (elapsed ns × rate,
/// burst × 10⁶) inside 64 bits.
pub const MAX_RATE: u32 = 100_000_000;

/// Default pin directory.
pub const PIN_DIR: &str = "/sys/fs/bpf/portcullis";

/// The compiled XDP program, if the BPF toolchain was present at build time.
pub fn program() -> Result<&'static [u8], FilterError> {
    static OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/portcullis-xdp.o"));
    if OBJECT.is_empty() {
        return Err(FilterError::NotBuilt(option_env!("PORTCULLIS_XDP_MISSING").unwrap_or("no toolchain").into()));
    }
    Ok(OBJECT)
}

/// A filter error, with what to do about it where that is known.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// Built without the BPF toolchain.
    #[error("the XDP program was not built ({0}); run ./scripts/setup.sh, then rebuild")]
    NotBuilt(String),
    /// bpffs is not mounted where pins go.
    #[error("{0} is not on a BPF filesystem; mount it: mount -t bpf bpf /sys/fs/bpf (./scripts/setup.sh does)")]
    NoBpffs(String),
    /// Nothing is pinned: the filter was never loaded.
    #[error("no filter is loaded (nothing pinned under {0}); attach it first: portcullisctl filter attach --iface <interface>")]
    NotLoaded(String),
    /// The interface does not exist (in this network namespace).
    #[error("no interface {0:?} in this network namespace")]
    NoInterface(String),
    /// Not attached to that interface.
    #[error("the filter is not attached to {0:?}")]
    NotAttached(String),
    /// A rate or burst that cannot work.
    #[error("{0}")]
    BadRate(String),
    /// A block duration that cannot work (zero).
    #[error("{0}")]
    BadTtl(String),
    /// A map pinned by another build of the filter, whose keys or values
    /// have another size (the blocklists of builds before expiries had
    /// one-byte values). Attaching again converts the blocklists; purging
    /// starts over.
    #[error(
        "{path} was pinned by an older build of the filter ({found}-byte {what}s, this build uses {needed}); \
         attach again to convert it (portcullisctl filter attach --iface <interface>) \
         or remove every pin with portcullisctl filter purge (rules and counters are lost)"
    )]
    StaleMap {
        /// The pinned map.
        path: String,
        /// `key` or `value`.
        what: &'static str,
        /// Its size in the pinned map.
        found: usize,
        /// Its size in this build.
        needed: usize,
    },
    /// A threat feed that cannot be loaded (see [`feeds`]).
    #[error("{0}")]
    Feed(String),
    /// A kernel or aya error, with what was being done.
    #[error("{what}: {source}")]
    Bpf {
        /// What failed.
        what: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

fn bpf<E: std::error::Error + Send + Sync + 'static>(what: impl Into<String>) -> impl FnOnce(E) -> FilterError {
    let what = what.into();
    move |e| FilterError::Bpf { what, source: Box::new(e) }
}

/// The error of opening the pinned map at `path` as a typed map: a size
/// mismatch means another build pinned it, and says what to do.
fn typed(path: &Path, e: MapError) -> FilterError {
    let path = path.display().to_string();
    match e {
        // aya names the size this build asks for `size` and the map's `expected`.
        MapError::InvalidValueSize { size, expected } => {
            FilterError::StaleMap { path, what: "value", found: expected, needed: size }
        }
        MapError::InvalidKeySize { size, expected } => {
            FilterError::StaleMap { path, what: "key", found: expected, needed: size }
        }
        e => bpf(format!("map {path} has an unexpected type"))(e),
    }
}

/// CLOCK_MONOTONIC now, in ns: the clock of `bpf_ktime_get_ns`, which the
/// program compares blocklist expiries with.
fn monotonic_ns() -> Result<u64, FilterError> {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime fills the timespec it is given.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } != 0 {
        return Err(bpf("reading CLOCK_MONOTONIC")(std::io::Error::last_os_error()));
    }
    Ok(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

/// The blocklist value of a block of a `prefix_len`-bit CIDR from `now_ns`
/// for `ttl` (`None`: permanent); see [`portcullis_common::block_value`]. A
/// time past the clock's range blocks for good.
fn expiry_ns(now_ns: u64, ttl: Option<Duration>, prefix_len: u8) -> u64 {
    match ttl {
        None => BLOCK_PERMANENT,
        Some(ttl) => block_value(now_ns.saturating_add(u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX)), prefix_len),
    }
}

/// How long a block valued `expires_ns` still lasts at `now_ns`: `None` if
/// it is over, `Some(None)` if it is permanent.
fn remaining(expires_ns: u64, now_ns: u64) -> Option<Option<Duration>> {
    if !portcullis_common::block_active(expires_ns, now_ns) {
        None
    } else if expires_ns == BLOCK_PERMANENT {
        Some(None)
    } else {
        Some(Some(Duration::from_nanos(expires_ns - now_ns)))
    }
}

/// How the program was attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachMode {
    /// Native (driver) XDP.
    Native,
    /// Generic (SKB) XDP: works on any interface, slower.
    Skb,
}

/// The XDP program of the object.
fn xdp(ebpf: &mut aya::Ebpf) -> Result<&mut Xdp, FilterError> {
    ebpf.program_mut(maps::PROGRAM)
        .ok_or_else(|| FilterError::NotBuilt("the object has no portcullis_xdp program".into()))?
        .try_into()
        .map_err(bpf("the program is not XDP"))
}

/// Whether `path` is on bpffs.
fn on_bpffs(path: &Path) -> bool {
    const BPF_FS_MAGIC: i64 = 0xcafe4a11;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else { return false };
    // SAFETY: `statfs` is plain old data, for which all zeroes is valid.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a struct statfs to fill.
    (unsafe { libc::statfs(c.as_ptr(), &mut st) }) == 0 && st.f_type as i64 == BPF_FS_MAGIC
}

/// The pinned filter under a directory.
#[derive(Debug, Clone)]
pub struct Filter {
    dir: PathBuf,
}

impl Filter {
    /// The filter pinned under `dir` (default [`PIN_DIR`]).
    pub fn at(dir: impl Into<PathBuf>) -> Filter {
        Filter { dir: dir.into() }
    }

    /// The pin directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn maps_dir(&self) -> PathBuf {
        self.dir.join("maps")
    }

    fn link_path(&self, iface: &str) -> PathBuf {
        self.dir.join("links").join(iface)
    }

    /// Whether the program is attached to `iface` (a pinned link exists).
    pub fn is_attached(&self, iface: &str) -> bool {
        self.link_path(iface).exists()
    }

    /// Loads and verifies the program with its maps pinned here, without
    /// attaching it: for `BPF_PROG_TEST_RUN` benchmarks.
    pub fn load_detached(&self) -> Result<Loaded, FilterError> {
        Ok(Loaded { ebpf: self.load()? })
    }

    /// Loads the object with its maps pinned here and verifies the program.
    /// Blocklists pinned by a build before expiries are converted: their
    /// entries become permanent blocks in new maps.
    fn load(&self) -> Result<aya::Ebpf, FilterError> {
        let object = program()?;
        let parent = self.dir.parent().unwrap_or(Path::new("/"));
        if !on_bpffs(parent) && !on_bpffs(&self.dir) {
            return Err(FilterError::NoBpffs(parent.display().to_string()));
        }
        for d in [self.maps_dir(), self.dir.join("links")] {
            std::fs::create_dir_all(&d).map_err(bpf(format!("creating {}", d.display())))?;
        }
        // aya reuses a pinned map without comparing its layout, and the
        // verifier would then refuse the program: old blocklists go aside.
        let legacy = self.set_aside_legacy_blocklists()?;
        let loaded = EbpfLoader::new()
            .default_map_pin_directory(self.maps_dir())
            .load(object)
            .map_err(bpf("loading the XDP program"))
            .and_then(|mut ebpf| {
                xdp(&mut ebpf)?.load().map_err(bpf("verifying the XDP program"))?;
                Ok(ebpf)
            });
        match loaded {
            Ok(mut ebpf) => {
                let converted = !legacy.is_empty();
                for (name, old) in legacy {
                    convert_legacy_blocklist(&mut ebpf, name, old)?;
                }
                if converted {
                    self.rules()?.sync_list_flags()?;
                }
                Ok(ebpf)
            }
            Err(e) => {
                // Pin the old maps back, so that nothing is lost.
                for (name, old) in &legacy {
                    let path = self.maps_dir().join(name);
                    let _ = std::fs::remove_file(&path);
                    let _ = old.pin(&path);
                }
                Err(e)
            }
        }
    }

    /// Unpins the blocklists pinned with one-byte values (builds before
    /// expiries) and returns them, held open. Any other layout than this
    /// build's is an error that says what to do.
    fn set_aside_legacy_blocklists(&self) -> Result<Vec<(&'static str, MapData)>, FilterError> {
        let mut moved = Vec::new();
        for (name, key) in [(maps::BLOCK_V4, 4 + 4), (maps::BLOCK_V6, 4 + 16)] {
            let path = self.maps_dir().join(name);
            if !path.exists() {
                continue;
            }
            let map = MapData::from_pin(&path).map_err(bpf(format!("opening {}", path.display())))?;
            let info = map.info().map_err(bpf(format!("reading {}", path.display())))?;
            let (key_size, value_size) = (info.key_size() as usize, info.value_size() as usize);
            let stale =
                |what, found, needed| FilterError::StaleMap { path: path.display().to_string(), what, found, needed };
            if key_size != key {
                return Err(stale("key", key_size, key));
            }
            match value_size {
                8 => {}
                1 => {
                    std::fs::remove_file(&path).map_err(bpf(format!("unpinning {}", path.display())))?;
                    moved.push((name, map));
                }
                n => return Err(stale("value", n, 8)),
            }
        }
        Ok(moved)
    }

    /// Loads the program (reusing pinned maps, so rules and counters
    /// survive) and attaches it to `iface` in the calling thread's network
    /// namespace: native mode, falling back to SKB mode unless
    /// `native_only`. The attachment is pinned and outlives this process.
    /// Attaching again replaces the program on that interface.
    pub fn attach(&self, iface: &str, native_only: bool) -> Result<AttachMode, FilterError> {
        let mut ebpf = self.load()?;
        let prog = xdp(&mut ebpf)?;
        // SAFETY: if_nametoindex reads a NUL-terminated name.
        if std::ffi::CString::new(iface).ok().is_none_or(|c| unsafe { libc::if_nametoindex(c.as_ptr()) } == 0) {
            return Err(FilterError::NoInterface(iface.into()));
        }
        // Replace an existing attachment: the old link goes first.
        if self.is_attached(iface) {
            self.detach(iface)?;
        }
        let (id, mode) = match prog.attach(iface, XdpMode::Driver) {
            Ok(id) => (id, AttachMode::Native),
            Err(e) if native_only => return Err(bpf(format!("attaching to {iface} in native mode"))(e)),
            Err(_) => {
                (prog.attach(iface, XdpMode::Skb).map_err(bpf(format!("attaching to {iface}")))?, AttachMode::Skb)
            }
        };
        self.seed_buckets()?;
        let link: FdLink = prog
            .take_link(id)
            .map_err(bpf("taking the link"))?
            .try_into()
            .map_err(bpf("this kernel attached XDP without a BPF link, which cannot be pinned"))?;
        link.pin(self.link_path(iface)).map_err(bpf("pinning the link"))?;
        Ok(mode)
    }

    /// Gives the bucket hash a random key, once per set of pinned maps.
    fn seed_buckets(&self) -> Result<(), FilterError> {
        let mut rules = self.rules()?;
        let mut cfg = rules.rates()?;
        if cfg.seed == 0 {
            let mut seed = [0u8; 4];
            std::io::Read::read_exact(
                &mut std::fs::File::open("/dev/urandom").map_err(bpf("opening /dev/urandom"))?,
                &mut seed,
            )
            .map_err(bpf("reading /dev/urandom"))?;
            cfg.seed = u32::from_ne_bytes(seed) | 1;
            rules.config.set(0, cfg, 0).map_err(bpf("seeding the bucket hash"))?;
        }
        Ok(())
    }

    /// Detaches the program from `iface` (its maps stay pinned).
    pub fn detach(&self, iface: &str) -> Result<(), FilterError> {
        let path = self.link_path(iface);
        if !path.exists() {
            return Err(FilterError::NotAttached(iface.into()));
        }
        let link = PinnedLink::from_pin(&path).map_err(bpf(format!("opening {}", path.display())))?;
        let fd: FdLink = link.unpin().map_err(bpf("unpinning the link"))?;
        drop(fd);
        Ok(())
    }

    /// Interfaces the filter is attached to.
    pub fn attached(&self) -> Vec<String> {
        let Ok(dir) = std::fs::read_dir(self.dir.join("links")) else { return Vec::new() };
        let mut v: Vec<String> = dir.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect();
        v.sort();
        v
    }

    /// Removes every pin: the attachments and the maps (rules and counters
    /// are lost).
    pub fn purge(&self) -> Result<(), FilterError> {
        for iface in self.attached() {
            self.detach(&iface)?;
        }
        if self.dir.exists() {
            std::fs::remove_dir_all(&self.dir).map_err(bpf(format!("removing {}", self.dir.display())))?;
        }
        Ok(())
    }

    /// Registers an AF_XDP socket for receive queue `queue`: gateway-port
    /// traffic of that queue is redirected to it.
    pub fn register_socket(&self, queue: u32, fd: std::os::fd::RawFd) -> Result<(), FilterError> {
        let path = self.maps_dir().join(maps::XSKS);
        if !path.exists() {
            return Err(FilterError::NotLoaded(self.dir.display().to_string()));
        }
        let data = MapData::from_pin(&path).map_err(bpf(format!("opening {}", path.display())))?;
        let map = Map::from_map_data(data).map_err(bpf("reading XSKS"))?;
        let mut xsks: aya::maps::XskMap<MapData> = map.try_into().map_err(bpf("XSKS has an unexpected type"))?;
        // SAFETY: the fd is open for the duration of the call; the kernel
        // takes its own reference.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        xsks.set(queue, fd, 0).map_err(bpf(format!("registering the AF_XDP socket of queue {queue}")))
    }

    /// Opens the pinned maps to read counters and change rules.
    pub fn rules(&self) -> Result<Rules, FilterError> {
        let dir = self.maps_dir();
        let open = |name: &str| -> Result<(Map, PathBuf), FilterError> {
            let path = dir.join(name);
            if !path.exists() {
                return Err(FilterError::NotLoaded(self.dir.display().to_string()));
            }
            let data = MapData::from_pin(&path).map_err(bpf(format!("opening {}", path.display())))?;
            Ok((Map::from_map_data(data).map_err(bpf(format!("reading {}", path.display())))?, path))
        };
        macro_rules! map {
            ($name:expr) => {{
                let (map, path) = open($name)?;
                map.try_into().map_err(|e| typed(&path, e))?
            }};
        }
        Ok(Rules {
            config: map!(maps::CONFIG),
            ports: map!(maps::PORTS),
            block_v4: map!(maps::BLOCK_V4),
            block_v6: map!(maps::BLOCK_V6),
            allow_v4: map!(maps::ALLOW_V4),
            allow_v6: map!(maps::ALLOW_V6),
            buckets: map!(maps::BUCKETS),
            counters: map!(maps::COUNTERS),
            feed_v4: map!(maps::FEED_V4),
            feed_v6: map!(maps::FEED_V6),
            feed_names: map!(maps::FEED_NAMES),
            feed_drops: map!(maps::FEED_DROPS),
        })
    }
}

/// Copies the entries of a blocklist set aside by
/// [`Filter::set_aside_legacy_blocklists`] into the new map `name` of
/// `ebpf`, as permanent blocks; the old map goes when `old` is dropped.
fn convert_legacy_blocklist(ebpf: &mut aya::Ebpf, name: &str, old: MapData) -> Result<(), FilterError> {
    fn copy<const N: usize>(ebpf: &mut aya::Ebpf, name: &str, old: MapData) -> Result<(), FilterError> {
        let what = format!("the old {name}");
        let old = Map::from_map_data(old).map_err(bpf(format!("reading {what}")))?;
        let old: LpmTrie<MapData, [u8; N], u8> = old.try_into().map_err(bpf(format!("reading {what}")))?;
        let map = ebpf.map_mut(name).ok_or_else(|| FilterError::NotBuilt(format!("the object has no {name} map")))?;
        let mut new: LpmTrie<&mut MapData, [u8; N], u64> =
            map.try_into().map_err(bpf(format!("map {name} has an unexpected type")))?;
        for key in old.keys() {
            let key = key.map_err(bpf(format!("reading {what}")))?;
            new.insert(&key, BLOCK_PERMANENT, 0).map_err(bpf(format!("converting {name}")))?;
        }
        Ok(())
    }
    if name == maps::BLOCK_V4 {
        copy::<4>(ebpf, name, old)
    } else {
        copy::<16>(ebpf, name, old)
    }
}

/// A loaded, unattached program.
pub struct Loaded {
    ebpf: aya::Ebpf,
}

impl Loaded {
    /// Runs the program over `packet` `repeat` times in the kernel.
    pub fn test_run(&self, packet: &[u8], repeat: u32) -> Result<testrun::TestRun, FilterError> {
        use std::os::fd::{AsFd, AsRawFd};
        let prog: &Xdp = self
            .ebpf
            .program(maps::PROGRAM)
            .ok_or_else(|| FilterError::NotBuilt("no portcullis_xdp program".into()))?
            .try_into()
            .map_err(bpf("the program is not XDP"))?;
        let fd = prog.fd().map_err(bpf("the program is not loaded"))?;
        testrun::run(fd.as_fd().as_raw_fd(), packet, repeat).map_err(bpf("BPF_PROG_TEST_RUN"))
    }
}

/// Which list a CIDR goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum List {
    /// Dropped entirely.
    Block,
    /// Bypasses the rate limits.
    Allow,
}

/// A protocol of gateway ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// UDP.
    Udp,
    /// TCP.
    Tcp,
}

impl Proto {
    fn number(self) -> u8 {
        match self {
            Proto::Udp => ip_proto::UDP,
            Proto::Tcp => ip_proto::TCP,
        }
    }
}

/// A source's packets dropped for being over its rate (UDP and SYN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceCount {
    /// The source.
    pub addr: IpAddr,
    /// Packets dropped.
    pub dropped: u64,
}

/// A blocklist entry and how long it still blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// The blocked sources.
    pub cidr: Cidr,
    /// Time left until the block ends; `None` for a permanent block.
    pub expires_in: Option<Duration>,
}

type Trie4 = LpmTrie<MapData, [u8; 4], u8>;
type Trie6 = LpmTrie<MapData, [u8; 16], u8>;
type Block4 = LpmTrie<MapData, [u8; 4], u64>;
type Block6 = LpmTrie<MapData, [u8; 16], u64>;

fn v4_cidr(k: &Key<[u8; 4]>) -> Cidr {
    Cidr { addr: IpAddr::V4(Ipv4Addr::from(k.data())), prefix: k.prefix_len() as u8 }
}

fn v6_cidr(k: &Key<[u8; 16]>) -> Cidr {
    Cidr { addr: IpAddr::V6(Ipv6Addr::from(k.data())), prefix: k.prefix_len() as u8 }
}

/// Removes `key` from `trie`: `Ok(false)` if it was not there.
fn remove_key<K: aya::Pod, V: aya::Pod>(
    trie: &mut LpmTrie<MapData, K, V>,
    key: &Key<K>,
    cidr: Cidr,
) -> Result<bool, FilterError> {
    match trie.remove(key) {
        Ok(()) => Ok(true),
        Err(MapError::KeyNotFound) => Ok(false),
        Err(e) => Err(bpf(format!("removing {cidr}"))(e)),
    }
}

/// The filter's maps, opened from their pins.
pub struct Rules {
    config: Array<MapData, FilterConfig>,
    ports: Array<MapData, u8>,
    block_v4: Block4,
    block_v6: Block6,
    allow_v4: Trie4,
    allow_v6: Trie6,
    buckets: Array<MapData, Bucket>,
    counters: PerCpuArray<MapData, u64>,
    feed_v4: LpmTrie<MapData, [u8; 4], FeedValue>,
    feed_v6: LpmTrie<MapData, [u8; 16], FeedValue>,
    feed_names: Array<MapData, FeedInfo>,
    feed_drops: PerCpuArray<MapData, u64>,
}

/// The value of `entry` in `trie`: from `values` (the whole trie, read
/// once) or by one lookup.
fn feed_bits<K: aya::Pod + Eq + std::hash::Hash>(
    trie: &LpmTrie<MapData, K, FeedValue>,
    values: Option<&StdHashMap<(K, u8), u64>>,
    entry: &(K, u8),
    family: &str,
) -> Result<u64, FilterError> {
    if let Some(values) = values {
        return Ok(values.get(entry).copied().unwrap_or(0));
    }
    match trie.get(&Key::new(u32::from(entry.1), entry.0), 0) {
        Ok(v) => Ok(v.feeds),
        Err(MapError::KeyNotFound) => Ok(0),
        Err(e) => Err(bpf(format!("reading the {family} feed trie"))(e)),
    }
}

/// Makes `trie` list exactly `want` for feed bit `bit`: adds first, then
/// removes, so a range listed before and after never stops blocking. The
/// feed's current entries are `known` (a cache of the last sync), or read
/// from the whole trie.
fn sync_trie<K: aya::Pod + Eq + std::hash::Hash + Ord>(
    trie: &mut LpmTrie<MapData, K, FeedValue>,
    want: &[(K, u8)],
    known: Option<&[(K, u8)]>,
    bit: u64,
    family: &str,
) -> Result<SyncReport, FilterError> {
    let (mine, values) = match known {
        Some(known) => (known.to_vec(), None),
        None => {
            let mut values: StdHashMap<(K, u8), u64> = StdHashMap::new();
            for kv in trie.iter() {
                let (k, v) = kv.map_err(bpf(format!("reading the {family} feed trie")))?;
                values.insert((k.data(), k.prefix_len() as u8), v.feeds);
            }
            let mine = values.iter().filter(|(_, f)| **f & bit != 0).map(|(e, _)| *e).collect();
            (mine, Some(values))
        }
    };
    let mut report = SyncReport { entries: want.len(), ..SyncReport::default() };
    let wanted: std::collections::HashSet<&(K, u8)> = want.iter().collect();
    let listed: std::collections::HashSet<&(K, u8)> = mine.iter().collect();
    for entry in want {
        if listed.contains(entry) {
            continue;
        }
        let feeds = feed_bits(trie, values.as_ref(), entry, family)?;
        trie.insert(&Key::new(u32::from(entry.1), entry.0), FeedValue::of(feeds | bit), 0).map_err(|e| {
            let full = matches!(&e, MapError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::ENOSPC));
            let why = if full { " (the feed trie is full)" } else { "" };
            bpf(format!("adding a {family} feed range{why}"))(e)
        })?;
        report.added += 1;
    }
    for entry in &mine {
        if wanted.contains(entry) {
            continue;
        }
        let key = Key::new(u32::from(entry.1), entry.0);
        let rest = feed_bits(trie, values.as_ref(), entry, family)? & !bit;
        if rest == 0 {
            match trie.remove(&key) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(bpf(format!("removing a {family} feed range"))(e)),
            }
        } else {
            trie.insert(&key, FeedValue::of(rest), 0).map_err(bpf(format!("updating a {family} feed range")))?;
        }
        report.removed += 1;
    }
    Ok(report)
}

/// What a process that syncs a feed repeatedly (the feed watcher) knows of
/// it since its last sync, so that the next sync costs lookups for the
/// changed ranges only instead of a read of the whole trie. It is used only
/// while the feed's registry slot still carries the stamp of that sync: a
/// change by another process (the CLI) makes the next sync read the trie.
#[derive(Debug, Clone, Default)]
pub struct FeedCache {
    id: u32,
    stamp: u64,
    v4: Vec<([u8; 4], u8)>,
    v6: Vec<([u8; 16], u8)>,
}

fn info_entries(info: &FeedInfo) -> usize {
    info.entries_v4 as usize + info.entries_v6 as usize
}

fn feed_name(info: &FeedInfo) -> Option<String> {
    let len = info.name.iter().position(|b| *b == 0).unwrap_or(info.name.len());
    (len > 0).then(|| String::from_utf8_lossy(&info.name[..len]).into_owned())
}

impl Rules {
    /// Adds a CIDR to a list; a block added here is permanent (it replaces
    /// the expiry of an entry already there).
    pub fn add(&mut self, list: List, cidr: Cidr) -> Result<(), FilterError> {
        match list {
            List::Block => return self.block_for(cidr, None),
            List::Allow => {
                let prefix = u32::from(cidr.prefix);
                match cidr.addr {
                    IpAddr::V4(a) => self.allow_v4.insert(&Key::new(prefix, a.octets()), 1, 0),
                    IpAddr::V6(a) => self.allow_v6.insert(&Key::new(prefix, a.octets()), 1, 0),
                }
                .map_err(bpf(format!("adding {cidr}")))?;
            }
        }
        self.sync_list_flags()
    }

    /// Blocks a CIDR for `ttl` from now, or for good if `None`. The program
    /// stops blocking at the expiry by itself; the entry stays listed
    /// (inactive) until [`Rules::purge_expired`]. Blocking a CIDR already
    /// listed sets its expiry anew: a permanent block can be made
    /// temporary, and the other way round.
    pub fn block_for(&mut self, cidr: Cidr, ttl: Option<Duration>) -> Result<(), FilterError> {
        if ttl == Some(Duration::ZERO) {
            return Err(FilterError::BadTtl(format!("a block of {cidr} for no time: give a duration above 0")));
        }
        let expires = expiry_ns(monotonic_ns()?, ttl, cidr.prefix);
        let prefix = u32::from(cidr.prefix);
        match cidr.addr {
            IpAddr::V4(a) => self.block_v4.insert(&Key::new(prefix, a.octets()), expires, 0),
            IpAddr::V6(a) => self.block_v6.insert(&Key::new(prefix, a.octets()), expires, 0),
        }
        .map_err(bpf(format!("blocking {cidr}")))?;
        self.sync_list_flags()
    }

    /// Tells the program which lists have entries (it skips empty ones).
    fn sync_list_flags(&mut self) -> Result<(), FilterError> {
        use portcullis_common::lists;
        let mut bits = 0;
        let nonempty = [
            (self.block_v4.keys().next().is_some(), lists::BLOCK_V4),
            (self.block_v6.keys().next().is_some(), lists::BLOCK_V6),
            (self.allow_v4.keys().next().is_some(), lists::ALLOW_V4),
            (self.allow_v6.keys().next().is_some(), lists::ALLOW_V6),
            (self.feed_v4.keys().next().is_some(), lists::FEED_V4),
            (self.feed_v6.keys().next().is_some(), lists::FEED_V6),
        ];
        for (nonempty, bit) in nonempty {
            if nonempty {
                bits |= bit;
            }
        }
        let mut cfg = self.rates()?;
        cfg.lists = bits;
        self.config.set(0, cfg, 0).map_err(bpf("updating the list flags"))
    }

    /// Removes a CIDR from a list (a block whether or not it has expired);
    /// `Ok(false)` if it was not there.
    pub fn remove(&mut self, list: List, cidr: Cidr) -> Result<bool, FilterError> {
        let prefix = u32::from(cidr.prefix);
        let removed = match (list, cidr.addr) {
            (List::Block, _) => self.remove_block(cidr)?,
            (List::Allow, IpAddr::V4(a)) => remove_key(&mut self.allow_v4, &Key::new(prefix, a.octets()), cidr)?,
            (List::Allow, IpAddr::V6(a)) => remove_key(&mut self.allow_v6, &Key::new(prefix, a.octets()), cidr)?,
        };
        self.sync_list_flags()?;
        Ok(removed)
    }

    /// The CIDRs of a list; for the blocklist, those that still block (see
    /// [`Rules::blocked`] for their expiries).
    pub fn list(&self, list: List) -> Result<Vec<Cidr>, FilterError> {
        if list == List::Block {
            return Ok(self.blocked()?.into_iter().map(|e| e.cidr).collect());
        }
        let mut out = Vec::new();
        for k in self.allow_v4.keys() {
            out.push(v4_cidr(&k.map_err(bpf("listing"))?));
        }
        for k in self.allow_v6.keys() {
            out.push(v6_cidr(&k.map_err(bpf("listing"))?));
        }
        Ok(out)
    }

    /// The blocklist entries that still block, IPv4 first, with the time
    /// each has left. Expired entries are left out (and left in the maps:
    /// see [`Rules::purge_expired`]).
    pub fn blocked(&self) -> Result<Vec<Entry>, FilterError> {
        let now = monotonic_ns()?;
        let mut out = Vec::new();
        for (cidr, expires) in self.block_entries()? {
            if let Some(expires_in) = remaining(expires, now) {
                out.push(Entry { cidr, expires_in });
            }
        }
        Ok(out)
    }

    /// Every blocklist entry with its raw expiry, IPv4 first.
    fn block_entries(&self) -> Result<Vec<(Cidr, u64)>, FilterError> {
        let mut out = Vec::new();
        for kv in self.block_v4.iter() {
            let (k, expires) = kv.map_err(bpf("listing the blocklist"))?;
            out.push((v4_cidr(&k), expires));
        }
        for kv in self.block_v6.iter() {
            let (k, expires) = kv.map_err(bpf("listing the blocklist"))?;
            out.push((v6_cidr(&k), expires));
        }
        Ok(out)
    }

    /// Removes the blocklist entries that have expired (they no longer
    /// block, but take room and a lookup) and updates the list flags;
    /// returns how many went. An entry blocked again by another process
    /// between the read and the removal can be lost with them.
    pub fn purge_expired(&mut self) -> Result<usize, FilterError> {
        let now = monotonic_ns()?;
        let mut purged = 0;
        for (cidr, expires) in self.block_entries()? {
            if remaining(expires, now).is_none() && self.remove_block(cidr)? {
                purged += 1;
            }
        }
        if purged > 0 {
            self.sync_list_flags()?;
        }
        Ok(purged)
    }

    /// Removes a blocklist entry, leaving the list flags to the caller.
    fn remove_block(&mut self, cidr: Cidr) -> Result<bool, FilterError> {
        let prefix = u32::from(cidr.prefix);
        match cidr.addr {
            IpAddr::V4(a) => remove_key(&mut self.block_v4, &Key::new(prefix, a.octets()), cidr),
            IpAddr::V6(a) => remove_key(&mut self.block_v6, &Key::new(prefix, a.octets()), cidr),
        }
    }

    /// Sets the per-source rates (packets/s, 0: unlimited) and bursts
    /// (`cfg.lists` and `cfg.seed` are ignored: kept as they are).
    pub fn set_rates(&mut self, mut cfg: FilterConfig) -> Result<(), FilterError> {
        let current = self.rates()?;
        (cfg.lists, cfg.seed) = (current.lists, current.seed);
        for (name, rate, burst) in [("UDP", cfg.udp_rate, cfg.udp_burst), ("SYN", cfg.syn_rate, cfg.syn_burst)] {
            if rate > 0 && burst == 0 {
                return Err(FilterError::BadRate(format!("{name} rate {rate}/s needs a burst of at least 1")));
            }
            if rate > MAX_RATE || burst > MAX_RATE {
                return Err(FilterError::BadRate(format!("{name} rate and burst are at most {MAX_RATE} packets")));
            }
        }
        self.config.set(0, cfg, 0).map_err(bpf("setting the rates"))
    }

    /// The current rates.
    pub fn rates(&self) -> Result<FilterConfig, FilterError> {
        self.config.get(&0, 0).map_err(bpf("reading the rates"))
    }

    /// Makes `port` a gateway port (rate-limited, redirected to AF_XDP).
    pub fn add_port(&mut self, proto: Proto, port: u16) -> Result<(), FilterError> {
        self.ports.set(port_index(port, proto.number()), 1, 0).map_err(bpf(format!("adding port {port}")))
    }

    /// Stops treating `port` as a gateway port; `Ok(false)` if it was not one.
    pub fn remove_port(&mut self, proto: Proto, port: u16) -> Result<bool, FilterError> {
        let i = port_index(port, proto.number());
        let was = self.ports.get(&i, 0).map_err(bpf(format!("reading port {port}")))? != 0;
        self.ports.set(i, 0, 0).map_err(bpf(format!("removing port {port}")))?;
        Ok(was)
    }

    /// The gateway ports.
    pub fn ports(&self) -> Result<Vec<(Proto, u16)>, FilterError> {
        let mut out = Vec::new();
        for (i, v) in self.ports.iter().enumerate() {
            if v.map_err(bpf("listing ports"))? != 0 {
                let proto = if i >= 65_536 { Proto::Tcp } else { Proto::Udp };
                out.push((proto, (i % 65_536) as u16));
            }
        }
        out.sort_by_key(|p| (p.1, p.0 == Proto::Tcp));
        Ok(out)
    }

    /// Every counter, summed over CPUs. A counter the pinned map has no
    /// room for (pinned by a build with fewer verdicts) reads 0.
    pub fn counters(&self) -> Result<Vec<(Verdict, u64)>, FilterError> {
        Verdict::ALL
            .iter()
            .map(|v| match self.counters.get(&(*v as u32), 0) {
                Ok(values) => Ok((*v, values.iter().sum())),
                Err(MapError::OutOfBounds { .. }) => Ok((*v, 0)),
                Err(e) => Err(bpf("reading counters")(e)),
            })
            .collect()
    }

    /// The slot of feed `name`, if it is loaded.
    fn feed_slot(&self, name: &str) -> Result<Option<u32>, FilterError> {
        for id in 0..MAX_FEEDS {
            let info = self.feed_names.get(&id, 0).map_err(bpf("reading the feed registry"))?;
            if feed_name(&info).as_deref() == Some(name) {
                return Ok(Some(id));
            }
        }
        Ok(None)
    }

    /// Makes the feed tries list exactly `entries` for feed `name` (loading
    /// it if new): ranges new to the feed are added, then ranges it no
    /// longer lists are removed, so a reload never leaves a listed range
    /// unblocked and removes what the feed dropped. Ranges listed by other
    /// feeds too stay until every feed listing them drops them. An empty
    /// `entries` is refused (see [`Rules::remove_feed`]): a broken feed file
    /// must not silently wipe a feed.
    pub fn sync_feed(&mut self, name: &str, entries: &[Cidr]) -> Result<SyncReport, FilterError> {
        self.sync_feed_cached(name, entries, &mut None)
    }

    /// [`Rules::sync_feed`] for a process that syncs the same feed again
    /// and again: `cache` (start with `None`) remembers the last sync, so
    /// that a reload costs in proportion to what changed.
    pub fn sync_feed_cached(
        &mut self,
        name: &str,
        entries: &[Cidr],
        cache: &mut Option<FeedCache>,
    ) -> Result<SyncReport, FilterError> {
        if !feeds::valid_name(name) {
            return Err(FilterError::Feed(FeedError::BadName(name.into()).to_string()));
        }
        if entries.is_empty() {
            return Err(FilterError::Feed(format!(
                "feed {name}: no entries; remove the feed instead (portcullisctl filter feed remove {name})"
            )));
        }
        self.sync_feed_inner(name, entries, cache)
    }

    fn sync_feed_inner(
        &mut self,
        name: &str,
        entries: &[Cidr],
        cache: &mut Option<FeedCache>,
    ) -> Result<SyncReport, FilterError> {
        let id = match self.feed_slot(name)? {
            Some(id) => id,
            None => {
                let mut free = None;
                for id in 0..MAX_FEEDS {
                    let info = self.feed_names.get(&id, 0).map_err(bpf("reading the feed registry"))?;
                    if feed_name(&info).is_none() {
                        free = Some(id);
                        break;
                    }
                }
                let id = free.ok_or_else(|| FilterError::Feed(FeedError::TooMany(MAX_FEEDS).to_string()))?;
                // A fresh slot counts its own drops from zero.
                let zero =
                    PerCpuValues::try_from(vec![0u64; aya::util::nr_cpus().map_err(|(_, e)| bpf("counting CPUs")(e))?])
                        .map_err(bpf("zeroing the feed's drop counter"))?;
                self.feed_drops.set(id, zero, 0).map_err(bpf("zeroing the feed's drop counter"))?;
                let mut info = FeedInfo::default();
                info.name[..name.len()].copy_from_slice(name.as_bytes());
                self.feed_names.set(id, info, 0).map_err(bpf("registering the feed"))?;
                id
            }
        };
        let bit = 1u64 << id;
        let (v4, v6) = feeds::split(entries);
        let previous = self.feed_names.get(&id, 0).map_err(bpf("reading the feed registry"))?;
        // The cache holds only if nobody synced this feed since it was made.
        let known = cache.take().filter(|c| c.id == id && c.stamp == previous.loaded_unix_ms && c.stamp != 0);
        let r4 = sync_trie(&mut self.feed_v4, &v4, known.as_ref().map(|c| c.v4.as_slice()), bit, "IPv4");
        let r6 = r4
            .as_ref()
            .ok()
            .map(|_| sync_trie(&mut self.feed_v6, &v6, known.as_ref().map(|c| c.v6.as_slice()), bit, "IPv6"));
        self.sync_list_flags()?;
        let (r4, r6) = (r4?, r6.expect("ran when IPv4 did")?);
        let mut info = FeedInfo::default();
        info.name[..name.len()].copy_from_slice(name.as_bytes());
        info.entries_v4 = v4.len() as u32;
        info.entries_v6 = v6.len() as u32;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        // Strictly increasing: the stamp tells syncs apart (see FeedCache).
        info.loaded_unix_ms = (now.as_millis() as u64).max(previous.loaded_unix_ms + 1);
        if entries.is_empty() {
            info = FeedInfo::default();
        }
        self.feed_names.set(id, info, 0).map_err(bpf("updating the feed registry"))?;
        if !entries.is_empty() {
            *cache = Some(FeedCache { id, stamp: info.loaded_unix_ms, v4, v6 });
        }
        Ok(SyncReport { added: r4.added + r6.added, removed: r4.removed + r6.removed, entries: info_entries(&info) })
    }

    /// Unloads feed `name`: its ranges go (unless another feed lists them)
    /// and its slot is freed. `Ok(None)` if it was not loaded.
    pub fn remove_feed(&mut self, name: &str) -> Result<Option<SyncReport>, FilterError> {
        if self.feed_slot(name)?.is_none() {
            return Ok(None);
        }
        self.sync_feed_inner(name, &[], &mut None).map(Some)
    }

    /// The loaded feeds, by slot.
    pub fn feeds(&self) -> Result<Vec<FeedStatus>, FilterError> {
        let mut out = Vec::new();
        for id in 0..MAX_FEEDS {
            let info = self.feed_names.get(&id, 0).map_err(bpf("reading the feed registry"))?;
            let Some(name) = feed_name(&info) else { continue };
            let drops: PerCpuValues<u64> = self.feed_drops.get(&id, 0).map_err(bpf("reading feed drops"))?;
            out.push(FeedStatus {
                name,
                id,
                entries_v4: info.entries_v4,
                entries_v6: info.entries_v6,
                loaded: std::time::UNIX_EPOCH + Duration::from_millis(info.loaded_unix_ms),
                drops: drops.iter().sum(),
            });
        }
        Ok(out)
    }

    /// The `n` sources with the most packets over their rate.
    pub fn top_sources(&self, n: usize) -> Result<Vec<SourceCount>, FilterError> {
        let mut sums: StdHashMap<[u8; 16], u64> = StdHashMap::new();
        for bucket in self.buckets.iter() {
            let bucket = bucket.map_err(bpf("reading buckets"))?;
            if bucket.dropped > 0 {
                *sums.entry(bucket.key.addr).or_default() += bucket.dropped;
            }
        }
        let mut v: Vec<SourceCount> = sums
            .into_iter()
            .filter(|(_, dropped)| *dropped > 0)
            .map(|(a, dropped)| {
                let v6 = Ipv6Addr::from(a);
                let addr = v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4);
                SourceCount { addr, dropped }
            })
            .collect();
        v.sort_by(|a, b| b.dropped.cmp(&a.dropped).then(a.addr.cmp(&b.addr)));
        v.truncate(n);
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiries_are_now_plus_the_ttl_and_zero_for_good() {
        assert_eq!(expiry_ns(5_000, None, 32), BLOCK_PERMANENT);
        // 7 000 ns rounded up to 256 ns, with the prefix length in the low byte.
        assert_eq!(expiry_ns(5_000, Some(Duration::from_micros(2)), 24), 7_168 | 24);
        assert!(expiry_ns(5_000, Some(Duration::MAX), 128) > u64::MAX - 256, "saturates: blocks for good");
    }

    #[test]
    fn remaining_time_counts_down_to_nothing() {
        assert_eq!(remaining(BLOCK_PERMANENT, 123), Some(None));
        assert_eq!(remaining(10_000, 4_000), Some(Some(Duration::from_nanos(6_000))));
        assert_eq!(remaining(10_000, 10_000), None, "over at its expiry, as the program judges");
        assert_eq!(remaining(10_000, 20_000), None);
    }

    #[test]
    fn a_size_mismatch_says_what_to_do() {
        let e = typed(
            Path::new("/sys/fs/bpf/portcullis/maps/BLOCK_V4"),
            MapError::InvalidValueSize { size: 8, expected: 1 },
        );
        let text = e.to_string();
        assert!(matches!(e, FilterError::StaleMap { found: 1, needed: 8, .. }), "{e:?}");
        assert!(text.contains("BLOCK_V4") && text.contains("1-byte values") && text.contains("filter purge"), "{text}");
    }
}
