//! `BPF_PROG_TEST_RUN`: runs the loaded XDP program over a packet in the
//! kernel, many times, and reports the verdict and the time per run.

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
