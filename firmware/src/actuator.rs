//! Actuators driven by shadow state: a relay (or LED) on an embedded-hal `OutputPin`.

use embedded_hal::digital::OutputPin;

/// Something the shadow's `relay` field switches. The device core owns one; boards implement it with a
/// [`Relay`] on a GPIO pin, the simulator with an in-memory flag.
pub trait Actuator {
    /// The error the hardware can report.
    type Error: core::fmt::Debug;

    /// Switches the actuator on or off.
    fn set(&mut self, on: bool) -> Result<(), Self::Error>;
}

/// Which pin level switches the load on; many relay boards are active-low.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Polarity {
    /// High level means on.
    ActiveHigh,
    /// Low level means on.
    ActiveLow,
}

/// A relay or LED on one output pin.
pub struct Relay<P> {
    pin: P,
    polarity: Polarity,
}

impl<P: OutputPin> Relay<P> {
    /// Wraps the pin; performs no I/O (the device core sets the initial state itself).
    pub fn new(pin: P, polarity: Polarity) -> Self {
        Self { pin, polarity }
    }

    /// The pin, for inspection (a test image checking the level it was driven to).
    pub fn pin(&self) -> &P {
        &self.pin
    }

    /// Gives the pin back.
    pub fn release(self) -> P {
        self.pin
    }
}

impl<P: OutputPin> Actuator for Relay<P> {
    type Error = P::Error;

    fn set(&mut self, on: bool) -> Result<(), Self::Error> {
        match (on, self.polarity) {
            (true, Polarity::ActiveHigh) | (false, Polarity::ActiveLow) => self.pin.set_high(),
            (false, Polarity::ActiveHigh) | (true, Polarity::ActiveLow) => self.pin.set_low(),
        }
    }
}
