//! Logits → probabilities (temperature, top-k, top-p) and seeded sampling: one implementation
//! shared by plain decoding and speculative acceptance, so both sample the same distribution.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// How the target's logits become a distribution.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    /// Softmax temperature; `0` means greedy (argmax).
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (`0` = all).
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose mass reaches `top_p` (`1` = all).
    pub top_p: f32,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams::greedy()
    }
}

impl SamplingParams {
    /// Greedy decoding.
    pub fn greedy() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
        }
    }

    /// Whether this is greedy decoding.
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }

    /// Checks the ranges; the message says what is allowed.
    pub fn validate(&self) -> Result<(), String> {
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return Err(format!("temperature {} must be ≥ 0", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top-p {} must be in (0, 1]", self.top_p));
        }
        Ok(())
    }

    /// The token at cumulative probability `u` ∈ [0, 1) of the processed distribution of
    /// `logits` (the argmax when greedy): sampling with a draw made elsewhere.
    pub fn sample_at(&self, logits: &[f32], u: f64) -> u32 {
        if self.is_greedy() {
            return argmax(logits);
        }
        index_at(&self.probabilities(logits), u)
    }

    /// The processed distribution of one row of logits (dense, sums to 1).
    ///
    /// Greedy parameters give the one-hot distribution of the argmax.
    pub fn probabilities(&self, logits: &[f32]) -> Vec<f32> {
        let n = logits.len();
        if self.is_greedy() {
            let mut p = vec![0.0; n];
            p[argmax(logits) as usize] = 1.0;
            return p;
        }
        let inv_t = 1.0 / self.temperature as f64;
        let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
        let mut p: Vec<f64> = logits
            .iter()
            .map(|&l| ((l as f64 - max) * inv_t).exp())
            .collect();
        if self.top_k > 0 && self.top_k < n {
            // Keep the k largest (ties broken towards lower ids).
            let mut idx: Vec<usize> = (0..n).collect();
            idx.select_nth_unstable_by(self.top_k - 1, |&a, &b| {
                p[b].total_cmp(&p[a]).then(a.cmp(&b))
            });
            let mut keep = vec![false; n];
            for &i in &idx[..self.top_k] {
                keep[i] = true;
            }
            for (x, k) in p.iter_mut().zip(keep) {
                if !k {
                    *x = 0.0;
                }
            }
        }
        let total: f64 = p.iter().sum();
        if self.top_p < 1.0 {
            // Tokens below (1 − top_p)·total / n together hold less than 1 − top_p of the mass,
            // so the nucleus lies entirely above that bound: sort only those candidates.
            let floor = (1.0 - self.top_p as f64) * total / n as f64;
            let mut idx: Vec<usize> = (0..n).filter(|&i| p[i] > 0.0 && p[i] >= floor).collect();
            idx.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
            let target = self.top_p as f64 * total;
            let mut cum = 0.0;
            let mut keep = vec![false; n];
            for i in idx {
                if cum >= target {
                    break;
                }
                cum += p[i];
                keep[i] = true;
            }
            for (x, k) in p.iter_mut().zip(keep) {
                if !k {
                    *x = 0.0;
                }
            }
        }
        let total: f64 = p.iter().sum();
        p.into_iter().map(|x| (x / total) as f32).collect()
    }
}

/// Index of the largest value; ties go to the lowest index.
pub fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in row.iter().enumerate() {
        if x > row[best] {
            best = i;
        }
    }
    best as u32
}

/// Draws an index from unnormalised non-negative weights.
pub fn sample_index(weights: &[f32], rng: &mut StdRng) -> u32 {
    index_at(weights, rng.random::<f64>())
}

/// The index at cumulative share `u` ∈ [0, 1) of unnormalised non-negative weights, in index
/// order (inverse-CDF sampling with a given uniform draw); indices of zero weight are never
/// chosen.
pub fn index_at(weights: &[f32], u: f64) -> u32 {
    let total: f64 = weights.iter().map(|&w| w as f64).sum();
    if total <= 0.0 {
        return argmax(weights);
    }
    let mut u = u * total;
    let mut last = 0;
    for (i, &w) in weights.iter().enumerate() {
        if w > 0.0 {
            last = i;
            u -= w as f64;
            if u < 0.0 {
                return i as u32;
            }
        }
    }
    last as u32
}

/// A seeded sampler for plain decoding.
#[derive(Debug, Clone)]
pub struct Sampler {
    /// The processing applied to logits.
    pub params: SamplingParams,
    rng: StdRng,
}

impl Sampler {
    /// A sampler with a reproducible seed.
    pub fn new(params: SamplingParams, seed: u64) -> Self {
        Sampler {
            params,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// The next token from one row of logits.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.params.is_greedy() {
            return argmax(logits);
        }
        let p = self.params.probabilities(logits);
        sample_index(&p, &mut self.rng)
    }

    /// The random generator (shared with speculative acceptance).
    pub fn rng(&mut self) -> &mut StdRng {
        &mut self.rng
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temperature_top_k_top_p_by_hand() {
        let logits = [1.0f32, 2.0, 3.0, 0.0];
        let p = SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
        }
        .probabilities(&logits);
        let z: f32 = logits.iter().map(|x| x.exp()).sum();
        for i in 0..4 {
            assert!((p[i] - logits[i].exp() / z).abs() < 1e-6);
        }
        let p = SamplingParams {
            temperature: 0.5,
            top_k: 2,
            top_p: 1.0,
        }
        .probabilities(&logits);
        let (a, b) = ((4.0f32).exp(), (6.0f32).exp());
        assert!((p[2] - b / (a + b)).abs() < 1e-6 && (p[1] - a / (a + b)).abs() < 1e-6);
        assert_eq!((p[0], p[3]), (0.0, 0.0));
        // p = [0.087, 0.237, 0.644, 0.032]. top-p 0.5: the largest token alone has 0.644 ≥ 0.5.
        let p = SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.5,
        }
        .probabilities(&logits);
        assert_eq!(p, vec![0.0, 0.0, 1.0, 0.0]);
        // top-p 0.85: needs tokens 2 and 1 (0.644 + 0.237 = 0.881).
        let p = SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.85,
        }
        .probabilities(&logits);
        assert!(p[2] > 0.0 && p[1] > 0.0 && p[0] == 0.0 && p[3] == 0.0);
        assert_eq!(
            SamplingParams::greedy().probabilities(&logits),
            vec![0.0, 0.0, 1.0, 0.0]
        );
        assert!(SamplingParams {
            temperature: -1.0,
            top_k: 0,
            top_p: 1.0
        }
        .validate()
        .is_err());
        assert!(SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.0
        }
        .validate()
        .is_err());
    }

    #[test]
    fn seeded_sampling_is_reproducible_and_follows_weights() {
        let w = [0.1f32, 0.0, 0.6, 0.3];
        let mut r1 = StdRng::seed_from_u64(3);
        let mut r2 = StdRng::seed_from_u64(3);
        let a: Vec<u32> = (0..50).map(|_| sample_index(&w, &mut r1)).collect();
        let b: Vec<u32> = (0..50).map(|_| sample_index(&w, &mut r2)).collect();
        assert_eq!(a, b);
        let mut counts = [0usize; 4];
        let mut r = StdRng::seed_from_u64(9);
        for _ in 0..100_000 {
            counts[sample_index(&w, &mut r) as usize] += 1;
        }
        assert_eq!(counts[1], 0);
        for i in 0..4 {
            assert!((counts[i] as f32 / 1e5 - w[i]).abs() < 0.01);
        }
    }
}
