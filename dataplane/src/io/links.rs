//! Game-server links on kernel TCP sockets, for every backend: the core
//! asks for a connection ([`Output::ConnectLink`]), writes and closes; this
//! reports connects, bytes and failures back.

use std::io::{self, Read};
use std::time::Instant;

use mio::net::TcpStream;
use mio::{Interest, Registry};
use portcullis_core::config::Config;
use portcullis_core::route::LinkId;
use portcullis_core::{Gateway, Output};

use super::epoll::Source;
use super::write_some;

struct LinkSocket {
    stream: TcpStream,
    connected: bool,
}

/// One worker's game-server link sockets, indexed by [`LinkId`].
pub struct LinkSockets {
    registry: Registry,
    sockets: Vec<Option<LinkSocket>>,
    buf: Box<[u8]>,
}

impl LinkSockets {
    /// Room for every server of the config, registered in `registry`.
    pub fn new(config: &Config, registry: Registry) -> LinkSockets {
        let count = config.services.iter().map(|s| s.servers.len()).sum();
        LinkSockets {
            registry,
            sockets: (0..count).map(|_| None).collect(),
            buf: vec![0; 64 * 1024].into_boxed_slice(),
        }
    }

    /// Handles readiness of `link`: completes a connect, reports the link
    /// writable, reads what arrived.
    pub fn on_event(&mut self, core: &mut Gateway, link: LinkId, readable: bool, writable: bool, now: Instant) {
        let Some(l) = self.sockets.get_mut(link).and_then(Option::as_mut) else { return };
        if !l.connected {
            if !(writable || readable) {
                return;
            }
            let ok = l.stream.take_error().ok().flatten().is_none() && l.stream.peer_addr().is_ok();
            if !ok {
                self.drop_link(link);
                return core.handle_link_closed(now, link);
            }
            l.connected = true;
            let _ = l.stream.set_nodelay(true);
            core.handle_link_connected(now, link);
        }
        if writable {
            core.handle_link_writable(link);
        }
        if readable {
            self.read(core, link, now);
        }
    }

    fn read(&mut self, core: &mut Gateway, link: LinkId, now: Instant) {
        loop {
            let Some(l) = self.sockets.get_mut(link).and_then(Option::as_mut) else { return };
            match l.stream.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => core.handle_link_data(now, link, &self.buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        self.drop_link(link);
        core.handle_link_closed(now, link);
    }

    fn drop_link(&mut self, link: LinkId) {
        if let Some(mut l) = self.sockets.get_mut(link).and_then(Option::take) {
            let _ = self.registry.deregister(&mut l.stream);
        }
    }

    /// Carries out a link output of the core ([`Output::ConnectLink`],
    /// [`Output::TransmitLink`], [`Output::CloseLink`]); client outputs are
    /// not for it and are ignored.
    pub fn carry_out(&mut self, core: &mut Gateway, out: Output, now: Instant) {
        match out {
            Output::ConnectLink(link, addr) => {
                self.drop_link(link);
                let registered = TcpStream::connect(addr).and_then(|mut stream| {
                    let interest = Interest::READABLE | Interest::WRITABLE;
                    self.registry.register(&mut stream, Source::Link(link).token(), interest)?;
                    Ok(stream)
                });
                if self.sockets.len() <= link {
                    // A game server added to a running gateway.
                    self.sockets.resize_with(link + 1, || None);
                }
                match registered {
                    Ok(stream) => self.sockets[link] = Some(LinkSocket { stream, connected: false }),
                    Err(_) => core.handle_link_closed(now, link),
                }
            }
            Output::TransmitLink(link) => {
                let Some(l) = self.sockets.get_mut(link).and_then(Option::as_mut).filter(|l| l.connected) else {
                    return;
                };
                match write_some(&mut l.stream, core.link_outbound(link)) {
                    Ok(n) => core.consume_link(link, n),
                    Err(_) => {
                        self.drop_link(link);
                        core.handle_link_closed(now, link);
                    }
                }
            }
            Output::CloseLink(link) => self.drop_link(link),
            Output::Transmit(_) | Output::Close(_) => {}
        }
    }
}
