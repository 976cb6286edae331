//! The effects of one invocation's host calls, pure: what a function publishes and writes to its
//! key-value namespace is held until the handler returns success (so a failed attempt that is
//! retried leaves nothing behind), reads see the invocation's own writes, the hop limit bounds
//! what a function can cause, and [`Budget`] bounds how many effects one invocation makes.
//!
//! The shell (`service/host.rs`) performs what this decides: it asks the shadow service and the
//! store, and commits [`Effects::commit`]'s writes and publishes.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde_json::Value;

use crate::runtime::{HostError, MAX_EFFECTS};
use grove_broker::bus::{Outgoing, MAX_HOPS};

/// Why a shadow or publish call was refused at the hop limit: the metric's `call` label.
pub(crate) type HopLimit = &'static str;

/// The held effects of one invocation.
#[derive(Debug)]
pub(crate) struct Effects {
    /// The hop count of the message that triggered the invocation.
    hops: u32,
    /// Held until the handler succeeds.
    publishes: Vec<Outgoing>,
    /// Key-value writes (`None`: a delete) held until the handler succeeds; reads see them.
    kv: BTreeMap<String, Option<Vec<u8>>>,
}

/// What a successful invocation commits: the key-value writes first (in one store commit), then
/// the publishes.
#[derive(Debug, PartialEq)]
pub(crate) struct Commit {
    pub(crate) kv: Vec<(String, Option<Vec<u8>>)>,
    pub(crate) publishes: Vec<Outgoing>,
}

impl Effects {
    /// The effects of an invocation triggered by a message `hops` deep.
    pub(crate) fn new(hops: u32) -> Effects {
        Effects {
            hops,
            publishes: Vec::new(),
            kv: BTreeMap::new(),
        }
    }

    /// The hop count of the message that triggered the invocation.
    pub(crate) fn hops(&self) -> u32 {
        self.hops
    }

    /// Holds a publish, one hop deeper than the trigger; refused at the hop limit.
    pub(crate) fn publish(&mut self, topic: &str, payload: &[u8], qos: u8) -> Result<(), HopLimit> {
        if self.hops >= MAX_HOPS {
            return Err("publish_hop_limit");
        }
        self.publishes.push(Outgoing {
            topic: topic.to_owned(),
            payload: Bytes::copy_from_slice(payload),
            qos,
            retain: false,
            hops: self.hops + 1,
        });
        Ok(())
    }

    /// The hop count of a shadow request (one deeper than the trigger), after checking its names;
    /// `Err(None)` for an invalid name, `Err(Some(label))` at the hop limit.
    pub(crate) fn shadow_request(
        &self,
        thing: &str,
        name: Option<&str>,
    ) -> Result<u32, Option<HopLimit>> {
        if grove_shadow_api::names::validate_thing_name(thing).is_err()
            || name.is_some_and(|n| grove_shadow_api::names::validate_shadow_name(n).is_err())
        {
            return Err(None);
        }
        if self.hops >= MAX_HOPS {
            return Err(Some("shadow_hop_limit"));
        }
        Ok(self.hops + 1)
    }

    /// The invocation's own write of `key`, if it made one (`Some(None)`: deleted).
    pub(crate) fn kv_written(&self, key: &str) -> Option<Option<Vec<u8>>> {
        self.kv.get(key).cloned()
    }

    /// Holds a key-value write (`None`: a delete).
    pub(crate) fn kv_put(&mut self, key: &str, value: Option<&[u8]>) {
        self.kv.insert(key.to_owned(), value.map(<[u8]>::to_vec));
    }

    /// What to commit when the handler ended: everything held if it succeeded, nothing if not.
    pub(crate) fn commit(self, ok: bool) -> Option<Commit> {
        ok.then(|| Commit {
            kv: self.kv.into_iter().collect(),
            publishes: self.publishes,
        })
    }
}

/// A `shadow_get`'s result from the service's answer: the document, `NotFound` for a 404, else
/// the rejection document.
pub(crate) fn shadow_get_result(accepted: bool, doc: &[u8]) -> Result<Vec<u8>, HostError> {
    if accepted {
        return Ok(doc.to_vec());
    }
    let code = serde_json::from_slice::<Value>(doc)
        .ok()
        .and_then(|v| v["code"].as_u64());
    if code == Some(404) {
        Err(HostError::NotFound)
    } else {
        Err(HostError::Rejected(doc.to_vec()))
    }
}

/// A `shadow_update`'s document: a JSON object, else `Invalid`.
pub(crate) fn shadow_update_body(doc: &[u8]) -> Result<Value, HostError> {
    let body: Value = serde_json::from_slice(doc).map_err(|_| HostError::Invalid)?;
    if !body.is_object() {
        return Err(HostError::Invalid);
    }
    Ok(body)
}

/// A `shadow_update`'s result from the service's answer: the new document, or the rejection.
pub(crate) fn shadow_update_result(accepted: bool, doc: &[u8]) -> Result<Vec<u8>, HostError> {
    if accepted {
        Ok(doc.to_vec())
    } else {
        Err(HostError::Rejected(doc.to_vec()))
    }
}

/// How many effects (publish, shadow updates, kv writes and deletes) an invocation has made,
/// against [`MAX_EFFECTS`].
#[derive(Debug, Default)]
pub(crate) struct Budget {
    spent: u32,
}

impl Budget {
    /// Counts an effect; false past the limit.
    pub(crate) fn spend(&mut self) -> bool {
        self.spent += 1;
        self.spent <= MAX_EFFECTS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effects_are_held_until_success_and_dropped_on_failure() {
        let mut e = Effects::new(2);
        e.publish("out/1", b"a", 1).expect("under the hop limit");
        e.kv_put("k", Some(b"v"));
        e.kv_put("gone", None);
        assert_eq!(e.kv_written("k"), Some(Some(b"v".to_vec())));
        assert_eq!(e.kv_written("gone"), Some(None));
        assert_eq!(e.kv_written("other"), None);
        let commit = e.commit(true).expect("a success commits");
        assert_eq!(
            commit.kv,
            vec![
                ("gone".to_owned(), None),
                ("k".to_owned(), Some(b"v".to_vec()))
            ]
        );
        assert_eq!(commit.publishes.len(), 1);
        assert_eq!(commit.publishes[0].hops, 3);
        assert_eq!(commit.publishes[0].qos, 1);
        assert!(!commit.publishes[0].retain);

        let mut failed = Effects::new(0);
        failed
            .publish("out/1", b"a", 0)
            .expect("under the hop limit");
        failed.kv_put("k", Some(b"v"));
        assert_eq!(failed.commit(false), None);
    }

    #[test]
    fn the_hop_limit_refuses_publishes_and_shadow_requests() {
        let mut deep = Effects::new(MAX_HOPS);
        assert_eq!(deep.publish("t", b"", 0), Err("publish_hop_limit"));
        assert_eq!(
            deep.shadow_request("thing", None),
            Err(Some("shadow_hop_limit"))
        );
        let shallow = Effects::new(MAX_HOPS - 1);
        assert_eq!(shallow.shadow_request("thing", Some("cfg")), Ok(MAX_HOPS));
        // A bad name is invalid whatever the depth.
        assert_eq!(shallow.shadow_request("a/b", None), Err(None));
        assert_eq!(shallow.shadow_request("thing", Some("")), Err(None));
    }

    #[test]
    fn shadow_answers_become_results_and_codes() {
        assert_eq!(shadow_get_result(true, b"{}"), Ok(b"{}".to_vec()));
        assert_eq!(
            shadow_get_result(false, br#"{"code":404,"message":"No shadow exists"}"#),
            Err(HostError::NotFound)
        );
        let conflict = br#"{"code":409,"message":"Version conflict"}"#;
        assert_eq!(
            shadow_update_result(false, conflict),
            Err(HostError::Rejected(conflict.to_vec()))
        );
        assert_eq!(
            shadow_get_result(false, conflict),
            Err(HostError::Rejected(conflict.to_vec()))
        );
        assert!(shadow_update_body(br#"{"state":{}}"#).is_ok());
        for bad in [&b"[1]"[..], b"\"s\"", b"not json"] {
            assert_eq!(shadow_update_body(bad), Err(HostError::Invalid));
        }
    }

    #[test]
    fn the_budget_allows_max_effects_and_refuses_the_next() {
        let mut b = Budget::default();
        for _ in 0..MAX_EFFECTS {
            assert!(b.spend());
        }
        assert!(!b.spend());
    }
}
