//! Time as the device core sees it: a monotonic millisecond count passed in by the caller.
//!
//! The core never reads a clock, so tests drive it with a virtual clock and boards with whatever timer
//! they have; only differences between instants matter.

/// A point on the caller's monotonic clock, in milliseconds since an arbitrary origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Instant(u64);

impl Instant {
    /// An instant `millis` milliseconds after the clock's origin.
    pub const fn from_millis(millis: u64) -> Self {
        Self(millis)
    }

    /// Milliseconds since the clock's origin.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// The instant `millis` milliseconds later; saturates instead of wrapping.
    pub const fn after_millis(self, millis: u32) -> Self {
        Self(self.0.saturating_add(millis as u64))
    }
}
