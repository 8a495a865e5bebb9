//! A CPU matrix product for the small row counts of decoding and verification.
//!
//! Burn's CPU matmul pads a product of 2–16 rows to a full micro-kernel tile and runs it on one
//! thread, so verifying a 4-token tree cost about twice a 1-token decode step, which erases what
//! speculative decoding gains on a CPU. Here, on all cores:
//!
//! - up to 7 rows (memory-bound): every weight row is read from memory once and multiplied with
//!   every activation row while it sits in cache (blocks of up to 8 rows);
//! - from 8 rows (compute-bound): register tiles of 6 weight rows × 16 activation rows over the
//!   activations transposed to `[in, m]`, so each load serves several multiply-adds, with the
//!   next tile's weights prefetched while one computes.
//!
//! On the 2-core CPU of docs/benchmarks.md all of the default model's products take 1.1× a
//! 1-row pass for 2–4 rows, 1.25× for 8, 1.5× for 16 and 3.5× for 32
//! (`cargo bench -p s4c-models --bench host_matmul`).
//! Weights may be stored in `f16` (half the bytes per step), accumulated in `f32`.

use half::f16;
use rayon::prelude::*;

/// Weights `[out, in]` in host memory.
#[derive(Debug, Clone)]
pub enum HostWeights {
    /// Full precision.
    F32(Vec<f32>),
    /// Half precision, widened to `f32` row by row.
    F16(Vec<f16>),
}

/// A weight matrix `[out, in]` multiplied on the host: `y = x · Wᵀ`.
#[derive(Debug, Clone)]
pub struct HostLinear {
    out: usize,
    inp: usize,
    w: HostWeights,
}

/// Output rows per parallel task.
const BLOCK: usize = 32;

impl HostLinear {
    /// Wraps `[out, in]` row-major weights.
    pub fn new(out: usize, inp: usize, w: HostWeights) -> Self {
        debug_assert_eq!(
            match &w {
                HostWeights::F32(v) => v.len(),
                HostWeights::F16(v) => v.len(),
            },
            out * inp
        );
        HostLinear { out, inp, w }
    }

    /// Output features.
    pub fn out_features(&self) -> usize {
        self.out
    }

    /// Input features.
    pub fn in_features(&self) -> usize {
        self.inp
    }

    /// `x · Wᵀ` for `x` of `m` rows of `in` values; returns `m` rows of `out` values.
    pub fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        debug_assert_eq!(x.len(), m * self.inp);
        #[cfg(target_arch = "x86_64")]
        if m >= TILED_ROWS && avx2_fma() {
            return self.matmul_tiled(x, m);
        }
        self.matmul_rows(x, m)
    }

    /// Few rows: memory-bound, so each weight row is streamed once and multiplied with every
    /// activation row while it is in cache.
    fn matmul_rows(&self, x: &[f32], m: usize) -> Vec<f32> {
        let (out, inp) = (self.out, self.inp);
        // Computed transposed ([out, m]) so each task owns a contiguous block.
        let mut yt = vec![0f32; out * m];
        yt.par_chunks_mut(BLOCK * m)
            .enumerate()
            .for_each(|(b, chunk)| {
                let mut row = vec![0f32; inp];
                for (r, dst) in chunk.chunks_mut(m).enumerate() {
                    let o = b * BLOCK + r;
                    // Rows a few ahead are requested now, so memory streams while this one
                    // is multiplied (7-12% faster for 1-8 rows than the hardware alone).
                    let ahead = (o + PREFETCH_ROWS) * inp..(o + PREFETCH_ROWS + 1) * inp;
                    let w: &[f32] = match &self.w {
                        HostWeights::F32(v) => {
                            prefetch(v.get(ahead).unwrap_or(&[]));
                            &v[o * inp..(o + 1) * inp]
                        }
                        HostWeights::F16(v) => {
                            prefetch(v.get(ahead).unwrap_or(&[]));
                            widen(&v[o * inp..(o + 1) * inp], &mut row);
                            &row
                        }
                    };
                    dots(w, x, inp, dst);
                }
            });
        if m == 1 {
            return yt;
        }
        let mut y = vec![0f32; m * out];
        for o in 0..out {
            for i in 0..m {
                y[i * out + o] = yt[o * m + i];
            }
        }
        y
    }

    /// Many rows: compute-bound, so the product runs in register tiles — 6 (or 12) weight rows
    /// times 16 (or 8) activation rows of accumulators, see [`tiles_avx2`] — over the
    /// activations transposed to `[in, m]`, where each activation load serves several weight
    /// rows and each broadcast weight several activation rows.
    #[cfg(target_arch = "x86_64")]
    fn matmul_tiled(&self, x: &[f32], m: usize) -> Vec<f32> {
        let (out, inp) = (self.out, self.inp);
        // Activations transposed to [in, mp], padded with zeros to a multiple of 8 lanes.
        let mp = m.div_ceil(8) * 8;
        let mut xt = vec![0f32; inp * mp];
        for (k, col) in xt.chunks_exact_mut(mp).enumerate() {
            for (i, v) in col[..m].iter_mut().enumerate() {
                *v = x[i * inp + k];
            }
        }
        let mut y = vec![0f32; m * out];
        let dst = Out {
            ptr: y.as_mut_ptr(),
            stride: out,
            rows: m,
        };
        (0..out.div_ceil(TILED_BLOCK))
            .into_par_iter()
            .for_each(|b| {
                let o0 = b * TILED_BLOCK;
                let rows = TILED_BLOCK.min(out - o0);
                let mut wide = Vec::new();
                let w: &[f32] = match &self.w {
                    HostWeights::F32(v) => &v[o0 * inp..(o0 + rows) * inp],
                    HostWeights::F16(v) => {
                        wide.resize(rows * inp, 0.0);
                        widen(&v[o0 * inp..(o0 + rows) * inp], &mut wide);
                        &wide
                    }
                };
                // SAFETY: AVX2 and FMA were detected by the caller; `w` holds `rows` rows of
                // `inp` values and `xt` `inp` rows of `mp`; this task alone writes columns
                // `o0..o0 + rows` of `y`, which `dst` covers.
                unsafe { tiles_avx2(w, rows, inp, &xt, mp, dst.at(0, o0)) };
            });
        y
    }
}

/// Where a tile stores its results: `rows` rows of `y` (row stride `stride`) from `ptr`.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Out {
    ptr: *mut f32,
    stride: usize,
    rows: usize,
}

// SAFETY: tasks write disjoint columns of one live output buffer (see `matmul_tiled`).
#[cfg(target_arch = "x86_64")]
unsafe impl Send for Out {}
#[cfg(target_arch = "x86_64")]
unsafe impl Sync for Out {}

#[cfg(target_arch = "x86_64")]
impl Out {
    /// The same output from row `r` and column `c` on (pointer arithmetic only: nothing is
    /// read or written here).
    fn at(self, r: usize, c: usize) -> Out {
        Out {
            ptr: self.ptr.wrapping_add(r * self.stride + c),
            stride: self.stride,
            rows: self.rows.saturating_sub(r),
        }
    }
}

/// From this many activation rows on, [`HostLinear::matmul`] multiplies in register tiles.
#[cfg(target_arch = "x86_64")]
const TILED_ROWS: usize = 8;

/// Output rows per parallel task of the tiled product (a multiple of every tile height).
#[cfg(target_arch = "x86_64")]
const TILED_BLOCK: usize = 48;

/// `y[i][o] = w_o · x_i` for `rows` weight rows and the `mp` (a multiple of 8) activation
/// columns of `xt` (`[inp, mp]`), stored through `y` (row `i`, column `o` of this block): 6 weight
/// rows × 16 columns per tile (12 accumulators), 12 × 8 for a last group of 8 columns, then
/// single weight rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tiles_avx2(w: &[f32], rows: usize, inp: usize, xt: &[f32], mp: usize, y: Out) {
    debug_assert!(w.len() >= rows * inp && xt.len() >= inp * mp);
    let mut o = 0;
    while o < rows {
        let tall = match rows - o {
            12.. => 12,
            6..=11 => 6,
            _ => 1,
        };
        let mut n = 0;
        while n < mp {
            let (pw, px, py) = (w.as_ptr().add(o * inp), xt.as_ptr().add(n), y.at(n, o));
            // The first pass over these weight rows also requests the next ones.
            let fetch = n == 0;
            n += match (tall, mp - n >= 16) {
                (12 | 6, true) => {
                    for h in 0..tall / 6 {
                        tile::<6, 2>(pw.add(h * 6 * inp), fetch, inp, px, mp, py.at(0, h * 6));
                    }
                    16
                }
                (12, false) => {
                    tile::<12, 1>(pw, fetch, inp, px, mp, py);
                    8
                }
                (6, false) => {
                    tile::<6, 1>(pw, fetch, inp, px, mp, py);
                    8
                }
                (_, true) => {
                    tile::<1, 2>(pw, fetch, inp, px, mp, py);
                    16
                }
                (_, false) => {
                    tile::<1, 1>(pw, fetch, inp, px, mp, py);
                    8
                }
            };
        }
        o += tall;
    }
}

/// One register tile: `MR` weight rows (row stride `inp`) times `8·NV` activation columns (row
/// stride `mp` in `xt`), accumulated over all `inp`; results for the first `y.rows` columns
/// are stored to `y` (activation row `i`, weight row `j` at `y.ptr + i·y.stride + j`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::needless_range_loop)] // indices over registers read clearer than zipped iterators
unsafe fn tile<const MR: usize, const NV: usize>(
    w: *const f32,
    fetch_next: bool,
    inp: usize,
    xt: *const f32,
    mp: usize,
    y: Out,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm256_setzero_ps(); NV]; MR];
    for k in 0..inp {
        if fetch_next && k % 16 == 0 {
            // The next tile's weight rows, a cache line per row every 16 steps: memory streams
            // while this tile computes. (A hint: never faults, so it may point past the rows.)
            for j in 0..MR {
                let line = w.wrapping_add((MR + j) * inp + k);
                _mm_prefetch(line as *const i8, _MM_HINT_T0);
            }
        }
        let xk = xt.add(k * mp);
        let xv: [__m256; NV] = std::array::from_fn(|v| _mm256_loadu_ps(xk.add(8 * v)));
        for j in 0..MR {
            let b = _mm256_broadcast_ss(&*w.add(j * inp + k));
            for v in 0..NV {
                acc[j][v] = _mm256_fmadd_ps(b, xv[v], acc[j][v]);
            }
        }
    }
    let mut buf = [[[0f32; 8]; NV]; MR];
    for j in 0..MR {
        for v in 0..NV {
            _mm256_storeu_ps(buf[j][v].as_mut_ptr(), acc[j][v]);
        }
    }
    for c in 0..(8 * NV).min(y.rows) {
        let row = y.ptr.add(c * y.stride);
        for j in 0..MR {
            *row.add(j) = buf[j][c / 8][c % 8];
        }
    }
}

/// How far ahead of the row being multiplied its weights are prefetched.
const PREFETCH_ROWS: usize = 8;

/// Asks the CPU to bring `data` into cache (a hint: never faults, no effect off x86-64).
fn prefetch<T>(data: &[T]) {
    #[cfg(target_arch = "x86_64")]
    for line in data.chunks(64 / std::mem::size_of::<T>().max(1)) {
        // SAFETY: `_mm_prefetch` (SSE, part of x86-64) only hints; the pointer is in bounds.
        unsafe {
            std::arch::x86_64::_mm_prefetch(
                line.as_ptr() as *const i8,
                std::arch::x86_64::_MM_HINT_T0,
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = data;
}

fn widen(src: &[f16], dst: &mut [f32]) {
    use half::slice::HalfFloatSliceExt;
    src.convert_to_f32_slice(dst);
}

/// Whether this CPU has AVX2 and FMA (the kernels' vector paths); detected once, then cached
/// by the standard library.
#[cfg(target_arch = "x86_64")]
fn avx2_fma() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

/// `dst[i] = w · x_i` for every row `x_i` (of `inp` values) of `x`; AVX2 + FMA when the CPU
/// has them, up to eight rows at a time so each weight load serves up to eight products.
fn dots(w: &[f32], x: &[f32], inp: usize, dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if avx2_fma() {
        // SAFETY: the features were detected at run time; all rows have `inp` values.
        unsafe { dots_avx2(w, x, inp, dst) };
        return;
    }
    for (i, y) in dst.iter_mut().enumerate() {
        *y = dot_portable(w, &x[i * inp..(i + 1) * inp]);
    }
}

/// [`dots`] in blocks of 8, 4, 2 and 1 rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dots_avx2(w: &[f32], x: &[f32], inp: usize, dst: &mut [f32]) {
    let mut i = 0;
    while i < dst.len() {
        let rows = |r: usize| &x[(i + r) * inp..(i + r + 1) * inp];
        // Blocks keep 8 accumulators (rows × unroll) in flight: enough to hide FMA latency.
        let left = dst.len() - i;
        let done = if left >= 8 {
            dst[i..i + 8].copy_from_slice(&dot_rows::<8, 1>(w, std::array::from_fn(rows)));
            8
        } else if left >= 4 {
            dst[i..i + 4].copy_from_slice(&dot_rows::<4, 2>(w, std::array::from_fn(rows)));
            4
        } else if left >= 2 {
            dst[i..i + 2].copy_from_slice(&dot_rows::<2, 4>(w, std::array::from_fn(rows)));
            2
        } else {
            dst[i] = dot_rows::<1, 4>(w, [rows(0)])[0];
            1
        };
        i += done;
    }
}

/// `w · x_r` for `R` rows, each weight vector loaded once for all of them, with `U` independent
/// accumulators per row.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::needless_range_loop)] // indices over registers read clearer than zipped iterators
unsafe fn dot_rows<const R: usize, const U: usize>(w: &[f32], x: [&[f32]; R]) -> [f32; R] {
    use std::arch::x86_64::*;
    let n = w.len();
    let pw = w.as_ptr();
    let px = x.map(|r| r.as_ptr());
    let mut acc = [[_mm256_setzero_ps(); U]; R];
    let mut i = 0;
    while i + 8 * U <= n {
        for u in 0..U {
            let a = _mm256_loadu_ps(pw.add(i + 8 * u));
            for r in 0..R {
                acc[r][u] = _mm256_fmadd_ps(a, _mm256_loadu_ps(px[r].add(i + 8 * u)), acc[r][u]);
            }
        }
        i += 8 * U;
    }
    while i + 8 <= n {
        let a = _mm256_loadu_ps(pw.add(i));
        for r in 0..R {
            acc[r][0] = _mm256_fmadd_ps(a, _mm256_loadu_ps(px[r].add(i)), acc[r][0]);
        }
        i += 8;
    }
    let mut out = [0f32; R];
    for r in 0..R {
        let mut v = acc[r][0];
        for u in 1..U {
            v = _mm256_add_ps(v, acc[r][u]);
        }
        let q = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let q = _mm_add_ps(q, _mm_movehl_ps(q, q));
        let q = _mm_add_ss(q, _mm_shuffle_ps(q, q, 1));
        out[r] = _mm_cvtss_f32(q);
        for j in i..n {
            out[r] += *pw.add(j) * *px[r].add(j);
        }
    }
    out
}

fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = a.len() / 8 * 8;
    for (x, y) in a[..chunks].chunks_exact(8).zip(b[..chunks].chunks_exact(8)) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    let tail: f32 = a[chunks..]
        .iter()
        .zip(&b[chunks..])
        .map(|(x, y)| x * y)
        .sum();
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(w: &[f32], x: &[f32], out: usize, inp: usize, m: usize) -> Vec<f32> {
        let mut y = vec![0f32; m * out];
        for i in 0..m {
            for o in 0..out {
                y[i * out + o] = (0..inp)
                    .map(|k| (w[o * inp + k] * x[i * inp + k]) as f64)
                    .sum::<f64>() as f32;
            }
        }
        y
    }

    #[test]
    fn matches_a_naive_product_for_many_shapes() {
        let mut s = 1u64;
        let mut rnd = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        for (out, inp, m) in [
            (1, 1, 1),
            (7, 13, 3),
            (33, 64, 1),
            (70, 37, 5),
            (65, 96, 17),
            (40, 45, 2),
            (19, 100, 6),
            (8, 600, 7),
            (9, 64, 8),
            (5, 200, 15),
            (3, 72, 16),
            (13, 50, 24),
            (50, 33, 40),
            (31, 20, 64),
            (96, 576, 12),
        ] {
            let w: Vec<f32> = (0..out * inp).map(|_| rnd()).collect();
            let x: Vec<f32> = (0..m * inp).map(|_| rnd()).collect();
            let want = reference(&w, &x, out, inp, m);
            let got = HostLinear::new(out, inp, HostWeights::F32(w.clone())).matmul(&x, m);
            for (a, b) in got.iter().zip(&want) {
                assert!((a - b).abs() < 1e-4, "{out}x{inp} m={m}: {a} vs {b}");
            }
            let wh: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
            let wr: Vec<f32> = wh.iter().map(|v| v.to_f32()).collect();
            let want = reference(&wr, &x, out, inp, m);
            let got = HostLinear::new(out, inp, HostWeights::F16(wh)).matmul(&x, m);
            for (a, b) in got.iter().zip(&want) {
                assert!((a - b).abs() < 1e-4, "f16 {out}x{inp} m={m}: {a} vs {b}");
            }
        }
    }
}
