//! Stand-in peripherals for the size probe: every trait the device core needs (I2C, delay, output pin,
//! byte transport, clock), implemented over `core::hint::black_box` so the optimiser can neither see
//! through them nor drop the code that uses them, while adding almost no code of their own.
//!
//! `without-core` links these stand-ins with a trivial byte loop; `with-core` links them with the
//! whole device core (SHT4x driver, relay, MQTT codec and session, shadow logic, telemetry JSON,
//! blocking shell) and keeps the device in a static. The difference between the two images is the
//! core's flash and static RAM, including the parts of `core`, `compiler_builtins` and
//! serde-json-core that only the core pulls in. `with-tls` is the core as a TLS device runs it:
//! identity and credentials from a provisioning record in flash, the async shell over a TLS 1.3
//! session (handshake, certificate check, client certificate), its record buffers in statics.
#![no_std]

use core::convert::Infallible;
use core::hint::black_box;

/// An I2C bus whose reads return opaque bytes.
pub struct Bus;

impl embedded_hal::i2c::ErrorType for Bus {
    type Error = embedded_hal::i2c::ErrorKind;
}

impl embedded_hal::i2c::I2c for Bus {
    fn transaction(
        &mut self,
        address: u8,
        operations: &mut [embedded_hal::i2c::Operation<'_>],
    ) -> Result<(), Self::Error> {
        black_box(address);
        for operation in operations {
            match operation {
                embedded_hal::i2c::Operation::Read(buf) => buf.fill(black_box(0)),
                embedded_hal::i2c::Operation::Write(bytes) => {
                    black_box(bytes);
                }
            }
        }
        Ok(())
    }
}

/// A delay that only records its argument.
pub struct Wait;

impl embedded_hal::delay::DelayNs for Wait {
    fn delay_ns(&mut self, ns: u32) {
        black_box(ns);
    }
}

/// An output pin that only records its level.
pub struct Pin;

impl embedded_hal::digital::ErrorType for Pin {
    type Error = Infallible;
}

impl embedded_hal::digital::OutputPin for Pin {
    fn set_low(&mut self) -> Result<(), Self::Error> {
        black_box(false);
        Ok(())
    }

    fn set_high(&mut self) -> Result<(), Self::Error> {
        black_box(true);
        Ok(())
    }
}

/// A byte transport whose input is opaque and whose output is consumed.
pub struct Wire;

impl embedded_io::ErrorType for Wire {
    type Error = Infallible;
}

impl embedded_io::ReadReady for Wire {
    fn read_ready(&mut self) -> Result<bool, Self::Error> {
        Ok(black_box(true))
    }
}

impl embedded_io::Read for Wire {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        let n = black_box(buf.len());
        buf.fill(black_box(0));
        Ok(n)
    }
}

impl embedded_io::Write for Wire {
    fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        black_box(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
}

/// An opaque millisecond clock.
pub fn now_ms() -> u64 {
    black_box(0)
}

/// An async socket whose input is opaque and whose output is consumed (the with-tls probe's TCP).
pub struct Socket;

impl embedded_io_async::ErrorType for Socket {
    type Error = embedded_io_async::ErrorKind;
}

impl embedded_io_async::Read for Socket {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        let n = black_box(buf.len());
        buf.fill(black_box(0));
        Ok(n)
    }
}

impl embedded_io_async::Write for Socket {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        black_box(buf);
        Ok(buf.len())
    }

    async fn flush(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
}

/// A random source with opaque output (a board's TRNG).
pub struct Trng;

impl rand_core::RngCore for Trng {
    fn next_u32(&mut self) -> u32 {
        black_box(0)
    }

    fn next_u64(&mut self) -> u64 {
        black_box(0)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        dest.fill(black_box(0));
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl rand_core::CryptoRng for Trng {}

/// A NOR flash whose contents are opaque (where the provisioning record is read from).
pub struct Flash;

impl embedded_storage::nor_flash::ErrorType for Flash {
    type Error = embedded_storage::nor_flash::NorFlashErrorKind;
}

impl embedded_storage::nor_flash::ReadNorFlash for Flash {
    const READ_SIZE: usize = 1;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
        black_box(offset);
        bytes.fill(black_box(0));
        Ok(())
    }

    fn capacity(&self) -> usize {
        black_box(512 * 1024)
    }
}
