//! Giving the C allocator's free memory back to the system (glibc's `malloc_trim`).
//!
//! glibc keeps what a program frees for its next allocations, spread over several arenas (one
//! per thread that allocated, up to eight per CPU), and returns little of it by itself. A
//! daemon that served a wave of clients — a task and buffers per connection, on whichever of
//! its threads — keeps that memory resident long after they left.

#![expect(unsafe_code, reason = "malloc_trim: glibc's C interface")]

/// Gives the whole free pages of every arena back to the system (`malloc_trim(0)`); `true`
/// when some were. A no-op (`false`) with another C library. It takes each arena's lock in
/// turn: call it where a short wait for an allocation does not matter.
pub fn give_back_free_memory() -> bool {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: malloc_trim only returns free pages to the system; any thread may call it.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(target_env = "gnu"))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_env = "gnu")]
    fn freed_memory_is_given_back() {
        // Many small blocks (below the mmap threshold, so they stay in the heap), freed.
        let blocks: Vec<Vec<u8>> = (0..20_000).map(|i| vec![(i % 251) as u8; 1000]).collect();
        drop(blocks);
        assert!(give_back_free_memory(), "glibc gave nothing back");
    }
}
