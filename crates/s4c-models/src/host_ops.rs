//! The elementwise and layout steps of a decoder layer on host rows, for the CPU path of
//! [`crate::Llama`] where the weight products run in [`crate::host_matmul`]: rotary embeddings
//! and the split into attention heads after the q/k/v product, the merge of heads before the
//! output product, and SwiGLU between the MLP's two products.
//!
//! Each computes exactly what the backend path of the forward computes (the same `f32`
//! operations in the same order); done here, next to data already on the host, it avoids a
//! round trip through the backend and flex's slow paths for strided views and `exp` (a 32-token
//! block spent ~45 ms of a ~200 ms forward in them on the 2-core CPU of docs/benchmarks.md).

use rayon::prelude::*;

/// Rotary cosines and sign-folded sines, `[n, head_dim]`, for `positions` (rotate-half
/// convention: `rotate_half(x) = [-x2, x1]` is `swap(x) = [x2, x1]` times the sine row, whose
/// first half is negated). The backend's table of every position is built here too.
pub fn rotary_tables(
    inv_freq: &[f64],
    positions: impl ExactSizeIterator<Item = usize>,
) -> (Vec<f32>, Vec<f32>) {
    let hd = inv_freq.len() * 2;
    let mut cos = Vec::with_capacity(positions.len() * hd);
    let mut sin = Vec::with_capacity(positions.len() * hd);
    for p in positions {
        for s in 0..2 {
            for f in inv_freq {
                let a = p as f64 * f;
                cos.push(a.cos() as f32);
                sin.push(if s == 0 { -a.sin() } else { a.sin() } as f32);
            }
        }
    }
    (cos, sin)
}

/// Shapes of one layer's attention: query heads, key/value heads, head dimension.
#[derive(Debug, Clone, Copy)]
pub struct Heads {
    /// Query heads.
    pub q: usize,
    /// Key/value heads (`q` is a multiple of it).
    pub kv: usize,
    /// Values per head.
    pub dim: usize,
}

/// Splits `n` rows of fused `[q ‖ k ‖ v]` projections into heads-major queries
/// `[q_heads, n, dim]` (= `[kv_heads, group·n, dim]`: a key head's queries side by side), keys
/// and values `[kv_heads, n, dim]`, rotating queries and keys with the `[n, dim]` tables of
/// [`rotary_tables`].
pub fn split_heads(
    qkv: &[f32],
    n: usize,
    h: Heads,
    cos: &[f32],
    sin: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let d = h.dim;
    let width = (h.q + 2 * h.kv) * d;
    debug_assert_eq!(qkv.len(), n * width);
    let mut q = vec![0f32; h.q * n * d];
    let mut k = vec![0f32; h.kv * n * d];
    let mut v = vec![0f32; h.kv * n * d];
    for i in 0..n {
        let row = &qkv[i * width..(i + 1) * width];
        let (c, s) = (&cos[i * d..(i + 1) * d], &sin[i * d..(i + 1) * d]);
        for head in 0..h.q {
            let dst = &mut q[(head * n + i) * d..(head * n + i + 1) * d];
            rotate(&row[head * d..(head + 1) * d], c, s, dst);
        }
        for head in 0..h.kv {
            let src = (h.q + head) * d;
            let dst = (head * n + i) * d;
            rotate(&row[src..src + d], c, s, &mut k[dst..dst + d]);
            let src = (h.q + h.kv + head) * d;
            v[dst..dst + d].copy_from_slice(&row[src..src + d]);
        }
    }
    (q, k, v)
}

/// `x·cos + swap_halves(x)·sin` for one head.
fn rotate(x: &[f32], cos: &[f32], sin: &[f32], out: &mut [f32]) {
    let half = x.len() / 2;
    for (dd, o) in out.iter_mut().enumerate() {
        let swapped = if dd < half {
            x[dd + half]
        } else {
            x[dd - half]
        };
        *o = x[dd] * cos[dd] + swapped * sin[dd];
    }
}

/// Heads-major attention output `[heads, n, dim]` back to `n` rows of `heads·dim`.
pub fn merge_heads(att: &[f32], n: usize, heads: usize, dim: usize) -> Vec<f32> {
    debug_assert_eq!(att.len(), heads * n * dim);
    let mut out = vec![0f32; n * heads * dim];
    for head in 0..heads {
        for i in 0..n {
            let src = (head * n + i) * dim;
            let dst = i * heads * dim + head * dim;
            out[dst..dst + dim].copy_from_slice(&att[src..src + dim]);
        }
    }
    out
}

/// `silu(gate) · up` for `n` rows of fused `[gate ‖ up]` (`2·inter` values each).
pub fn swiglu(gate_up: &[f32], n: usize, inter: usize) -> Vec<f32> {
    debug_assert_eq!(gate_up.len(), n * 2 * inter);
    let mut out = vec![0f32; n * inter];
    out.par_chunks_mut(inter)
        .zip(gate_up.par_chunks(2 * inter))
        .for_each(|(o, gu)| {
            let (gate, up) = gu.split_at(inter);
            for ((o, &g), &u) in o.iter_mut().zip(gate).zip(up) {
                *o = g * sigmoid(g) * u;
            }
        });
    out
}

/// The logistic function, computed as the backend computes it (no overflow for either sign).
fn sigmoid(x: f32) -> f32 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_split_and_merge_by_index() {
        // 2 rows, 2 query heads, 1 kv head, dim 2; cos 1 and sin 0 leave values unrotated.
        let h = Heads {
            q: 2,
            kv: 1,
            dim: 2,
        };
        let qkv: Vec<f32> = (0..2 * 8).map(|x| x as f32).collect();
        let (cos, sin) = (vec![1.0; 4], vec![0.0; 4]);
        let (q, k, v) = split_heads(&qkv, 2, h, &cos, &sin);
        // Row i = [q0 q0 q1 q1 k k v v] at offset 8i; queries heads-major.
        assert_eq!(q, vec![0., 1., 8., 9., 2., 3., 10., 11.]);
        assert_eq!(k, vec![4., 5., 12., 13.]);
        assert_eq!(v, vec![6., 7., 14., 15.]);
        assert_eq!(
            merge_heads(&q, 2, 2, 2),
            vec![0., 1., 2., 3., 8., 9., 10., 11.]
        );
    }

    #[test]
    fn rotation_matches_complex_multiplication() {
        // Rotate-half pairs (x_j, x_{j+d/2}) turn by the angle p·f_j.
        let inv = [1.0, 0.25];
        let (cos, sin) = rotary_tables(&inv, [3].into_iter());
        let x = [0.5f32, -1.0, 2.0, 0.75];
        let mut out = [0f32; 4];
        rotate(&x, &cos, &sin, &mut out);
        for j in 0..2 {
            let a = 3.0 * inv[j];
            let (re, im) = (x[j] as f64, x[j + 2] as f64);
            let want = (re * a.cos() - im * a.sin(), re * a.sin() + im * a.cos());
            assert!((out[j] as f64 - want.0).abs() < 1e-6);
            assert!((out[j + 2] as f64 - want.1).abs() < 1e-6);
        }
    }

    #[test]
    fn swiglu_is_silu_of_gate_times_up() {
        let gu = [-30.0f32, 0.0, 2.0, 1.5, -2.0, 3.0];
        let out = swiglu(&gu, 1, 3);
        for j in 0..3 {
            let g = gu[j] as f64;
            let want = g / (1.0 + (-g).exp()) * gu[3 + j] as f64;
            assert!(
                (out[j] as f64 - want).abs() < 1e-6,
                "{j}: {} vs {want}",
                out[j]
            );
        }
    }
}
