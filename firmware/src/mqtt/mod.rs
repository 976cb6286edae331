//! MQTT 3.1.1: the packet codec the device core speaks.
//!
//! The session logic (keep-alive, retransmission, reconnect) lives in [`crate::device`], because it is
//! interleaved with the shadow logic that decides what to publish; this module is the pure wire format.

pub mod codec;

pub use codec::{
    decode, Connect, ConnectReturnCode, DecodeError, EncodeError, Filter, Packet, Publish, QoS,
    SubscribeFilters, Will, SUBACK_FAILURE,
};
