//! The memory `grove_alloc` hands to the host for an event, and the bounds checks on it.
//!
//! The host asks for memory with `grove_alloc`, writes the event's topic and payload there and passes
//! their addresses to the handler. The SDK keeps every buffer it handed out in a list: the handler's
//! entry looks the addresses up in that list (so a wrong address from the host is an error, not
//! undefined behaviour, and no unsafe code is needed to read the event), and frees the whole list when
//! the handler returns, so an instance that serves many events does not grow with each one.

use std::cell::RefCell;

/// The buffers handed out since the last invocation started.
#[derive(Debug, Default)]
pub(crate) struct Buffers {
    buffers: Vec<Box<[u8]>>,
}

impl Buffers {
    /// A new zeroed buffer of `size` bytes, kept in the list; returns its address, or `None` when
    /// memory is exhausted (the host then gets 0 and fails the invocation instead of a trap).
    // Only the wasm32 export `grove_alloc` and the tests call it; a native build has no such export.
    #[cfg_attr(not(any(test, target_arch = "wasm32")), allow(dead_code))]
    pub(crate) fn alloc(&mut self, size: usize) -> Option<usize> {
        let mut bytes = Vec::new();
        bytes.try_reserve_exact(size).ok()?;
        bytes.resize(size, 0);
        self.buffers.try_reserve(1).ok()?;
        let buffer = bytes.into_boxed_slice();
        let address = buffer.as_ptr() as usize;
        self.buffers.push(buffer);
        Some(address)
    }

    /// The `len` bytes at `address`, if they lie inside one buffer of the list.
    pub(crate) fn get(&self, address: usize, len: usize) -> Option<&[u8]> {
        if len == 0 {
            return Some(&[]);
        }
        self.buffers.iter().find_map(|buffer| {
            let offset = address.checked_sub(buffer.as_ptr() as usize)?;
            buffer.get(offset..offset.checked_add(len)?)
        })
    }
}

thread_local! {
    /// The buffers of the event being delivered. wasm32 without threads has one thread, so this is
    /// effectively a global; `thread_local!` just makes that safe to say.
    pub(crate) static EVENT_BUFFERS: RefCell<Buffers> = RefCell::new(Buffers::default());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_stay_inside_buffers() {
        let mut buffers = Buffers::default();
        let topic = buffers.alloc(5).unwrap();
        let payload = buffers.alloc(3).unwrap();
        let cases: &[(usize, usize, Option<&[u8]>)] = &[
            (topic, 5, Some(&[0; 5])),
            (topic + 1, 4, Some(&[0; 4])),
            (payload, 3, Some(&[0; 3])),
            (topic, 6, None),
            (topic + 5, 1, None),
            (payload + 2, 2, None),
            (0, 1, None),
            (usize::MAX, 2, None),
            (0, 0, Some(&[])),
        ];
        for &(address, len, expected) in cases {
            assert_eq!(buffers.get(address, len), expected, "{address:#x}+{len}");
        }
    }

    #[test]
    fn exhausted_memory_is_none_not_an_abort() {
        assert_eq!(Buffers::default().alloc(usize::MAX), None);
    }
}
