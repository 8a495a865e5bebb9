//! The host key/value cache and attention over it with an arbitrary mask.

use half::f16;
use rayon::prelude::*;

use super::ops;
use crate::error::{ModelError, Result};
use crate::mask::AttentionMask;

/// How the host cache stores keys and values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KvType {
    /// 32-bit floats.
    F32,
    /// IEEE half floats (llama.cpp's default cache type): half the memory and memory traffic.
    F16,
}

/// Keys and values of every layer in host memory, `[layer][kv_head][slot][head_dim]` each.
#[derive(Debug, Clone)]
pub(crate) struct HostKv {
    layout: Layout,
    store: Store,
}

/// Where a head's slot lies in a layer's plane.
#[derive(Debug, Clone, Copy)]
struct Layout {
    kv_heads: usize,
    head_dim: usize,
    capacity: usize,
}

impl Layout {
    fn slot(&self, head: usize, slot: usize) -> std::ops::Range<usize> {
        let at = (head * self.capacity + slot) * self.head_dim;
        at..at + self.head_dim
    }
}

/// The keys and values in their storage type.
#[derive(Debug, Clone)]
enum Store {
    F32(Planes<f32>),
    F16(Planes<f16>),
}

/// Keys and values of every layer, `[layer][kv_head · capacity · head_dim]`.
#[derive(Debug, Clone)]
struct Planes<T> {
    keys: Vec<Vec<T>>,
    values: Vec<Vec<T>>,
}

impl<T: KvElem> Planes<T> {
    fn new(layers: usize, len: usize) -> Self {
        // Each plane is a fresh zeroed allocation, whose pages the OS maps lazily: memory grows
        // with the tokens written, not with the capacity (`vec![plane; layers]` would copy the
        // first plane into every other one, touching all their pages).
        let mk = || (0..layers).map(|_| T::zeroed(len)).collect();
        Planes {
            keys: mk(),
            values: mk(),
        }
    }

    /// [`HostKv::write`] in this storage type.
    fn write(&mut self, at: Layout, layer: usize, start: usize, k: &[f32], v: &[f32]) {
        let width = at.kv_heads * at.head_dim;
        let put = |dst: &mut [T], src: &[f32]| {
            dst.iter_mut()
                .zip(src)
                .for_each(|(d, &s)| *d = T::from_f32(s))
        };
        for (i, (kr, vr)) in k.chunks_exact(width).zip(v.chunks_exact(width)).enumerate() {
            for h in 0..at.kv_heads {
                let dst = at.slot(h, start + i);
                let src = h * at.head_dim..(h + 1) * at.head_dim;
                put(&mut self.keys[layer][dst.clone()], &kr[src.clone()]);
                put(&mut self.values[layer][dst], &vr[src]);
            }
        }
    }

    /// [`HostKv::compact`] in this storage type.
    fn compact(&mut self, at: Layout, start: usize, keep: &[usize]) {
        let hd = at.head_dim;
        for plane in self.keys.iter_mut().chain(self.values.iter_mut()) {
            for h in 0..at.kv_heads {
                let base = (h * at.capacity + start) * hd;
                let mut kept = Vec::with_capacity(keep.len() * hd);
                for &k in keep {
                    kept.extend_from_slice(&plane[base + k * hd..base + (k + 1) * hd]);
                }
                plane[base..base + kept.len()].copy_from_slice(&kept);
            }
        }
    }
}

impl HostKv {
    pub(crate) fn new(
        layers: usize,
        kv_heads: usize,
        head_dim: usize,
        capacity: usize,
        ty: KvType,
    ) -> Self {
        let len = kv_heads * capacity * head_dim;
        let store = match ty {
            KvType::F32 => Store::F32(Planes::new(layers, len)),
            KvType::F16 => Store::F16(Planes::new(layers, len)),
        };
        HostKv {
            layout: Layout {
                kv_heads,
                head_dim,
                capacity,
            },
            store,
        }
    }

    pub(crate) fn capacity(&self) -> usize {
        self.layout.capacity
    }

    /// Writes the keys and values `[n][kv_heads · head_dim]` of `n` tokens of `layer` at slots
    /// `start..start + n` (rounded to the storage type).
    pub(crate) fn write(&mut self, layer: usize, start: usize, k: &[f32], v: &[f32]) {
        let at = self.layout;
        match &mut self.store {
            Store::F32(p) => p.write(at, layer, start, k, v),
            Store::F16(p) => p.write(at, layer, start, k, v),
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
        let at = self.layout;
        match &mut self.store {
            Store::F32(p) => p.compact(at, start, keep),
            Store::F16(p) => p.compact(at, start, keep),
        }
        Ok(())
    }
}

/// A storage type of cached keys and values; attention reads it through [`ops::Widen`], so every
/// product gives the same bits on every path (f16 values widen exactly to f32).
trait KvElem: ops::Widen + Send + Sync + std::fmt::Debug {
    /// `len` zeros from a zeroed allocation (not written element by element).
    fn zeroed(len: usize) -> Vec<Self>;
    /// `x` rounded to this type.
    fn from_f32(x: f32) -> Self;
}

impl KvElem for f32 {
    fn zeroed(len: usize) -> Vec<f32> {
        vec![0.0; len]
    }
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        x
    }
}

impl KvElem for f16 {
    fn zeroed(len: usize) -> Vec<f16> {
        // `vec![f16::ZERO; len]` would write every element: the standard library allocates
        // zeroed memory only for its own types, so zero bits are allocated and reinterpreted.
        use half::vec::HalfBitsVecExt;
        vec![0u16; len].reinterpret_into()
    }
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        f16::from_f32(x)
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
struct Head<'a, T> {
    layout: Layout,
    planes: &'a Planes<T>,
    layer: usize,
    kv_head: usize,
    keys: &'a [usize],
    scale: f32,
}

impl<T: KvElem> Head<'_, T> {
    /// `out = softmax(q·Kᵀ · scale) · V` over the visible keys, in slot order.
    #[inline(always)]
    fn attend(&self, q: &[f32], out: &mut [f32]) {
        self.attend_with(q, out, ops::dot, ops::axpy)
    }

    /// [`Head::attend`] with the products `dot` and `axpy`.
    #[inline(always)]
    fn attend_with(
        &self,
        q: &[f32],
        out: &mut [f32],
        dot: impl Fn(&[f32], &[T]) -> f32,
        axpy: impl Fn(f32, &[T], &mut [f32]),
    ) {
        let (keys, values) = (
            &self.planes.keys[self.layer],
            &self.planes.values[self.layer],
        );
        // A plain loop, not an iterator adapter: adapters are functions of their own that would
        // not be compiled for the caller's instruction set.
        let mut scores = Vec::with_capacity(self.keys.len());
        for &j in self.keys {
            scores.push(dot(q, &keys[self.layout.slot(self.kv_head, j)]) * self.scale);
        }
        ops::softmax(&mut scores);
        out.fill(0.0);
        for (&j, &p) in self.keys.iter().zip(&scores) {
            axpy(p, &values[self.layout.slot(self.kv_head, j)], out);
        }
    }

    /// [`Head::attend`] compiled for AVX2 and F16C: the same operations, eight lanes at a time.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn attend_avx2(&self, q: &[f32], out: &mut [f32]) {
        // SAFETY: this function is compiled with AVX2 and F16C.
        self.attend_with(
            q,
            out,
            |a, b| unsafe { ops::dot_avx(a, b) },
            |a, x, y| unsafe { ops::axpy_avx(a, x, y) },
        )
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
    match &kv.store {
        Store::F32(p) => attend_planes(kv, p, layer, q, n, h, visible, avx2),
        Store::F16(p) => attend_planes(kv, p, layer, q, n, h, visible, avx2),
    }
}

/// [`attend`] over the planes of one storage type.
#[allow(clippy::too_many_arguments)]
fn attend_planes<T: KvElem>(
    kv: &HostKv,
    planes: &Planes<T>,
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
        let one = Head {
            layout: kv.layout,
            planes,
            layer,
            kv_head: head / group,
            keys: &rows[i],
            scale,
        };
        let qv = &q[i * width + head * d..i * width + (head + 1) * d];
        #[cfg(target_arch = "x86_64")]
        if avx2 {
            // SAFETY: the caller saw AVX2 and F16C on this CPU (`Isa::has_avx2`).
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
