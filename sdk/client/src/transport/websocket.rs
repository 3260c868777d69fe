//! WebSocket (`ws://`) to a `transport = "websocket"` listener: one
//! envelope per message, the rest of the SDK sees the codec's byte stream.
//!
//! A bridge task sits between the WebSocket and a [`tokio::io::duplex`]
//! stream handed to the SDK. Frames the SDK writes become one message each
//! (binary for the length-prefixed codecs, text for the line codecs); the
//! framing is told by the first byte the SDK writes, which is 0 for a
//! length-prefixed frame (frames are far below 16 MiB) and never for a line
//! (`{` for JSON, a command for text). Messages received are written back
//! with the framing their type says (binary: length prefix, text: line).
//! The stream ends when the gateway closes; dropping it closes the
//! WebSocket with a close frame.

use std::io;
use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use portcullis_proto::framing::Framing;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

use super::{BoxStream, Dialer};

/// Bytes buffered in each direction between the SDK and the bridge.
const DUPLEX: usize = 256 * 1024;

/// Opens a WebSocket to `addr` (`ws://{addr}/`) through `dialer`.
pub(crate) async fn connect(dialer: &dyn Dialer, addr: SocketAddr) -> io::Result<BoxStream> {
    let tcp = dialer.tcp(addr).await?;
    tcp.set_nodelay(true)?;
    let (ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/"), tcp).await.map_err(io::Error::other)?;
    let (sdk, bridge_end) = tokio::io::duplex(DUPLEX);
    tokio::spawn(bridge(ws, bridge_end));
    Ok(Box::new(sdk))
}

/// Carries bytes both ways until either side ends.
async fn bridge<S, D>(ws: tokio_tungstenite::WebSocketStream<S>, stream: D)
where
    S: AsyncRead + AsyncWrite + Unpin,
    D: AsyncRead + AsyncWrite + Unpin,
{
    let (mut sink, mut source) = ws.split();
    let (mut rd, mut wr) = tokio::io::split(stream);
    let up = async {
        let (mut buf, mut chunk, mut framing) = (Vec::new(), vec![0u8; 64 * 1024], None);
        loop {
            let n = rd.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            let framing = *framing.get_or_insert(if buf[0] == 0 { Framing::LengthPrefixed } else { Framing::Lines });
            let mut used = 0;
            while let Some((body, n)) = framing.next_frame(&buf[used..], usize::MAX).map_err(io::Error::other)? {
                let body = buf[used + body.start..used + body.end].to_vec();
                let msg = match framing {
                    Framing::LengthPrefixed => Message::Binary(body.into()),
                    Framing::Lines => Message::Text(body.try_into().map_err(io::Error::other)?),
                };
                sink.feed(msg).await.map_err(io::Error::other)?;
                used += n;
            }
            sink.flush().await.map_err(io::Error::other)?;
            buf.drain(..used);
        }
        sink.close().await.map_err(io::Error::other)
    };
    let down = async {
        let mut out = Vec::new();
        while let Some(msg) = source.next().await {
            let msg = msg.map_err(io::Error::other)?;
            let (framing, body): (Framing, &[u8]) = match &msg {
                Message::Binary(b) => (Framing::LengthPrefixed, b),
                Message::Text(t) => (Framing::Lines, t.as_bytes()),
                Message::Close(_) => break,
                _ => continue,
            };
            let mark = framing.begin(&mut out);
            out.extend_from_slice(body);
            framing.finish(&mut out, mark);
            wr.write_all(&out).await?;
            out.clear();
        }
        wr.shutdown().await
    };
    // Either end finishing ends both (dropping the WebSocket closes TCP).
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}
