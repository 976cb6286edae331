//! `grove-tests`: helpers for Grove's end-to-end tests.
//!
//! The tests in `tests/tests/` start the real `grove` binary on free loopback ports with a
//! temporary data directory, and drive it with real clients (rumqttc, mosquitto_pub/sub).
