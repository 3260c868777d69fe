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
        Dispatcher { owners: [None, None], links, unowned: 0 }
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
