//! The probe without the device core: the stand-in transport read into a buffer and written back.
#![no_std]
#![no_main]

use cortex_m_rt::entry;
use embedded_io::{Read, Write};
use grove_firmware_size_probe::{now_ms, Wire};
use panic_halt as _;

#[entry]
fn main() -> ! {
    let mut wire = Wire;
    let mut scratch = [0u8; 128];
    loop {
        let stamp = now_ms();
        let Ok(n) = wire.read(&mut scratch);
        scratch[0] ^= stamp as u8;
        let _ = wire.write_all(&scratch[..n]);
    }
}
