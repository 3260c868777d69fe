//! The dataplane binary refuses bad flags and bad configs with a clear
//! message naming what is wrong, and never panics.

use std::process::Command;

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis-dataplane")).args(args).output().expect("run binary");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    (out.status.code().unwrap_or(-1), stderr)
}

fn config_file(name: &str, text: &str) -> String {
    let dir = std::env::temp_dir().join(format!("portcullis-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn unknown_io_backend_lists_the_choices() {
    let (code, err) = run(&["--io", "carrier-pigeon"]);
    assert_eq!(code, 2);
    assert!(err.contains("carrier-pigeon") && err.contains("kernel"), "{err}");
}

#[test]
fn missing_config_names_the_file() {
    let (code, err) = run(&["--config", "/nonexistent/portcullis.toml"]);
    assert_eq!(code, 1);
    assert!(err.contains("/nonexistent/portcullis.toml"), "{err}");
}

#[test]
fn bad_config_values_name_the_key() {
    let shipped = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../config/portcullis.toml")).unwrap();
    for (name, text, expect) in [
        (
            "type.toml",
            shipped.replace("heartbeat_timeout_ms = 30000", "heartbeat_timeout_ms = \"soon\""),
            "heartbeat_timeout_ms",
        ),
        ("codec.toml", shipped.replace("codec = \"json\"", "codec = \"xml\""), "xml"),
        ("route.toml", shipped.replace("service = \"game\"", "service = \"chess\""), "routes[0].service"),
        ("secret.toml", shipped.replace("portcullis-demo-secret-change-me", "short"), "auth.secret"),
        ("unknown.toml", format!("{shipped}\n[metrics]\nport = 1\n"), "metrics"),
    ] {
        let (code, err) = run(&["--config", &config_file(name, &text)]);
        assert_eq!(code, 1, "{name}: {err}");
        assert!(err.contains(expect), "{name}: expected {expect:?} in {err}");
    }
}

#[test]
fn a_taken_port_names_the_listener() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let shipped = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../config/portcullis.toml")).unwrap();
    let text = shipped.replace("127.0.0.1:7000", &format!("127.0.0.1:{port}"));
    let (code, err) = run(&["--config", &config_file("taken.toml", &text)]);
    assert_eq!(code, 1);
    assert!(err.contains("listeners[0].bind"), "{err}");
}

#[test]
fn io_dpdk_needs_the_feature_and_a_dpdk_section() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/portcullis.toml");
    let (code, err) = run(&["--config", shipped, "--io", "dpdk"]);
    assert_eq!(code, 1, "{err}");
    if cfg!(feature = "dpdk") {
        assert!(err.contains("no [dpdk] section"), "{err}");
    } else {
        assert!(err.contains("no DPDK backend") && err.contains("--features dpdk"), "{err}");
    }
}

#[cfg(feature = "dpdk")]
#[test]
fn bad_eal_arguments_name_the_call() {
    let shipped = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../config/portcullis.toml")).unwrap();
    let text = format!("{shipped}\n[dpdk]\neal_args = [\"--no-such-option\"]\naddresses = [\"10.77.0.1/24\"]\n");
    let (code, err) = run(&["--config", &config_file("eal.toml", &text), "--io", "dpdk"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("rte_eal_init failed") && err.contains("--no-such-option"), "{err}");
}
