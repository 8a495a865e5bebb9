//! GGUF v2/v3 reader: metadata, tensor directory and dequantization to `f32`.
//!
//! The file is memory-mapped; tensors are dequantized one at a time on request. Supported tensor
//! types: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K and Q6_K.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use half::{bf16, f16};
use memmap2::Mmap;

use crate::error::{ModelError, Result};
use crate::host::HostTensor;
use crate::quant::{QMatrix, WeightBytes};

const MAGIC: &[u8; 4] = b"GGUF";
/// Storage types this reader dequantizes.
pub const SUPPORTED_TYPES: &str = "F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K";

/// A metadata value of a GGUF file.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    /// Any unsigned or signed integer, widened.
    Int(i128),
    /// A float, widened.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// A UTF-8 string.
    Str(String),
    /// An array of values.
    Array(Vec<MetaValue>),
}

/// The storage type of a GGUF tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    /// 32-bit float.
    F32,
    /// 16-bit IEEE float.
    F16,
    /// bfloat16.
    BF16,
    /// Blocks of 32: f16 scale, 32 × i8.
    Q8_0,
    /// Blocks of 32: f16 scale, 32 × 4-bit (offset 8).
    Q4_0,
    /// Blocks of 32: f16 scale, f16 min, 32 × 4-bit.
    Q4_1,
    /// Super-blocks of 256 with 6-bit sub-block scales and mins, 4-bit values.
    Q4K,
    /// Super-blocks of 256 with 8-bit sub-block scales, 6-bit values.
    Q6K,
    /// Any other type id (not loadable).
    Other(u32),
}

impl GgmlType {
    fn from_id(id: u32) -> Self {
        match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            8 => GgmlType::Q8_0,
            12 => GgmlType::Q4K,
            14 => GgmlType::Q6K,
            30 => GgmlType::BF16,
            other => GgmlType::Other(other),
        }
    }

    /// The GGML type id.
    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q8_0 => 8,
            GgmlType::Q4K => 12,
            GgmlType::Q6K => 14,
            GgmlType::BF16 => 30,
            GgmlType::Other(id) => id,
        }
    }

    /// `(elements per block, bytes per block)`, or `None` for unsupported types.
    pub fn block(self) -> Option<(usize, usize)> {
        Some(match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 | GgmlType::BF16 => (1, 2),
            GgmlType::Q8_0 => (32, 34),
            GgmlType::Q4_0 => (32, 18),
            GgmlType::Q4_1 => (32, 20),
            GgmlType::Q4K => (256, 144),
            GgmlType::Q6K => (256, 210),
            GgmlType::Other(_) => return None,
        })
    }

    /// A readable name (`Q4_1`, `F16`, …).
    pub fn name(self) -> String {
        match self {
            GgmlType::Q4K => "Q4_K".into(),
            GgmlType::Q6K => "Q6_K".into(),
            GgmlType::Other(id) => format!("ggml type {id}"),
            t => format!("{t:?}"),
        }
    }
}

/// One entry of the tensor directory.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// Shape, rows first (GGUF stores the innermost dimension first; this is reversed).
    pub shape: Vec<usize>,
    /// Storage type.
    pub ty: GgmlType,
    /// Byte offset from the start of the data section.
    pub offset: usize,
}

impl TensorInfo {
    /// The tensor's size in bytes: `None` for types this reader cannot read, and for shapes
    /// whose size overflows.
    fn byte_len(&self) -> Option<usize> {
        let (per_block, bytes) = self.ty.block()?;
        let n = self
            .shape
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))?;
        n.div_ceil(per_block).checked_mul(bytes)
    }
}

/// A memory-mapped GGUF file.
pub struct GgufFile {
    path: PathBuf,
    mmap: Arc<Mmap>,
    metadata: HashMap<String, MetaValue>,
    tensors: HashMap<String, TensorInfo>,
    data_start: usize,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        match end {
            Some(end) => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(format!(
                "truncated: needed {n} bytes at offset {}, file has {}",
                self.pos,
                self.buf.len()
            )),
        }
    }
    fn u8(&mut self) -> std::result::Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> std::result::Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn len(&mut self) -> std::result::Result<usize, String> {
        let n = self.u64()?;
        if n > self.buf.len() as u64 {
            return Err(format!(
                "length {n} at offset {} exceeds the file",
                self.pos - 8
            ));
        }
        Ok(n as usize)
    }
    fn string(&mut self) -> std::result::Result<String, String> {
        let n = self.len()?;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| "metadata string is not UTF-8".to_string())
    }
    fn value(&mut self, ty: u32, depth: usize) -> std::result::Result<MetaValue, String> {
        let b = |r: &mut Self, n: usize| -> std::result::Result<Vec<u8>, String> {
            Ok(r.take(n)?.to_vec())
        };
        Ok(match ty {
            0 => MetaValue::Int(self.u8()? as i128),
            1 => MetaValue::Int(self.u8()? as i8 as i128),
            2 => MetaValue::Int(u16::from_le_bytes(b(self, 2)?.try_into().unwrap()) as i128),
            3 => MetaValue::Int(i16::from_le_bytes(b(self, 2)?.try_into().unwrap()) as i128),
            4 => MetaValue::Int(self.u32()? as i128),
            5 => MetaValue::Int(self.u32()? as i32 as i128),
            6 => MetaValue::Float(f32::from_le_bytes(b(self, 4)?.try_into().unwrap()) as f64),
            7 => MetaValue::Bool(self.u8()? != 0),
            8 => MetaValue::Str(self.string()?),
            9 => {
                if depth > 2 {
                    return Err("metadata arrays nested too deeply".into());
                }
                let elem = self.u32()?;
                let n = self.len()?;
                let mut v = Vec::with_capacity(n.min(1 << 20));
                for _ in 0..n {
                    v.push(self.value(elem, depth + 1)?);
                }
                MetaValue::Array(v)
            }
            10 => MetaValue::Int(self.u64()? as i128),
            11 => MetaValue::Int(self.u64()? as i64 as i128),
            12 => MetaValue::Float(f64::from_le_bytes(b(self, 8)?.try_into().unwrap())),
            other => return Err(format!("unknown metadata value type {other}")),
        })
    }
}

/// `bytes` copied into an anonymous read-only map, where a mapped file would be.
pub(crate) fn map_bytes(bytes: &[u8], path: &Path, what: &'static str) -> Result<Mmap> {
    let mut map = memmap2::MmapMut::map_anon(bytes.len().max(1))
        .map_err(|e| ModelError::io(path, what, e))?;
    map[..bytes.len()].copy_from_slice(bytes);
    map.make_read_only()
        .map_err(|e| ModelError::io(path, what, e))
}

impl GgufFile {
    /// Opens and indexes a GGUF file (metadata and tensor directory; no tensor is read yet).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| ModelError::io(&path, "GGUF model file", e))?;
        // SAFETY: the map is read-only and lives as long as `GgufFile`; a file truncated while
        // mapped is the user's doing, as with any memory-mapped loader.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(&path, "GGUF", e))?;
        Self::index(path, mmap)
    }

    /// Indexes a GGUF file held in memory (copied into an anonymous map); `name` stands for its
    /// path in errors. For files that are not on disk, and for fuzzing the reader.
    pub fn from_bytes(bytes: &[u8], name: impl Into<PathBuf>) -> Result<Self> {
        let path = name.into();
        if bytes.is_empty() {
            return Err(ModelError::InvalidGguf {
                path,
                reason: "the file is empty".into(),
            });
        }
        let map = map_bytes(bytes, &path, "GGUF")?;
        Self::index(path, map)
    }

    /// Reads the header, metadata and tensor directory of a mapped file.
    fn index(path: PathBuf, mmap: Mmap) -> Result<Self> {
        let bad = |reason: String| ModelError::InvalidGguf {
            path: path.clone(),
            reason,
        };
        let mut r = Reader { buf: &mmap, pos: 0 };
        let magic = r.take(4).map_err(bad)?;
        if magic != MAGIC {
            return Err(bad(format!(
                "wrong magic {magic:02x?} (expected \"GGUF\"); is this a GGUF file?"
            )));
        }
        let version = r.u32().map_err(bad)?;
        if !(2..=3).contains(&version) {
            return Err(bad(format!(
                "unsupported GGUF version {version} (2 or 3 expected)"
            )));
        }
        let n_tensors = r.len().map_err(bad)?;
        let n_kv = r.len().map_err(bad)?;
        let mut metadata = HashMap::new();
        for _ in 0..n_kv {
            let key = r.string().map_err(bad)?;
            let ty = r.u32().map_err(bad)?;
            let val = r.value(ty, 0).map_err(bad)?;
            metadata.insert(key, val);
        }
        let mut tensors = HashMap::new();
        for _ in 0..n_tensors {
            let name = r.string().map_err(bad)?;
            let n_dims = r.u32().map_err(bad)? as usize;
            if n_dims == 0 || n_dims > 4 {
                return Err(bad(format!("tensor {name}: {n_dims} dimensions")));
            }
            let mut shape = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                shape.push(r.len().map_err(bad)?);
            }
            shape.reverse();
            let ty = GgmlType::from_id(r.u32().map_err(bad)?);
            let offset = r.u64().map_err(bad)? as usize;
            tensors.insert(name, TensorInfo { shape, ty, offset });
        }
        let align = match metadata.get("general.alignment") {
            Some(MetaValue::Int(a)) if *a > 0 => *a as usize,
            _ => 32,
        };
        let data_start = r.pos.div_ceil(align) * align;
        let gguf = GgufFile {
            path,
            mmap: Arc::new(mmap),
            metadata,
            tensors,
            data_start,
        };
        for (name, info) in &gguf.tensors {
            if info.ty.block().is_some() {
                let end = info
                    .byte_len()
                    .and_then(|bytes| data_start.checked_add(info.offset)?.checked_add(bytes));
                if end.is_none_or(|e| e > gguf.mmap.len()) {
                    return Err(ModelError::InvalidGguf {
                        path: gguf.path.clone(),
                        reason: format!(
                            "tensor {name} extends past the end of the file (truncated download?)"
                        ),
                    });
                }
            }
        }
        Ok(gguf)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// All metadata.
    pub fn metadata(&self) -> &HashMap<String, MetaValue> {
        &self.metadata
    }

    /// The tensor directory.
    pub fn tensors(&self) -> &HashMap<String, TensorInfo> {
        &self.tensors
    }

    /// Whether a tensor of that name exists.
    pub fn has_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// A string metadata value.
    pub fn meta_str(&self, key: &str) -> Option<&str> {
        match self.metadata.get(key)? {
            MetaValue::Str(s) => Some(s),
            _ => None,
        }
    }

    /// An integer metadata value (non-negative).
    pub fn meta_u64(&self, key: &str) -> Option<u64> {
        match self.metadata.get(key)? {
            MetaValue::Int(i) if *i >= 0 => Some(*i as u64),
            _ => None,
        }
    }

    /// A float (or integer) metadata value.
    pub fn meta_f64(&self, key: &str) -> Option<f64> {
        match self.metadata.get(key)? {
            MetaValue::Float(f) => Some(*f),
            MetaValue::Int(i) => Some(*i as f64),
            _ => None,
        }
    }

    /// A boolean metadata value.
    pub fn meta_bool(&self, key: &str) -> Option<bool> {
        match self.metadata.get(key)? {
            MetaValue::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The length of an array metadata value.
    pub fn meta_array_len(&self, key: &str) -> Option<usize> {
        match self.metadata.get(key)? {
            MetaValue::Array(a) => Some(a.len()),
            _ => None,
        }
    }

    /// An array of strings.
    pub fn meta_strings(&self, key: &str) -> Option<Vec<&str>> {
        match self.metadata.get(key)? {
            MetaValue::Array(a) => a
                .iter()
                .map(|v| match v {
                    MetaValue::Str(s) => Some(s.as_str()),
                    _ => None,
                })
                .collect(),
            _ => None,
        }
    }

    /// An array of numbers (integers read as floats too).
    pub fn meta_floats(&self, key: &str) -> Option<Vec<f64>> {
        match self.metadata.get(key)? {
            MetaValue::Array(a) => a
                .iter()
                .map(|v| match v {
                    MetaValue::Float(f) => Some(*f),
                    MetaValue::Int(i) => Some(*i as f64),
                    _ => None,
                })
                .collect(),
            _ => None,
        }
    }

    /// An array of integers.
    pub fn meta_ints(&self, key: &str) -> Option<Vec<i128>> {
        match self.metadata.get(key)? {
            MetaValue::Array(a) => a
                .iter()
                .map(|v| match v {
                    MetaValue::Int(i) => Some(*i),
                    _ => None,
                })
                .collect(),
            _ => None,
        }
    }

    /// A tensor's directory entry, where its bytes start in the file and how many there are.
    fn locate(&self, name: &str) -> Result<(&TensorInfo, usize, usize)> {
        let info = self
            .tensors
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor(name.to_string()))?;
        // `index` refused sizes that overflow: `None` is a type this reader cannot read.
        let len = info
            .byte_len()
            .ok_or_else(|| ModelError::UnsupportedTensorType {
                tensor: name.to_string(),
                dtype: info.ty.name(),
                supported: SUPPORTED_TYPES,
            })?;
        Ok((info, self.data_start + info.offset, len))
    }

    /// Reads and dequantizes one tensor to `f32` (shape rows first).
    pub fn tensor(&self, name: &str) -> Result<HostTensor> {
        let (info, start, len) = self.locate(name)?;
        let n: usize = info.shape.iter().product();
        let bytes = &self.mmap[start..start + len];
        let (per_block, _) = info.ty.block().expect("checked by byte_len");
        if per_block > 1 && !n.is_multiple_of(per_block) {
            return Err(ModelError::InvalidGguf {
                path: self.path.clone(),
                reason: format!(
                    "tensor {name}: {n} elements is not a multiple of the block size {per_block}"
                ),
            });
        }
        let data = dequantize(info.ty, bytes, n)?;
        Ok(HostTensor::new(info.shape.clone(), data))
    }

    /// One 2-D tensor as stored, without a copy: its bytes stay in the mapped file.
    pub fn matrix(&self, name: &str) -> Result<QMatrix> {
        let (info, start, len) = self.locate(name)?;
        let [rows, cols] = info.shape[..] else {
            return Err(ModelError::InvalidGguf {
                path: self.path.clone(),
                reason: format!(
                    "tensor {name} has shape {:?}, expected a matrix",
                    info.shape
                ),
            });
        };
        let bytes = WeightBytes::Mapped {
            map: self.mmap.clone(),
            offset: start,
            len,
        };
        QMatrix::new(info.ty, rows, cols, bytes).map_err(|e| ModelError::InvalidGguf {
            path: self.path.clone(),
            reason: format!("tensor {name}: {e}"),
        })
    }
}

/// Dequantizes `n` elements of type `ty` from `bytes` (exactly the tensor's bytes).
pub fn dequantize(ty: GgmlType, bytes: &[u8], n: usize) -> Result<Vec<f32>> {
    let mut out = vec![0f32; n];
    match ty {
        GgmlType::F32 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes(c.try_into().unwrap());
            }
        }
        GgmlType::F16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        GgmlType::BF16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = bf16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        GgmlType::Q8_0 => {
            for (o, b) in out.chunks_exact_mut(32).zip(bytes.chunks_exact(34)) {
                let d = f16_at(b, 0);
                for (j, x) in o.iter_mut().enumerate() {
                    *x = b[2 + j] as i8 as f32 * d;
                }
            }
        }
        GgmlType::Q4_0 | GgmlType::Q4_1 => {
            let (bs, qs_at) = if ty == GgmlType::Q4_0 {
                (18, 2)
            } else {
                (20, 4)
            };
            for (o, b) in out.chunks_exact_mut(32).zip(bytes.chunks_exact(bs)) {
                let d = f16_at(b, 0);
                let (m, off) = if ty == GgmlType::Q4_0 {
                    (0.0, 8.0)
                } else {
                    (f16_at(b, 2), 0.0)
                };
                for j in 0..16 {
                    let q = b[qs_at + j];
                    o[j] = ((q & 0x0F) as f32 - off) * d + m;
                    o[j + 16] = ((q >> 4) as f32 - off) * d + m;
                }
            }
        }
        GgmlType::Q4K => {
            for (o, b) in out.chunks_exact_mut(256).zip(bytes.chunks_exact(144)) {
                let d = f16_at(b, 0);
                let dmin = f16_at(b, 2);
                let scales = &b[4..16];
                let qs = &b[16..144];
                for (chunk, j) in (0..256).step_by(64).enumerate() {
                    let (sc1, m1) = scale_min_k4(2 * chunk, scales);
                    let (sc2, m2) = scale_min_k4(2 * chunk + 1, scales);
                    let (d1, mm1) = (d * sc1 as f32, dmin * m1 as f32);
                    let (d2, mm2) = (d * sc2 as f32, dmin * m2 as f32);
                    let q = &qs[32 * chunk..32 * chunk + 32];
                    for l in 0..32 {
                        o[j + l] = d1 * (q[l] & 0x0F) as f32 - mm1;
                        o[j + 32 + l] = d2 * (q[l] >> 4) as f32 - mm2;
                    }
                }
            }
        }
        GgmlType::Q6K => {
            for (o, b) in out.chunks_exact_mut(256).zip(bytes.chunks_exact(210)) {
                let ql = &b[0..128];
                let qh = &b[128..192];
                let sc = &b[192..208];
                let d = f16_at(b, 208);
                for half in 0..2 {
                    let (ql, qh, sc) = (&ql[64 * half..], &qh[32 * half..], &sc[8 * half..]);
                    let y = &mut o[128 * half..128 * half + 128];
                    for l in 0..32 {
                        let is = l / 16;
                        let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                        let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                        let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                        let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                        y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                        y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                        y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                        y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
                    }
                }
            }
        }
        GgmlType::Other(id) => {
            return Err(ModelError::UnsupportedTensorType {
                tensor: "?".into(),
                dtype: format!("ggml type {id}"),
                supported: SUPPORTED_TYPES,
            })
        }
    }
    Ok(out)
}

/// The `f16` at `b[i..i + 2]` as `f32` (block scales and minimums).
pub(crate) fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// The 6-bit scale and min of sub-block `j` of a Q4_K super-block.
pub(crate) fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Writers of minimal GGUF files, for tests of the reader and of bad input.
#[doc(hidden)]
pub mod write {
    /// Serialises a GGUF v3 file with string/u32/f32 metadata and raw tensors.
    pub struct GgufBuilder {
        kv: Vec<(String, Vec<u8>)>,
        tensors: Vec<(String, Vec<usize>, u32, Vec<u8>)>,
    }

    impl Default for GgufBuilder {
        fn default() -> Self {
            Self::new()
        }
    }

    fn string(s: &str) -> Vec<u8> {
        let mut v = (s.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(s.as_bytes());
        v
    }

    impl GgufBuilder {
        /// An empty file.
        pub fn new() -> Self {
            GgufBuilder {
                kv: vec![],
                tensors: vec![],
            }
        }
        /// Adds a u32 metadata value.
        pub fn u32(mut self, k: &str, v: u32) -> Self {
            let mut b = 4u32.to_le_bytes().to_vec();
            b.extend_from_slice(&v.to_le_bytes());
            self.kv.push((k.into(), b));
            self
        }
        /// Adds an f32 metadata value.
        pub fn f32(mut self, k: &str, v: f32) -> Self {
            let mut b = 6u32.to_le_bytes().to_vec();
            b.extend_from_slice(&v.to_le_bytes());
            self.kv.push((k.into(), b));
            self
        }
        /// Adds a string metadata value.
        pub fn str(mut self, k: &str, v: &str) -> Self {
            let mut b = 8u32.to_le_bytes().to_vec();
            b.extend(string(v));
            self.kv.push((k.into(), b));
            self
        }
        /// Adds a string-array metadata value.
        pub fn strs(mut self, k: &str, v: &[&str]) -> Self {
            let mut b = 9u32.to_le_bytes().to_vec();
            b.extend_from_slice(&8u32.to_le_bytes());
            b.extend_from_slice(&(v.len() as u64).to_le_bytes());
            for s in v {
                b.extend(string(s));
            }
            self.kv.push((k.into(), b));
            self
        }
        /// Adds a tensor (shape rows first) with raw bytes of GGML type `ty`.
        pub fn tensor(mut self, name: &str, shape: &[usize], ty: u32, bytes: Vec<u8>) -> Self {
            self.tensors.push((name.into(), shape.to_vec(), ty, bytes));
            self
        }
        /// The file's bytes.
        pub fn build(self) -> Vec<u8> {
            let mut out = b"GGUF".to_vec();
            out.extend_from_slice(&3u32.to_le_bytes());
            out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
            out.extend_from_slice(&(self.kv.len() as u64).to_le_bytes());
            for (k, v) in &self.kv {
                out.extend(string(k));
                out.extend_from_slice(v);
            }
            let mut offset = 0usize;
            let mut offsets = vec![];
            for (name, shape, ty, bytes) in &self.tensors {
                out.extend(string(name));
                out.extend_from_slice(&(shape.len() as u32).to_le_bytes());
                for d in shape.iter().rev() {
                    out.extend_from_slice(&(*d as u64).to_le_bytes());
                }
                out.extend_from_slice(&ty.to_le_bytes());
                out.extend_from_slice(&(offset as u64).to_le_bytes());
                offsets.push(offset);
                offset += bytes.len().div_ceil(32) * 32;
            }
            while !out.len().is_multiple_of(32) {
                out.push(0);
            }
            let base = out.len();
            for ((_, _, _, bytes), off) in self.tensors.iter().zip(offsets) {
                out.resize(base + off, 0);
                out.extend_from_slice(bytes);
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::write::GgufBuilder;
    use super::*;

    fn h(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_le_bytes()
    }

    #[test]
    fn q8_0_block() {
        let mut b = h(0.5).to_vec();
        b.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let out = dequantize(GgmlType::Q8_0, &b, 32).unwrap();
        for (i, x) in out.iter().enumerate() {
            assert_eq!(*x, (i as f32 - 16.0) * 0.5);
        }
    }

    #[test]
    fn q4_0_and_q4_1_blocks() {
        // byte j holds element j (low nibble) and element j + 16 (high nibble).
        let qs: Vec<u8> = (0..16).map(|j| (j as u8) | ((15 - j as u8) << 4)).collect();
        let expect_q = |i: usize| {
            if i < 16 {
                i as f32
            } else {
                (15 - (i - 16)) as f32
            }
        };
        let mut b0 = h(2.0).to_vec();
        b0.extend(&qs);
        let out0 = dequantize(GgmlType::Q4_0, &b0, 32).unwrap();
        let mut b1 = h(0.25).to_vec();
        b1.extend(h(-1.0));
        b1.extend(&qs);
        let out1 = dequantize(GgmlType::Q4_1, &b1, 32).unwrap();
        for i in 0..32 {
            assert_eq!(out0[i], (expect_q(i) - 8.0) * 2.0, "q4_0 {i}");
            assert_eq!(out1[i], expect_q(i) * 0.25 - 1.0, "q4_1 {i}");
        }
    }

    #[test]
    fn q4_k_block() {
        // Sub-block s (0..8) gets scale s+1 and min s; sub-blocks 4..8 use the packed high bits.
        let sc: [u8; 8] = [1, 2, 3, 4, 5, 6, 7, 8];
        let mn: [u8; 8] = [0, 1, 2, 3, 4, 5, 6, 7];
        let mut scales = [0u8; 12];
        for j in 0..4 {
            scales[j] = sc[j]; // low 6 bits of scale j; top 2 bits hold scale j+4's high bits (0)
            scales[j + 4] = mn[j];
            scales[j + 8] = (sc[j + 4] & 0xF) | ((mn[j + 4] & 0xF) << 4);
        }
        let mut b = h(0.5).to_vec();
        b.extend(h(0.25));
        b.extend(scales);
        // value nibble of element e: e % 16.
        for chunk in 0..4 {
            for l in 0..32 {
                let lo = ((64 * chunk + l) % 16) as u8;
                let hi = ((64 * chunk + 32 + l) % 16) as u8;
                b.push(lo | (hi << 4));
            }
        }
        let out = dequantize(GgmlType::Q4K, &b, 256).unwrap();
        for (e, x) in out.iter().enumerate() {
            let s = e / 32;
            let want = 0.5 * sc[s] as f32 * (e % 16) as f32 - 0.25 * mn[s] as f32;
            assert_eq!(*x, want, "element {e}");
        }
    }

    #[test]
    fn q6_k_block() {
        // Element e = 128*half + 32*k + l (k in 0..4): 6-bit value v(e) = e % 64, scale sc[e/16].
        let v = |e: usize| (e % 64) as u8;
        let mut ql = [0u8; 128];
        let mut qh = [0u8; 64];
        for half in 0..2 {
            for l in 0..32 {
                let e = |k: usize| v(128 * half + 32 * k + l);
                ql[64 * half + l] = (e(0) & 0xF) | ((e(2) & 0xF) << 4);
                ql[64 * half + l + 32] = (e(1) & 0xF) | ((e(3) & 0xF) << 4);
                qh[32 * half + l] =
                    (e(0) >> 4) | ((e(1) >> 4) << 2) | ((e(2) >> 4) << 4) | ((e(3) >> 4) << 6);
            }
        }
        let scales: Vec<i8> = (0..16).map(|i| i as i8 - 8).collect();
        let mut b = ql.to_vec();
        b.extend(qh);
        b.extend(scales.iter().map(|&s| s as u8));
        b.extend(h(0.125));
        let out = dequantize(GgmlType::Q6K, &b, 256).unwrap();
        for (e, x) in out.iter().enumerate() {
            let want = 0.125 * scales[e / 16] as f32 * (v(e) as f32 - 32.0);
            assert_eq!(*x, want, "element {e}");
        }
    }

    #[test]
    fn f16_bf16_f32() {
        let vals = [1.5f32, -2.0, 0.0, 65504.0];
        let b16: Vec<u8> = vals.iter().flat_map(|&x| h(x)).collect();
        assert_eq!(dequantize(GgmlType::F16, &b16, 4).unwrap(), vals);
        let bb: Vec<u8> = vals
            .iter()
            .flat_map(|&x| bf16::from_f32(x).to_le_bytes())
            .collect();
        let got = dequantize(GgmlType::BF16, &bb, 4).unwrap();
        assert_eq!(&got[..3], &vals[..3]);
        let b32: Vec<u8> = vals.iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(dequantize(GgmlType::F32, &b32, 4).unwrap(), vals);
    }

    fn write_tmp(bytes: &[u8], name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("s4c-gguf-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn reads_metadata_and_tensors() {
        let t: Vec<u8> = [1f32, 2., 3., 4., 5., 6.]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let bytes = GgufBuilder::new()
            .str("general.architecture", "llama")
            .u32("llama.block_count", 2)
            .f32("llama.rope.freq_base", 1e4)
            .strs("tokenizer.ggml.tokens", &["a", "b"])
            .tensor("w", &[2, 3], 0, t)
            .build();
        let p = write_tmp(&bytes, "ok.gguf");
        let g = GgufFile::open(&p).unwrap();
        assert_eq!(g.meta_str("general.architecture"), Some("llama"));
        assert_eq!(g.meta_u64("llama.block_count"), Some(2));
        assert_eq!(g.meta_f64("llama.rope.freq_base"), Some(1e4));
        assert_eq!(
            g.meta_strings("tokenizer.ggml.tokens").unwrap(),
            vec!["a", "b"]
        );
        let w = g.tensor("w").unwrap();
        assert_eq!(w.shape, vec![2, 3]);
        assert_eq!(w.data, vec![1., 2., 3., 4., 5., 6.]);
        assert!(matches!(
            g.tensor("nope"),
            Err(ModelError::MissingTensor(_))
        ));
    }

    #[test]
    fn bad_files_are_typed_errors() {
        let good = GgufBuilder::new()
            .tensor("w", &[4], 0, vec![0u8; 16])
            .build();
        let p = write_tmp(b"GGML\x03\0\0\0", "magic.gguf");
        assert!(
            matches!(GgufFile::open(&p), Err(ModelError::InvalidGguf { reason, .. }) if reason.contains("magic"))
        );
        let p = write_tmp(&good[..good.len() - 4], "trunc.gguf");
        assert!(matches!(
            GgufFile::open(&p),
            Err(ModelError::InvalidGguf { .. })
        ));
        let p = write_tmp(&good[..20], "trunc2.gguf");
        assert!(
            matches!(GgufFile::open(&p), Err(ModelError::InvalidGguf { reason, .. }) if reason.contains("truncated"))
        );
        let p = write_tmp(
            &GgufBuilder::new()
                .tensor("w", &[4], 99, vec![0u8; 16])
                .build(),
            "type.gguf",
        );
        let g = GgufFile::open(&p).unwrap();
        assert!(matches!(
            g.tensor("w"),
            Err(ModelError::UnsupportedTensorType { .. })
        ));
        assert!(matches!(
            GgufFile::open("/nonexistent/model.gguf"),
            Err(ModelError::NotFound { .. })
        ));
    }
}
