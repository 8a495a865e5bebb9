//! A CPU matrix product for the small row counts of decoding and verification.
//!
//! Burn's CPU matmul pads a product of 2–16 rows to a full micro-kernel tile and runs it on one
//! thread, so verifying a 4-token tree cost about twice a 1-token decode step, which erases what
//! speculative decoding gains on a CPU. Here every weight row is read from memory once and
//! multiplied with all `m` activation rows while it sits in cache, on all cores: a step stays
//! memory-bound for any `m` up to a few dozen, as a 1-row step is. Weights may be stored in `f16`
//! (half the bytes per step), accumulated in `f32`.

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
        let (out, inp) = (self.out, self.inp);
        debug_assert_eq!(x.len(), m * inp);
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

/// `dst[i] = w · x_i` for every row `x_i` (of `inp` values) of `x`; AVX2 + FMA when the CPU
/// has them, four rows at a time so each weight load serves four products.
fn dots(w: &[f32], x: &[f32], inp: usize, dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            let mut i = 0;
            while i + 4 <= dst.len() {
                let r = |j: usize| &x[(i + j) * inp..(i + j + 1) * inp];
                // SAFETY: the features were detected at run time; all rows have `inp` values.
                let d = unsafe { dot4_avx2(w, [r(0), r(1), r(2), r(3)]) };
                dst[i..i + 4].copy_from_slice(&d);
                i += 4;
            }
            for (j, y) in dst.iter_mut().enumerate().skip(i) {
                // SAFETY: as above.
                *y = unsafe { dot_avx2(w, &x[j * inp..(j + 1) * inp]) };
            }
            return;
        }
    }
    for (i, y) in dst.iter_mut().enumerate() {
        *y = dot_portable(w, &x[i * inp..(i + 1) * inp]);
    }
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

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (k, s) in acc.iter_mut().enumerate() {
            let x = _mm256_loadu_ps(pa.add(i + 8 * k));
            let y = _mm256_loadu_ps(pb.add(i + 8 * k));
            *s = _mm256_fmadd_ps(x, y, *s);
        }
        i += 32;
    }
    while i + 8 <= n {
        let x = _mm256_loadu_ps(pa.add(i));
        let y = _mm256_loadu_ps(pb.add(i));
        acc[0] = _mm256_fmadd_ps(x, y, acc[0]);
        i += 8;
    }
    let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), s);
    let mut total: f32 = lanes.iter().sum();
    while i < n {
        total += *pa.add(i) * *pb.add(i);
        i += 1;
    }
    total
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot4_avx2(w: &[f32], x: [&[f32]; 4]) -> [f32; 4] {
    use std::arch::x86_64::*;
    let n = w.len();
    let pw = w.as_ptr();
    let px = x.map(|r| r.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 8 <= n {
        let a = _mm256_loadu_ps(pw.add(i));
        for k in 0..4 {
            acc[k] = _mm256_fmadd_ps(a, _mm256_loadu_ps(px[k].add(i)), acc[k]);
        }
        i += 8;
    }
    let mut out = [0f32; 4];
    for k in 0..4 {
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), acc[k]);
        out[k] = lanes.iter().sum();
        for j in i..n {
            out[k] += *pw.add(j) * *px[k].add(j);
        }
    }
    out
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
