//! A CPU matrix product for the row counts of decoding, verification and prompt blocks.
//!
//! Burn's CPU matmul pads a product of 2–16 rows to a full micro-kernel tile and runs it on one
//! thread, so verifying a 4-token tree cost about twice a 1-token decode step, which erases what
//! speculative decoding gains on a CPU. Here, on all cores, one mechanism for every row count:
//!
//! - the weights are stored once, at load, in **panels** of 16 output rows laid out `[in][16]`,
//!   so a panel streams from memory as one sequential run of cache lines;
//! - a panel is multiplied a **chunk** of 128 inputs at a time (8 KiB, which stays in L1 cache)
//!   with every activation row, in register tiles of up to 6 activation rows × 16 outputs
//!   (12 accumulators: each weight load serves up to 6 rows, each broadcast activation 16
//!   outputs);
//! - while a tile computes, the weights 128 inputs ahead are requested, so memory streams during
//!   the arithmetic instead of after it.
//!
//! One row is a memory-bound pass over the weights; from about 8 rows the arithmetic dominates.
//! Figures for the default model are in docs/benchmarks.md (`cargo bench -p s4c-models --bench
//! host_matmul`). Weights may be stored in `f16` (half the bytes per step), accumulated in `f32`.

use half::f16;
use rayon::prelude::*;

/// Weights `[out, in]` in host memory, row-major, as [`HostLinear::new`] takes them.
#[derive(Debug, Clone)]
pub enum HostWeights {
    /// Full precision.
    F32(Vec<f32>),
    /// Half precision, widened to `f32` a chunk at a time.
    F16(Vec<f16>),
}

/// A weight matrix `[out, in]` multiplied on the host: `y = x · Wᵀ`.
#[derive(Debug, Clone)]
pub struct HostLinear {
    out: usize,
    inp: usize,
    /// `[panel][in][PANEL]`: output rows `16p..16p + 16` (zeros past `out`), input-major.
    panels: HostWeights,
}

/// Output rows per panel: two 8-lane vectors.
const PANEL: usize = 16;

/// Inputs per chunk: a chunk of a panel (8 KiB in `f32`) stays in L1 while every tile of
/// activation rows multiplies it.
const CHUNK: usize = 128;

/// How many inputs ahead a tile requests weights (one cache line per input step).
const PREFETCH_INPUTS: usize = 128;

/// Panels per parallel task.
const TASK_PANELS: usize = 3;

/// Activation rows per register tile (6 rows × 2 vectors = 12 accumulators).
const TILE_ROWS: usize = 6;

impl HostLinear {
    /// Takes `[out, in]` row-major weights (`out · in` values) and stores them in panels.
    pub fn new(out: usize, inp: usize, w: HostWeights) -> Self {
        debug_assert_eq!(
            match &w {
                HostWeights::F32(v) => v.len(),
                HostWeights::F16(v) => v.len(),
            },
            out * inp
        );
        let panels = match w {
            HostWeights::F32(v) => HostWeights::F32(to_panels(&v, out, inp)),
            HostWeights::F16(v) => HostWeights::F16(to_panels(&v, out, inp)),
        };
        HostLinear { out, inp, panels }
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
        let inp = self.inp;
        debug_assert_eq!(x.len(), m * inp);
        let n_panels = self.out.div_ceil(PANEL);
        // Computed `n_panels · 16` wide, so every tile stores whole vectors.
        let width = n_panels * PANEL;
        let mut y = vec![0f32; m * width];
        let dst = Out {
            ptr: y.as_mut_ptr(),
            stride: width,
        };
        (0..n_panels.div_ceil(TASK_PANELS))
            .into_par_iter()
            .for_each(|t| {
                let mut wide = Vec::new();
                for p in t * TASK_PANELS..((t + 1) * TASK_PANELS).min(n_panels) {
                    for k0 in (0..inp).step_by(CHUNK) {
                        let kc = CHUNK.min(inp - k0);
                        let at = (p * inp + k0) * PANEL;
                        let (w, ahead, ahead_step): (&[f32], *const u8, usize) = match &self.panels
                        {
                            HostWeights::F32(v) => (
                                &v[at..at + kc * PANEL],
                                v.as_ptr().wrapping_add(at).cast(),
                                4 * PANEL,
                            ),
                            HostWeights::F16(v) => {
                                wide.resize(kc * PANEL, 0.0);
                                widen(&v[at..at + kc * PANEL], &mut wide);
                                (&wide, v.as_ptr().wrapping_add(at).cast(), 2 * PANEL)
                            }
                        };
                        let chunk = Chunk {
                            w,
                            ahead,
                            ahead_step,
                            first: k0 == 0,
                        };
                        for i in (0..m).step_by(TILE_ROWS) {
                            let rows = TILE_ROWS.min(m - i);
                            let xs = &x[i * inp + k0..];
                            // This task alone writes columns 16p..16p + 16 (see `Out`).
                            chunk.tile(rows, xs, inp, dst.at(i, p * PANEL));
                        }
                    }
                }
            });
        if width == self.out {
            return y;
        }
        let mut packed = Vec::with_capacity(m * self.out);
        for row in y.chunks_exact(width) {
            packed.extend_from_slice(&row[..self.out]);
        }
        packed
    }
}

/// `[out, in]` row-major → `[panel][in][PANEL]`, rows past `out` zero.
fn to_panels<T: Copy + Default>(w: &[T], out: usize, inp: usize) -> Vec<T> {
    let n_panels = out.div_ceil(PANEL);
    let mut p = vec![T::default(); n_panels * inp * PANEL];
    for (o, row) in w.chunks_exact(inp.max(1)).take(out).enumerate() {
        let base = (o / PANEL) * inp * PANEL + o % PANEL;
        for (k, &v) in row.iter().enumerate() {
            p[base + k * PANEL] = v;
        }
    }
    p
}

/// Where a tile stores its results: from `ptr`, rows `stride` values apart.
#[derive(Clone, Copy)]
struct Out {
    ptr: *mut f32,
    stride: usize,
}

// SAFETY: the tasks of `HostLinear::matmul` write disjoint columns (their own panels) of one
// output buffer that outlives them.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    /// The same output from row `r` and column `c` on (pointer arithmetic only).
    fn at(self, r: usize, c: usize) -> Out {
        Out {
            ptr: self.ptr.wrapping_add(r * self.stride + c),
            stride: self.stride,
        }
    }
}

/// One chunk of one panel, `[kc][PANEL]` in `f32`, ready to multiply.
struct Chunk<'a> {
    w: &'a [f32],
    /// The chunk's weights in storage (what to prefetch ahead of).
    ahead: *const u8,
    /// Bytes of storage per input step (16 weights).
    ahead_step: usize,
    /// The first chunk of the panel stores its sums; later ones add to them.
    first: bool,
}

impl Chunk<'_> {
    /// `y[r][0..16] (+)= Σ_k x[r·inp + k] · w[k][0..16]` for `rows` (1..=6) activation rows.
    fn tile(&self, rows: usize, x: &[f32], inp: usize, y: Out) {
        let kc = self.w.len() / PANEL;
        assert!(rows <= TILE_ROWS && x.len() >= (rows - 1) * inp + kc);
        #[cfg(target_arch = "x86_64")]
        if avx2_fma() {
            // SAFETY: AVX2 and FMA were detected; `x` holds `rows` rows of `kc` values `inp`
            // apart (checked above); `y` points at `rows` rows of 16 writable values that no
            // other task touches (`HostLinear::matmul`).
            unsafe {
                match rows {
                    6 => self.tile_avx2::<6>(x, inp, y),
                    5 => self.tile_avx2::<5>(x, inp, y),
                    4 => self.tile_avx2::<4>(x, inp, y),
                    3 => self.tile_avx2::<3>(x, inp, y),
                    2 => self.tile_avx2::<2>(x, inp, y),
                    _ => self.tile_avx2::<1>(x, inp, y),
                }
            }
            return;
        }
        self.tile_portable(rows, x, inp, y);
    }

    /// [`Chunk::tile`] in plain Rust (CPUs without AVX2 and FMA).
    fn tile_portable(&self, rows: usize, x: &[f32], inp: usize, y: Out) {
        for r in 0..rows {
            let mut acc = [0f32; PANEL];
            for (k, w) in self.w.chunks_exact(PANEL).enumerate() {
                let xv = x[r * inp + k];
                for (a, &wv) in acc.iter_mut().zip(w) {
                    *a += xv * wv;
                }
            }
            // SAFETY: as above, row `r` of `y` has 16 values this task alone writes.
            let dst = unsafe { std::slice::from_raw_parts_mut(y.ptr.add(r * y.stride), PANEL) };
            for (d, a) in dst.iter_mut().zip(acc) {
                *d = if self.first { a } else { *d + a };
            }
        }
    }

    /// [`Chunk::tile`] for `R` rows in AVX2 registers.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::needless_range_loop)] // indices over registers read clearer than zips
    unsafe fn tile_avx2<const R: usize>(&self, x: &[f32], inp: usize, y: Out) {
        use std::arch::x86_64::*;
        let kc = self.w.len() / PANEL;
        let (pw, px) = (self.w.as_ptr(), x.as_ptr());
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        for k in 0..kc {
            // A hint: never faults, so it may point past the weights.
            let line = self
                .ahead
                .wrapping_add((k + PREFETCH_INPUTS) * self.ahead_step);
            _mm_prefetch(line.cast(), _MM_HINT_T0);
            let a = [
                _mm256_loadu_ps(pw.add(k * PANEL)),
                _mm256_loadu_ps(pw.add(k * PANEL + 8)),
            ];
            for r in 0..R {
                let b = _mm256_broadcast_ss(&*px.add(r * inp + k));
                for v in 0..2 {
                    acc[r][v] = _mm256_fmadd_ps(b, a[v], acc[r][v]);
                }
            }
        }
        for r in 0..R {
            for v in 0..2 {
                let d = y.ptr.add(r * y.stride + 8 * v);
                let s = if self.first {
                    acc[r][v]
                } else {
                    _mm256_add_ps(_mm256_loadu_ps(d), acc[r][v])
                };
                _mm256_storeu_ps(d, s);
            }
        }
    }
}

fn widen(src: &[f16], dst: &mut [f32]) {
    use half::slice::HalfFloatSliceExt;
    src.convert_to_f32_slice(dst);
}

/// Whether this CPU has AVX2 and FMA (the kernel's vector path); detected once, then cached
/// by the standard library.
#[cfg(target_arch = "x86_64")]
fn avx2_fma() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
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
    fn the_portable_tile_matches_the_vector_tile() {
        let (kc, inp) = (37, 40);
        let w: Vec<f32> = (0..kc * PANEL)
            .map(|i| (i % 13) as f32 * 0.25 - 1.5)
            .collect();
        let x: Vec<f32> = (0..TILE_ROWS * inp).map(|i| (i % 7) as f32 - 3.0).collect();
        for rows in 1..=TILE_ROWS {
            for first in [true, false] {
                let chunk = Chunk {
                    w: &w,
                    ahead: w.as_ptr().cast(),
                    ahead_step: 4 * PANEL,
                    first,
                };
                let mut a = vec![1f32; rows * PANEL];
                let mut b = a.clone();
                let out = |v: &mut Vec<f32>| Out {
                    ptr: v.as_mut_ptr(),
                    stride: PANEL,
                };
                chunk.tile(rows, &x, inp, out(&mut a));
                chunk.tile_portable(rows, &x, inp, out(&mut b));
                for (r, (ra, rb)) in a.chunks(PANEL).zip(b.chunks(PANEL)).enumerate() {
                    for (o, (va, vb)) in ra.iter().zip(rb).enumerate() {
                        let want = if first { 0.0 } else { 1.0 }
                            + (0..kc)
                                .map(|k| x[r * inp + k] * w[k * PANEL + o])
                                .sum::<f32>();
                        assert!((va - want).abs() < 1e-3 && (vb - want).abs() < 1e-3);
                    }
                }
            }
        }
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
            (17, 300, 1),
            (48, 129, 13),
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
