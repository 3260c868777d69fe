//! What the drivers read of a process from `/proc` (Linux): its resident
//! memory, open file descriptors, CPU time and bytes read; the machine's
//! CPU time; and this process's open-files limit.
//!
//! `pid` is anything that names a directory of `/proc`: a process id or
//! `"self"`. A process that is gone (or not ours to read) is an
//! [`std::io::Error`] naming the file.

use std::fmt::Display;
use std::io;

/// Resident memory of process `pid` in bytes (`VmRSS` of its
/// `/proc/PID/status`).
pub fn rss_bytes(pid: impl Display) -> io::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}")))?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("no VmRSS in {path}")))?;
    Ok(kib * 1024)
}

/// Open file descriptors of process `pid` (entries of `/proc/PID/fd`).
pub fn open_fds(pid: impl Display) -> io::Result<usize> {
    let path = format!("/proc/{pid}/fd");
    let dir = std::fs::read_dir(&path).map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}")))?;
    Ok(dir.filter(|e| e.is_ok()).count())
}

/// CPU seconds so far: of process `pid` (user + system) and of the whole
/// machine (busy: user, nice, system, irq, softirq).
pub fn cpu_seconds(pid: impl Display) -> io::Result<(f64, f64)> {
    // SAFETY: a plain getter.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which may contain spaces.
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("").split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    let process = (ticks(11) + ticks(12)) / hz;
    let machine = std::fs::read_to_string("/proc/stat")?;
    let cpu: Vec<f64> =
        machine.lines().next().unwrap_or("").split_whitespace().skip(1).map(|v| v.parse().unwrap_or(0.0)).collect();
    let busy = [0, 1, 2, 5, 6].iter().map(|&i| cpu.get(i).copied().unwrap_or(0.0)).sum::<f64>() / hz;
    Ok((process, busy))
}

/// Bytes process `pid` has read so far through read(2) and its kind, from
/// files and sockets alike (`rchar` of `/proc/PID/io`).
pub fn read_bytes(pid: impl Display) -> io::Result<u64> {
    let path = format!("/proc/{pid}/io");
    let io = std::fs::read_to_string(&path).map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}")))?;
    io.lines()
        .find_map(|l| l.strip_prefix("rchar:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("no rchar in {path}")))
}

/// Raises this process's soft open-files limit to its hard limit; returns
/// the limit now in force.
pub fn raise_open_files_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `lim` is a valid, writable rlimit for the call's duration.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: `lim` is a valid rlimit; raising the soft limit up to the
        // hard one needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(lim.rlim_cur)
}
