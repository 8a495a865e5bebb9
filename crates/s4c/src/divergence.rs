//! Where two greedy outputs of the same prompt part ways, and how close the target's choice was
//! there: the diagnosis of a greedy mismatch between S4C and plain decoding.
//!
//! A verification pass computes the target's logits for many rows in one forward; plain decoding
//! computes one row a forward. In exact arithmetic both give the same argmax; in floating point
//! the two paths round differently (other matmul kernels, other reduction orders — on GPUs
//! possibly reduced-precision tensor-core math), so where the target's top two logits are nearly
//! tied the two paths may pick different tokens. [`first_divergence`] tells that case from a
//! defect: it replays plain decoding up to the first differing token and reads the target's
//! logits there, both as plain decoding computed them (one token a forward) and as one forward
//! over the prompt and the shared prefix computes them (a many-row block, as verification runs).
//! A near tie shows as a top-2 margin of the order of the two paths' difference; a defect as a
//! clear margin for the token the other output did not take.

use burn::tensor::backend::Backend;
use s4c_models::{CausalLm, Input, Logits};
use s4c_verify::read_row;
use serde::Serialize;

use crate::error::{EngineError, Result};
#[cfg(doc)]
use crate::plain::GenerateOptions;

/// The target's logits at one position, read from one forward path.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PositionLogits {
    /// The target's best token.
    pub argmax: u32,
    /// Its logit minus the second best logit (≥ 0).
    pub top2_margin: f32,
    /// The logit of the reference output's token there (`None` when the reference had ended).
    pub reference_logit: Option<f32>,
    /// The logit of the other output's token there (`None` when the other output had ended).
    pub other_logit: Option<f32>,
}

/// The first position where two outputs of the same prompt differ, with the target's logits
/// there.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Divergence {
    /// Index of the first differing new token (the outputs share every token before it).
    pub position: usize,
    /// The reference output's token there (`None`: it ended there, the other went on).
    pub reference_token: Option<u32>,
    /// The other output's token there (`None`: it ended there, the reference went on).
    pub other_token: Option<u32>,
    /// As plain decoding computed them: a prefill of the prompt, then one token a forward.
    pub step: PositionLogits,
    /// As one forward over the prompt and the shared prefix computes them (a many-row block).
    pub block: PositionLogits,
}

/// Compares `other` with `reference` (two outputs generated after `prompt`) and, where they first
/// differ, reads the target's logits along both forward paths (see the module docs). `capacity`
/// is the KV-cache capacity plain decoding used ([`GenerateOptions::cache_capacity`]), so the
/// replay runs exactly its computation. `None` when the outputs are equal.
pub fn first_divergence<B: Backend, M: CausalLm<B>>(
    model: &M,
    prompt: &[u32],
    reference: &[u32],
    other: &[u32],
    capacity: usize,
) -> Result<Option<Divergence>> {
    let Some(position) =
        (0..reference.len().max(other.len())).find(|&i| reference.get(i) != other.get(i))
    else {
        return Ok(None);
    };
    let shared = &reference[..position];
    if prompt.is_empty() || prompt.len() + shared.len() > capacity.min(model.max_positions()) {
        return Err(EngineError::InvalidOption(format!(
            "cannot replay {} prompt and {} shared tokens in a cache of {capacity}: pass the \
             capacity plain decoding used",
            prompt.len(),
            shared.len()
        )));
    }
    let (reference_token, other_token) = (reference.get(position), other.get(position));
    let read = |row: Vec<f32>| position_logits(&row, reference_token, other_token);

    // Plain decoding's path: prefill, then one token a forward.
    let mut cache = model.new_cache(capacity);
    let mut out = model.forward(&Input::causal(prompt, 0, Logits::Last), &mut cache)?;
    for (i, t) in shared.iter().enumerate() {
        let input = Input::causal(std::slice::from_ref(t), prompt.len() + i, Logits::Last);
        out = model.forward(&input, &mut cache)?;
    }
    let step = read(read_row(&out.logits, 0)?)?;

    // One many-row forward over the prompt and the shared prefix.
    let tokens: Vec<u32> = prompt.iter().chain(shared).copied().collect();
    let mut cache = model.new_cache(capacity);
    let out = model.forward(&Input::causal(&tokens, 0, Logits::Last), &mut cache)?;
    let block = read(read_row(&out.logits, 0)?)?;

    Ok(Some(Divergence {
        position,
        reference_token: reference_token.copied(),
        other_token: other_token.copied(),
        step,
        block,
    }))
}

fn position_logits(
    row: &[f32],
    reference: Option<&u32>,
    other: Option<&u32>,
) -> Result<PositionLogits> {
    let logit = |t: Option<&u32>| -> Result<Option<f32>> {
        t.map(|&t| {
            row.get(t as usize).copied().ok_or_else(|| {
                EngineError::InvalidOption(format!(
                    "token {t} is outside the model's vocabulary of {}",
                    row.len()
                ))
            })
        })
        .transpose()
    };
    let (mut best, mut second) = ((0usize, f32::NEG_INFINITY), f32::NEG_INFINITY);
    for (i, &x) in row.iter().enumerate() {
        if x > best.1 {
            second = best.1;
            best = (i, x);
        } else if x > second {
            second = x;
        }
    }
    Ok(PositionLogits {
        argmax: best.0 as u32,
        top2_margin: best.1 - second,
        reference_logit: logit(reference)?,
        other_logit: logit(other)?,
    })
}

impl std::fmt::Display for Divergence {
    /// One line: where, which tokens, and the target's logits along both paths.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tok = |t: Option<u32>| t.map_or("(end)".to_string(), |t| t.to_string());
        let logit = |x: Option<f32>| x.map_or("-".to_string(), |x| format!("{x:.4}"));
        write!(
            f,
            "new token {}: reference {}, other {}; target logits (reference / other / top-2 \
             margin) one token a forward {} / {} / {:.4}, in one block {} / {} / {:.4}",
            self.position,
            tok(self.reference_token),
            tok(self.other_token),
            logit(self.step.reference_logit),
            logit(self.step.other_logit),
            self.step.top2_margin,
            logit(self.block.reference_logit),
            logit(self.block.other_logit),
            self.block.top2_margin,
        )
    }
}
