//! The output dispatcher of a worker: every output of the core goes to
//! whoever owns what it is about — a client connection's transport (by the
//! transport tag of its [`ConnId`]) or the game-server link sockets.
//!
//! A backend lends the dispatcher its transports for one flush; a transport
//! added later (QUIC, KCP) is one more [`ClientTransport`] and one more
//! [`Transport`] tag, with nothing else to change on the output path.

use std::time::Instant;

use portcullis_core::{ConnId, Gateway, Output, Transport};

use super::links::LinkSockets;

/// A transport that owns client connections.
pub trait ClientTransport {
    /// Writes as much of [`Gateway::outbound`] of `conn` as the transport
    /// takes, and reports it with [`Gateway::consume`].
    fn transmit(&mut self, core: &mut Gateway, conn: ConnId);

    /// Writes what is pending, closes `conn` and tells the core
    /// ([`Gateway::handle_disconnect`]).
    fn close(&mut self, now: Instant, core: &mut Gateway, conn: ConnId);
}

/// Routes the core's outputs for one flush.
pub struct Dispatcher<'a> {
    owners: [Option<&'a mut dyn ClientTransport>; Transport::COUNT],
    links: &'a mut LinkSockets,
    /// Outputs about connections whose transport this worker does not
    /// run (none unless there is a bug): each such connection is closed in
    /// the core so that it cannot linger.
    pub unowned: u64,
}

impl<'a> Dispatcher<'a> {
    /// A dispatcher with the worker's link sockets and no client transport yet.
    pub fn new(links: &'a mut LinkSockets) -> Dispatcher<'a> {
        Dispatcher { owners: [None, None, None, None], links, unowned: 0 }
    }

    /// `owner` owns the connections tagged `transport`.
    #[must_use]
    pub fn with(mut self, transport: Transport, owner: &'a mut dyn ClientTransport) -> Dispatcher<'a> {
        self.owners[transport as usize] = Some(owner);
        self
    }

    /// Carries out every output the core has queued
    /// ([`Gateway::poll_output`]) until none is left; returns how many.
    pub fn flush(&mut self, core: &mut Gateway) -> usize {
        let mut n = 0;
        while let Some(out) = core.poll_output() {
            n += 1;
            match out {
                Output::Transmit(conn) | Output::Close(conn) => {
                    let Some(owner) = self.owners[conn.transport() as usize].as_deref_mut() else {
                        self.unowned += 1;
                        core.handle_disconnect(Instant::now(), conn);
                        continue;
                    };
                    match out {
                        Output::Transmit(_) => owner.transmit(core, conn),
                        _ => owner.close(Instant::now(), core, conn),
                    }
                }
                link => self.links.carry_out(core, link, Instant::now()),
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use portcullis_core::auth;
    use portcullis_core::config::Config;
    use portcullis_core::shard::Shared;
    use portcullis_proto::{cmd, Codec, Envelope};

    use super::*;
    use crate::io::epoll::Epoll;

    /// A transport that records what it was asked to do.
    #[derive(Default)]
    struct Recorder {
        transmitted: Vec<ConnId>,
        closed: Vec<ConnId>,
    }

    impl ClientTransport for Recorder {
        fn transmit(&mut self, core: &mut Gateway, conn: ConnId) {
            self.transmitted.push(conn);
            let n = core.outbound(conn).len();
            core.consume(conn, n);
        }

        fn close(&mut self, now: Instant, core: &mut Gateway, conn: ConnId) {
            self.closed.push(conn);
            core.handle_disconnect(now, conn);
        }
    }

    fn core() -> (Gateway, LinkSockets, Epoll) {
        let config = Config::parse(
            r#"
            [[listeners]]
            bind = "127.0.0.1:7000"
            codec = "protobuf"
            [auth]
            kind = "token"
            secret = "0123456789abcdef0123"
            "#,
            "test",
        )
        .unwrap();
        let now = Instant::now();
        let auth = auth::from_config(&config).unwrap();
        let core =
            Gateway::new(&config, 0, Shared::new(1, [7; 32]), auth, now, std::time::Duration::from_secs(1_800_000_000));
        let epoll = Epoll::new().unwrap();
        let links = LinkSockets::new(&config, epoll.registry().unwrap());
        (core, links, epoll)
    }

    fn heartbeat() -> Vec<u8> {
        let mut frame = Vec::new();
        Codec::Protobuf.encode(&Envelope::new(cmd::HEARTBEAT, 1, 0, &[]), &mut frame);
        frame
    }

    #[test]
    fn each_output_goes_to_the_transport_that_owns_the_connection() {
        let (mut core, mut links, _epoll) = core();
        let now = Instant::now();
        let peer = SocketAddr::from(([10, 0, 0, 1], 4000));
        let (kernel, user) = (ConnId::new(Transport::KernelTcp, 1), ConnId::new(Transport::UserTcp, 1));
        for conn in [kernel, user] {
            core.handle_connect(now, conn, 0, peer);
            core.handle_data(now, conn, &heartbeat());
        }
        let (mut k, mut u) = (Recorder::default(), Recorder::default());
        let mut dispatch =
            Dispatcher::new(&mut links).with(Transport::KernelTcp, &mut k).with(Transport::UserTcp, &mut u);
        assert_eq!(dispatch.flush(&mut core), 2);
        assert_eq!(dispatch.unowned, 0);
        assert_eq!((k.transmitted, u.transmitted), (vec![kernel], vec![user]));
        assert_eq!(core.connection_count(), 2);
    }

    #[test]
    fn an_output_for_a_transport_nobody_runs_closes_its_connection() {
        let (mut core, mut links, _epoll) = core();
        let now = Instant::now();
        let user = ConnId::new(Transport::UserTcp, 9);
        core.handle_connect(now, user, 0, SocketAddr::from(([10, 0, 0, 1], 4000)));
        core.handle_data(now, user, &heartbeat());
        let mut k = Recorder::default();
        let mut dispatch = Dispatcher::new(&mut links).with(Transport::KernelTcp, &mut k);
        dispatch.flush(&mut core);
        assert_eq!(dispatch.unowned, 1);
        assert!(k.transmitted.is_empty() && k.closed.is_empty());
        assert_eq!(core.connection_count(), 0, "the core forgot the connection");
    }
}
