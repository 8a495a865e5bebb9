//! The key/value cache: preallocated per layer, compacted after tree verification; on the
//! backend's device (tensor engine) or in host memory (CPU engine).

use burn::tensor::{backend::Backend, DType, Int, Tensor, TensorData};

use crate::config::LlamaConfig;
use crate::cpu::HostKv;
use crate::error::{ModelError, Result};

/// Keys and values of every layer, of which the first `len` slots are valid.
///
/// A forward pass appends its new tokens at `len..len + n` (remembering where the block started);
/// after verification, [`KvCache::commit`] keeps only the accepted entries of that block, moved into
/// contiguous slots, and [`KvCache::truncate`] rolls back. Each model makes its own with
/// [`crate::CausalLm::new_cache`].
pub struct KvCache<B: Backend> {
    store: Store<B>,
    len: usize,
    block_start: usize,
    capacity: usize,
}

enum Store<B: Backend> {
    /// `[1, kv_heads, capacity, head_dim]` per layer on the device.
    Device {
        keys: Vec<Option<Tensor<B, 4>>>,
        values: Vec<Option<Tensor<B, 4>>>,
    },
    /// Host memory, for the CPU engine.
    Host(HostKv),
}

impl<B: Backend> KvCache<B> {
    /// An empty device cache for `capacity` tokens of a model with `config`, stored in `dtype`.
    pub(crate) fn new(
        config: &LlamaConfig,
        capacity: usize,
        device: &B::Device,
        dtype: DType,
    ) -> Self {
        let shape = [1, config.num_kv_heads, capacity, config.head_dim];
        let mk = || Some(Tensor::<B, 4>::zeros(shape, (device, dtype)));
        KvCache {
            store: Store::Device {
                keys: (0..config.num_layers).map(|_| mk()).collect(),
                values: (0..config.num_layers).map(|_| mk()).collect(),
            },
            len: 0,
            block_start: 0,
            capacity,
        }
    }

    /// An empty host cache.
    pub(crate) fn host(kv: HostKv) -> Self {
        KvCache {
            capacity: kv.capacity(),
            store: Store::Host(kv),
            len: 0,
            block_start: 0,
        }
    }

    /// The host store, for the CPU engine.
    pub(crate) fn host_mut(&mut self) -> Option<&mut HostKv> {
        match &mut self.store {
            Store::Host(kv) => Some(kv),
            Store::Device { .. } => None,
        }
    }

    /// Number of valid entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the cache holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Maximum number of entries.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Where the block appended by the latest forward pass starts.
    pub fn block_start(&self) -> usize {
        self.block_start
    }

    /// Forgets every entry from `n` on.
    pub fn truncate(&mut self, n: usize) {
        self.len = self.len.min(n);
        self.block_start = self.block_start.min(self.len);
    }

    /// Empties the cache (keeping its memory).
    pub fn clear(&mut self) {
        self.truncate(0);
    }

    /// Makes room for `capacity` entries (at most the model's context length), keeping the
    /// valid ones: a cache kept from one generation can serve a longer one. Nothing happens when
    /// it already has the room.
    pub fn reserve(&mut self, capacity: usize) {
        if capacity <= self.capacity {
            return;
        }
        match &mut self.store {
            Store::Host(kv) => kv.grow(capacity, self.len),
            Store::Device { keys, values } => {
                for slot in keys.iter_mut().chain(values.iter_mut()) {
                    let t = slot.take().expect("cache tensor present between calls");
                    let [one, heads, have, hd] = t.dims();
                    let room =
                        Tensor::zeros([one, heads, capacity - have, hd], (&t.device(), t.dtype()));
                    *slot = Some(Tensor::cat(vec![t, room], 2));
                }
            }
        }
        self.capacity = capacity;
    }

    /// Keeps, of the block appended by the latest forward pass, the entries at offsets `keep`
    /// (in that order), moved to the slots right after the block's start; drops the rest.
    ///
    /// `keep` are offsets into the block (tree node indices when the block was a verification
    /// tree). On a device: one gather and one slice-assign per layer; nothing is read back.
    pub fn commit(&mut self, keep: &[usize]) -> Result<()> {
        let start = self.block_start;
        let block = self.len - start;
        if let Some(&bad) = keep.iter().find(|&&i| i >= block) {
            return Err(ModelError::InvalidInput(format!(
                "commit: offset {bad} is outside the last block of {block} entries"
            )));
        }
        let is_prefix = keep.iter().enumerate().all(|(i, &k)| i == k);
        if !is_prefix {
            let (keys, values) = match &mut self.store {
                Store::Host(kv) => {
                    kv.compact(start, block, keep)?;
                    self.len = start + keep.len();
                    return Ok(());
                }
                Store::Device { keys, values } => (keys, values),
            };
            let device = keys[0]
                .as_ref()
                .expect("cache tensor present between calls")
                .device();
            let idx: Vec<i64> = keep.iter().map(|&k| (start + k) as i64).collect();
            let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(idx, [keep.len()]), &device);
            for slot in keys.iter_mut().chain(values.iter_mut()) {
                let t = slot.take().expect("cache tensor present between calls");
                let kept = t.clone().select(2, idx.clone());
                let dims = t.dims();
                let t = t.slice_assign(
                    [0..1, 0..dims[1], start..start + keep.len(), 0..dims[3]],
                    kept,
                );
                *slot = Some(t);
            }
        }
        self.len = start + keep.len();
        Ok(())
    }

    /// Writes the keys and values of `n` new tokens of `layer` at `len..len + n` and returns the
    /// valid prefix `[.., 0..len + n, ..]` of both. Call [`KvCache::advance`] after the last layer.
    pub(crate) fn append(
        &mut self,
        layer: usize,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
    ) -> Result<(Tensor<B, 4>, Tensor<B, 4>)> {
        let [_, heads, n, hd] = k.dims();
        let (start, end) = (self.len, self.len + n);
        let Store::Device { keys, values } = &mut self.store else {
            return Err(ModelError::InvalidInput(
                "a host cache was given to a tensor model; use the model's own new_cache".into(),
            ));
        };
        let mut out = [k, v]
            .into_iter()
            .zip([&mut keys[layer], &mut values[layer]])
            .map(|(new, slot)| {
                let t = slot.take().expect("cache tensor present between calls");
                let t = t.slice_assign([0..1, 0..heads, start..end, 0..hd], new);
                let valid = t.clone().slice([0..1, 0..heads, 0..end, 0..hd]);
                *slot = Some(t);
                valid
            });
        let (k, v) = (out.next(), out.next());
        Ok((k.expect("two tensors"), v.expect("two tensors")))
    }

    /// Marks `n` appended tokens as valid (end of a forward pass).
    pub(crate) fn advance(&mut self, n: usize) {
        self.block_start = self.len;
        self.len += n;
    }
}
