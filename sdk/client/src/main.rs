//! `portcullis-client`: try a gateway by hand.
//!
//! ```text
//! portcullis-client --addr 127.0.0.1:7000 --user alice --secret portcullis-demo-secret-change-me
//! portcullis-client --addr 127.0.0.1:7004 --transport websocket --codec json --user bob --secret …
//! portcullis-client --addr 127.0.0.1:7011 --transport quic --ca cert.pem --user carol --secret …
//! > /join room:lobby
//! > /say lobby hello everyone
//! ```

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Parser;
use portcullis_client::{Client, DirectDialer, Encryption, Event, Tls, TransportKind};
use portcullis_proto::token::{sign, Claims};
use portcullis_proto::Codec;
use tokio::io::{AsyncBufReadExt, BufReader};

/// Interactive Portcullis client. Type /help once connected.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Gateway address.
    #[arg(long, default_value = "127.0.0.1:7000")]
    addr: String,
    /// Envelope codec of that listener.
    #[arg(long, value_enum, default_value = "protobuf")]
    codec: CodecArg,
    /// Transport of that listener: tcp, websocket, quic or kcp.
    #[arg(long, default_value = "tcp")]
    transport: TransportKind,
    /// QUIC: the gateway's certificate (or its CA's), PEM.
    #[arg(long, required_if_eq("transport", "quic"))]
    ca: Option<String>,
    /// QUIC: the name the gateway's certificate carries.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// Login token; or mint one with --user and --secret.
    #[arg(long, conflicts_with_all = ["user", "secret"])]
    token: Option<String>,
    /// User id to mint a token for.
    #[arg(long, requires = "secret")]
    user: Option<String>,
    /// Token secret of the gateway (`auth.secret` in its config).
    #[arg(long, requires = "user")]
    secret: Option<String>,
    /// Device type for a minted token.
    #[arg(long, default_value = "pc")]
    device: String,
    /// Session encryption: offer a key when the listener allows it
    /// (preferred), insist on it (required), or never (off).
    #[arg(long, value_enum, default_value = "preferred")]
    encryption: EncryptionArg,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum EncryptionArg {
    Off,
    Preferred,
    Required,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum CodecArg {
    Protobuf,
    Flatbuffers,
    Json,
    Text,
}

const HELP: &str = "commands:
  /join GROUP            join a group            /leave GROUP      leave it
  /to USER TEXT          message a user          /group GROUP TEXT message a group
  /echo TEXT             echo via the game       /say ROOM TEXT    chat in room (join room:ROOM to hear)
  /add [N]               add to shared counter   /get              read it
  /cmd ID [TEXT]         any business command    /quit             log out";

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let token = match (&args.token, &args.user, &args.secret) {
        (Some(t), _, _) => t.clone(),
        (None, Some(user), Some(secret)) => {
            let exp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + 24 * 3600;
            sign(secret.as_bytes(), &Claims { uid: user.clone(), dev: args.device.clone(), exp, role: String::new() })
        }
        _ => anyhow::bail!("give --token, or --user and --secret to mint one"),
    };
    let codec = match args.codec {
        CodecArg::Protobuf => Codec::Protobuf,
        CodecArg::Flatbuffers => Codec::Flatbuffers,
        CodecArg::Json => Codec::Json,
        CodecArg::Text => Codec::Text,
    };
    let addr = tokio::net::lookup_host(&args.addr)
        .await
        .with_context(|| format!("cannot resolve {}", args.addr))?
        .next()
        .with_context(|| format!("no address for {}", args.addr))?;
    let tls = args.ca.as_deref().map(|ca| Tls::from_pem_file(ca, &args.server_name)).transpose()?;
    let connector = portcullis_client::connector_tls(args.transport, std::sync::Arc::new(DirectDialer), tls);
    let (client, mut events) = Client::connect_via(addr, codec, Duration::from_secs(10), connector)
        .await
        .with_context(|| format!("cannot connect to {}", args.addr))?;
    client.set_encryption(match args.encryption {
        EncryptionArg::Off => Encryption::Off,
        EncryptionArg::Preferred => Encryption::Preferred,
        EncryptionArg::Required => Encryption::Required,
    });
    let me = client.login(&token).await.context("login failed")?;
    match client.cipher() {
        Some(cipher) => println!("* session encrypted ({cipher})"),
        None => println!("* session not encrypted"),
    }
    println!("logged in as {} (session {}); /help for commands", me.user_id, me.session_id);
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(Event::Closed) | None => { println!("* connection closed"); return Ok(()); }
                Some(Event::Disconnected) => match client.resume().await {
                    Ok(r) => println!("* connection dropped; resumed session {} ({} message(s) replayed)", r.session_id, r.replayed),
                    Err(e) => { println!("* connection dropped and could not be resumed: {e}"); return Ok(()); }
                },
                Some(e) => print_event(e),
            },
            line = lines.next_line() => {
                let Some(line) = line? else { client.logout().await.ok(); return Ok(()) };
                match run_command(&client, line.trim()).await {
                    Ok(Some(out)) => println!("{out}"),
                    Ok(None) => { client.logout().await.ok(); return Ok(()); }
                    Err(e) => println!("! {e}"),
                }
            }
        }
    }
}

fn print_event(e: Event) {
    match e {
        Event::Push { cmd, payload } => {
            println!("* push {cmd}: {}", String::from_utf8_lossy(&payload))
        }
        Event::Delivery { from_user_id, group, payload, .. } if group.is_empty() => {
            println!("* {from_user_id} → you: {}", String::from_utf8_lossy(&payload))
        }
        Event::Delivery { from_user_id, group, payload, .. } => {
            println!("* [{group}] {from_user_id}: {}", String::from_utf8_lossy(&payload))
        }
        Event::Error { code, message } => println!("* error {code:?}: {message}"),
        Event::Kicked { reason, reconnect } => {
            println!("* kicked: {reason}{}", if reconnect { " (reconnect elsewhere)" } else { "" })
        }
        Event::Disconnected | Event::Closed => {}
    }
}

/// Runs one typed command; `None` means quit.
async fn run_command(client: &Client, line: &str) -> anyhow::Result<Option<String>> {
    let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
    let (arg, text) = rest.split_once(' ').unwrap_or((rest, ""));
    Ok(Some(match word {
        "" => return Ok(Some(String::new())),
        "/help" => HELP.into(),
        "/quit" => return Ok(None),
        "/join" => client.join(arg).await.map(|_| format!("joined {arg}"))?,
        "/leave" => client.leave(arg).await.map(|_| format!("left {arg}"))?,
        "/to" => format!("delivered to {} session(s)", client.send_to_user(arg, text.as_bytes()).await?),
        "/group" => format!("delivered to {} session(s)", client.send_to_group(arg, text.as_bytes(), false).await?),
        "/echo" => String::from_utf8_lossy(&client.call(1000, rest.as_bytes()).await?).into(),
        "/say" => String::from_utf8_lossy(&client.call_keyed(1101, arg.as_bytes(), text.as_bytes()).await?).into(),
        "/add" => format!("counter = {}", String::from_utf8_lossy(&client.call(1200, rest.as_bytes()).await?)),
        "/get" => format!("counter = {}", String::from_utf8_lossy(&client.call(1201, b"").await?)),
        "/cmd" => {
            let id: u32 = arg.parse().context("/cmd takes a numeric command id")?;
            String::from_utf8_lossy(&client.call(id, text.as_bytes()).await?).into()
        }
        _ => format!("unknown command {word:?}; /help lists them"),
    }))
}
