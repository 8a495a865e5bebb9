//! AVX-512 VNNI kernels: each weight row is unpacked in registers two blocks of 32 at a time
//! (64 unsigned 8-bit values, per-lane scales, the minimum or offset coefficients) and
//! multiplied with `vpdpbusd` by every activation row of a register tile of up to eight rows.
//!
//! Per pair of blocks and activation row: one 8-bit dot product, one conversion, the scale
//! `weight scale · activation scale`, one fused multiply-add; the minimums' share
//! (`coefficient · d_x·Σq`) accumulates beside it. A row's accumulators see the same operations
//! in the same order whatever tile it is in, so results do not depend on the number of rows.
//! An odd last block runs alone on 256-bit vectors.
//!
//! Safety: [`rows`] is an `unsafe fn` with `#[target_feature]`; [`super::matmul`] calls it only
//! with an [`super::Isa`] that [`super::Isa::available`] detected on this CPU, for rows of the
//! matrix and activations of its width.

use std::arch::x86_64::*;
use std::ops::Range;

use super::acts::{Q8Acts, QK};
use super::packed::{act_index, Packed, PackedKind, GROUP};
use super::x86::{f16_at, high, hsum, hsum128};
use super::QMatrix;
use crate::gguf::GgmlType;

/// Most activation rows per register tile.
const TILE: usize = 8;

/// How many weight rows ahead of the one computing are requested from memory.
const PREFETCH_ROWS: usize = 2;

/// One weight block type, unpacked a pair of blocks at a time.
trait Blocks {
    /// Coefficients of the activation sums per block: 1 (per block of 32, against `ds`) or 2
    /// (per half-block of 16, against `ds16`).
    const SUMS_PER_BLOCK: usize;
    /// Blocks `b` and `b + 1` of row `w`: 64 unsigned values, the weight scale of each lane,
    /// and the coefficients of the activation sums (2 or 4, in the low lanes).
    unsafe fn pair(w: *const u8, b: usize) -> (__m512i, __m512, __m128);
    /// Block `b` alone: 32 values, the scale of each lane, the coefficients.
    unsafe fn one(w: *const u8, b: usize) -> (__m256i, __m256, __m128);
}

#[inline(always)]
unsafe fn f16x2(p: *const u8) -> __m128 {
    // Two consecutive f16 values (a scale and a minimum, or two scales) to f32 lanes 0 and 1.
    _mm_cvtph_ps(_mm_cvtsi32_si128(i32::from_le_bytes([
        *p,
        *p.add(1),
        *p.add(2),
        *p.add(3),
    ])))
}

/// Lanes 0–7 from `a`, lanes 8–15 from `b`.
#[inline(always)]
unsafe fn halves(a: f32, b: f32) -> __m512 {
    _mm512_insertf32x8(_mm512_set1_ps(a), _mm256_set1_ps(b), 1)
}

/// 16 nibbles of each of two blocks (`q0`, `q1`: 16 bytes each) as 64 values in block order.
#[inline(always)]
unsafe fn nibbles(q0: __m128i, q1: __m128i) -> __m512i {
    let low = _mm_set1_epi8(0x0F);
    let lo0 = _mm_and_si128(q0, low);
    let hi0 = _mm_and_si128(_mm_srli_epi16(q0, 4), low);
    let lo1 = _mm_and_si128(q1, low);
    let hi1 = _mm_and_si128(_mm_srli_epi16(q1, 4), low);
    _mm512_inserti64x4(
        _mm512_castsi256_si512(_mm256_set_m128i(hi0, lo0)),
        _mm256_set_m128i(hi1, lo1),
        1,
    )
}

/// Q4_0 (`MIN = false`: minimum −8·d) and Q4_1 (`MIN = true`).
struct Q4<const MIN: bool>;

impl<const MIN: bool> Q4<MIN> {
    const BYTES: usize = if MIN { 20 } else { 18 };
    const QOFF: usize = if MIN { 4 } else { 2 };

    /// Scale and minimum of block `b`.
    #[inline(always)]
    unsafe fn dm(w: *const u8, b: usize) -> (f32, f32) {
        let p = w.add(b * Self::BYTES);
        if MIN {
            let v = f16x2(p);
            (_mm_cvtss_f32(v), _mm_cvtss_f32(_mm_movehdup_ps(v)))
        } else {
            let d = f16_at(p);
            (d, -8.0 * d)
        }
    }
}

impl<const MIN: bool> Blocks for Q4<MIN> {
    const SUMS_PER_BLOCK: usize = 1;

    #[inline(always)]
    unsafe fn pair(w: *const u8, b: usize) -> (__m512i, __m512, __m128) {
        let (p0, p1) = (w.add(b * Self::BYTES), w.add((b + 1) * Self::BYTES));
        let q0 = _mm_loadu_si128(p0.add(Self::QOFF).cast());
        let q1 = _mm_loadu_si128(p1.add(Self::QOFF).cast());
        let ((d0, m0), (d1, m1)) = (Self::dm(w, b), Self::dm(w, b + 1));
        (
            nibbles(q0, q1),
            halves(d0, d1),
            _mm_setr_ps(m0, m1, 0.0, 0.0),
        )
    }

    #[inline(always)]
    unsafe fn one(w: *const u8, b: usize) -> (__m256i, __m256, __m128) {
        let q = _mm_loadu_si128(w.add(b * Self::BYTES + Self::QOFF).cast());
        let low = _mm_set1_epi8(0x0F);
        let v = _mm256_set_m128i(
            _mm_and_si128(_mm_srli_epi16(q, 4), low),
            _mm_and_si128(q, low),
        );
        let (d, m) = Self::dm(w, b);
        (v, _mm256_set1_ps(d), _mm_setr_ps(m, 0.0, 0.0, 0.0))
    }
}

/// Q8_0: signed values made unsigned (`w + 128`), offset −128·d.
struct Q8;

impl Blocks for Q8 {
    const SUMS_PER_BLOCK: usize = 1;

    #[inline(always)]
    unsafe fn pair(w: *const u8, b: usize) -> (__m512i, __m512, __m128) {
        let (v0, d0) = Self::values(w, b);
        let (v1, d1) = Self::values(w, b + 1);
        let v = _mm512_inserti64x4(_mm512_castsi256_si512(v0), v1, 1);
        (
            v,
            halves(d0, d1),
            _mm_setr_ps(-128.0 * d0, -128.0 * d1, 0.0, 0.0),
        )
    }

    #[inline(always)]
    unsafe fn one(w: *const u8, b: usize) -> (__m256i, __m256, __m128) {
        let (v, d) = Self::values(w, b);
        (v, _mm256_set1_ps(d), _mm_setr_ps(-128.0 * d, 0.0, 0.0, 0.0))
    }
}

impl Q8 {
    #[inline(always)]
    unsafe fn values(w: *const u8, b: usize) -> (__m256i, f32) {
        let p = w.add(b * 34);
        let v = _mm256_xor_si256(_mm256_loadu_si256(p.add(2).cast()), _mm256_set1_epi8(-128));
        (v, f16_at(p))
    }
}

/// Q4_K: super-blocks of 256 = 8 sub-blocks of 32 with 6-bit scales and minimums; a pair is
/// the low and high nibbles of one 32-byte run.
struct Q4K;

impl Q4K {
    #[inline(always)]
    unsafe fn scale_min(w: *const u8, b: usize) -> (f32, f32) {
        let blk = w.add((b / 8) * 144);
        let dm = f16x2(blk);
        let (d, dmin) = (_mm_cvtss_f32(dm), _mm_cvtss_f32(_mm_movehdup_ps(dm)));
        let scales = std::slice::from_raw_parts(blk.add(4), 12);
        let (sc, mn) = super::portable::scale_min_k4(b % 8, scales);
        (d * sc as f32, -(dmin * mn as f32))
    }
}

impl Blocks for Q4K {
    const SUMS_PER_BLOCK: usize = 1;

    #[inline(always)]
    unsafe fn pair(w: *const u8, b: usize) -> (__m512i, __m512, __m128) {
        // `b` is even: sub-blocks b and b + 1 are the two nibbles of run (b % 8) / 2.
        let q = _mm256_loadu_si256(w.add((b / 8) * 144 + 16 + 32 * ((b % 8) / 2)).cast());
        let low = _mm256_set1_epi8(0x0F);
        let lo = _mm256_and_si256(q, low);
        let hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), low);
        let (d0, m0) = Self::scale_min(w, b);
        let (d1, m1) = Self::scale_min(w, b + 1);
        let v = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
        (v, halves(d0, d1), _mm_setr_ps(m0, m1, 0.0, 0.0))
    }

    #[inline(always)]
    unsafe fn one(_: *const u8, _: usize) -> (__m256i, __m256, __m128) {
        unreachable!("Q4_K rows hold whole super-blocks: an even number of blocks")
    }
}

/// Q6_K: super-blocks of 256 = 16 sub-blocks of 16 with 8-bit scales, 6-bit values offset 32.
struct Q6K;

impl Q6K {
    /// The 32 values of block `b` (group `b % 4` of half `(b % 8) / 4`).
    #[inline(always)]
    unsafe fn values(w: *const u8, b: usize) -> __m256i {
        let blk = w.add((b / 8) * 210);
        let (half, g) = ((b % 8) / 4, b % 4);
        let ql = _mm256_loadu_si256(blk.add(64 * half + 32 * (g % 2)).cast());
        let qh = _mm256_loadu_si256(blk.add(128 + 32 * half).cast());
        let low = _mm256_set1_epi8(0x0F);
        let lo = match g / 2 {
            0 => _mm256_and_si256(ql, low),
            _ => _mm256_and_si256(_mm256_srli_epi16(ql, 4), low),
        };
        let h = match g {
            0 => qh,
            1 => _mm256_srli_epi16(qh, 2),
            2 => _mm256_srli_epi16(qh, 4),
            _ => _mm256_srli_epi16(qh, 6),
        };
        _mm256_or_si256(lo, high(h))
    }

    /// `d · scale` of half-blocks `2b` and `2b + 1`.
    #[inline(always)]
    unsafe fn scales(w: *const u8, b: usize) -> (f32, f32) {
        let blk = w.add((b / 8) * 210);
        let d = f16_at(blk.add(208));
        let sc = blk.add(192 + 8 * ((b % 8) / 4) + 2 * (b % 4));
        (d * *sc as i8 as f32, d * *sc.add(1) as i8 as f32)
    }
}

impl Blocks for Q6K {
    const SUMS_PER_BLOCK: usize = 2;

    #[inline(always)]
    unsafe fn pair(w: *const u8, b: usize) -> (__m512i, __m512, __m128) {
        let v = _mm512_inserti64x4(
            _mm512_castsi256_si512(Self::values(w, b)),
            Self::values(w, b + 1),
            1,
        );
        let ((a0, a1), (b0, b1)) = (Self::scales(w, b), Self::scales(w, b + 1));
        let s = _mm512_setr_ps(
            a0, a0, a0, a0, a1, a1, a1, a1, b0, b0, b0, b0, b1, b1, b1, b1,
        );
        let m = _mm_mul_ps(_mm_setr_ps(a0, a1, b0, b1), _mm_set1_ps(-32.0));
        (v, s, m)
    }

    #[inline(always)]
    unsafe fn one(_: *const u8, _: usize) -> (__m256i, __m256, __m128) {
        unreachable!("Q6_K rows hold whole super-blocks: an even number of blocks")
    }
}

/// The sum of 16 lanes, always in the same order.
#[inline(always)]
unsafe fn hsum512(v: __m512) -> f32 {
    let lo = _mm512_castps512_ps256(v);
    let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
    hsum(_mm256_add_ps(lo, hi))
}

/// `out[i] = w · x_{r0 + i}` for the `R` activation rows of one tile.
#[inline(always)]
unsafe fn tile<K: Blocks, const R: usize>(w: *const u8, a: &Q8Acts, r0: usize, out: &mut [f32]) {
    let nb = a.blocks_per_row();
    let spb = K::SUMS_PER_BLOCK;
    let (q, d16) = (a.q.as_ptr(), a.d16.as_ptr());
    let sums = if spb == 2 { &a.ds16 } else { &a.ds };
    let sums = sums.as_ptr();
    let mut acc = [_mm512_setzero_ps(); R];
    let mut lin = [_mm_setzero_ps(); R];
    for p in 0..nb / 2 {
        let b = 2 * p;
        let (wv, ws, wm) = K::pair(w, b);
        // Pair `p` of row `r` is at block `(p · rows + r) · 2`.
        let at = p * a.rows + r0;
        for i in 0..R {
            let x = _mm512_loadu_si512(q.add((at + i) * 2 * QK).cast());
            let s = _mm512_mul_ps(ws, _mm512_loadu_ps(d16.add((at + i) * 16)));
            let dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wv, x);
            acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), s, acc[i]);
            let row_sums = sums.add(((r0 + i) * nb + b) * spb);
            let xs = if spb == 2 {
                _mm_loadu_ps(row_sums)
            } else {
                _mm_castpd_ps(_mm_load_sd(row_sums.cast()))
            };
            lin[i] = _mm_fmadd_ps(wm, xs, lin[i]);
        }
    }
    let mut total = [0f32; R];
    for (t, acc) in total.iter_mut().zip(&acc) {
        *t = hsum512(*acc);
    }
    if nb % 2 == 1 {
        let b = nb - 1;
        let (wv, ws, wm) = K::one(w, b);
        let at = (b / 2) * a.rows + r0;
        for (i, t) in total.iter_mut().enumerate() {
            let x = _mm256_loadu_si256(q.add((at + i) * 2 * QK).cast());
            let s = _mm256_mul_ps(ws, _mm256_loadu_ps(d16.add((at + i) * 16)));
            let dot = _mm256_dpbusd_epi32(_mm256_setzero_si256(), wv, x);
            *t += hsum(_mm256_mul_ps(_mm256_cvtepi32_ps(dot), s));
            let xs = _mm_load_ss(sums.add(((r0 + i) * nb + b) * spb));
            lin[i] = _mm_fmadd_ps(wm, xs, lin[i]);
        }
    }
    for i in 0..R {
        out[i] = total[i] + hsum128(lin[i]);
    }
}

/// Every activation row against weight row `w`, in tiles of [`TILE`].
#[inline(always)]
unsafe fn row<K: Blocks>(w: *const u8, a: &Q8Acts, out: &mut [f32]) {
    let mut r0 = 0;
    while r0 < a.rows {
        let o = &mut out[r0..];
        match a.rows - r0 {
            1 => tile::<K, 1>(w, a, r0, o),
            2 => tile::<K, 2>(w, a, r0, o),
            3 => tile::<K, 3>(w, a, r0, o),
            4 => tile::<K, 4>(w, a, r0, o),
            5 => tile::<K, 5>(w, a, r0, o),
            6 => tile::<K, 6>(w, a, r0, o),
            7 => tile::<K, 7>(w, a, r0, o),
            _ => tile::<K, 8>(w, a, r0, o),
        }
        r0 += TILE;
    }
}

#[inline(always)]
unsafe fn rows_of<K: Blocks>(m: &QMatrix, range: Range<usize>, a: &Q8Acts, out: &mut [f32]) {
    let rb = m.row_bytes();
    let base = m.bytes.as_slice().as_ptr();
    let end = range.end;
    for (k, r) in range.enumerate() {
        // Ask for the row after next while this one computes (rows are far apart in memory from
        // the next task's, so the hardware prefetcher starts late on each).
        if r + PREFETCH_ROWS < end {
            let next = base.add((r + PREFETCH_ROWS) * rb);
            for line in (0..rb).step_by(64) {
                _mm_prefetch::<_MM_HINT_T0>(next.add(line).cast());
            }
        }
        row::<K>(base.add(r * rb), a, &mut out[k * a.rows..(k + 1) * a.rows]);
    }
}

/// `out[k · m + i] = W[range.start + k] · x_i` for weight rows `range` of `m` and every
/// activation row `i`.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
pub(crate) unsafe fn rows(m: &QMatrix, range: Range<usize>, a: &Q8Acts, out: &mut [f32]) {
    match m.ty() {
        GgmlType::Q4_0 => rows_of::<Q4<false>>(m, range, a, out),
        GgmlType::Q4_1 => rows_of::<Q4<true>>(m, range, a, out),
        GgmlType::Q8_0 => rows_of::<Q8>(m, range, a, out),
        GgmlType::Q4K => rows_of::<Q4K>(m, range, a, out),
        GgmlType::Q6K => rows_of::<Q6K>(m, range, a, out),
        _ => unreachable!("dense types take f32 activations"),
    }
}

/// Most activation rows per tile of the interleaved kernel.
const PACKED_TILE: usize = 8;

/// The 16-row accumulators of `R` activation rows (from `r0`) against group `g` of `p`: lane `j`
/// of `out[i]` is row `16g + j` times activation row `r0 + i` (see [`super::packed`]).
#[inline(always)]
unsafe fn packed_tile<const R: usize>(p: &Packed, g: usize, a: &Q8Acts, r0: usize, out: *mut f32) {
    let kind = p.kind;
    let (vb, rec) = (kind.value_bytes(), kind.record_bytes());
    let base = p.data.as_ptr().add(g * p.blocks * rec);
    let (q, d, ds, ds16) = (a.q.as_ptr(), a.d.as_ptr(), a.ds.as_ptr(), a.ds16.as_ptr());
    let low = _mm512_set1_epi8(0x0F);
    let high = _mm512_set1_epi8(0x30);
    let mut acc = [_mm512_setzero_ps(); R];
    // Q4_K's and Q6_K's super-block scales, loaded at each super-block's first block.
    let supers = p
        .supers
        .as_ptr()
        .wrapping_add(g * (p.blocks / 8) * kind.super_bytes());
    let (mut d_super, mut dmin_super) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    // The first tile asks for the next group's records while it computes (the later tiles of
    // this group find theirs in cache).
    let ahead = (r0 == 0).then(|| base.wrapping_add(p.blocks * rec));
    for b in 0..p.blocks {
        let r = base.add(b * rec);
        if let Some(next) = ahead {
            for line in (0..rec).step_by(64) {
                _mm_prefetch::<_MM_HINT_T0>(next.wrapping_add(b * rec + line).cast());
            }
        }
        let mut w = [_mm512_setzero_si512(); 8];
        match kind {
            PackedKind::Q8_0 => {
                for (k, w) in w.iter_mut().enumerate() {
                    *w = _mm512_loadu_si512(r.add(64 * k).cast());
                }
            }
            PackedKind::Q4_0 | PackedKind::Q4_1 | PackedKind::Q4K => {
                for k in 0..4 {
                    let v = _mm512_loadu_si512(r.add(64 * k).cast());
                    w[k] = _mm512_and_si512(v, low);
                    w[k + 4] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
                }
            }
            PackedKind::Q6K => {
                // Nibbles as Q4_K's, then each vector's high parts moved to bits 4–5.
                for k in 0..4 {
                    let v = _mm512_loadu_si512(r.add(64 * k).cast());
                    let h = _mm512_loadu_si512(r.add(256 + 64 * (k / 2)).cast());
                    let (h0, h1) = if k % 2 == 0 {
                        (_mm512_slli_epi16(h, 4), _mm512_slli_epi16(h, 2))
                    } else {
                        (h, _mm512_srli_epi16(h, 2))
                    };
                    w[k] = _mm512_or_si512(_mm512_and_si512(v, low), _mm512_and_si512(h0, high));
                    let v4 = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
                    w[k + 4] = _mm512_or_si512(v4, _mm512_and_si512(h1, high));
                }
            }
        }
        let u8s =
            |p: *const u8| _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(p.cast())));
        let (ws, wm) = match kind {
            PackedKind::Q4K => {
                if b % 8 == 0 {
                    let sup = supers.add((b / 8) * kind.super_bytes());
                    d_super = _mm512_cvtph_ps(_mm256_loadu_si256(sup.cast()));
                    dmin_super = _mm512_cvtph_ps(_mm256_loadu_si256(sup.add(32).cast()));
                }
                let m = _mm512_mul_ps(dmin_super, u8s(r.add(vb + GROUP)));
                (
                    _mm512_mul_ps(d_super, u8s(r.add(vb))),
                    _mm512_xor_ps(m, _mm512_set1_ps(-0.0)),
                )
            }
            PackedKind::Q6K => {
                if b % 8 == 0 {
                    let sup = supers.add((b / 8) * kind.super_bytes());
                    d_super = _mm512_cvtph_ps(_mm256_loadu_si256(sup.cast()));
                }
                let i8s = |p: *const u8| {
                    _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p.cast())))
                };
                let (ws0, ws1) = (
                    _mm512_mul_ps(d_super, i8s(r.add(vb))),
                    _mm512_mul_ps(d_super, i8s(r.add(vb + GROUP))),
                );
                let minus32 = _mm512_set1_ps(-32.0);
                let (wm0, wm1) = (_mm512_mul_ps(ws0, minus32), _mm512_mul_ps(ws1, minus32));
                for (i, acc) in acc.iter_mut().enumerate() {
                    let at = act_index(a, r0 + i, b);
                    let x = q.add(at * QK).cast::<i32>();
                    let (mut s0, mut s1) = (_mm512_setzero_si512(), _mm512_setzero_si512());
                    for k in 0..4 {
                        let (x0, x1) = (x.add(k).read_unaligned(), x.add(k + 4).read_unaligned());
                        s0 = _mm512_dpbusd_epi32(s0, w[k], _mm512_set1_epi32(x0));
                        s1 = _mm512_dpbusd_epi32(s1, w[k + 4], _mm512_set1_epi32(x1));
                    }
                    let dx = _mm512_set1_ps(*d.add(at));
                    *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s0), _mm512_mul_ps(ws0, dx), *acc);
                    *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s1), _mm512_mul_ps(ws1, dx), *acc);
                    let sums = ds16.add(2 * ((r0 + i) * p.blocks + b));
                    *acc = _mm512_fmadd_ps(wm0, _mm512_set1_ps(*sums), *acc);
                    *acc = _mm512_fmadd_ps(wm1, _mm512_set1_ps(*sums.add(1)), *acc);
                }
                continue;
            }
            _ => {
                let ws = _mm512_cvtph_ps(_mm256_loadu_si256(r.add(vb).cast()));
                let wm = match kind {
                    PackedKind::Q4_1 => _mm512_cvtph_ps(_mm256_loadu_si256(r.add(vb + 32).cast())),
                    PackedKind::Q4_0 => _mm512_mul_ps(ws, _mm512_set1_ps(-8.0)),
                    _ => _mm512_mul_ps(ws, _mm512_set1_ps(-128.0)),
                };
                (ws, wm)
            }
        };
        for (i, acc) in acc.iter_mut().enumerate() {
            let at = act_index(a, r0 + i, b);
            let x = q.add(at * QK).cast::<i32>();
            let mut s = _mm512_setzero_si512();
            for (k, w) in w.iter().enumerate() {
                let xk = _mm512_set1_epi32(x.add(k).read_unaligned());
                s = _mm512_dpbusd_epi32(s, *w, xk);
            }
            let scale = _mm512_mul_ps(ws, _mm512_set1_ps(*d.add(at)));
            *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), scale, *acc);
            let sx = _mm512_set1_ps(*ds.add((r0 + i) * p.blocks + b));
            *acc = _mm512_fmadd_ps(wm, sx, *acc);
        }
    }
    for (i, acc) in acc.iter().enumerate() {
        _mm512_storeu_ps(out.add(i * GROUP), *acc);
    }
}

/// `out[gi · n · 16 + i · 16 + j] = W[16g + j] · x_i` for the `gi`-th group `g` of `groups` and
/// every activation row `i` (`n` of them): [`super::packed::reference`], bit for bit.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
pub(crate) unsafe fn packed(p: &Packed, groups: Range<usize>, a: &Q8Acts, out: &mut [f32]) {
    let n = a.rows;
    debug_assert!(out.len() >= groups.len() * n * GROUP);
    for (gi, g) in groups.enumerate() {
        let o = out.as_mut_ptr().add(gi * n * GROUP);
        let mut r0 = 0;
        while r0 < n {
            let dst = o.add(r0 * GROUP);
            match n - r0 {
                1 => packed_tile::<1>(p, g, a, r0, dst),
                2 => packed_tile::<2>(p, g, a, r0, dst),
                3 => packed_tile::<3>(p, g, a, r0, dst),
                4 => packed_tile::<4>(p, g, a, r0, dst),
                5 => packed_tile::<5>(p, g, a, r0, dst),
                6 => packed_tile::<6>(p, g, a, r0, dst),
                7 => packed_tile::<7>(p, g, a, r0, dst),
                _ => packed_tile::<8>(p, g, a, r0, dst),
            }
            r0 += PACKED_TILE;
        }
    }
}
