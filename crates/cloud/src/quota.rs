//! The cloud's quotas, kept before sending (pure): what one message must fit (payload size, topic
//! length and depth) and how fast the link may publish (a token bucket on a clock the caller
//! passes in).
//!
//! AWS IoT Core's values are from its quotas page ("AWS IoT Core message broker and protocol
//! limits and quotas", <https://docs.aws.amazon.com/general/latest/gr/iot-core.html#message-broker-limits>):
//! 128 KB per payload, topics of at most 256 bytes and 7 forward slashes, 100 publish requests per
//! second per connection, 100 unacknowledged inbound QoS 1 messages per connection, client ids of
//! at most 128 bytes, 50 subscriptions per connection ("Subscriptions per connection"; a
//! SUBSCRIBE that passes it ends the connection) and 8 topic filters per SUBSCRIBE packet (the
//! same list in AWS's own Device SDK, `ClientExtendedValidationAndFlowControl.AwsIotCoreDefaults`,
//! <https://aws.github.io/aws-iot-device-sdk-js-v2/node/enums/mqtt5.ClientExtendedValidationAndFlowControl.html>:
//! "No more than 8 subscriptions per SUBSCRIBE packet", topics and topic filters of at most 7
//! slashes and 256 bytes, 100 publishes per second, and "Outbound throughput throttled to
//! 512KB/s", the quotas page's throughput per connection, which batches could otherwise pass). A message over a size limit would be
//! refused on every attempt: it goes to the dead letters instead of blocking the queue behind
//! it; subscriptions over the limits are a startup error ([`Quotas::check_subscriptions`]).

use std::time::Duration;

/// The limits a message and the sending must keep; `None`: no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Quotas {
    /// Largest payload, in bytes.
    pub payload_bytes: Option<usize>,
    /// Longest topic, in bytes.
    pub topic_bytes: Option<usize>,
    /// Most `/` in a topic.
    pub topic_slashes: Option<usize>,
    /// Most publishes per second on the connection.
    pub publishes_per_sec: Option<u32>,
    /// Most bytes (topics plus payloads) per second on the connection.
    pub bytes_per_sec: Option<u32>,
    /// Most subscriptions the connection may hold.
    pub subscriptions: Option<usize>,
    /// Most topic filters in one SUBSCRIBE packet (the link splits its subscriptions).
    pub filters_per_subscribe: Option<usize>,
}

/// AWS IoT Core's per-connection limits (see the module doc).
pub const AWS_IOT_CORE: Quotas = Quotas {
    payload_bytes: Some(128 * 1024),
    topic_bytes: Some(256),
    topic_slashes: Some(7),
    publishes_per_sec: Some(100),
    bytes_per_sec: Some(512 * 1024),
    subscriptions: Some(50),
    filters_per_subscribe: Some(8),
};

/// AWS IoT Core's most unacknowledged QoS 1 publishes per connection.
pub const AWS_IOT_CORE_INFLIGHT: usize = 100;

/// AWS IoT Core's longest client id, in bytes.
pub const AWS_IOT_CORE_CLIENT_ID_BYTES: usize = 128;

/// Why the cloud would refuse a message whatever the time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// `payload_too_large`, `topic_too_long` or `topic_too_deep`.
    pub reason: &'static str,
    /// The limit.
    pub limit: usize,
    /// What the message has.
    pub actual: usize,
}

impl Quotas {
    /// Why a message on `topic` with a payload of `payload_len` bytes can never be sent; `None`
    /// if it fits.
    pub fn refusal(&self, topic: &str, payload_len: usize) -> Option<Refusal> {
        let slashes = topic.matches('/').count();
        [
            ("payload_too_large", self.payload_bytes, payload_len),
            ("topic_too_long", self.topic_bytes, topic.len()),
            ("topic_too_deep", self.topic_slashes, slashes),
        ]
        .into_iter()
        .find_map(|(reason, limit, actual)| {
            let limit = limit?;
            (actual > limit).then_some(Refusal {
                reason,
                limit,
                actual,
            })
        })
    }

    /// Whether the link's subscriptions (every component's, in the order they are made) keep
    /// the limits: their number, and each filter's length and depth. The error names the first
    /// problem.
    pub fn check_subscriptions(&self, filters: &[String]) -> Result<(), String> {
        if let Some(most) = self.subscriptions.filter(|most| filters.len() > *most) {
            return Err(format!(
                "the cloud link needs {} subscriptions (downlink filters, 6 per synced thing, \
                 ...) but the cloud allows {most} per connection: sync `things = [\"*\"]` (6 in \
                 all) or use fewer downlink filters",
                filters.len()
            ));
        }
        filters.iter().try_for_each(|f| match self.refusal(f, 0) {
            None => Ok(()),
            Some(r) => Err(format!(
                "the cloud subscription {f:?} is over the cloud's limit ({}: {} > {})",
                r.reason, r.actual, r.limit
            )),
        })
    }
}

/// A token bucket (pure: time comes in as an offset from any origin): `per_sec` tokens a second,
/// holding at most `burst_secs` seconds' worth. The cloud link paces its publishes with it (a tenth
/// of a second's burst, so that no second sees much more than the rate), shadow sync its
/// cloud-bound updates (a second's burst).
#[derive(Debug, Clone)]
pub struct TokenBucket {
    per_sec: f64,
    burst: f64,
    tokens: f64,
    last: Duration,
}

impl TokenBucket {
    /// A full bucket at time zero.
    pub fn new(per_sec: u32, burst_secs: f64) -> TokenBucket {
        let per_sec = f64::from(per_sec.max(1));
        let burst = (per_sec * burst_secs).max(1.0);
        TokenBucket {
            per_sec,
            burst,
            tokens: burst,
            last: Duration::ZERO,
        }
    }

    fn refill(&mut self, now: Duration) {
        let elapsed = now.saturating_sub(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.burst);
        self.last = self.last.max(now);
    }

    /// How many tokens may be spent at `now`.
    pub fn available(&mut self, now: Duration) -> usize {
        self.refill(now);
        self.tokens.max(0.0).floor() as usize
    }

    /// Spends `n` tokens.
    pub fn spend(&mut self, n: usize) {
        self.tokens -= n as f64;
    }

    /// How long until a token is available (zero if one is).
    pub fn wait(&self) -> Duration {
        Duration::from_secs_f64(((1.0 - self.tokens) / self.per_sec).max(0.0))
    }

    /// Takes a token at `now`, in advance if need be: returns how long to wait before using it
    /// (zero if one was available).
    pub fn reserve(&mut self, now: Duration) -> Duration {
        self.refill(now);
        self.tokens -= 1.0;
        Duration::from_secs_f64((-self.tokens / self.per_sec).max(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aws_refuses_what_its_quotas_page_says_and_takes_the_rest() {
        let q = AWS_IOT_CORE;
        assert_eq!(q.refusal("a/b", 128 * 1024), None);
        assert_eq!(
            q.refusal("a/b", 128 * 1024 + 1).map(|r| r.reason),
            Some("payload_too_large")
        );
        assert_eq!(q.refusal(&"t".repeat(256), 1), None);
        assert_eq!(
            q.refusal(&"t".repeat(257), 1)
                .map(|r| (r.reason, r.limit, r.actual)),
            Some(("topic_too_long", 256, 257))
        );
        assert_eq!(q.refusal("1/2/3/4/5/6/7/8", 1), None);
        assert_eq!(
            q.refusal("1/2/3/4/5/6/7/8/9", 1).map(|r| r.reason),
            Some("topic_too_deep")
        );
        assert_eq!(Quotas::default().refusal(&"/".repeat(1000), 1 << 30), None);
    }

    #[test]
    fn aws_takes_50_subscriptions_within_its_topic_limits() {
        let filters = |n: usize| (0..n).map(|i| format!("c/{i}/#")).collect::<Vec<_>>();
        assert_eq!(AWS_IOT_CORE.check_subscriptions(&filters(50)), Ok(()));
        let e = AWS_IOT_CORE.check_subscriptions(&filters(51)).unwrap_err();
        assert!(e.contains("51 subscriptions") && e.contains("50"), "{e}");
        let deep = vec!["$aws/things/+/shadow/name/+/update/+/x".to_owned()];
        let e = AWS_IOT_CORE.check_subscriptions(&deep).unwrap_err();
        assert!(e.contains("topic_too_deep"), "{e}");
        assert_eq!(
            Quotas::default().check_subscriptions(&filters(5000)),
            Ok(())
        );
    }

    #[test]
    fn a_tenth_of_a_second_burst_keeps_any_second_near_the_rate() {
        let ms = Duration::from_millis;
        let mut p = TokenBucket::new(100, 0.1);
        let mut sent = Vec::new();
        let mut now = ms(0);
        // Send whenever allowed, checking every millisecond for 3 s.
        while now < ms(3000) {
            let n = p.available(now);
            p.spend(n);
            sent.extend(std::iter::repeat_n(now, n));
            now += ms(1);
        }
        for start in (0..2000).step_by(50).map(ms) {
            let in_second = sent
                .iter()
                .filter(|t| **t >= start && **t < start + ms(1000))
                .count();
            assert!(
                (99..=110).contains(&in_second),
                "{in_second} publishes in the second from {start:?}"
            );
        }
        let mut p = TokenBucket::new(100, 0.1);
        let n = p.available(ms(0));
        p.spend(n);
        assert_eq!(p.wait(), ms(10));
    }

    #[test]
    fn a_spend_bigger_than_the_bucket_goes_and_the_next_waits_its_bytes_out() {
        let ms = Duration::from_millis;
        // 1,000 bytes a second, a tenth of a second's burst: a 5,000-byte publish goes at once
        // (a token is left), and the bucket is then 4,900 bytes in debt: 4.9 s until the next.
        let mut b = TokenBucket::new(1000, 0.1);
        assert_eq!(b.available(ms(0)), 100);
        b.spend(5000);
        assert_eq!(b.available(ms(0)), 0);
        assert_eq!(b.wait(), ms(4901));
        assert_eq!(b.available(ms(4900)), 0);
        assert_eq!(b.available(ms(4901)), 1);
    }

    #[test]
    fn reserving_spaces_takers_after_a_burst() {
        let ms = Duration::from_millis;
        let mut r = TokenBucket::new(10, 1.0);
        // A burst of 10 passes at once, the 11th waits 100 ms; later, tokens come back.
        for _ in 0..10 {
            assert_eq!(r.reserve(ms(0)), Duration::ZERO);
        }
        assert_eq!(r.reserve(ms(0)), ms(100));
        assert_eq!(r.reserve(ms(200)), Duration::ZERO);
        assert_eq!(r.reserve(ms(5000)), Duration::ZERO);
    }
}
