//! A counting global allocator, for the benches that report heap allocations per request.
//!
//! It counts the allocations (and reallocations) of the threads that asked to be counted
//! ([`count_this_thread`]), while counting is on ([`set_counting`]; on by default), in one
//! counter that [`allocs`] reads. A bench declares it as its global allocator:
//!
//! ```ignore
//! #[global_allocator]
//! static ALLOC: common::alloc::Counting = common::alloc::Counting;
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The system allocator, counting as the module docs say.
pub struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static ON: AtomicBool = AtomicBool::new(true);

thread_local! {
    // `const` and without a destructor: reading it never allocates.
    static COUNTED: Cell<bool> = const { Cell::new(false) };
}

/// Counts the allocations of the calling thread from now on.
pub fn count_this_thread() {
    COUNTED.with(|c| c.set(true));
}

/// Switches counting on or off for every counted thread (a timed run need not pay for it).
pub fn set_counting(on: bool) {
    ON.store(on, Ordering::Relaxed);
}

/// Allocations counted so far.
pub fn allocs() -> u64 {
    ALLOCS.load(Ordering::Relaxed)
}

fn count_one() {
    // `try_with`: the allocator is also called while a thread is torn down.
    if ON.load(Ordering::Relaxed) && COUNTED.try_with(Cell::get).unwrap_or(false) {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
    }
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_one();
        // SAFETY: forwarded as is to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count_one();
        // SAFETY: forwarded as is to the system allocator.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_one();
        // SAFETY: forwarded as is to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}
