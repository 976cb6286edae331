//! `grove-firmware`: a `no_std`, heap-free crate for microcontroller sensor devices that talk to a Grove
//! gateway (or AWS IoT Core) over MQTT 3.1.1 and keep their state in an AWS Device Shadow.
//!
//! # Map
//! - [`sht4x`]: a Sensirion SHT4x temperature/humidity driver on embedded-hal 1.0 (`I2c` + `DelayNs`).
//! - [`actuator`]: a relay or LED on an `OutputPin`, switched by the shadow's `relay` field.
//! - [`mqtt`]: the MQTT 3.1.1 codec.
//! - [`device`]: the sans-IO device core ([`Device`]): MQTT session, shadow logic, telemetry.
//! - [`shadow`], [`telemetry`]: the JSON documents, via serde-json-core into fixed buffers.
//! - [`transport`]: the blocking shell over `embedded-io`, the async shell over `embedded-io-async`
//!   (feature `async`), TLS 1.3 to the gateway (feature `tls`), and a `std` TCP transport (feature
//!   `std`).
//! - [`provision`]: the device's identity (thing name, MQTT credentials, TLS trust) as a record in its
//!   own flash, written once by a provisioning step.
//!
//! # Why an own MQTT codec
//! The candidates were weighed by determinism, footprint and what Grove's broker (rumqttd, which speaks
//! MQTT 3.1.1 and 5) accepts:
//! - minimq 0.13 and rust-mqtt 0.6 are MQTT 5 clients that own their session and network stack
//!   (minimq over embedded-nal, rust-mqtt over embedded-io-async); neither is sans-IO, so neither runs
//!   on a test's virtual clock or inside the simulator's own event loop.
//! - mqttrust 1.0 is tied to embassy's executor.
//! - mqttrs 0.4 is the closest fit, a sans-IO 3.1.1 codec, but without `std` its SUBSCRIBE and SUBACK
//!   hold `heapless::Vec<_, 5>` of `heapless::String<256>`: topic filters are copied into values of
//!   about 1.3 KiB, and it brings heapless 0.7 next to the 0.9 this crate uses.
//!
//! The device needs nine packet types of MQTT 3.1.1; a zero-copy codec for exactly those is a few
//! hundred lines, is fully deterministic (no allocation, no global state), and is covered here by
//! property tests and a cargo-fuzz target (`firmware/fuzz`). MQTT 3.1.1 rather than 5 because every
//! broker Grove meets speaks it (rumqttd, mosquitto, AWS IoT Core) and its packets are smaller.
//!
//! # Memory
//! Everything is statically sized; see the capacities in [`device`]. `firmware/ci.sh` prints the flash
//! and RAM of the two example firmwares (STM32F411, RP2040) and of the core measured alone and with
//! TLS, and fails beyond the budget (64 KiB flash and 16 KiB static RAM per example, 24 KiB flash for
//! the core, 16 KiB static RAM for the core with TLS besides its record buffers; its flash is checked
//! against a ceiling, the 64 KiB goal being missed: see firmware/README.md, "Memory").
//!
//! Architecture invariant: this crate never needs `std`, never allocates and contains no `unsafe`.
#![cfg_attr(not(feature = "std"), no_std)]

pub mod actuator;
pub mod device;
pub mod mqtt;
pub mod provision;
pub mod shadow;
pub mod sht4x;
pub mod telemetry;
pub mod time;
pub mod transport;

pub use device::{Config, Credentials, Device, Event};
pub use time::Instant;
