//! Socket buffers that hold memory only while they hold bytes.
//!
//! smoltcp's TCP socket takes its receive and send rings at creation and
//! cannot grow them, so every connection would keep `rx + tx` bytes resident
//! for as long as it lives — 8 KiB for each of 100 000 idle players. Here
//! each socket's two rings are one page-aligned slot of an anonymous mapping
//! instead of two heap allocations. A slot's pages cost nothing until bytes
//! are written into them; when both rings of a connection have been empty
//! for [`RELEASE_AFTER`], the stack hands its pages back to the kernel
//! (`madvise(MADV_DONTNEED)`), and the next byte maps a fresh zero page. An
//! idle player costs its socket's state, not its buffers, and a player who
//! talks again gets its window back without anyone noticing.

use std::collections::VecDeque;
use std::ptr::NonNull;
use std::time::{Duration, Instant};

/// Both rings of a connection empty this long: its pages go back.
pub const RELEASE_AFTER: Duration = Duration::from_secs(2);

/// Slots per mapping: the pool grows by this many at a time.
const SLOTS_PER_CHUNK: usize = 1024;

/// One anonymous mapping of `SLOTS_PER_CHUNK` slots.
struct Chunk {
    base: NonNull<u8>,
    len: usize,
}

impl Drop for Chunk {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` are exactly what `mmap` returned; the pool is
        // dropped after the sockets that borrowed from it (see
        // [`BufferPool`]), so nothing refers to the mapping any more.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

/// The rings of one socket, and the slot to give back when it is removed.
#[derive(Debug)]
pub struct Buffers {
    /// Which slot of the pool.
    pub slot: u32,
    /// The receive ring.
    pub rx: &'static mut [u8],
    /// The send ring.
    pub tx: &'static mut [u8],
}

/// The slots of one network stack.
///
/// The `'static` rings it hands out are valid for as long as the pool
/// lives: it must be dropped after every socket that holds one (the stack
/// declares it after its shards, and fields drop in declaration order).
pub struct BufferPool {
    rx: usize,
    tx: usize,
    chunks: Vec<Chunk>,
    free: Vec<u32>,
    /// Per slot: when its rings last saw bytes, if its pages may be backed.
    touched: Vec<Option<Instant>>,
    /// Slots that may be backed, oldest touch first (roughly: a slot
    /// touched again stays where it was and is looked at again later).
    resident: VecDeque<u32>,
    /// Slots touched and not released since.
    backed: usize,
}

// SAFETY: the pool owns its mappings; a stack and its pool move between
// threads together and are used by one thread at a time.
unsafe impl Send for BufferPool {}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(page).unwrap_or(4096).max(1)
}

impl BufferPool {
    /// A pool of `rx` + `tx` byte slots, each ring rounded up to whole pages
    /// (so that a slot's pages are its own).
    pub fn new(rx: usize, tx: usize) -> BufferPool {
        let page = page_size();
        let round = |n: usize| n.max(1).div_ceil(page) * page;
        BufferPool {
            rx: round(rx),
            tx: round(tx),
            chunks: Vec::new(),
            free: Vec::new(),
            touched: Vec::new(),
            resident: VecDeque::new(),
            backed: 0,
        }
    }

    fn slot_bytes(&self) -> usize {
        self.rx + self.tx
    }

    fn slot_ptr(&self, slot: u32) -> *mut u8 {
        let slot = slot as usize;
        let chunk = &self.chunks[slot / SLOTS_PER_CHUNK];
        // SAFETY: `slot % SLOTS_PER_CHUNK < SLOTS_PER_CHUNK`, so the offset
        // stays inside the chunk's mapping.
        unsafe { chunk.base.as_ptr().add((slot % SLOTS_PER_CHUNK) * self.slot_bytes()) }
    }

    /// Another chunk of free slots; `None` when the kernel refuses the
    /// mapping.
    fn grow(&mut self) -> Option<()> {
        let len = SLOTS_PER_CHUNK * self.slot_bytes();
        // SAFETY: a fresh private anonymous mapping; no existing memory is
        // affected. Pages are reserved lazily (NORESERVE): untouched slots
        // cost address space only.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return None;
        }
        self.chunks.push(Chunk { base: NonNull::new(base.cast())?, len });
        let first = self.touched.len() as u32;
        self.touched.resize(self.touched.len() + SLOTS_PER_CHUNK, None);
        self.free.extend((first..first + SLOTS_PER_CHUNK as u32).rev());
        Some(())
    }

    /// The rings for a new socket; `None` when no memory can be mapped.
    pub fn take(&mut self) -> Option<Buffers> {
        if self.free.is_empty() {
            self.grow()?;
        }
        let slot = self.free.pop()?;
        let base = self.slot_ptr(slot);
        // SAFETY: the slot is free, so no other `Buffers` refers to it; its
        // two halves do not overlap; the mapping outlives every socket (see
        // the type's documentation), which is what `'static` stands for here.
        let (rx, tx) = unsafe {
            (std::slice::from_raw_parts_mut(base, self.rx), std::slice::from_raw_parts_mut(base.add(self.rx), self.tx))
        };
        Some(Buffers { slot, rx, tx })
    }

    /// The socket holding `slot` was removed: its pages go back and the
    /// slot is free again.
    pub fn give_back(&mut self, slot: u32) {
        self.release(slot);
        self.free.push(slot);
    }

    /// Bytes went into or out of the rings of `slot` at `now`.
    pub fn touch(&mut self, slot: u32, now: Instant) {
        if self.touched[slot as usize].replace(now).is_none() {
            self.backed += 1;
            self.resident.push_back(slot);
        }
    }

    /// Up to `max` slots looked at, oldest queued first: those whose rings
    /// saw no bytes since `now - RELEASE_AFTER` go into `out`, and the caller
    /// either [`release`](Self::release)s each (its rings are empty) or
    /// [`touch`](Self::touch)es it again; those touched since go to the back
    /// of the queue.
    pub fn idle(&mut self, now: Instant, max: usize, out: &mut Vec<u32>) {
        out.clear();
        for _ in 0..max {
            let Some(slot) = self.resident.pop_front() else { break };
            match self.touched[slot as usize] {
                // Released or given back since it was queued.
                None => {}
                Some(t) if now.saturating_duration_since(t) >= RELEASE_AFTER => {
                    self.touched[slot as usize] = None;
                    self.backed -= 1;
                    out.push(slot);
                }
                Some(_) => self.resident.push_back(slot),
            }
        }
    }

    /// Hands the pages of `slot` back to the kernel. Only for a slot whose
    /// rings hold no bytes: they read as zeros afterwards.
    pub fn release(&mut self, slot: u32) {
        if self.touched[slot as usize].take().is_some() {
            self.backed -= 1;
        }
        let base = self.slot_ptr(slot);
        // SAFETY: the range is one slot of a live mapping. Its rings hold no
        // bytes (the caller's contract), so nothing reads what was there:
        // a ring reads only bytes written into it after this. No smoltcp
        // call is running (one thread drives the stack).
        unsafe { libc::madvise(base.cast(), self.slot_bytes(), libc::MADV_DONTNEED) };
    }

    /// Slots whose pages may be backed.
    pub fn backed(&self) -> usize {
        self.backed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether the pages of `bytes` are in memory.
    fn in_memory(bytes: &[u8]) -> Vec<bool> {
        let page = page_size();
        let mut v = vec![0u8; bytes.len().div_ceil(page)];
        // SAFETY: `bytes` is page-aligned (a slot's ring) and mapped; `v`
        // has one byte per page.
        let r = unsafe { libc::mincore(bytes.as_ptr() as *mut _, bytes.len(), v.as_mut_ptr()) };
        assert_eq!(r, 0);
        v.iter().map(|b| b & 1 == 1).collect()
    }

    #[test]
    fn pages_are_backed_only_between_a_write_and_their_release() {
        let mut pool = BufferPool::new(4096, 8192);
        let b = pool.take().unwrap();
        assert_eq!((b.rx.len(), b.tx.len()), (4096, 8192));
        assert_eq!(in_memory(b.tx), [false, false], "nothing written, nothing backed");
        b.tx[5000] = 7;
        b.rx[1] = 9;
        assert_eq!(in_memory(b.tx), [false, true]);
        let t0 = Instant::now();
        pool.touch(b.slot, t0);
        assert_eq!(pool.backed(), 1);
        let mut idle = Vec::new();
        pool.idle(t0 + RELEASE_AFTER / 2, 10, &mut idle);
        assert!(idle.is_empty(), "touched too recently");
        pool.idle(t0 + RELEASE_AFTER, 10, &mut idle);
        assert_eq!(idle, [b.slot]);
        pool.release(b.slot);
        assert_eq!(pool.backed(), 0);
        assert_eq!((in_memory(b.rx), in_memory(b.tx)), (vec![false], vec![false, false]));
        assert_eq!((b.rx[1], b.tx[5000]), (0, 0), "released pages read as zeros");
        // A slot given back is handed out again before the pool grows.
        let slot = b.slot;
        pool.give_back(slot);
        assert_eq!(pool.take().unwrap().slot, slot);
    }

    #[test]
    fn slots_do_not_overlap_across_chunks() {
        let mut pool = BufferPool::new(100, 100);
        let all: Vec<Buffers> = (0..SLOTS_PER_CHUNK + 3).map(|_| pool.take().unwrap()).collect();
        assert_eq!(pool.chunks.len(), 2);
        for b in all {
            b.rx.fill(b.slot as u8);
            b.tx.fill(!(b.slot as u8));
        }
        for slot in 0..(SLOTS_PER_CHUNK + 3) as u32 {
            let p = pool.slot_ptr(slot);
            // SAFETY: the slot is mapped and nothing else refers to it now;
            // both offsets are inside it.
            let (rx_first, rx_last, tx_last) = unsafe { (*p, *p.add(pool.rx - 1), *p.add(pool.rx + pool.tx - 1)) };
            assert_eq!((rx_first, rx_last, tx_last), (slot as u8, slot as u8, !(slot as u8)), "slot {slot}");
        }
    }
}
