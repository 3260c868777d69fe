//! What only some transports do: QUIC connection migration and
//! address validation.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use portcullis_client::transport::quic;
use portcullis_client::{BoxStream, Client, Connector, Event, TransportKind};
use portcullis_proto::Codec;
use portcullis_sample_game_server::ECHO;
use portcullis_tests::{test_cert, token, Stack, StackOptions};

/// A stack whose listeners speak `transport`.
async fn stack_over(transport: TransportKind, gateway: &str) -> Stack {
    Stack::start_with(StackOptions { transport, config: gateway.into(), ..Default::default() }).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quic_player_whose_address_changes_keeps_its_connection_and_session() {
    let stack = stack_over(TransportKind::Quic, "workers = 2").await;
    let dialer = stack.dialer();
    let endpoint: Arc<Mutex<Option<quic::quinn::Endpoint>>> = Arc::default();
    let dials = Arc::new(AtomicUsize::new(0));
    let (slot, count) = (endpoint.clone(), dials.clone());
    let connector: Connector = Arc::new(move |addr| {
        let (dialer, slot, count) = (dialer.clone(), slot.clone(), count.clone());
        Box::pin(async move {
            count.fetch_add(1, Ordering::SeqCst);
            let stream = quic::connect(dialer.as_ref(), addr, &test_cert().tls).await?;
            *slot.lock().unwrap() = Some(stream.endpoint().clone());
            Ok(Box::new(stream) as BoxStream)
        })
    });
    let (client, mut events) =
        Client::connect_via(stack.addr(Codec::Protobuf), Codec::Protobuf, Duration::from_secs(10), connector)
            .await
            .expect("connect over QUIC");
    client.login(&token("mover")).await.expect("login");
    let endpoint = endpoint.lock().unwrap().clone().expect("the connector kept the endpoint");
    let mut before = endpoint.local_addr().unwrap();
    // Each move is a new source address and port: with two workers, a
    // datagram the kernel spread by address would reach the wrong worker
    // about every other move.
    for moved in 0..5 {
        for k in 0..20 {
            let payload = format!("move {moved} echo {k}");
            let back = client.call(ECHO, payload.as_bytes()).await.expect("echo through the moved connection");
            assert_eq!(back, payload.as_bytes());
        }
        endpoint.rebind(stack.player_udp(moved)).expect("rebind");
        let after = endpoint.local_addr().unwrap();
        assert_ne!(before, after);
        before = after;
    }
    for k in 0..20 {
        let back = client.call(ECHO, format!("last {k}").as_bytes()).await.expect("echo after the last move");
        assert_eq!(back, format!("last {k}").as_bytes());
    }
    assert_eq!(dials.load(Ordering::SeqCst), 1, "the client never reconnected");
    assert!(
        !matches!(events.try_recv(), Ok(Event::Disconnected | Event::Closed)),
        "the connection never dropped"
    );
}
