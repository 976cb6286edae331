//! Driver for the Sensirion SHT4x (SHT40/41/43/45) temperature and humidity sensor over I2C.
//!
//! Written from the SHT4x datasheet (version 6.5, sections 4.4 to 4.6) rather than taken from the `sht4x`
//! crate: that crate retries a failed read up to 100 times without delay and folds CRC mismatches and
//! NACKs into one `NoResponse` error, while this device must tell a wiring fault (NACK), a corrupted
//! transfer (CRC) and a bus fault apart, and it pulls in the `fixed` crate for conversions that integer
//! arithmetic does here. The CRC itself comes from the `crc` crate.
//!
//! Every command is one byte written to the sensor; after the command's execution time the sensor
//! answers with two 16-bit words, each followed by a CRC-8 (polynomial 0x31, initial value 0xFF).

use crc::{Crc, NoTable, CRC_8_NRSC_5};
use embedded_hal::delay::DelayNs;
use embedded_hal::i2c::{ErrorKind, I2c};

/// Sensirion's CRC-8 is the catalogue's CRC-8/NRSC-5 (poly 0x31, init 0xFF, no reflection, no xor-out).
/// The table-less variant costs a few cycles per byte and saves the 256-byte table in flash.
const CRC8: Crc<u8, NoTable> = Crc::<u8, NoTable>::new(&CRC_8_NRSC_5);

/// The sensor's 7-bit I2C address; it depends on the part number (SHT40-AD1B is 0x44, -BD1B 0x45,
/// -CD1B 0x46).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Address {
    /// 0x44, the most common part.
    A44,
    /// 0x45.
    A45,
    /// 0x46.
    A46,
}

impl Address {
    fn bits(self) -> u8 {
        match self {
            Address::A44 => 0x44,
            Address::A45 => 0x45,
            Address::A46 => 0x46,
        }
    }
}

/// Measurement repeatability; higher precision takes longer and draws more energy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// Repeatability 0.1 °C, 8.3 ms.
    High,
    /// Repeatability 0.15 °C, 4.5 ms.
    Medium,
    /// Repeatability 0.25 °C, 1.7 ms.
    Low,
}

impl Precision {
    /// The command byte and the datasheet's maximum execution time in microseconds.
    fn command(self) -> (u8, u32) {
        match self {
            Precision::High => (0xFD, 8_300),
            Precision::Medium => (0xF6, 4_500),
            Precision::Low => (0xE0, 1_700),
        }
    }
}

/// Read the serial number (datasheet table 7; the wait is not specified, 1 ms is Sensirion's own).
const CMD_SERIAL: (u8, u32) = (0x89, 1_000);
/// Soft reset; the sensor is ready again after at most 1 ms.
const CMD_SOFT_RESET: (u8, u32) = (0x94, 1_000);

/// One measurement, in integer milli-units so that Cortex-M0+ needs no floating point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Measurement {
    /// Temperature in thousandths of a degree Celsius.
    pub temperature_milli_c: i32,
    /// Relative humidity in thousandths of a percent, clamped to 0..=100 % as the datasheet advises.
    pub humidity_milli_pct: i32,
}

impl Measurement {
    /// Converts raw sensor words with the datasheet's formulas T = -45 + 175 * S_T / 65535 and
    /// RH = -6 + 125 * S_RH / 65535.
    pub fn from_raw(raw_temperature: u16, raw_humidity: u16) -> Self {
        // floor(span * 1000 * raw / 65535) in 32-bit arithmetic (64-bit division would pull in a
        // kilobyte of compiler-builtins on Cortex-M): with span * raw = q * 65535 + r, the result is
        // q * 1000 + floor(r * 1000 / 65535), and r * 1000 < 2^32.
        let scale = |raw: u16, span: u32, offset: i32| {
            let product = span * u32::from(raw);
            let milli = product / 65_535 * 1_000 + product % 65_535 * 1_000 / 65_535;
            offset + milli as i32
        };
        Self {
            temperature_milli_c: scale(raw_temperature, 175, -45_000),
            humidity_milli_pct: scale(raw_humidity, 125, -6_000).clamp(0, 100_000),
        }
    }
}

/// What went wrong talking to the sensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error<E> {
    /// The sensor did not acknowledge its address or a byte: it is absent, unpowered or still busy.
    #[error("SHT4x did not acknowledge")]
    NotAcknowledged,
    /// A word's CRC did not match: the transfer was corrupted.
    #[error("SHT4x CRC mismatch in word {word}")]
    Crc {
        /// Which of the two response words (0 or 1) failed.
        word: u8,
    },
    /// Any other bus error (arbitration loss, overrun, ...), as the HAL reported it.
    #[error("I2C bus error: {0:?}")]
    Bus(E),
}

fn classify<E: embedded_hal::i2c::Error>(error: E) -> Error<E> {
    match error.kind() {
        ErrorKind::NoAcknowledge(_) => Error::NotAcknowledged,
        _ => Error::Bus(error),
    }
}

/// An SHT4x on an I2C bus, with the delay source used to wait out its execution times.
pub struct Sht4x<I2C, D> {
    i2c: I2C,
    delay: D,
    address: u8,
}

impl<I2C: I2c, D: DelayNs> Sht4x<I2C, D> {
    /// Wraps the bus and delay; performs no I/O.
    pub fn new(i2c: I2C, delay: D, address: Address) -> Self {
        Self {
            i2c,
            delay,
            address: address.bits(),
        }
    }

    /// Triggers one measurement, waits for it and returns the converted values.
    pub fn measure(&mut self, precision: Precision) -> Result<Measurement, Error<I2C::Error>> {
        let [t, rh] = self.command(precision.command())?;
        Ok(Measurement::from_raw(t, rh))
    }

    /// Reads the sensor's 32-bit serial number.
    pub fn serial_number(&mut self) -> Result<u32, Error<I2C::Error>> {
        let [high, low] = self.command(CMD_SERIAL)?;
        Ok(u32::from(high) << 16 | u32::from(low))
    }

    /// Resets the sensor and waits until it accepts commands again.
    pub fn soft_reset(&mut self) -> Result<(), Error<I2C::Error>> {
        self.i2c
            .write(self.address, &[CMD_SOFT_RESET.0])
            .map_err(classify)?;
        self.delay.delay_us(CMD_SOFT_RESET.1);
        Ok(())
    }

    /// Gives the bus and delay back, e.g. to share the bus with another driver.
    pub fn release(self) -> (I2C, D) {
        (self.i2c, self.delay)
    }

    fn command(&mut self, (code, wait_us): (u8, u32)) -> Result<[u16; 2], Error<I2C::Error>> {
        self.i2c.write(self.address, &[code]).map_err(classify)?;
        self.delay.delay_us(wait_us);
        let mut response = [0u8; 6];
        self.i2c
            .read(self.address, &mut response)
            .map_err(classify)?;
        let mut words = [0u16; 2];
        for (index, (chunk, word)) in response.chunks_exact(3).zip(words.iter_mut()).enumerate() {
            if CRC8.checksum(&chunk[..2]) != chunk[2] {
                return Err(Error::Crc { word: index as u8 });
            }
            *word = u16::from_be_bytes([chunk[0], chunk[1]]);
        }
        Ok(words)
    }
}
