//! Activations quantized to 8 bits, the other operand of the block-quantized kernels (as
//! llama.cpp quantizes activations to `Q8_0`/`Q8_K` blocks).
//!
//! Each row is cut into blocks of 32 values. A block has a scale `d = max|x| / 127` and the values
//! `q = round(x / d)` in `-127..=127`; it also keeps `d · Σq` (for weight types with a minimum or
//! an offset) and, per half-block of 16, `d · Σq` (for Q6_K's 16-value sub-blocks). Blocks are
//! stored in **pairs** (64 values of one row side by side, for 512-bit kernels; an odd last block
//! is paired with zeros).

/// Values per block.
pub(crate) const QK: usize = 32;

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
        for (r, xr) in x.chunks_exact(cols).enumerate() {
            for (b, xs) in xr.chunks_exact(QK).enumerate() {
                let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
                let d = amax / 127.0;
                let id = if d > 0.0 { 1.0 / d } else { 0.0 };
                let at = ((b / 2) * rows + r) * 2 + b % 2;
                a.d[at] = d;
                let qs = &mut a.q[at * QK..(at + 1) * QK];
                for (q, &v) in qs.iter_mut().zip(xs) {
                    *q = (v * id).round() as i8;
                }
                let sum = |q: &[i8]| d * q.iter().map(|&q| q as i32).sum::<i32>() as f32;
                a.ds[r * nb + b] = sum(qs);
                a.ds16[2 * (r * nb + b)] = sum(&qs[..QK / 2]);
                a.ds16[2 * (r * nb + b) + 1] = sum(&qs[QK / 2..]);
                let (p, h) = (b / 2, b % 2);
                a.d16[(p * rows + r) * 16 + 8 * h..][..8].fill(d);
            }
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

#[cfg(test)]
mod tests {
    use super::*;

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
                    assert!((back[r * 96 + b * 32 + j] - v).abs() <= d * 0.5 + 1e-6);
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
