//! Context copy: a drafting component that reads the text, not the features.
//!
//! The target's answers repeat what came before them — its own sentences, names from the prompt —
//! so the token that followed an earlier occurrence of a branch's last few tokens is often the
//! next one again (on the held-out answers, the latest match of up to 8 tokens is the target's
//! next token at 62% of positions: `scripts/copy-oracle.py`). With [`DrafterConfig::copy`] > 0
//! each head reads, from its state, one bonus per matched suffix length and adds it to that
//! token's logit, so its own guess and the copy compete in one distribution.
//!
//! [`DrafterConfig::copy`]: crate::DrafterConfig::copy
//!
//! ```
//! use s4c_draft::{copy_candidate, CopyCandidate};
//!
//! // "a b c d a b": the suffix "a b" occurred before, followed by "c".
//! let text = [1, 2, 3, 4, 1, 2];
//! assert_eq!(copy_candidate(&text, 3), Some(CopyCandidate { matched: 2, token: 3 }));
//! assert_eq!(copy_candidate(&text, 0), None);
//! ```

use s4c_tree::ContextLookup;

/// What a node's text proposes to copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyCandidate {
    /// Length of the matched suffix (1 ..= the drafter's `copy`).
    pub matched: usize,
    /// The token that followed the match.
    pub token: u32,
}

/// The candidate of `text` (the committed context then a branch, the node's own token last):
/// the token after the most recent earlier occurrence of its longest suffix of up to
/// `max_match` tokens; `None` when there is none or `max_match` is 0.
pub fn copy_candidate(text: &[u32], max_match: usize) -> Option<CopyCandidate> {
    if max_match == 0 {
        return None;
    }
    let draft = ContextLookup::new(1, max_match, 1).propose(text)?;
    Some(CopyCandidate {
        matched: draft.matched,
        token: *draft.tokens.first()?,
    })
}

/// The host inputs of [`crate::heads::add_copy_bonus`] for a row with candidate `cand`: the
/// logit column of its candidate — its draft-vocabulary index, or `draft_vocab` (the column
/// after the draft vocabulary) for a token outside it (`draft_index` −1) — or 0 without one,
/// and a one-hot `[copy]` of its matched length (zeros without one), appended to `column` and
/// `matched`. Returns the candidate's token when it is outside the draft vocabulary.
pub fn push_copy_inputs(
    cand: Option<CopyCandidate>,
    draft_index: &[i32],
    draft_vocab: usize,
    copy: usize,
    column: &mut Vec<i64>,
    matched: &mut Vec<f32>,
) -> Option<u32> {
    let start = matched.len();
    matched.extend(std::iter::repeat_n(0.0, copy));
    let Some(c) = cand.filter(|c| (1..=copy).contains(&c.matched)) else {
        column.push(0);
        return None;
    };
    matched[start + c.matched - 1] = 1.0;
    match draft_index
        .get(c.token as usize)
        .copied()
        .filter(|&i| i >= 0)
    {
        Some(di) => {
            column.push(di as i64);
            None
        }
        None => {
            column.push(draft_vocab as i64);
            Some(c.token)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_recent_match_wins() {
        // "x a b y . a b z . a b": "a b" last occurred followed by z.
        let t = [9, 1, 2, 5, 0, 1, 2, 6, 0, 1, 2];
        assert_eq!(
            copy_candidate(&t, 3),
            Some(CopyCandidate {
                matched: 3,
                token: 6
            })
        );
        assert_eq!(
            copy_candidate(&t, 2),
            Some(CopyCandidate {
                matched: 2,
                token: 6
            })
        );
        assert_eq!(copy_candidate(&[1, 2, 3], 3), None);
    }

    #[test]
    fn inputs_mark_length_and_column() {
        // Tokens 1..=3 are draft indices 0..=2; token 0 is outside (its column is 3).
        let index = vec![-1, 0, 1, 2];
        let (mut col, mut m) = (Vec::new(), Vec::new());
        let c = |matched, token| Some(CopyCandidate { matched, token });
        assert_eq!(
            push_copy_inputs(c(2, 3), &index, 3, 3, &mut col, &mut m),
            None
        );
        assert_eq!(
            push_copy_inputs(c(1, 0), &index, 3, 3, &mut col, &mut m),
            Some(0)
        );
        assert_eq!(push_copy_inputs(None, &index, 3, 3, &mut col, &mut m), None);
        assert_eq!(col, vec![2, 3, 0]);
        assert_eq!(m, vec![0., 1., 0., 1., 0., 0., 0., 0., 0.]);
    }
}
