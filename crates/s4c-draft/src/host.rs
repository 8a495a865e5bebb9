//! The heads' blocks on the host, for a target on the CPU engine: Q8_0 copies of their
//! matrices, multiplied by s4c's CPU kernels on the target's threads.
//!
//! On the backend a drafting level's block runs as `f32` products on one thread and reads 6.6 MB
//! of weights for the shipped heads; here it reads a quarter of the bytes on every core. The
//! arithmetic is [`crate::heads::Block`]'s, with the weights rounded to Q8_0 and the
//! activations to 8-bit blocks, as the target's own quantized layers are: drafts change only
//! where two candidates were nearly tied, and verification keeps the output exact either way.

use burn::nn::Linear as BurnLinear;
use burn::tensor::backend::Backend;
use s4c_models::gguf::GgmlType;
use s4c_models::quant::{Linear, QMatrix, Threads};

use crate::data::to_host;
use crate::error::{DraftError, Result};
use crate::heads::{Block, Heads};

/// `x · Wᵀ + b` on the host.
struct Affine {
    w: Linear,
    b: Vec<f32>,
}

impl Affine {
    /// A host copy of `l` (`[in, out]` on the backend) with its weights stored as `ty` — as
    /// `f32` where `ty` is Q8_0 and an input row is not whole blocks of 32.
    fn new<B: Backend>(l: &BurnLinear<B>, ty: GgmlType) -> Result<Self> {
        let [d_in, d_out] = l.weight.dims();
        let ty = match ty {
            GgmlType::Q8_0 if !d_in.is_multiple_of(32) => GgmlType::F32,
            ty => ty,
        };
        // Kernels take `[out, in]`.
        let w = to_host(l.weight.val().transpose())?;
        let invalid = |e: s4c_models::ModelError| DraftError::InvalidOption(e.to_string());
        let w = Linear::new(vec![
            QMatrix::from_f32(d_out, d_in, &w, ty).map_err(invalid)?
        ])
        .map_err(invalid)?;
        let b = match &l.bias {
            Some(b) => to_host(b.val().reshape([1, d_out]))?,
            None => vec![0.0; d_out],
        };
        Ok(Affine { w, b })
    }

    /// The layer on `m` rows of `x`.
    fn forward(&self, x: &[f32], m: usize, threads: &Threads) -> Vec<f32> {
        let mut y = self.w.forward(x, m, threads);
        for row in y.chunks_exact_mut(self.b.len()) {
            row.iter_mut().zip(&self.b).for_each(|(y, b)| *y += b);
        }
        y
    }
}

/// `out(silu(inp(x)))`.
struct Mlp {
    inp: Affine,
    out: Affine,
}

impl Mlp {
    fn forward(&self, x: &[f32], m: usize, threads: &Threads) -> Vec<f32> {
        let mut h = self.inp.forward(x, m, threads);
        h.iter_mut().for_each(|v| *v /= 1.0 + (-*v).exp());
        self.out.forward(&h, m, threads)
    }
}

/// One head's block: the first MLP reads `[state ; embedding]`, each further one the state; every
/// MLP adds to the state. The copy layer stays `f32` (it has a handful of outputs).
struct HostBlock {
    first: Mlp,
    more: Vec<Mlp>,
    copy: Option<Affine>,
}

/// Every head's block on the host, and the threads that multiply them.
pub(crate) struct HostBlocks {
    blocks: Vec<HostBlock>,
    threads: Threads,
}

impl HostBlocks {
    /// Host copies of `heads`' blocks, multiplied on `threads`.
    pub(crate) fn new<B: Backend>(heads: &Heads<B>, threads: Threads) -> Result<Self> {
        let q8 = GgmlType::Q8_0;
        let mlp = |inp: &BurnLinear<B>, out: &BurnLinear<B>| -> Result<Mlp> {
            Ok(Mlp {
                inp: Affine::new(inp, q8)?,
                out: Affine::new(out, q8)?,
            })
        };
        let block = |b: &Block<B>| -> Result<HostBlock> {
            Ok(HostBlock {
                first: mlp(&b.inp, &b.out)?,
                more: b
                    .more
                    .iter()
                    .map(|r| mlp(&r.inp, &r.out))
                    .collect::<Result<_>>()?,
                copy: b
                    .copy
                    .as_ref()
                    .map(|c| Affine::new(c, GgmlType::F32))
                    .transpose()?,
            })
        };
        Ok(HostBlocks {
            blocks: heads.blocks.iter().map(block).collect::<Result<_>>()?,
            threads,
        })
    }

    /// Head `k`'s states `[m, hidden]` from its parents' states and their tokens' embeddings
    /// (both `[m, hidden]`), as [`Heads::step`] computes them.
    pub(crate) fn step(&self, k: usize, parents: &[f32], emb: &[f32], m: usize) -> Vec<f32> {
        let b = &self.blocks[k];
        let h = parents.len() / m.max(1);
        let x: Vec<f32> = parents
            .chunks_exact(h)
            .zip(emb.chunks_exact(h))
            .flat_map(|(s, e)| s.iter().chain(e).copied())
            .collect();
        let mut s = parents.to_vec();
        let add = |s: &mut Vec<f32>, d: Vec<f32>| s.iter_mut().zip(d).for_each(|(s, d)| *s += d);
        add(&mut s, b.first.forward(&x, m, &self.threads));
        for l in &b.more {
            let d = l.forward(&s, m, &self.threads);
            add(&mut s, d);
        }
        s
    }

    /// Head `k`'s copy bonuses `[m, copy]` of its `states`, if it copies.
    pub(crate) fn copy_bonus(&self, k: usize, states: &[f32], m: usize) -> Option<Vec<f32>> {
        let c = self.blocks[k].copy.as_ref()?;
        Some(c.forward(states, m, &self.threads))
    }

    /// The threads the blocks run on.
    pub(crate) fn threads(&self) -> &Threads {
        &self.threads
    }
}
