//! The interleaved kernel of [`super::packed`] with AVX-512 VNNI: one 512-bit vector holds four
//! values of each of a record's 16 weight rows, and eight `vpdpbusd` by activation values
//! broadcast to every lane give one block's exact integer sums for the 16 rows.
//!
//! The floating-point work per block — the scale product and the two fused multiply-adds — is
//! [`super::packed::reference`]'s, lane by lane, so every output has the reference's bits
//! whatever the number of activation rows.
//!
//! Safety: [`packed`] is an `unsafe fn` with `#[target_feature]`; [`super::matmul`] calls it only
//! with an [`super::Isa`] that [`super::Isa::available`] detected on this CPU.

use std::arch::x86_64::*;
use std::ops::Range;

use super::acts::{Q8Acts, QK};
use super::packed::{act_index, run_tiles, Packed, PackedKind, GROUP};

/// Most activation rows per tile of the interleaved kernel.
const PACKED_TILE: usize = 8;

/// The 16-row accumulators of `R` activation rows (from `r0`) against group `g` of `p`: lane `j`
/// of `out[i]` is row `16g + j` times activation row `r0 + i` (see [`super::packed`]).
#[inline(always)]
unsafe fn packed_tile<const R: usize>(p: &Packed, g: usize, a: &Q8Acts, r0: usize, out: *mut f32) {
    let kind = p.kind;
    let vb = kind.value_bytes();
    let (q, d, ds, ds16) = (a.q.as_ptr(), a.d.as_ptr(), a.ds.as_ptr(), a.ds16.as_ptr());
    let low = _mm512_set1_epi8(0x0F);
    let high = _mm512_set1_epi8(0x30);
    let mut acc = [_mm512_setzero_ps(); R];
    // Q4_K's and Q6_K's super-block scales, loaded at each super-block's first block.
    let (mut d_super, mut dmin_super) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    for b in 0..p.blocks {
        let (r, sup) = p.block_ptrs(g, b, r0 == 0);
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
    run_tiles!(packed_tile, p, groups, a, out, PACKED_TILE);
}
