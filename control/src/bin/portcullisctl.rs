//! `portcullisctl`: the operator CLI.
//!
//! - `portcullisctl token --config config/portcullis.toml --user alice` mints
//!   a login token with the gateway's secret (for tests and support).
//! - `portcullisctl check-config config/portcullis.toml` validates a config
//!   the way the dataplane will, without starting anything.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use portcullis_dataplane::Config;
use portcullis_proto::token::{sign, Claims};

/// Operate Portcullis gateways.
#[derive(Parser)]
#[command(version)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Mint a login token signed with the gateway's token secret.
    Token {
        /// Config whose `[auth]` secret signs the token.
        #[arg(long, default_value = "config/portcullis.toml")]
        config: PathBuf,
        /// User id.
        #[arg(long)]
        user: String,
        /// Device type (multi-login policies tell devices apart by it).
        #[arg(long, default_value = "pc")]
        device: String,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
    },
    /// Validate a configuration file.
    CheckConfig {
        /// The file.
        path: PathBuf,
    },
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("portcullisctl: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Command::Token { config, user, device, ttl } => {
            let config = Config::load(&config)?;
            anyhow::ensure!(!user.is_empty(), "--user must not be empty");
            let exp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + ttl;
            println!("{}", sign(&config.auth.token_secret()?, &Claims { uid: user, dev: device, exp }));
        }
        Command::CheckConfig { path } => {
            let c = Config::load(&path)?;
            println!(
                "{}: ok ({} listener(s), {} service(s), {} route(s))",
                path.display(),
                c.listeners.len(),
                c.services.len(),
                c.routes.len()
            );
        }
    }
    Ok(())
}
