//! The Portcullis control plane: `portcullis-control` serves the gRPC
//! admin API to operators ([`admin`]), talks to each dataplane's agent API
//! over its Unix socket ([`nodes`]), edits the XDP filter's pinned maps
//! ([`filter`]) and serves Prometheus `/metrics` ([`metrics`]);
//! `portcullisctl` is its command-line client.
//!
//! Control holds no state a dataplane needs: kill it and every dataplane
//! serves on with its last configuration; start it again and it reconnects.

pub mod admin;
pub mod auth;
pub mod cli;
pub mod client;
pub mod config;
pub mod filter;
pub mod metrics;
pub mod nodes;

use std::sync::Arc;

use portcullis_proto::pb::admin as pb;

/// Runs the control plane until the process ends or SIGTERM/SIGINT.
pub async fn run(config: config::ControlConfig) -> anyhow::Result<()> {
    let nodes: Vec<nodes::Node> = config.dataplanes.iter().map(nodes::Node::new).collect();
    let (events, _) = tokio::sync::broadcast::channel(4096);
    let control = Arc::new(admin::Control {
        nodes: nodes.clone(),
        operators: auth::Operators::from_config(&config)?,
        calls: auth::ApiCalls::default(),
        filter: config.filter.as_ref().map(|f| f.pin_dir.clone()),
        events: events.clone(),
    });
    for n in nodes {
        tracing::info!("managing dataplane {} at {}", n.name, n.socket.display());
        tokio::spawn(n.follow_events(events.clone()));
    }
    if let Some(addr) = config.metrics.listen {
        let control = control.clone();
        let metrics = metrics::serve(addr, control);
        tokio::spawn(async move {
            if let Err(e) = metrics.await {
                tracing::error!("{e:#}");
                std::process::exit(1);
            }
        });
    }
    // Reflection v1 and v1alpha: generic clients ask for either.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let (v1, v1alpha) = (reflection().build_v1()?, reflection().build_v1alpha()?);
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<pb::admin_server::AdminServer<admin::AdminService>>().await;
    let mut server = tonic::transport::Server::builder();
    if let (Some(cert), Some(key)) = (&config.api.tls_cert, &config.api.tls_key) {
        let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()));
        let identity = tonic::transport::Identity::from_pem(read(cert)?, read(key)?);
        server = server
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .map_err(|e| anyhow::anyhow!("api.tls_cert/api.tls_key: {e}"))?;
    }
    let addr = config.api.listen;
    let listener =
        tokio::net::TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("api.listen = {addr}: {e}"))?;
    tracing::info!(
        "admin API on {}{}",
        listener.local_addr()?,
        if config.api.tls_cert.is_some() { " (TLS)" } else { "" }
    );
    // Answers leave at once (no Nagle delay behind the client's delayed ACK).
    let incoming = tokio_stream::StreamExt::map(tokio_stream::wrappers::TcpListenerStream::new(listener), |s| {
        s.and_then(|s| s.set_nodelay(true).map(|()| s))
    });
    server
        .add_service(pb::admin_server::AdminServer::new(admin::AdminService(control)))
        .add_service(health)
        .add_service(v1)
        .add_service(v1alpha)
        .serve_with_incoming_shutdown(incoming, shutdown_signal())
        .await?;
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    tracing::info!("shutting down");
}
