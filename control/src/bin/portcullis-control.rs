//! `portcullis-control --config config/control.toml`

use std::path::PathBuf;

use clap::Parser;

/// The Portcullis control plane: the admin API, the dataplanes' agents, the
/// XDP filter and Prometheus metrics.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Control configuration file.
    #[arg(long, default_value = "config/control.toml")]
    config: PathBuf,
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_target(false)
        .init();
    let run = || -> anyhow::Result<()> {
        let config = portcullis_control::config::ControlConfig::load(&Args::parse().config)?;
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        runtime.block_on(portcullis_control::run(config))
    };
    if let Err(e) = run() {
        eprintln!("portcullis-control: {e:#}");
        std::process::exit(1);
    }
}
