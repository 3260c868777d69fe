//! One epoll instance per worker (mio): the sockets it owns — listeners,
//! kernel-TCP clients, game-server links, the UDP echo socket — its wake-up
//! from other threads, and optionally a NIC ring's descriptor, with one
//! token space that says which is which.

use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Duration;

use mio::{Events, Interest, Poll, Registry, Token, Waker};
use portcullis_core::route::LinkId;

const WAKE: usize = (1 << 20) - 1;
const UDP_ECHO: usize = (1 << 20) - 2;
const EXTERNAL: usize = (1 << 20) - 3;
const LINK_BASE: usize = 1 << 20;
const CLIENT_BASE: usize = 1 << 21;

/// What an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Another thread woke the worker, or a registered external descriptor
    /// (a NIC ring) became readable.
    Wake,
    /// A listening socket, by listener index.
    Listener(usize),
    /// The UDP echo socket.
    UdpEcho,
    /// A game-server link.
    Link(LinkId),
    /// A kernel-TCP client, by slot.
    Client(usize),
}

impl Source {
    /// The token that stands for it.
    pub fn token(self) -> Token {
        Token(match self {
            Source::Wake => WAKE,
            Source::UdpEcho => UDP_ECHO,
            Source::Listener(i) => i,
            Source::Link(l) => LINK_BASE + l,
            Source::Client(slot) => CLIENT_BASE + slot,
        })
    }

    fn of(token: Token) -> Source {
        match token.0 {
            WAKE | EXTERNAL => Source::Wake,
            UDP_ECHO => Source::UdpEcho,
            t if t < LINK_BASE => Source::Listener(t),
            t if t < CLIENT_BASE => Source::Link(t - LINK_BASE),
            t => Source::Client(t - CLIENT_BASE),
        }
    }
}

/// One readiness event.
#[derive(Debug, Clone, Copy)]
pub struct Ready {
    /// Whose.
    pub source: Source,
    /// Readable, or closed for reading.
    pub readable: bool,
    /// Writable.
    pub writable: bool,
}

/// A worker's epoll instance and its wake-up.
pub struct Epoll {
    poll: Poll,
    events: Events,
    waker: Arc<Waker>,
}

impl Epoll {
    /// A new instance.
    pub fn new() -> io::Result<Epoll> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), Token(WAKE))?);
        Ok(Epoll { poll, events: Events::with_capacity(1024), waker })
    }

    /// Where sockets are registered (a clone lives with each socket owner).
    pub fn registry(&self) -> io::Result<Registry> {
        self.poll.registry().try_clone()
    }

    /// Wakes this worker from its wait (from another thread).
    pub fn waker(&self) -> Arc<Waker> {
        self.waker.clone()
    }

    /// Makes `fd` readable end a wait too (an AF_XDP socket whose owner
    /// waits here when idle).
    pub fn wake_on(&self, fd: RawFd) -> io::Result<()> {
        self.poll.registry().register(&mut mio::unix::SourceFd(&fd), Token(EXTERNAL), Interest::READABLE)
    }

    /// Waits up to `timeout` and puts what is ready into `ready` (cleared
    /// first). An interrupted wait returns nothing.
    pub fn wait(&mut self, timeout: Option<Duration>, ready: &mut Vec<Ready>) -> io::Result<()> {
        ready.clear();
        match self.poll.poll(&mut self.events, timeout) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            r => r?,
        }
        ready.extend(self.events.iter().map(|e| Ready {
            source: Source::of(e.token()),
            readable: e.is_readable() || e.is_read_closed(),
            writable: e.is_writable(),
        }));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_name_their_source() {
        for s in [Source::Wake, Source::UdpEcho, Source::Listener(0), Source::Listener(3), Source::Link(0)] {
            assert_eq!(Source::of(s.token()), s);
        }
        assert_eq!(Source::of(Source::Link(41).token()), Source::Link(41));
        assert_eq!(Source::of(Source::Client(0).token()), Source::Client(0));
        assert_eq!(Source::of(Source::Client(1 << 24).token()), Source::Client(1 << 24));
        assert_eq!(Source::of(Token(EXTERNAL)), Source::Wake);
    }
}
