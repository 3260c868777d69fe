//! The kernel backend and file descriptors: the dataplane raises its soft
//! open-files limit to the hard one, and a flood of connections never takes
//! the descriptors reserved for game-server links and the control plane —
//! clients beyond the budget are closed at once, and the gateway keeps
//! serving.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use portcullis_proto::{cmd, Codec, Envelope};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Kills the dataplane whatever happens to the test.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether the gateway closed `s` (EOF or reset) within `wait`.
fn closed_within(s: &mut TcpStream, wait: Duration) -> bool {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 64];
    !matches!(s.read(&mut buf), Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut))
}

#[test]
fn clients_beyond_the_descriptor_budget_are_closed_at_once_and_the_gateway_keeps_serving() {
    let shipped = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../config/portcullis.toml")).unwrap();
    let port = free_port();
    let mut text = shipped.replace("127.0.0.1:7000", &format!("127.0.0.1:{port}"));
    for p in ["7001", "7002", "7003"] {
        text = text.replace(&format!("127.0.0.1:{p}"), &format!("127.0.0.1:{}", free_port()));
    }
    let text = text.replace("fd_reserve = 256", "fd_reserve = 200");
    let path = std::env::temp_dir().join(format!("portcullis-fds-{}.toml", std::process::id()));
    std::fs::write(&path, text).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_portcullis-dataplane"));
    command
        .args(["--config", path.to_str().unwrap(), "--status-every", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    // SAFETY: only setrlimit between fork and exec, which is
    // async-signal-safe; the limits are a valid rlimit.
    unsafe {
        command.pre_exec(|| {
            let r = libc::rlimit { rlim_cur: 128, rlim_max: 256 };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &r) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let mut child = Child(command.spawn().unwrap());
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < Duration::from_secs(10), "the dataplane did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    // 256 descriptors, ~20 in use at start, 200 reserved: a few dozen
    // clients. 100 connect; those beyond the budget are closed at once.
    let mut clients: Vec<TcpStream> = (0..100).map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap()).collect();
    let mut served = Vec::new();
    for mut c in clients.drain(..) {
        if !closed_within(&mut c, Duration::from_millis(300)) {
            served.push(c);
        }
    }
    assert!((10..=56).contains(&served.len()), "{} clients held", served.len());
    // A held client is served: heartbeats are answered.
    let mut frame = Vec::new();
    Codec::Protobuf.encode(&Envelope::new(cmd::HEARTBEAT, 1, 0, b""), &mut frame);
    served[0].write_all(&frame).unwrap();
    served[0].set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answer = [0u8; 4];
    served[0].read_exact(&mut answer).expect("a heartbeat answer");
    // Closing them makes room for new clients.
    served.clear();
    std::thread::sleep(Duration::from_millis(300));
    let mut again = TcpStream::connect(("127.0.0.1", port)).unwrap();
    assert!(!closed_within(&mut again, Duration::from_millis(300)), "room again after the others left");
    drop(again);
    let _ = child.0.kill();
    let mut log = String::new();
    child.0.stdout.take().unwrap().read_to_string(&mut log).unwrap();
    assert!(log.contains("open files: limit 256 (was 128"), "{log}");
    assert!(log.contains("limits.fd_reserve"), "{log}");
}
