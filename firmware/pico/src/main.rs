//! Grove example firmware for a Raspberry Pi Pico (RP2040, Cortex-M0+, `thumbv6m-none-eabi`).
//!
//! The Cortex-M0+ counterpart of `firmware/board` (STM32F411, Cortex-M4F), with the same main loop:
//! an SHT4x on I2C0 (GP4 SDA, GP5 SCL, the Pico's internal pull-ups; add 4.7 kΩ externals for long
//! wires), the relay output on the on-board LED (GP25, active high), and UART0 (GP0 TX, GP1 RX, 115200
//! 8N1) to a transparent serial-to-TCP bridge that holds the connection to the Grove gateway's MQTT
//! port (an ESP8266 running esp-link, or during development a USB-serial adapter and
//! `socat /dev/ttyUSB0,b115200,raw TCP:gateway:1883`). The bridge owns TCP, so "opening the transport"
//! is immediate here.
//!
//! The loop is the whole shell around the sans-IO device core: poll the UART, run the device's timers
//! on the RP2040's free-running microsecond timer, answer events. Known limit, as on the STM32 board:
//! the UART is polled (its 32-byte receive FIFO bridges the sensor's measurement delay only at low
//! traffic), so a production build would receive through DMA or an interrupt into a ring buffer; lost
//! bytes make the device reconnect and resynchronise through the shadow.
//!
//! Flash and static RAM are budget-checked twice: `memory.x` caps the link at 64 KiB flash (with the
//! boot loader) and 16 KiB RAM, and `firmware/ci.sh` prints and checks the ELF's figures.
#![no_std]
#![no_main]

use grove_firmware::actuator::{Polarity, Relay};
use grove_firmware::sht4x::{Address, Precision, Sht4x};
use grove_firmware::{transport, Config, Device, Instant};
use panic_halt as _;
use rp2040_hal::clocks::{init_clocks_and_plls, Clock as _};
use rp2040_hal::fugit::RateExtU32;
use rp2040_hal::gpio::{FunctionSioOutput, Pin, PullDown};
use rp2040_hal::uart::{DataBits, ReadErrorType, StopBits, UartConfig, UartPeripheral};
use rp2040_hal::{entry, gpio, pac, Sio, Timer, Watchdog, I2C};
use static_cell::StaticCell;

/// The second-stage bootloader, which the boot ROM loads from the first 256 bytes of flash to set up
/// execute-in-place for the Pico's W25Q080 flash chip. `memory.x` places the `.boot2` section.
// `link_section` counts as unsafe code (the linker trusts the placement); this one static is the
// documented way to ship the RP2040's boot loader.
#[allow(unsafe_code)]
#[link_section = ".boot2"]
#[used]
pub static BOOT2_FIRMWARE: [u8; 256] = rp2040_boot2::BOOT_LOADER_W25Q080;

/// The Pico's crystal oscillator.
const XTAL_FREQ_HZ: u32 = 12_000_000;

/// The thing name, set at build time with `GROVE_THING=...`.
const THING: &str = match option_env!("GROVE_THING") {
    Some(name) => name,
    None => "grove-pico-1",
};

/// The relay: the on-board LED on GP25.
type RelayPin = Pin<gpio::bank0::Gpio25, FunctionSioOutput, PullDown>;

/// The device core lives in a static rather than on the stack, so that its buffers show up in the ELF's
/// static RAM figure that `firmware/ci.sh` checks against the budget.
static DEVICE: StaticCell<Device<Relay<RelayPin>>> = StaticCell::new();

#[entry]
fn main() -> ! {
    let mut pac = pac::Peripherals::take().expect("peripherals are taken once, here");
    let mut watchdog = Watchdog::new(pac.WATCHDOG);
    let clocks = init_clocks_and_plls(
        XTAL_FREQ_HZ,
        pac.XOSC,
        pac.CLOCKS,
        pac.PLL_SYS,
        pac.PLL_USB,
        &mut pac.RESETS,
        &mut watchdog,
    )
    .expect("the Pico's 12 MHz crystal starts");
    let sio = Sio::new(pac.SIO);
    let pins = gpio::Pins::new(
        pac.IO_BANK0,
        pac.PADS_BANK0,
        sio.gpio_bank0,
        &mut pac.RESETS,
    );
    // The timer is `Copy`: one copy is the sensor's delay, another the device's clock.
    let timer = Timer::new(pac.TIMER, &mut pac.RESETS, &clocks);

    let i2c = I2C::i2c0(
        pac.I2C0,
        pins.gpio4.reconfigure(),
        pins.gpio5.reconfigure(),
        100.kHz(),
        &mut pac.RESETS,
        clocks.system_clock.freq(),
    );
    let mut sensor = Sht4x::new(i2c, timer, Address::A44);
    // `Device::new` switches the relay off, its boot state, until the shadow says otherwise.
    let led: RelayPin = pins.gpio25.reconfigure();
    let relay = Relay::new(led, Polarity::ActiveHigh);

    let uart = UartPeripheral::new(
        pac.UART0,
        (pins.gpio0.into_function(), pins.gpio1.into_function()),
        &mut pac.RESETS,
    )
    .enable(
        UartConfig::new(115_200.Hz(), DataBits::Eight, None, StopBits::One),
        clocks.peripheral_clock.freq(),
    )
    .expect("115200 8N1 is a valid configuration");
    let mut link = UartLink(uart);

    let config = Config::new(THING).expect("GROVE_THING is a valid thing name");
    let device = DEVICE.init(Device::new(config, relay, now(&timer)));
    let mut scratch = [0u8; 128];

    loop {
        let now = now(&timer);
        // On a transport error the device has already been told; it asks to reopen after a backoff.
        let _ = transport::poll(device, &mut link, now, &mut scratch);
        device.handle_events(now, || sensor.measure(Precision::Low));
    }
}

/// The RP2040's 64-bit microsecond timer, which does not wrap in the device's lifetime.
fn now(timer: &Timer) -> Instant {
    Instant::from_millis(timer.get_counter().ticks() / 1_000)
}

/// The UART pins: GP0 TX, GP1 RX.
type UartPins = (
    Pin<gpio::bank0::Gpio0, gpio::FunctionUart, PullDown>,
    Pin<gpio::bank0::Gpio1, gpio::FunctionUart, PullDown>,
);

/// UART0 as an `embedded-io` 0.6 transport. The HAL implements embedded-io 0.7, while grove-firmware
/// (and the STM32 HAL) are on 0.6, so this bridges through the HAL's own non-blocking `read_raw` and
/// blocking `write_full_blocking` rather than pulling in a second embedded-io.
struct UartLink(UartPeripheral<rp2040_hal::uart::Enabled, pac::UART0, UartPins>);

/// A UART receive error (framing, parity, break or overrun).
#[derive(Debug)]
// The kind is only read through `Debug`, by a debugger or probe; the shell reacts the same to all.
struct UartError(#[allow(dead_code)] ReadErrorType);

impl embedded_io::Error for UartError {
    fn kind(&self) -> embedded_io::ErrorKind {
        embedded_io::ErrorKind::Other
    }
}

impl embedded_io::ErrorType for UartLink {
    type Error = UartError;
}

impl embedded_io::ReadReady for UartLink {
    fn read_ready(&mut self) -> Result<bool, Self::Error> {
        Ok(self.0.uart_is_readable())
    }
}

impl embedded_io::Read for UartLink {
    /// Reads what the receive FIFO holds. `transport::poll` calls this only after `read_ready`, so an
    /// empty FIFO (`Ok(0)`, which the shell would take for end-of-stream) does not happen there; a
    /// serial line has no end-of-stream of its own.
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        match self.0.read_raw(buf) {
            Ok(n) => Ok(n),
            Err(nb::Error::WouldBlock) => Ok(0),
            // Bytes received before a framing, parity, break or overrun error are dropped with it: the
            // MQTT stream is broken either way, so the device reconnects and resynchronises.
            Err(nb::Error::Other(error)) => Err(UartError(error.err_type)),
        }
    }
}

impl embedded_io::Write for UartLink {
    fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        self.0.write_full_blocking(buf);
        Ok(buf.len())
    }

    /// Bytes handed to the transmit FIFO leave on their own; nothing waits on them being on the wire.
    fn flush(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
}
