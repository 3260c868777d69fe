//! The dataplanes control manages: a gRPC client per agent socket that
//! connects lazily and reconnects by itself (a dataplane that restarts, or
//! a control plane that restarts, needs nothing done), and a task per
//! dataplane that follows its event log and passes every event on to the
//! admin API's watchers.

use std::path::PathBuf;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use pb::agent_client::AgentClient;
use portcullis_proto::pb::admin as pb;
use tokio::sync::broadcast;
use tonic::transport::{Channel, Endpoint};

use crate::config::DataplaneConfig;

/// How long an agent call may take.
pub const AGENT_TIMEOUT: Duration = Duration::from_secs(10);

/// One managed dataplane.
#[derive(Clone)]
pub struct Node {
    /// Its name.
    pub name: String,
    /// Its agent socket.
    pub socket: PathBuf,
    /// A client of its agent API (cheap to clone).
    pub client: AgentClient<Channel>,
}

impl Node {
    /// A client for the agent at `c.socket`; nothing connects until the
    /// first call.
    pub fn new(c: &DataplaneConfig) -> Node {
        let path = c.socket.clone();
        // The URI is a placeholder: the connector dials the Unix socket.
        let channel = Endpoint::from_static("http://agent.invalid")
            .connect_timeout(Duration::from_secs(1))
            .timeout(AGENT_TIMEOUT)
            .connect_with_connector_lazy(tower::service_fn(move |_| {
                let path = path.clone();
                async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
            }));
        Node { name: c.name.clone(), socket: c.socket.clone(), client: AgentClient::new(channel) }
    }

    /// Follows this dataplane's events into `tx` for as long as the process
    /// runs: reconnects every second while the dataplane is unreachable, and
    /// resumes after the last event it passed on (a dataplane holds its last
    /// 4 096), so a short outage loses none.
    pub async fn follow_events(self, tx: broadcast::Sender<pb::Event>) {
        let mut after = 0;
        let mut reported = false;
        loop {
            // Streams have no deadline: only the connect is bounded.
            let mut client = self.client.clone();
            let mut req = tonic::Request::new(pb::WatchRequest { after_seq: after, kinds: Vec::new() });
            req.set_timeout(Duration::from_secs(365 * 24 * 3600));
            match client.watch(req).await {
                Ok(stream) => {
                    if reported {
                        tracing::info!("dataplane {} is back", self.name);
                        reported = false;
                    }
                    let mut stream = stream.into_inner();
                    while let Ok(Some(e)) = stream.message().await {
                        after = e.seq;
                        let _ = tx.send(e);
                    }
                }
                Err(e) if !reported => {
                    tracing::warn!("dataplane {} unreachable at {}: {}", self.name, self.socket.display(), e.message());
                    reported = true;
                }
                Err(_) => {}
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}
