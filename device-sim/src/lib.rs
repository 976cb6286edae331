//! `grove-device-sim`: a fleet of simulated devices for testing a Grove gateway before hardware.
//!
//! Every simulated device is the firmware's own sans-IO device core ([`grove_firmware::Device`]) in a
//! tokio task over a real TCP connection: the simulator re-implements no part of the device's MQTT
//! session, shadow logic or telemetry encoding. Around each core the simulator puts what a board
//! would: an SHT4x on an embedded-hal I2C bus ([`sensor`], read by the firmware's real driver) and a
//! relay pin ([`actuator`], switched by the firmware's real `Relay`).
//!
//! # Map
//! - [`scenario`]: the TOML scenario (fleet, telemetry, sensor model, shadow controller, chaos,
//!   expectations), validated.
//! - [`sensor`], [`actuator`]: the simulated hardware.
//! - [`device`]: one device task (the firmware core's shell).
//! - [`fleet`]: shared records; how delivery, latency and convergence are measured.
//! - [`observer`], [`controller`], [`mqtt`]: the instrument clients (rumqttc).
//! - [`chaos`]: disconnects, reboots and storms from a seeded schedule.
//! - [`probe`]: the gateway's and the simulator's RSS and CPU from `/proc`.
//! - [`mod@run`]: the three phases of a run; [`summary`]: figures and the verdict.
//!
//! Architecture invariant: a simulated device speaks to the gateway only through
//! `grove_firmware::Device`; the simulator only moves its bytes, feeds it time and hardware, and reads
//! its events.

pub mod actuator;
pub mod chaos;
pub mod controller;
pub mod device;
pub mod fleet;
pub mod mqtt;
pub mod observer;
pub mod probe;
pub mod run;
pub mod scenario;
pub mod sensor;
pub mod summary;

pub use run::{run, Progress, RunError, RunOptions};
pub use scenario::{Overrides, Scenario, ScenarioError};
pub use summary::Summary;
