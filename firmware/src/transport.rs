//! Thin blocking shell over `embedded-io`: moves bytes between a transport and a [`Device`].
//!
//! The same [`poll`] step runs on a board (UART to a network co-processor in transparent mode), on the
//! host over `std` TCP (feature `std`, `StdTcp`) and in tests over a scripted transport. It never
//! blocks on reads: it asks [`ReadReady`] first, so the caller's loop keeps the device's timers running.

use embedded_io::{Read, ReadReady, Write};

use crate::actuator::Actuator;
use crate::device::Device;
use crate::time::Instant;

/// A transport failure, with the transport's own error.
#[derive(Debug, thiserror::Error)]
pub enum TransportError<E: core::fmt::Debug> {
    /// Reading, writing or flushing failed.
    #[error("transport I/O error: {0:?}")]
    Io(E),
    /// The peer closed the connection.
    #[error("transport closed by peer")]
    Closed,
}

/// One step of the shell: read what is ready, run expired timers, write what the device produced.
///
/// `scratch` bounds how much is read or written per call; 64 to 256 bytes is plenty. On error the
/// device has already been told ([`Device::transport_closed`]); the caller closes the transport and
/// waits for [`crate::Event::OpenTransport`].
pub fn poll<T, A>(
    device: &mut Device<A>,
    io: &mut T,
    now: Instant,
    scratch: &mut [u8],
) -> Result<(), TransportError<T::Error>>
where
    T: Read + Write + ReadReady,
    A: Actuator,
{
    let result = step(device, io, now, scratch);
    if result.is_err() {
        device.transport_closed(now);
    }
    result
}

fn step<T, A>(
    device: &mut Device<A>,
    io: &mut T,
    now: Instant,
    scratch: &mut [u8],
) -> Result<(), TransportError<T::Error>>
where
    T: Read + Write + ReadReady,
    A: Actuator,
{
    if io.read_ready().map_err(TransportError::Io)? {
        match io.read(scratch).map_err(TransportError::Io)? {
            0 => return Err(TransportError::Closed),
            n => device.handle_input(&scratch[..n], now),
        }
    }
    if now >= device.poll_timeout() {
        device.handle_timeout(now);
    }
    let mut wrote = false;
    while let Some(n) = device.poll_transmit(scratch) {
        io.write_all(&scratch[..n]).map_err(TransportError::Io)?;
        wrote = true;
    }
    if wrote {
        io.flush().map_err(TransportError::Io)?;
    }
    Ok(())
}

/// A `std` TCP stream as an `embedded-io` transport, for the simulator and host tools.
#[cfg(feature = "std")]
pub struct StdTcp(pub std::net::TcpStream);

#[cfg(feature = "std")]
mod std_tcp {
    use super::StdTcp;
    use std::io::{ErrorKind, Read as _, Write as _};

    impl embedded_io::ErrorType for StdTcp {
        type Error = std::io::Error;
    }

    impl embedded_io::Read for StdTcp {
        fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
            self.0.read(buf)
        }
    }

    impl embedded_io::ReadReady for StdTcp {
        /// Peeks without blocking: data or end-of-stream both mean a read will not block.
        fn read_ready(&mut self) -> Result<bool, Self::Error> {
            self.0.set_nonblocking(true)?;
            let peeked = self.0.peek(&mut [0u8; 1]);
            self.0.set_nonblocking(false)?;
            match peeked {
                Ok(_) => Ok(true),
                Err(error) if error.kind() == ErrorKind::WouldBlock => Ok(false),
                Err(error) => Err(error),
            }
        }
    }

    impl embedded_io::Write for StdTcp {
        fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
            self.0.write(buf)
        }

        fn flush(&mut self) -> Result<(), Self::Error> {
            self.0.flush()
        }
    }
}
