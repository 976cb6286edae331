//! A self-test image for QEMU: the SHT4x driver and the device core run on a real Cortex-M0 or
//! Cortex-M4F instruction set (soft or hardware division, the target's alignment and calling
//! convention) against an in-image scripted broker, and report through semihosting. It exits with
//! success only if every check passed; a panic exits with failure (panic-semihosting's `exit`). It
//! also prints the peak stack use, the part of the RAM budget the ELF's static figures cannot show.
//! This image is the only `unsafe` in the firmware tree: one function reading the painted stack.
//!
//! Run: `qemu-system-arm -machine microbit -nographic -semihosting-config enable=on,target=native
//! -kernel <elf>` (thumbv6m-none-eabi) or `-machine mps2-an386` (thumbv7em-none-eabihf).
#![no_std]
#![no_main]

use core::convert::Infallible;
use cortex_m_rt::entry;
use cortex_m_semihosting::{debug, hprintln};
use embedded_hal::i2c::{ErrorType, I2c, Operation};
use grove_firmware::actuator::{Polarity, Relay};
use grove_firmware::mqtt::{decode, ConnectReturnCode, Packet, Publish, QoS};
use grove_firmware::sht4x::{Address, Error, Measurement, Precision, Sht4x};
use grove_firmware::{Config, Device, Event, Instant};
use panic_semihosting as _;

/// An SHT4x stand-in answering every read with `response`, and remembering the last command byte.
struct FakeSensor {
    response: [u8; 6],
    last_command: u8,
}

impl ErrorType for FakeSensor {
    type Error = embedded_hal::i2c::ErrorKind;
}

impl I2c for FakeSensor {
    fn transaction(
        &mut self,
        address: u8,
        operations: &mut [Operation<'_>],
    ) -> Result<(), Self::Error> {
        assert_eq!(address, 0x44, "SHT4x address");
        for operation in operations {
            match operation {
                Operation::Write(bytes) => self.last_command = bytes[0],
                Operation::Read(buf) => buf.copy_from_slice(&self.response),
            }
        }
        Ok(())
    }
}

struct NoDelay;

impl embedded_hal::delay::DelayNs for NoDelay {
    fn delay_ns(&mut self, _ns: u32) {}
}

/// A GPIO stand-in that remembers its level.
struct Level(bool);

impl embedded_hal::digital::ErrorType for Level {
    type Error = Infallible;
}

impl embedded_hal::digital::OutputPin for Level {
    fn set_low(&mut self) -> Result<(), Infallible> {
        self.0 = false;
        Ok(())
    }

    fn set_high(&mut self) -> Result<(), Infallible> {
        self.0 = true;
        Ok(())
    }
}

#[entry]
fn main() -> ! {
    sensor();
    device();
    hprintln!("stack high-water mark: {} bytes", stack_high_water());
    hprintln!("grove-firmware self-test: all checks passed");
    debug::exit(debug::EXIT_SUCCESS);
    // Only reached without a semihosting host (a real board): nothing else to do.
    loop {
        cortex_m::asm::wfi();
    }
}

/// The deepest the stack has reached: cortex-m-rt's `paint-stack` fills the stack region with
/// `STACK_PAINT_VALUE` at reset, and the lowest word that no longer holds it marks the peak. The device
/// core keeps its buffers in its own struct, so this plus that struct is its RAM use.
#[allow(unsafe_code)]
fn stack_high_water() -> usize {
    extern "C" {
        static _stack_end: u32;
        static _stack_start: u32;
    }
    // SAFETY: cortex-m-rt's linker script defines both symbols as the bounds of the stack region, and
    // every word between them is RAM this program owns and painted at reset; reading them volatile
    // cannot race with anything on this single-threaded image.
    unsafe {
        let start = core::ptr::addr_of!(_stack_start) as usize;
        let mut address = core::ptr::addr_of!(_stack_end) as usize;
        while address < start
            && core::ptr::read_volatile(address as *const u32) == cortex_m_rt::STACK_PAINT_VALUE
        {
            address += 4;
        }
        start - address
    }
}

fn sensor() {
    let bus = FakeSensor {
        response: [0x66, 0x66, 0x93, 0x80, 0x00, 0xA2],
        last_command: 0,
    };
    let mut sensor = Sht4x::new(bus, NoDelay, Address::A44);
    let measurement = sensor.measure(Precision::High);
    assert_eq!(
        measurement,
        Ok(Measurement {
            temperature_milli_c: 25_000,
            humidity_milli_pct: 56_500
        })
    );
    let (mut bus, delay) = sensor.release();
    assert_eq!(bus.last_command, 0xFD, "high-precision command");
    bus.response[2] ^= 1;
    let mut sensor = Sht4x::new(bus, delay, Address::A44);
    assert_eq!(sensor.measure(Precision::Low), Err(Error::Crc { word: 0 }));
    hprintln!("sht4x: measurement and CRC check ok");
}

/// Feeds one broker packet to the device.
fn broker(device: &mut Device<Relay<Level>>, packet: Packet<'_>, now: u64) {
    let mut buf = [0u8; 160];
    let len = packet.encode(&mut buf).expect("test packet fits");
    device.handle_input(&buf[..len], Instant::from_millis(now));
}

/// Drains what the device sent and checks it packet by packet with `expect`.
fn sent(device: &mut Device<Relay<Level>>, expect: &[&dyn Fn(&Packet<'_>) -> bool]) {
    let mut buf = [0u8; 768];
    let mut len = 0;
    while let Some(n) = device.poll_transmit(&mut buf[len..]) {
        len += n;
    }
    let mut rest = &buf[..len];
    for (index, check) in expect.iter().enumerate() {
        let (packet, used) = decode(rest).expect("valid MQTT").expect("a whole packet");
        assert!(check(&packet), "packet {index} unexpected: {packet:?}");
        rest = &rest[used..];
    }
    assert!(rest.is_empty(), "more packets than expected");
}

fn publish<'a>(packet: &'a Packet<'a>) -> Option<&'a Publish<'a>> {
    match packet {
        Packet::Publish(publish) => Some(publish),
        _ => None,
    }
}

fn device() {
    let config = Config::new("qemu-1").expect("valid thing name");
    let mut device = Device::new(
        config,
        Relay::new(Level(true), Polarity::ActiveHigh),
        Instant::from_millis(0),
    );
    device.handle_timeout(Instant::from_millis(0));
    assert_eq!(device.poll_event(), Some(Event::OpenTransport));
    device.transport_opened(Instant::from_millis(0));
    sent(
        &mut device,
        &[&|p| matches!(p, Packet::Connect(c) if c.client_id == "qemu-1" && c.will.is_some())],
    );

    broker(
        &mut device,
        Packet::Connack {
            session_present: false,
            code: ConnectReturnCode::Accepted,
        },
        10,
    );
    sent(
        &mut device,
        &[&|p| matches!(p, Packet::Subscribe { pkid: 1, filters } if filters.iter().count() == 4)],
    );

    broker(
        &mut device,
        Packet::Suback {
            pkid: 1,
            codes: &[1, 1, 1, 1],
        },
        20,
    );
    let report_off: &[u8] = br#"{"state":{"reported":{"relay":false,"interval_s":10}}}"#;
    sent(
        &mut device,
        &[
            &|p| {
                publish(p).is_some_and(|m| {
                    m.topic == "$grove/things/qemu-1/status" && m.payload == b"online"
                })
            },
            &|p| publish(p).is_some_and(|m| m.pkid == 2 && m.payload == report_off),
            &|p| {
                publish(p)
                    .is_some_and(|m| m.pkid == 3 && m.topic == "$aws/things/qemu-1/shadow/get")
            },
        ],
    );
    assert_eq!(device.poll_event(), Some(Event::Connected));
    broker(&mut device, Packet::Puback(2), 30);
    broker(&mut device, Packet::Puback(3), 30);

    let delta = Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "$aws/things/qemu-1/shadow/update/delta",
        pkid: 7,
        payload: br#"{"version":2,"timestamp":1,"state":{"relay":true},"metadata":{"relay":{"timestamp":1}}}"#,
    };
    broker(&mut device, Packet::Publish(delta), 40);
    let report_on: &[u8] = br#"{"state":{"reported":{"relay":true,"interval_s":10}}}"#;
    let on = |p: &Packet<'_>| {
        publish(p).is_some_and(|m| m.pkid == 4 && !m.dup && m.payload == report_on)
    };
    sent(&mut device, &[&|p| *p == Packet::Puback(7), &on]);
    assert!(device.actuator().pin().0, "relay switched on by the delta");
    hprintln!("device: connect, subscribe, report, delta applied ok");

    // No PUBACK for the report: it is retransmitted with DUP after the 5 s acknowledgement timeout.
    device.handle_timeout(Instant::from_millis(5_040));
    let dup =
        |p: &Packet<'_>| publish(p).is_some_and(|m| m.pkid == 4 && m.dup && m.payload == report_on);
    sent(&mut device, &[&dup]);
    broker(&mut device, Packet::Puback(4), 5_050);

    device.handle_timeout(Instant::from_millis(10_000));
    assert_eq!(
        device.poll_event(),
        Some(Event::Applied(grove_firmware::shadow::State {
            relay: true,
            interval_s: 10
        }))
    );
    assert_eq!(device.poll_event(), Some(Event::SampleDue));
    let sample = Measurement {
        temperature_milli_c: 25_000,
        humidity_milli_pct: 56_500,
    };
    device
        .publish_sample(sample, Instant::from_millis(10_000))
        .expect("connected");
    let telemetry: &[u8] = br#"{"seq":1,"temp_mc":25000,"rh_mpct":56500,"relay":true}"#;
    sent(
        &mut device,
        &[&|p| {
            publish(p).is_some_and(|m| m.topic == "dt/qemu-1/telemetry" && m.payload == telemetry)
        }],
    );
    hprintln!("device: retransmission and telemetry ok");
}
