//! The probe with the whole device core, driven the way a board drives it.
#![no_std]
#![no_main]

use core::mem::MaybeUninit;
use cortex_m_rt::entry;
use grove_firmware::actuator::{Polarity, Relay};
use grove_firmware::sht4x::{Address, Precision, Sht4x};
use grove_firmware::{transport, Config, Device, Instant};
use grove_firmware_size_probe::{now_ms, Bus, Pin, Wait, Wire};
use panic_halt as _;

#[entry]
fn main() -> ! {
    // cortex-m-rt turns a `static mut` declared in the entry function into a safe `&'static mut`, so
    // the device's buffers land in .bss and the ELF's static RAM figure is the core's RAM.
    // `MaybeUninit` rather than `Option`, whose `None` would be a 2.5 KiB initialiser in .data (flash).
    static mut DEVICE: MaybeUninit<Device<Relay<Pin>>> = MaybeUninit::uninit();
    let mut wire = Wire;
    let mut sensor = Sht4x::new(Bus, Wait, Address::A44);
    let config = Config::new("probe").expect("a valid thing name");
    let relay = Relay::new(Pin, Polarity::ActiveHigh);
    let device = DEVICE.write(Device::new(config, relay, Instant::from_millis(now_ms())));
    let mut scratch = [0u8; 128];
    loop {
        let now = Instant::from_millis(now_ms());
        let _ = transport::poll(device, &mut wire, now, &mut scratch);
        device.handle_events(now, || sensor.measure(Precision::High));
    }
}
