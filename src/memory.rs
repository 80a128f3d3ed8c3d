//! Handing freed heap back to the system. A pass over 100,000 extensions briefly holds a few
//! hundred MB (the rows, the MBG's list, the plan); glibc keeps what was freed in its arenas, so
//! a daemon that is idle for hours would go on showing the pass's peak as resident memory.

/// Returns the free memory at the top of glibc's heaps to the system; a no-op elsewhere.
pub(crate) fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists, under its own locks; it
    // frees nothing that is in use and may be called at any time from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Two malloc arenas instead of glibc's default of eight per core. Each thread that meets
/// contention gets an arena of its own, and memory freed in one cannot serve another, so a
/// daemon's resident size grows with its threads (tokio's, sqlx's); with two, an idle daemon
/// that has just reconciled 100,000 extensions went from 47 MB to 39 MB. Call it first thing.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt changes a tuning parameter of the allocator, under its own lock.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
