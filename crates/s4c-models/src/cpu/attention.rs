//! The host key/value cache and attention over it with an arbitrary mask.

use half::f16;
use rayon::prelude::*;
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

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

    /// [`HostKv::grow`] in this storage type: planes for `capacity` slots holding the first
    /// `used` slots of each head of `at`.
    fn grow(&mut self, at: Layout, capacity: usize, used: usize) {
        let hd = at.head_dim;
        let copy = |old: &Vec<T>| {
            let mut new = T::zeroed(at.kv_heads * capacity * hd);
            for h in 0..at.kv_heads {
                let src = &old[h * at.capacity * hd..][..used * hd];
                new[h * capacity * hd..][..used * hd].copy_from_slice(src);
            }
            new
        };
        for plane in self.keys.iter_mut().chain(self.values.iter_mut()) {
            *plane = copy(plane);
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

    /// Room for `capacity` slots (more than now), the first `used` slots of every head kept.
    pub(crate) fn grow(&mut self, capacity: usize, used: usize) {
        let at = self.layout;
        if capacity <= at.capacity {
            return;
        }
        let used = used.min(at.capacity);
        match &mut self.store {
            Store::F32(p) => p.grow(at, capacity, used),
            Store::F16(p) => p.grow(at, capacity, used),
        }
        self.layout.capacity = capacity;
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
    fn keys(&self, i: usize) -> Vec<usize> {
        match *self {
            Visibility::Causal { cached } => (0..=cached + i).collect(),
            Visibility::Mask { mask, offset } => (0..mask.cols())
                .filter(|&j| mask.is_visible(offset + i, j))
                .collect(),
        }
    }
}

/// The keys a block of rows sees, worked out once for all the layers of a forward: each row's,
/// in slot order, and on AVX2 the blocks of rows that attend together (made on first use).
pub(crate) struct SeenKeys {
    rows: Vec<Vec<usize>>,
    /// The rows in blocks of up to [`ATTEND_ROWS`].
    #[cfg(target_arch = "x86_64")]
    blocks: std::sync::OnceLock<Vec<RowBlock>>,
}

impl SeenKeys {
    /// The keys each of `n` rows sees under `visible`.
    pub(crate) fn new(visible: Visibility<'_>, n: usize) -> Self {
        SeenKeys {
            rows: (0..n).map(|i| visible.keys(i)).collect(),
            #[cfg(target_arch = "x86_64")]
            blocks: std::sync::OnceLock::new(),
        }
    }

    /// The blocks of rows that attend together, and the keys of each.
    #[cfg(target_arch = "x86_64")]
    fn blocks(&self) -> &[RowBlock] {
        self.blocks
            .get_or_init(|| self.rows.chunks(ATTEND_ROWS).map(union).collect())
    }
}

/// Shapes of one layer's attention.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Heads {
    pub q: usize,
    pub kv: usize,
    pub dim: usize,
}

/// One KV head's keys and values at the slots `keys`: those one row sees, through which the query
/// heads that share the KV head attend one at a time ([`KvHead::attend`]); or, on AVX2 with heads
/// of 64 or 128 values, those any of several rows of a block sees, through which all their query
/// heads attend together ([`KvHead::attend_rows_avx2`]: each chunk of keys and values is read from
/// the cache and widened to `f32` once for all the rows and heads, where one at a time reads and
/// widens the whole cache once per row and query head).
struct KvHead<'a, T> {
    layout: Layout,
    planes: &'a Planes<T>,
    layer: usize,
    kv_head: usize,
    keys: &'a [usize],
    scale: f32,
}

impl<T: KvElem> KvHead<'_, T> {
    /// `out = softmax(q·Kᵀ · scale) · V` over the visible keys, in slot order.
    #[inline(always)]
    fn attend(&self, q: &[f32], out: &mut [f32]) {
        self.attend_with(q, out, ops::dot, ops::axpy)
    }

    /// [`KvHead::attend`] with the products `dot` and `axpy`.
    #[inline(always)]
    fn attend_with(
        &self,
        q: &[f32],
        out: &mut [f32],
        dot: impl Fn(&[f32], &[T]) -> f32,
        axpy: impl Fn(f32, &[T], &mut [f32]),
    ) {
        let values = &self.planes.values[self.layer];
        let scores = self.probabilities(q, dot);
        out.fill(0.0);
        for (&j, &p) in self.keys.iter().zip(&scores) {
            axpy(p, &values[self.layout.slot(self.kv_head, j)], out);
        }
    }

    /// `softmax(q·Kᵀ · scale)` over the visible keys, with the product `dot`.
    #[inline(always)]
    fn probabilities(&self, q: &[f32], dot: impl Fn(&[f32], &[T]) -> f32) -> Vec<f32> {
        let keys = &self.planes.keys[self.layer];
        // A plain loop, not an iterator adapter: adapters are functions of their own that would
        // not be compiled for the caller's instruction set.
        let mut scores = Vec::with_capacity(self.keys.len());
        for &j in self.keys {
            scores.push(dot(q, &keys[self.layout.slot(self.kv_head, j)]) * self.scale);
        }
        ops::softmax(&mut scores);
        scores
    }

    /// [`KvHead::attend`] compiled for AVX2 and F16C: the same operations, eight lanes at a time
    /// (heads of any width; [`KvHead::attend_rows_avx2`] serves those of 64 and 128 values).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn attend_avx2(&self, q: &[f32], out: &mut [f32]) {
        // SAFETY (the closures): this function is compiled with AVX2 and F16C.
        self.attend_with(
            q,
            out,
            |a, b| unsafe { ops::dot_avx(a, b) },
            |a, x, y| unsafe { ops::axpy_avx(a, x, y) },
        )
    }
}

/// Keys (and values) [`KvHead::attend_rows_avx2`] widens to `f32` at a time for all the rows
/// and query heads (a multiple of the eight keys scored together).
#[cfg(target_arch = "x86_64")]
const CHUNK: usize = 32;

#[cfg(target_arch = "x86_64")]
impl<T: KvElem> KvHead<'_, T> {
    /// [`KvHead::attend`] for each query head of the group and each row of a block, heads of
    /// `8·C` values. `self.keys` are the keys any of the rows sees, and `seen[r]` the positions
    /// in it of those row `r` sees; `q` and `out` hold each row's query heads side by side, row
    /// after row. Every score and output has [`KvHead::attend`]'s bits for the row's own keys
    /// (scores of eight keys at a time, each key's eight lane sums transposed and added in the
    /// portable dot product's order, so a score does not depend on the keys scored with it;
    /// each output lane adds `p · v` over the row's keys in order).
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn attend_rows_avx2<const C: usize>(
        &self,
        seen: &[Vec<usize>],
        q: &[f32],
        out: &mut [f32],
    ) {
        let d = 8 * C;
        let width = q.len() / seen.len().max(1);
        let (heads, n) = (width / d, self.keys.len());
        // A row that sees no key (a mask may say so) keeps zeros, as the portable path gives.
        out.fill(0.0);
        if n == 0 {
            return;
        }
        // Row `r`'s scores, head after head, over the keys it sees.
        let mut scores: Vec<Vec<f32>> = seen.iter().map(|s| vec![0f32; heads * s.len()]).collect();
        let mut wide = vec![0f32; n.min(CHUNK) * d];
        let mut chunk = vec![0f32; n.min(CHUNK)];
        // Each row's next position in `seen`, chunk after chunk.
        let mut next = vec![0usize; seen.len()];
        for c0 in (0..n).step_by(CHUNK) {
            let m = (n - c0).min(CHUNK);
            self.widen::<C>(&self.planes.keys[self.layer], c0, m, &mut wide);
            for (r, next) in next.iter_mut().enumerate() {
                let (lo, hi) = within(&seen[r], next, c0, m);
                if lo == hi {
                    continue;
                }
                let len = seen[r].len();
                for h in 0..heads {
                    let qh = &q[r * width + h * d..][..d];
                    let dst = &mut scores[r][h * len + lo..h * len + hi];
                    if hi - lo == m {
                        scores_avx2::<C>(qh, &wide[..m * d], dst);
                    } else {
                        // The row sees part of the chunk: its keys' scores of the whole chunk's.
                        scores_avx2::<C>(qh, &wide[..m * d], &mut chunk[..m]);
                        for (x, &u) in dst.iter_mut().zip(&seen[r][lo..hi]) {
                            *x = chunk[u - c0];
                        }
                    }
                    for x in dst {
                        *x *= self.scale;
                    }
                }
            }
        }
        for (s, row) in scores.iter_mut().zip(seen) {
            for s in s.chunks_exact_mut(row.len().max(1)) {
                ops::softmax(s);
            }
        }
        next.fill(0);
        for c0 in (0..n).step_by(CHUNK) {
            let m = (n - c0).min(CHUNK);
            self.widen::<C>(&self.planes.values[self.layer], c0, m, &mut wide);
            for (r, next) in next.iter_mut().enumerate() {
                let (lo, hi) = within(&seen[r], next, c0, m);
                let len = seen[r].len();
                for h in 0..heads {
                    let p = &scores[r][h * len + lo..h * len + hi];
                    let o = &mut out[r * width + h * d..][..d];
                    if hi - lo == m {
                        add_weighted::<C>(p, 0..m, &wide[..m * d], o);
                    } else {
                        let at = seen[r][lo..hi].iter().map(|&u| u - c0);
                        add_weighted::<C>(p, at, &wide[..m * d], o);
                    }
                }
            }
        }
    }

    /// The rows of `plane` of the visible keys `c0..c0 + m`, widened to `f32` into `wide`.
    #[inline(always)]
    unsafe fn widen<const C: usize>(&self, plane: &[T], c0: usize, m: usize, wide: &mut [f32]) {
        for (t, &j) in self.keys[c0..c0 + m].iter().enumerate() {
            let src = plane[self.layout.slot(self.kv_head, j)].as_ptr();
            for c in 0..C {
                let v = T::load8(src.add(8 * c));
                _mm256_storeu_ps(wide.as_mut_ptr().add(t * 8 * C + 8 * c), v);
            }
        }
    }
}

/// `scores[t] = q · k_t` for the keys `k_t` (rows of `8·C` values in `keys`), eight keys at a
/// time: each key's eight lane sums are those of [`ops::dot_avx`], and a transpose adds them in
/// its pairwise order, so every score has the same bits (the last `len % 8` keys go through
/// [`ops::dot_avx`] itself).
///
/// # Safety
/// Only for code compiled with AVX2 (it is inlined into such functions).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn scores_avx2<const C: usize>(q: &[f32], keys: &[f32], scores: &mut [f32]) {
    let (d, n) = (8 * C, scores.len());
    debug_assert!(q.len() >= d && keys.len() >= n * d);
    let whole = n - n % 8;
    for b in (0..whole).step_by(8) {
        let base = keys.as_ptr().add(b * d);
        let mut a = [_mm256_setzero_ps(); 8];
        for c in 0..C {
            let x = _mm256_loadu_ps(q.as_ptr().add(8 * c));
            for (k, a) in a.iter_mut().enumerate() {
                *a = _mm256_add_ps(
                    *a,
                    _mm256_mul_ps(x, _mm256_loadu_ps(base.add(k * d + 8 * c))),
                );
            }
        }
        // Lane l of every key's sums into vector l, then ((0+4)+(2+6))+((1+5)+(3+7)).
        let ((t0, t1), (t2, t3)) = (unpack(a[0], a[1]), unpack(a[2], a[3]));
        let ((t4, t5), (t6, t7)) = (unpack(a[4], a[5]), unpack(a[6], a[7]));
        let ((u0, u1), (u2, u3)) = (shuffle(t0, t2), shuffle(t1, t3));
        let ((u4, u5), (u6, u7)) = (shuffle(t4, t6), shuffle(t5, t7));
        let ((l0, l4), (l1, l5)) = (halves(u0, u4), halves(u1, u5));
        let ((l2, l6), (l3, l7)) = (halves(u2, u6), halves(u3, u7));
        let even = _mm256_add_ps(_mm256_add_ps(l0, l4), _mm256_add_ps(l2, l6));
        let odd = _mm256_add_ps(_mm256_add_ps(l1, l5), _mm256_add_ps(l3, l7));
        _mm256_storeu_ps(scores.as_mut_ptr().add(b), _mm256_add_ps(even, odd));
    }
    for t in whole..n {
        scores[t] = ops::dot_avx(q, &keys[t * d..(t + 1) * d]);
    }
}

/// The interleaved low and high pairs of lanes of `x` and `y` (a transpose step).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn unpack(x: __m256, y: __m256) -> (__m256, __m256) {
    (_mm256_unpacklo_ps(x, y), _mm256_unpackhi_ps(x, y))
}

/// Lanes 0–1 and lanes 2–3 of each 128-bit half of `x`, then of `y` (a transpose step).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn shuffle(x: __m256, y: __m256) -> (__m256, __m256) {
    (
        _mm256_shuffle_ps::<0x44>(x, y),
        _mm256_shuffle_ps::<0xEE>(x, y),
    )
}

/// The low 128-bit halves of `x` and `y`, and their high halves (a transpose step).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn halves(x: __m256, y: __m256) -> (__m256, __m256) {
    (
        _mm256_permute2f128_ps::<0x20>(x, y),
        _mm256_permute2f128_ps::<0x31>(x, y),
    )
}

/// The range of `seen` (sorted, distinct positions, none below `c0` from `*lo` on) that falls in
/// `c0..c0 + m`; `*lo` moves past it.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn within(seen: &[usize], lo: &mut usize, c0: usize, m: usize) -> (usize, usize) {
    let start = *lo;
    // A row that sees the whole chunk: its next `m` positions are `c0..c0 + m`.
    *lo += if seen.get(start + m - 1) == Some(&(c0 + m - 1)) {
        m
    } else {
        seen[start..].partition_point(|&u| u < c0 + m)
    };
    (start, *lo)
}

/// `out += Σ_t p[t] · v_t` over the values `v_t` at the rows `at` of `values` (rows of `8·C`
/// values), the output held in registers: each lane adds `p · v` in order, as
/// [`ops::axpy_avx`] does.
///
/// # Safety
/// Only for code compiled with AVX2 (it is inlined into such functions).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn add_weighted<const C: usize>(
    p: &[f32],
    at: impl Iterator<Item = usize>,
    values: &[f32],
    out: &mut [f32],
) {
    debug_assert!(out.len() >= 8 * C);
    let mut acc = [_mm256_setzero_ps(); C];
    for (c, acc) in acc.iter_mut().enumerate() {
        *acc = _mm256_loadu_ps(out.as_ptr().add(8 * c));
    }
    for (&p, t) in p.iter().zip(at) {
        debug_assert!(values.len() >= (t + 1) * 8 * C);
        let (v, pv) = (values.as_ptr().add(t * 8 * C), _mm256_set1_ps(p));
        for (c, acc) in acc.iter_mut().enumerate() {
            *acc = _mm256_add_ps(*acc, _mm256_mul_ps(pv, _mm256_loadu_ps(v.add(8 * c))));
        }
    }
    for (c, acc) in acc.iter().enumerate() {
        _mm256_storeu_ps(out.as_mut_ptr().add(8 * c), *acc);
    }
}

/// Query rows × keys above which attention runs on all threads.
const PARALLEL_WORK: usize = 4096;

/// Attention of the query rows `[n][heads · dim]` (rotated) over the keys and values of
/// `layer` that each row sees (`seen`, one entry per row); returns `[n][heads · dim]`.
///
/// A row's keys are visited in slot order and each output depends on its row alone.
pub(crate) fn attend(
    kv: &HostKv,
    layer: usize,
    q: &[f32],
    h: Heads,
    seen: &SeenKeys,
    avx2: bool,
) -> Vec<f32> {
    match &kv.store {
        Store::F32(p) => attend_planes(kv, p, layer, q, h, seen, avx2),
        Store::F16(p) => attend_planes(kv, p, layer, q, h, seen, avx2),
    }
}

/// [`attend`] over the planes of one storage type.
fn attend_planes<T: KvElem>(
    kv: &HostKv,
    planes: &Planes<T>,
    layer: usize,
    q: &[f32],
    h: Heads,
    seen_keys: &SeenKeys,
    avx2: bool,
) -> Vec<f32> {
    #[cfg(not(target_arch = "x86_64"))]
    let _ = avx2;
    let d = h.dim;
    let width = h.q * d;
    let group = h.q / h.kv;
    let scale = 1.0 / (d as f32).sqrt();
    let rows = &seen_keys.rows;
    let n = rows.len();
    let work: usize = rows.iter().map(Vec::len).sum::<usize>() * h.q;
    let at = LayerAttention {
        kv,
        planes,
        layer,
        h,
        scale,
    };
    // One task per (row, head): its output is one head-wide slice of `out`.
    let task = |(t, o): (usize, &mut [f32])| {
        let (i, head) = (t / h.q, t % h.q);
        let one = at.head(head / group, &rows[i]);
        let qv = &q[i * width + head * d..i * width + (head + 1) * d];
        #[cfg(target_arch = "x86_64")]
        if avx2 {
            // SAFETY: the caller saw AVX2 and F16C on this CPU (`Isa::has_avx2`).
            return unsafe { one.attend_avx2(qv, o) };
        }
        one.attend(qv, o)
    };
    #[cfg(target_arch = "x86_64")]
    if avx2 && matches!(d, 64 | 128) {
        return at.attend_blocks_avx2(q, seen_keys.blocks(), n, work >= PARALLEL_WORK);
    }
    let mut out = vec![0f32; n * width];
    if work >= PARALLEL_WORK {
        out.par_chunks_mut(d).enumerate().for_each(task);
    } else {
        out.chunks_mut(d).enumerate().for_each(task);
    }
    out
}

/// Rows of a block that attend together on the AVX2 path (they share each read of the cache).
#[cfg(target_arch = "x86_64")]
const ATTEND_ROWS: usize = 8;

/// One layer's attention over the planes of one storage type.
struct LayerAttention<'a, T> {
    kv: &'a HostKv,
    planes: &'a Planes<T>,
    layer: usize,
    h: Heads,
    scale: f32,
}

impl<'a, T: KvElem> LayerAttention<'a, T> {
    /// KV head `kv_head` at the slots `keys`.
    fn head<'k>(&self, kv_head: usize, keys: &'k [usize]) -> KvHead<'k, T>
    where
        'a: 'k,
    {
        KvHead {
            layout: self.kv.layout,
            planes: self.planes,
            layer: self.layer,
            kv_head,
            keys,
            scale: self.scale,
        }
    }
}

#[cfg(target_arch = "x86_64")]
impl<T: KvElem> LayerAttention<'_, T> {
    /// [`attend`] of `n` rows in `blocks` ([`SeenKeys::blocks`]): one task per (block of up to
    /// [`ATTEND_ROWS`] rows, KV head) reads each chunk of the keys and values any of the block's
    /// rows sees once, for all of them and all the KV head's query heads
    /// ([`KvHead::attend_rows_avx2`]); on all threads with `parallel`.
    fn attend_blocks_avx2(
        &self,
        q: &[f32],
        blocks: &[RowBlock],
        n: usize,
        parallel: bool,
    ) -> Vec<f32> {
        let h = self.h;
        let (d, group) = (h.dim, h.q / h.kv);
        let (width, span) = (h.q * d, group * d);
        // Task `t`: the block's query heads of the KV head, row after row, in and out.
        let task = |t: usize| -> Vec<f32> {
            let (b, kv_head) = (t / h.kv, t % h.kv);
            let RowBlock { keys, seen } = &blocks[b];
            let head = self.head(kv_head, keys);
            let first = b * ATTEND_ROWS;
            let mut qv = Vec::with_capacity(seen.len() * span);
            for i in first..first + seen.len() {
                qv.extend_from_slice(&q[i * width + kv_head * span..][..span]);
            }
            let mut o = vec![0f32; qv.len()];
            // SAFETY: the caller saw AVX2 and F16C on this CPU (`Isa::has_avx2`).
            unsafe {
                if d == 64 {
                    head.attend_rows_avx2::<8>(seen, &qv, &mut o)
                } else {
                    head.attend_rows_avx2::<16>(seen, &qv, &mut o)
                }
            }
            o
        };
        let tasks = blocks.len() * h.kv;
        let done: Vec<Vec<f32>> = if parallel {
            (0..tasks).into_par_iter().map(task).collect()
        } else {
            (0..tasks).map(task).collect()
        };
        let mut out = vec![0f32; n * width];
        for (t, o) in done.iter().enumerate() {
            let (b, kv_head) = (t / h.kv, t % h.kv);
            for (r, o) in o.chunks_exact(span).enumerate() {
                let at = (b * ATTEND_ROWS + r) * width + kv_head * span;
                out[at..at + span].copy_from_slice(o);
            }
        }
        out
    }
}

/// Rows that attend together on the AVX2 path.
#[cfg(target_arch = "x86_64")]
struct RowBlock {
    /// The keys any of the rows sees, in slot order.
    keys: Vec<usize>,
    /// For each row, the positions in `keys` of those it sees.
    seen: Vec<Vec<usize>>,
}

/// `rows` (each row's keys sorted) as one [`RowBlock`].
#[cfg(target_arch = "x86_64")]
fn union(rows: &[Vec<usize>]) -> RowBlock {
    // Rows that see a prefix of the slots (causal rows): positions are slots.
    if rows
        .iter()
        .all(|r| r.last().is_none_or(|&k| k + 1 == r.len()))
    {
        let end = rows.iter().map(Vec::len).max().unwrap_or(0);
        return RowBlock {
            keys: (0..end).collect(),
            seen: rows.to_vec(),
        };
    }
    let end = rows
        .iter()
        .filter_map(|r| r.last())
        .max()
        .map_or(0, |&k| k + 1);
    let mut seen_by_any = vec![false; end];
    for &k in rows.iter().flatten() {
        seen_by_any[k] = true;
    }
    let mut keys = Vec::new();
    let mut position = vec![0usize; end];
    for (k, _) in seen_by_any.iter().enumerate().filter(|(_, &any)| any) {
        position[k] = keys.len();
        keys.push(k);
    }
    let seen = rows
        .iter()
        .map(|r| r.iter().map(|&k| position[k]).collect())
        .collect();
    RowBlock { keys, seen }
}

/// The AVX2 path against the portable one (x86-64 only).
#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// Deterministic values in `[-1, 1)`.
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// A row whose mask shows it no key gets zeros on both paths (and no panic).
    #[test]
    fn a_row_that_sees_no_key_gets_zeros() {
        if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("f16c")) {
            return;
        }
        let h = Heads {
            q: 6,
            kv: 2,
            dim: 64,
        };
        let mut kv = HostKv::new(1, h.kv, h.dim, 2, KvType::F16);
        let width = h.kv * h.dim;
        kv.write(0, 0, &values(2 * width, 1), &values(2 * width, 7));
        // Row 0 sees itself, row 1 nothing.
        let mask = AttentionMask::tree(0, 2, &[true, false, false, false]).unwrap();
        let visible = Visibility::Mask {
            mask: &mask,
            offset: 0,
        };
        let q = values(2 * h.q * h.dim, 3);
        for avx2 in [false, true] {
            let out = attend(&kv, 0, &q, h, &SeenKeys::new(visible, 2), avx2);
            let row = h.q * h.dim;
            assert!(out[row..].iter().all(|&x| x == 0.0), "avx2 {avx2}");
            assert!(out[..row].iter().any(|&x| x != 0.0), "avx2 {avx2}");
        }
    }

    /// The AVX2 path gives the portable path's bits, for both cache types, causal rows and tree
    /// rows (more than one block of rows that attend together), with grouped query heads.
    #[test]
    fn the_avx2_path_equals_the_portable_path_bit_for_bit() {
        if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("f16c")) {
            return;
        }
        let (n, layers) = (ATTEND_ROWS + 3, 2);
        // Heads of 64 and 128 values (by KV group) and of another width (head by head); one
        // chunk of widened keys and a part, and several.
        for (dim, cached, ty) in [
            (64, 37, KvType::F32),
            (64, 37, KvType::F16),
            (64, 77, KvType::F16),
            (128, 77, KvType::F32),
            (40, 37, KvType::F16),
        ] {
            let h = Heads { q: 6, kv: 2, dim };
            let mut kv = HostKv::new(layers, h.kv, h.dim, cached + n, ty);
            let width = h.kv * h.dim;
            for l in 0..layers {
                let k = values((cached + n) * width, 1 + l as u64);
                let v = values((cached + n) * width, 7 + l as u64);
                kv.write(l, 0, &k, &v);
            }
            let q = values(n * h.q * h.dim, 3);
            // A binary tree: row `i` sees itself and its ancestors `(i - 1) / 2`, ….
            let mut dense = vec![false; n * n];
            for i in 0..n {
                let mut a = i;
                dense[i * n + a] = true;
                while a > 0 {
                    a = (a - 1) / 2;
                    dense[i * n + a] = true;
                }
            }
            let mask = AttentionMask::tree(cached, n, &dense).unwrap();
            for visible in [
                Visibility::Causal { cached },
                Visibility::Mask {
                    mask: &mask,
                    offset: 0,
                },
            ] {
                let seen = SeenKeys::new(visible, n);
                for l in 0..layers {
                    let portable = attend(&kv, l, &q, h, &seen, false);
                    let avx2 = attend(&kv, l, &q, h, &seen, true);
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&avx2), bits(&portable), "{ty:?}, layer {l}");
                }
            }
        }
    }
}
