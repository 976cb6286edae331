//! The sans-IO device core: an MQTT 3.1.1 client session plus the device's shadow and telemetry logic.
//!
//! [`Device`] owns no socket and reads no clock. Its shell (a board's main loop, the simulator's task,
//! a test) feeds it received bytes with [`Device::handle_input`], drains bytes to send with
//! [`Device::poll_transmit`], sleeps until [`Device::poll_timeout`] and then calls
//! [`Device::handle_timeout`], and reacts to [`Event`]s from [`Device::poll_event`] (open or close the
//! transport, take a sensor sample). Every call takes `now`, so the whole protocol runs on a virtual
//! clock in tests.
//!
//! Session rules:
//! - CONNECT carries a will (`offline`, retained, on `$grove/things/{thing}/status`); after CONNACK the
//!   device subscribes to its shadow topics and, once SUBACK arrives, publishes `online` there.
//! - Shadow reports and `get` requests are QoS 1: kept in an in-flight table until PUBACK, retransmitted
//!   with DUP after `ack_timeout_ms`, and again after a reconnect. Telemetry is QoS 0 by default; with
//!   [`Config::with_telemetry_qos`] at QoS 1 it takes the same path in a slot of its own, so that
//!   shadow traffic always keeps its [`SHADOW_SLOTS`].
//! - A missing CONNACK, SUBACK or PINGRESP within `ack_timeout_ms`, a protocol error or a closed
//!   transport ends the session; the device asks to reconnect after an exponential backoff.
//! - After every (re)subscription the device reports its state if it changed (always after boot) and
//!   sends `get`, so desired changes made while it was away are applied from `get/accepted`.
//!
//! Architecture invariant: the core never blocks, never allocates and never panics on received bytes.

use heapless::{Deque, String, Vec};

use crate::actuator::Actuator;
use crate::mqtt::{
    self, ConnectReturnCode, DecodeError, Filter, Packet, Publish, QoS, SubscribeFilters,
};
use crate::shadow::{self, Inbound, Patch, State, Topic, INTERVAL_RANGE_S, MAX_THING_NAME};
use crate::sht4x::Measurement;
use crate::telemetry::{self, Telemetry};
use crate::time::Instant;

/// Receive buffer: the largest packet the device accepts (a `get/accepted` document with metadata).
pub const RX_CAPACITY: usize = 1024;
/// Transmit buffer: encoded packets waiting for [`Device::poll_transmit`].
pub const TX_CAPACITY: usize = 768;
/// How many shadow requests (reports and `get`) may await their PUBACK at once.
pub const SHADOW_SLOTS: usize = 2;
/// How many QoS 1 publications may await their PUBACK at once: the shadow's slots plus one telemetry
/// sample when telemetry is QoS 1.
pub const INFLIGHT_SLOTS: usize = SHADOW_SLOTS + 1;
/// The largest QoS 1 publication (topic and payload) kept for retransmission.
pub const INFLIGHT_MESSAGE: usize = 192;
/// How many events may wait for [`Device::poll_event`]; the oldest is dropped beyond that.
pub const EVENT_QUEUE: usize = 8;
/// The longest MQTT user name a device keeps (Grove's is the device id, at most a thing name).
pub const MAX_USERNAME: usize = 64;
/// The longest MQTT password a device keeps (Grove's are argon2-checked secrets of any length; 64
/// bytes hold a 256-bit random secret even in base64).
pub const MAX_PASSWORD: usize = 64;

/// The status topic carrying the will and the `online` announcement: `$grove/things/{thing}/status`.
const STATUS_PREFIX: &str = "$grove/things/";
/// See [`STATUS_PREFIX`].
const STATUS_SUFFIX: &str = "/status";

/// Why a [`Config`] was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Thing names are 1 to 64 characters of `[A-Za-z0-9:_-]` (AWS's rule, shortened).
    #[error("invalid thing name")]
    InvalidThingName,
    /// The keep-alive must be at least one second, and the acknowledgement timeout shorter than it.
    #[error("invalid timing: keep-alive {keep_alive_s} s, ack timeout {ack_timeout_ms} ms")]
    InvalidTiming {
        /// The configured keep-alive.
        keep_alive_s: u16,
        /// The configured acknowledgement timeout.
        ack_timeout_ms: u32,
    },
    /// The telemetry interval is outside [`INTERVAL_RANGE_S`].
    #[error("telemetry interval {0} s out of range")]
    InvalidInterval(u32),
    /// The user name is empty or longer than [`MAX_USERNAME`], or the password longer than
    /// [`MAX_PASSWORD`].
    #[error("user name or password too long or empty user name")]
    InvalidCredentials,
}

/// The MQTT user name and password a device logs in with (MQTT 3.1.1 §3.1.3.4-5), copied out of the
/// board's storage at start (see [`crate::provision`]) so that no secret is a constant in the image.
/// Grove's password listeners take the device id as the user name.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    username: String<MAX_USERNAME>,
    password: Vec<u8, MAX_PASSWORD>,
}

impl Credentials {
    /// Credentials of `username` (1 to [`MAX_USERNAME`] bytes) and `password` (at most
    /// [`MAX_PASSWORD`] bytes; MQTT passwords are binary).
    pub fn new(username: &str, password: &[u8]) -> Result<Self, ConfigError> {
        if username.is_empty() {
            return Err(ConfigError::InvalidCredentials);
        }
        Ok(Self {
            username: String::try_from(username).map_err(|_| ConfigError::InvalidCredentials)?,
            password: Vec::from_slice(password).map_err(|_| ConfigError::InvalidCredentials)?,
        })
    }

    /// The user name.
    pub fn username(&self) -> &str {
        &self.username
    }
}

/// Never prints the password.
impl core::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// The device's settings, validated by [`Config::new`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    thing: String<MAX_THING_NAME>,
    keep_alive_s: u16,
    ack_timeout_ms: u32,
    reconnect_min_ms: u32,
    reconnect_max_ms: u32,
    interval_s: u32,
    telemetry_qos: QoS,
    credentials: Option<Credentials>,
}

impl Config {
    /// Settings for `thing` with defaults: keep-alive 30 s, ack timeout 5 s, reconnect backoff from
    /// 1 s doubling up to 60 s, telemetry every 10 s (until the shadow says otherwise).
    pub fn new(thing: &str) -> Result<Self, ConfigError> {
        let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '-');
        if thing.is_empty() || !thing.chars().all(valid) {
            return Err(ConfigError::InvalidThingName);
        }
        let thing = String::try_from(thing).map_err(|_| ConfigError::InvalidThingName)?;
        Ok(Self {
            thing,
            keep_alive_s: 30,
            ack_timeout_ms: 5_000,
            reconnect_min_ms: 1_000,
            reconnect_max_ms: 60_000,
            interval_s: 10,
            telemetry_qos: QoS::AtMostOnce,
            credentials: None,
        })
    }

    /// Sets the keep-alive and the time to wait for any acknowledgement before retransmitting or
    /// giving up on the session.
    pub fn with_timing(
        mut self,
        keep_alive_s: u16,
        ack_timeout_ms: u32,
    ) -> Result<Self, ConfigError> {
        if keep_alive_s == 0
            || ack_timeout_ms == 0
            || ack_timeout_ms >= u32::from(keep_alive_s) * 1000
        {
            return Err(ConfigError::InvalidTiming {
                keep_alive_s,
                ack_timeout_ms,
            });
        }
        self.keep_alive_s = keep_alive_s;
        self.ack_timeout_ms = ack_timeout_ms;
        Ok(self)
    }

    /// Sets the reconnect backoff: the first delay and the cap it doubles up to.
    pub fn with_backoff(mut self, min_ms: u32, max_ms: u32) -> Self {
        self.reconnect_min_ms = min_ms;
        self.reconnect_max_ms = max_ms.max(min_ms);
        self
    }

    /// Sets the telemetry interval used until the shadow's `interval_s` overrides it.
    pub fn with_interval(mut self, interval_s: u32) -> Result<Self, ConfigError> {
        if !INTERVAL_RANGE_S.contains(&interval_s) {
            return Err(ConfigError::InvalidInterval(interval_s));
        }
        self.interval_s = interval_s;
        Ok(self)
    }

    /// Sets the QoS of telemetry (default QoS 0). At QoS 1 a sample is kept until its PUBACK and
    /// retransmitted like a shadow report, also after a reconnect; one sample may be in flight at a
    /// time, and [`Device::publish_sample`] refuses the next with [`PublishError::InflightFull`] until
    /// it is acknowledged.
    pub fn with_telemetry_qos(mut self, qos: QoS) -> Self {
        self.telemetry_qos = qos;
        self
    }

    /// Logs in with `credentials` at every CONNECT (without them the device connects anonymously,
    /// which Grove allows only on loopback listeners that say so).
    pub fn with_credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = Some(credentials);
        self
    }

    /// The thing name, also used as the MQTT client identifier.
    pub fn thing(&self) -> &str {
        &self.thing
    }
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The shell reported that the transport closed or failed.
    TransportClosed,
    /// No CONNACK within the ack timeout.
    ConnackTimeout,
    /// No SUBACK within the ack timeout.
    SubackTimeout,
    /// No PINGRESP within the ack timeout.
    PingTimeout,
    /// The broker refused the connection: `BadUserNameOrPassword` (4) or `NotAuthorized` (5) when the
    /// [`Credentials`] are wrong, missing or revoked. The device retries after its backoff, as for any
    /// other end of a session; the shell decides whether to give up.
    Refused(ConnectReturnCode),
    /// The broker refused a shadow subscription.
    SubscribeRefused,
    /// The broker sent bytes that are not MQTT 3.1.1.
    Protocol(DecodeError),
    /// The broker sent a packet that makes no sense in the session's state.
    UnexpectedPacket,
    /// A packet larger than [`RX_CAPACITY`].
    PacketTooLarge,
}

/// Why a desired change was not applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `interval_s` outside [`INTERVAL_RANGE_S`].
    IntervalOutOfRange(u32),
    /// The actuator reported an error; the reported state keeps the old value.
    ActuatorFault,
    /// A shadow payload could not be parsed.
    Malformed(shadow::ShadowError),
}

/// Something the shell must act on, or may want to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Open the transport to the broker, then call [`Device::transport_opened`] (or
    /// [`Device::transport_closed`] if that failed).
    OpenTransport,
    /// The session ended: close the transport. The device asks to reopen it after a backoff.
    Disconnected(DisconnectReason),
    /// The session is up and the shadow topics are subscribed.
    Connected,
    /// A desired change was applied; the state is now this and is being reported.
    Applied(State),
    /// A desired change, or part of it, was refused.
    Refused(Refusal),
    /// The shadow service refused a request (`topic` is `get` or `update`'s rejection topic).
    ShadowRejected {
        /// The rejection topic.
        topic: Topic,
        /// The service's error code.
        code: u16,
    },
    /// Take a sensor sample and pass it to [`Device::publish_sample`].
    SampleDue,
}

/// Why a telemetry sample was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// There is no session; telemetry is not queued across reconnects.
    #[error("not connected")]
    NotConnected,
    /// The transmit buffer is full: the shell is not draining it fast enough.
    #[error("transmit buffer full")]
    Backpressure,
    /// Telemetry is QoS 1 and the previous sample still awaits its PUBACK.
    #[error("previous QoS 1 sample not yet acknowledged")]
    InflightFull,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    /// No session; ask for a transport at `reconnect_at`.
    Idle { reconnect_at: Instant },
    /// [`Event::OpenTransport`] was emitted; waiting for the shell.
    Opening,
    /// CONNECT sent.
    AwaitConnack { deadline: Instant },
    /// SUBSCRIBE sent.
    AwaitSuback { pkid: u16, deadline: Instant },
    /// Subscribed: shadow traffic flows.
    Ready,
}

/// A QoS 1 publication awaiting PUBACK, kept encoded so a retransmission is a copy plus the DUP bit.
#[derive(Debug)]
struct Inflight {
    pkid: u16,
    /// A telemetry sample rather than a shadow request (telemetry may hold only one slot).
    telemetry: bool,
    sent_at: Instant,
    packet: Vec<u8, INFLIGHT_MESSAGE>,
}

/// The device core. `A` is the actuator the shadow's `relay` field drives.
pub struct Device<A> {
    config: Config,
    actuator: A,
    link: Link,
    rx: Vec<u8, RX_CAPACITY>,
    tx: Vec<u8, TX_CAPACITY>,
    inflight: Vec<Inflight, INFLIGHT_SLOTS>,
    next_pkid: u16,
    /// When the device last sent anything; keep-alive pings are due `keep_alive_s` later.
    last_tx: Instant,
    /// Set while a PINGREQ awaits its PINGRESP.
    ping_deadline: Option<Instant>,
    backoff_ms: u32,
    /// What the actuator and telemetry really are; this is what gets reported.
    state: State,
    /// The last shadow version applied, to drop deltas that arrive out of order.
    version: Option<u64>,
    report_pending: bool,
    get_pending: bool,
    next_sample: Instant,
    seq: u32,
    events: Deque<Event, EVENT_QUEUE>,
}

impl<A: Actuator> Device<A> {
    /// Creates the device, switches the actuator off (its boot state) and schedules the first
    /// connection attempt for `now`.
    pub fn new(config: Config, actuator: A, now: Instant) -> Self {
        let state = State {
            relay: false,
            interval_s: config.interval_s,
        };
        let mut device = Self {
            backoff_ms: config.reconnect_min_ms,
            next_sample: now.after_millis(state.interval_s.saturating_mul(1000)),
            config,
            actuator,
            link: Link::Idle { reconnect_at: now },
            rx: Vec::new(),
            tx: Vec::new(),
            inflight: Vec::new(),
            next_pkid: 1,
            last_tx: now,
            ping_deadline: None,
            state,
            version: None,
            report_pending: true,
            get_pending: false,
            seq: 0,
            events: Deque::new(),
        };
        if device.actuator.set(false).is_err() {
            device.emit(Event::Refused(Refusal::ActuatorFault));
        }
        device
    }

    /// The state the device reports.
    pub fn state(&self) -> State {
        self.state
    }

    /// Whether the session is up and subscribed.
    pub fn is_connected(&self) -> bool {
        self.link == Link::Ready
    }

    /// Whether the device uses its transport: true from [`Device::transport_opened`] until the session
    /// ends ([`Event::Disconnected`]), when the shell should close it.
    pub fn uses_transport(&self) -> bool {
        !matches!(self.link, Link::Idle { .. } | Link::Opening)
    }

    /// The sequence number of the last telemetry sample [`Device::publish_sample`] numbered: 0 after
    /// boot, 1 for the first sample. A sample is numbered once there is a session, even if the transmit
    /// buffer then refuses it ([`PublishError::Backpressure`]), so a receiver sees a gap for it.
    pub fn seq(&self) -> u32 {
        self.seq
    }

    /// The actuator, e.g. for the simulator to observe it.
    pub fn actuator(&self) -> &A {
        &self.actuator
    }

    /// Consumes the device and gives the actuator back.
    pub fn into_actuator(self) -> A {
        self.actuator
    }

    /// The next event for the shell, oldest first.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// A board's main loop, after [`crate::transport::poll`]: takes every waiting event, opens the
    /// transport at once on [`Event::OpenTransport`] (for links that are always there, such as a
    /// UART to a modem) and publishes a reading from `measure` on [`Event::SampleDue`]. A failed
    /// reading or a full transmit buffer skips that sample (the next is due one interval later);
    /// the other events are notifications, dropped here.
    pub fn handle_events<E>(
        &mut self,
        now: Instant,
        mut measure: impl FnMut() -> Result<Measurement, E>,
    ) {
        while let Some(event) = self.poll_event() {
            match event {
                Event::OpenTransport => self.transport_opened(now),
                Event::SampleDue => {
                    if let Ok(measurement) = measure() {
                        let _ = self.publish_sample(measurement, now);
                    }
                }
                _ => {}
            }
        }
    }

    /// Copies bytes to send into `buf`; returns how many, or `None` when nothing is waiting.
    pub fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<usize> {
        let n = self.tx.len().min(buf.len());
        if n == 0 {
            return None;
        }
        buf[..n].copy_from_slice(&self.tx[..n]);
        self.tx.copy_within(n.., 0);
        self.tx.truncate(self.tx.len() - n);
        Some(n)
    }

    /// The earliest instant at which [`Device::handle_timeout`] has work to do.
    pub fn poll_timeout(&self) -> Instant {
        let mut next = self.next_sample;
        let mut consider = |at: Instant| next = next.min(at);
        match self.link {
            Link::Idle { reconnect_at } => consider(reconnect_at),
            Link::Opening => {}
            Link::AwaitConnack { deadline } | Link::AwaitSuback { deadline, .. } => {
                consider(deadline)
            }
            Link::Ready => {
                consider(self.ping_deadline.unwrap_or(self.ping_due()));
                for inflight in &self.inflight {
                    consider(inflight.sent_at.after_millis(self.config.ack_timeout_ms));
                }
            }
        }
        next
    }

    /// Runs every timer that expired at `now`: reconnect, acknowledgement timeouts, keep-alive,
    /// retransmission and the telemetry schedule.
    pub fn handle_timeout(&mut self, now: Instant) {
        if now >= self.next_sample {
            self.emit(Event::SampleDue);
            let period = self.state.interval_s.saturating_mul(1000);
            // Skip missed periods instead of bursting samples after a stall.
            let next = self.next_sample.after_millis(period);
            self.next_sample = if next <= now {
                now.after_millis(period)
            } else {
                next
            };
        }
        match self.link {
            Link::Idle { reconnect_at } if now >= reconnect_at => {
                self.link = Link::Opening;
                self.emit(Event::OpenTransport);
            }
            Link::AwaitConnack { deadline } if now >= deadline => {
                self.lose(now, DisconnectReason::ConnackTimeout)
            }
            Link::AwaitSuback { deadline, .. } if now >= deadline => {
                self.lose(now, DisconnectReason::SubackTimeout)
            }
            Link::Ready => {
                match self.ping_deadline {
                    Some(deadline) if now >= deadline => {
                        return self.lose(now, DisconnectReason::PingTimeout)
                    }
                    None if now >= self.ping_due() => {
                        self.send(&Packet::Pingreq, now);
                        self.ping_deadline = Some(now.after_millis(self.config.ack_timeout_ms));
                    }
                    _ => {}
                }
                self.retransmit(now, |sent_at, timeout| now >= sent_at.after_millis(timeout));
            }
            _ => {}
        }
    }

    /// The shell opened the transport: start the MQTT session.
    pub fn transport_opened(&mut self, now: Instant) {
        self.rx.clear();
        self.tx.clear();
        self.ping_deadline = None;
        let will_topic = shadow::join(&[STATUS_PREFIX, &self.config.thing, STATUS_SUFFIX]);
        let connect = mqtt::Connect {
            client_id: &self.config.thing,
            keep_alive: self.config.keep_alive_s,
            clean_session: true,
            will: Some(mqtt::Will {
                topic: &will_topic,
                payload: b"offline",
                qos: QoS::AtLeastOnce,
                retain: true,
            }),
            username: self.config.credentials.as_ref().map(Credentials::username),
            password: self
                .config
                .credentials
                .as_ref()
                .map(|c| c.password.as_slice()),
        };
        encode_into(&mut self.tx, &Packet::Connect(connect));
        self.last_tx = now;
        self.link = Link::AwaitConnack {
            deadline: now.after_millis(self.config.ack_timeout_ms),
        };
    }

    /// The shell's transport closed, failed or could not be opened.
    pub fn transport_closed(&mut self, now: Instant) {
        if !matches!(self.link, Link::Idle { .. }) {
            self.lose(now, DisconnectReason::TransportClosed);
        }
    }

    /// Consumes bytes received from the broker.
    pub fn handle_input(&mut self, mut data: &[u8], now: Instant) {
        while !data.is_empty() {
            if matches!(self.link, Link::Idle { .. } | Link::Opening) {
                return;
            }
            let room = RX_CAPACITY - self.rx.len();
            let (chunk, rest) = data.split_at(room.min(data.len()));
            data = rest;
            // Cannot fail: the chunk fits the remaining capacity.
            let _ = self.rx.extend_from_slice(chunk);
            self.process_rx(now);
            if self.rx.len() == RX_CAPACITY {
                return self.lose(now, DisconnectReason::PacketTooLarge);
            }
        }
    }

    /// Publishes one sensor sample as telemetry, at the configured QoS
    /// ([`Config::with_telemetry_qos`]); [`Device::seq`] then gives its sequence number.
    pub fn publish_sample(
        &mut self,
        measurement: Measurement,
        now: Instant,
    ) -> Result<(), PublishError> {
        if self.link != Link::Ready {
            return Err(PublishError::NotConnected);
        }
        let qos1 = self.config.telemetry_qos == QoS::AtLeastOnce;
        if qos1 && self.inflight.iter().any(|m| m.telemetry) {
            return Err(PublishError::InflightFull);
        }
        self.seq = self.seq.wrapping_add(1);
        let mut payload = [0u8; 96];
        let len = Telemetry::new(self.seq, measurement, self.state.relay)
            .encode(&mut payload)
            .ok_or(PublishError::Backpressure)?;
        let topic = shadow::join(&[
            telemetry::TOPIC_PREFIX,
            &self.config.thing,
            telemetry::TOPIC_SUFFIX,
        ]);
        if qos1 {
            // No telemetry sample is in flight (checked above) and shadow requests take at most
            // `SHADOW_SLOTS`, so a slot is free.
            return if self.publish_qos1(&topic, &payload[..len], true, now) {
                Ok(())
            } else {
                Err(PublishError::Backpressure)
            };
        }
        let publish = Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: &topic,
            pkid: 0,
            payload: &payload[..len],
        };
        if self.send(&Packet::Publish(publish), now) {
            Ok(())
        } else {
            Err(PublishError::Backpressure)
        }
    }

    fn process_rx(&mut self, now: Instant) {
        loop {
            let (action, used) = match mqtt::decode(&self.rx) {
                Ok(Some((packet, used))) => (classify(packet, &self.config.thing), used),
                Ok(None) => return,
                Err(error) => return self.lose(now, DisconnectReason::Protocol(error)),
            };
            self.rx.copy_within(used.., 0);
            self.rx.truncate(self.rx.len() - used);
            self.act(action, now);
            if matches!(self.link, Link::Idle { .. }) {
                return;
            }
        }
    }

    fn act(&mut self, action: Action, now: Instant) {
        match (action, self.link) {
            (Action::Connack(ConnectReturnCode::Accepted), Link::AwaitConnack { .. }) => {
                let pkid = self.pkid();
                let topics = [
                    Topic::UpdateDelta,
                    Topic::UpdateRejected,
                    Topic::GetAccepted,
                    Topic::GetRejected,
                ]
                .map(|t| t.for_thing(&self.config.thing));
                let filters = topics.each_ref().map(|topic| Filter {
                    topic,
                    qos: QoS::AtLeastOnce,
                });
                self.send(
                    &Packet::Subscribe {
                        pkid,
                        filters: SubscribeFilters::new(&filters),
                    },
                    now,
                );
                self.link = Link::AwaitSuback {
                    pkid,
                    deadline: now.after_millis(self.config.ack_timeout_ms),
                };
            }
            (Action::Connack(code), Link::AwaitConnack { .. }) => {
                self.lose(now, DisconnectReason::Refused(code))
            }
            (Action::Suback { pkid, ok }, Link::AwaitSuback { pkid: expected, .. })
                if pkid == expected =>
            {
                if !ok {
                    return self.lose(now, DisconnectReason::SubscribeRefused);
                }
                self.link = Link::Ready;
                self.backoff_ms = self.config.reconnect_min_ms;
                self.get_pending = true;
                self.emit(Event::Connected);
                self.announce_online(now);
                // Anything unacknowledged from the previous session goes out again before new traffic,
                // with DUP set, although the session is clean and the broker keeps no state for these
                // packet ids. That is deliberate: the device does not know whether the broker got them
                // before the connection broke, and at-least-once means sending again. A shadow report
                // carries the whole reported state and `get` is a read, so a duplicate is harmless;
                // a duplicate telemetry sample carries the same `seq`, so receivers can drop it.
                self.retransmit(now, |_, _| true);
                self.pump(now);
            }
            (Action::Puback(pkid), Link::Ready) => {
                self.inflight.retain(|m| m.pkid != pkid);
                self.pump(now);
            }
            (Action::Pingresp, Link::Ready) => self.ping_deadline = None,
            // A broker may deliver (e.g. retained) messages right after SUBACK, racing it; they count.
            (Action::Message { ack, shadow }, Link::Ready | Link::AwaitSuback { .. }) => {
                if let Some(pkid) = ack {
                    self.send(&Packet::Puback(pkid), now);
                }
                match shadow {
                    Some(Ok(inbound)) => self.on_shadow(inbound),
                    Some(Err(error)) => self.emit(Event::Refused(Refusal::Malformed(error))),
                    // A message on a topic the device never subscribed to: acknowledged and ignored.
                    None => {}
                }
                self.pump(now);
            }
            _ => self.lose(now, DisconnectReason::UnexpectedPacket),
        }
    }

    fn on_shadow(&mut self, inbound: Inbound) {
        match inbound {
            Inbound::Delta { version, patch } => {
                if self.fresh(version) {
                    self.apply(patch);
                }
            }
            // A `get/accepted` answer that arrives after a newer delta (or a duplicate of one already
            // handled) would re-apply a stale desired state, so it is held to the same version rule.
            Inbound::Document { version, delta } => {
                if let (true, Some(patch)) = (self.fresh(version), delta) {
                    self.apply(patch);
                }
            }
            Inbound::Rejected { topic, code } => self.emit(Event::ShadowRejected { topic, code }),
        }
    }

    /// Whether a shadow message of `version` is newer than the last one applied; records it if so.
    /// Messages without a version (not sent by AWS or Grove, but allowed) are always fresh.
    fn fresh(&mut self, version: Option<u64>) -> bool {
        match (version, self.version) {
            (Some(new), Some(old)) if new <= old => false,
            _ => {
                self.version = version.or(self.version);
                true
            }
        }
    }

    /// Applies a desired change to the hardware and schedules a report of what really happened. The
    /// report goes out even if nothing changed, so that a stale delta is cleared on the service.
    fn apply(&mut self, patch: Patch) {
        let mut refused = None;
        if let Some(on) = patch.relay {
            match self.actuator.set(on) {
                Ok(()) => self.state.relay = on,
                Err(_) => refused = Some(Refusal::ActuatorFault),
            }
        }
        if let Some(interval_s) = patch.interval_s {
            if INTERVAL_RANGE_S.contains(&interval_s) {
                self.state.interval_s = interval_s;
            } else {
                refused = Some(Refusal::IntervalOutOfRange(interval_s));
            }
        }
        self.report_pending = true;
        match refused {
            Some(refusal) => self.emit(Event::Refused(refusal)),
            None => self.emit(Event::Applied(self.state)),
        }
    }

    /// Sends pending shadow requests while in-flight slots are free: the report first, so that the
    /// `get/accepted` answer already reflects it.
    fn pump(&mut self, now: Instant) {
        if self.link != Link::Ready {
            return;
        }
        if self.report_pending && self.shadow_slot_free() {
            let mut payload = [0u8; 80];
            if let Ok(len) = shadow::encode_report(self.state, &mut payload) {
                self.report_pending = false;
                let topic = Topic::Update.for_thing(&self.config.thing);
                self.publish_qos1(&topic, &payload[..len], false, now);
            }
        }
        if self.get_pending && self.shadow_slot_free() {
            self.get_pending = false;
            let topic = Topic::Get.for_thing(&self.config.thing);
            self.publish_qos1(&topic, b"{}", false, now);
        }
    }

    fn shadow_slot_free(&self) -> bool {
        self.inflight.iter().filter(|m| !m.telemetry).count() < SHADOW_SLOTS
    }

    /// Sends a QoS 1 publication and keeps it for retransmission; returns false if it does not fit an
    /// in-flight slot.
    fn publish_qos1(&mut self, topic: &str, payload: &[u8], telemetry: bool, now: Instant) -> bool {
        let pkid = self.pkid();
        let publish = Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic,
            pkid,
            payload,
        };
        let mut packet = Vec::new();
        // Resizing an empty vector to its capacity cannot fail.
        let _ = packet.resize(INFLIGHT_MESSAGE, 0);
        let Ok(len) = Packet::Publish(publish).encode(&mut packet) else {
            return false;
        };
        packet.truncate(len);
        // If the transmit buffer is full the message still goes out, by retransmission.
        let _ = self.push_tx(&packet);
        self.last_tx = now;
        // Callers check for a free slot first.
        self.inflight
            .push(Inflight {
                pkid,
                telemetry,
                sent_at: now,
                packet,
            })
            .is_ok()
    }

    /// Re-sends every in-flight message `due(sent_at, ack_timeout_ms)` selects, with the DUP flag set.
    fn retransmit(&mut self, now: Instant, due: impl Fn(Instant, u32) -> bool) {
        let timeout = self.config.ack_timeout_ms;
        for index in 0..self.inflight.len() {
            if !due(self.inflight[index].sent_at, timeout) {
                continue;
            }
            self.inflight[index].packet[0] |= 0b1000;
            let packet = core::mem::take(&mut self.inflight[index].packet);
            if self.push_tx(&packet) {
                self.last_tx = now;
            }
            self.inflight[index].packet = packet;
            self.inflight[index].sent_at = now;
        }
    }

    fn announce_online(&mut self, now: Instant) {
        let topic = shadow::join(&[STATUS_PREFIX, &self.config.thing, STATUS_SUFFIX]);
        let publish = Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: true,
            topic: &topic,
            pkid: 0,
            payload: b"online",
        };
        self.send(&Packet::Publish(publish), now);
    }

    /// Encodes `packet` onto the transmit buffer; returns false if it did not fit.
    fn send(&mut self, packet: &Packet<'_>, now: Instant) -> bool {
        let sent = encode_into(&mut self.tx, packet);
        if sent {
            self.last_tx = now;
        }
        sent
    }

    fn push_tx(&mut self, bytes: &[u8]) -> bool {
        self.tx.extend_from_slice(bytes).is_ok()
    }

    fn lose(&mut self, now: Instant, reason: DisconnectReason) {
        self.link = Link::Idle {
            reconnect_at: self.backoff(now),
        };
        self.ping_deadline = None;
        self.rx.clear();
        self.tx.clear();
        self.emit(Event::Disconnected(reason));
    }

    /// The next reconnect instant; doubles the delay for the time after.
    fn backoff(&mut self, now: Instant) -> Instant {
        let at = now.after_millis(self.backoff_ms);
        self.backoff_ms = self
            .backoff_ms
            .saturating_mul(2)
            .min(self.config.reconnect_max_ms);
        at
    }

    fn ping_due(&self) -> Instant {
        self.last_tx
            .after_millis(u32::from(self.config.keep_alive_s) * 1000)
    }

    fn pkid(&mut self) -> u16 {
        let pkid = self.next_pkid;
        self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
        pkid
    }

    fn emit(&mut self, event: Event) {
        if self.events.is_full() {
            self.events.pop_front();
        }
        let _ = self.events.push_back(event);
    }
}

/// Encodes `packet` at the end of `tx`; returns false (leaving `tx` as it was) if it does not fit.
fn encode_into(tx: &mut Vec<u8, TX_CAPACITY>, packet: &Packet<'_>) -> bool {
    let start = tx.len();
    let _ = tx.resize(TX_CAPACITY, 0);
    match packet.encode(&mut tx[start..]) {
        Ok(len) => {
            tx.truncate(start + len);
            true
        }
        Err(_) => {
            tx.truncate(start);
            false
        }
    }
}

/// A received packet reduced to what the session needs, owned, so the receive buffer can be compacted
/// before the session acts on it.
enum Action {
    Connack(ConnectReturnCode),
    Suback {
        pkid: u16,
        ok: bool,
    },
    Puback(u16),
    Pingresp,
    Message {
        ack: Option<u16>,
        shadow: Option<Result<Inbound, shadow::ShadowError>>,
    },
    Unexpected,
}

fn classify(packet: Packet<'_>, thing: &str) -> Action {
    match packet {
        Packet::Connack { code, .. } => Action::Connack(code),
        Packet::Suback { pkid, codes } => Action::Suback {
            pkid,
            ok: !codes.contains(&mqtt::SUBACK_FAILURE),
        },
        Packet::Puback(pkid) => Action::Puback(pkid),
        Packet::Pingresp => Action::Pingresp,
        Packet::Publish(publish) => Action::Message {
            ack: (publish.qos == QoS::AtLeastOnce).then_some(publish.pkid),
            shadow: Topic::parse(publish.topic, thing)
                .map(|topic| shadow::parse(topic, publish.payload)),
        },
        _ => Action::Unexpected,
    }
}
