//! Memory that a burst freed goes back to the system.
//!
//! glibc's malloc keeps what a burst freed (a flood of 1 MB messages through a rule, a large module
//! compiled) in its per-thread arenas for good: 450-530 MB on a 512 MB board (issue 15, item 9).
//! A thread here hands it back periodically. This is the gateway's one `unsafe` call (allowed
//! here only; the workspace denies `unsafe_code`).

/// How often freed memory is given back to the system.
const TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Starts a thread that gives the memory glibc's malloc holds free back to the system every
/// [`TRIM_EVERY`]. After a burst (a flood of 1 MB messages through a rule, a large module
/// compiled) glibc keeps the freed memory in its per-thread arenas for good: 450-530 MB on a
/// 512 MB board (issue 15, item 9). Measured: `malloc_trim(0)` took such a gateway from 362 MB
/// back to 70 MB (debug build, 36 MB idle). mimalloc (v3) was tried instead: it gives memory back
/// only when the threads that freed it allocate again, and it added ~18 MB to the idle size.
pub fn give_back_freed_memory() {
    let every = || loop {
        std::thread::sleep(TRIM_EVERY);
        trim();
    };
    if cfg!(all(target_os = "linux", target_env = "gnu")) {
        if let Err(e) = std::thread::Builder::new()
            .name("grove-trim".into())
            .spawn(every)
        {
            eprintln!("grove: cannot start the memory trimmer (memory freed after bursts stays with the process): {e}");
        }
    }
}

/// Gives the memory glibc's malloc holds free back to the system, now.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn trim() {
    // SAFETY: malloc_trim takes no pointer and no lock of ours; glibc locks each arena while it
    // returns the free pages at its top and inside it (madvise) to the kernel. Written by hand:
    // one call, and no well-kept crate wrapping it was found.
    #[allow(unsafe_code)]
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Nothing to do elsewhere (musl's malloc returns freed memory by itself), so no trimmer either.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn trim() {}
