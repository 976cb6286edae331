//! `grove-bench half-connect`: connections that send part of a large CONNECT and stop, against
//! mosquitto in the same run (issue 15 item 6): what an unauthenticated peer can make the broker
//! hold. Shares the brokers' setup and measurements with `auth-storm` ([`crate::auth`]).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::BytesMut;
use rumqttc::ConnectReturnCode;
use serde::Serialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpSocket;
use tokio::task::JoinSet;

use crate::auth::{
    device_id, login, read_counters, side_by_side, source, start_grove, start_mosquitto, Cell,
    GroveCounters, Target, LOGIN_LIMIT, PASSWORD, RSS_ABORT_KIB, SAMPLE_EVERY, WRONG_PASSWORD,
};
use crate::flow::{mib, ms};
use crate::peer::PeerKind;
use crate::stats::{LatencyRecorder, LatencySummary};

/// The shape of the half-sent CONNECT attack (`grove-bench half-connect`, issue 15 item 6).
#[derive(Debug, Clone, Serialize)]
pub struct HalfSettings {
    /// Connections opened at once, each with one unfinished CONNECT.
    pub connections: u32,
    /// Loopback source addresses they spread over (127.0.0.2 and up).
    pub sources: u8,
    /// The CONNECT's remaining length, as its fixed header announces it.
    pub announced: usize,
    /// Bytes of it each connection sends (at most; less if the peer stops reading).
    pub send: usize,
    /// How long the connections are held open from the first connect.
    pub hold: Duration,
    /// Pause after they are closed before the last memory reading.
    pub settle: Duration,
}

/// An MQTT 5 CONNECT (client id and username `id`, a password) padded with user properties to a
/// remaining length of at least `announced` bytes, encoded by rumqttc's v5 codec: what a client
/// announcing a large CONNECT would really send. The padding comes in properties of at most
/// 60,000 bytes, each its own key; the result is at most a property's overhead (and a few
/// length bytes) longer than asked.
pub fn padded_connect(id: &str, announced: usize) -> BytesMut {
    use rumqttc::v5::mqttbytes::v5::{Connect, ConnectProperties, Login, Packet as Packet5};
    const CHUNK: usize = 60_000;
    let mut properties = ConnectProperties::new();
    let mut connect = Connect {
        keep_alive: 30,
        client_id: id.to_owned(),
        clean_start: true,
        properties: None,
    };
    let login = Some(Login::new(id, WRONG_PASSWORD));
    let encode = |connect: &Connect| {
        let mut out = BytesMut::new();
        Packet5::Connect(connect.clone(), None, login.clone())
            .write(&mut out, None)
            .expect("a CONNECT under 256 MiB encodes");
        out
    };
    loop {
        let out = encode(&connect);
        let remaining = out.len() - fixed_header_len(out.len());
        if remaining >= announced {
            return out;
        }
        // Key (2 + 3 bytes), value (2 + n), identifier (1): 8 bytes of overhead.
        let missing = announced - remaining;
        let n = missing.saturating_sub(8).clamp(1, CHUNK);
        let key = format!("p{:02}", properties.user_properties.len() % 100);
        properties.user_properties.push((key, "x".repeat(n)));
        connect.properties = Some(properties.clone());
    }
}

/// The length of an MQTT fixed header (type byte and 1-4 length bytes) of a packet `total` bytes
/// long in all.
fn fixed_header_len(total: usize) -> usize {
    let mut header = 2;
    while total - header >= 128usize.pow(header as u32 - 1) && header < 5 {
        header += 1;
    }
    header
}

/// How the half-sent CONNECTs ended, as the client saw them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct HalfOutcomes {
    /// The TCP connect itself failed or timed out (never accepted within the hold).
    pub not_connected: u64,
    /// The peer answered with a CONNACK "packet too large" (MQTT 5 code 0x95).
    pub too_large: u64,
    /// It answered with another CONNACK code.
    pub other_connack: u64,
    /// It closed the connection (or reset it) without a CONNACK.
    pub closed: u64,
    /// Still open when the hold ended (closed by this client then).
    pub held: u64,
}

impl HalfOutcomes {
    /// Connections counted.
    pub fn total(&self) -> u64 {
        self.not_connected + self.too_large + self.other_connack + self.closed + self.held
    }
}

/// One half-sent CONNECT as the client saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HalfEnd {
    NotConnected,
    /// The CONNACK's reason code, and when it came (from the start of the TCP connect).
    Connack(u8, Duration),
    /// Closed or reset by the peer, and when.
    Closed(Duration),
    Held,
}

impl HalfOutcomes {
    /// Counts one connection's end.
    pub fn count(&mut self, end: HalfEnd) {
        match end {
            HalfEnd::NotConnected => self.not_connected += 1,
            HalfEnd::Connack(0x95, _) => self.too_large += 1,
            HalfEnd::Connack(..) => self.other_connack += 1,
            HalfEnd::Closed(_) => self.closed += 1,
            HalfEnd::Held => self.held += 1,
        }
    }
}

/// The reason code of a CONNACK at the start of `buf` (MQTT 5 and 3.1.1 alike: type 0x20, length,
/// flags, code), `None` while incomplete or if it is something else.
pub fn connack_code(buf: &[u8]) -> Option<u8> {
    match buf {
        [0x20, len, _flags, code, ..] if *len >= 2 => Some(*code),
        _ => None,
    }
}

/// One attacking connection: TCP connect from `from`, send `packet` (the first bytes of a larger
/// CONNECT) as far as the peer reads it, then keep the connection until `deadline` unless the peer
/// answers or closes first. Returns how it ended and the bytes the kernel took.
async fn half_connect(
    from: IpAddr,
    port: u16,
    packet: Arc<BytesMut>,
    deadline: tokio::time::Instant,
) -> (HalfEnd, u64) {
    let start = Instant::now();
    let connect = async {
        let socket = TcpSocket::new_v4().ok()?;
        socket.bind(SocketAddr::new(from, 0)).ok()?;
        socket
            .connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
            .await
            .ok()
    };
    let Ok(Some(mut stream)) = tokio::time::timeout_at(deadline, connect).await else {
        return (HalfEnd::NotConnected, 0);
    };
    let (mut rd, mut wr) = stream.split();
    let (mut sent, mut incoming) = (0usize, Vec::with_capacity(16));
    let mut chunk = [0u8; 64];
    let sleep = tokio::time::sleep_until(deadline);
    tokio::pin!(sleep);
    loop {
        let writing = sent < packet.len();
        tokio::select! {
            written = wr.write(&packet[sent..(sent + 16 * 1024).min(packet.len())]), if writing => {
                match written {
                    Ok(n) if n > 0 => sent += n,
                    // The peer reset the connection: see whether it said something first.
                    _ => match tokio::time::timeout(Duration::from_millis(100), rd.read(&mut chunk)).await {
                        Ok(Ok(n)) if n > 0 => {
                            incoming.extend_from_slice(&chunk[..n]);
                            let end = connack_code(&incoming)
                                .map_or(HalfEnd::Closed(start.elapsed()), |c| HalfEnd::Connack(c, start.elapsed()));
                            return (end, sent as u64);
                        }
                        _ => return (HalfEnd::Closed(start.elapsed()), sent as u64),
                    },
                }
            }
            read = rd.read(&mut chunk) => match read {
                Ok(n) if n > 0 => {
                    incoming.extend_from_slice(&chunk[..n]);
                    if let Some(code) = connack_code(&incoming) {
                        return (HalfEnd::Connack(code, start.elapsed()), sent as u64);
                    }
                }
                _ => return (HalfEnd::Closed(start.elapsed()), sent as u64),
            },
            _ = &mut sleep => return (HalfEnd::Held, sent as u64),
        }
    }
}

/// Everything measured on one broker under the half-sent CONNECTs.
#[derive(Debug, Clone, Serialize)]
pub struct HalfResult {
    /// `grove` or `mosquitto`.
    pub peer: &'static str,
    /// VmRSS before the attack (KiB).
    pub idle_rss_kib: u64,
    /// Highest VmRSS sampled during the hold (KiB), the legitimate login's included (on grove an
    /// argon2 check: 19 MiB).
    pub peak_rss_kib: u64,
    /// Highest VmRSS sampled before the legitimate login started: the attack's alone (KiB).
    pub peak_before_login_kib: u64,
    /// VmHWM after the hold (KiB).
    pub hwm_kib: u64,
    /// VmRSS `settle` after the connections were closed (KiB).
    pub after_rss_kib: u64,
    /// Threads idle / peak / after.
    pub threads: (u64, u64, u64),
    /// How the connections ended.
    pub outcomes: HalfOutcomes,
    /// Bytes the kernel took from each connection: mean and max.
    pub sent_mean: u64,
    pub sent_max: u64,
    /// Time to the peer's answer or close, of those it answered or closed: p50 and max.
    pub answered: LatencySummary,
    /// `dev-0`'s login (3.1.1, correct password) one second into the attack: its code and time.
    pub login_ok: bool,
    pub login_ms: f64,
    /// grove's counters over the attack; `None` for mosquitto.
    pub counters: Option<GroveCounters>,
    /// The broker's CPU time over the attack (s).
    pub broker_cpu_s: f64,
}

/// Runs the half-sent CONNECTs against each broker in turn (mosquitto first, unless `None`).
pub async fn run_half(
    grove: &Path,
    mosquitto: Option<(&Path, &Path)>,
    settings: &HalfSettings,
    extra: &[&str],
) -> anyhow::Result<Vec<HalfResult>> {
    let mut out = Vec::new();
    if let Some((binary, passwd_tool)) = mosquitto {
        let target = start_mosquitto(binary, passwd_tool, 1, &[])?;
        out.push(half_attack(&target, PeerKind::Mosquitto, settings).await?);
        target.peer.stop()?;
    }
    let target = start_grove(grove, 1, extra)?;
    out.push(half_attack(&target, PeerKind::Grove, settings).await?);
    target.peer.stop()?;
    Ok(out)
}

/// One broker under the half-sent CONNECTs.
async fn half_attack(
    target: &Target,
    kind: PeerKind,
    s: &HalfSettings,
) -> anyhow::Result<HalfResult> {
    let name = kind.name();
    let peer = &target.peer;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = peer.status()?;
    let idle_rss_kib = idle.vmrss.unwrap_or(0);
    let before = match target.ops_port {
        Some(p) => Some(read_counters(p).await?),
        None => None,
    };
    let broker_cpu0 = peer.cpu_time()?;
    let mut packet = padded_connect("attacker", s.announced);
    packet.truncate(s.send);
    let packet = Arc::new(packet);
    eprintln!(
        "half-connect: {name}: {} connections, each sending {} bytes of a CONNECT announcing {}, held {:?} ...",
        s.connections,
        packet.len(),
        s.announced,
        s.hold
    );
    let deadline = tokio::time::Instant::now() + s.hold;
    let mut attackers = JoinSet::new();
    for a in 0..s.connections {
        let (packet, port, from) = (packet.clone(), target.port, source(a, s.sources));
        attackers.spawn(half_connect(from, port, packet, deadline));
    }
    let port = target.port;
    let login_started = Arc::new(AtomicBool::new(false));
    let started = login_started.clone();
    let mut legit = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        started.store(true, Ordering::Relaxed);
        login(
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            port,
            &device_id(0),
            PASSWORD,
            LOGIN_LIMIT,
        )
        .await
    });
    let (mut peak_rss_kib, mut peak_threads) = (idle_rss_kib, idle.threads);
    let mut peak_before_login_kib = idle_rss_kib;
    let mut sample = || -> anyhow::Result<()> {
        let st = peer.status()?;
        let rss = st.vmrss.unwrap_or(0);
        if !login_started.load(Ordering::Relaxed) {
            peak_before_login_kib = peak_before_login_kib.max(rss);
        }
        peak_rss_kib = peak_rss_kib.max(rss);
        peak_threads = peak_threads.max(st.threads);
        anyhow::ensure!(
            rss < idle_rss_kib + RSS_ABORT_KIB,
            "{name}: RSS {rss} KiB is more than 2 GiB over idle ({idle_rss_kib} KiB): attack stopped"
        );
        Ok(())
    };
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    let (mut outcomes, mut answered) = (HalfOutcomes::default(), LatencyRecorder::new());
    let (mut sent_sum, mut sent_max) = (0u64, 0u64);
    // Sampled over the whole hold, the legitimate login included, even when the broker is done
    // with the attackers at once.
    let mut login_result = None;
    let hold_over = tokio::time::sleep_until(deadline);
    tokio::pin!(hold_over);
    let mut hold_done = false;
    while !(hold_done && attackers.is_empty() && login_result.is_some()) {
        tokio::select! {
            () = &mut hold_over, if !hold_done => hold_done = true,
            joined = &mut legit, if login_result.is_none() => login_result = Some(joined?),
            Some(ended) = attackers.join_next(), if !attackers.is_empty() => {
                let (end, sent) = ended?;
                outcomes.count(end);
                if let HalfEnd::Connack(_, t) | HalfEnd::Closed(t) = end {
                    answered.record(t);
                }
                sent_sum += sent;
                sent_max = sent_max.max(sent);
            }
            _ = tick.tick() => sample()?,
        }
    }
    sample()?;
    let (code, login_elapsed) = login_result.context("the login ended")?;
    let broker_cpu1 = peer.cpu_time()?;
    let hwm_kib = peer.memory()?.peak_kb;
    let counters = match (target.ops_port, before) {
        (Some(p), Some(before)) => Some(read_counters(p).await?.since(&before)),
        _ => None,
    };
    eprintln!(
        "half-connect: {name}: closed; waiting {:?} before the last reading",
        s.settle
    );
    tokio::time::sleep(s.settle).await;
    let after = peer.status()?;
    Ok(HalfResult {
        peer: name,
        idle_rss_kib,
        peak_rss_kib,
        peak_before_login_kib,
        hwm_kib,
        after_rss_kib: after.vmrss.unwrap_or(0),
        threads: (idle.threads, peak_threads, after.threads),
        outcomes,
        sent_mean: sent_sum / u64::from(s.connections.max(1)),
        sent_max,
        answered: answered.summary(),
        login_ok: code == Some(ConnectReturnCode::Success),
        login_ms: login_elapsed.as_secs_f64() * 1e3,
        counters,
        broker_cpu_s: broker_cpu1.saturating_sub(broker_cpu0).as_secs_f64(),
    })
}

/// The Markdown section of the half-sent CONNECTs.
pub fn half_markdown(results: &[HalfResult], s: &HalfSettings) -> String {
    let find = |peer: &str| results.iter().find(|r| r.peer == peer);
    let mut out = format!(
        "{} connections at once from 127.0.0.2-{}, each sending the first {} bytes of an MQTT 5 \
         CONNECT whose fixed header announces {} bytes (user properties as padding, wrong \
         password), as far as the broker reads them, then holding the connection until {} s \
         after the start unless the broker answers or closes it first; dev-0 logs in (3.1.1, \
         correct password) 1 s in; memory sampled every {} ms; \"after\" = {} s after the \
         connections were closed.\n\n",
        s.connections,
        1 + s.sources.max(1),
        s.send.min(s.announced + 5),
        s.announced,
        s.hold.as_secs(),
        SAMPLE_EVERY.as_millis(),
        s.settle.as_secs(),
    );
    let rows: Vec<(&str, Cell<HalfResult>)> = vec![
        ("idle RSS", |r| {
            (mib(Some(r.idle_rss_kib)), r.idle_rss_kib as f64)
        }),
        ("peak RSS in the first second (before the login)", |r| {
            (
                mib(Some(r.peak_before_login_kib)),
                r.peak_before_login_kib as f64,
            )
        }),
        ("peak RSS over the hold (the login included)", |r| {
            (mib(Some(r.peak_rss_kib)), r.peak_rss_kib as f64)
        }),
        ("peak - idle, first second", |r| {
            let k = r.peak_before_login_kib.saturating_sub(r.idle_rss_kib);
            (mib(Some(k)), k as f64)
        }),
        ("peak - idle, whole hold", |r| {
            let k = r.peak_rss_kib.saturating_sub(r.idle_rss_kib);
            (mib(Some(k)), k as f64)
        }),
        ("VmHWM after the attack (peak since start)", |r| {
            (mib(Some(r.hwm_kib)), r.hwm_kib as f64)
        }),
        ("RSS after", |r| {
            (mib(Some(r.after_rss_kib)), r.after_rss_kib as f64)
        }),
        ("threads idle / peak / after", |r| {
            let (i, p, a) = r.threads;
            (format!("{i} / {p} / {a}"), p as f64)
        }),
        ("connections", |r| (r.outcomes.total().to_string(), 0.0)),
        ("connections: CONNACK 0x95 packet too large", |r| {
            (r.outcomes.too_large.to_string(), 0.0)
        }),
        ("connections: closed without CONNACK", |r| {
            (r.outcomes.closed.to_string(), 0.0)
        }),
        ("connections: still open at the end of the hold", |r| {
            (r.outcomes.held.to_string(), 0.0)
        }),
        ("connections: other CONNACK / TCP connect failed", |r| {
            (
                format!(
                    "{} / {}",
                    r.outcomes.other_connack, r.outcomes.not_connected
                ),
                0.0,
            )
        }),
        (
            "bytes written per connection (kernel buffers included): mean / max",
            |r| {
                (
                    format!("{} / {}", r.sent_mean, r.sent_max),
                    r.sent_mean as f64,
                )
            },
        ),
        ("time to the answer or close: p50 / max", |r| {
            let l = &r.answered;
            if l.samples == 0 {
                ("-".to_owned(), 0.0)
            } else {
                (
                    format!("{} / {}", ms(l.p50_us), ms(l.max_us)),
                    l.p50_us as f64,
                )
            }
        }),
        (
            "grove: refused connect_too_large / pending_limit / connect_timeout",
            |r| match &r.counters {
                Some(c) => (
                    format!(
                        "{} / {} / {}",
                        c.connect_too_large, c.pending_limit, c.connect_timeout
                    ),
                    0.0,
                ),
                None => ("-".to_owned(), 0.0),
            },
        ),
        ("dev-0 login 1 s into the attack", |r| {
            (
                format!(
                    "{} in {:.2} ms",
                    if r.login_ok { "accepted" } else { "FAILED" },
                    r.login_ms
                ),
                r.login_ms,
            )
        }),
        ("broker CPU during the attack", |r| {
            (format!("{:.2} s", r.broker_cpu_s), r.broker_cpu_s)
        }),
    ];
    out.push_str(&side_by_side(&rows, find("grove"), find("mosquitto")));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_padded_connect_is_a_valid_mqtt5_connect_of_the_announced_size() {
        use rumqttc::v5::mqttbytes::v5::Packet as Packet5;
        // Smaller than an unpadded CONNECT: no padding.
        assert_eq!(padded_connect("attacker", 1).len(), 46);
        for announced in [200, 20_000, 70_000, 1_153_434] {
            let bytes = padded_connect("attacker", announced);
            let header = fixed_header_len(bytes.len());
            let remaining = bytes.len() - header;
            assert!(remaining >= announced, "{announced}: {remaining}");
            assert!(remaining <= announced + 16, "{announced}: {remaining}");
            let mut buf = bytes.clone();
            match Packet5::read(&mut buf, None) {
                Ok(Packet5::Connect(c, None, Some(login))) => {
                    assert_eq!(
                        (c.client_id.as_str(), login.username.as_str()),
                        ("attacker", "attacker")
                    );
                    if announced > 1000 {
                        let props = c.properties.expect("padding");
                        assert!(props.user_properties.iter().all(|(_, v)| v.len() <= 60_000));
                    }
                }
                other => panic!("{announced}: {other:?}"),
            }
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn fixed_header_lengths_follow_the_variable_length_encoding() {
        assert_eq!(fixed_header_len(2), 2);
        assert_eq!(fixed_header_len(2 + 127), 2);
        assert_eq!(fixed_header_len(3 + 128), 3);
        assert_eq!(fixed_header_len(3 + 16_383), 3);
        assert_eq!(fixed_header_len(4 + 16_384), 4);
        assert_eq!(fixed_header_len(4 + 2_097_151), 4);
        assert_eq!(fixed_header_len(5 + 2_097_152), 5);
    }

    #[test]
    fn half_connect_outcomes_and_connack_codes() {
        assert_eq!(connack_code(&[0x20, 3, 0, 0x95, 0]), Some(0x95));
        assert_eq!(connack_code(&[0x20, 2, 0, 5]), Some(5));
        assert_eq!(connack_code(&[0x20, 2, 0]), None);
        assert_eq!(connack_code(&[0xe0, 2, 0, 0x95]), None);
        let mut o = HalfOutcomes::default();
        let t = Duration::from_millis(3);
        for end in [
            HalfEnd::Connack(0x95, t),
            HalfEnd::Connack(0x95, t),
            HalfEnd::Connack(0x87, t),
            HalfEnd::Closed(t),
            HalfEnd::Held,
            HalfEnd::NotConnected,
        ] {
            o.count(end);
        }
        assert_eq!(
            o,
            HalfOutcomes {
                not_connected: 1,
                too_large: 2,
                other_connack: 1,
                closed: 1,
                held: 1
            }
        );
        assert_eq!(o.total(), 6);
    }

    #[test]
    fn the_half_connect_table_puts_the_peers_side_by_side() {
        let result = |peer, idle, peak| HalfResult {
            peer,
            idle_rss_kib: idle,
            peak_rss_kib: peak,
            peak_before_login_kib: peak,
            hwm_kib: peak,
            after_rss_kib: idle,
            threads: (9, 9, 9),
            outcomes: HalfOutcomes {
                too_large: 300,
                ..HalfOutcomes::default()
            },
            sent_mean: 1000,
            sent_max: 2000,
            answered: LatencySummary {
                samples: 0,
                p50_us: 0,
                p99_us: 0,
                p999_us: 0,
                max_us: 0,
            },
            login_ok: true,
            login_ms: 12.0,
            counters: None,
            broker_cpu_s: 0.1,
        };
        let settings = HalfSettings {
            connections: 300,
            sources: 10,
            announced: 1_153_434,
            send: 1 << 20,
            hold: Duration::from_secs(10),
            settle: Duration::from_secs(5),
        };
        let text = half_markdown(
            &[
                result("grove", 20 * 1024, 30 * 1024),
                result("mosquitto", 10 * 1024, 300 * 1024),
            ],
            &settings,
        );
        assert!(
            text.contains("| peak - idle, whole hold | 10.0 MiB | 290.0 MiB | 0.03 |"),
            "{text}"
        );
        assert!(
            text.contains("| connections: CONNACK 0x95 packet too large | 300 | 300 | - |"),
            "{text}"
        );
        assert!(text.contains("announces 1153434 bytes"), "{text}");
    }
}
