//! Grove example firmware for an STM32F411 "Black Pill" board.
//!
//! Wiring: an SHT4x on I2C1 (PB6 SCL, PB7 SDA), the relay output on the on-board LED (PC13, active
//! low), and USART2 (PA2 TX, PA3 RX, 115200 8N1) to a transparent serial-to-TCP bridge that holds the
//! connection to the Grove gateway's MQTT port, for example an ESP8266 running esp-link, or during
//! development a USB-serial adapter and `socat /dev/ttyUSB0,b115200,raw TCP:gateway:1883`. The bridge
//! owns TCP, so "opening the transport" is immediate here.
//!
//! The device's identity is not in the image: the thing name and the MQTT user name and password
//! come from the provisioning record (firmware/README.md, "Provisioning") at the start of the last
//! flash sector, read through the HAL's `LockedFlash` (embedded-storage's `ReadNorFlash`). An
//! unprovisioned board halts at start.
//!
//! The loop is the whole shell around the sans-IO device core: poll the UART, run the device's timers
//! on TIM2's millisecond count, answer events. Known limit of this example: the UART is polled, so
//! bytes arriving during the sensor's measurement delay can be lost (the device then reconnects and
//! resynchronises through the shadow); a production build would receive through DMA into a ring buffer.
#![no_std]
#![no_main]

use cortex_m_rt::entry;
use embedded_hal_nb::serial::Read as _;
use grove_firmware::actuator::{Polarity, Relay};
use grove_firmware::provision;
use grove_firmware::sht4x::{Address, Precision, Sht4x};
use grove_firmware::{transport, Config, Device, Instant};
use panic_halt as _;
use static_cell::StaticCell;
use stm32f4xx_hal::flash::LockedFlash;
use stm32f4xx_hal::gpio::{Output, PushPull, PC13};
use stm32f4xx_hal::i2c::{I2c, Mode};
use stm32f4xx_hal::pac::{self, TIM2, USART2};
use stm32f4xx_hal::prelude::*;
use stm32f4xx_hal::serial::{self, Rx, Tx};
use stm32f4xx_hal::timer::CounterMs;

/// Where the provisioning record is, as an offset into the flash: sector 7, the last 128 KiB of the
/// STM32F411CE's 512 KiB (0x0806_0000), far beyond the image (which `memory.x` keeps within 64 KiB).
const RECORD_OFFSET: u32 = 0x6_0000;

/// The device core lives in a static rather than on the stack, so that its buffers show up in the ELF's
/// static RAM figure that `firmware/ci.sh` checks against the budget.
static DEVICE: StaticCell<Device<Relay<PC13<Output<PushPull>>>>> = StaticCell::new();

#[entry]
fn main() -> ! {
    let dp = pac::Peripherals::take().expect("peripherals are taken once, here");
    // The internal 16 MHz oscillator: enough for 115200 baud and I2C, and it keeps TIM2's 1 kHz
    // prescaler in range.
    let mut rcc = dp.RCC.constrain();
    let gpioa = dp.GPIOA.split(&mut rcc);
    let gpiob = dp.GPIOB.split(&mut rcc);
    let gpioc = dp.GPIOC.split(&mut rcc);

    let i2c = I2c::new(
        dp.I2C1,
        (gpiob.pb6, gpiob.pb7),
        Mode::standard(100.kHz()),
        &mut rcc,
    );
    let mut sensor = Sht4x::new(i2c, dp.TIM5.delay_us(&mut rcc), Address::A44);
    let relay = Relay::new(gpioc.pc13.into_push_pull_output(), Polarity::ActiveLow);

    let serial = dp
        .USART2
        .serial::<u8>((gpioa.pa2, gpioa.pa3), 115_200.bps(), &mut rcc)
        .expect("115200 8N1 is a valid configuration");
    let (tx, rx) = serial.split();
    let mut link = UartLink {
        tx,
        rx,
        pending: None,
    };

    let mut clock = Clock::new(dp.TIM2.counter_ms(&mut rcc));
    let config = provisioned_config(LockedFlash::new(dp.FLASH));
    let device = DEVICE.init(Device::new(config, relay, clock.now()));
    let mut scratch = [0u8; 128];

    loop {
        let now = clock.now();
        // On a transport error the device has already been told; it asks to reopen after a backoff.
        let _ = transport::poll(device, &mut link, now, &mut scratch);
        device.handle_events(now, || sensor.measure(Precision::Low));
    }
}

/// The device's configuration from its provisioning record: the thing name and, when the record has
/// them, the credentials (copied into the configuration, so the record's buffer is only this
/// function's stack).
fn provisioned_config(mut flash: LockedFlash) -> Config {
    let mut buf = [0u8; provision::MAX_RECORD];
    let record = provision::read(&mut flash, RECORD_OFFSET, &mut buf)
        .expect("a provisioning record (firmware/README.md)");
    let config = Config::new(record.thing).expect("a valid thing name");
    match record.login {
        Some(login) => config.with_credentials(login.credentials().expect("valid credentials")),
        None => config,
    }
}

/// TIM2's free-running 32-bit millisecond count, widened to 64 bits across its 49-day wrap.
struct Clock {
    counter: CounterMs<TIM2>,
    last: u32,
    elapsed: u64,
}

impl Clock {
    fn new(mut counter: CounterMs<TIM2>) -> Self {
        counter
            .start(u32::MAX.millis())
            .expect("TIM2 is a 32-bit timer");
        Self {
            counter,
            last: 0,
            elapsed: 0,
        }
    }

    fn now(&mut self) -> Instant {
        let ticks = self.counter.now().ticks();
        self.elapsed += u64::from(ticks.wrapping_sub(self.last));
        self.last = ticks;
        Instant::from_millis(self.elapsed)
    }
}

/// USART2 as an `embedded-io` transport. The HAL implements `embedded_io::Write` for the transmitter
/// but only the byte-wise `embedded_hal_nb` read for the receiver, so reading and readiness are
/// bridged here; one received byte can be held between `read_ready` and `read`.
struct UartLink {
    tx: Tx<USART2>,
    rx: Rx<USART2>,
    pending: Option<u8>,
}

impl embedded_io::ErrorType for UartLink {
    type Error = serial::Error;
}

impl embedded_io::ReadReady for UartLink {
    fn read_ready(&mut self) -> Result<bool, Self::Error> {
        if self.pending.is_none() {
            match self.rx.read() {
                Ok(byte) => self.pending = Some(byte),
                Err(nb::Error::WouldBlock) => return Ok(false),
                Err(nb::Error::Other(error)) => return Err(error),
            }
        }
        Ok(true)
    }
}

impl embedded_io::Read for UartLink {
    /// Reads the held byte and whatever else the UART has. `Ok(0)` would mean end-of-stream to
    /// `transport::poll`, but it cannot happen there: `poll` reads only after `read_ready` returned
    /// true, which holds a byte in `pending`, so at least that byte is returned. (A serial line has no
    /// end-of-stream; a broken bridge shows up as missing acknowledgements instead.)
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        let mut n = 0;
        for slot in buf.iter_mut() {
            let byte = match self.pending.take() {
                Some(byte) => byte,
                None => match self.rx.read() {
                    Ok(byte) => byte,
                    Err(nb::Error::WouldBlock) => break,
                    Err(nb::Error::Other(error)) => return Err(error),
                },
            };
            *slot = byte;
            n += 1;
        }
        Ok(n)
    }
}

impl embedded_io::Write for UartLink {
    fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        embedded_io::Write::write(&mut self.tx, buf)
    }

    fn flush(&mut self) -> Result<(), Self::Error> {
        embedded_io::Write::flush(&mut self.tx)
    }
}
