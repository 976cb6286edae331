//! The relay driver: the pin level each polarity drives for "on" and "off", one case per line, on an
//! embedded-hal-mock pin that checks the exact writes (and reports a pin error as the driver's error).

use embedded_hal_mock::eh1::digital::{Mock as PinMock, State as Level, Transaction as Pin};
use embedded_hal_mock::eh1::MockError;
use grove_firmware::actuator::{Actuator, Polarity, Relay};

#[test]
fn polarity_decides_the_level_for_on_and_off() {
    #[rustfmt::skip]
    let cases = [
        (Polarity::ActiveHigh, true, Level::High),
        (Polarity::ActiveHigh, false, Level::Low),
        (Polarity::ActiveLow, true, Level::Low),
        (Polarity::ActiveLow, false, Level::High),
    ];
    for (polarity, on, level) in cases {
        let mut relay = Relay::new(PinMock::new(&[Pin::set(level)]), polarity);
        relay
            .set(on)
            .unwrap_or_else(|e| panic!("{polarity:?} {on}: {e:?}"));
        relay.release().done();
    }
}

#[test]
fn new_drives_nothing_and_pin_errors_are_returned() {
    // `Relay::new` performs no I/O: a mock expecting no transaction is satisfied.
    Relay::new(PinMock::new(&[]), Polarity::ActiveLow)
        .release()
        .done();
    let fault = MockError::Io(std::io::ErrorKind::BrokenPipe);
    let pin = PinMock::new(&[Pin::set(Level::Low).with_error(fault.clone())]);
    let mut relay = Relay::new(pin, Polarity::ActiveLow);
    assert_eq!(relay.set(true), Err(fault));
    relay.release().done();
}
