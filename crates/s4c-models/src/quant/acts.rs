//! Activations quantized to 8 bits, the other operand of the block-quantized kernels (as
//! llama.cpp quantizes activations to `Q8_0`/`Q8_K` blocks).
//!
//! Each row is cut into blocks of 32 values. A block has a scale `d = max|x| / 127` and the values
//! `q = round(x / d)` in `-127..=127`; `d` is then kept in f16, as llama.cpp's `Q8_0`/`Q8_1`
//! blocks keep it, so that a layer of `Q8_0` weights computes llama.cpp's numbers. A block also
//! keeps `d · Σq` (for weight types with a minimum or an offset) and, per half-block of 16,
//! `d · Σq` (for Q6_K's 16-value sub-blocks). Blocks are
//! stored in **pairs** (64 values of one row side by side, for 512-bit kernels; an odd last block
//! is paired with zeros).

use rayon::prelude::*;

/// Values per block.
pub(crate) const QK: usize = 32;

/// One pair's values, scales and scale lanes for every row.
type PairRanges<'a> = ((&'a mut [i8], &'a mut [f32]), &'a mut [f32]);

/// From this many rows on, quantization runs on the thread pool.
const PARALLEL_ROWS: usize = 4;

/// `rows` activation rows of `cols` values (a multiple of 32), quantized block by block.
///
/// Each row is quantized on its own, so its values do not depend on the other rows. Values and
/// scales are stored pair-major — pair `p` of every row, then pair `p + 1` — so the rows of a
/// kernel's tile find a pair's values side by side; the sums, used once per row, are row-major.
#[derive(Debug, Clone, Default)]
pub struct Q8Acts {
    /// Rows.
    pub(crate) rows: usize,
    /// Values per row.
    pub(crate) cols: usize,
    /// Quantized values: pair `p` of row `r` at `(p · rows + r) · 64`, block `b` at
    /// `((b / 2) · rows + r) · 2 + b % 2` blocks.
    pub(crate) q: Vec<i8>,
    /// Scale of each block: block `b` of row `r` at `((b / 2) · rows + r) · 2 + b % 2`.
    pub(crate) d: Vec<f32>,
    /// `d · Σq` of each block of 32, row-major (`r · blocks + b`).
    pub(crate) ds: Vec<f32>,
    /// `d · Σq` of each half-block of 16, row-major.
    pub(crate) ds16: Vec<f32>,
    /// For 512-bit kernels: each pair's two scales eight times each (`[d₀ ×8, d₁ ×8]`), pair
    /// `p` of row `r` at `(p · rows + r) · 16`.
    pub(crate) d16: Vec<f32>,
}

impl Q8Acts {
    /// Quantizes `rows` rows of `cols` values (`cols` a multiple of 32).
    ///
    /// Blocks of many rows are quantized in parallel on the current Rayon pool (the kernels
    /// call this inside their [`super::Threads`]); each value is the same either way.
    pub fn quantize(x: &[f32], rows: usize, cols: usize) -> Self {
        debug_assert_eq!(x.len(), rows * cols);
        debug_assert!(cols.is_multiple_of(QK));
        let nb = cols / QK;
        let pairs = nb.div_ceil(2);
        let mut a = Q8Acts {
            rows,
            cols,
            q: vec![0; rows * pairs * 2 * QK],
            d: vec![0.0; rows * pairs * 2],
            ds: vec![0.0; rows * nb],
            ds16: vec![0.0; 2 * rows * nb],
            d16: vec![0.0; rows * pairs * 16],
        };
        #[cfg(target_arch = "x86_64")]
        let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("f16c");
        // Pair `p` of every row: values, scales and the 512-bit kernels' scale lanes, each a
        // contiguous range.
        let pair = |(p, ((q, d), d16)): (usize, PairRanges<'_>)| {
            for r in 0..rows {
                for h in 0..2 {
                    let b = 2 * p + h;
                    if b >= nb {
                        continue;
                    }
                    let xs = &x[r * cols + b * QK..][..QK];
                    let qs = &mut q[(2 * r + h) * QK..][..QK];
                    #[cfg(target_arch = "x86_64")]
                    let db = if avx2 {
                        // SAFETY: AVX2 and F16C were detected above.
                        unsafe { quantize_block_avx2(xs, qs) }
                    } else {
                        quantize_block(xs, qs)
                    };
                    #[cfg(not(target_arch = "x86_64"))]
                    let db = quantize_block(xs, qs);
                    d[2 * r + h] = db;
                    d16[r * 16 + 8 * h..][..8].fill(db);
                }
            }
        };
        let (q, d, d16) = (rows * 2 * QK, rows * 2, rows * 16);
        if rows >= PARALLEL_ROWS {
            let (q, d, d16) = (
                a.q.par_chunks_mut(q),
                a.d.par_chunks_mut(d),
                a.d16.par_chunks_mut(d16),
            );
            q.zip(d).zip(d16).enumerate().for_each(pair);
        } else {
            let (q, d, d16) = (a.q.chunks_mut(q), a.d.chunks_mut(d), a.d16.chunks_mut(d16));
            q.zip(d).zip(d16).enumerate().for_each(pair);
        }
        // The sums of each block and half-block, row by row.
        let (qv, dv) = (&a.q, &a.d);
        let sums = |(r, (ds, ds16)): (usize, (&mut [f32], &mut [f32]))| {
            for b in 0..nb {
                let at = ((b / 2) * rows + r) * 2 + b % 2;
                let (qs, d) = (&qv[at * QK..(at + 1) * QK], dv[at]);
                let sum = |q: &[i8]| d * q.iter().map(|&q| q as i32).sum::<i32>() as f32;
                ds[b] = sum(qs);
                ds16[2 * b] = sum(&qs[..QK / 2]);
                ds16[2 * b + 1] = sum(&qs[QK / 2..]);
            }
        };
        if rows >= PARALLEL_ROWS {
            let (ds, ds16) = (a.ds.par_chunks_mut(nb), a.ds16.par_chunks_mut(2 * nb));
            ds.zip(ds16).enumerate().for_each(sums);
        } else {
            let (ds, ds16) = (a.ds.chunks_mut(nb), a.ds16.chunks_mut(2 * nb));
            ds.zip(ds16).enumerate().for_each(sums);
        }
        a
    }

    /// Blocks of 32 per row.
    pub(crate) fn blocks_per_row(&self) -> usize {
        self.cols / QK
    }

    /// Block `b` of row `r`: its 32 values and its scale.
    pub(crate) fn block(&self, r: usize, b: usize) -> (&[i8], f32) {
        let at = ((b / 2) * self.rows + r) * 2 + b % 2;
        (&self.q[at * QK..(at + 1) * QK], self.d[at])
    }

    /// The values back in `f32` (`q · d`), row-major: what the integer kernels multiply.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.rows * self.cols);
        for r in 0..self.rows {
            for b in 0..self.blocks_per_row() {
                let (q, d) = self.block(r, b);
                out.extend(q.iter().map(|&q| q as f32 * d));
            }
        }
        out
    }
}

/// One block: `q = round(x / d)` (halves away from zero) with `d = max|x| / 127`; returns `d`
/// rounded to f16.
fn quantize_block(xs: &[f32], qs: &mut [i8]) -> f32 {
    let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d > 0.0 { 1.0 / d } else { 0.0 };
    for (q, &v) in qs.iter_mut().zip(xs) {
        *q = (v * id).round() as i8;
    }
    f16_scale(d)
}

/// A block scale as its f16 storage keeps it.
fn f16_scale(d: f32) -> f32 {
    half::f16::from_f32(d).to_f32()
}

/// [`quantize_block`] on 256-bit vectors, with the same result bit for bit (the scale's f16
/// rounding by the F16C instructions, a few cycles instead of a software conversion).
///
/// # Safety
/// The CPU has AVX2 and F16C; `xs` and `qs` hold 32 values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
unsafe fn quantize_block_avx2(xs: &[f32], qs: &mut [i8]) -> f32 {
    use std::arch::x86_64::*;
    debug_assert!(xs.len() == QK && qs.len() == QK);
    let p = xs.as_ptr();
    let v = [0, 8, 16, 24].map(|i| _mm256_loadu_ps(p.add(i)));
    let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF));
    let mut m = _mm256_and_ps(v[0], abs);
    for v in &v[1..] {
        m = _mm256_max_ps(m, _mm256_and_ps(*v, abs));
    }
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), m);
    let amax = lanes.iter().fold(0f32, |m, v| m.max(*v));
    let d = amax / 127.0;
    let id = _mm256_set1_ps(if d > 0.0 { 1.0 / d } else { 0.0 });
    let sign = _mm256_set1_ps(-0.0);
    let (one, half) = (_mm256_set1_ps(1.0), _mm256_set1_ps(0.5));
    let ints = v.map(|v| {
        // Round halves away from zero as `f32::round`: truncate, then step away from zero
        // where the dropped fraction is at least one half.
        let y = _mm256_mul_ps(v, id);
        let t = _mm256_round_ps(y, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
        let frac = _mm256_andnot_ps(sign, _mm256_sub_ps(y, t));
        let step = _mm256_or_ps(_mm256_and_ps(y, sign), one);
        let up = _mm256_and_ps(_mm256_cmp_ps(frac, half, _CMP_GE_OQ), step);
        _mm256_cvtps_epi32(_mm256_add_ps(t, up))
    });
    // i32 → i16 → i8 with saturation (the values fit), then the lanes back in order.
    let w0 = _mm256_packs_epi32(ints[0], ints[1]);
    let w1 = _mm256_packs_epi32(ints[2], ints[3]);
    let b = _mm256_packs_epi16(w0, w1);
    let b = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(qs.as_mut_ptr().cast(), b);
    let h = _mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm_set_ss(d));
    _mm_cvtss_f32(_mm_cvtph_ps(h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn the_vector_quantizer_equals_the_scalar_one_bit_for_bit() {
        if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("f16c")) {
            return;
        }
        let mut rng = crate::testing::SplitMix(5);
        for case in 0..2000 {
            let scale = [1e-6, 1e-3, 1.0, 37.0, 1e4, 1e7][case % 6];
            let mut xs: Vec<f32> = (0..QK).map(|_| rng.symmetric() * scale).collect();
            if case % 7 == 0 {
                // Values that land on halves once scaled: 127 · k / 2 for a block maximum of 127.
                for (i, x) in xs.iter_mut().enumerate() {
                    *x = (i as f32 - 16.0) * 0.5;
                }
                xs[0] = 127.0;
            }
            if case == 1 {
                xs.fill(0.0);
            }
            let (mut q1, mut q2) = ([0i8; QK], [0i8; QK]);
            let d1 = quantize_block(&xs, &mut q1);
            // SAFETY: AVX2 and F16C were detected above.
            let d2 = unsafe { quantize_block_avx2(&xs, &mut q2) };
            assert_eq!((d1.to_bits(), q1), (d2.to_bits(), q2), "{xs:?}");
        }
    }

    #[test]
    fn blocks_are_llama_cpp_q8_0_blocks() {
        // llama.cpp's quantize_row_q8_0_ref: d = amax / 127 stored as f16, q = round(x · 127 /
        // amax) with halves away from zero, from the unrounded scale.
        let mut rng = crate::testing::SplitMix(9);
        for case in 0..500 {
            let scale = [1e-4, 0.3, 5.0, 300.0][case % 4];
            let xs: Vec<f32> = (0..QK).map(|_| rng.symmetric() * scale).collect();
            let mut q = [0i8; QK];
            let d = quantize_block(&xs, &mut q);
            let amax = xs.iter().map(|x| x.abs()).fold(0f32, f32::max);
            let want_d = half::f16::from_f32(amax / 127.0).to_f32();
            assert_eq!(d.to_bits(), want_d.to_bits());
            for (x, q) in xs.iter().zip(q) {
                assert_eq!(q as f32, (x * (1.0 / (amax / 127.0))).round(), "{x}");
            }
        }
    }

    #[test]
    fn quantization_error_is_within_half_a_step_and_sums_match() {
        // Two rows of three blocks (one pair, then a block paired with zeros).
        let x: Vec<f32> = (0..192)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let a = Q8Acts::quantize(&x, 2, 96);
        let back = a.dequantize();
        for r in 0..2 {
            for b in 0..3 {
                let (q, d) = a.block(r, b);
                for (j, &v) in x[r * 96 + b * 32..][..32].iter().enumerate() {
                    // Half a step, and the f16 rounding of the scale (2⁻¹¹ of it) over 127 steps.
                    let bound = d * (0.5 + 127.0 / 2048.0) + 1e-6;
                    assert!((back[r * 96 + b * 32 + j] - v).abs() <= bound);
                }
                let s = |q: &[i8]| q.iter().map(|&q| q as i32).sum::<i32>() as f32 * d;
                assert_eq!(a.ds[r * 3 + b], s(q));
                assert_eq!(a.ds16[2 * (r * 3 + b)], s(&q[..16]));
                assert_eq!(a.ds16[2 * (r * 3 + b) + 1], s(&q[16..]));
            }
        }
        // The padding block of the last pair is zero.
        let at = a.rows; // pair 1, row 0
        assert!(a.q[at * 64 + 32..at * 64 + 64].iter().all(|&q| q == 0));
        // An all-zero block quantizes to zeros with a zero scale.
        let z = Q8Acts::quantize(&[0.0; 32], 1, 32);
        assert_eq!((z.d[0], z.q.iter().all(|&q| q == 0)), (0.0, true));
    }
}
