//! The prompt cache: the keys and values of finished answers, kept so that a request whose
//! prompt starts with an earlier one's tokens — the next turn of a chat, which repeats the
//! conversation so far — runs only the tokens after the shared part (as llama.cpp's server does
//! with `cache_prompt`).

use burn::tensor::backend::Backend;
use s4c_models::KvCache;

/// Finished sequences' caches, at most `slots` of them, the most recently used last.
pub(crate) struct PromptCache<B: Backend> {
    slots: usize,
    entries: Vec<Entry<B>>,
}

/// A cache and the tokens whose keys and values it holds.
struct Entry<B: Backend> {
    ids: Vec<u32>,
    cache: KvCache<B>,
}

impl<B: Backend> PromptCache<B> {
    /// An empty prompt cache of `slots` entries.
    pub(crate) fn new(slots: usize) -> Self {
        PromptCache {
            slots,
            entries: vec![],
        }
    }

    /// Takes out the entry that shares the longest prefix with `prompt`, cut to the part a new
    /// sequence reuses: that prefix, less what it takes to run the last `run` prompt tokens
    /// anyway (the prefill's logits and features come from them). Returns the cache and how many
    /// of the prompt's tokens it holds, or `None` when no entry shares any.
    pub(crate) fn take(&mut self, prompt: &[u32], run: usize) -> Option<(KvCache<B>, usize)> {
        let most = prompt.len().saturating_sub(run.max(1));
        let (at, shared) = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| (i, shared_prefix(&e.ids, prompt).min(most)))
            .max_by_key(|&(i, n)| (n, i))?;
        if shared == 0 {
            return None;
        }
        let mut cache = self.entries.remove(at).cache;
        cache.truncate(shared);
        Some((cache, shared))
    }

    /// Keeps `cache`, which holds the keys and values of the first `cache.len()` of `ids`;
    /// the least recently used entry goes beyond `slots`.
    pub(crate) fn put(&mut self, mut ids: Vec<u32>, cache: KvCache<B>) {
        if self.slots == 0 || cache.len() > ids.len() || cache.is_empty() {
            return;
        }
        ids.truncate(cache.len());
        self.entries.push(Entry { ids, cache });
        if self.entries.len() > self.slots {
            self.entries.remove(0);
        }
    }
}

/// How many leading tokens `a` and `b` share.
fn shared_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use s4c_models::testing::tiny_model;
    use s4c_models::{CausalLm, Input, Logits};

    /// A cache holding the keys and values of `ids` on a tiny model.
    fn filled(ids: &[u32]) -> KvCache<Flex> {
        let m = tiny_model::<Flex>(50, 1, &Default::default());
        let mut c = m.new_cache(64);
        m.forward(&Input::causal(ids, 0, Logits::Last), &mut c)
            .unwrap();
        c
    }

    #[test]
    fn the_longest_shared_prefix_is_taken_and_cut_to_leave_tokens_to_run() {
        let mut pc = PromptCache::<Flex>::new(4);
        pc.put(vec![1, 2, 3, 4, 5, 6], filled(&[1, 2, 3, 4, 5]));
        pc.put(vec![1, 2, 9, 9], filled(&[1, 2, 9, 9]));
        pc.put(vec![7, 7, 7], filled(&[7, 7, 7]));
        // Shares 5 tokens with the first entry (its cache holds 5 of its 6 ids), 2 with the
        // second, none with the third.
        let (c, n) = pc.take(&[1, 2, 3, 4, 5, 6, 8, 8], 1).unwrap();
        assert_eq!((n, c.len()), (5, 5));
        // Taken out: the next best is the second entry.
        let (c, n) = pc.take(&[1, 2, 3, 4, 5, 6, 8, 8], 1).unwrap();
        assert_eq!((n, c.len()), (2, 2));
        // At least `run` prompt tokens are left to run, even when all are cached.
        let (c, n) = pc.take(&[7, 7, 7], 2).unwrap();
        assert_eq!((n, c.len()), (1, 1));
        assert!(pc.take(&[1, 2, 3], 1).is_none(), "the store is empty");
    }

    #[test]
    fn no_shared_token_takes_nothing_and_old_entries_go_first() {
        let mut pc = PromptCache::<Flex>::new(2);
        assert!(pc.take(&[1, 2, 3], 1).is_none());
        pc.put(vec![1, 2, 3], filled(&[1, 2, 3]));
        assert!(pc.take(&[4, 1, 2, 3], 1).is_none(), "no shared first token");
        assert!(pc.take(&[1], 1).is_none(), "a one-token prompt runs whole");
        pc.put(vec![4, 4], filled(&[4, 4]));
        pc.put(vec![5, 5], filled(&[5, 5]));
        assert!(pc.take(&[1, 2, 3, 4], 1).is_none(), "the oldest entry went");
        assert_eq!(pc.take(&[4, 4, 4], 1).map(|(_, n)| n), Some(2));
        // A cache that holds more tokens than the ids it is said to hold is not kept.
        pc.put(vec![6], filled(&[6, 6]));
        assert!(pc.take(&[6, 6, 6], 1).is_none());
        let off = &mut PromptCache::<Flex>::new(0);
        off.put(vec![1, 2], filled(&[1, 2]));
        assert!(off.take(&[1, 2, 3], 1).is_none(), "no slots, nothing kept");
    }
}
