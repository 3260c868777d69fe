//! One reused [`Shared`] per thread. `Shared::new` allocates and fills the
//! 64 Ki-slot cross-worker inbox, which took most of each run of the
//! targets that build a core (a few hundred runs per second instead of
//! thousands). A harness shuts its core down at the end of a run; the
//! `Shared` is reused only if nothing of that run is left in it (no user,
//! no admitted connection, no message in the inbox, no other owner),
//! otherwise the next run gets a fresh one. What may carry over is
//! invisible to a single worker: the login order counter and the
//! sessions-moved index (which, with one worker, always names worker 0).

use std::cell::RefCell;
use std::sync::Arc;

use portcullis_core::shard::Shared;

/// The resume key of the harnesses.
pub const RESUME_KEY: [u8; 32] = [3; 32];

thread_local! {
    static SPARE: RefCell<Option<Arc<Shared>>> = const { RefCell::new(None) };
}

/// A clean `Shared` for one worker.
pub fn take() -> Arc<Shared> {
    SPARE.with_borrow_mut(Option::take).unwrap_or_else(|| Shared::new(1, RESUME_KEY))
}

/// Hands `shared` back after its core was dropped; kept if clean.
pub fn give_back(shared: Arc<Shared>) {
    if Arc::strong_count(&shared) == 1
        && shared.user_count() == 0
        && shared.connections() == 0
        && shared.pending(0) == 0
    {
        SPARE.with_borrow_mut(|s| *s = Some(shared));
    }
}

/// Whether a clean `Shared` is waiting (for the seed tests).
pub fn spare() -> bool {
    SPARE.with_borrow(Option::is_some)
}
