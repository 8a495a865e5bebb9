//! Attention masks over `[cached ‖ new]` tokens.

use burn::tensor::{backend::Backend, Bool, Tensor, TensorData};

/// Which keys each new token may attend to: `rows` new tokens × `cols = cached + rows` keys.
///
/// The causal mask is the special case of a chain; a verification tree lets each node see every
/// cached token, its ancestors and itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttentionMask {
    rows: usize,
    cols: usize,
    visible: Vec<bool>,
}

impl AttentionMask {
    /// A mask from a row-major `rows × cols` table of `visible[i * cols + j]`.
    ///
    /// Returns `None` when the table's size is not `rows × cols`.
    pub fn new(rows: usize, cols: usize, visible: Vec<bool>) -> Option<Self> {
        (visible.len() == rows * cols && cols >= rows).then_some(AttentionMask {
            rows,
            cols,
            visible,
        })
    }

    /// The causal mask of `n` new tokens after `cached` tokens.
    pub fn causal(cached: usize, n: usize) -> Self {
        let cols = cached + n;
        let visible = (0..n)
            .flat_map(|i| (0..cols).map(move |j| j <= cached + i))
            .collect();
        AttentionMask {
            rows: n,
            cols,
            visible,
        }
    }

    /// A tree mask: every new token sees all `cached` tokens and the new tokens `j` with
    /// `new_visible[i * n + j]` (its ancestors and itself).
    pub fn tree(cached: usize, n: usize, new_visible: &[bool]) -> Option<Self> {
        if new_visible.len() != n * n {
            return None;
        }
        let cols = cached + n;
        let visible = (0..n)
            .flat_map(|i| (0..cols).map(move |j| j < cached || new_visible[i * n + (j - cached)]))
            .collect();
        Some(AttentionMask {
            rows: n,
            cols,
            visible,
        })
    }

    /// Number of new tokens (rows).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of keys (columns): cached plus new.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Whether new token `i` may attend to key `j`.
    pub fn is_visible(&self, i: usize, j: usize) -> bool {
        self.visible[i * self.cols + j]
    }

    /// Burn's attention mask (`true` = masked) for grouped queries: `[1, kv_heads, group·rows,
    /// cols]`, where query row `g·rows + i` is token `i` of the `g`-th head of each group.
    pub(crate) fn to_burn<B: Backend>(
        &self,
        kv_heads: usize,
        group: usize,
        device: &B::Device,
    ) -> Tensor<B, 4, Bool> {
        let masked: Vec<bool> = self.visible.iter().map(|v| !v).collect();
        let rows = Tensor::<B, 2, Bool>::from_data(
            TensorData::new(masked, [self.rows, self.cols]),
            device,
        );
        rows.repeat_dim(0, group)
            .reshape([1, 1, group * self.rows, self.cols])
            .expand([1, kv_heads, group * self.rows, self.cols])
    }
}
