//! The simulated relay: an embedded-hal `OutputPin` whose level the runner can read, driven by the
//! firmware's own `Relay` (so the shadow's `relay` field switches it exactly as on a board).

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A relay's output pin: the level is shared so the runner can see what the firmware switched.
#[derive(Debug, Clone, Default)]
pub struct SimPin(Arc<AtomicBool>);

impl SimPin {
    /// Whether the pin is driven high.
    pub fn is_high(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

impl embedded_hal::digital::ErrorType for SimPin {
    type Error = Infallible;
}

impl embedded_hal::digital::OutputPin for SimPin {
    fn set_low(&mut self) -> Result<(), Self::Error> {
        self.0.store(false, Ordering::Relaxed);
        Ok(())
    }

    fn set_high(&mut self) -> Result<(), Self::Error> {
        self.0.store(true, Ordering::Relaxed);
        Ok(())
    }
}
