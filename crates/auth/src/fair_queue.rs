//! A bounded queue served round-robin over keys (the password checks' queue, keyed by peer
//! address), pure: no threads, no clock.
//!
//! Written by hand: the crates that schedule fairly (deficit round robin and the like) are built
//! for async streams or packet weights, and this needs ~100 lines with the one policy that matters
//! here, described on [`FairQueue::push`]. Its point: a peer's turn comes after at most one item of
//! every other peer that has items queued, however many each queued, and a full queue makes room
//! for a peer by taking it from the peer holding the most, so one address flooding the queue
//! cannot keep another's first login out.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

/// What became of a pushed item.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed<T> {
    /// Queued.
    Queued,
    /// Queued, in the place of this item, the newest of the key that held the most.
    Displaced(T),
    /// Not queued (given back): the queue is full, and this key already holds as many as any.
    Refused(T),
}

/// A queue of at most `capacity` items, each under a key, served one key's oldest item at a time
/// in turn.
#[derive(Debug)]
pub struct FairQueue<K, T> {
    queues: HashMap<K, VecDeque<T>>,
    /// The keys with items queued, in the order they are served.
    turns: VecDeque<K>,
    len: usize,
    capacity: usize,
}

impl<K: Eq + Hash + Clone, T> FairQueue<K, T> {
    /// An empty queue holding at most `capacity` items.
    pub fn new(capacity: usize) -> FairQueue<K, T> {
        FairQueue {
            queues: HashMap::new(),
            turns: VecDeque::new(),
            len: 0,
            capacity,
        }
    }

    /// Items queued.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Items queued under `key`.
    pub fn queued(&self, key: &K) -> usize {
        self.queues.get(key).map_or(0, VecDeque::len)
    }

    /// Queues `item` under `key`. When the queue is full, the key holding the most items gives up
    /// its newest for it, if it holds at least two more than `key` does (so the shares even out
    /// and never swap); otherwise the item is refused.
    pub fn push(&mut self, key: K, item: T) -> Pushed<T> {
        let mut displaced = None;
        if self.len >= self.capacity {
            let mine = self.queued(&key);
            let longest = self
                .queues
                .iter()
                .max_by_key(|(_, q)| q.len())
                .filter(|(_, q)| q.len() >= mine + 2)
                .map(|(k, _)| k.clone());
            let Some(longest) = longest else {
                return Pushed::Refused(item);
            };
            // It holds at least two, so it keeps its turn.
            displaced = self.queues.get_mut(&longest).and_then(VecDeque::pop_back);
            self.len -= usize::from(displaced.is_some());
        }
        let queue = self.queues.entry(key.clone()).or_default();
        if queue.is_empty() {
            self.turns.push_back(key);
        }
        queue.push_back(item);
        self.len += 1;
        displaced.map_or(Pushed::Queued, Pushed::Displaced)
    }

    /// The oldest item of the key whose turn it is; that key's next turn comes after every other
    /// key with items queued.
    pub fn pop(&mut self) -> Option<T> {
        let key = self.turns.pop_front()?;
        let queue = self.queues.get_mut(&key)?;
        let item = queue.pop_front();
        if queue.is_empty() {
            self.queues.remove(&key);
        } else {
            self.turns.push_back(key);
        }
        self.len -= usize::from(item.is_some());
        item
    }

    /// Drops the items for which `keep` is false (and the turns of keys left with none).
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        for queue in self.queues.values_mut() {
            let before = queue.len();
            queue.retain(&mut keep);
            self.len -= before - queue.len();
        }
        self.queues.retain(|_, q| !q.is_empty());
        let queues = &self.queues;
        self.turns.retain(|k| queues.contains_key(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(q: &mut FairQueue<&'static str, u32>) -> Vec<u32> {
        std::iter::from_fn(|| q.pop()).collect()
    }

    #[test]
    fn keys_are_served_in_turn_each_in_its_own_order() {
        let mut q = FairQueue::new(10);
        for (k, v) in [
            ("a", 1),
            ("a", 2),
            ("a", 3),
            ("b", 10),
            ("c", 20),
            ("b", 11),
        ] {
            assert_eq!(q.push(k, v), Pushed::Queued);
        }
        assert_eq!(q.len(), 6);
        assert_eq!(drain(&mut q), [1, 10, 20, 2, 11, 3]);
        assert!(q.is_empty());
    }

    #[test]
    fn a_key_arriving_late_waits_one_round_not_the_whole_queue() {
        let mut q = FairQueue::new(100);
        for n in 0..30 {
            q.push(["x", "y", "z"][n % 3], n as u32);
        }
        q.pop();
        q.push("late", 999);
        let order = drain(&mut q);
        let at = order.iter().position(|&v| v == 999).unwrap();
        assert!(at <= 3, "served {at}th: {order:?}");
    }

    #[test]
    fn a_full_queue_takes_the_place_from_the_key_holding_most() {
        let mut q = FairQueue::new(4);
        for v in 0..4 {
            assert_eq!(q.push("flood", v), Pushed::Queued);
        }
        assert_eq!(q.push("flood", 4), Pushed::Refused(4), "it holds the most");
        assert_eq!(
            q.push("device", 100),
            Pushed::Displaced(3),
            "the newest goes"
        );
        assert_eq!(q.push("device", 101), Pushed::Displaced(2));
        // 2 and 2: another would only swap the shares.
        assert_eq!(q.push("device", 102), Pushed::Refused(102));
        assert_eq!(
            (q.queued(&"flood"), q.queued(&"device"), q.len()),
            (2, 2, 4)
        );
        assert_eq!(drain(&mut q), [0, 100, 1, 101]);
    }

    #[test]
    fn retain_drops_items_and_the_turns_left_empty() {
        let mut q = FairQueue::new(10);
        for (k, v) in [("a", 1), ("b", 2), ("a", 3), ("c", 4)] {
            q.push(k, v);
        }
        q.retain(|v| v % 2 == 1);
        assert_eq!((q.len(), q.queued(&"b"), q.queued(&"c")), (2, 0, 0));
        assert_eq!(drain(&mut q), [1, 3]);
        assert_eq!(q.pop(), None);
    }

    /// Seeded random pushes and pops keep the count, the bound, and each key's order.
    #[test]
    fn random_operations_keep_the_bound_the_count_and_each_keys_order() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let keys = ["a", "b", "c", "d", "e"];
        let mut q = FairQueue::new(8);
        let mut live: HashMap<&str, VecDeque<u32>> = HashMap::new();
        for n in 0..20_000u32 {
            if next() % 3 == 0 {
                if let Some(v) = q.pop() {
                    let k = keys[(v % 5) as usize];
                    assert_eq!(live.get_mut(k).and_then(VecDeque::pop_front), Some(v));
                }
            } else {
                let k = (next() % 5) as usize;
                let v = n - n % 5 + k as u32;
                match q.push(keys[k], v) {
                    Pushed::Queued => live.entry(keys[k]).or_default().push_back(v),
                    Pushed::Displaced(d) => {
                        let from = keys[(d % 5) as usize];
                        assert_eq!(live.get_mut(from).and_then(VecDeque::pop_back), Some(d));
                        live.entry(keys[k]).or_default().push_back(v);
                    }
                    Pushed::Refused(r) => assert_eq!(r, v),
                }
            }
            assert!(q.len() <= 8);
            assert_eq!(q.len(), live.values().map(VecDeque::len).sum::<usize>());
        }
    }
}
