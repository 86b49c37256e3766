//! Giving the C allocator's free memory back to the system (glibc's `malloc_trim`), and settling
//! its arenas and large-block threshold for a daemon.
//!
//! glibc keeps what a program frees for its next allocations, spread over several arenas (one
//! per thread that allocated, up to eight per CPU), and returns little of it by itself. A
//! daemon that served a wave of clients — a task and buffers per connection, on whichever of
//! its threads — keeps that memory resident long after they left.

#![expect(unsafe_code, reason = "malloc_trim, mallopt: glibc's C interface")]

/// The large-block threshold the daemon keeps: glibc's own starting value, 128 KiB.
pub const MMAP_THRESHOLD: i32 = 128 * 1024;

/// Settles glibc's allocator for a long-running daemon; call it before any thread starts.
/// Each setting is left alone where the environment chose it (its `MALLOC_*_` variable, or
/// its tunable in `GLIBC_TUNABLES`). Returns how many were set here (0 with another C library).
///
/// - **One arena** (`M_ARENA_MAX` 1). Arenas are glibc's remedy for threads contending on
///   one lock; each keeps the holes its freed blocks leave. A daemon whose few threads take
///   turns serving waves of connections gains little from the first (small blocks come from
///   each thread's cache, without the lock) and pays for the second: one wave's tasks were
///   allocated in one thread's arena, the next wave's in another's, and both stayed resident.
/// - **A fixed large-block threshold** (`M_MMAP_THRESHOLD`, [`MMAP_THRESHOLD`]). A block at
///   least that large gets pages of its own, given back when it is freed. glibc raises the
///   threshold to the size of each such block freed (up to 32 MiB), after which the next
///   large temporary — a journal rewritten in memory, a table's vector grown — is carved
///   from the heap and its pages stay resident after it. Setting it stops the raising.
pub fn tune_for_a_daemon() -> usize {
    let tunables = std::env::var("GLIBC_TUNABLES").ok();
    let settings = [
        (
            "MALLOC_ARENA_MAX",
            "glibc.malloc.arena_max",
            Setting::ArenaMax,
            1,
        ),
        (
            "MALLOC_MMAP_THRESHOLD_",
            "glibc.malloc.mmap_threshold",
            Setting::MmapThreshold,
            MMAP_THRESHOLD,
        ),
    ];
    settings
        .into_iter()
        .filter(|(variable, tunable, _, _)| {
            let set = std::env::var_os(variable).is_some();
            !chosen(set, tunable, tunables.as_deref())
        })
        .filter(|&(_, _, setting, value)| set(setting, value))
        .count()
}

/// What [`tune_for_a_daemon`] sets.
#[derive(Debug, Clone, Copy)]
enum Setting {
    ArenaMax,
    MmapThreshold,
}

/// `mallopt(setting, value)`; `true` when glibc took it.
fn set(setting: Setting, value: i32) -> bool {
    #[cfg(target_env = "gnu")]
    {
        let param = match setting {
            Setting::ArenaMax => libc::M_ARENA_MAX,
            Setting::MmapThreshold => libc::M_MMAP_THRESHOLD,
        };
        // SAFETY: mallopt only changes the allocator's settings; glibc reads these two without
        // a lock, so they are set before any other thread exists (`tune_for_a_daemon`'s rule,
        // which the daemon's start-up keeps) — or, in tests, to the value already in force.
        unsafe { libc::mallopt(param, value) == 1 }
    }
    #[cfg(not(target_env = "gnu"))]
    {
        let _ = (setting, value);
        false
    }
}

/// Whether the environment chose a setting: its variable is set, or `tunable` is named in
/// `GLIBC_TUNABLES` (`name=value` pairs separated by `:`).
fn chosen(variable_set: bool, tunable: &str, tunables: Option<&str>) -> bool {
    variable_set
        || tunables.is_some_and(|t| {
            t.split(':')
                .any(|pair| pair.split('=').next() == Some(tunable))
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
    fn a_setting_from_the_environment_is_respected() {
        let arena = "glibc.malloc.arena_max";
        assert!(!chosen(false, arena, None));
        assert!(chosen(true, arena, None));
        assert!(chosen(
            false,
            arena,
            Some("glibc.malloc.tcache_count=0:glibc.malloc.arena_max=4")
        ));
        assert!(!chosen(false, arena, Some("glibc.malloc.arena_test=4")));
        assert!(!chosen(false, arena, Some("")));
        assert!(chosen(
            false,
            "glibc.malloc.mmap_threshold",
            Some("glibc.malloc.mmap_threshold=65536")
        ));
    }

    #[test]
    #[cfg(target_env = "gnu")]
    fn glibc_takes_both_settings() {
        // The values the daemon sets; taking them again changes nothing for other tests.
        assert!(set(Setting::ArenaMax, 1));
        assert!(set(Setting::MmapThreshold, MMAP_THRESHOLD));
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
