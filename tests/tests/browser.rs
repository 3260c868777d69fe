//! A real browser: headless Chromium runs `sdk/web/index.html` against a
//! WebSocket listener of the JSON codec — connects, logs in with a token,
//! echoes a text through the sample game server — and reports the echo to
//! a player of the test with SEND_TO_USER. Skips (saying so) where
//! Chromium is not installed (`./scripts/setup.sh` installs it).

use std::path::Path;
use std::time::Duration;

use portcullis_client::{Event, TransportKind};
use portcullis_proto::{cmd, Codec};
use portcullis_tests::{next_event, token, Stack, StackOptions};

/// Percent-encodes a query value.
fn query(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => char::from(b).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Kills the browser when the test ends, however it ends.
struct Browser(std::process::Child, std::path::PathBuf);

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_page_logs_in_and_echoes_over_websocket() {
    let chromium = std::env::var("PORTCULLIS_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).exists() {
        eprintln!(
            "skipping: no Chromium at {chromium} (./scripts/setup.sh installs it; PORTCULLIS_CHROMIUM names another)"
        );
        return;
    }
    let stack = Stack::start_with(StackOptions { transport: TransportKind::WebSocket, ..Default::default() }).await;
    let (_observer, mut events) = stack.player("observer").await;
    let page = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk/web/index.html");
    let page = page.canonicalize().expect("sdk/web/index.html");
    let url = format!(
        "file://{}?url={}&token={}&text={}&report=observer",
        page.display(),
        query(&format!("ws://{}/", stack.addr(Codec::Json))),
        query(&token("browser")),
        query("hello from the browser"),
    );
    let profile = std::env::temp_dir().join(format!("portcullis-chromium-{}", std::process::id()));
    // On the harness the browser plays from the players' namespace.
    let mut command = match stack.players_netns() {
        Some(ns) => {
            let mut c = std::process::Command::new("ip");
            c.args(["netns", "exec", &ns, &chromium]);
            c
        }
        None => std::process::Command::new(&chromium),
    };
    let child = command
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--remote-debugging-port=0")
        .arg(&url)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start Chromium");
    let _browser = Browser(child, profile);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        assert!(tokio::time::Instant::now() < deadline, "the browser never reported");
        match next_event(&mut events, 60).await {
            // Only a logged-in session can send: the browser logged in as
            // its token's user, and its echo came back through the game.
            Event::Delivery { cmd: c, from_user_id, payload, .. } => {
                assert_eq!((c, from_user_id.as_str()), (cmd::SEND_TO_USER, "browser"));
                assert_eq!(String::from_utf8(payload).unwrap(), "echo:hello from the browser");
                break;
            }
            _ => continue,
        }
    }
}
