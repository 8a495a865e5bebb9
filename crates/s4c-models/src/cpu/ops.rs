//! The elementwise steps of a decoder layer on host rows: RMSNorm, rotary embeddings, SwiGLU,
//! and the dot products and exponentials of attention.
//!
//! Written over arrays of eight lanes with separate multiplies and adds (never fused), so the
//! compiler vectorizes them and every function computes the same bits on every CPU, whatever
//! vector width it uses: a row's result depends on that row alone.

use half::f16;

/// Lanes of the partial sums.
const LANES: usize = 8;

/// The element type of the second operand of [`dot`] and [`axpy`]: `f32`, or half floats,
/// which widen to `f32` exactly (so a product of halves is the product of their widened values,
/// bit for bit).
pub(crate) trait Widen: Copy {
    /// The value as `f32`.
    fn widen(self) -> f32;
    /// Eight values from `p`, widened.
    ///
    /// # Safety
    /// Eight values readable at `p`; only for code compiled with AVX and F16C (it is inlined
    /// into such functions).
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256;
}

impl Widen for f32 {
    #[inline(always)]
    fn widen(self) -> f32 {
        self
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const f32) -> std::arch::x86_64::__m256 {
        std::arch::x86_64::_mm256_loadu_ps(p)
    }
}

impl Widen for f16 {
    #[inline(always)]
    fn widen(self) -> f32 {
        self.to_f32()
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const f16) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        _mm256_cvtph_ps(_mm_loadu_si128(p.cast()))
    }
}

/// `Σ a[k] · b[k]`: eight partial sums, combined pairwise, then the tail.
#[inline(always)]
pub(crate) fn dot<T: Widen>(a: &[f32], b: &[T]) -> f32 {
    let n = a.len().min(b.len());
    let mut acc = [0f32; LANES];
    let (ca, cb) = (a[..n].chunks_exact(LANES), b[..n].chunks_exact(LANES));
    let (ta, tb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l].widen();
        }
    }
    let mut s = reduce(acc);
    for (x, y) in ta.iter().zip(tb) {
        s += x * y.widen();
    }
    s
}

/// [`dot`] on 256-bit vectors, the same operations in the same order (so the same bits).
///
/// # Safety
/// Only for code compiled with AVX and F16C (it is inlined into such functions).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn dot_avx<T: Widen>(a: &[f32], b: &[T]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let whole = n - n % LANES;
    let mut acc = _mm256_setzero_ps();
    for c in (0..whole).step_by(LANES) {
        let x = _mm256_loadu_ps(a.as_ptr().add(c));
        let y = T::load8(b.as_ptr().add(c));
        acc = _mm256_add_ps(acc, _mm256_mul_ps(x, y));
    }
    let mut lanes = [0f32; LANES];
    _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
    let mut s = reduce(lanes);
    for (x, y) in a[whole..n].iter().zip(&b[whole..n]) {
        s += x * y.widen();
    }
    s
}

/// The sum of eight lanes in a fixed pairwise order.
#[inline(always)]
fn reduce(a: [f32; LANES]) -> f32 {
    ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]))
}

/// `y += a · x`.
#[inline(always)]
pub(crate) fn axpy<T: Widen>(a: f32, x: &[T], y: &mut [f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += a * x.widen();
    }
}

/// [`axpy`] on 256-bit vectors: the same operations, the same bits.
///
/// # Safety
/// Only for code compiled with AVX and F16C (it is inlined into such functions).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn axpy_avx<T: Widen>(a: f32, x: &[T], y: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = x.len().min(y.len());
    let whole = n - n % LANES;
    let av = _mm256_set1_ps(a);
    for c in (0..whole).step_by(LANES) {
        let xv = T::load8(x.as_ptr().add(c));
        let yp = y.as_mut_ptr().add(c);
        _mm256_storeu_ps(
            yp,
            _mm256_add_ps(_mm256_loadu_ps(yp), _mm256_mul_ps(av, xv)),
        );
    }
    axpy(a, &x[whole..n], &mut y[whole..n]);
}

/// RMSNorm of each row of `x` (`weight.len()` values) into `out`.
pub(crate) fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let h = weight.len();
    for (xr, o) in x.chunks_exact(h).zip(out.chunks_exact_mut(h)) {
        let ms = dot(xr, xr) / h as f32;
        let inv = 1.0 / (ms + eps).sqrt();
        for ((o, &v), &w) in o.iter_mut().zip(xr).zip(weight) {
            *o = v * inv * w;
        }
    }
}

/// `e^x` for `x ≤ 0` (larger inputs are clamped to 0), to about one part in 10⁷: a degree-6
/// polynomial on `[-ln2/2, ln2/2]` after range reduction (Cephes' `expf`), in operations the
/// compiler vectorizes. Below −87 it returns 0.
#[inline(always)]
pub(crate) fn exp_nonpositive(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.0, 0.0);
    // Round x·log2(e) to the nearest integer without `floor` (which needs SSE4.1 to vectorize).
    let t = x * LOG2E - 0.5;
    let ti = t as i32; // truncates towards zero: t ≤ −0.5, so this is ceil(t)
    let fi = if (ti as f32) > t { ti - 1 } else { ti }; // floor(t)
    let n = fi + 1; // round(x·log2 e), ties up
    let nf = n as f32;
    let r = x - nf * C1 - nf * C2;
    let z = r * r;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let y = p * z + r + 1.0;
    y * f32::from_bits(((n + 127) as u32) << 23)
}

/// Softmax of `scores` in place.
#[inline(always)]
pub(crate) fn softmax(scores: &mut [f32]) {
    let max = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
    for s in scores.iter_mut() {
        *s = exp_nonpositive(*s - max);
    }
    let mut acc = [0f32; LANES];
    let chunks = scores.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for l in 0..LANES {
            acc[l] += c[l];
        }
    }
    let inv = 1.0 / (reduce(acc) + tail);
    for s in scores.iter_mut() {
        *s *= inv;
    }
}

/// `silu(gate) · up` for rows of fused `[gate ‖ up]` (`2·inter` values each) into `out`;
/// `avx2`: compiled for AVX2 (the same results, computed eight lanes at a time).
pub(crate) fn swiglu(gate_up: &[f32], inter: usize, out: &mut [f32], avx2: bool) {
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: the caller saw AVX2 on this CPU (`Isa::has_avx2`).
        return unsafe { swiglu_avx2(gate_up, inter, out) };
    }
    let _ = avx2;
    swiglu_body(gate_up, inter, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn swiglu_avx2(gate_up: &[f32], inter: usize, out: &mut [f32]) {
    swiglu_body(gate_up, inter, out)
}

#[inline(always)]
fn swiglu_body(gate_up: &[f32], inter: usize, out: &mut [f32]) {
    for (gu, o) in gate_up
        .chunks_exact(2 * inter)
        .zip(out.chunks_exact_mut(inter))
    {
        let (gate, up) = gu.split_at(inter);
        for ((o, &g), &u) in o.iter_mut().zip(gate).zip(up) {
            // σ(g) = 1 / (1 + e^−g), from an exponential of a non-positive argument.
            let e = exp_nonpositive(-g.abs());
            let sigmoid = if g >= 0.0 {
                1.0 / (1.0 + e)
            } else {
                e / (1.0 + e)
            };
            *o = g * sigmoid * u;
        }
    }
}

/// How the two values of each rotary pair sit in a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotaryLayout {
    /// Pairs `(i, i + d/2)`: Hugging Face's rotate-half convention.
    Halves,
    /// Pairs `(2i, 2i + 1)`: llama.cpp's convention, as Q and K are stored in GGUF files.
    Interleaved,
}

/// Cosines and sines `[positions.len(), head_dim / 2]` of the rotary angles `p · f`.
pub(crate) fn rotary_angles(inv_freq: &[f64], positions: &[usize]) -> (Vec<f32>, Vec<f32>) {
    let mut cos = Vec::with_capacity(positions.len() * inv_freq.len());
    let mut sin = Vec::with_capacity(cos.capacity());
    for &p in positions {
        for f in inv_freq {
            let a = p as f64 * f;
            cos.push(a.cos() as f32);
            sin.push(a.sin() as f32);
        }
    }
    (cos, sin)
}

/// Rotates one head in place by the angles whose cosines and sines are `cos`, `sin`
/// (`head_dim / 2` each).
pub(crate) fn rotate(x: &mut [f32], cos: &[f32], sin: &[f32], layout: RotaryLayout) {
    let half = x.len() / 2;
    for i in 0..half {
        let (a, b) = match layout {
            RotaryLayout::Halves => (i, i + half),
            RotaryLayout::Interleaved => (2 * i, 2 * i + 1),
        };
        let (xa, xb) = (x[a], x[b]);
        x[a] = xa * cos[i] - xb * sin[i];
        x[b] = xa * sin[i] + xb * cos[i];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_the_standard_library() {
        let mut worst = 0f64;
        for i in 0..=87_000 {
            let x = -(i as f32) / 1000.0;
            let (got, want) = (exp_nonpositive(x) as f64, (x as f64).exp());
            worst = worst.max((got - want).abs() / want);
        }
        assert!(worst < 3e-7, "relative error {worst}");
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert_eq!(exp_nonpositive(-1000.0), (-87f64).exp() as f32);
    }

    #[test]
    fn softmax_swiglu_and_norm_match_their_definitions() {
        let mut s = vec![1.0f32, -2.0, 0.5, 3.0, -0.25, 2.0, 0.0, 1.5, -1.0, 0.75];
        let want: Vec<f64> = {
            let e: Vec<f64> = s.iter().map(|&v| (v as f64 - 3.0).exp()).collect();
            let z: f64 = e.iter().sum();
            e.iter().map(|v| v / z).collect()
        };
        softmax(&mut s);
        for (g, w) in s.iter().zip(&want) {
            assert!((*g as f64 - w).abs() < 1e-6);
        }
        let gu = [-30.0f32, 0.0, 2.0, 1.5, -2.0, 3.0];
        let mut out = [0f32; 3];
        swiglu(&gu, 3, &mut out, false);
        for j in 0..3 {
            let g = gu[j] as f64;
            let want = g / (1.0 + (-g).exp()) * gu[3 + j] as f64;
            assert!((out[j] as f64 - want).abs() < 1e-6, "{j}");
        }
        let x: Vec<f32> = (0..19).map(|i| i as f32 - 7.0).collect();
        let w: Vec<f32> = (0..19).map(|i| 1.0 + i as f32 / 10.0).collect();
        let mut y = vec![0f32; 19];
        rms_norm(&x, &w, 1e-5, &mut y);
        let ms: f64 = x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / 19.0;
        for k in 0..19 {
            let want = x[k] as f64 / (ms + 1e-5).sqrt() * w[k] as f64;
            assert!((y[k] as f64 - want).abs() < 1e-5);
        }
        assert_eq!(dot(&x, &w), {
            let mut a = [0f32; 8];
            for c in 0..2 {
                for l in 0..8 {
                    a[l] += x[8 * c + l] * w[8 * c + l];
                }
            }
            reduce(a) + x[16] * w[16] + x[17] * w[17] + x[18] * w[18]
        });
    }

    #[test]
    fn half_float_products_equal_the_f32_products_of_the_converted_values_on_every_path() {
        // Lengths with and without a tail; values that f16 cannot hold exactly.
        for n in [5usize, 64, 67] {
            let q: Vec<f32> = (0..n)
                .map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0)
                .collect();
            let x: Vec<f16> = (0..n)
                .map(|i| f16::from_f32(((i * 53 % 29) as f32 - 14.0) / 3.0))
                .collect();
            let wide: Vec<f32> = x.iter().map(|v| v.to_f32()).collect();
            let d = dot(&q, &x);
            assert_eq!(d.to_bits(), dot(&q, &wide).to_bits(), "dot, n = {n}");
            let mut y16: Vec<f32> = q.iter().map(|v| v * 0.5).collect();
            let mut y32 = y16.clone();
            axpy(0.3, &x, &mut y16);
            axpy(0.3, &wide, &mut y32);
            assert_eq!(y16, y32, "axpy, n = {n}");
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("f16c") {
                #[target_feature(enable = "avx2,f16c")]
                unsafe fn both<T: Widen>(q: &[f32], x: &[T], y: &mut [f32]) -> f32 {
                    // SAFETY: compiled with AVX2 and F16C, called where the CPU has them.
                    unsafe {
                        axpy_avx(0.3, x, y);
                        dot_avx(q, x)
                    }
                }
                let mut ya: Vec<f32> = q.iter().map(|v| v * 0.5).collect();
                // SAFETY: AVX2 and F16C were detected above.
                let da = unsafe { both(&q, &x, &mut ya) };
                assert_eq!(da.to_bits(), d.to_bits(), "AVX dot of halves, n = {n}");
                assert_eq!(ya, y16, "AVX axpy of halves, n = {n}");
                let mut yw: Vec<f32> = q.iter().map(|v| v * 0.5).collect();
                // SAFETY: as above.
                let dw = unsafe { both(&q, &wide, &mut yw) };
                assert_eq!(dw.to_bits(), d.to_bits(), "AVX dot of f32, n = {n}");
                assert_eq!(yw, y16, "AVX axpy of f32, n = {n}");
            }
        }
    }

    #[test]
    fn rotation_turns_each_pair_by_its_angle_in_both_layouts() {
        let inv = [1.0, 0.25];
        let (cos, sin) = rotary_angles(&inv, &[3]);
        let x = [0.5f32, -1.0, 2.0, 0.75];
        for (layout, pairs) in [
            (RotaryLayout::Halves, [(0, 2), (1, 3)]),
            (RotaryLayout::Interleaved, [(0, 1), (2, 3)]),
        ] {
            let mut y = x;
            rotate(&mut y, &cos, &sin, layout);
            for (j, (a, b)) in pairs.into_iter().enumerate() {
                let t = 3.0 * inv[j];
                let (re, im) = (x[a] as f64, x[b] as f64);
                assert!((y[a] as f64 - (re * t.cos() - im * t.sin())).abs() < 1e-6);
                assert!((y[b] as f64 - (re * t.sin() + im * t.cos())).abs() < 1e-6);
            }
        }
    }
}
