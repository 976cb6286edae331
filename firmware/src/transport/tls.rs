//! TLS 1.3 to the gateway (feature `tls`): a [`Session`] over any `embedded-io-async` socket, which
//! the async shell drives like a plain one ([`super::asynch::transmit`], and [`wait`] here instead
//! of [`super::asynch::wait`]).
//!
//! Built on embedded-tls 0.19 (no_std, no allocator; its `rustpki` verifier), with one cipher suite,
//! TLS_AES_128_GCM_SHA256, and one key-exchange group, secp256r1: what Grove's listeners (rustls)
//! and AWS IoT Core offer, and the cheapest to link.
//!
//! What the device checks of the gateway (embedded-tls's verifier, and [`OneHop`] here):
//! - the server certificate's signature by the site CA passed in (ECDSA P-256 with SHA-256, what
//!   `grove device init-ca` issues), and the chain being exactly that one certificate (the verifier
//!   does not read basicConstraints, so without this rule any certificate the CA issued, a
//!   device's included, could sign a forged server certificate);
//! - the server's CertificateVerify signature over the handshake (it holds the certificate's key);
//! - the server name, against the certificate's DNS subject alternative names, or its common name
//!   when none matches. IP address names are not read: provision a DNS name (`init-ca
//!   --server-name gw.local`) and connect to the address it resolves to.
//!
//! Not checked: the validity period (a device has no calendar clock: embedded-tls's `NoClock`),
//! key usage and extended key usage, revocation. The CA is the site's own, so these are the
//! operator's, not a public PKI's: a removed device loses its access at the gateway, which checks
//! it on every connection.
//!
//! The device proves itself with a client certificate when it has one (mutual TLS, the
//! `certificate` listeners: its certificate from `grove device add --cert` and the P-256 key as
//! its 32-byte scalar), or with its MQTT password inside the TLS session. embedded-tls also offers
//! an external pre-shared key, which rustls, and so Grove, does not accept; it is not used.
//!
//! # Memory
//! [`Buffers`] is all the session's memory besides the [`Session`] value: the record buffers
//! ([`RECORD_READ`] to receive, [`RECORD_WRITE`] to send) and the record gate. The application
//! places it (a `static` through `static_cell`, or the stack of the task that owns the socket).
//!
//! # Cancellation
//! embedded-tls's read keeps the record header it is reading in its future, so dropping a read that
//! has taken part of a record would lose the stream's framing. The socket is therefore wrapped in a
//! gate that follows the record framing of the bytes it hands to embedded-tls, and [`wait`] drops a
//! read only at a record boundary; a timer that fires inside a record runs at once and the read goes
//! on (see [`super::asynch`]).

use core::cell::Cell;
use core::future::Future;

use embedded_io_async::{ErrorKind, ErrorType, Read, Write};
use embedded_tls::pki::CertVerifier;
use embedded_tls::{
    Aes128GcmSha256, Certificate, CertificateRef, CertificateVerifyRef, CryptoProvider,
    CryptoRngCore, NoClock, SignatureScheme, TlsConfig, TlsConnection, TlsContext, TlsError,
    TlsVerifier,
};
use p256::ecdsa::{DerSignature, SigningKey};

use super::asynch::wait_interruptible;
use super::TransportError;
use crate::actuator::Actuator;
use crate::device::Device;
use crate::provision::TlsIdentity;
use crate::time::Instant;

/// The receive record buffer: the largest TLS 1.3 record (2^14 bytes of plaintext and 256 of
/// expansion). Grove's listeners (rustls) may send records of any size up to it, and neither
/// rustls nor embedded-tls negotiates a smaller one, so a smaller buffer works only with a server
/// known to write small records.
pub const RECORD_READ: usize = 16_640;
/// The send record buffer: what the device sends at once (its transmit buffer is 768 bytes) plus
/// the record overhead. The handshake is encoded in the larger of the two buffers.
pub const RECORD_WRITE: usize = 1_024;
/// Room for the server's certificate chain (one certificate of about 500 bytes from `grove device
/// init-ca`), copied during the handshake to check its CertificateVerify.
const SERVER_CERT: usize = 1_024;

/// The memory of one TLS session: record buffers and the record gate.
pub struct Buffers<const READ: usize = RECORD_READ, const WRITE: usize = RECORD_WRITE> {
    read: [u8; READ],
    write: [u8; WRITE],
    framing: Cell<Framing>,
}

impl<const READ: usize, const WRITE: usize> Buffers<READ, WRITE> {
    /// Zeroed buffers (`const`, so they can be a `static`'s initial value).
    pub const fn new() -> Self {
        Self {
            read: [0; READ],
            write: [0; WRITE],
            framing: Cell::new(Framing::BOUNDARY),
        }
    }
}

impl<const READ: usize, const WRITE: usize> Default for Buffers<READ, WRITE> {
    fn default() -> Self {
        Self::new()
    }
}

/// Why a TLS session failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TlsFailure {
    /// The gateway's certificate is not signed by the site CA, is not for the server name, or the
    /// gateway does not hold its key.
    #[error("the gateway's certificate is not trusted")]
    Untrusted,
    /// The gateway ended the handshake with this TLS alert (RFC 8446 §6). A refusal of the device's
    /// own certificate comes after the device's last handshake message, so it surfaces on the
    /// session's first read, as [`TlsFailure::Protocol`].
    #[error("the gateway refused the handshake: TLS alert {0}")]
    Refused(u8),
    /// A record larger than the receive buffer.
    #[error("a TLS record larger than the receive buffer")]
    RecordTooLarge,
    /// The device's key is not a P-256 scalar.
    #[error("the device's private key is not a P-256 key")]
    BadKey,
    /// The gateway closed the session (close_notify).
    #[error("the gateway closed the TLS session")]
    Closed,
    /// The socket failed.
    #[error("transport I/O error: {0:?}")]
    Io(ErrorKind),
    /// Anything else the TLS implementation refused (a protocol error, an alert after the
    /// handshake).
    #[error("TLS protocol error")]
    Protocol,
}

impl From<TlsError> for TlsFailure {
    fn from(error: TlsError) -> Self {
        match error {
            TlsError::InvalidCertificate | TlsError::InvalidSignature => Self::Untrusted,
            TlsError::HandshakeAborted(_, description) => Self::Refused(description as u8),
            TlsError::InsufficientSpace => Self::RecordTooLarge,
            TlsError::InvalidPrivateKey => Self::BadKey,
            TlsError::ConnectionClosed => Self::Closed,
            TlsError::Io(kind) => Self::Io(kind),
            _ => Self::Protocol,
        }
    }
}

impl embedded_io_async::Error for TlsFailure {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::Io(kind) => *kind,
            Self::Closed => ErrorKind::ConnectionAborted,
            _ => ErrorKind::Other,
        }
    }
}

/// An open TLS session to the gateway over socket `S`.
pub struct Session<'a, S: Read + Write> {
    connection: TlsConnection<'a, Gate<'a, S>, Aes128GcmSha256>,
    framing: &'a Cell<Framing>,
}

impl<'a, S: Read + Write> Session<'a, S> {
    /// Performs the handshake over `socket` (connected to the gateway) as `identity` says: the
    /// server name and CA to check the gateway against, and the client certificate and key if the
    /// device has them. `rng` is the board's random source (a TRNG), for the ephemeral key share and
    /// the client random.
    ///
    /// The handshake has no timeout of its own: the caller bounds it (e.g. `select` with a timer) and
    /// drops the socket if it takes too long.
    pub async fn connect<const READ: usize, const WRITE: usize>(
        socket: S,
        buffers: &'a mut Buffers<READ, WRITE>,
        identity: &TlsIdentity<'_>,
        rng: impl CryptoRngCore,
    ) -> Result<Self, TlsFailure> {
        let client = match identity.client {
            Some((certificate, key)) => Some((
                certificate,
                SigningKey::from_slice(key).map_err(|_| TlsFailure::BadKey)?,
            )),
            None => None,
        };
        let framing = &buffers.framing;
        framing.set(Framing::BOUNDARY);
        let gate = Gate {
            socket,
            framing: &buffers.framing,
        };
        let mut connection = TlsConnection::new(gate, &mut buffers.read, &mut buffers.write);
        let config = TlsConfig::new().with_server_name(identity.server_name);
        let provider = Provider {
            rng,
            verifier: OneHop(CertVerifier::new(Certificate::X509(identity.ca))),
            client,
        };
        connection.open(TlsContext::new(&config, provider)).await?;
        Ok(Self {
            connection,
            framing,
        })
    }
}

impl<S: Read + Write> ErrorType for Session<'_, S> {
    type Error = TlsFailure;
}

impl<S: Read + Write> Read for Session<'_, S> {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        match self.connection.read(buf).await {
            // A close_notify is the end of the stream, as a closed socket is.
            Err(TlsError::ConnectionClosed) => Ok(0),
            other => Ok(other?),
        }
    }
}

impl<S: Read + Write> Write for Session<'_, S> {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        Ok(self.connection.write(buf).await?)
    }

    async fn flush(&mut self) -> Result<(), Self::Error> {
        Ok(self.connection.flush().await?)
    }
}

/// [`super::asynch::wait`] for a TLS session: waits for bytes or the device's next timer and hands
/// either to the device, dropping an unfinished read only between records (see the module's
/// "Cancellation"). Without a session (`None`) it waits for the timer only.
pub async fn wait<S, A, Sleep, F>(
    device: &mut Device<A>,
    session: Option<&mut Session<'_, S>>,
    scratch: &mut [u8],
    sleep_until: Sleep,
    clock: impl Fn() -> Instant,
) -> Result<(), TransportError<TlsFailure>>
where
    S: Read + Write,
    A: Actuator,
    Sleep: FnMut(Instant) -> F,
    F: Future<Output = ()>,
{
    let framing = session.as_ref().map(|s| s.framing);
    let between_records = || framing.is_none_or(|f| f.get() == Framing::BOUNDARY);
    wait_interruptible(
        device,
        session,
        scratch,
        sleep_until,
        clock,
        between_records,
    )
    .await
}

/// Where the byte stream is in TLS's record framing (RFC 8446 §5.1: a 5-byte header whose last two
/// bytes are the length of the fragment that follows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Framing {
    /// Header bytes taken of the next record (0 to 4).
    header: u8,
    /// The length's high byte, once the header's fourth byte was taken.
    length_high: u8,
    /// Fragment bytes still to come.
    remaining: u16,
}

impl Framing {
    const BOUNDARY: Self = Self {
        header: 0,
        length_high: 0,
        remaining: 0,
    };

    /// The framing after `bytes` more of the stream.
    fn after(mut self, mut bytes: &[u8]) -> Self {
        while !bytes.is_empty() {
            if self.remaining > 0 {
                let skip = bytes.len().min(usize::from(self.remaining));
                // `skip` is at most `remaining`, a u16.
                self.remaining -= skip as u16;
                bytes = &bytes[skip..];
                continue;
            }
            let byte = bytes[0];
            bytes = &bytes[1..];
            match self.header {
                3 => {
                    self.length_high = byte;
                    self.header = 4;
                }
                4 => {
                    self.remaining = u16::from_be_bytes([self.length_high, byte]);
                    self.header = 0;
                }
                n => self.header = n + 1,
            }
        }
        self
    }
}

/// The socket as embedded-tls sees it: every byte it reads advances the shared [`Framing`].
struct Gate<'a, S> {
    socket: S,
    framing: &'a Cell<Framing>,
}

impl<S: ErrorType> ErrorType for Gate<'_, S> {
    type Error = S::Error;
}

impl<S: Read> Read for Gate<'_, S> {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        let n = self.socket.read(buf).await?;
        self.framing.set(self.framing.get().after(&buf[..n]));
        Ok(n)
    }
}

impl<S: Write> Write for Gate<'_, S> {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        self.socket.write(buf).await
    }

    async fn flush(&mut self) -> Result<(), Self::Error> {
        self.socket.flush().await
    }
}

/// The crypto embedded-tls asks for: the random source, the verifier, the client identity.
struct Provider<'c, R> {
    rng: R,
    verifier: OneHop<'c>,
    client: Option<(&'c [u8], SigningKey)>,
}

impl<R: CryptoRngCore> CryptoProvider for Provider<'_, R> {
    type CipherSuite = Aes128GcmSha256;
    type Signature = DerSignature;

    fn rng(&mut self) -> impl CryptoRngCore {
        &mut self.rng
    }

    fn verifier(&mut self) -> Result<&mut impl TlsVerifier<Self::CipherSuite>, TlsError> {
        Ok(&mut self.verifier)
    }

    fn signer(
        &mut self,
    ) -> Result<
        (
            impl p256::ecdsa::signature::SignerMut<Self::Signature>,
            SignatureScheme,
        ),
        TlsError,
    > {
        let (_, key) = self.client.as_ref().ok_or(TlsError::InvalidPrivateKey)?;
        Ok((key.clone(), SignatureScheme::EcdsaSecp256r1Sha256))
    }

    fn client_cert(&mut self) -> Option<Certificate<impl AsRef<[u8]>>> {
        self.client
            .as_ref()
            .map(|(certificate, _)| Certificate::X509(*certificate))
    }
}

/// embedded-tls's verifier, accepting only a chain of one certificate: the server's, signed by the
/// CA itself (see the module's list of what is checked).
struct OneHop<'c>(CertVerifier<'c, Aes128GcmSha256, NoClock, SERVER_CERT>);

impl TlsVerifier<Aes128GcmSha256> for OneHop<'_> {
    fn set_hostname_verification(&mut self, hostname: &str) -> Result<(), TlsError> {
        self.0.set_hostname_verification(hostname)
    }

    fn verify_certificate(
        &mut self,
        transcript: &<Aes128GcmSha256 as embedded_tls::TlsCipherSuite>::Hash,
        certificate: CertificateRef,
    ) -> Result<(), TlsError> {
        if certificate.entries.len() != 1 {
            return Err(TlsError::InvalidCertificate);
        }
        self.0.verify_certificate(transcript, certificate)
    }

    fn verify_signature(&mut self, verify: CertificateVerifyRef) -> Result<(), TlsError> {
        self.0.verify_signature(verify)
    }
}

#[cfg(test)]
mod tests {
    use super::Framing;

    #[test]
    fn framing_follows_records_split_anywhere() {
        // Two records: 3 bytes of fragment, then an empty one, then half a header.
        let stream = [23, 3, 3, 0, 3, 1, 2, 3, 23, 3, 3, 0, 0, 23, 3];
        let boundaries = [0, 8, 13];
        for split in 0..=stream.len() {
            let framing = Framing::BOUNDARY.after(&stream[..split.min(stream.len())]);
            let mut byte_by_byte = Framing::BOUNDARY;
            for b in &stream[..split] {
                byte_by_byte = byte_by_byte.after(core::slice::from_ref(b));
            }
            assert_eq!(framing, byte_by_byte, "split at {split}");
            assert_eq!(
                framing == Framing::BOUNDARY,
                boundaries.contains(&split),
                "split at {split}: {framing:?}"
            );
        }
        let long = Framing::BOUNDARY.after(&[23, 3, 3, 0x41, 0x00]);
        assert_eq!(long.remaining, 0x4100);
    }
}
