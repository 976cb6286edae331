//! The device's identity in its own flash: thing name, MQTT credentials and TLS trust, written once
//! by a provisioning step and read at every start, so that one firmware image serves every device
//! and no secret is a constant in the image.
//!
//! # Layout
//! A record at a fixed offset of a NOR flash region (the board chooses the offset; the examples use
//! the last sector):
//!
//! | bytes | what |
//! |---|---|
//! | 4 | magic and format version, `GRV1` |
//! | n | [`Record`] in postcard's wire format (postcard 1.0: strings and byte strings as a varint length and the bytes, `Option` as a 0/1 tag) |
//! | 4 | CRC-32/ISCSI of those n bytes, little-endian |
//!
//! The record is self-delimiting (postcard), so no length field is needed and whatever follows it
//! (erased flash, `0xFF`) is ignored. Erased flash reads as [`RecordError::Empty`]; a record whose
//! CRC does not match (a torn write) as [`RecordError::Corrupt`]. Postcard (serde) rather than a
//! hand-written TLV: its format is specified and stable, and it deserialises borrowing from the
//! buffer, so reading the record copies nothing.
//!
//! [`encode`] writes the same layout into a buffer: a host tool uses it to make the image that is
//! flashed at the offset, and a device could use it to store a record it received over a console.

use embedded_storage::nor_flash::{NorFlashError, NorFlashErrorKind, ReadNorFlash};
use serde::{Deserialize, Serialize};

use crate::device::{ConfigError, Credentials};

/// The first four bytes of a record: "GRV" and the format version.
pub const MAGIC: [u8; 4] = *b"GRV1";
/// The most a record may take in flash (a P-256 CA and client certificate, their key and names
/// take about 1.3 KiB); a reader's buffer of this size holds any record [`encode`] accepts.
pub const MAX_RECORD: usize = 2048;

/// The CRC after the record (Castagnoli: hardware CRC units of many microcontrollers compute it).
const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// What a device is provisioned with. Every field borrows from the buffer the record was read into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record<'a> {
    /// The thing name, also the MQTT client id.
    pub thing: &'a str,
    /// MQTT user name and password, for a password listener.
    #[serde(borrow)]
    pub login: Option<Login<'a>>,
    /// TLS trust and identity, for a TLS listener.
    #[serde(borrow)]
    pub tls: Option<TlsIdentity<'a>>,
}

/// An MQTT user name and password (Grove: the device id and what `grove device add
/// --password-stdin` was given).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Login<'a> {
    /// The user name.
    pub username: &'a str,
    /// The password (binary in MQTT 3.1.1).
    pub password: &'a [u8],
}

impl Login<'_> {
    /// The credentials for [`crate::Config::with_credentials`].
    pub fn credentials(&self) -> Result<Credentials, ConfigError> {
        Credentials::new(self.username, self.password)
    }
}

/// What a device needs for TLS to the gateway (see `transport::tls`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsIdentity<'a> {
    /// The gateway's DNS name as its certificate states it (`grove device init-ca --server-name`).
    pub server_name: &'a str,
    /// The site CA's certificate, DER (`pki/ca.pem` decoded).
    pub ca: &'a [u8],
    /// The device's own certificate, DER, and its P-256 private key as the 32-byte scalar, for a
    /// mutual-TLS listener (`grove device add --cert`).
    pub client: Option<(&'a [u8], &'a [u8])>,
}

/// Why no record could be read or written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The region is erased: the device was never provisioned.
    #[error("no provisioning record (erased flash)")]
    Empty,
    /// The region holds something else, or a record of another format version.
    #[error("not a provisioning record of format GRV1")]
    UnknownFormat,
    /// The record's CRC does not match or its fields do not parse (a torn or foreign write).
    #[error("corrupt provisioning record")]
    Corrupt,
    /// The buffer is too small for the record.
    #[error("buffer too small for the provisioning record")]
    TooLarge,
    /// The flash could not be read.
    #[error("flash read failed: {0:?}")]
    Storage(NorFlashErrorKind),
}

/// Decodes a record from the start of `bytes` (anything after it is ignored).
pub fn decode(bytes: &[u8]) -> Result<Record<'_>, RecordError> {
    let (magic, body) = bytes
        .split_first_chunk::<4>()
        .ok_or(RecordError::UnknownFormat)?;
    if *magic == [0xff; 4] {
        return Err(RecordError::Empty);
    }
    if *magic != MAGIC {
        return Err(RecordError::UnknownFormat);
    }
    postcard::take_from_bytes_crc32(body, CRC.digest())
        .map(|(record, _rest)| record)
        .map_err(|_| RecordError::Corrupt)
}

/// Encodes `record` into `buf`; returns how many bytes to write at the record's offset.
pub fn encode(record: &Record<'_>, buf: &mut [u8]) -> Result<usize, RecordError> {
    let (magic, body) = buf
        .split_first_chunk_mut::<4>()
        .ok_or(RecordError::TooLarge)?;
    *magic = MAGIC;
    let used = postcard::to_slice_crc32(record, body, CRC.digest())
        .map_err(|_| RecordError::TooLarge)?
        .len();
    if MAGIC.len() + used > MAX_RECORD {
        return Err(RecordError::TooLarge);
    }
    Ok(MAGIC.len() + used)
}

/// Reads the record at `offset` of `flash` into `buf` (at most its length, [`MAX_RECORD`] is enough,
/// and not past the end of the flash) and decodes it.
pub fn read<'b, F: ReadNorFlash>(
    flash: &mut F,
    offset: u32,
    buf: &'b mut [u8],
) -> Result<Record<'b>, RecordError> {
    let available = flash.capacity().saturating_sub(offset as usize);
    // Reads must be whole multiples of the flash's read size.
    let len = buf.len().min(available) / F::READ_SIZE * F::READ_SIZE;
    flash
        .read(offset, &mut buf[..len])
        .map_err(|e| RecordError::Storage(e.kind()))?;
    decode(&buf[..len])
}
