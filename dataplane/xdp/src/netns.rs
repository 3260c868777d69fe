//! Network namespaces by name, for the binaries that serve or manage an
//! interface living in one (`--netns`).

use std::io;
use std::os::fd::AsRawFd;

/// Moves the calling thread into network namespace `name` (an `ip netns`
/// name). Unlike `ip netns exec`, only the network namespace changes, so
/// bpffs pins stay visible; threads started afterwards inherit it.
pub fn enter(name: &str) -> io::Result<()> {
    let path = format!("/var/run/netns/{name}");
    let file = std::fs::File::open(&path)
        .map_err(|e| io::Error::new(e.kind(), format!("no network namespace {name:?} ({path}): {e}")))?;
    // SAFETY: setns on a namespace fd we own; it affects this thread only.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("cannot enter network namespace {name:?}: {e}")));
    }
    Ok(())
}
