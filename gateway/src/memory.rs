//! Memory that a burst freed goes back to the system.
//!
//! glibc's malloc keeps what a burst freed (a flood of 1 MB messages through a rule, a large module
//! compiled, thousands of connections that came or left) in its per-thread arenas for good:
//! 450-530 MB on a 512 MB board (issue 15, item 9). A thread here hands it back periodically, and
//! soon after a burst of connections. This is the gateway's one `unsafe` call (allowed here only;
//! the workspace denies `unsafe_code`).

use std::time::{Duration, Instant};

/// How often freed memory is given back to the system.
const TRIM_EVERY: Duration = Duration::from_secs(10);

/// How often the trimmer looks at the number of connected clients.
const LOOK_EVERY: Duration = Duration::from_millis(200);

/// Clients come or gone since the last trim that make a burst: once the count has settled, the
/// memory the burst freed is given back at once rather than at the next periodic trim. Clients
/// that left free their connections' state (10,000 idle ones hold about 20 MB); clients that came
/// free their handshakes' (CONNECT buffers, authentication), interleaved with what they keep.
const CONNECTION_BURST: u64 = 1_000;

/// When to trim, from the connected-clients count seen every [`LOOK_EVERY`] (pure: the clock and
/// the count are passed in).
#[derive(Debug)]
struct Schedule {
    last_trim: Instant,
    last_count: i64,
    /// Clients come or gone since the last trim.
    moved: u64,
}

impl Schedule {
    fn new(now: Instant, count: i64) -> Schedule {
        Schedule {
            last_trim: now,
            last_count: count,
            moved: 0,
        }
    }

    /// Whether to trim now, given the connected clients now. A burst is trimmed once its clients
    /// have stopped coming or leaving (the count did not change since the last look), so one
    /// trim gives back the whole burst's memory.
    fn look(&mut self, now: Instant, count: i64) -> bool {
        let moved = (self.last_count - count).unsigned_abs();
        self.last_count = count;
        self.moved += moved;
        let due = now.duration_since(self.last_trim) >= TRIM_EVERY
            || (moved == 0 && self.moved >= CONNECTION_BURST);
        if due {
            self.last_trim = now;
            self.moved = 0;
        }
        due
    }
}

/// Starts a thread that gives the memory glibc's malloc holds free back to the system every
/// [`TRIM_EVERY`], and as soon as a burst of at least [`CONNECTION_BURST`] clients came or left
/// (`connected` reads the connected-clients count). After a burst (a flood of 1 MB messages
/// through a rule, a large module compiled) glibc keeps the freed memory in its per-thread arenas
/// for good: 450-530 MB on a 512 MB board (issue 15, item 9). Measured: `malloc_trim(0)` took such
/// a gateway from 362 MB back to 70 MB (debug build, 36 MB idle); with 10,000 idle clients that
/// had left, one trim took 2-3 ms (release build). mimalloc (v3) was tried instead: it gives
/// memory back only when the threads that freed it allocate again, and it added ~18 MB to the
/// idle size.
pub fn give_back_freed_memory(connected: impl Fn() -> i64 + Send + 'static) {
    let every = move || {
        let mut schedule = Schedule::new(Instant::now(), connected());
        loop {
            std::thread::sleep(LOOK_EVERY);
            if schedule.look(Instant::now(), connected()) {
                trim();
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Trims every 10 s, and once after a burst of arrivals or departures, when the count has
    /// settled; not while clients keep coming or leaving, nor for a few.
    #[test]
    fn trims_periodically_and_after_a_burst_of_connections() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut s = Schedule::new(t0, 10_000);
        assert!(!s.look(at(200), 10_000), "nothing happened");
        assert!(!s.look(at(400), 9_990), "ten left: no burst");
        assert!(!s.look(at(600), 6_000), "leaving");
        assert!(!s.look(at(800), 2_000), "still leaving");
        assert!(s.look(at(1_000), 2_000), "the burst is over");
        assert!(!s.look(at(1_200), 2_000), "trimmed already");
        assert!(!s.look(at(1_400), 1_500), "a small departure");
        assert!(!s.look(at(1_600), 1_500));
        assert!(!s.look(at(1_800), 2_200), "arriving");
        assert!(
            s.look(at(2_000), 2_200),
            "1,200 came or went since the last trim"
        );
        assert!(!s.look(at(10_000), 2_200), "8 s since");
        assert!(s.look(at(12_000), 2_200), "10 s since the last trim");
    }
}
