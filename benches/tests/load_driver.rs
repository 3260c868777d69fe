//! The load driver runs both scenarios end to end (briefly) and reports
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
    assert!(out.contains("msg/s") && out.contains("p999") && out.contains(", 0 errors)"), "{out}");
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
