//! Raw MQTT 3.1.1 over a bare socket, for what a well-behaved client library will not do: write a
//! burst of packets in one TCP write, never read (a stalled subscriber), vanish without
//! DISCONNECT. Packets are encoded and decoded by rumqttc's codec (`rumqttc::mqttbytes::v4`), so
//! no test builds MQTT bytes by hand.

use bytes::BytesMut;
use rumqttc::{Connect, Packet, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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
    pub async fn connect(addr: std::net::SocketAddr, client_id: &str) -> RawClient {
        let mut connect = Connect::new(client_id);
        connect.keep_alive = 120;
        RawClient::connect_with(addr, connect).await
    }

    /// Sends `connect` (with its will, login, keep-alive) and checks that the CONNACK accepts it.
    pub async fn connect_with(addr: std::net::SocketAddr, connect: Connect) -> RawClient {
        let stream = TcpStream::connect(addr).await.expect("TCP connect");
        let mut c = RawClient {
            stream,
            read: BytesMut::new(),
            next_pkid: 1,
        };
        let mut buf = BytesMut::new();
        connect.write(&mut buf).expect("encode CONNECT");
        c.send(&buf).await;
        match c.next().await {
            Packet::ConnAck(ack) if ack.code == rumqttc::ConnectReturnCode::Success => c,
            other => panic!("CONNACK accepting the session, got {other:?}"),
        }
    }

    /// Writes raw bytes.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("send");
    }

    /// The next packet from the broker; fails if none comes within [`WAIT`].
    pub async fn next(&mut self) -> Packet {
        loop {
            match Packet::read(&mut self.read, 1 << 24) {
                Ok(p) => return p,
                Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(e) => panic!("undecodable packet from the broker: {e:?}"),
            }
            let n = tokio::time::timeout(WAIT, self.stream.read_buf(&mut self.read))
                .await
                .expect("a packet within the wait")
                .expect("read");
            assert!(n > 0, "the broker closed the connection");
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
