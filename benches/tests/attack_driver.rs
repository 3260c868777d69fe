//! The attack driver, in quick mode, runs every phase against a gateway
//! this test starts (kernel sockets, config/portcullis.toml on ports the OS
//! chooses, the sample game server) and reports a row per phase, with no
//! legitimate message lost in the baseline.

use std::process::Command;

use portcullis_core::config::ServerConfig;
use portcullis_core::Config;
use portcullis_dataplane::RunningGateway;
use portcullis_sample_game_server::SampleGame;

const PHASES: [&str; 7] =
    ["baseline", "prelogin-memory", "trickle", "partial-frames", "fd-exhaustion", "nat-junk", "recipient-spam"];

#[test]
fn quick_run_reports_every_phase_and_a_lossless_baseline() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let game = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("game server port");
    let game_addr = game.local_addr().expect("game server address");
    rt.spawn(portcullis_backend_sdk::serve(game, SampleGame::default()));

    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/portcullis.toml");
    let mut config = Config::load(path.as_ref()).expect("config/portcullis.toml");
    for l in &mut config.listeners {
        l.bind.set_port(0);
    }
    config.services[0].servers = vec![ServerConfig::Addr(game_addr)];
    let gateway = RunningGateway::start(&config).expect("start the gateway");

    // The gateway runs in this process: its memory and descriptors are ours.
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis-attack"))
        .args(["--quick", "--gateway", &gateway.addrs[0].to_string()])
        .args(["--gateway-pid", &std::process::id().to_string()])
        .output()
        .expect("run portcullis-attack");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let report = format!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{report}");

    let header: Vec<&str> = stdout
        .lines()
        .find(|l| l.starts_with("phase "))
        .unwrap_or_else(|| panic!("no header: {report}"))
        .split_whitespace()
        .collect();
    let lost = header.iter().position(|&c| c == "legit_lost").unwrap_or_else(|| panic!("no legit_lost: {report}"));
    for phase in PHASES {
        let row: Vec<&str> = stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(phase))
            .unwrap_or_else(|| panic!("no row for {phase}: {report}"))
            .split_whitespace()
            .collect();
        let lost: u64 = row.get(lost).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{phase}: {report}"));
        if phase == "baseline" {
            assert_eq!(lost, 0, "legitimate messages lost without an attack: {report}");
        }
    }
    gateway.stop().expect("stop the gateway");
}
