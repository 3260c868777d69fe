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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::DirectDialer;

    /// A WebSocket server that records the messages it gets, sends
    /// `replies`, then closes.
    async fn server(replies: Vec<Message>, expect: usize) -> (SocketAddr, tokio::task::JoinHandle<Vec<Message>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            let mut got = Vec::new();
            while got.len() < expect {
                match ws.next().await {
                    Some(Ok(m @ (Message::Binary(_) | Message::Text(_)))) => got.push(m),
                    Some(Ok(_)) => {}
                    _ => break,
                }
            }
            for r in replies {
                ws.send(r).await.unwrap();
            }
            ws.close(None).await.unwrap();
            got
        });
        (addr, task)
    }

    #[tokio::test]
    async fn each_frame_written_is_one_binary_message_and_messages_come_back_framed() {
        let replies = vec![Message::Binary(b"one".to_vec().into()), Message::Binary(Vec::new().into())];
        let (addr, server) = server(replies, 3).await;
        let mut stream = connect(&DirectDialer, addr).await.unwrap();
        // Two frames in one write, a third cut in the middle of its prefix.
        let f = Framing::LengthPrefixed;
        let mut bytes = f.frame(b"first");
        bytes.extend(f.frame(b"second"));
        let third = f.frame(b"third");
        bytes.extend_from_slice(&third[..2]);
        stream.write_all(&bytes).await.unwrap();
        stream.flush().await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        stream.write_all(&third[2..]).await.unwrap();
        let mut back = Vec::new();
        stream.read_to_end(&mut back).await.unwrap();
        let mut want = f.frame(b"one");
        want.extend(f.frame(b""));
        assert_eq!(back, want, "each message framed, then EOF at the close");
        let got = server.await.unwrap();
        let bodies: Vec<Message> =
            [&b"first"[..], b"second", b"third"].iter().map(|b| Message::Binary(b.to_vec().into())).collect();
        assert_eq!(got, bodies);
    }

    #[tokio::test]
    async fn lines_go_as_text_messages_and_text_comes_back_as_lines() {
        let (addr, server) = server(vec![Message::Text("{\"cmd\":1,\"seq\":1,\"flags\":1}".into())], 2).await;
        let mut stream = connect(&DirectDialer, addr).await.unwrap();
        stream.write_all(b"{\"cmd\":1,\"seq\":1}\nHEARTBEAT 2\r\n").await.unwrap();
        let mut back = Vec::new();
        stream.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"{\"cmd\":1,\"seq\":1,\"flags\":1}\n");
        let got = server.await.unwrap();
        assert_eq!(got, vec![Message::Text("{\"cmd\":1,\"seq\":1}".into()), Message::Text("HEARTBEAT 2".into())]);
    }
}
