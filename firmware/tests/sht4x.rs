//! The SHT4x driver against embedded-hal-mock: the exact I2C transactions and delays of each command,
//! and every failure mapped to its typed error without a panic.
//!
//! The CRC bytes in the tables were computed independently (a bitwise CRC-8, polynomial 0x31, init
//! 0xFF) and include the datasheet's own example, 0xBEEF -> 0x92.

use embedded_hal::i2c::{ErrorKind, NoAcknowledgeSource};
use embedded_hal_mock::eh1::delay::{CheckedDelay, Transaction as Delay};
use embedded_hal_mock::eh1::i2c::{Mock as I2cMock, Transaction as I2c};
use grove_firmware::sht4x::{Address, Error, Measurement, Precision, Sht4x};

/// Runs `op` on a driver at `address` whose bus and delay expect exactly `bus` and `delays`.
fn check<T: PartialEq + std::fmt::Debug>(
    name: &str,
    address: Address,
    bus: &[I2c],
    delays: &[Delay],
    op: impl FnOnce(&mut Sht4x<I2cMock, CheckedDelay>) -> T,
    expected: T,
) {
    let mut sensor = Sht4x::new(I2cMock::new(bus), CheckedDelay::new(delays), address);
    assert_eq!(op(&mut sensor), expected, "{name}");
    let (mut i2c, mut delay) = sensor.release();
    i2c.done();
    delay.done();
}

/// precision, command byte, wait in µs, temperature word + CRC, humidity word + CRC, milli-°C, milli-%RH.
type MeasureCase = (Precision, u8, u32, [u8; 3], [u8; 3], i32, i32);
/// name, bus transactions, delays, expected result.
type FailureCase = (
    &'static str,
    Vec<I2c>,
    Vec<Delay>,
    Result<Measurement, Error<ErrorKind>>,
);

fn reading(t: [u8; 3], rh: [u8; 3]) -> Vec<u8> {
    [t, rh].concat()
}

#[test]
fn measurements_use_the_datasheet_commands_delays_and_formulas() {
    #[rustfmt::skip]
    let cases: &[MeasureCase] = &[
        // precision,        cmd,  wait us, temperature word,   humidity word,      milli-°C, milli-%RH
        (Precision::High,   0xFD, 8_300, [0x66, 0x66, 0x93], [0x80, 0x00, 0xA2],  25_000,  56_500),
        (Precision::Medium, 0xF6, 4_500, [0x00, 0x00, 0x81], [0x00, 0x00, 0x81], -45_000,       0),
        (Precision::Low,    0xE0, 1_700, [0xFF, 0xFF, 0xAC], [0xFF, 0xFF, 0xAC], 130_000, 100_000),
        (Precision::High,   0xFD, 8_300, [0x0F, 0x5C, 0x1B], [0x12, 0x34, 0x37], -34_501,   2_888),
    ];
    for &(precision, cmd, wait, t, rh, temperature_milli_c, humidity_milli_pct) in cases {
        check(
            "measurement",
            Address::A44,
            &[I2c::write(0x44, vec![cmd]), I2c::read(0x44, reading(t, rh))],
            &[Delay::delay_us(wait)],
            |s| s.measure(precision),
            Ok(Measurement {
                temperature_milli_c,
                humidity_milli_pct,
            }),
        );
    }
}

#[test]
fn serial_number_and_soft_reset() {
    check(
        "serial number",
        Address::A45,
        &[
            I2c::write(0x45, vec![0x89]),
            I2c::read(0x45, reading([0xBE, 0xEF, 0x92], [0x12, 0x34, 0x37])),
        ],
        &[Delay::delay_us(1_000)],
        |s| s.serial_number(),
        Ok(0xBEEF_1234),
    );
    check(
        "soft reset",
        Address::A46,
        &[I2c::write(0x46, vec![0x94])],
        &[Delay::delay_us(1_000)],
        |s| s.soft_reset(),
        Ok(()),
    );
}

#[test]
fn failures_become_typed_errors() {
    let nack = ErrorKind::NoAcknowledge(NoAcknowledgeSource::Address);
    let good = [0xBE, 0xEF, 0x92];
    #[rustfmt::skip]
    let cases: Vec<FailureCase> = vec![
        ("absent sensor NACKs the command", vec![I2c::write(0x44, vec![0xFD]).with_error(nack)], vec![],
            Err(Error::NotAcknowledged)),
        ("busy sensor NACKs the read",
            vec![I2c::write(0x44, vec![0xFD]), I2c::read(0x44, vec![0; 6]).with_error(nack)],
            vec![Delay::delay_us(8_300)], Err(Error::NotAcknowledged)),
        ("data NACK is still a NACK",
            vec![I2c::write(0x44, vec![0xFD]).with_error(ErrorKind::NoAcknowledge(NoAcknowledgeSource::Data))],
            vec![], Err(Error::NotAcknowledged)),
        ("arbitration loss is a bus error",
            vec![I2c::write(0x44, vec![0xFD]).with_error(ErrorKind::ArbitrationLoss)], vec![],
            Err(Error::Bus(ErrorKind::ArbitrationLoss))),
        ("corrupted temperature word",
            vec![I2c::write(0x44, vec![0xFD]), I2c::read(0x44, reading([0xBE, 0xEF, 0x93], good))],
            vec![Delay::delay_us(8_300)], Err(Error::Crc { word: 0 })),
        ("corrupted humidity word",
            vec![I2c::write(0x44, vec![0xFD]), I2c::read(0x44, reading(good, [0xBE, 0xEE, 0x92]))],
            vec![Delay::delay_us(8_300)], Err(Error::Crc { word: 1 })),
    ];
    for (name, bus, delays, expected) in cases {
        check(
            name,
            Address::A44,
            &bus,
            &delays,
            |s| s.measure(Precision::High),
            expected,
        );
    }
}
