//! A byte-counting loopback TCP proxy, put between the gateway and the cloud broker to measure
//! what the cloud link costs on the wire (issue 16: idle bytes per day, a reconnect's cost, the
//! bytes batching saves).
//!
//! It counts the TCP payload in each direction (what the gateway's TLS or MQTT layer writes) and
//! the reads that carried it: on loopback, with the gateway's Nagle off, a read is one segment
//! the sender wrote, which is what the TCP/IP header estimate in the reports multiplies. It can
//! drop every open connection at once (the link breaks; new connections are accepted again), to
//! measure what a reconnect costs. Written by hand: the counting is the point, and
//! `tokio::io::copy_bidirectional` reports totals only when a connection ends.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

/// What crossed the proxy since it started (or since the counters were taken).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Traffic {
    /// Bytes from the gateway to the cloud.
    pub up_bytes: u64,
    /// Bytes from the cloud to the gateway.
    pub down_bytes: u64,
    /// Reads that carried the upward bytes (segments, on loopback).
    pub up_reads: u64,
    /// Reads that carried the downward bytes.
    pub down_reads: u64,
    /// Connections accepted.
    pub connections: u64,
}

impl Traffic {
    /// What crossed between `earlier` and this.
    pub fn since(&self, earlier: &Traffic) -> Traffic {
        Traffic {
            up_bytes: self.up_bytes - earlier.up_bytes,
            down_bytes: self.down_bytes - earlier.down_bytes,
            up_reads: self.up_reads - earlier.up_reads,
            down_reads: self.down_reads - earlier.down_reads,
            connections: self.connections - earlier.connections,
        }
    }

    /// Bytes both ways.
    pub fn bytes(&self) -> u64 {
        self.up_bytes + self.down_bytes
    }

    /// Reads (segments) both ways.
    pub fn reads(&self) -> u64 {
        self.up_reads + self.down_reads
    }

    /// The bytes on the wire had the link run TLS 1.3 over TCP/IPv4, estimated from the
    /// measured bytes and segments: each segment a TLS record of its own (22 bytes: header,
    /// content type, AEAD tag; rustls writes a record per small write) and 52 bytes of IPv4 and
    /// TCP headers (timestamps on), plus a pure ACK for each segment from the cloud (the gateway
    /// has nothing to piggyback it on, e.g. after a PINGRESP; its own segments' ACKs ride on the
    /// cloud's answers, which is the optimistic side of the estimate).
    pub fn wire_estimate(&self) -> u64 {
        self.bytes() + self.reads() * TLS_RECORD + (self.reads() + self.down_reads) * TCP_IP_SEGMENT
    }
}

/// A TLS 1.3 record's overhead: header, content type, AEAD tag.
const TLS_RECORD: u64 = 5 + 1 + 16;

/// IPv4 (20) and TCP (20, plus 12 of timestamps) headers per segment.
const TCP_IP_SEGMENT: u64 = 52;

#[derive(Debug, Default)]
struct Counters {
    up_bytes: AtomicU64,
    down_bytes: AtomicU64,
    up_reads: AtomicU64,
    down_reads: AtomicU64,
    connections: AtomicU64,
}

/// The running proxy; stops when dropped.
pub struct ByteProxy {
    port: u16,
    counters: Arc<Counters>,
    drop_all: mpsc::UnboundedSender<()>,
    task: JoinHandle<()>,
}

impl ByteProxy {
    /// Listens on a free loopback port and forwards every connection to `target` on loopback.
    pub async fn start(target: u16) -> std::io::Result<ByteProxy> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let port = listener.local_addr()?.port();
        let counters = Arc::new(Counters::default());
        let (drop_all, mut drops) = mpsc::unbounded_channel();
        let shared = counters.clone();
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((inbound, _)) = accepted else { return };
                        shared.connections.fetch_add(1, Ordering::Relaxed);
                        connections.spawn(relay(inbound, target, shared.clone()));
                    }
                    Some(()) = drops.recv() => connections.abort_all(),
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        Ok(ByteProxy {
            port,
            counters,
            drop_all,
            task,
        })
    }

    /// The port the gateway connects to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The counters now.
    pub fn traffic(&self) -> Traffic {
        let c = &self.counters;
        Traffic {
            up_bytes: c.up_bytes.load(Ordering::Relaxed),
            down_bytes: c.down_bytes.load(Ordering::Relaxed),
            up_reads: c.up_reads.load(Ordering::Relaxed),
            down_reads: c.down_reads.load(Ordering::Relaxed),
            connections: c.connections.load(Ordering::Relaxed),
        }
    }

    /// Closes every open connection (the link breaks); new ones are accepted.
    pub fn drop_connections(&self) {
        let _ = self.drop_all.send(());
    }
}

impl Drop for ByteProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies both ways between `inbound` and a new connection to `target`, counting.
async fn relay(inbound: TcpStream, target: u16, counters: Arc<Counters>) {
    let Ok(outbound) = TcpStream::connect(("127.0.0.1", target)).await else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (mut in_read, mut in_write) = inbound.into_split();
    let (mut out_read, mut out_write) = outbound.into_split();
    let up = copy(
        &mut in_read,
        &mut out_write,
        &counters.up_bytes,
        &counters.up_reads,
    );
    let down = copy(
        &mut out_read,
        &mut in_write,
        &counters.down_bytes,
        &counters.down_reads,
    );
    // Either side ending ends the connection (as a broken link would).
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}

async fn copy(
    from: &mut (impl AsyncReadExt + Unpin),
    to: &mut (impl AsyncWriteExt + Unpin),
    bytes: &AtomicU64,
    reads: &AtomicU64,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        bytes.fetch_add(n as u64, Ordering::Relaxed);
        reads.fetch_add(1, Ordering::Relaxed);
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counts_both_ways_and_drops_connections_on_demand() {
        let echo = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let target = echo.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 16];
                    while let Ok(n @ 1..) = s.read(&mut buf).await {
                        // Twice what came: the counts differ by direction.
                        let _ = s.write_all(&buf[..n]).await;
                        let _ = s.write_all(&buf[..n]).await;
                    }
                });
            }
        });
        let proxy = ByteProxy::start(target).await.unwrap();
        let mut c = TcpStream::connect(("127.0.0.1", proxy.port()))
            .await
            .unwrap();
        c.write_all(b"hello").await.unwrap();
        let mut got = [0u8; 10];
        c.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hellohello");
        let t = proxy.traffic();
        assert_eq!((t.up_bytes, t.down_bytes, t.connections), (5, 10, 1));
        assert!(t.up_reads >= 1 && t.down_reads >= 1);
        proxy.drop_connections();
        let mut rest = [0u8; 1];
        assert_eq!(c.read(&mut rest).await.unwrap(), 0, "the link broke");
        let mut again = TcpStream::connect(("127.0.0.1", proxy.port()))
            .await
            .unwrap();
        again.write_all(b"x").await.unwrap();
        again.read_exact(&mut [0u8; 2]).await.unwrap();
        assert_eq!(proxy.traffic().since(&t).bytes(), 3);
        assert_eq!(proxy.traffic().connections, 2);
    }

    #[test]
    fn the_wire_estimate_adds_tls_records_segments_and_acks() {
        // One keep-alive exchange: PINGREQ (2 B) up, PINGRESP (2 B) down.
        let t = Traffic {
            up_bytes: 2,
            down_bytes: 2,
            up_reads: 1,
            down_reads: 1,
            connections: 0,
        };
        // 4 B of MQTT, 2 TLS records, 2 data segments and 1 pure ACK.
        assert_eq!(t.wire_estimate(), 4 + 2 * 22 + 3 * 52);
    }
}
