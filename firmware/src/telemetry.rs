//! Telemetry messages: one JSON object per sample, written with serde-json-core into a fixed buffer.

use serde::Serialize;

use crate::sht4x::Measurement;

/// The topic telemetry is published on, under the thing's name: `dt/{thing}/telemetry`. The `dt/`
/// ("device telemetry") prefix follows AWS's topic-design guidance, so rules can match `dt/+/telemetry`.
pub const TOPIC_PREFIX: &str = "dt/";
/// See [`TOPIC_PREFIX`].
pub const TOPIC_SUFFIX: &str = "/telemetry";

/// One telemetry message, e.g. `{"seq":7,"temp_mc":21500,"rh_mpct":40250,"relay":false}`.
///
/// Values are integers in milli-units, exactly as the driver measures them: rules divide by 1000 when
/// they want degrees. Formatting floats would need ryu and soft-float division, about 3 KiB of flash
/// on a Cortex-M0+, which the device core's 24 KiB budget cannot spare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Telemetry {
    /// A per-boot sequence number, so the gateway can see gaps.
    pub seq: u32,
    /// Temperature in thousandths of a degree Celsius.
    pub temp_mc: i32,
    /// Relative humidity in thousandths of a percent.
    pub rh_mpct: i32,
    /// The relay state when the sample was taken.
    pub relay: bool,
}

impl Telemetry {
    /// Builds a message from a measurement.
    pub fn new(seq: u32, measurement: Measurement, relay: bool) -> Self {
        Self {
            seq,
            temp_mc: measurement.temperature_milli_c,
            rh_mpct: measurement.humidity_milli_pct,
            relay,
        }
    }

    /// Writes the JSON object into `buf`; returns its length, or `None` if it does not fit.
    pub fn encode(&self, buf: &mut [u8]) -> Option<usize> {
        serde_json_core::to_slice(self, buf).ok()
    }
}
