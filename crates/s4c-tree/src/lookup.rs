//! Context lookup: draft tokens copied from earlier in the context (prompt lookup decoding).
//!
//! Text often repeats what came before it: a summary quotes its document, code reuses its names,
//! and a small model's answer repeats its own sentences. When the last few tokens of the context
//! occurred before, the tokens that followed them then are a free guess at what follows now.
//! [`ContextLookup`] finds the most recent earlier occurrence of the longest such suffix and
//! proposes its continuation as one chain, which [`crate::TokenTree::graft`] adds to the draft
//! tree. [`LookupStats`] counts how often the target accepted those guesses, per position in the
//! chain and per length of the matched suffix, so the cost-aware sizer can price them.
//!
//! ```
//! use s4c_tree::ContextLookup;
//!
//! // "the cat sat . the cat" → the context ends with "the cat", seen before: propose "sat .".
//! let context = [1, 2, 3, 4, 1, 2];
//! let draft = ContextLookup::new(1, 3, 2).propose(&context).unwrap();
//! assert_eq!(draft.matched, 2);
//! assert_eq!(draft.tokens, vec![3, 4]);
//! ```

use serde::{Deserialize, Serialize};

/// Finds continuations of the context's last tokens earlier in the context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContextLookup {
    /// Shortest suffix worth matching.
    pub min_match: usize,
    /// Longest suffix compared (longer matches count as this long).
    pub max_match: usize,
    /// Tokens proposed at most.
    pub max_tokens: usize,
}

/// A chain of tokens proposed by [`ContextLookup::propose`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LookupDraft {
    /// Length of the matched suffix (`min_match..=max_match`).
    pub matched: usize,
    /// The proposed continuation, first token first (at least one token).
    pub tokens: Vec<u32>,
}

impl ContextLookup {
    /// Matches suffixes of `min_match..=max_match` tokens (`min_match` at least 1) and proposes
    /// up to `max_tokens` tokens.
    pub fn new(min_match: usize, max_match: usize, max_tokens: usize) -> Self {
        let min_match = min_match.max(1);
        ContextLookup {
            min_match,
            max_match: max_match.max(min_match),
            max_tokens,
        }
    }

    /// The continuation of the longest suffix of `context` (of at least `min_match` tokens) that
    /// also ends earlier in `context`, at its most recent such place; `None` when there is none
    /// or `max_tokens` is 0.
    ///
    /// A continuation that runs into the suffix itself repeats with the period of the match (the
    /// context `a b a b` proposes `a b a b …`), as a repeating text would go on.
    pub fn propose(&self, context: &[u32]) -> Option<LookupDraft> {
        let n = context.len();
        if self.max_tokens == 0 || n < 2 {
            return None;
        }
        // The earlier end position with the longest common suffix; ties go to the latest.
        let mut best: Option<(usize, usize)> = None; // (matched, end)
        for end in (0..n - 1).rev() {
            let m = (0..self.max_match.min(end + 1))
                .take_while(|&k| context[end - k] == context[n - 1 - k])
                .count();
            if m >= self.min_match && best.is_none_or(|(b, _)| m > b) {
                best = Some((m, end));
                if m == self.max_match {
                    break;
                }
            }
        }
        let (matched, end) = best?;
        // Continue from end + 1; positions past the context repeat with period n - 1 - end.
        let period = n - 1 - end;
        let tokens = (0..self.max_tokens)
            .map(|i| context[end + 1 + i % period])
            .collect();
        Some(LookupDraft { matched, tokens })
    }
}

/// Acceptance counts of lookup chains: `tried[m][i]` chains whose suffix match was `m + 1`
/// tokens long and whose first `i` tokens were accepted, so that token `i + 1` was tried;
/// `accepted[m][i]` of those whose token `i + 1` was accepted too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LookupStats {
    /// Trials per (match length − 1, chain position − 1).
    pub tried: Vec<Vec<u64>>,
    /// Acceptances per (match length − 1, chain position − 1).
    pub accepted: Vec<Vec<u64>>,
}

impl LookupStats {
    /// Empty counts for matches of up to `max_match` tokens and chains of up to `max_tokens`.
    pub fn new(max_match: usize, max_tokens: usize) -> Self {
        LookupStats {
            tried: vec![vec![0; max_tokens]; max_match],
            accepted: vec![vec![0; max_tokens]; max_match],
        }
    }

    /// Records a chain of `proposed` tokens after a `matched`-token match, of which the first
    /// `accepted` were accepted. Matches longer than the table count as its longest; positions
    /// beyond it are not counted.
    pub fn record(&mut self, matched: usize, proposed: usize, accepted: usize) {
        let Some(m) = matched.min(self.tried.len()).checked_sub(1) else {
            return;
        };
        let row = self.tried[m].len();
        for i in 0..(accepted + 1).min(proposed).min(row) {
            self.tried[m][i] += 1;
            self.accepted[m][i] += u64::from(i < accepted);
        }
    }

    /// `(tried, accepted)` of chain position `position` (≥ 1) after a `matched`-token match
    /// (longer matches count as the table's longest); zeros outside the table.
    pub fn counts(&self, matched: usize, position: usize) -> (u64, u64) {
        let get = |v: &[Vec<u64>]| {
            v.get(matched.min(v.len()).wrapping_sub(1))
                .and_then(|row| row.get(position.wrapping_sub(1)))
                .copied()
                .unwrap_or(0)
        };
        (get(&self.tried), get(&self.accepted))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Brute force: for every earlier end, the common suffix length; the longest (latest on ties).
    fn brute(ctx: &[u32], min: usize, max: usize, len: usize) -> Option<LookupDraft> {
        let n = ctx.len();
        let mut best: Option<(usize, usize)> = None;
        for end in 0..n.saturating_sub(1) {
            let mut m = 0;
            while m < max && m <= end && ctx[end - m] == ctx[n - 1 - m] {
                m += 1;
            }
            if m >= min && best.is_none_or(|(b, _)| m >= b) {
                best = Some((m, end));
            }
        }
        let (matched, end) = best?;
        let mut ext = ctx.to_vec();
        let mut tokens = vec![];
        for i in 0..len {
            let t = ext[end + 1 + i];
            tokens.push(t);
            ext.push(t);
        }
        (len > 0).then_some(LookupDraft { matched, tokens })
    }

    #[test]
    fn proposals_equal_brute_force_on_random_contexts() {
        let mut seed = 7u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as u32
        };
        for case in 0..2000 {
            let n = 1 + (next() % 40) as usize;
            let alphabet = 2 + (next() % 5);
            let ctx: Vec<u32> = (0..n).map(|_| next() % alphabet).collect();
            let (min, max, len) = (1 + case % 3, 1 + case % 3 + case % 4, case % 7);
            let look = ContextLookup::new(min, max, len);
            assert_eq!(
                look.propose(&ctx),
                brute(&ctx, min, max, len),
                "{ctx:?} {look:?}"
            );
        }
    }

    #[test]
    fn repeats_periodically_and_needs_a_match() {
        let look = ContextLookup::new(2, 4, 5);
        let d = look.propose(&[5, 6, 5, 6]).unwrap();
        assert_eq!((d.matched, d.tokens), (2, vec![5, 6, 5, 6, 5]));
        assert_eq!(look.propose(&[1, 2, 3, 4]), None);
        assert_eq!(look.propose(&[1]), None);
        // A one-token match is enough at min_match 1, not at 2.
        assert_eq!(look.propose(&[9, 1, 2, 9]), None);
        let d = ContextLookup::new(1, 4, 2).propose(&[9, 1, 2, 9]).unwrap();
        assert_eq!((d.matched, d.tokens), (1, vec![1, 2]));
        assert_eq!(ContextLookup::new(1, 4, 0).propose(&[9, 9]), None);
    }

    #[test]
    fn stats_count_each_tried_position() {
        let mut s = LookupStats::new(3, 4);
        s.record(2, 4, 1); // positions 1 (accepted) and 2 (rejected) tried
        s.record(2, 4, 4); // all four tried and accepted
        s.record(2, 2, 0); // position 1 tried, rejected
        s.record(9, 4, 4); // longer than the table: counts as 3
        s.record(0, 4, 4); // no match: ignored
        assert_eq!(s.counts(3, 4), (1, 1));
        assert_eq!(s.counts(7, 4), (1, 1));
        assert_eq!(s.counts(2, 1), (3, 2));
        assert_eq!(s.counts(2, 2), (2, 1));
        assert_eq!(s.counts(2, 4), (1, 1));
        assert_eq!(s.counts(1, 1), (0, 0));
        assert_eq!(s.counts(0, 1), (0, 0));
        assert_eq!(s.counts(2, 5), (0, 0));
    }
}
