//! Connection ids: which transport owns a client connection, and its
//! number within that transport.
//!
//! Every transport of a worker (kernel TCP, userspace TCP, QUIC, KCP) numbers its own connections. A [`ConnId`] carries the owner in its
//! top byte, so one output dispatcher per worker can send each of the core's
//! outputs to the transport that owns the connection, and two transports
//! can never hand the core the same id.

use std::fmt;

/// The transports a client connection can arrive on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Transport {
    /// TCP terminated by the kernel (the kernel-socket backend).
    KernelTcp = 0,
    /// TCP terminated by the userspace stack (the AF_XDP and DPDK backends).
    UserTcp = 1,
    /// QUIC (quinn-proto) over UDP, on any backend.
    Quic = 2,
    /// KCP over UDP, on any backend.
    Kcp = 3,
}

impl Transport {
    /// How many transports there are (for tables indexed by transport).
    pub const COUNT: usize = 4;

    /// Every transport, in the order of their numbers.
    pub const ALL: [Transport; Transport::COUNT] =
        [Transport::KernelTcp, Transport::UserTcp, Transport::Quic, Transport::Kcp];

    /// Its name, as in counters and logs.
    pub fn name(self) -> &'static str {
        match self {
            Transport::KernelTcp => "kernel-tcp",
            Transport::UserTcp => "user-tcp",
            Transport::Quic => "quic",
            Transport::Kcp => "kcp",
        }
    }
}

/// Id of a client connection: the owning [`Transport`] and a number the
/// transport chose, unique among that transport's connections on a worker.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(u64);

impl ConnId {
    /// Bits of the transport's own number.
    pub const LOCAL_BITS: u32 = 56;
    const LOCAL_MASK: u64 = (1 << Self::LOCAL_BITS) - 1;

    /// The connection `local` of `transport`. Only the low
    /// [`ConnId::LOCAL_BITS`] bits of `local` are kept.
    pub const fn new(transport: Transport, local: u64) -> ConnId {
        ConnId(((transport as u64) << Self::LOCAL_BITS) | (local & Self::LOCAL_MASK))
    }

    /// The transport that owns the connection.
    pub fn transport(self) -> Transport {
        match self.0 >> Self::LOCAL_BITS {
            0 => Transport::KernelTcp,
            1 => Transport::UserTcp,
            2 => Transport::Quic,
            _ => Transport::Kcp,
        }
    }

    /// The transport's own number for the connection.
    pub const fn local(self) -> u64 {
        self.0 & Self::LOCAL_MASK
    }
}

impl fmt::Debug for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.transport().name(), self.local())
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_and_number_round_trip() {
        for t in Transport::ALL {
            for local in [0, 1, 0xffff_ffff, (1 << ConnId::LOCAL_BITS) - 1] {
                let id = ConnId::new(t, local);
                assert_eq!((id.transport(), id.local()), (t, local));
            }
        }
        // A number too large for its field cannot spill into the tag.
        assert_eq!(ConnId::new(Transport::KernelTcp, u64::MAX).transport(), Transport::KernelTcp);
        assert_ne!(ConnId::new(Transport::KernelTcp, 7), ConnId::new(Transport::UserTcp, 7));
        assert_eq!(format!("{:?}", ConnId::new(Transport::UserTcp, 3)), "user-tcp#3");
    }
}
