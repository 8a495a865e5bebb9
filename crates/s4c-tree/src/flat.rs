//! Flattened trees: plain arrays for the model.

/// The ancestor-or-self relation as a bitset: row `i` has bit `j` set iff node `j` is node `i`
/// or one of its ancestors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AncestorMask {
    n: usize,
    words: usize,
    bits: Vec<u64>,
}

impl AncestorMask {
    /// An all-clear `n × n` mask.
    pub fn new(n: usize) -> Self {
        let words = n.div_ceil(64).max(1);
        AncestorMask {
            n,
            words,
            bits: vec![0; n * words],
        }
    }

    /// Side length.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Whether the mask is 0 × 0.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Sets bit `(i, j)`.
    pub fn set(&mut self, i: usize, j: usize) {
        self.bits[i * self.words + j / 64] |= 1 << (j % 64);
    }

    /// ORs row `src` into row `dst`.
    pub fn copy_row_from(&mut self, dst: usize, src: usize) {
        for w in 0..self.words {
            self.bits[dst * self.words + w] |= self.bits[src * self.words + w];
        }
    }

    /// Whether node `i` may attend to node `j`.
    pub fn is_visible(&self, i: usize, j: usize) -> bool {
        self.bits[i * self.words + j / 64] >> (j % 64) & 1 == 1
    }

    /// Row-major dense `n × n` view.
    pub fn to_dense(&self) -> Vec<bool> {
        (0..self.n)
            .flat_map(|i| (0..self.n).map(move |j| (i, j)))
            .map(|(i, j)| self.is_visible(i, j))
            .collect()
    }
}

/// A tree as arrays, node order preserved (root = 0, parents before children).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlatTree {
    /// Token of each node.
    pub tokens: Vec<u32>,
    /// Depth of each node (position offset from the prefix length).
    pub depths: Vec<usize>,
    /// Parent of each node, `-1` for the root.
    pub parents: Vec<i64>,
    /// Ancestor-or-self mask.
    pub mask: AncestorMask,
    /// For each leaf, the node indices from the root to it.
    pub retrieve: Vec<Vec<usize>>,
}

impl FlatTree {
    /// The `retrieve` table padded with `-1` to the longest path (Medusa's layout).
    pub fn retrieve_padded(&self) -> Vec<Vec<i64>> {
        let width = self.retrieve.iter().map(Vec::len).max().unwrap_or(0);
        self.retrieve
            .iter()
            .map(|p| {
                let mut row: Vec<i64> = p.iter().map(|&i| i as i64).collect();
                row.resize(width, -1);
                row
            })
            .collect()
    }
}
