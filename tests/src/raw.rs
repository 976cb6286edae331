//! Raw MQTT 3.1.1 over a bare socket, for what a well-behaved client library will not do: write a
//! burst of packets in one TCP write, never read (a stalled subscriber), vanish without
//! DISCONNECT, come from another loopback address, stay silent or send half a packet (a hostile
//! peer). Packets are encoded and decoded by rumqttc's codec (`rumqttc::mqttbytes::v4`), so no
//! test builds MQTT bytes by hand.

use std::net::{IpAddr, SocketAddr};

use bytes::BytesMut;
use rumqttc::{Connect, ConnectReturnCode, Packet, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::WAIT;

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

    /// Sends one packet (encoded by rumqttc's codec): an acknowledgement the test chose to give
    /// at the moment it chose.
    pub async fn send_packet(&mut self, packet: &Packet) {
        let mut buf = BytesMut::new();
        match packet {
            Packet::PubAck(p) => p.write(&mut buf),
            Packet::PubRec(p) => p.write(&mut buf),
            Packet::PubRel(p) => p.write(&mut buf),
            Packet::PubComp(p) => p.write(&mut buf),
            Packet::Publish(p) => p.write(&mut buf),
            Packet::Subscribe(p) => p.write(&mut buf),
            other => panic!("send_packet does not send {other:?}"),
        }
        .expect("encode");
        self.send(&buf).await;
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
        loop {
            match Packet::read(&mut self.read, 1 << 24) {
                Ok(p) => return Ok(p),
                Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(e) => return Err(format!("undecodable packet from the broker: {e:?}")),
            }
            let n = tokio::time::timeout(WAIT, self.stream.read_buf(&mut self.read))
                .await
                .map_err(|_| format!("no packet within {WAIT:?}"))?
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("the broker closed the connection".to_owned());
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
