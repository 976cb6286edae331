//! Raw MQTT 3.1.1 (and MQTT 5) over a bare socket, for what a well-behaved client library will not
//! do: write a burst of packets in one TCP write, never read (a stalled subscriber), vanish without
//! DISCONNECT, come from another loopback address, stay silent or send half a packet (a hostile
//! peer), acknowledge what was never sent, or send a malformed packet ([`Malformed`]). Packets are
//! encoded and decoded by rumqttc's codecs (`rumqttc::mqttbytes::v4`, `rumqttc::v5::mqttbytes`),
//! so no test builds MQTT bytes by hand; the malformed ones are built here, in one place, from
//! packets those codecs encoded.

use std::net::{IpAddr, SocketAddr};

use bytes::BytesMut;
use rumqttc::{Connect, ConnectReturnCode, Packet, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::WAIT;

/// An MQTT 5 packet (rumqttc's v5 codec).
pub use rumqttc::v5::mqttbytes::v5::Packet as Packet5;

/// Packets no conforming client sends, deliberately malformed for tests of how Grove refuses them
/// (MQTT 3.1.1 §4.8, MQTT 5 §4.13). Each is a packet rumqttc's codec encoded, with exactly the
/// one thing its variant names broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// A CONNECT (client id `id`, clean start) with the reserved connect flag, bit 0 of the
    /// connect flags, set (3.1.1 [MQTT-3.1.2-3], 5.0 §3.1.2.3); MQTT 5 when `v5`.
    ConnectReservedFlag {
        /// MQTT 5 rather than 3.1.1.
        v5: bool,
    },
    /// A CONNECT of remaining length zero: a fixed header and nothing else (`10 00`).
    EmptyConnect,
    /// A SUBSCRIBE to `a` whose fixed-header flags are 0 instead of 0b0010 ([MQTT-3.8.1-1]);
    /// MQTT 5 when `v5`.
    SubscribeFlags {
        /// MQTT 5 rather than 3.1.1.
        v5: bool,
    },
    /// An UNSUBSCRIBE of `a` whose fixed-header flags are 0 instead of 0b0010 ([MQTT-3.10.1-1]).
    UnsubscribeFlags,
    /// A PUBREL whose fixed-header flags are 0 instead of 0b0010 ([MQTT-3.6.1-1]).
    PubRelFlags,
}

impl Malformed {
    /// The packet's bytes.
    pub fn encode(self) -> BytesMut {
        use rumqttc::v5::mqttbytes::v5 as m5;
        let mut buf = BytesMut::new();
        let v4 = |p: Packet, buf: &mut BytesMut| {
            p.write(buf, 1 << 20).expect("encode");
        };
        let v5 = |p: Packet5, buf: &mut BytesMut| {
            p.write(buf, None).expect("encode");
        };
        match self {
            Malformed::ConnectReservedFlag { v5: false } => {
                v4(Packet::Connect(Connect::new("reserved")), &mut buf)
            }
            Malformed::ConnectReservedFlag { v5: true } => v5(
                Packet5::Connect(connect5("reserved", true), None, None),
                &mut buf,
            ),
            Malformed::EmptyConnect => {
                v4(Packet::PingReq, &mut buf);
                buf[0] = 0x10;
            }
            Malformed::SubscribeFlags { v5: false } => v4(
                Packet::Subscribe(rumqttc::Subscribe::new("a", QoS::AtMostOnce)),
                &mut buf,
            ),
            Malformed::SubscribeFlags { v5: true } => v5(
                Packet5::Subscribe(m5::Subscribe::new(
                    m5::Filter::new("a", rumqttc::v5::mqttbytes::QoS::AtMostOnce),
                    None,
                )),
                &mut buf,
            ),
            Malformed::UnsubscribeFlags => v4(
                Packet::Unsubscribe(rumqttc::Unsubscribe::new("a")),
                &mut buf,
            ),
            Malformed::PubRelFlags => v4(Packet::PubRel(rumqttc::PubRel::new(1)), &mut buf),
        }
        match self {
            // The connect flags follow the fixed header (2 bytes here), the protocol name
            // (2 + 4) and the level.
            Malformed::ConnectReservedFlag { .. } => buf[9] |= 0x01,
            Malformed::EmptyConnect => {}
            // The low four bits of the first byte are the fixed-header flags.
            _ => buf[0] &= 0xF0,
        }
        buf
    }
}

/// An MQTT 5 CONNECT with a keep-alive longer than any test.
pub fn connect5(client_id: &str, clean_start: bool) -> rumqttc::v5::mqttbytes::v5::Connect {
    rumqttc::v5::mqttbytes::v5::Connect {
        keep_alive: 120,
        client_id: client_id.to_owned(),
        clean_start,
        properties: None,
    }
}

/// A bare MQTT 3.1.1 connection.
///
/// A rumqttc client decides itself how its publishes are spread over writes; the first small write
/// on a fresh connection (under the 1 KiB buffer the gateway's connection reads into) is read in
/// one go, relayed to the router as one batch and taken by the shadow service as one batch, so
/// every request of a [`RawClient::burst`] is in flight together: what the shadow service's 429
/// tests need to be deterministic. (Later reads on the same connection may get less, as that
/// buffer's spare room shrinks.)
pub struct RawClient {
    stream: TcpStream,
    read: BytesMut,
    next_pkid: u16,
}

impl RawClient {
    /// Connects with a clean session and a keep-alive longer than any test (it never pings), and
    /// checks that the CONNACK accepts it.
    pub async fn connect(addr: SocketAddr, client_id: &str) -> RawClient {
        let mut connect = Connect::new(client_id);
        connect.keep_alive = 120;
        RawClient::connect_with(addr, connect).await
    }

    /// Sends `connect` (with its will, login, keep-alive) and checks that the CONNACK accepts it.
    pub async fn connect_with(addr: SocketAddr, connect: Connect) -> RawClient {
        let stream = TcpStream::connect(addr).await.expect("TCP connect");
        let mut c = RawClient::over(stream);
        match c.login(&connect).await {
            Ok(ConnectReturnCode::Success) => c,
            other => panic!("CONNACK accepting the session, got {other:?}"),
        }
    }

    /// A TCP connection to `addr` from the local address `from` (any of 127.0.0.0/8 reaches a
    /// loopback listener, so 127.0.0.2, 127.0.0.3, ... are peers of their own as far as the
    /// gateway's per-address limits go); nothing is sent yet.
    pub async fn open_from(from: IpAddr, addr: SocketAddr) -> std::io::Result<RawClient> {
        let socket = match from {
            IpAddr::V4(_) => TcpSocket::new_v4()?,
            IpAddr::V6(_) => TcpSocket::new_v6()?,
        };
        socket.bind(SocketAddr::new(from, 0))?;
        Ok(RawClient::over(socket.connect(addr).await?))
    }

    /// Connects with a persistent session (Clean Session 0, MQTT 3.1.1 §3.1.2.4) and returns the
    /// CONNACK's Session Present flag with the client.
    pub async fn connect_persistent(addr: SocketAddr, client_id: &str) -> (RawClient, bool) {
        let mut connect = Connect::new(client_id);
        connect.keep_alive = 120;
        connect.clean_session = false;
        let stream = TcpStream::connect(addr).await.expect("TCP connect");
        let mut c = RawClient::over(stream);
        let mut buf = BytesMut::new();
        connect.write(&mut buf).expect("encode CONNECT");
        c.send(&buf).await;
        match c.next().await {
            Packet::ConnAck(ack) if ack.code == ConnectReturnCode::Success => {
                (c, ack.session_present)
            }
            other => panic!("CONNACK accepting the session, got {other:?}"),
        }
    }

    /// A TCP connection to `addr`; nothing is sent yet.
    pub async fn open(addr: SocketAddr) -> RawClient {
        RawClient::over(TcpStream::connect(addr).await.expect("TCP connect"))
    }

    /// Sends an MQTT 5 `connect` and returns the CONNACK that answers it, whatever it is; `Err`
    /// says what came instead (as [`RawClient::login`]).
    pub async fn login5(
        &mut self,
        connect: rumqttc::v5::mqttbytes::v5::Connect,
    ) -> Result<rumqttc::v5::mqttbytes::v5::ConnAck, String> {
        self.send5(Packet5::Connect(connect, None, None)).await;
        match self.read5().await? {
            Packet5::ConnAck(ack) => Ok(ack),
            other => Err(format!("{other:?} instead of CONNACK")),
        }
    }

    /// Encodes and sends one MQTT 5 packet.
    pub async fn send5(&mut self, packet: Packet5) {
        let mut buf = BytesMut::new();
        packet.write(&mut buf, None).expect("encode");
        self.send(&buf).await;
    }

    /// Encodes and sends one MQTT 3.1.1 packet.
    pub async fn send_packet(&mut self, packet: Packet) {
        let mut buf = BytesMut::new();
        packet.write(&mut buf, 1 << 24).expect("encode");
        self.send(&buf).await;
    }

    /// Sends a deliberately malformed packet.
    pub async fn send_malformed(&mut self, packet: Malformed) {
        self.send(&packet.encode()).await;
    }

    /// The next MQTT 5 packet from the broker; fails if none comes within [`WAIT`].
    pub async fn next5(&mut self) -> Packet5 {
        self.read5().await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// Waits until the broker closes the connection; fails if it sends a packet instead, or
    /// keeps the connection open for [`WAIT`].
    pub async fn expect_closed(&mut self) {
        match self.read_packet().await {
            Err(e) if e.contains("closed") || e.contains("reset") => {}
            other => panic!("the broker closing the connection, got {other:?}"),
        }
    }

    /// Sends `connect` and returns the return code of the CONNACK that answers it, whatever it
    /// is, without judging it (a hostile peer's login may be refused); `Err` says what came
    /// instead: the connection closed without a CONNACK, another packet, nothing within [`WAIT`].
    pub async fn login(&mut self, connect: &Connect) -> Result<ConnectReturnCode, String> {
        let mut buf = BytesMut::new();
        connect.write(&mut buf).expect("encode CONNECT");
        self.try_send(&buf)
            .await
            .map_err(|e| format!("sending CONNECT: {e}"))?;
        match self.read_packet().await? {
            Packet::ConnAck(ack) => Ok(ack.code),
            other => Err(format!("{other:?} instead of CONNACK")),
        }
    }

    fn over(stream: TcpStream) -> RawClient {
        RawClient {
            stream,
            read: BytesMut::new(),
            next_pkid: 1,
        }
    }

    /// Writes raw bytes.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.try_send(bytes).await.expect("send");
    }

    /// Writes raw bytes; fails once the broker has closed the connection (as it does to a peer
    /// it refuses).
    pub async fn try_send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// The next packet from the broker; fails if none comes within [`WAIT`].
    pub async fn next(&mut self) -> Packet {
        self.read_packet().await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// The next packet from the broker, or what came instead.
    async fn read_packet(&mut self) -> Result<Packet, String> {
        self.read_with(|buf| match Packet::read(buf, 1 << 24) {
            Ok(p) => Ok(Some(p)),
            Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
            Err(e) => Err(format!("undecodable packet from the broker: {e:?}")),
        })
        .await
    }

    /// The next MQTT 5 packet from the broker, or what came instead.
    async fn read5(&mut self) -> Result<Packet5, String> {
        use rumqttc::v5::mqttbytes::Error;
        self.read_with(|buf| match Packet5::read(buf, None) {
            Ok(p) => Ok(Some(p)),
            Err(Error::InsufficientBytes(_)) => Ok(None),
            Err(e) => Err(format!("undecodable packet from the broker: {e:?}")),
        })
        .await
    }

    /// Reads until `decode` takes a whole packet off the buffer (`Ok(None)`: not all there yet).
    async fn read_with<P>(
        &mut self,
        mut decode: impl FnMut(&mut BytesMut) -> Result<Option<P>, String>,
    ) -> Result<P, String> {
        loop {
            if let Some(p) = decode(&mut self.read)? {
                return Ok(p);
            }
            let n = tokio::time::timeout(WAIT, self.stream.read_buf(&mut self.read))
                .await
                .map_err(|_| format!("no packet within {WAIT:?}"))?
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err(match self.read.is_empty() {
                    true => "the broker closed the connection".to_owned(),
                    false => format!(
                        "the broker closed the connection after the bytes {:02x?}",
                        &self.read[..]
                    ),
                });
            }
        }
    }

    /// Subscribes to `filter` and waits for its SUBACK (never reads anything else: a subscriber
    /// that stops here is a stalled one).
    pub async fn subscribe(&mut self, filter: &str, qos: QoS) {
        let mut subscribe = rumqttc::Subscribe::new(filter, qos);
        subscribe.pkid = self.pkid();
        let mut buf = BytesMut::new();
        subscribe.write(&mut buf).expect("encode SUBSCRIBE");
        self.send(&buf).await;
        match self.next().await {
            Packet::SubAck(ack) if ack.pkid == subscribe.pkid => {}
            other => panic!("SUBACK, got {other:?}"),
        }
    }

    /// Publishes every `(topic, payload)` at QoS 1 in a single write.
    pub async fn burst(&mut self, messages: &[(String, String)]) {
        let mut buf = BytesMut::new();
        for (topic, payload) in messages {
            let mut publish =
                rumqttc::Publish::new(topic.as_str(), QoS::AtLeastOnce, payload.clone());
            publish.pkid = self.pkid();
            publish.write(&mut buf).expect("encode PUBLISH");
        }
        self.send(&buf).await;
    }

    /// Sends DISCONNECT (so no will is due) and closes the socket.
    pub async fn disconnect(mut self) {
        let mut buf = BytesMut::new();
        rumqttc::Disconnect
            .write(&mut buf)
            .expect("encode DISCONNECT");
        self.send(&buf).await;
    }

    fn pkid(&mut self) -> u16 {
        let id = self.next_pkid;
        self.next_pkid += 1;
        id
    }
}
