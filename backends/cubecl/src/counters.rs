//! How many kernels this thread has launched, how many host-to-device copies it has made, and
//! how often it has waited for the device (a host read or a sync): the diagnostics behind the
//! test that a router step waits once.
//!
//! Counted per thread, at the places every launch, upload and read of this crate goes through
//! (the kernel modules' `launch!` and cubek call, [`crate::DevBuf::upload`],
//! [`crate::DevBuf::read`] and value reads), so tests running on other threads do not disturb a
//! count.

use core::cell::Cell;

std::thread_local! {
    static LAUNCHES: Cell<u64> = const { Cell::new(0) };
    static WAITS: Cell<u64> = const { Cell::new(0) };
    static UPLOADS: Cell<u64> = const { Cell::new(0) };
}

/// Kernel launches, uploads and device waits made by the current thread so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counters {
    /// Kernels enqueued (each a launch of one compute kernel; uploads and copies are not).
    pub launches: u64,
    /// Host reads and syncs: each waits for the work queued before it.
    pub waits: u64,
    /// Host-to-device copies (a value such as a zeroed cell for an atomic maximum, a count the
    /// host merged): queued like a launch, no wait.
    pub uploads: u64,
}

impl core::ops::Sub for Counters {
    type Output = Counters;
    fn sub(self, earlier: Counters) -> Counters {
        Counters {
            launches: self.launches - earlier.launches,
            waits: self.waits - earlier.waits,
            uploads: self.uploads - earlier.uploads,
        }
    }
}

/// The current thread's counts; subtract two of them to count what happened in between.
///
/// ```
/// let before = simbal_cubecl::counters();
/// // ... a router step ...
/// let step = simbal_cubecl::counters() - before;
/// assert_eq!(step.waits, 0);
/// ```
pub fn counters() -> Counters {
    Counters {
        launches: LAUNCHES.with(Cell::get),
        waits: WAITS.with(Cell::get),
        uploads: UPLOADS.with(Cell::get),
    }
}

pub(crate) fn launched() {
    LAUNCHES.with(|c| c.set(c.get() + 1));
}

pub(crate) fn waited() {
    WAITS.with(|c| c.set(c.get() + 1));
}

pub(crate) fn uploaded() {
    UPLOADS.with(|c| c.set(c.get() + 1));
}
