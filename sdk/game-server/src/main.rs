//! `portcullis-sample-game-server --listen 127.0.0.1:9000`

use clap::Parser;
use portcullis_sample_game_server::SampleGame;

/// A sample Portcullis game server: echo, chat rooms, a shared counter.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Address gateways connect to.
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: std::net::SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_target(false)
        .init();
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.listen))?;
    tracing::info!("sample game server listening on {}", args.listen);
    tokio::select! {
        r = portcullis_backend_sdk::serve(listener, SampleGame::default()) => r?,
        _ = tokio::signal::ctrl_c() => tracing::info!("stopping"),
    }
    Ok(())
}
