//! Types shared between the XDP program (kernel side, `no_std`) and the
//! dataplane that loads it and reads its maps.
//!
//! Every type is `#[repr(C)]` with explicit padding so that both sides agree
//! on the layout of map keys and values byte for byte.
#![no_std]

/// Why the XDP program let a packet through or dropped it. Each reason has
/// its own per-CPU counter, indexed by the discriminant.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not for a gateway port: handed to the kernel (SSH, control plane…).
    PassToKernel = 0,
    /// For a gateway port: redirected to the dataplane's AF_XDP socket.
    Redirected = 1,
    /// Dropped: headers truncated or inconsistent.
    DropMalformed = 2,
    /// Dropped: the source is in a blocklist.
    DropBlocklisted = 3,
    /// Dropped: the source exceeded its packet rate.
    DropRateLimited = 4,
}

impl Verdict {
    /// Number of verdicts, the length of the counter array.
    pub const COUNT: u32 = 5;

    /// Every verdict, in discriminant order.
    pub const ALL: [Verdict; Self::COUNT as usize] = [
        Verdict::PassToKernel,
        Verdict::Redirected,
        Verdict::DropMalformed,
        Verdict::DropBlocklisted,
        Verdict::DropRateLimited,
    ];

    /// The counter name used in metrics (`drop_rate_limited`…).
    pub const fn name(self) -> &'static str {
        match self {
            Verdict::PassToKernel => "pass_to_kernel",
            Verdict::Redirected => "redirected",
            Verdict::DropMalformed => "drop_malformed",
            Verdict::DropBlocklisted => "drop_blocklisted",
            Verdict::DropRateLimited => "drop_rate_limited",
        }
    }
}

/// IP protocol numbers of the gateway ports.
pub mod ip_proto {
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
}

/// Key of the gateway-ports map: traffic to these reaches the dataplane.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortKey {
    /// Destination port, host byte order.
    pub port: u16,
    /// [`ip_proto`] number.
    pub proto: u8,
    /// Explicit padding, always zero.
    pub _pad: u8,
}

impl PortKey {
    /// A key for `port` over `proto`.
    pub const fn new(port: u16, proto: u8) -> Self {
        PortKey { port, proto, _pad: 0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_are_stable() {
        assert_eq!(core::mem::size_of::<PortKey>(), 4);
        assert_eq!(core::mem::align_of::<PortKey>(), 2);
        for (i, v) in Verdict::ALL.iter().enumerate() {
            assert_eq!(*v as usize, i);
        }
    }
}
