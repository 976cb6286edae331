//! The simulated SHT4x, read by the firmware's real driver (`grove_firmware::sht4x::Sht4x`) on a
//! virtual sensor clock: it answers as the datasheet says, its signal is reproducible from the seed,
//! and its noise, cycle and faults are what the scenario asks for.

use embedded_hal::i2c::I2c;
use grove_device_sim::actuator::SimPin;
use grove_device_sim::scenario::SensorFile;
use grove_device_sim::sensor::{SensorClock, SimDelay, SimSht4x, ADDRESS};
use grove_firmware::actuator::{Actuator, Polarity, Relay};
use grove_firmware::sht4x::{Address, Error, Measurement, Precision, Sht4x};

const SECOND_NS: u64 = 1_000_000_000;

type Driver = Sht4x<SimSht4x, SimDelay>;

fn driver(settings: &SensorFile, seed: u64, index: u64, address: Address) -> (Driver, SensorClock) {
    let clock = SensorClock::default();
    let sensor = SimSht4x::new(settings, seed, index, clock.clone());
    (Sht4x::new(sensor, SimDelay(clock.clone()), address), clock)
}

/// Measurements at `times` (sensor seconds) of device `index` in a fleet seeded with `seed`.
fn series(
    settings: &SensorFile,
    seed: u64,
    index: u64,
    times: &[u64],
    precision: Precision,
) -> Vec<Measurement> {
    let (mut driver, clock) = driver(settings, seed, index, Address::A44);
    times
        .iter()
        .map(|t| {
            clock.advance_to(t * SECOND_NS);
            driver.measure(precision).expect("measurement")
        })
        .collect()
}

fn celsius(m: &Measurement) -> f64 {
    f64::from(m.temperature_milli_c) / 1000.0
}

fn humidity(m: &Measurement) -> f64 {
    f64::from(m.humidity_milli_pct) / 1000.0
}

fn std_dev(values: &[f64]) -> f64 {
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / values.len() as f64).sqrt()
}

#[test]
fn same_seed_same_readings_other_seed_or_device_other_readings() {
    let settings = SensorFile::default();
    let times: Vec<u64> = (0..20).collect();
    let base = series(&settings, 1, 0, &times, Precision::High);
    let cases: &[(u64, u64, bool)] = &[(1, 0, true), (2, 0, false), (1, 1, false)];
    for &(seed, index, same) in cases {
        let other = series(&settings, seed, index, &times, Precision::High);
        assert_eq!(base == other, same, "seed {seed} device {index}");
    }
}

#[test]
fn noise_follows_precision_and_settings() {
    // A flat signal (no cycle, drift or spread), so the spread of readings is the noise alone.
    let flat = SensorFile {
        swing_c: 0.0,
        drift_c_per_hour: 0.0,
        temperature_spread_c: 0.0,
        noise_c: 0.1,
        humidity_noise_pct: 0.5,
        ..SensorFile::default()
    };
    let times: Vec<u64> = (0..2_000).collect();
    // (precision, noise scale of that repeatability)
    let cases = [
        (Precision::High, 1.0),
        (Precision::Medium, 1.5),
        (Precision::Low, 2.5),
    ];
    for (precision, scale) in cases {
        let readings = series(&flat, 5, 0, &times, precision);
        let t: Vec<f64> = readings.iter().map(celsius).collect();
        let rh: Vec<f64> = readings.iter().map(humidity).collect();
        let mean = t.iter().sum::<f64>() / t.len() as f64;
        assert!((mean - 22.0).abs() < 0.05, "{precision:?}: mean {mean}");
        let (sd_t, sd_rh) = (std_dev(&t), std_dev(&rh));
        assert!(
            (sd_t / (0.1 * scale) - 1.0).abs() < 0.1,
            "{precision:?}: sd {sd_t}"
        );
        assert!(
            (sd_rh / (0.5 * scale) - 1.0).abs() < 0.1,
            "{precision:?}: rh sd {sd_rh}"
        );
    }
}

#[test]
fn the_daily_cycle_and_drift_move_the_signal() {
    let cycle = SensorFile {
        swing_c: 4.0,
        period_s: 100.0,
        noise_c: 0.0,
        humidity_noise_pct: 0.0,
        drift_c_per_hour: 0.0,
        temperature_spread_c: 0.0,
        ..SensorFile::default()
    };
    let times: Vec<u64> = (0..100).collect();
    let t: Vec<f64> = series(&cycle, 1, 0, &times, Precision::High)
        .iter()
        .map(celsius)
        .collect();
    let (min, max) = t
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(*v), b.max(*v)));
    // Peak to peak is twice the swing, around the mean.
    assert!((max - min - 8.0).abs() < 0.1, "range {min}..{max}");
    assert!(((max + min) / 2.0 - 22.0).abs() < 0.1);

    // Drift alone: after an hour the readings have wandered, but not absurdly.
    let drift = SensorFile {
        drift_c_per_hour: 1.0,
        swing_c: 0.0,
        noise_c: 0.0,
        humidity_noise_pct: 0.0,
        temperature_spread_c: 0.0,
        ..SensorFile::default()
    };
    let hourly: Vec<u64> = (0..=3_600).step_by(60).collect();
    let t: Vec<f64> = series(&drift, 9, 0, &hourly, Precision::High)
        .iter()
        .map(celsius)
        .collect();
    let moved = (t[t.len() - 1] - t[0]).abs();
    assert!(t.windows(2).any(|w| w[0] != w[1]), "drift never moved");
    assert!(moved < 5.0, "drifted {moved} °C in an hour at 1 °C/h");
}

#[test]
fn the_bus_behaves_like_the_chip() {
    let settings = SensorFile::default();
    // Another address: nobody acknowledges.
    let (mut wrong, _) = driver(&settings, 1, 0, Address::A45);
    assert_eq!(wrong.measure(Precision::High), Err(Error::NotAcknowledged));

    // Every transfer corrupted: the driver's CRC check catches it.
    let faulty = SensorFile {
        fault_rate: 1.0,
        ..SensorFile::default()
    };
    let (mut corrupted, _) = driver(&faulty, 1, 0, Address::A44);
    assert_eq!(
        corrupted.measure(Precision::High),
        Err(Error::Crc { word: 0 })
    );

    // Serial numbers are per device; a soft reset is accepted.
    let (mut first, _) = driver(&settings, 1, 0, Address::A44);
    let (mut second, _) = driver(&settings, 1, 1, Address::A44);
    assert_ne!(
        first.serial_number().unwrap(),
        second.serial_number().unwrap()
    );
    first.soft_reset().unwrap();
    assert!(first.measure(Precision::Low).is_ok());

    // Read before the execution time has passed: not acknowledged, like the chip; a read without a
    // command or an unknown command: not acknowledged either.
    let clock = SensorClock::default();
    let mut bus = SimSht4x::new(&settings, 1, 0, clock.clone());
    let mut response = [0u8; 6];
    bus.write(ADDRESS, &[0xFD]).unwrap();
    assert!(
        bus.read(ADDRESS, &mut response).is_err(),
        "read while measuring"
    );
    clock.advance_to(clock.now_ns() + 8_300_000);
    assert!(
        bus.read(ADDRESS, &mut response).is_ok(),
        "read after 8.3 ms"
    );
    assert!(
        bus.read(ADDRESS, &mut response).is_err(),
        "second read without command"
    );
    assert!(bus.write(ADDRESS, &[0x42]).is_err(), "unknown command");
}

#[test]
fn the_firmware_relay_drives_the_simulated_pin() {
    let pin = SimPin::default();
    let cases: &[(Polarity, bool, bool)] = &[
        (Polarity::ActiveHigh, true, true),
        (Polarity::ActiveHigh, false, false),
        (Polarity::ActiveLow, true, false),
        (Polarity::ActiveLow, false, true),
    ];
    for &(polarity, on, high) in cases {
        let mut relay = Relay::new(pin.clone(), polarity);
        relay.set(on).unwrap();
        assert_eq!(pin.is_high(), high, "{polarity:?} on={on}");
    }
}

#[test]
fn drift_spread_across_seeds_follows_drift_per_hour() {
    // The drift is a random walk scaled so that after one hour its spread (standard deviation) is
    // `drift_c_per_hour`; over 200 seeded devices the measured spread lands within 15 % of it (the
    // sampling error of a standard deviation over 200 draws is about 5 %), and the mean stays near 0.
    let hourly: Vec<u64> = (0..=3_600).step_by(60).collect();
    for rate in [0.5, 2.0] {
        let drift = SensorFile {
            drift_c_per_hour: rate,
            swing_c: 0.0,
            noise_c: 0.0,
            humidity_noise_pct: 0.0,
            temperature_spread_c: 0.0,
            ..SensorFile::default()
        };
        let moved: Vec<f64> = (0..200)
            .map(|seed| {
                let t = series(&drift, seed, 0, &hourly, Precision::High);
                celsius(&t[t.len() - 1]) - celsius(&t[0])
            })
            .collect();
        let spread = std_dev(&moved);
        let mean = moved.iter().sum::<f64>() / moved.len() as f64;
        assert!(
            (spread / rate - 1.0).abs() < 0.15,
            "spread {spread} °C after an hour at {rate} °C/h"
        );
        assert!(
            mean.abs() < 3.0 * rate / 200f64.sqrt(),
            "mean drift {mean} °C at {rate} °C/h"
        );
    }
}
