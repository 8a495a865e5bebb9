//! aarch64 kernels on 128-bit NEON vectors.
//!
//! A block-quantized weight row is first unpacked once into signed bytes (one per weight) with
//! the per-block factors of the portable kernel; each activation row then takes, per block, its
//! 8-bit dot products 16 lanes at a time — `sdot` where the CPU has the dot-product extension
//! (Armv8.2: Apple M1 and later, Graviton 2 and later), widening multiplies otherwise. The
//! integer sums are exact and the floating-point operations are the portable kernel's, in the
//! same order: results equal [`super::portable::q8_rows`]' bit for bit, for any number of rows.
//!
//! Safety: the entry points are `unsafe fn`s with `#[target_feature]`; [`super::matmul`] calls
//! them only with an [`super::Isa`] that [`super::Isa::available`] detected on this CPU, with a
//! weight row of the matrix's type and activations of its width.

use std::arch::aarch64::*;

use super::acts::{Q8Acts, QK};
use crate::gguf::{f16_at, GgmlType};

/// One weight row unpacked: signed values and the portable kernel's factors per block.
#[derive(Debug, Default)]
pub(crate) struct Unpacked {
    /// One value per weight.
    q: Vec<i8>,
    /// Scale of each block's integer sum (of each half-block's, two per block, for Q6_K).
    d: Vec<f32>,
    /// Coefficient of each block's activation sum `d_x · Σq` (of each half-block's for Q6_K).
    m: Vec<f32>,
}

/// Sums of 8-bit products, four per `i32` lane.
trait Dot {
    /// `acc + Σ a · b` (lane `i` adds the products of bytes `4i..4i + 4`).
    unsafe fn dot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t;
}

/// Widening multiplies (`smull`, `smull2`) and pairwise adds: baseline NEON.
struct Widening;

impl Dot for Widening {
    #[inline(always)]
    unsafe fn dot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
        let lo = vmull_s8(vget_low_s8(a), vget_low_s8(b));
        let hi = vmull_high_s8(a, b);
        vpadalq_s16(vpadalq_s16(acc, lo), hi)
    }
}

/// `sdot` (the dot-product extension). Its intrinsic is not stable in Rust yet: the instruction
/// is written directly, assembled for callers compiled with `dotprod`.
struct Sdot;

impl Dot for Sdot {
    #[inline(always)]
    unsafe fn dot(mut acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
        std::arch::asm!(
            "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
            acc = inout(vreg) acc,
            a = in(vreg) a,
            b = in(vreg) b,
            options(pure, nomem, nostack, preserves_flags),
        );
        acc
    }
}

/// `Σ w[k] · x[k]` over 16 values.
#[inline(always)]
unsafe fn dot16<D: Dot>(w: *const i8, x: *const i8) -> i32 {
    vaddvq_s32(D::dot(vdupq_n_s32(0), vld1q_s8(w), vld1q_s8(x)))
}

/// `Σ w[k] · x[k]` over 32 values.
#[inline(always)]
unsafe fn dot32<D: Dot>(w: *const i8, x: *const i8) -> i32 {
    let acc = D::dot(vdupq_n_s32(0), vld1q_s8(w), vld1q_s8(x));
    vaddvq_s32(D::dot(acc, vld1q_s8(w.add(16)), vld1q_s8(x.add(16))))
}

/// Unpacks weight row `w` of type `ty` (`nb` blocks of 32) into `out`, with the portable
/// kernel's factors computed in its order.
#[inline(always)]
unsafe fn unpack(ty: GgmlType, w: &[u8], nb: usize, out: &mut Unpacked) {
    let half = ty == GgmlType::Q6K;
    out.q.resize(nb * QK, 0);
    out.d.resize(if half { 2 * nb } else { nb }, 0.0);
    out.m.resize(if half { 2 * nb } else { nb }, 0.0);
    let (q, d, m) = (out.q.as_mut_ptr(), &mut out.d, &mut out.m);
    let low = vdupq_n_u8(0x0F);
    // Low nibbles of 16 bytes to values 0..16, high nibbles to 16..32.
    let nibbles = |src: *const u8, dst: *mut i8| {
        let v = vld1q_u8(src);
        vst1q_s8(dst, vreinterpretq_s8_u8(vandq_u8(v, low)));
        vst1q_s8(dst.add(16), vreinterpretq_s8_u8(vshrq_n_u8::<4>(v)));
    };
    match ty {
        GgmlType::Q4_0 | GgmlType::Q4_1 => {
            let (bs, qoff) = super::portable::q4_layout(ty);
            for b in 0..nb {
                let blk = &w[b * bs..(b + 1) * bs];
                (d[b], m[b]) = super::portable::q4_scale_min(ty, blk);
                nibbles(blk.as_ptr().add(qoff), q.add(b * QK));
            }
        }
        GgmlType::Q8_0 => {
            for b in 0..nb {
                let blk = &w[b * 34..(b + 1) * 34];
                d[b] = f16_at(blk, 0);
                m[b] = 0.0;
                let src = blk.as_ptr().add(2).cast::<i8>();
                vst1q_s8(q.add(b * QK), vld1q_s8(src));
                vst1q_s8(q.add(b * QK + 16), vld1q_s8(src.add(16)));
            }
        }
        GgmlType::Q4K => {
            for sb in 0..nb / 8 {
                let blk = &w[sb * 144..(sb + 1) * 144];
                let (dd, dmin) = (f16_at(blk, 0), f16_at(blk, 2));
                for j in 0..8 {
                    let (sc, mn) = super::portable::scale_min_k4(j, &blk[4..16]);
                    let b = sb * 8 + j;
                    d[b] = dd * sc as f32;
                    m[b] = -(dmin * mn as f32);
                    // Blocks 2c and 2c + 1 share 32 bytes: low nibbles, then high ones.
                    let src = blk.as_ptr().add(16 + 32 * (j / 2));
                    let shift = 4 * (j % 2) as i32;
                    for h in 0..2 {
                        let v = vld1q_u8(src.add(16 * h));
                        let v = vandq_u8(vshlq_u8(v, vdupq_n_s8(-shift as i8)), low);
                        vst1q_s8(q.add(b * QK + 16 * h), vreinterpretq_s8_u8(v));
                    }
                }
            }
        }
        GgmlType::Q6K => {
            for sb in 0..nb / 8 {
                let blk = &w[sb * 210..(sb + 1) * 210];
                let dd = f16_at(blk, 208);
                for half in 0..2 {
                    let (ql, qh, sc) = super::portable::q6k_half(blk, half);
                    for g in 0..4 {
                        let b = sb * 8 + 4 * half + g;
                        for l in 0..QK {
                            *q.add(b * QK + l) = super::portable::q6k_value(ql, qh, g, l) as i8;
                        }
                        for k in 0..2 {
                            let s = sc[2 * g + k] as i8 as f32;
                            d[2 * b + k] = dd * s;
                            m[2 * b + k] = -32.0 * dd * s;
                        }
                    }
                }
            }
        }
        _ => unreachable!("dense types take f32 activations"),
    }
}

/// One activation row against the unpacked weight row, as [`super::portable`] computes it.
#[inline(always)]
unsafe fn row<D: Dot>(ty: GgmlType, u: &Unpacked, a: &Q8Acts, r: usize) -> f32 {
    let nb = a.blocks_per_row();
    let (mut acc, mut lin) = (0f32, 0f32);
    for b in 0..nb {
        let (x, dx) = a.block(r, b);
        let (w, x) = (u.q.as_ptr().add(b * QK), x.as_ptr());
        if ty == GgmlType::Q6K {
            let (ia, ib) = (dot16::<D>(w, x), dot16::<D>(w.add(16), x.add(16)));
            acc += dx * (u.d[2 * b] * ia as f32 + u.d[2 * b + 1] * ib as f32);
            let s = &a.ds16[2 * (r * nb + b)..];
            lin += u.m[2 * b] * s[0] + u.m[2 * b + 1] * s[1];
        } else {
            acc += dot32::<D>(w, x) as f32 * (u.d[b] * dx);
            if ty != GgmlType::Q8_0 {
                lin += u.m[b] * a.ds[r * nb + b];
            }
        }
    }
    acc + lin
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
    for (r, o) in out.iter_mut().enumerate().take(a.rows) {
        *o = row::<D>(ty, scratch, a, r);
    }
}

/// [`super::portable::q8_rows`] with NEON.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn q8_rows_neon(
    ty: GgmlType,
    w: &[u8],
    a: &Q8Acts,
    out: &mut [f32],
    scratch: &mut Unpacked,
) {
    q8_rows_with::<Widening>(ty, w, a, out, scratch)
}

/// [`super::portable::q8_rows`] with NEON and the dot-product extension.
#[target_feature(enable = "neon,dotprod")]
pub(crate) unsafe fn q8_rows_dotprod(
    ty: GgmlType,
    w: &[u8],
    a: &Q8Acts,
    out: &mut [f32],
    scratch: &mut Unpacked,
) {
    q8_rows_with::<Sdot>(ty, w, a, out, scratch)
}
