//! Host-side tensors: what loaders produce before the weights go to a device.

/// A dense `f32` tensor in host memory, shape rows first (row-major).
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    /// Shape, outermost dimension first.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub data: Vec<f32>,
}

impl HostTensor {
    /// Wraps values; `data.len()` must equal the product of `shape`.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        HostTensor { shape, data }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Permutes the rows of a Q or K projection between the two rotary layouts.
    ///
    /// `to_halves = true` turns llama.cpp's interleaved layout (GGUF: within each head, rows
    /// `2i, 2i+1` form a rotary pair) into Hugging Face's rotate-half layout (rows `i, i + d/2`);
    /// `false` does the reverse.
    pub fn permute_rotary_rows(&self, n_heads: usize, to_halves: bool) -> HostTensor {
        let rows = self.shape[0];
        let cols: usize = self.shape[1..].iter().product();
        let hd = rows / n_heads;
        let half = hd / 2;
        let mut out = vec![0f32; self.data.len()];
        for h in 0..n_heads {
            for i in 0..half {
                for s in 0..2 {
                    let interleaved = h * hd + 2 * i + s;
                    let halves = h * hd + s * half + i;
                    let (src, dst) = if to_halves {
                        (interleaved, halves)
                    } else {
                        (halves, interleaved)
                    };
                    out[dst * cols..(dst + 1) * cols]
                        .copy_from_slice(&self.data[src * cols..(src + 1) * cols]);
                }
            }
        }
        HostTensor::new(self.shape.clone(), out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotary_permutation_round_trips_and_matches_llama_cpp() {
        // One head of dim 4, one column: HF rows [a0 a1 b0 b1] (halves a, b) ↔ GGUF [a0 b0 a1 b1].
        let hf = HostTensor::new(vec![4, 1], vec![0., 1., 2., 3.]);
        let gg = hf.permute_rotary_rows(1, false);
        assert_eq!(gg.data, vec![0., 2., 1., 3.]);
        assert_eq!(gg.permute_rotary_rows(1, true), hf);
    }
}
