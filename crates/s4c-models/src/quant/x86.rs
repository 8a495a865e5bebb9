//! AVX2 kernels (with FMA and F16C) for dense weights (F32, F16, BF16) against `f32`
//! activations, and the lane sums the other x86 kernels share. Block-quantized weights are
//! interleaved and multiplied by [`super::avx2_packed`] or [`super::avx512`].
//!
//! Each weight row is read once for a register tile of up to eight activation rows. A row's
//! accumulator sees the same operations in the same order whatever tile it is in, so results do
//! not depend on the number of rows.
//!
//! Safety: [`dense_rows_avx2`] is an `unsafe fn` with `#[target_feature]`; [`super::matmul`]
//! calls it only with an [`super::Isa`] that [`super::Isa::available`] detected on this CPU, with
//! a weight row of the matrix's type and activations of its width.

use std::arch::x86_64::*;

use crate::gguf::GgmlType;

/// Most activation rows per register tile.
const TILE: usize = 8;

/// The sum of 8 lanes, always in the same order.
#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    hsum128(_mm_add_ps(
        _mm256_castps256_ps128(v),
        _mm256_extractf128_ps(v, 1),
    ))
}

/// The sum of 4 lanes, always in the same order.
#[inline(always)]
unsafe fn hsum128(s: __m128) -> f32 {
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// The `f16` at `p` as `f32`.
#[inline(always)]
unsafe fn f16_at(p: *const u8) -> f32 {
    let bits = u16::from_le_bytes([*p, *p.add(1)]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
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
