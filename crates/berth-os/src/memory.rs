//! Giving the C allocator's free memory back to the system (glibc's `malloc_trim`), and keeping
//! it in one arena.
//!
//! glibc keeps what a program frees for its next allocations, spread over several arenas (one
//! per thread that allocated, up to eight per CPU), and returns little of it by itself. A
//! daemon that served a wave of clients — a task and buffers per connection, on whichever of
//! its threads — keeps that memory resident long after they left.

#![expect(unsafe_code, reason = "malloc_trim, mallopt: glibc's C interface")]

/// Makes every thread allocate from one arena (`mallopt(M_ARENA_MAX, 1)`), unless the
/// environment already chose (`MALLOC_ARENA_MAX`, or `GLIBC_TUNABLES` naming
/// `glibc.malloc.arena_max`); `true` when it was set here. Call it before any thread starts.
///
/// Arenas are glibc's remedy for threads contending on one lock; each keeps the holes its
/// freed blocks leave. A daemon whose few threads take turns serving waves of connections
/// gains little from the first (small blocks come from each thread's cache, without the
/// lock) and pays for the second: a wave's tasks are allocated in one thread's arena and the
/// next wave's in another's, and both stay resident. A no-op (`false`) with another C library.
pub fn use_one_arena() -> bool {
    let tunables = std::env::var("GLIBC_TUNABLES").ok();
    if arena_max_chosen(
        std::env::var_os("MALLOC_ARENA_MAX").is_some(),
        tunables.as_deref(),
    ) {
        return false;
    }
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: mallopt only changes the allocator's settings; called before other threads
        // allocate (see above), and glibc takes its own lock for it anyway.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) == 1 }
    }
    #[cfg(not(target_env = "gnu"))]
    {
        false
    }
}

/// Whether the environment sets glibc's arena limit: `MALLOC_ARENA_MAX`, or a
/// `glibc.malloc.arena_max` tunable in `GLIBC_TUNABLES` (`name=value` pairs separated by `:`).
fn arena_max_chosen(variable_set: bool, tunables: Option<&str>) -> bool {
    variable_set
        || tunables.is_some_and(|t| {
            t.split(':')
                .any(|pair| pair.split('=').next() == Some("glibc.malloc.arena_max"))
        })
}

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
    fn an_arena_limit_from_the_environment_is_respected() {
        assert!(!arena_max_chosen(false, None));
        assert!(arena_max_chosen(true, None));
        assert!(arena_max_chosen(
            false,
            Some("glibc.malloc.tcache_count=0:glibc.malloc.arena_max=4")
        ));
        assert!(!arena_max_chosen(false, Some("glibc.malloc.arena_test=4")));
        assert!(!arena_max_chosen(false, Some("")));
    }

    #[test]
    #[cfg(target_env = "gnu")]
    fn freed_memory_is_given_back() {
        // Many small blocks (below the mmap threshold, so they stay in the heap), freed.
        let blocks: Vec<Vec<u8>> = (0..20_000).map(|i| vec![(i % 251) as u8; 1000]).collect();
        drop(blocks);
        assert!(give_back_free_memory(), "glibc gave nothing back");
    }
}
