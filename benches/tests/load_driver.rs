//! The load driver runs its scenarios end to end (briefly) and reports
//! every request answered.

use std::process::Command;

fn load(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis-load")).args(args).output().expect("run portcullis-load");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

#[test]
fn echo_scenario_prints_rate_and_latency_with_no_errors() {
    let out = load(&["--clients", "4", "--duration", "1", "--warmup", "0"]);
    assert!(out.contains("msg/s") && out.contains("p999") && out.contains(", 0 failed)"), "{out}");
}

#[test]
fn demo_scenario_shows_traffic_and_answers_everything() {
    let out = load(&["--scenario", "demo", "--clients", "6", "--duration", "3"]);
    assert!(out.contains("[  3s] sent:"), "{out}");
    assert!(out.contains("every request was answered"), "{out}");
}

#[test]
fn idle_scenario_measures_memory_per_session() {
    let out = load(&["--scenario", "idle", "--clients", "2000", "--workers", "2"]);
    let per: f64 = out
        .split("MiB, ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no figure in {out}"));
    assert!(per > 0.0 && out.contains("idle 2000 sessions"), "{out}");
}

#[test]
fn raw_and_udp_echo_scenarios_run_against_the_echo_server() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _server = Kill(
        Command::new(env!("CARGO_BIN_EXE_portcullis-load"))
            .args(["--scenario", "serve-echo", "--listen", &addr])
            .spawn()
            .expect("start the echo server"),
    );
    // Bounded wait for it to listen.
    for _ in 0..100 {
        if std::net::TcpStream::connect(&addr).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let common = ["--clients", "4", "--duration", "1", "--warmup", "0", "--gateway", &addr];
    let out = load(&[&["--scenario", "raw-echo"][..], &common].concat());
    assert!(out.contains("raw-echo 4 connections") && out.contains(", 0 failed)"), "{out}");
    let out = load(&[&["--scenario", "udp-echo"][..], &common].concat());
    assert!(out.contains("udp-echo 4 sockets") && out.contains("msg/s"), "{out}");
    let rate: f64 = out.split(": ").nth(1).and_then(|r| r.split(' ').next()).and_then(|n| n.parse().ok()).unwrap();
    assert!(rate > 0.0, "{out}");
}
