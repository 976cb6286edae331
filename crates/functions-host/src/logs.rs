//! Bounds on what a function can make the gateway log (pure: the clock is passed in).
//!
//! A guest chooses the text and the rate of its `log` calls, of the arguments of the host calls
//! it is refused, and of the error messages of its failures; a device chooses the topics of the
//! events it sends. None of that may grow the gateway's memory or its log file without bound (a
//! board's disk is an SD card). So:
//!
//! - [`Ring`]: the lines `grove fn logs` shows, bounded in lines **and** bytes, each line cut to
//!   [`LINE_MAX`] bytes (marked as cut), at most [`RATE`] lines a second admitted; the lines
//!   refused are counted, and the next line admitted is preceded by a note saying how many.
//! - [`Window`]: a fixed-window rate limit for the gateway's own log lines about one function
//!   (denied host calls, failures, dead letters), with the count of lines it suppressed.
//! - [`cut`]: the one place a guest- or device-controlled string is shortened for a log.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Lines kept per function.
pub const LINES: usize = 200;

/// Bytes kept per function (the lines' text).
pub const BYTES: usize = 64 * 1024;

/// Longest line kept, in bytes; a longer one is cut and marked.
pub const LINE_MAX: usize = 1024;

/// Lines a function may add a second; more are dropped and counted.
pub const RATE: u32 = 50;

/// The gateway's own log lines about one function (WARN and DEBUG) allowed per [`GATEWAY_PERIOD`].
pub const GATEWAY_LINES: u32 = 5;

/// The period of [`GATEWAY_LINES`].
pub const GATEWAY_PERIOD: Duration = Duration::from_secs(10);

/// `text` as UTF-8 (invalid sequences replaced), cut to its first `max` bytes with a note of its
/// length if longer. Only the part kept is converted: a guest's line may be its whole memory.
pub fn cut(text: &[u8], max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return String::from_utf8_lossy(text);
    }
    // A character split at the cut shows as U+FFFD, like any invalid byte.
    let kept = String::from_utf8_lossy(&text[..max]);
    format!("{kept}... [truncated: {} bytes]", text.len()).into()
}

/// A fixed-window rate limit that counts what it refuses.
#[derive(Debug)]
pub struct Window {
    limit: u32,
    period: Duration,
    start: Option<Instant>,
    used: u32,
    /// Refused since the last admitted event.
    refused: u64,
}

impl Window {
    /// At most `limit` events per `period`.
    pub fn new(limit: u32, period: Duration) -> Window {
        Window {
            limit,
            period,
            start: None,
            used: 0,
            refused: 0,
        }
    }

    /// Whether one more event is allowed at `now`: `Some(n)` with the number refused since the
    /// last one allowed (to report them), or `None` (counted).
    pub fn admit(&mut self, now: Instant) -> Option<u64> {
        if self
            .start
            .is_none_or(|s| now.saturating_duration_since(s) >= self.period)
        {
            self.start = Some(now);
            self.used = 0;
        }
        if self.used < self.limit {
            self.used += 1;
            Some(std::mem::take(&mut self.refused))
        } else {
            self.refused += 1;
            None
        }
    }
}

/// What [`Ring::push`] did with a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pushed {
    /// Kept (possibly cut): the text kept, to log it too.
    Kept(String),
    /// Over the rate: dropped.
    Dropped,
}

/// A function's recent log lines, bounded in number, bytes and rate.
#[derive(Debug)]
pub struct Ring {
    lines: VecDeque<String>,
    bytes: usize,
    rate: Window,
}

impl Default for Ring {
    fn default() -> Ring {
        Ring {
            lines: VecDeque::new(),
            bytes: 0,
            rate: Window::new(RATE, Duration::from_secs(1)),
        }
    }
}

impl Ring {
    /// Adds `line` (prefixed by `head`: time, version and level), cut to [`LINE_MAX`], unless
    /// the function is over its rate at `now`.
    pub fn push(&mut self, now: Instant, head: &str, line: &[u8]) -> Pushed {
        let Some(dropped) = self.rate.admit(now) else {
            return Pushed::Dropped;
        };
        if dropped > 0 {
            self.keep(format!(
                "{head} [{dropped} log lines dropped: more than {RATE} a second]"
            ));
        }
        let line = format!("{head} {}", cut(line, LINE_MAX));
        self.keep(line.clone());
        Pushed::Kept(line)
    }

    fn keep(&mut self, line: String) {
        self.bytes += line.len();
        self.lines.push_back(line);
        while self.lines.len() > LINES || self.bytes > BYTES {
            match self.lines.pop_front() {
                Some(old) => self.bytes -= old.len(),
                None => break,
            }
        }
    }

    /// The lines kept, oldest first.
    pub fn lines(&self) -> Vec<String> {
        self.lines.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_marks_what_it_cut_and_replaces_what_is_not_utf8() {
        assert_eq!(cut(b"short", 10), "short");
        assert_eq!(cut(b"abcdef", 3), "abc... [truncated: 6 bytes]");
        // 'é' is two bytes: one cut inside it shows as a replacement character.
        assert_eq!(cut("aé".as_bytes(), 2), "a\u{fffd}... [truncated: 3 bytes]");
        assert_eq!(cut(b"a\xffb", 10), "a\u{fffd}b");
    }

    #[test]
    fn a_window_admits_its_limit_per_period_and_reports_what_it_refused() {
        let t0 = Instant::now();
        let mut w = Window::new(2, Duration::from_secs(10));
        assert_eq!(w.admit(t0), Some(0));
        assert_eq!(w.admit(t0), Some(0));
        assert_eq!(w.admit(t0 + Duration::from_secs(9)), None);
        assert_eq!(w.admit(t0 + Duration::from_secs(9)), None);
        assert_eq!(w.admit(t0 + Duration::from_secs(10)), Some(2));
        assert_eq!(w.admit(t0 + Duration::from_secs(10)), Some(0));
    }

    #[test]
    fn the_ring_is_bounded_in_bytes_lines_and_rate() {
        let mut t = Instant::now();
        let mut ring = Ring::default();
        let huge = vec![b'x'; 8 << 20];
        let mut kept = 0;
        // 210 lines of 8 MiB in one instant: RATE kept (cut), the rest dropped.
        for _ in 0..210 {
            if let Pushed::Kept(line) = ring.push(t, "h", &huge) {
                assert!(line.len() < LINE_MAX + 64, "{}", line.len());
                assert!(line.ends_with(&format!("[truncated: {} bytes]", 8 << 20)));
                kept += 1;
            }
        }
        assert_eq!(kept, RATE);
        let total: usize = ring.lines().iter().map(String::len).sum();
        assert!(total <= BYTES, "{total}");
        // A second later the drop is reported before the next line.
        t += Duration::from_secs(1);
        assert!(matches!(ring.push(t, "h", b"next"), Pushed::Kept(_)));
        let lines = ring.lines();
        assert_eq!(
            lines[lines.len() - 2],
            "h [160 log lines dropped: more than 50 a second]"
        );
        assert_eq!(lines[lines.len() - 1], "h next");
        // Short lines over many seconds: the line count bounds the ring.
        for i in 0..(LINES as u64 * 2) {
            ring.push(t + Duration::from_secs(2 + i), "h", b"short");
        }
        assert_eq!(ring.lines().len(), LINES);
    }
}
