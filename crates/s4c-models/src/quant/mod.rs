//! CPU kernels for weight matrices kept in their file's storage type: GGUF block quantizations
//! (Q4_0, Q4_1, Q8_0, Q4_K, Q6_K) and dense F32, F16 and BF16.
//!
//! A product `y = x · Wᵀ` of `m` activation rows by a `[out, in]` matrix runs on a thread pool,
//! split by output rows. Each weight row is read once for all `m` activation rows (in register
//! tiles of up to eight rows), so a verification block of 16 rows costs little more memory
//! traffic than one decoded row:
//!
//! - block-quantized weights meet activations quantized to 8-bit blocks of 32 ([`Q8Acts`], as
//!   llama.cpp does). On x86-64 the weights are first repacked into records of 16 interleaved
//!   rows (module `packed`), where one instruction multiplies four values of 16 (AVX-512 VNNI
//!   `vpdpbusd`) or 8 (AVX2 `vpmaddubsw`) weight rows by four activation values at once, and
//!   the floating-point work is done once per block for all those rows. On aarch64 rows stay in
//!   file order: NEON `sdot`, else widening multiplies;
//! - dense weights meet `f32` activations with `f32` fused multiply-adds.
//!
//! **Batch invariance.** Each output value is computed by the same sequence of operations
//! whatever the number of rows, the tile a row falls into and the thread that computes it, so a
//! row's result is bit-identical alone or inside a block of 64: speculative verification sees
//! exactly the logits plain decoding sees. The instruction set ([`Isa`]) is detected at run time;
//! the portable path computes the same quantities in another order (tests compare the two within
//! a tolerance).

mod acts;
#[cfg(target_arch = "x86_64")]
mod avx2_packed;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod matmul;
#[cfg(target_arch = "aarch64")]
mod neon;
mod packed;
mod portable;
#[cfg(target_arch = "x86_64")]
mod x86;

use std::sync::Arc;

use half::{bf16, f16};
use memmap2::Mmap;

use crate::error::{ModelError, Result};
use crate::gguf::{dequantize, GgmlType};
use acts::QK;

pub use acts::Q8Acts;
pub use matmul::{Linear, Threads};

/// Storage types the kernels multiply directly.
pub const KERNEL_TYPES: &str = "F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K";

/// The instruction set the kernels use, detected at run time.
///
/// Only [`Isa::detect`] and [`Isa::available`] make one, so a value always names instructions
/// the CPU has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Isa(IsaKind);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IsaKind {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx2Vnni,
    #[cfg(target_arch = "x86_64")]
    Avx512Vnni,
    #[cfg(target_arch = "aarch64")]
    Neon,
    #[cfg(target_arch = "aarch64")]
    NeonDot,
}

impl Isa {
    /// The fastest instruction set this CPU supports.
    pub fn detect() -> Isa {
        *Self::available()
            .last()
            .expect("portable is always available")
    }

    /// Plain Rust, no target-specific instructions: the reference the others are tested against.
    pub fn portable() -> Isa {
        Isa(IsaKind::Portable)
    }

    /// Every instruction set this CPU supports, slowest (portable) first.
    pub fn available() -> Vec<Isa> {
        #[allow(unused_mut)]
        let mut v = vec![Isa(IsaKind::Portable)];
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c");
            if avx2 {
                v.push(Isa(IsaKind::Avx2));
                if is_x86_feature_detected!("avxvnni") {
                    v.push(Isa(IsaKind::Avx2Vnni));
                    if is_x86_feature_detected!("avx512f")
                        && is_x86_feature_detected!("avx512bw")
                        && is_x86_feature_detected!("avx512vl")
                        && is_x86_feature_detected!("avx512dq")
                        && is_x86_feature_detected!("avx512vnni")
                    {
                        v.push(Isa(IsaKind::Avx512Vnni));
                    }
                }
            }
        }
        // NEON is part of every aarch64 CPU; `sdot` came with Armv8.2.
        #[cfg(target_arch = "aarch64")]
        {
            v.push(Isa(IsaKind::Neon));
            if std::arch::is_aarch64_feature_detected!("dotprod") {
                v.push(Isa(IsaKind::NeonDot));
            }
        }
        v
    }

    /// Whether AVX2, FMA and F16C are available (the elementwise steps use them when so).
    pub(crate) fn has_avx2(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        if matches!(
            self.0,
            IsaKind::Avx2 | IsaKind::Avx2Vnni | IsaKind::Avx512Vnni
        ) {
            return true;
        }
        false
    }

    /// A short name (`portable`, `avx2`, `avx2-vnni`, `avx512-vnni`, `neon`, `neon-dotprod`).
    pub fn name(self) -> &'static str {
        match self.0 {
            IsaKind::Portable => "portable",
            #[cfg(target_arch = "x86_64")]
            IsaKind::Avx2 => "avx2",
            #[cfg(target_arch = "x86_64")]
            IsaKind::Avx2Vnni => "avx2-vnni",
            #[cfg(target_arch = "x86_64")]
            IsaKind::Avx512Vnni => "avx512-vnni",
            #[cfg(target_arch = "aarch64")]
            IsaKind::Neon => "neon",
            #[cfg(target_arch = "aarch64")]
            IsaKind::NeonDot => "neon-dotprod",
        }
    }
}

/// The bytes of a weight matrix: owned, or a range of a memory-mapped file.
#[derive(Clone)]
pub enum WeightBytes {
    /// Bytes in memory.
    Owned(Arc<Vec<u8>>),
    /// `len` bytes at `offset` of a mapped file (shared with every other tensor of that file).
    Mapped {
        /// The mapped file.
        map: Arc<Mmap>,
        /// Where the tensor starts.
        offset: usize,
        /// Its length in bytes.
        len: usize,
    },
}

impl WeightBytes {
    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        match self {
            WeightBytes::Owned(v) => v,
            WeightBytes::Mapped { map, offset, len } => &map[*offset..*offset + *len],
        }
    }
}

impl WeightBytes {
    /// Lets the kernel drop mapped pages from memory (they are read back from the file if used
    /// again): for matrices whose repacked copy the kernels use instead.
    pub(crate) fn release_pages(&self) {
        #[cfg(unix)]
        if let WeightBytes::Mapped { map, offset, len } = self {
            // SAFETY: the map is a read-only file mapping: dropped pages hold nothing that the
            // file does not, and reading them again faults them back in.
            let _ = unsafe {
                map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, *offset, *len)
            };
        }
    }
}

impl std::fmt::Debug for WeightBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            WeightBytes::Owned(_) => "owned",
            WeightBytes::Mapped { .. } => "mapped",
        };
        write!(f, "WeightBytes({kind}, {} bytes)", self.as_slice().len())
    }
}

/// A weight matrix `[rows, cols]` (`[out, in]`) in one storage type, row-major: each row is
/// `cols / block` consecutive blocks, as in GGUF files.
#[derive(Debug, Clone)]
pub struct QMatrix {
    ty: GgmlType,
    rows: usize,
    cols: usize,
    bytes: WeightBytes,
}

impl QMatrix {
    /// Wraps `bytes` holding a `[rows, cols]` matrix of type `ty`; checks that the type is one
    /// the kernels multiply, that rows hold whole blocks and that the length is right.
    pub fn new(ty: GgmlType, rows: usize, cols: usize, bytes: WeightBytes) -> Result<Self> {
        let bad = |reason: String| ModelError::InvalidInput(format!("weight matrix: {reason}"));
        let Some((per_block, block_bytes)) = ty.block() else {
            return Err(ModelError::UnsupportedTensorType {
                tensor: "weight matrix".into(),
                dtype: ty.name(),
                supported: KERNEL_TYPES,
            });
        };
        if cols == 0 || !cols.is_multiple_of(per_block) {
            return Err(bad(format!(
                "{cols} columns of type {} (rows must hold whole blocks of {per_block})",
                ty.name()
            )));
        }
        let want = rows
            .checked_mul(cols / per_block)
            .and_then(|b| b.checked_mul(block_bytes));
        if want != Some(bytes.as_slice().len()) {
            return Err(bad(format!(
                "{} bytes for {rows}×{cols} of type {}",
                bytes.as_slice().len(),
                ty.name()
            )));
        }
        Ok(QMatrix {
            ty,
            rows,
            cols,
            bytes,
        })
    }

    /// A matrix from `f32` values, stored as `ty`: F32, F16, BF16, or Q8_0 (each block of 32
    /// values as `d = max |x| / 127` and `round(x / d)`, as llama.cpp quantizes to Q8_0).
    pub fn from_f32(rows: usize, cols: usize, data: &[f32], ty: GgmlType) -> Result<Self> {
        if data.len() != rows * cols {
            return Err(ModelError::InvalidInput(format!(
                "{} values for a {rows}×{cols} matrix",
                data.len()
            )));
        }
        let bytes: Vec<u8> = match ty {
            GgmlType::F32 => data.iter().flat_map(|x| x.to_le_bytes()).collect(),
            GgmlType::F16 => data
                .iter()
                .flat_map(|&x| f16::from_f32(x).to_le_bytes())
                .collect(),
            GgmlType::BF16 => data
                .iter()
                .flat_map(|&x| bf16::from_f32(x).to_le_bytes())
                .collect(),
            GgmlType::Q8_0 if cols.is_multiple_of(QK) => data
                .chunks_exact(QK)
                .flat_map(|block| {
                    let amax = block.iter().fold(0f32, |a, x| a.max(x.abs()));
                    let d = amax / 127.0;
                    let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
                    let q = block.iter().map(move |&x| (x * inv).round() as i8 as u8);
                    f16::from_f32(d).to_le_bytes().into_iter().chain(q)
                })
                .collect(),
            other => {
                return Err(ModelError::InvalidInput(format!(
                    "cannot store f32 values as {} (only F32, F16, BF16, and Q8_0 in rows of \
                     whole blocks of {QK})",
                    other.name()
                )))
            }
        };
        Self::new(ty, rows, cols, WeightBytes::Owned(Arc::new(bytes)))
    }

    /// The storage type.
    pub fn ty(&self) -> GgmlType {
        self.ty
    }

    /// Rows (output features).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns (input features).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes per row.
    pub fn row_bytes(&self) -> usize {
        let (per_block, block_bytes) = self.ty.block().expect("checked by new");
        self.cols / per_block * block_bytes
    }

    /// The bytes of row `r`.
    pub(crate) fn row(&self, r: usize) -> &[u8] {
        let rb = self.row_bytes();
        &self.bytes.as_slice()[r * rb..(r + 1) * rb]
    }

    /// The whole matrix in `f32`, row-major.
    pub fn dequantize(&self) -> Vec<f32> {
        dequantize(self.ty, self.bytes.as_slice(), self.rows * self.cols)
            .expect("type checked by new")
    }

    /// Rows `ids` in `f32`, row after row (embedding lookups).
    pub fn dequantize_rows(&self, ids: &[usize]) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(ids.len() * self.cols);
        for &r in ids {
            if r >= self.rows {
                return Err(ModelError::InvalidInput(format!(
                    "row {r} of a matrix of {} rows",
                    self.rows
                )));
            }
            out.extend(dequantize(self.ty, self.row(r), self.cols)?);
        }
        Ok(out)
    }

    /// Rows `ids` in order, as a new matrix of the same type (a copy of their bytes).
    pub fn select_rows(&self, ids: &[usize]) -> Result<Self> {
        let mut bytes = Vec::with_capacity(ids.len() * self.row_bytes());
        for &r in ids {
            if r >= self.rows {
                return Err(ModelError::InvalidInput(format!(
                    "row {r} of a matrix of {} rows",
                    self.rows
                )));
            }
            bytes.extend_from_slice(self.row(r));
        }
        Self::new(
            self.ty,
            ids.len(),
            self.cols,
            WeightBytes::Owned(Arc::new(bytes)),
        )
    }

    /// The same matrix converted to `ty` (F32, F16 or BF16): a dense copy of the values.
    pub fn to_dense(&self, ty: GgmlType) -> Result<Self> {
        if ty == self.ty {
            return Ok(self.clone());
        }
        Self::from_f32(self.rows, self.cols, &self.dequantize(), ty)
    }

    /// Whether the kernels multiply this type with 8-bit quantized activations.
    pub(crate) fn quantized(&self) -> bool {
        !matches!(self.ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16)
    }
}
