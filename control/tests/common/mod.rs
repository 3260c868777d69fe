//! A managed gateway for the control-plane tests: a test stack (gateway
//! workers and sample game servers, on loopback or on the AF_XDP harness as
//! `PORTCULLIS_E2E_IO` says) with its agent API on a Unix socket, and the
//! real `portcullis-control` process managing it.
#![allow(dead_code)]

pub mod dashboard;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use portcullis_control::client;
pub use portcullis_control::client::Client;
use portcullis_dataplane::agent::{AgentHandle, AgentState};
use portcullis_proto::pb::admin as pb;
use portcullis_tests::{Stack, StackOptions};

/// The admin token of test control planes.
pub const ADMIN: &str = "admin-token-0123456789abcdef";
/// The read-only token.
pub const READ: &str = "read-token-0123456789abcdef";

/// A port free on loopback, below the ephemeral range (32768–60999 on
/// Linux): a port the OS hands out as free for a listener is also a source
/// port it may give to any test's client connection before control binds
/// it. Tests of one process draw from a counter, processes from their pid.
pub fn free_port() -> SocketAddr {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let base = 20_000 + (std::process::id() % 1_000) as u16 * 10;
    loop {
        let port = base + NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 2_000;
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            return l.local_addr().unwrap();
        }
    }
}

/// A gateway with its agent, and control.
pub struct Managed {
    pub stack: Stack,
    pub dir: PathBuf,
    pub api: SocketAddr,
    pub metrics: SocketAddr,
    pub control: Option<Child>,
    agent: Option<AgentHandle>,
}

impl Managed {
    /// Starts a stack (see [`StackOptions`]), its agent and control.
    pub async fn start(name: &str, opts: StackOptions) -> Managed {
        Self::start_many(name, vec![opts]).await.remove(0)
    }

    /// Starts one stack per options (each its own dataplane, named by its
    /// `gateway.name`), each with its agent, and one control managing them
    /// all; the first `Managed` runs control, the others only their stack.
    pub async fn start_many(name: &str, opts: Vec<StackOptions>) -> Vec<Managed> {
        let dir = std::env::temp_dir().join(format!("portcullis-control-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (api, metrics) = (free_port(), free_port());
        let mut planes = Vec::new();
        let mut dataplanes = String::new();
        for (i, o) in opts.into_iter().enumerate() {
            let stack = Stack::start_with(o).await;
            let socket = dir.join(format!("agent-{i}.sock"));
            let state = AgentState::new(
                &stack.config,
                None,
                "test",
                stack.gateway.shared().clone(),
                stack.gateway.status_reports(),
            );
            let agent = state.serve(&socket).expect("agent API");
            dataplanes += &format!(
                "[[dataplanes]]\nname = \"{}\"\nsocket = \"{}\"\n",
                stack.config.gateway.name,
                socket.display()
            );
            planes.push(Managed { stack, dir: dir.clone(), api, metrics, control: None, agent: Some(agent) });
        }
        std::fs::write(
            dir.join("control.toml"),
            format!(
                "[api]\nlisten = \"{api}\"\n\
                 [[api.tokens]]\nname = \"ops\"\ntoken = \"{ADMIN}\"\nrole = \"admin\"\n\
                 [[api.tokens]]\nname = \"dashboard\"\ntoken = \"{READ}\"\nrole = \"read\"\n\
                 [metrics]\nlisten = \"{metrics}\"\n{dataplanes}"
            ),
        )
        .unwrap();
        planes[0].start_control().await;
        planes
    }

    /// Starts (or restarts) the control process and waits until it answers.
    pub async fn start_control(&mut self) {
        let child = Command::new(env!("CARGO_BIN_EXE_portcullis-control"))
            .arg("--config")
            .arg(self.dir.join("control.toml"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("start portcullis-control");
        self.control = Some(child);
        for _ in 0..200 {
            if let Ok(mut c) = self.client(Some(ADMIN)).await {
                if c.status(pb::StatusRequest::default()).await.is_ok_and(|s| s.get_ref().unreachable.is_empty()) {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("portcullis-control never answered with its dataplane reachable");
    }

    /// Kills the control process (SIGKILL, as a crash).
    pub fn kill_control(&mut self) {
        if let Some(mut c) = self.control.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A client of the admin API with `token`.
    pub async fn client(&self, token: Option<&str>) -> anyhow::Result<Client> {
        client::connect(&format!("http://{}", self.api), token, None).await
    }

    /// An admin client.
    pub async fn admin(&self) -> Client {
        self.client(Some(ADMIN)).await.expect("admin client")
    }

    /// Runs portcullisctl with the admin token; its stdout (it must succeed).
    pub fn ctl(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.ctl_as(ADMIN, args);
        assert!(ok, "portcullisctl {args:?} failed: {err}");
        out
    }

    /// Runs portcullisctl with `token`: success, stdout, stderr.
    pub fn ctl_as(&self, token: &str, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_portcullisctl"))
            .arg("--control")
            .arg(format!("http://{}", self.api))
            .args(args)
            .env("PORTCULLIS_TOKEN", token)
            .output()
            .expect("run portcullisctl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// The text of `/metrics`.
    pub async fn scrape(&self) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(self.metrics).await.expect("connect to /metrics");
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").await.unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).await.unwrap();
        let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
        assert!(head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"), "{head}");
        body.to_string()
    }
}

impl Drop for Managed {
    fn drop(&mut self) {
        self.kill_control();
        self.agent.take();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
