//! Weight matrices repacked 16 rows at a time for the x86 interleaved kernels (Q4_0, Q4_1, Q8_0,
//! Q4_K, Q6_K): [`super::avx512`] with AVX-512 VNNI, [`super::avx2_packed`] with AVX2.
//!
//! In a file, a row's blocks follow each other. Here the blocks of 16 rows are interleaved: for
//! each group of 16 rows and each block of 32 columns, one record holds the block's values so that
//! 32 bits of a 512-bit vector are four values of one row (lane `j` = row `j` of the group; a
//! 256-bit half holds rows `0..8` or `8..16`), then the 16 scales (f16) and, for Q4_1, the 16
//! minimums (f16). A kernel multiplies such a vector by four activation values broadcast to every
//! lane, so eight `vpdpbusd` (or eight `vpmaddubsw` per half) give the exact integer dot products
//! of one block for 16 rows at once, and the floating-point work — one conversion, the scale
//! product and two fused multiply-adds — is done once per block and 16 outputs instead of once
//! per block and output. A verification block of 16 activation rows costs about four times less
//! arithmetic than with rows in file order, and one decoded row reads the same number of bytes
//! as the file holds.
//!
//! Every output value is computed the same way whatever the number of activation rows:
//!
//! ```text
//! acc = 0
//! for each block b:  acc = fma(Σ u·q, d_w · d_x, acc);  acc = fma(m_w, d_x·Σq, acc)
//! ```
//!
//! with `u` the weight values as unsigned integers (Q4: the nibble, Q8_0: `w + 128`), `q` the
//! activation values, and `m_w` the weight block's minimum (Q4_1), `−8·d` (Q4_0), `−128·d`
//! (Q8_0) or `−(dmin · m)` (Q4_K, whose `d_w` is `d · sc`). Q6_K has a scale per 16 values, so
//! each half of a block has its own two terms, the first half's before the second's:
//!
//! ```text
//! acc = fma(Σ₀ u·q, d_w₀ · d_x, acc);  acc = fma(Σ₁ u·q, d_w₁ · d_x, acc)
//! acc = fma(m_w₀, d_x·Σ₀q, acc);       acc = fma(m_w₁, d_x·Σ₁q, acc)
//! ```
//!
//! with `u` the 6-bit value, `d_w = d · sc` and `m_w = −32 · d_w`. [`reference()`] computes exactly
//! that in plain Rust; the kernel's tests compare the two bit for bit.

use std::ops::Range;

use half::f16;

use super::acts::{Q8Acts, QK};
use super::QMatrix;
use crate::gguf::GgmlType;

/// Weight rows per record (lanes of a 512-bit vector of 32-bit values).
pub(crate) const GROUP: usize = 16;

/// The weight types that can be repacked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PackedKind {
    /// Q4_0: nibbles, scale; minimum `−8·d`.
    Q4_0,
    /// Q4_1: nibbles, scale and minimum.
    Q4_1,
    /// Q8_0: `w + 128` as unsigned bytes, scale; offset `−128·d`.
    Q8_0,
    /// Q4_K: nibbles, 6-bit scale and minimum per block of 32, `d` and `dmin` per super-block
    /// of 256 (kept apart, [`Packed::supers`]); scale `d · sc`, minimum `−(dmin · m)`.
    Q4K,
    /// Q6_K: 6-bit values as nibbles plus 2-bit high parts, an 8-bit signed scale per 16 values,
    /// `d` per super-block of 256 (kept apart); scale `d · sc`, minimum `−32 · d · sc`.
    Q6K,
}

impl PackedKind {
    fn of(ty: GgmlType) -> Option<Self> {
        match ty {
            GgmlType::Q4_0 => Some(PackedKind::Q4_0),
            GgmlType::Q4_1 => Some(PackedKind::Q4_1),
            GgmlType::Q8_0 => Some(PackedKind::Q8_0),
            GgmlType::Q4K => Some(PackedKind::Q4K),
            GgmlType::Q6K => Some(PackedKind::Q6K),
            _ => None,
        }
    }

    /// Bytes of values per record: 16 rows × 16 bytes of nibbles (Q6_K: then 16 rows × 8 bytes
    /// of 2-bit high parts, [`Packed::super_blocks`]), or 16 rows × 32 bytes.
    pub(crate) const fn value_bytes(self) -> usize {
        match self {
            PackedKind::Q4_0 | PackedKind::Q4_1 | PackedKind::Q4K => GROUP * QK / 2,
            PackedKind::Q6K => GROUP * QK / 2 + GROUP * QK / 4,
            PackedKind::Q8_0 => GROUP * QK,
        }
    }

    /// Bytes per record: values, 16 f16 scales, and 16 f16 minimums for Q4_1; for Q4_K
    /// values, 16 6-bit scales and 16 6-bit minimums (a byte each); for Q6_K values, the 16
    /// scales of the first half-blocks and the 16 of the second (signed bytes).
    pub(crate) const fn record_bytes(self) -> usize {
        let mins = match self {
            PackedKind::Q4_1 => 2 * GROUP,
            _ => 0,
        };
        self.value_bytes() + 2 * GROUP + mins
    }

    /// Bytes per super-block of 256 columns kept apart: Q4_K's 16 `d` and 16 `dmin`, Q6_K's
    /// 16 `d` (f16); none for the other types.
    pub(crate) const fn super_bytes(self) -> usize {
        match self {
            PackedKind::Q4K => 4 * GROUP,
            PackedKind::Q6K => 2 * GROUP,
            _ => 0,
        }
    }

    /// The minimum of a block from its scale and stored minimum.
    fn min(self, d: f32, m: f32) -> f32 {
        match self {
            PackedKind::Q4_0 => -8.0 * d,
            PackedKind::Q4_1 | PackedKind::Q4K => m,
            PackedKind::Q6K => -32.0 * d,
            PackedKind::Q8_0 => -128.0 * d,
        }
    }
}

/// A matrix in interleaved records: group `g` (rows `16g..16g + 16`), block `b` at record
/// `g · blocks + b`. Rows past the matrix's last (when it has no multiple of 16) are zeros.
pub(crate) struct Packed {
    pub(crate) kind: PackedKind,
    pub(crate) rows: usize,
    pub(crate) blocks: usize,
    pub(crate) data: Vec<u8>,
    /// Q4_K and Q6_K: group `g`, super-block `s` at `(g · blocks / 8 + s) ·`
    /// [`PackedKind::super_bytes`]: 16 `d` (f16), then for Q4_K 16 `dmin`.
    pub(crate) supers: Vec<u8>,
}

impl std::fmt::Debug for Packed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Packed({:?}, {} rows, {} blocks)",
            self.kind, self.rows, self.blocks
        )
    }
}

impl Packed {
    /// `m` repacked, or `None` when its type has no interleaved form.
    pub(crate) fn new(m: &QMatrix) -> Option<Self> {
        let kind = PackedKind::of(m.ty())?;
        let (rows, blocks) = (m.rows(), m.cols() / QK);
        if matches!(kind, PackedKind::Q4K | PackedKind::Q6K) {
            return Some(Self::super_blocks(m, kind, rows, blocks));
        }
        let (rec, vb) = (kind.record_bytes(), kind.value_bytes());
        let mut data = vec![0u8; rows.div_ceil(GROUP) * blocks * rec];
        let src_block = match kind {
            PackedKind::Q4_0 => 18,
            PackedKind::Q4_1 => 20,
            _ => 34,
        };
        for r in 0..rows {
            let (g, j) = (r / GROUP, r % GROUP);
            let row = m.row(r);
            for b in 0..blocks {
                let src = &row[b * src_block..(b + 1) * src_block];
                let dst = &mut data[(g * blocks + b) * rec..][..rec];
                if kind == PackedKind::Q8_0 {
                    for k in 0..8 {
                        for t in 0..4 {
                            dst[(k * GROUP + j) * 4 + t] = src[2 + 4 * k + t] ^ 0x80;
                        }
                    }
                } else {
                    // Q4_0 and Q4_1 nibbles are already in the records' order.
                    let qs = &src[src_block - QK / 2..];
                    for k in 0..4 {
                        dst[(k * GROUP + j) * 4..][..4].copy_from_slice(&qs[4 * k..4 * k + 4]);
                    }
                }
                dst[vb + 2 * j..][..2].copy_from_slice(&src[..2]);
                if kind == PackedKind::Q4_1 {
                    dst[vb + 2 * GROUP + 2 * j..][..2].copy_from_slice(&src[2..4]);
                }
            }
        }
        Some(Packed {
            kind,
            rows,
            blocks,
            data,
            supers: Vec::new(),
        })
    }

    /// Q4_K and Q6_K: each sub-block of 32 becomes a record, each super-block's `d` (and Q4_K's
    /// `dmin`) go to [`Packed::supers`]. The values' low 4 bits are stored as the Q4 types'
    /// nibbles (value `4k + t` in the low nibble of byte `t` of lane `j` of vector `k`, value
    /// `16 + 4k + t` in the high one). Q6_K's 2-bit high parts follow in two vectors, where byte
    /// `4j + t` of vector `h` holds those of vectors `k = 2h, 2h + 4, 2h + 1, 2h + 5` of the
    /// eight the kernel multiplies (bits 0–1, 2–3, 4–5, 6–7). Then each row's two scale bytes:
    /// Q4_K's 6-bit scale and minimum, Q6_K's signed scales of the two halves.
    fn super_blocks(m: &QMatrix, kind: PackedKind, rows: usize, blocks: usize) -> Self {
        let (groups, rec, vb) = (
            rows.div_ceil(GROUP),
            kind.record_bytes(),
            kind.value_bytes(),
        );
        let (sb, sup_bytes, nib) = (blocks / 8, kind.super_bytes(), GROUP * QK / 2);
        let block_bytes = if kind == PackedKind::Q4K { 144 } else { 210 };
        let mut data = vec![0u8; groups * blocks * rec];
        let mut supers = vec![0u8; groups * sb * sup_bytes];
        for r in 0..rows {
            let (g, j) = (r / GROUP, r % GROUP);
            let row = m.row(r);
            for s in 0..sb {
                let blk = &row[s * block_bytes..(s + 1) * block_bytes];
                let sup = &mut supers[(g * sb + s) * sup_bytes..];
                if kind == PackedKind::Q4K {
                    sup[2 * j..2 * j + 2].copy_from_slice(&blk[..2]);
                    sup[2 * GROUP + 2 * j..][..2].copy_from_slice(&blk[2..4]);
                } else {
                    sup[2 * j..2 * j + 2].copy_from_slice(&blk[208..210]);
                }
                for t in 0..8 {
                    let (values, scales) = sub_block(kind, blk, t);
                    let dst = &mut data[(g * blocks + s * 8 + t) * rec..][..rec];
                    for (v, &u) in values.iter().enumerate() {
                        let (k, i) = (v / 4, v % 4);
                        dst[((k % 4) * GROUP + j) * 4 + i] |= (u & 0x0F) << (4 * (k / 4));
                        if kind == PackedKind::Q6K {
                            // Vector k's high parts: vector (k % 4) / 2, bits 4·(k % 2) + 2·(k / 4).
                            let shift = 4 * ((k % 4) % 2) + 2 * (k / 4);
                            dst[nib + ((k % 4) / 2) * GROUP * 4 + 4 * j + i] |= (u >> 4) << shift;
                        }
                    }
                    dst[vb + j] = scales[0];
                    dst[vb + GROUP + j] = scales[1];
                }
            }
        }
        Packed {
            kind,
            rows,
            blocks,
            data,
            supers,
        }
    }

    /// The scale and minimum of row `j` of group `g` in block `b` (the kernels' operands; for
    /// Q6_K those of the block's first half, [`Packed::q6k_second`] gives the second's).
    pub(crate) fn scale_min(&self, g: usize, b: usize, j: usize) -> (f32, f32) {
        let f = |bytes: &[u8]| f16::from_le_bytes([bytes[0], bytes[1]]).to_f32();
        let rec = self.record(g, b);
        let vb = self.kind.value_bytes();
        match self.kind {
            PackedKind::Q4K => {
                let sup = self.super_block(g, b);
                let (d, dmin) = (f(&sup[2 * j..]), f(&sup[2 * GROUP + 2 * j..]));
                (d * rec[vb + j] as f32, -(dmin * rec[vb + GROUP + j] as f32))
            }
            PackedKind::Q6K => {
                let dw = f(&self.super_block(g, b)[2 * j..]) * rec[vb + j] as i8 as f32;
                (dw, self.kind.min(dw, 0.0))
            }
            kind => {
                let d = f(&rec[vb + 2 * j..]);
                let m = match kind {
                    PackedKind::Q4_1 => f(&rec[vb + 2 * GROUP + 2 * j..]),
                    _ => 0.0,
                };
                (d, kind.min(d, m))
            }
        }
    }

    /// Q6_K: the scale and minimum of the second half of block `b` of row `j` of group `g`.
    pub(crate) fn q6k_second(&self, g: usize, b: usize, j: usize) -> (f32, f32) {
        let f = |bytes: &[u8]| f16::from_le_bytes([bytes[0], bytes[1]]).to_f32();
        let sc = self.record(g, b)[self.kind.value_bytes() + GROUP + j];
        let dw = f(&self.super_block(g, b)[2 * j..]) * sc as i8 as f32;
        (dw, self.kind.min(dw, 0.0))
    }

    /// For the kernels: record `b` of group `g` and the bytes kept apart for its super-block
    /// (none for the types without), as pointers. With `ahead`, the same record of the next
    /// group is requested from memory meanwhile (the first tile of a group does so; the later
    /// tiles find their records in cache).
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    pub(crate) fn block_ptrs(&self, g: usize, b: usize, ahead: bool) -> (*const u8, *const u8) {
        let rec = self.kind.record_bytes();
        let at = (g * self.blocks + b) * rec;
        if ahead {
            let next = self.data.as_ptr().wrapping_add(at + self.blocks * rec);
            for line in (0..rec).step_by(64) {
                // SAFETY: a prefetch only hints; an address past the data is never read.
                unsafe {
                    std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                        next.wrapping_add(line).cast(),
                    )
                };
            }
        }
        (
            self.data[at..at + rec].as_ptr(),
            self.super_block(g, b).as_ptr(),
        )
    }

    /// The bytes kept apart for the super-block holding block `b` of group `g`.
    fn super_block(&self, g: usize, b: usize) -> &[u8] {
        let sb = self.kind.super_bytes();
        &self.supers[(g * self.blocks / 8 + b / 8) * sb..][..sb]
    }

    /// Value `t` (`0..32`) of block `b` of row `j` of group `g` as an unsigned integer.
    fn value(&self, g: usize, b: usize, j: usize, t: usize) -> u8 {
        let rec = self.record(g, b);
        let (k, byte) = (t / 4, t % 4);
        if self.kind == PackedKind::Q8_0 {
            return rec[(k * GROUP + j) * 4 + byte];
        }
        let low = rec[((k % 4) * GROUP + j) * 4 + byte] >> (4 * (k / 4)) & 0x0F;
        if self.kind != PackedKind::Q6K {
            return low;
        }
        let high = rec[GROUP * QK / 2 + ((k % 4) / 2) * GROUP * 4 + 4 * j + byte];
        low | ((high >> (4 * (k % 2) + 2 * (k / 4))) & 3) << 4
    }

    /// Groups of 16 rows.
    #[cfg(test)]
    pub(crate) fn groups(&self) -> usize {
        self.rows.div_ceil(GROUP)
    }

    /// Record `b` of group `g`.
    pub(crate) fn record(&self, g: usize, b: usize) -> &[u8] {
        let rec = self.kind.record_bytes();
        &self.data[(g * self.blocks + b) * rec..][..rec]
    }
}

/// The 32 values (unsigned: Q4_K 4-bit, Q6_K 6-bit) of sub-block `t` of a Q4_K or Q6_K
/// super-block `blk`, and its two scale bytes (Q4_K: scale and minimum; Q6_K: the halves'
/// scales).
fn sub_block(kind: PackedKind, blk: &[u8], t: usize) -> ([u8; QK], [u8; 2]) {
    let mut values = [0u8; QK];
    if kind == PackedKind::Q4K {
        let (sc, mn) = crate::gguf::scale_min_k4(t, &blk[4..16]);
        let run = &blk[16 + 32 * (t / 2)..][..32];
        for (v, u) in values.iter_mut().enumerate() {
            *u = (run[v] >> (4 * (t % 2))) & 0x0F;
        }
        (values, [sc, mn])
    } else {
        let (ql, qh, sc) = super::portable::q6k_half(blk, t / 4);
        for (v, u) in values.iter_mut().enumerate() {
            *u = super::portable::q6k_value(ql, qh, t % 4, v);
        }
        (values, [sc[2 * (t % 4)], sc[2 * (t % 4) + 1]])
    }
}

/// Runs `$tile::<R>(p, g, a, r0, dst)` for every group `g` of `$groups` (its outputs one after
/// the other in `$out`, as [`reference()`] writes them) over the activation rows in tiles of at
/// most `$most` (≤ 8) rows, then the rest.
#[cfg(target_arch = "x86_64")]
macro_rules! run_tiles {
    ($tile:ident, $p:expr, $groups:expr, $a:expr, $out:expr, $most:expr) => {{
        let (p, a, most) = ($p, $a, $most);
        let n = a.rows;
        debug_assert!($out.len() >= $groups.len() * n * GROUP);
        for (gi, g) in $groups.enumerate() {
            let o = $out.as_mut_ptr().add(gi * n * GROUP);
            let mut r0 = 0;
            while r0 < n {
                let dst = o.add(r0 * GROUP);
                match (n - r0).min(most) {
                    1 => $tile::<1>(p, g, a, r0, dst),
                    2 => $tile::<2>(p, g, a, r0, dst),
                    3 => $tile::<3>(p, g, a, r0, dst),
                    4 => $tile::<4>(p, g, a, r0, dst),
                    5 => $tile::<5>(p, g, a, r0, dst),
                    6 => $tile::<6>(p, g, a, r0, dst),
                    7 => $tile::<7>(p, g, a, r0, dst),
                    _ => $tile::<8>(p, g, a, r0, dst),
                }
                r0 += most;
            }
        }
    }};
}
#[cfg(target_arch = "x86_64")]
pub(crate) use run_tiles;

/// Where a block's activations are: its 32 values start at `q[at · 32]`, its scale is `d[at]`.
#[inline(always)]
pub(crate) fn act_index(a: &Q8Acts, r: usize, b: usize) -> usize {
    ((b / 2) * a.rows + r) * 2 + b % 2
}

/// `out[i · 16 + j] = W[16g + j] · x_i` for each group `g` of `groups` (one after the other) and
/// every activation row `i`, computed as the module documentation says, in plain Rust.
pub(crate) fn reference(p: &Packed, groups: Range<usize>, a: &Q8Acts, out: &mut [f32]) {
    let n = a.rows;
    for (gi, g) in groups.enumerate() {
        let out = &mut out[gi * n * GROUP..(gi + 1) * n * GROUP];
        for i in 0..n {
            for j in 0..GROUP {
                let mut acc = 0f32;
                for b in 0..p.blocks {
                    let at = act_index(a, i, b);
                    let q = &a.q[at * QK..(at + 1) * QK];
                    let sum = |t: Range<usize>| -> f32 {
                        t.map(|t| p.value(g, b, j, t) as i32 * q[t] as i32)
                            .sum::<i32>() as f32
                    };
                    let (d, m) = p.scale_min(g, b, j);
                    if p.kind == PackedKind::Q6K {
                        let (d1, m1) = p.q6k_second(g, b, j);
                        let sums = &a.ds16[2 * (i * p.blocks + b)..];
                        acc = sum(0..QK / 2).mul_add(d * a.d[at], acc);
                        acc = sum(QK / 2..QK).mul_add(d1 * a.d[at], acc);
                        acc = m.mul_add(sums[0], acc);
                        acc = m1.mul_add(sums[1], acc);
                    } else {
                        acc = sum(0..QK).mul_add(d * a.d[at], acc);
                        acc = m.mul_add(a.ds[i * p.blocks + b], acc);
                    }
                }
                out[i * GROUP + j] = acc;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::Isa;
    use crate::testing::random_matrix;

    /// Every type with an interleaved form.
    const TYPES: [GgmlType; 5] = [
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q8_0,
        GgmlType::Q4K,
        GgmlType::Q6K,
    ];

    #[test]
    fn every_interleaved_kernel_equals_the_reference_bit_for_bit() {
        for ty in TYPES {
            // 19 blocks (K types: 16): tiles of 8 activation rows, then the rest, for each count.
            let rows = 48;
            let cols = if matches!(ty, GgmlType::Q4K | GgmlType::Q6K) {
                512
            } else {
                608
            };
            let p = Packed::new(&random_matrix(ty, rows, cols, 17).unwrap()).unwrap();
            for n in [1, 2, 3, 7, 8, 9, 16, 21] {
                let x: Vec<f32> = (0..n * cols)
                    .map(|i| ((i * 104_729 % 1009) as f32 - 504.0) / 300.0)
                    .collect();
                let a = Q8Acts::quantize(&x, n, cols);
                let mut want = vec![0f32; n * GROUP];
                let mut got = want.clone();
                for isa in Isa::available().into_iter().filter(|i| i.packs()) {
                    for g in 0..p.groups() {
                        reference(&p, g..g + 1, &a, &mut want);
                        isa.packed(&p, g, &a, &mut got);
                        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                        assert_eq!(
                            bits(&got),
                            bits(&want),
                            "{} on {}, {n} rows, group {g}",
                            ty.name(),
                            isa.name()
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn the_largest_values_do_not_overflow_the_kernels_integer_sums() {
        // Every weight at its type's largest unsigned value, every activation at ±127: the
        // kernels' narrowest partial sums are at their bounds.
        for ty in TYPES {
            let (rows, cols) = (16, 512);
            let (per_block, block_bytes) = ty.block().unwrap();
            let mut bytes = vec![0xFFu8; rows * cols / per_block * block_bytes];
            let halfs: &[usize] = match ty {
                GgmlType::Q4_1 | GgmlType::Q4K => &[0, 2],
                GgmlType::Q6K => &[208],
                _ => &[0],
            };
            for block in bytes.chunks_exact_mut(block_bytes) {
                for &at in halfs {
                    block[at..at + 2].copy_from_slice(&f16::from_f32(0.01).to_le_bytes());
                }
                if ty == GgmlType::Q8_0 {
                    block[2..].fill(0x7F); // w = 127: u = 255
                }
            }
            let m = QMatrix::new(
                ty,
                rows,
                cols,
                super::super::WeightBytes::Owned(bytes.into()),
            )
            .unwrap();
            let p = Packed::new(&m).unwrap();
            for sign in [1.0f32, -1.0] {
                let n = 3;
                let a = Q8Acts::quantize(&vec![sign; n * cols], n, cols);
                assert!(a.q.iter().all(|&q| q == 127 * sign as i8));
                let mut want = vec![0f32; n * GROUP];
                let mut got = want.clone();
                reference(&p, 0..1, &a, &mut want);
                for isa in Isa::available().into_iter().filter(|i| i.packs()) {
                    isa.packed(&p, 0, &a, &mut got);
                    assert_eq!(got, want, "{} on {}, sign {sign}", ty.name(), isa.name());
                }
            }
        }
    }

    #[test]
    fn the_reference_on_packed_records_equals_the_dot_products_of_the_file_layout() {
        // 40 rows: two whole groups and one padded with zero rows.
        for ty in TYPES {
            let (rows, n) = (40, 3);
            let cols = if matches!(ty, GgmlType::Q4K | GgmlType::Q6K) {
                512
            } else {
                96
            };
            let m = random_matrix(ty, rows, cols, 5).unwrap();
            let p = Packed::new(&m).unwrap();
            let x: Vec<f32> = (0..n * cols)
                .map(|i| ((i * 7919 % 211) as f32 - 105.0) / 50.0)
                .collect();
            let a = Q8Acts::quantize(&x, n, cols);
            let mut out = vec![0f32; p.groups() * n * GROUP];
            reference(&p, 0..p.groups(), &a, &mut out);
            let (w, xq) = (m.dequantize(), a.dequantize());
            for r in 0..rows {
                for i in 0..n {
                    let want: f64 = (0..cols)
                        .map(|c| w[r * cols + c] as f64 * xq[i * cols + c] as f64)
                        .sum();
                    let got = out[(r / GROUP) * n * GROUP + i * GROUP + r % GROUP] as f64;
                    assert!(
                        (got - want).abs() <= 1e-4 * want.abs().max(1.0),
                        "{} row {r}, activation row {i}: {got} vs {want}",
                        ty.name()
                    );
                }
            }
            // The padding rows are zeros.
            for i in 0..n {
                let pad = &out[2 * n * GROUP + i * GROUP..][8..GROUP];
                assert!(pad.iter().all(|&v| v == 0.0));
            }
        }
    }
}
