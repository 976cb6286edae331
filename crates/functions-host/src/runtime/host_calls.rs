//! ABI v1's host calls (module `grove`): reading the guest's memory, the grant checks, and each
//! call's effect through the invocation's [`Host`](super::Host).

use super::*;

/// Reads `len` bytes at `ptr` of the guest's memory.
fn guest_bytes(data: &[u8], ptr: i32, len: i32) -> Option<&[u8]> {
    let start = usize::try_from(ptr).ok()?;
    let len = usize::try_from(len).ok()?;
    data.get(start..start.checked_add(len)?)
}

/// The memory, the invocation and the manifest of a host call, or the code to return when there
/// is no invocation.
fn parts<'a>(
    caller: &'a mut Caller<'_, HostState>,
) -> Result<(&'a mut [u8], &'a mut Call, &'a Manifest), i32> {
    let memory = caller.data().memory.ok_or(code::INVALID)?;
    let (data, state) = memory.data_and_store_mut(caller);
    let HostState { call, manifest, .. } = state;
    let call = call.as_mut().ok_or(code::UNAVAILABLE)?;
    Ok((data, call, manifest))
}

/// A kv call's memory, state and key, after the kv grant check (a refusal is recorded).
fn kv_parts<'a>(
    caller: &'a mut Caller<'_, HostState>,
    kp: i32,
    kl: i32,
    name: &'static str,
) -> Result<(&'a mut [u8], &'a mut Call, String), i32> {
    let (data, call, manifest) = parts(caller)?;
    let key = text(data, kp, kl)?;
    if !manifest.grants.kv {
        return Err(call.deny(name, &key));
    }
    Ok((data, call, key))
}

fn text(data: &[u8], ptr: i32, len: i32) -> Result<String, i32> {
    let bytes = guest_bytes(data, ptr, len).ok_or(code::INVALID)?;
    std::str::from_utf8(bytes)
        .map(str::to_owned)
        .map_err(|_| code::INVALID)
}

impl Call {
    /// Records a refused call and returns DENIED.
    fn deny(&mut self, call: &'static str, detail: &str) -> i32 {
        self.denied += 1;
        self.host.denied(call, detail);
        code::DENIED
    }

    /// Counts an effect; false past the limit.
    fn effect(&mut self) -> bool {
        self.effects.spend()
    }

    /// Makes `data` the pending result and returns its length.
    fn pend(&mut self, data: Vec<u8>) -> i32 {
        let len = i32::try_from(data.len()).unwrap_or(code::LIMIT);
        self.pending = Some(data);
        len
    }

    fn host_error(&mut self, e: HostError) -> i32 {
        match e {
            HostError::Invalid => code::INVALID,
            HostError::Limit => code::LIMIT,
            HostError::NotFound => code::NOT_FOUND,
            HostError::Unavailable => code::UNAVAILABLE,
            HostError::Rejected(doc) => {
                self.pending = Some(doc);
                code::REJECTED
            }
        }
    }
}

/// A shadow call's thing name and optional shadow name (length 0: the classic shadow); either
/// one unreadable is INVALID.
fn shadow_target(
    data: &[u8],
    (tp, tl): (i32, i32),
    (np, nl): (i32, i32),
) -> Result<(String, Option<String>), i32> {
    let thing = text(data, tp, tl).map_err(|_| code::INVALID)?;
    let name = if nl == 0 {
        None
    } else {
        Some(text(data, np, nl).map_err(|_| code::INVALID)?)
    };
    Ok((thing, name))
}

/// A host call's return value: its result, or the (negative) code that stopped it early. Each
/// host call below is written with `?` over `Result<i32, i32>` and returns through this.
fn status(result: Result<i32, i32>) -> i32 {
    result.unwrap_or_else(|code| code)
}

/// A host-side error as the guest's code (`Err`), keeping a rejection document pending.
fn host_result<T>(call: &mut Call, result: Result<T, HostError>) -> Result<T, i32> {
    result.map_err(|e| call.host_error(e))
}

/// Defines ABI v1's host calls (module `grove`).
pub(super) fn define_host_calls(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "grove",
        "output",
        |mut caller: Caller<'_, HostState>, ptr: i32, len: i32| -> i32 {
            status((|| {
                let (data, call, _) = parts(&mut caller)?;
                let bytes = guest_bytes(data, ptr, len).ok_or(code::INVALID)?;
                if bytes.len() > MAX_BODY {
                    return Err(code::LIMIT);
                }
                call.output = bytes.to_vec();
                Ok(0)
            })())
        },
    )?;
    linker.func_wrap(
        "grove",
        "publish",
        |mut caller: Caller<'_, HostState>, tp: i32, tl: i32, pp: i32, pl: i32, qos: i32| -> i32 {
            status((|| {
                let (data, call, manifest) = parts(&mut caller)?;
                let topic = text(data, tp, tl)?;
                let payload = guest_bytes(data, pp, pl).ok_or(code::INVALID)?;
                if topic.is_empty() || topic.contains(['+', '#', '\0']) || !(0..=1).contains(&qos) {
                    return Err(code::INVALID);
                }
                if !manifest.grants.may_publish(&topic) {
                    return Err(call.deny("publish", &topic));
                }
                if payload.len() > MAX_BODY || !call.effect() {
                    return Err(code::LIMIT);
                }
                let sent = call.host.publish(&topic, payload, qos as u8);
                host_result(call, sent).map(|()| 0)
            })())
        },
    )?;
    linker.func_wrap(
        "grove",
        "shadow_get",
        |mut caller: Caller<'_, HostState>, tp: i32, tl: i32, np: i32, nl: i32| -> i32 {
            status((|| {
                let (data, call, manifest) = parts(&mut caller)?;
                let (thing, name) = shadow_target(data, (tp, tl), (np, nl))?;
                if !manifest.grants.may_read_shadow(&thing) {
                    return Err(call.deny("shadow_get", &thing));
                }
                let deadline = call.deadline;
                let doc = call.host.shadow_get(&thing, name.as_deref(), deadline);
                let doc = host_result(call, doc)?;
                Ok(call.pend(doc))
            })())
        },
    )?;
    linker.func_wrap(
        "grove",
        "shadow_update",
        |mut caller: Caller<'_, HostState>,
         tp: i32,
         tl: i32,
         np: i32,
         nl: i32,
         dp: i32,
         dl: i32|
         -> i32 {
            status((|| {
                let (data, call, manifest) = parts(&mut caller)?;
                let (thing, name) = shadow_target(data, (tp, tl), (np, nl))?;
                let doc = guest_bytes(data, dp, dl).ok_or(code::INVALID)?;
                if !manifest.grants.may_update_shadow(&thing) {
                    return Err(call.deny("shadow_update", &thing));
                }
                if !call.effect() {
                    return Err(code::LIMIT);
                }
                let deadline = call.deadline;
                let answer = call
                    .host
                    .shadow_update(&thing, name.as_deref(), doc, deadline);
                let answer = host_result(call, answer)?;
                Ok(call.pend(answer))
            })())
        },
    )?;
    linker.func_wrap(
        "grove",
        "kv_get",
        |mut caller: Caller<'_, HostState>, kp: i32, kl: i32| -> i32 {
            status((|| {
                let (_, call, key) = kv_parts(&mut caller, kp, kl, "kv_get")?;
                let value = call.host.kv_get(&key);
                match host_result(call, value)? {
                    Some(v) => Ok(call.pend(v)),
                    None => Err(code::NOT_FOUND),
                }
            })())
        },
    )?;
    linker.func_wrap(
        "grove",
        "kv_put",
        |mut caller: Caller<'_, HostState>, kp: i32, kl: i32, vp: i32, vl: i32| -> i32 {
            status((|| {
                let (data, call, key) = kv_parts(&mut caller, kp, kl, "kv_put")?;
                let value = guest_bytes(data, vp, vl).ok_or(code::INVALID)?;
                if value.len() > MAX_BODY || !call.effect() {
                    return Err(code::LIMIT);
                }
                let stored = call.host.kv_put(&key, Some(value));
                host_result(call, stored).map(|()| 0)
            })())
        },
    )?;
    linker.func_wrap(
        "grove",
        "kv_delete",
        |mut caller: Caller<'_, HostState>, kp: i32, kl: i32| -> i32 {
            status((|| {
                let (_, call, key) = kv_parts(&mut caller, kp, kl, "kv_delete")?;
                if !call.effect() {
                    return Err(code::LIMIT);
                }
                let deleted = call.host.kv_put(&key, None);
                host_result(call, deleted).map(|()| 0)
            })())
        },
    )?;
    linker.func_wrap(
        "grove",
        "config_get",
        |mut caller: Caller<'_, HostState>, kp: i32, kl: i32| -> i32 {
            status((|| {
                let (data, call, manifest) = parts(&mut caller)?;
                let key = text(data, kp, kl)?;
                let value = manifest.config.get(&key).ok_or(code::NOT_FOUND)?;
                Ok(call.pend(value.clone().into_bytes()))
            })())
        },
    )?;
    linker.func_wrap(
        "grove",
        "log",
        |mut caller: Caller<'_, HostState>, level: i32, ptr: i32, len: i32| {
            if let Ok((data, call, _)) = parts(&mut caller) {
                if let Some(bytes) = guest_bytes(data, ptr, len) {
                    call.host.log(Level::from_i32(level), bytes);
                }
            }
        },
    )?;
    linker.func_wrap("grove", "now_ms", || -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    })?;
    linker.func_wrap(
        "grove",
        "result",
        |mut caller: Caller<'_, HostState>, ptr: i32, len: i32| -> i32 {
            status((|| {
                let (data, call, _) = parts(&mut caller)?;
                let pending = call.pending.as_ref().ok_or(code::NOT_FOUND)?;
                let n = pending.len().min(usize::try_from(len).unwrap_or(0));
                let dest = usize::try_from(ptr)
                    .ok()
                    .and_then(|p| data.get_mut(p..p.checked_add(n)?))
                    .ok_or(code::INVALID)?;
                dest.copy_from_slice(&pending[..n]);
                Ok(n as i32)
            })())
        },
    )?;
    Ok(())
}
