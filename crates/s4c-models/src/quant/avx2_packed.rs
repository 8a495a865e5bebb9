//! The interleaved kernel of [`super::packed`] on 256-bit AVX2 vectors (`vpmaddubsw`, no VNNI).
//!
//! A record's 512-bit vector holds four values of each of 16 weight rows; here each half (rows
//! `8h..8h + 8`) is one 256-bit vector. `vpmaddubsw` multiplies it by four activation values
//! broadcast to every lane and adds neighbouring products into `i16` lanes. Those lanes can
//! accumulate a whole block without saturating when the weight values are at most 15 (a lane
//! sums 16 products of `|q| ≤ 127`: at most 30,480), so a block of 32 values for eight weight
//! rows costs eight `vpmaddubsw`, seven `i16` additions and one `vpmaddwd`, and the scales'
//! floating-point work is done once per block for the eight rows:
//!
//! - Q4_0, Q4_1, Q4_K: the nibbles, as above;
//! - Q8_0 (`w + 128`, up to 255): its low and high nibbles accumulate apart, the high sums are
//!   weighted by 16 in `vpmaddwd`;
//! - Q6_K (up to 63): the `i16` lanes are widened every two vectors, each half-block's sum apart.
//!
//! The integer sums are exact, and the floating-point work per block — the scale product and the
//! two fused multiply-adds — is [`super::packed::reference`]'s, lane by lane, so every output has
//! the reference's bits whatever the number of activation rows.
//!
//! Safety: [`packed`] is an `unsafe fn` with `#[target_feature]`; [`super::matmul`] calls it only
//! with an [`super::Isa`] that [`super::Isa::available`] detected on this CPU.

use std::arch::x86_64::*;
use std::ops::Range;

use super::acts::{Q8Acts, QK};
use super::packed::{act_index, run_tiles, Packed, PackedKind, GROUP};

/// Most activation rows per tile for the 4-bit types (one `i16` accumulator each).
const TILE: usize = 8;

/// Most activation rows per tile for Q8_0 and Q6_K (two accumulators each).
const WIDE_TILE: usize = 4;

/// Weight rows per 256-bit vector (one half of a record).
const HALF: usize = GROUP / 2;

/// The scale of each lane and the coefficient of the activation sums of half `h` of a record
/// (Q4_0, Q4_1, Q8_0), as [`Packed::scale_min`] computes them.
#[inline(always)]
unsafe fn scale_min(kind: PackedKind, r: *const u8, h: usize) -> (__m256, __m256) {
    let vb = kind.value_bytes();
    let f16s = |p: *const u8| _mm256_cvtph_ps(_mm_loadu_si128(p.cast()));
    let ws = f16s(r.add(vb + 2 * HALF * h));
    let wm = match kind {
        PackedKind::Q4_1 => f16s(r.add(vb + 2 * GROUP + 2 * HALF * h)),
        PackedKind::Q4_0 => _mm256_mul_ps(ws, _mm256_set1_ps(-8.0)),
        _ => _mm256_mul_ps(ws, _mm256_set1_ps(-128.0)),
    };
    (ws, wm)
}

/// Eight bytes at `p` as `f32` lanes, unsigned or signed.
#[inline(always)]
unsafe fn bytes8<const SIGNED: bool>(p: *const u8) -> __m256 {
    let v = _mm_loadl_epi64(p.cast());
    _mm256_cvtepi32_ps(if SIGNED {
        _mm256_cvtepi8_epi32(v)
    } else {
        _mm256_cvtepu8_epi32(v)
    })
}

/// The exact block sums `Σ u·q` of the eight weight rows of half `h` of record `r` (4-bit
/// values: Q4_0, Q4_1, Q4_K) for each activation row `x[i]` (32 values).
#[inline(always)]
unsafe fn sums_nibbles<const R: usize>(
    r: *const u8,
    h: usize,
    x: &[*const i32; R],
) -> [__m256i; R] {
    let low = _mm256_set1_epi8(0x0F);
    let mut s = [_mm256_setzero_si256(); R];
    for k in 0..4 {
        let v = _mm256_loadu_si256(r.add(64 * k + 32 * h).cast());
        let (w0, w1) = (
            _mm256_and_si256(v, low),
            _mm256_and_si256(_mm256_srli_epi16(v, 4), low),
        );
        for (s, x) in s.iter_mut().zip(x) {
            let p0 = _mm256_maddubs_epi16(w0, _mm256_set1_epi32(x.add(k).read_unaligned()));
            let p1 = _mm256_maddubs_epi16(w1, _mm256_set1_epi32(x.add(k + 4).read_unaligned()));
            *s = _mm256_add_epi16(*s, _mm256_add_epi16(p0, p1));
        }
    }
    let ones = _mm256_set1_epi16(1);
    s.map(|s| _mm256_madd_epi16(s, ones))
}

/// [`sums_nibbles`] for Q8_0's 8-bit values: low and high nibbles apart, then `lo + 16 · hi`.
#[inline(always)]
unsafe fn sums_bytes<const R: usize>(r: *const u8, h: usize, x: &[*const i32; R]) -> [__m256i; R] {
    let low = _mm256_set1_epi8(0x0F);
    let (mut lo, mut hi) = ([_mm256_setzero_si256(); R], [_mm256_setzero_si256(); R]);
    for k in 0..8 {
        let v = _mm256_loadu_si256(r.add(64 * k + 32 * h).cast());
        let (w0, w1) = (
            _mm256_and_si256(v, low),
            _mm256_and_si256(_mm256_srli_epi16(v, 4), low),
        );
        for i in 0..R {
            let xk = _mm256_set1_epi32(x[i].add(k).read_unaligned());
            lo[i] = _mm256_add_epi16(lo[i], _mm256_maddubs_epi16(w0, xk));
            hi[i] = _mm256_add_epi16(hi[i], _mm256_maddubs_epi16(w1, xk));
        }
    }
    let (ones, sixteen) = (_mm256_set1_epi16(1), _mm256_set1_epi16(16));
    std::array::from_fn(|i| {
        _mm256_add_epi32(
            _mm256_madd_epi16(lo[i], ones),
            _mm256_madd_epi16(hi[i], sixteen),
        )
    })
}

/// The exact half-block sums `(Σ₀ u·q, Σ₁ u·q)` of Q6_K's 6-bit values (vectors 0–3 and 4–7),
/// widened to `i32` every two vectors.
#[inline(always)]
unsafe fn sums_q6k<const R: usize>(
    r: *const u8,
    h: usize,
    x: &[*const i32; R],
) -> [(__m256i, __m256i); R] {
    let (low, top) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi8(0x30));
    let ones = _mm256_set1_epi16(1);
    let mut s = [(_mm256_setzero_si256(), _mm256_setzero_si256()); R];
    for pair in 0..2 {
        let (mut p0, mut p1) = ([_mm256_setzero_si256(); R], [_mm256_setzero_si256(); R]);
        for k in 2 * pair..2 * pair + 2 {
            // Nibbles as Q4_K's, then each vector's high parts moved to bits 4–5.
            let v = _mm256_loadu_si256(r.add(64 * k + 32 * h).cast());
            let hb = _mm256_loadu_si256(r.add(256 + 64 * (k / 2) + 32 * h).cast());
            let (h0, h1) = if k % 2 == 0 {
                (_mm256_slli_epi16(hb, 4), _mm256_slli_epi16(hb, 2))
            } else {
                (hb, _mm256_srli_epi16(hb, 2))
            };
            let w0 = _mm256_or_si256(_mm256_and_si256(v, low), _mm256_and_si256(h0, top));
            let v4 = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
            let w1 = _mm256_or_si256(v4, _mm256_and_si256(h1, top));
            for i in 0..R {
                let x0 = _mm256_set1_epi32(x[i].add(k).read_unaligned());
                let x1 = _mm256_set1_epi32(x[i].add(k + 4).read_unaligned());
                p0[i] = _mm256_add_epi16(p0[i], _mm256_maddubs_epi16(w0, x0));
                p1[i] = _mm256_add_epi16(p1[i], _mm256_maddubs_epi16(w1, x1));
            }
        }
        for i in 0..R {
            s[i].0 = _mm256_add_epi32(s[i].0, _mm256_madd_epi16(p0[i], ones));
            s[i].1 = _mm256_add_epi32(s[i].1, _mm256_madd_epi16(p1[i], ones));
        }
    }
    s
}

/// The 16-row accumulators of `R` activation rows (from `r0`) against group `g` of `p`, whose
/// weight type is `kind`: lane `j` of `out[i · 16..]` is row `16g + j` times activation row
/// `r0 + i`. Each type's caller passes its type as a constant (`tiles_of_kind!`), so each
/// type's loop is compiled on its own, without a branch per block and with its accumulators and
/// pointers in registers.
#[inline(always)]
unsafe fn tile<const R: usize>(
    kind: PackedKind,
    p: &Packed,
    g: usize,
    a: &Q8Acts,
    r0: usize,
    out: *mut f32,
) {
    let vb = kind.value_bytes();
    let (q, d, ds, ds16) = (a.q.as_ptr(), a.d.as_ptr(), a.ds.as_ptr(), a.ds16.as_ptr());
    // One half (eight weight rows) at a time: one accumulator per activation row stays in a
    // register across the blocks.
    for h in 0..2 {
        let mut acc = [_mm256_setzero_ps(); R];
        for b in 0..p.blocks {
            let (r, sup) = p.block_ptrs(g, b, r0 == 0 && h == 0);
            let at: [usize; R] = std::array::from_fn(|i| act_index(a, r0 + i, b));
            let x: [*const i32; R] = at.map(|at| q.add(at * QK).cast::<i32>());
            let f16s = |p: *const u8| _mm256_cvtph_ps(_mm_loadu_si128(p.cast()));
            if kind == PackedKind::Q6K {
                let dsup = f16s(sup.add(2 * HALF * h));
                let ws0 = _mm256_mul_ps(dsup, bytes8::<true>(r.add(vb + HALF * h)));
                let ws1 = _mm256_mul_ps(dsup, bytes8::<true>(r.add(vb + GROUP + HALF * h)));
                let minus32 = _mm256_set1_ps(-32.0);
                let (wm0, wm1) = (_mm256_mul_ps(ws0, minus32), _mm256_mul_ps(ws1, minus32));
                let s = sums_q6k::<R>(r, h, &x);
                for i in 0..R {
                    let (dx, acc) = (_mm256_set1_ps(*d.add(at[i])), &mut acc[i]);
                    let sums = ds16.add(2 * ((r0 + i) * p.blocks + b));
                    *acc =
                        _mm256_fmadd_ps(_mm256_cvtepi32_ps(s[i].0), _mm256_mul_ps(ws0, dx), *acc);
                    *acc =
                        _mm256_fmadd_ps(_mm256_cvtepi32_ps(s[i].1), _mm256_mul_ps(ws1, dx), *acc);
                    *acc = _mm256_fmadd_ps(wm0, _mm256_set1_ps(*sums), *acc);
                    *acc = _mm256_fmadd_ps(wm1, _mm256_set1_ps(*sums.add(1)), *acc);
                }
                continue;
            }
            let (ws, wm, s) = match kind {
                PackedKind::Q4K => {
                    let m = _mm256_mul_ps(
                        f16s(sup.add(2 * GROUP + 2 * HALF * h)),
                        bytes8::<false>(r.add(vb + GROUP + HALF * h)),
                    );
                    (
                        _mm256_mul_ps(
                            f16s(sup.add(2 * HALF * h)),
                            bytes8::<false>(r.add(vb + HALF * h)),
                        ),
                        _mm256_xor_ps(m, _mm256_set1_ps(-0.0)),
                        sums_nibbles::<R>(r, h, &x),
                    )
                }
                PackedKind::Q8_0 => {
                    let (ws, wm) = scale_min(kind, r, h);
                    (ws, wm, sums_bytes::<R>(r, h, &x))
                }
                _ => {
                    let (ws, wm) = scale_min(kind, r, h);
                    (ws, wm, sums_nibbles::<R>(r, h, &x))
                }
            };
            for i in 0..R {
                let acc = &mut acc[i];
                let scale = _mm256_mul_ps(ws, _mm256_set1_ps(*d.add(at[i])));
                *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s[i]), scale, *acc);
                let sx = _mm256_set1_ps(*ds.add((r0 + i) * p.blocks + b));
                *acc = _mm256_fmadd_ps(wm, sx, *acc);
            }
        }
        for (i, acc) in acc.iter().enumerate() {
            _mm256_storeu_ps(out.add(i * GROUP + HALF * h), *acc);
        }
    }
}

/// `out[gi · n · 16 + i · 16 + j] = W[16g + j] · x_i` for the `gi`-th group `g` of `groups` and
/// every activation row `i` (`n` of them): [`super::packed::reference`], bit for bit.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn packed(p: &Packed, groups: Range<usize>, a: &Q8Acts, out: &mut [f32]) {
    match p.kind {
        PackedKind::Q4_0 => run_tiles!(tile_q4_0, p, groups, a, out, TILE),
        PackedKind::Q4_1 => run_tiles!(tile_q4_1, p, groups, a, out, TILE),
        PackedKind::Q4K => run_tiles!(tile_q4_k, p, groups, a, out, TILE),
        PackedKind::Q8_0 => run_tiles!(tile_q8_0, p, groups, a, out, WIDE_TILE),
        PackedKind::Q6K => run_tiles!(tile_q6_k, p, groups, a, out, WIDE_TILE),
    }
}

/// `tile` for one weight type under a name of its own, as [`run_tiles`] calls it.
macro_rules! tiles_of_kind {
    ($($name:ident = $kind:expr),* $(,)?) => {$(
        #[inline(always)]
        unsafe fn $name<const R: usize>(p: &Packed, g: usize, a: &Q8Acts, r0: usize, out: *mut f32) {
            tile::<R>($kind, p, g, a, r0, out)
        }
    )*};
}
tiles_of_kind!(
    tile_q4_0 = PackedKind::Q4_0,
    tile_q4_1 = PackedKind::Q4_1,
    tile_q4_k = PackedKind::Q4K,
    tile_q8_0 = PackedKind::Q8_0,
    tile_q6_k = PackedKind::Q6K,
);
