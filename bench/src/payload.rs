//! The benchmark message: a fixed header that says who sent it, its sequence number and when, padded with
//! zeros to the payload size under test.
//!
//! Binary layout (little endian): `b"GRVB"` magic (4 bytes), publisher index (u32), sequence number (u64), send
//! time in nanoseconds since the run's shared clock origin (u64), then zero padding.
//!
//! The broker load (`grove-bench broker`) stamps CLOCK_MONOTONIC in nanoseconds since its own origin
//! ([`monotonic_ns`]): that clock is system-wide on Linux, so the rumqttc clients in this process and
//! the libmosquitto client in its own process (`bench/c/mqtt_load.c`, `clock_gettime(CLOCK_MONOTONIC)`)
//! stamp on one clock, and any process can compare a stamp with its own reading of it. The gateway
//! flows ([`crate::flow`]) keep publishers and subscriber in this process and stamp nanoseconds since
//! an `Instant` taken at their start (an `Instant` is CLOCK_MONOTONIC on Linux too).
//!
//! Paths that parse the payload (rules, functions) get the same stamp as fields of a JSON reading
//! instead ([`encode_json`]), which they carry through to their output.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// CLOCK_MONOTONIC now, in nanoseconds since its origin: the send and receipt times of the broker
/// load, the same clock as the libmosquitto client's (see the module doc).
pub fn monotonic_ns() -> u64 {
    use nix::time::{clock_gettime, ClockId};
    // CLOCK_MONOTONIC always exists on Linux; its seconds and nanoseconds are never negative.
    clock_gettime(ClockId::CLOCK_MONOTONIC).map_or(0, |now| {
        u64::try_from(now.tv_sec()).unwrap_or(0) * 1_000_000_000
            + u64::try_from(now.tv_nsec()).unwrap_or(0)
    })
}

/// Length of the header; the smallest payload the benchmark can send.
pub const HEADER_LEN: usize = 24;

/// Marks a payload as ours, so a stray message on the topic is counted as foreign instead of misread.
const MAGIC: [u8; 4] = *b"GRVB";

/// What a subscriber learns from a benchmark payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Index of the publisher that sent the message (0-based).
    pub publisher: u32,
    /// Sequence number within that publisher's phase (0-based, no gaps on the sending side).
    pub seq: u64,
    /// Send time, nanoseconds since the run's clock origin.
    pub sent_ns: u64,
}

/// Why a payload could not be built or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// The payload (or the requested size) cannot hold the header.
    #[error("payload of {size} bytes is shorter than the {HEADER_LEN}-byte benchmark header")]
    TooShort {
        /// The size seen or requested.
        size: usize,
    },
    /// The payload does not start with the benchmark's magic bytes.
    #[error("payload does not start with the benchmark magic bytes")]
    BadMagic,
    /// A JSON payload without the stamp's fields (`publisher`, `seq`, `sent_ns`).
    #[error("not a JSON benchmark reading: {0}")]
    Json(String),
}

/// The temperature of every JSON reading: above the rules benchmark's `WHERE temperature > 30`.
const JSON_TEMPERATURE: f64 = 31.5;

/// The stamp as JSON fields; other fields of the object (a function's or rule's additions) are
/// ignored when reading.
#[derive(serde::Deserialize)]
struct JsonStamp {
    publisher: u32,
    seq: u64,
    sent_ns: u64,
}

/// A JSON reading carrying `stamp`: `{"temperature":31.5,"publisher":P,"seq":N,"sent_ns":T}`, for the
/// paths that parse payloads (rules, functions); they keep the stamp's fields in their output.
pub fn encode_json(stamp: Stamp) -> Vec<u8> {
    // Written by hand rather than through serde_json: the field order is fixed and this runs once
    // per message on the sending side of a throughput benchmark.
    format!(
        "{{\"temperature\":{JSON_TEMPERATURE},\"publisher\":{},\"seq\":{},\"sent_ns\":{}}}",
        stamp.publisher, stamp.seq, stamp.sent_ns
    )
    .into_bytes()
}

/// Reads the stamp of a JSON reading (an object with at least `publisher`, `seq` and `sent_ns`).
pub fn decode_json(payload: &[u8]) -> Result<Stamp, PayloadError> {
    let s: JsonStamp =
        serde_json::from_slice(payload).map_err(|e| PayloadError::Json(e.to_string()))?;
    Ok(Stamp {
        publisher: s.publisher,
        seq: s.seq,
        sent_ns: s.sent_ns,
    })
}

/// Builds a payload of exactly `size` bytes carrying `stamp`.
pub fn encode(stamp: Stamp, size: usize) -> Result<Bytes, PayloadError> {
    if size < HEADER_LEN {
        return Err(PayloadError::TooShort { size });
    }
    let mut buf = BytesMut::with_capacity(size);
    buf.put_slice(&MAGIC);
    buf.put_u32_le(stamp.publisher);
    buf.put_u64_le(stamp.seq);
    buf.put_u64_le(stamp.sent_ns);
    buf.put_bytes(0, size - HEADER_LEN);
    Ok(buf.freeze())
}

/// Reads the stamp of a received payload; the padding is not inspected.
pub fn decode(payload: &[u8]) -> Result<Stamp, PayloadError> {
    if payload.len() < HEADER_LEN {
        return Err(PayloadError::TooShort {
            size: payload.len(),
        });
    }
    let mut buf = payload;
    if buf[..MAGIC.len()] != MAGIC {
        return Err(PayloadError::BadMagic);
    }
    buf.advance(MAGIC.len());
    Ok(Stamp {
        publisher: buf.get_u32_le(),
        seq: buf.get_u64_le(),
        sent_ns: buf.get_u64_le(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(publisher: u32, seq: u64, sent_ns: u64) -> Stamp {
        Stamp {
            publisher,
            seq,
            sent_ns,
        }
    }

    /// Encodes, checks the size, decodes, and expects the same stamp back.
    fn check_round_trip(stamp: Stamp, size: usize) {
        let bytes = encode(stamp, size).expect("size holds the header");
        assert_eq!(bytes.len(), size, "payload size for {stamp:?}");
        assert_eq!(decode(&bytes), Ok(stamp), "round trip at size {size}");
    }

    #[test]
    fn round_trips() {
        check_round_trip(stamp(0, 0, 0), HEADER_LEN);
        check_round_trip(stamp(3, 41, 1_234_567_890), 64);
        check_round_trip(stamp(u32::MAX, u64::MAX, u64::MAX), 1024);
        check_round_trip(stamp(7, 1 << 40, 5), 256 * 1024);
    }

    /// Decodes raw bytes and expects the given error.
    fn check_rejects(raw: &[u8], expected: PayloadError) {
        assert_eq!(decode(raw), Err(expected), "decoding {raw:?}");
    }

    #[test]
    fn rejects_foreign_payloads() {
        check_rejects(b"", PayloadError::TooShort { size: 0 });
        check_rejects(b"hello", PayloadError::TooShort { size: 5 });
        check_rejects(&[0u8; 23], PayloadError::TooShort { size: 23 });
        check_rejects(&[0u8; 64], PayloadError::BadMagic);
        check_rejects(b"GRVA00000000000000000000", PayloadError::BadMagic);
    }

    /// Decodes a JSON payload and expects the stamp, or an error (`None`).
    fn check_json(raw: &str, expected: Option<Stamp>) {
        assert_eq!(decode_json(raw.as_bytes()).ok(), expected, "decoding {raw}");
    }

    #[test]
    fn json_stamps() {
        let s = stamp(3, 41, 1_234_567_890);
        let encoded = String::from_utf8(encode_json(s)).expect("utf-8");
        assert_eq!(
            encoded,
            r#"{"temperature":31.5,"publisher":3,"seq":41,"sent_ns":1234567890}"#
        );
        check_json(&encoded, Some(s));
        // What the enricher function publishes: the reading plus its own fields.
        check_json(
            r#"{"temperature":31.5,"publisher":1,"seq":2,"sent_ns":3,"temperature_f":88.7,"device":"d1","gateway_ms":1764147600000}"#,
            Some(stamp(1, 2, 3)),
        );
        check_json(r#"{"publisher":0,"seq":0}"#, None);
        check_json(r#"{"publisher":-1,"seq":0,"sent_ns":0}"#, None);
        check_json(r#"{"publisher":0,"seq":"7","sent_ns":0}"#, None);
        check_json("not json", None);
        check_json("", None);
    }

    #[test]
    fn monotonic_clock_advances() {
        let before = monotonic_ns();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let after = monotonic_ns();
        assert!(after - before >= 2_000_000, "{before} -> {after}");
    }

    #[test]
    fn refuses_to_encode_below_header_size() {
        assert_eq!(
            encode(stamp(0, 0, 0), 10),
            Err(PayloadError::TooShort { size: 10 })
        );
    }
}
