//! x86-64 kernels on 256-bit vectors: AVX2 (with FMA and F16C), and AVX2 with AVX-VNNI's
//! `vpdpbusd` (AVX-512 VNNI has [`super::avx512`]).
//!
//! A block-quantized weight row is first **unpacked** once into a scratch [`Unpacked`] row: one
//! unsigned byte per weight, a scale per block of 32 (per half-block of 16 for Q6_K) and the
//! coefficient of the block's activation sum (the type's minimum or offset). Every type then
//! shares one tile kernel: per block an 8-bit dot product, a conversion and a fused multiply-add
//! with `scale · activation scale`; the offsets add `Σ coefficient · (activation scale · Σq)` once
//! per row at the end, as one short dot product.
//!
//! The tile kernel runs over the activation rows in register tiles of up to eight rows. A row's
//! accumulator sees the same operations in the same order whatever tile it is in, so results do
//! not depend on the number of rows.
//!
//! Safety: the entry points are `unsafe fn`s with `#[target_feature]`; [`super::matmul`] calls
//! them only with an [`super::Isa`] that [`super::Isa::available`] detected on this CPU, with a
//! weight row of the matrix's type and activations of its width.

use std::arch::x86_64::*;

use super::acts::{Q8Acts, QK};
use crate::gguf::GgmlType;

/// Most activation rows per register tile.
const TILE: usize = 8;

/// One weight row unpacked for the tile kernel.
#[derive(Debug, Default)]
pub(crate) struct Unpacked {
    /// One unsigned value per weight (`0..=15`, `0..=63`, or `w + 128` for Q8_0).
    u: Vec<u8>,
    /// Scale per block of 32 (per half-block of 16 for Q6_K).
    d: Vec<f32>,
    /// Coefficient of `d_x · Σq` per block (per half-block for Q6_K).
    m: Vec<f32>,
}

/// An 8-bit dot product of unsigned weights and signed activations, four products summed per
/// `i32` lane (lane `i` covers bytes `4i..4i + 4`).
trait Dot {
    /// `WIDE`: weights may exceed 127 (Q8_0's `w + 128`).
    unsafe fn dot<const WIDE: bool>(w: __m256i, x: __m256i) -> __m256i;
}

/// `vpmaddubsw` then `vpmaddwd` with ones (AVX2). Its pairwise `i16` sums cannot saturate for
/// weights ≤ 127; wider weights are split into their low seven bits and their top bit.
struct Maddubs;

impl Dot for Maddubs {
    #[inline(always)]
    unsafe fn dot<const WIDE: bool>(w: __m256i, x: __m256i) -> __m256i {
        let ones = _mm256_set1_epi16(1);
        if WIDE {
            let top = _mm256_set1_epi8(-128);
            let lo = _mm256_andnot_si256(top, w);
            let hi = _mm256_and_si256(top, w);
            _mm256_add_epi32(
                _mm256_madd_epi16(_mm256_maddubs_epi16(lo, x), ones),
                _mm256_madd_epi16(_mm256_maddubs_epi16(hi, x), ones),
            )
        } else {
            _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), ones)
        }
    }
}

/// `vpdpbusd` (AVX-VNNI): the same sums in one instruction, without saturation.
struct Vnni;

impl Dot for Vnni {
    #[inline(always)]
    unsafe fn dot<const WIDE: bool>(w: __m256i, x: __m256i) -> __m256i {
        _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), w, x)
    }
}

/// The sum of 8 lanes, always in the same order.
#[inline(always)]
pub(super) unsafe fn hsum(v: __m256) -> f32 {
    hsum128(_mm_add_ps(
        _mm256_castps256_ps128(v),
        _mm256_extractf128_ps(v, 1),
    ))
}

/// The sum of 4 lanes, always in the same order.
#[inline(always)]
pub(super) unsafe fn hsum128(s: __m128) -> f32 {
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// `Σ a[k] · b[k]`, eight lanes then the tail, always in the same order.
#[inline(always)]
unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let body = n / 8 * 8;
    let mut acc = _mm256_setzero_ps();
    let mut k = 0;
    while k < body {
        acc = _mm256_fmadd_ps(
            _mm256_loadu_ps(a.as_ptr().add(k)),
            _mm256_loadu_ps(b.as_ptr().add(k)),
            acc,
        );
        k += 8;
    }
    let mut s = hsum(acc);
    for k in body..n {
        s += a[k] * b[k];
    }
    s
}

/// The `f16` at `p` as `f32`.
#[inline(always)]
pub(super) unsafe fn f16_at(p: *const u8) -> f32 {
    let bits = u16::from_le_bytes([*p, *p.add(1)]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

#[inline(always)]
unsafe fn load256(p: *const u8) -> __m256i {
    _mm256_loadu_si256(p.cast())
}

#[inline(always)]
unsafe fn store256(p: *mut u8, v: __m256i) {
    _mm256_storeu_si256(p.cast(), v)
}

/// Unpacks weight row `w` of type `ty` (`nb` blocks of 32) into `out`.
#[inline(always)]
unsafe fn unpack(ty: GgmlType, w: &[u8], nb: usize, out: &mut Unpacked) {
    let half = ty == GgmlType::Q6K;
    // Whole pairs of blocks: an odd last block is paired with zeros (scale 0).
    let padded = nb.div_ceil(2) * 2;
    out.u.resize(padded * QK, 0);
    out.d.resize(if half { 2 * padded } else { padded }, 0.0);
    out.m.resize(if half { 2 * nb } else { nb }, 0.0);
    let (u, d, m) = (out.u.as_mut_ptr(), &mut out.d, &mut out.m);
    let wp = w.as_ptr();
    let low128 = _mm_set1_epi8(0x0F);
    let low = _mm256_set1_epi8(0x0F);
    match ty {
        GgmlType::Q4_0 | GgmlType::Q4_1 => {
            let (bs, qoff) = if ty == GgmlType::Q4_1 {
                (20, 4)
            } else {
                (18, 2)
            };
            for b in 0..nb {
                let p = wp.add(b * bs);
                d[b] = f16_at(p);
                m[b] = if ty == GgmlType::Q4_1 {
                    f16_at(p.add(2))
                } else {
                    -8.0 * d[b]
                };
                let qs = _mm_loadu_si128(p.add(qoff).cast());
                let lo = _mm_and_si128(qs, low128);
                let hi = _mm_and_si128(_mm_srli_epi16(qs, 4), low128);
                store256(u.add(b * QK), _mm256_set_m128i(hi, lo));
            }
        }
        GgmlType::Q8_0 => {
            let flip = _mm256_set1_epi8(-128);
            for b in 0..nb {
                let p = wp.add(b * 34);
                d[b] = f16_at(p);
                m[b] = -128.0 * d[b];
                store256(u.add(b * QK), _mm256_xor_si256(load256(p.add(2)), flip));
            }
        }
        GgmlType::Q4K => {
            for sb in 0..nb / 8 {
                let blk = &w[sb * 144..(sb + 1) * 144];
                let p = blk.as_ptr();
                let (dd, dmin) = (f16_at(p), f16_at(p.add(2)));
                for j in 0..8 {
                    let (sc, mn) = super::portable::scale_min_k4(j, &blk[4..16]);
                    d[sb * 8 + j] = dd * sc as f32;
                    m[sb * 8 + j] = -(dmin * mn as f32);
                }
                for c in 0..4 {
                    let q = load256(p.add(16 + 32 * c));
                    let b = sb * 8 + 2 * c;
                    store256(u.add(b * QK), _mm256_and_si256(q, low));
                    let hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), low);
                    store256(u.add((b + 1) * QK), hi);
                }
            }
        }
        GgmlType::Q6K => {
            for sb in 0..nb / 8 {
                let blk = &w[sb * 210..(sb + 1) * 210];
                let p = blk.as_ptr();
                let dd = f16_at(p.add(208));
                for (k, &s) in blk[192..208].iter().enumerate() {
                    d[sb * 16 + k] = dd * s as i8 as f32;
                    m[sb * 16 + k] = -32.0 * dd * s as i8 as f32;
                }
                for half in 0..2 {
                    let l0 = load256(p.add(64 * half));
                    let l1 = load256(p.add(64 * half + 32));
                    let qh = load256(p.add(128 + 32 * half));
                    let groups = [
                        _mm256_or_si256(_mm256_and_si256(l0, low), high(qh)),
                        _mm256_or_si256(_mm256_and_si256(l1, low), high(_mm256_srli_epi16(qh, 2))),
                        _mm256_or_si256(
                            _mm256_and_si256(_mm256_srli_epi16(l0, 4), low),
                            high(_mm256_srli_epi16(qh, 4)),
                        ),
                        _mm256_or_si256(
                            _mm256_and_si256(_mm256_srli_epi16(l1, 4), low),
                            high(_mm256_srli_epi16(qh, 6)),
                        ),
                    ];
                    for (g, v) in groups.into_iter().enumerate() {
                        store256(u.add((sb * 8 + 4 * half + g) * QK), v);
                    }
                }
            }
        }
        _ => unreachable!("dense types take f32 activations"),
    }
}

/// Bits 4–5 of Q6_K values: the two low bits of each byte of `h` (the high-bits bytes shifted
/// right by 2 · group), moved up.
#[inline(always)]
pub(super) unsafe fn high(h: __m256i) -> __m256i {
    _mm256_slli_epi16(_mm256_and_si256(h, _mm256_set1_epi8(3)), 4)
}

/// Runs `tile::<R>` over the activation rows in tiles of [`TILE`] (then the rest).
macro_rules! tiles {
    ($rows:expr, $tile:ident [$($g:tt),*] ($($arg:expr),*)) => {{
        let rows = $rows;
        let mut r0 = 0;
        while r0 < rows {
            match rows - r0 {
                1 => $tile::<$($g,)* 1>($($arg,)* r0),
                2 => $tile::<$($g,)* 2>($($arg,)* r0),
                3 => $tile::<$($g,)* 3>($($arg,)* r0),
                4 => $tile::<$($g,)* 4>($($arg,)* r0),
                5 => $tile::<$($g,)* 5>($($arg,)* r0),
                6 => $tile::<$($g,)* 6>($($arg,)* r0),
                7 => $tile::<$($g,)* 7>($($arg,)* r0),
                _ => $tile::<$($g,)* 8>($($arg,)* r0),
            }
            r0 += TILE;
        }
    }};
}

/// The activation sums' share of each row of a tile: `Σ m · d_x Σq`.
#[inline(always)]
unsafe fn offsets<const HALF: bool>(w: &Unpacked, a: &Q8Acts, row: usize) -> f32 {
    let n = w.m.len();
    let sums = if HALF { &a.ds16 } else { &a.ds };
    dot_f32(&w.m, &sums[row * n..(row + 1) * n])
}

/// The tile kernel on 256-bit vectors. `HALF`: scales per half-block of 16 (Q6_K).
#[inline(always)]
unsafe fn tile256<D: Dot, const WIDE: bool, const HALF: bool, const R: usize>(
    w: &Unpacked,
    a: &Q8Acts,
    out: &mut [f32],
    r0: usize,
) {
    let nb = a.blocks_per_row();
    let mut acc = [_mm256_setzero_ps(); R];
    for b in 0..nb {
        let wv = load256(w.u.as_ptr().add(b * QK));
        let ws = if HALF {
            let (s0, s1) = (*w.d.get_unchecked(2 * b), *w.d.get_unchecked(2 * b + 1));
            _mm256_setr_ps(s0, s0, s0, s0, s1, s1, s1, s1)
        } else {
            _mm256_set1_ps(*w.d.get_unchecked(b))
        };
        // The tile's rows: one pair (two blocks) apart.
        let at = ((b / 2) * a.rows + r0) * 2 + b % 2;
        let q = a.q.as_ptr().add(at * QK);
        let d = a.d.as_ptr().add(at);
        for (i, acc) in acc.iter_mut().enumerate() {
            let x = load256(q.add(i * 2 * QK).cast());
            let s = _mm256_mul_ps(ws, _mm256_set1_ps(*d.add(2 * i)));
            *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(D::dot::<WIDE>(wv, x)), s, *acc);
        }
    }
    for (i, acc) in acc.iter().enumerate() {
        out[r0 + i] = hsum(*acc) + offsets::<HALF>(w, a, r0 + i);
    }
}

#[inline(always)]
unsafe fn q8_rows_with<D: Dot>(
    ty: GgmlType,
    w: &[u8],
    a: &Q8Acts,
    out: &mut [f32],
    scratch: &mut Unpacked,
) {
    unpack(ty, w, a.blocks_per_row(), scratch);
    let u = &*scratch;
    match ty {
        GgmlType::Q8_0 => tiles!(a.rows, tile256[D, true, false](u, a, out)),
        GgmlType::Q6K => tiles!(a.rows, tile256[D, false, true](u, a, out)),
        _ => tiles!(a.rows, tile256[D, false, false](u, a, out)),
    }
}

/// [`super::portable::q8_rows`] with AVX2.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn q8_rows_avx2(
    ty: GgmlType,
    w: &[u8],
    a: &Q8Acts,
    out: &mut [f32],
    scratch: &mut Unpacked,
) {
    q8_rows_with::<Maddubs>(ty, w, a, out, scratch)
}

/// [`super::portable::q8_rows`] with AVX2 and AVX-VNNI.
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
pub(crate) unsafe fn q8_rows_vnni(
    ty: GgmlType,
    w: &[u8],
    a: &Q8Acts,
    out: &mut [f32],
    scratch: &mut Unpacked,
) {
    q8_rows_with::<Vnni>(ty, w, a, out, scratch)
}

/// Eight weights at `p` (element `k`) widened to `f32`.
#[inline(always)]
unsafe fn dense8<const TY: u8>(p: *const u8, k: usize) -> __m256 {
    match TY {
        0 => _mm256_loadu_ps(p.add(4 * k).cast()),
        1 => _mm256_cvtph_ps(_mm_loadu_si128(p.add(2 * k).cast())),
        _ => {
            let h = _mm256_cvtepu16_epi32(_mm_loadu_si128(p.add(2 * k).cast()));
            _mm256_castsi256_ps(_mm256_slli_epi32(h, 16))
        }
    }
}

/// One weight element at `p` (element `k`) as `f32`.
#[inline(always)]
unsafe fn dense1<const TY: u8>(p: *const u8, k: usize) -> f32 {
    match TY {
        0 => f32::from_le_bytes(*p.add(4 * k).cast::<[u8; 4]>()),
        1 => f16_at(p.add(2 * k)),
        _ => f32::from_bits((u16::from_le_bytes(*p.add(2 * k).cast::<[u8; 2]>()) as u32) << 16),
    }
}

/// Dense weights (`TY`: 0 = F32, 1 = F16, 2 = BF16) × `f32` activations.
#[inline(always)]
unsafe fn dense_tile<const TY: u8, const R: usize>(
    w: &[u8],
    x: &[f32],
    cols: usize,
    out: &mut [f32],
    r0: usize,
) {
    let wp = w.as_ptr();
    let xp = x.as_ptr();
    let mut acc = [_mm256_setzero_ps(); R];
    let body = cols / 8 * 8;
    let mut k = 0;
    while k < body {
        let wv = dense8::<TY>(wp, k);
        for (i, acc) in acc.iter_mut().enumerate() {
            let xv = _mm256_loadu_ps(xp.add((r0 + i) * cols + k));
            *acc = _mm256_fmadd_ps(wv, xv, *acc);
        }
        k += 8;
    }
    for (i, acc) in acc.iter().enumerate() {
        let mut s = hsum(*acc);
        for k in body..cols {
            s += dense1::<TY>(wp, k) * *xp.add((r0 + i) * cols + k);
        }
        out[r0 + i] = s;
    }
}

/// [`super::portable::dense_rows`] with AVX2.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dense_rows_avx2(
    ty: GgmlType,
    w: &[u8],
    x: &[f32],
    cols: usize,
    out: &mut [f32],
) {
    let rows = x.len() / cols;
    match ty {
        GgmlType::F32 => tiles!(rows, dense_tile[0](w, x, cols, out)),
        GgmlType::F16 => tiles!(rows, dense_tile[1](w, x, cols, out)),
        GgmlType::BF16 => tiles!(rows, dense_tile[2](w, x, cols, out)),
        _ => unreachable!("block types take quantized activations"),
    }
}
