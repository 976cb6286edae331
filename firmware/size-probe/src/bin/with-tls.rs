//! The probe with the device core over TLS 1.3, driven the way an async board drives it: the
//! thing name, credentials and TLS identity read from a provisioning record in flash, the TLS
//! handshake (P-256 key exchange, the gateway's certificate checked against the CA, a client
//! certificate), then the async shell over the session.
#![no_std]
#![no_main]

use core::mem::MaybeUninit;
use cortex_m_rt::entry;
use grove_firmware::actuator::{Polarity, Relay};
use grove_firmware::provision::{self, MAX_RECORD};
use grove_firmware::sht4x::{Address, Precision, Sht4x};
use grove_firmware::transport::tls::{self, Buffers, Session};
use grove_firmware::transport::asynch;
use grove_firmware::{Config, Device, Instant};
use grove_firmware_size_probe::{now_ms, Bus, Flash, Pin, Socket, Trng, Wait};
use panic_halt as _;

/// The record's offset in the stand-in flash (a board's last sector).
const RECORD_OFFSET: u32 = 0x6_0000;

#[entry]
fn main() -> ! {
    // As in `with-core`: the device, the TLS record buffers and the provisioning record's buffer in
    // statics (.bss), so that the ELF's static RAM figure counts them.
    static mut DEVICE: MaybeUninit<Device<Relay<Pin>>> = MaybeUninit::uninit();
    static mut TLS_BUFFERS: Buffers = Buffers::new();
    static mut RECORD: [u8; MAX_RECORD] = [0; MAX_RECORD];
    let Ok(record) = provision::read(&mut Flash, RECORD_OFFSET, RECORD) else {
        panic!("not provisioned");
    };
    let (Ok(config), Some(identity)) = (Config::new(record.thing), record.tls) else {
        panic!("invalid record");
    };
    let config = match record.login.map(|l| l.credentials()) {
        Some(Ok(credentials)) => config.with_credentials(credentials),
        _ => config,
    };
    let mut sensor = Sht4x::new(Bus, Wait, Address::A44);
    let relay = Relay::new(Pin, Polarity::ActiveHigh);
    let device = DEVICE.write(Device::new(config, relay, Instant::from_millis(now_ms())));
    let now = || Instant::from_millis(now_ms());
    let mut scratch = [0u8; 128];
    embassy_futures::block_on(async {
        loop {
            let no_session = None::<&mut Session<'_, Socket>>;
            let _ = tls::wait(device, no_session, &mut scratch, |_| async {}, now).await;
            device.handle_events(now(), || sensor.measure(Precision::High));
            let Ok(mut session) = Session::connect(Socket, TLS_BUFFERS, &identity, Trng).await
            else {
                device.transport_closed(now());
                continue;
            };
            device.transport_opened(now());
            while device.uses_transport() {
                let sent = asynch::transmit(device, &mut session, now(), &mut scratch).await;
                let waited = tls::wait(device, Some(&mut session), &mut scratch, |_| async {}, now);
                if sent.is_err() || waited.await.is_err() {
                    break;
                }
                device.handle_events(now(), || sensor.measure(Precision::High));
            }
        }
    })
}
