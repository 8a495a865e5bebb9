//! The host key/value cache and attention over it with an arbitrary mask.

use rayon::prelude::*;

use super::ops;
use crate::error::{ModelError, Result};
use crate::mask::AttentionMask;

/// Keys and values of every layer in host memory, `[layer][kv_head][slot][head_dim]` each.
#[derive(Debug, Clone)]
pub(crate) struct HostKv {
    kv_heads: usize,
    head_dim: usize,
    capacity: usize,
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
}

impl HostKv {
    pub(crate) fn new(layers: usize, kv_heads: usize, head_dim: usize, capacity: usize) -> Self {
        // Zeroed pages are mapped lazily by the OS: memory grows with the tokens written.
        let mk = || vec![vec![0f32; kv_heads * capacity * head_dim]; layers];
        HostKv {
            kv_heads,
            head_dim,
            capacity,
            keys: mk(),
            values: mk(),
        }
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    fn slot(&self, head: usize, slot: usize) -> std::ops::Range<usize> {
        let at = (head * self.capacity + slot) * self.head_dim;
        at..at + self.head_dim
    }

    /// Writes the keys and values `[n][kv_heads · head_dim]` of `n` tokens of `layer` at slots
    /// `start..start + n`.
    pub(crate) fn write(&mut self, layer: usize, start: usize, k: &[f32], v: &[f32]) {
        let width = self.kv_heads * self.head_dim;
        for (i, (kr, vr)) in k.chunks_exact(width).zip(v.chunks_exact(width)).enumerate() {
            for h in 0..self.kv_heads {
                let dst = self.slot(h, start + i);
                let src = h * self.head_dim..(h + 1) * self.head_dim;
                self.keys[layer][dst.clone()].copy_from_slice(&kr[src.clone()]);
                self.values[layer][dst].copy_from_slice(&vr[src]);
            }
        }
    }

    /// Keeps, of the `block` entries from slot `start`, those at offsets `keep` (in that order),
    /// moved to the slots right after `start`.
    pub(crate) fn compact(&mut self, start: usize, block: usize, keep: &[usize]) -> Result<()> {
        if let Some(&bad) = keep.iter().find(|&&i| i >= block) {
            return Err(ModelError::InvalidInput(format!(
                "commit: offset {bad} is outside the last block of {block} entries"
            )));
        }
        let hd = self.head_dim;
        for store in self.keys.iter_mut().chain(self.values.iter_mut()) {
            for h in 0..self.kv_heads {
                let base = (h * self.capacity + start) * hd;
                let mut kept = Vec::with_capacity(keep.len() * hd);
                for &k in keep {
                    kept.extend_from_slice(&store[base + k * hd..base + (k + 1) * hd]);
                }
                store[base..base + kept.len()].copy_from_slice(&kept);
            }
        }
        Ok(())
    }
}

/// Which keys each new row sees: a mask over `[cached ‖ new]`, or causal.
#[derive(Clone, Copy)]
pub(crate) enum Visibility<'a> {
    /// Row `i` sees keys `0..=cached + i`.
    Causal { cached: usize },
    /// Row `i` (of a block starting at mask row `offset`) sees the keys its mask row allows.
    Mask {
        mask: &'a AttentionMask,
        offset: usize,
    },
}

impl Visibility<'_> {
    /// The keys row `i` sees, in slot order.
    fn keys(&self, i: usize, out: &mut Vec<usize>) {
        out.clear();
        match *self {
            Visibility::Causal { cached } => out.extend(0..=cached + i),
            Visibility::Mask { mask, offset } => {
                out.extend((0..mask.cols()).filter(|&j| mask.is_visible(offset + i, j)))
            }
        }
    }
}

/// Shapes of one layer's attention.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Heads {
    pub q: usize,
    pub kv: usize,
    pub dim: usize,
}

/// One query head of one row against the keys it sees.
struct Head<'a> {
    kv: &'a HostKv,
    layer: usize,
    kv_head: usize,
    keys: &'a [usize],
    scale: f32,
}

impl Head<'_> {
    /// `out = softmax(q·Kᵀ · scale) · V` over the visible keys, in slot order.
    #[inline(always)]
    fn attend(&self, q: &[f32], out: &mut [f32]) {
        self.attend_with(q, out, ops::dot)
    }

    /// [`Head::attend`] with the dot product `dot`.
    #[inline(always)]
    fn attend_with(&self, q: &[f32], out: &mut [f32], dot: impl Fn(&[f32], &[f32]) -> f32) {
        let (keys, values) = (&self.kv.keys[self.layer], &self.kv.values[self.layer]);
        // A plain loop, not an iterator adapter: adapters are functions of their own that would
        // not be compiled for the caller's instruction set.
        let mut scores = Vec::with_capacity(self.keys.len());
        for &j in self.keys {
            scores.push(dot(q, &keys[self.kv.slot(self.kv_head, j)]) * self.scale);
        }
        ops::softmax(&mut scores);
        out.fill(0.0);
        for (&j, &p) in self.keys.iter().zip(&scores) {
            ops::axpy(p, &values[self.kv.slot(self.kv_head, j)], out);
        }
    }

    /// [`Head::attend`] compiled for AVX2: the same operations, eight lanes at a time.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn attend_avx2(&self, q: &[f32], out: &mut [f32]) {
        // SAFETY: this function is compiled with AVX2.
        self.attend_with(q, out, |a, b| unsafe { ops::dot_avx(a, b) })
    }
}

/// Query rows × keys above which attention runs on all threads.
const PARALLEL_WORK: usize = 4096;

/// Attention of `n` query rows `[n][heads · dim]` (rotated) over the keys and values of
/// `layer` that each row sees; returns `[n][heads · dim]`.
///
/// A row's keys are visited in slot order and each output depends on its row alone.
pub(crate) fn attend(
    kv: &HostKv,
    layer: usize,
    q: &[f32],
    n: usize,
    h: Heads,
    visible: Visibility<'_>,
    avx2: bool,
) -> Vec<f32> {
    #[cfg(not(target_arch = "x86_64"))]
    let _ = avx2;
    let d = h.dim;
    let width = h.q * d;
    let group = h.q / h.kv;
    let scale = 1.0 / (d as f32).sqrt();
    let mut out = vec![0f32; n * width];
    let rows: Vec<Vec<usize>> = (0..n)
        .map(|i| {
            let mut v = Vec::new();
            visible.keys(i, &mut v);
            v
        })
        .collect();
    let work: usize = rows.iter().map(Vec::len).sum::<usize>() * h.q;
    // One task per (row, head): its output is one head-wide slice of `out`.
    let task = |(t, o): (usize, &mut [f32])| {
        let (i, head) = (t / h.q, t % h.q);
        let g = head / group;
        let one = Head {
            kv,
            layer,
            kv_head: g,
            keys: &rows[i],
            scale,
        };
        let qv = &q[i * width + head * d..i * width + (head + 1) * d];
        #[cfg(target_arch = "x86_64")]
        if avx2 {
            // SAFETY: the caller saw AVX2 on this CPU (`Isa::has_avx2`).
            return unsafe { one.attend_avx2(qv, o) };
        }
        one.attend(qv, o)
    };
    if work >= PARALLEL_WORK {
        out.par_chunks_mut(d).enumerate().for_each(task);
    } else {
        out.chunks_mut(d).enumerate().for_each(task);
    }
    out
}
