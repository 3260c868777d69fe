//! `BPF_PROG_TEST_RUN`: runs the loaded XDP program over a packet in the
//! kernel, many times, and reports the verdict and the time per run; in
//! live-frames mode ([`run_live`]) it is an in-kernel traffic generator
//! for benchmarks (`benches/scripts/xdp-vs-nft.sh`).

use std::os::fd::RawFd;

/// The outcome of a test run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TestRun {
    /// The XDP action returned (`XDP_PASS` = 2, `XDP_DROP` = 1…).
    pub action: u32,
    /// Mean nanoseconds per run, as the kernel measured.
    pub ns_per_run: u32,
}

#[repr(C)]
#[derive(Default)]
struct TestAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    /// Explicit: the kernel refuses non-zero bytes past the last field.
    _pad: u32,
}

/// Runs program `prog_fd` over `packet` `repeat` times.
pub fn run(prog_fd: RawFd, packet: &[u8], repeat: u32) -> std::io::Result<TestRun> {
    const BPF_PROG_TEST_RUN: libc::c_long = 10;
    let mut attr = TestAttr {
        prog_fd: prog_fd as u32,
        data_size_in: packet.len() as u32,
        data_in: packet.as_ptr() as u64,
        repeat,
        ..Default::default()
    };
    // SAFETY: the kernel reads `packet` (valid for its length) and writes
    // retval/duration into `attr`, whose size is passed.
    let r = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_PROG_TEST_RUN, &mut attr as *mut TestAttr, std::mem::size_of::<TestAttr>())
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(TestRun { action: attr.retval, ns_per_run: attr.duration })
}

/// `BPF_F_TEST_XDP_LIVE_FRAMES`: the frames are sent for real on the
/// XDP action (`XDP_TX` out of `ingress_ifindex`, `XDP_REDIRECT`…).
const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;

/// The `xdp_md` context of a test run.
#[repr(C)]
#[derive(Default)]
struct XdpMd {
    data: u32,
    data_end: u32,
    data_meta: u32,
    ingress_ifindex: u32,
    rx_queue_index: u32,
    egress_ifindex: u32,
}

fn bpf_call<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is the attribute struct of `cmd`, valid for its size;
    // the pointers inside it are valid for the lengths they are given with.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>()) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(r)
}

/// Sends `frame` `count` times for real, from inside the kernel: runs XDP
/// program `prog_fd` over it in live-frames mode as if it arrived on
/// interface `ifindex` (of the calling thread's network namespace), in
/// batches of `batch` (0: the kernel's 64). With a program returning
/// `XDP_TX`, every frame leaves through `ifindex`: on a veth, it arrives at
/// the peer, whose XDP program and stack run in the softirq of this CPU.
/// `ns_per_run` is the kernel's time per frame, which includes that
/// softirq work when it runs inline (it does, batch by batch).
pub fn run_live(prog_fd: RawFd, frame: &[u8], count: u32, ifindex: u32, batch: u32) -> std::io::Result<TestRun> {
    const BPF_PROG_TEST_RUN: libc::c_long = 10;
    let mut ctx = XdpMd { data: 0, data_end: frame.len() as u32, ingress_ifindex: ifindex, ..Default::default() };
    let mut attr = TestAttr {
        prog_fd: prog_fd as u32,
        data_size_in: frame.len() as u32,
        data_in: frame.as_ptr() as u64,
        repeat: count,
        ctx_size_in: std::mem::size_of::<XdpMd>() as u32,
        ctx_in: &mut ctx as *mut XdpMd as u64,
        flags: BPF_F_TEST_XDP_LIVE_FRAMES,
        batch_size: batch,
        ..Default::default()
    };
    bpf_call(BPF_PROG_TEST_RUN, &mut attr)?;
    Ok(TestRun { action: attr.retval, ns_per_run: attr.duration })
}

/// An XDP program of two instructions that returns one action, loaded
/// straight through `bpf(2)`: a traffic generator (`XDP_TX` = 3) for
/// [`run_live`], or a baseline receiver (`XDP_DROP` = 1, `XDP_PASS` = 2).
/// Closed (unloaded) when dropped.
#[derive(Debug)]
pub struct RawXdp {
    fd: std::os::fd::OwnedFd,
}

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// `BPF_XDP`, the attach type of XDP links.
const BPF_XDP: u32 = 37;

impl RawXdp {
    /// Loads a program that returns `action` for every frame.
    pub fn returning(action: u32) -> std::io::Result<RawXdp> {
        use std::os::fd::FromRawFd;
        const BPF_PROG_LOAD: libc::c_long = 5;
        const BPF_PROG_TYPE_XDP: u32 = 6;
        // mov64 r0, action; exit
        let insns: [u64; 2] = [0xb7 | (u64::from(action) << 32), 0x95];
        let license = c"GPL";
        let mut name = [0u8; 16];
        name[..8].copy_from_slice(b"pc_fixed");
        let mut attr = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_XDP,
            insn_cnt: 2,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            prog_name: name,
            expected_attach_type: BPF_XDP,
            ..Default::default()
        };
        let fd = bpf_call(BPF_PROG_LOAD, &mut attr)?;
        // SAFETY: a new fd the kernel just returned, owned by nobody else.
        Ok(RawXdp { fd: unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as RawFd) } })
    }

    /// The program's fd.
    pub fn fd(&self) -> RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.fd)
    }

    /// Attaches the program to interface `ifindex` (calling thread's
    /// network namespace) in native mode, through a BPF link that lasts as
    /// long as the returned value.
    pub fn attach(&self, ifindex: u32) -> std::io::Result<XdpLink> {
        attach_fd(self.fd(), ifindex)
    }
}

/// An XDP attachment by a BPF link; detached when dropped.
#[derive(Debug)]
pub struct XdpLink {
    _fd: std::os::fd::OwnedFd,
}

#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
    _rest: [u64; 4],
}

/// Attaches XDP program `prog_fd` to `ifindex` in native (driver) mode.
pub fn attach_fd(prog_fd: RawFd, ifindex: u32) -> std::io::Result<XdpLink> {
    use std::os::fd::FromRawFd;
    const BPF_LINK_CREATE: libc::c_long = 28;
    const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
    let mut attr = LinkCreateAttr {
        prog_fd: prog_fd as u32,
        target_ifindex: ifindex,
        attach_type: BPF_XDP,
        flags: XDP_FLAGS_DRV_MODE,
        ..Default::default()
    };
    let fd = bpf_call(BPF_LINK_CREATE, &mut attr)?;
    // SAFETY: a new fd the kernel just returned, owned by nobody else.
    Ok(XdpLink { _fd: unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as RawFd) } })
}

/// The index of interface `name` in the calling thread's network namespace.
pub fn ifindex(name: &str) -> std::io::Result<u32> {
    let c = std::ffi::CString::new(name).map_err(std::io::Error::other)?;
    // SAFETY: if_nametoindex reads a NUL-terminated name.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(std::io::Error::new(std::io::ErrorKind::NotFound, format!("no interface {name:?}"))),
        i => Ok(i),
    }
}
