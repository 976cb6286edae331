//! The console's pure core: sessions (idle and absolute expiry, a bounded number, a CSRF token
//! each), the sign-in attempt budget and the overview's last hour of samples.
//!
//! No IO and no clock: every call takes `now`, and the random tokens are drawn by the shell and
//! handed in, so the tests drive it on a virtual clock.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// The console's budgets and lifetimes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// A session unused this long ends.
    pub idle: Duration,
    /// A session ends this long after sign-in, used or not.
    pub absolute: Duration,
    /// At most this many sessions live at once; a sign-in beyond it ends the least recently used.
    pub max_sessions: usize,
    /// At most this many failed sign-ins within [`Limits::sign_in_window`]; then sign-in is
    /// refused, without checking the password, until the oldest failure leaves the window.
    pub sign_in_failures: usize,
    /// The window of [`Limits::sign_in_failures`].
    pub sign_in_window: Duration,
    /// At most this many live streams (server-sent events) open at once, over all sessions.
    pub max_streams: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            idle: Duration::from_secs(30 * 60),
            absolute: Duration::from_secs(12 * 3600),
            max_sessions: 8,
            sign_in_failures: 5,
            sign_in_window: Duration::from_secs(60),
            max_streams: 16,
        }
    }
}

/// A live session as a request sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The CSRF token bound to this session: every change it makes must carry it.
    pub csrf: String,
    created: Instant,
    used: Instant,
}

/// The live sessions, by their cookie's token.
#[derive(Debug)]
pub struct Sessions {
    limits: Limits,
    live: HashMap<String, Session>,
}

impl Sessions {
    /// No session yet.
    pub fn new(limits: Limits) -> Sessions {
        Sessions {
            limits,
            live: HashMap::new(),
        }
    }

    /// Opens a session for a successful sign-in: `token` (the cookie) and `csrf` are fresh random
    /// strings. The least recently used session ends if the budget is full.
    pub fn open(&mut self, now: Instant, token: String, csrf: String) {
        self.expire(now);
        while self.live.len() >= self.limits.max_sessions.max(1) {
            let oldest = self
                .live
                .iter()
                .min_by_key(|(_, s)| s.used)
                .map(|(t, _)| t.clone());
            match oldest {
                Some(t) => self.live.remove(&t),
                None => break,
            };
        }
        self.live.insert(
            token,
            Session {
                csrf,
                created: now,
                used: now,
            },
        );
    }

    /// The session of `token` if it is live at `now`, marked used; an expired one ends.
    pub fn touch(&mut self, now: Instant, token: &str) -> Option<Session> {
        let live = self.live.get_mut(token)?;
        if self.limits.expired(live, now) {
            self.live.remove(token);
            return None;
        }
        live.used = now;
        Some(live.clone())
    }

    /// Whether the session of `token` is live at `now`, without counting as a use (a live
    /// stream looks, the operator does not).
    pub fn is_live(&self, now: Instant, token: &str) -> bool {
        self.live
            .get(token)
            .is_some_and(|s| !self.limits.expired(s, now))
    }

    /// Ends the session of `token` (sign-out).
    pub fn close(&mut self, token: &str) {
        self.live.remove(token);
    }

    /// How many sessions are live at `now`.
    pub fn live(&mut self, now: Instant) -> usize {
        self.expire(now);
        self.live.len()
    }

    fn expire(&mut self, now: Instant) {
        let limits = self.limits;
        self.live.retain(|_, s| !limits.expired(s, now));
    }
}

impl Limits {
    fn expired(&self, s: &Session, now: Instant) -> bool {
        now.saturating_duration_since(s.used) >= self.idle
            || now.saturating_duration_since(s.created) >= self.absolute
    }
}

/// The sign-in attempt budget: failures in a sliding window, shared by every peer.
///
/// Shared rather than per address: the console is on loopback unless the operator allows
/// otherwise, where every peer has the same address. A wrong-password storm thus also holds the
/// operator off for up to a window, which is the price of never running argon2 for it.
#[derive(Debug)]
pub struct SignInBudget {
    limits: Limits,
    failures: VecDeque<Instant>,
}

impl SignInBudget {
    /// A full budget.
    pub fn new(limits: Limits) -> SignInBudget {
        SignInBudget {
            limits,
            failures: VecDeque::new(),
        }
    }

    /// Whether a password may be checked at `now`; if not, how long until one may.
    pub fn check(&mut self, now: Instant) -> Result<(), Duration> {
        let window = self.limits.sign_in_window;
        while let Some(first) = self.failures.front() {
            if now.saturating_duration_since(*first) >= window {
                self.failures.pop_front();
            } else {
                break;
            }
        }
        match self.failures.front() {
            Some(first) if self.failures.len() >= self.limits.sign_in_failures => {
                Err(window.saturating_sub(now.saturating_duration_since(*first)))
            }
            _ => Ok(()),
        }
    }

    /// A password check at `now` failed.
    pub fn failed(&mut self, now: Instant) {
        self.failures.push_back(now);
    }
}

/// What the overview shows at one moment; counters are totals since start.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Reading {
    /// Clients connected.
    pub connected: u64,
    /// PUBLISH packets received from clients, in total.
    pub received: u64,
    /// PUBLISH packets sent to clients, in total.
    pub sent: u64,
    /// Messages in the cloud outbox.
    pub outbox: u64,
    /// Messages the cloud acknowledged and the outbox let go, in total.
    pub drained: u64,
    /// CPU time the process has used, in total, in seconds.
    pub cpu_seconds: f64,
    /// Resident memory, in bytes.
    pub rss_bytes: u64,
}

/// One point of the overview's charts: rates over the interval before it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Point {
    /// Seconds before the newest point (0 for the newest).
    pub age: f64,
    /// Clients connected.
    pub connected: f64,
    /// Messages in per second.
    pub in_rate: f64,
    /// Messages out per second.
    pub out_rate: f64,
    /// Messages in the cloud outbox.
    pub outbox: f64,
    /// Messages the outbox drained (acknowledged by the cloud) per second.
    pub drain_rate: f64,
    /// CPU use, in cores (1.0 is one core busy).
    pub cpu: f64,
    /// Resident memory, in MiB.
    pub rss_mib: f64,
}

/// The last hour of readings, bounded: at most `span / interval` + 1 of them.
#[derive(Debug)]
pub struct History {
    span: Duration,
    capacity: usize,
    readings: VecDeque<(Instant, Reading)>,
}

impl History {
    /// Keeps `span` of readings taken every `interval`.
    pub fn new(span: Duration, interval: Duration) -> History {
        let capacity = (span.as_secs_f64() / interval.as_secs_f64().max(0.001)).ceil() as usize + 1;
        History {
            span,
            capacity,
            readings: VecDeque::with_capacity(capacity),
        }
    }

    /// Adds a reading taken at `now`; those older than the span (or beyond the capacity) go.
    pub fn push(&mut self, now: Instant, reading: Reading) {
        while let Some((at, _)) = self.readings.front() {
            if now.saturating_duration_since(*at) > self.span
                || self.readings.len() >= self.capacity
            {
                self.readings.pop_front();
            } else {
                break;
            }
        }
        self.readings.push_back((now, reading));
    }

    /// The charts' points, oldest first: one per pair of consecutive readings.
    pub fn points(&self) -> Vec<Point> {
        let Some((newest, _)) = self.readings.back() else {
            return Vec::new();
        };
        self.readings
            .iter()
            .zip(self.readings.iter().skip(1))
            .map(|((t0, r0), (t1, r1))| {
                let dt = t1.saturating_duration_since(*t0).as_secs_f64().max(0.001);
                let rate = |a: u64, b: u64| b.saturating_sub(a) as f64 / dt;
                Point {
                    age: newest.saturating_duration_since(*t1).as_secs_f64(),
                    connected: r1.connected as f64,
                    in_rate: rate(r0.received, r1.received),
                    out_rate: rate(r0.sent, r1.sent),
                    outbox: r1.outbox as f64,
                    drain_rate: rate(r0.drained, r1.drained),
                    cpu: (r1.cpu_seconds - r0.cpu_seconds).max(0.0) / dt,
                    rss_mib: r1.rss_bytes as f64 / (1024.0 * 1024.0),
                }
            })
            .collect()
    }

    /// How many readings are kept.
    pub fn len(&self) -> usize {
        self.readings.len()
    }

    /// Whether no reading is kept.
    pub fn is_empty(&self) -> bool {
        self.readings.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            idle: Duration::from_secs(60),
            absolute: Duration::from_secs(600),
            max_sessions: 2,
            sign_in_failures: 3,
            sign_in_window: Duration::from_secs(60),
            max_streams: 1,
        }
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn a_session_ends_when_idle_and_use_keeps_it_until_its_absolute_expiry() {
        let t0 = Instant::now();
        let mut s = Sessions::new(limits());
        s.open(t0, "a".into(), "csrf-a".into());
        s.open(t0, "b".into(), "csrf-b".into());
        assert_eq!(s.touch(t0 + secs(59), "a").unwrap().csrf, "csrf-a");
        // b was not used for 60 s: gone; a was used at 59 s: still there at 118 s.
        assert_eq!(s.touch(t0 + secs(60), "b"), None);
        let mut t = t0 + secs(59);
        while t + secs(50) < t0 + secs(600) {
            t += secs(50);
            assert!(s.touch(t, "a").is_some(), "used every 50 s, live at {t:?}");
        }
        assert_eq!(s.touch(t0 + secs(600), "a"), None, "absolute expiry");
        assert_eq!(s.live(t0 + secs(600)), 0);
    }

    #[test]
    fn signing_out_ends_the_session_and_an_unknown_token_has_none() {
        let t0 = Instant::now();
        let mut s = Sessions::new(limits());
        s.open(t0, "a".into(), "x".into());
        assert_eq!(s.touch(t0, "nope"), None);
        s.close("a");
        assert_eq!(s.touch(t0, "a"), None);
    }

    #[test]
    fn sessions_beyond_the_budget_end_the_least_recently_used() {
        let t0 = Instant::now();
        let mut s = Sessions::new(limits());
        s.open(t0, "a".into(), "1".into());
        s.open(t0 + secs(1), "b".into(), "2".into());
        s.touch(t0 + secs(2), "a");
        s.open(t0 + secs(3), "c".into(), "3".into());
        assert_eq!(s.live(t0 + secs(3)), 2);
        assert!(
            s.touch(t0 + secs(3), "b").is_none(),
            "b was least recently used"
        );
        assert!(s.touch(t0 + secs(3), "a").is_some());
        assert!(s.touch(t0 + secs(3), "c").is_some());
    }

    #[test]
    fn the_sign_in_budget_refuses_after_its_failures_until_the_window_slides() {
        let t0 = Instant::now();
        let mut b = SignInBudget::new(limits());
        for i in 0..3 {
            assert_eq!(b.check(t0 + secs(i)), Ok(()));
            b.failed(t0 + secs(i));
        }
        assert_eq!(b.check(t0 + secs(10)), Err(secs(50)));
        assert_eq!(b.check(t0 + secs(59)), Err(secs(1)));
        // The first failure left the window: one more try, then refused again.
        assert_eq!(b.check(t0 + secs(60)), Ok(()));
        b.failed(t0 + secs(60));
        assert_eq!(b.check(t0 + secs(60)), Err(secs(1)));
    }

    #[test]
    fn history_keeps_one_hour_at_most_and_turns_totals_into_rates() {
        let t0 = Instant::now();
        let mut h = History::new(Duration::from_secs(3600), Duration::from_secs(5));
        for i in 0..2000u64 {
            h.push(
                t0 + secs(5 * i),
                Reading {
                    connected: 3,
                    received: 50 * i,
                    sent: 100 * i,
                    outbox: i,
                    drained: 30 * i,
                    cpu_seconds: 2.5 * i as f64,
                    rss_bytes: 8 << 20,
                },
            );
        }
        assert_eq!(h.len(), 721, "3600 s / 5 s + 1");
        let points = h.points();
        assert_eq!(points.len(), 720);
        let newest = points.last().unwrap();
        assert_eq!(
            *newest,
            Point {
                age: 0.0,
                connected: 3.0,
                in_rate: 10.0,
                out_rate: 20.0,
                outbox: 1999.0,
                drain_rate: 6.0,
                cpu: 0.5,
                rss_mib: 8.0,
            }
        );
        assert_eq!(points[0].age, 3595.0);
    }

    #[test]
    fn history_drops_readings_older_than_its_span_after_a_gap() {
        let t0 = Instant::now();
        let mut h = History::new(Duration::from_secs(60), Duration::from_secs(5));
        h.push(t0, Reading::default());
        h.push(t0 + secs(5), Reading::default());
        h.push(t0 + secs(200), Reading::default());
        assert_eq!(h.len(), 1);
        assert!(h.points().is_empty());
    }
}
