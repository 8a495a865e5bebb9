//! The portable kernels: plain Rust, one activation row at a time. They define what every
//! type's product means; the SIMD kernels compute the same sums in another order.

use half::{bf16, f16};

use super::acts::{Q8Acts, QK};
use crate::gguf::f16_at;
pub(crate) use crate::gguf::scale_min_k4;
use crate::gguf::GgmlType;

/// `out[r] = w · x_r` for every row of block-quantized activations; `w` is one weight row.
pub(crate) fn q8_rows(ty: GgmlType, w: &[u8], a: &Q8Acts, out: &mut [f32]) {
    for (r, o) in out.iter_mut().enumerate().take(a.rows) {
        *o = q8_row(ty, w, a, r);
    }
}

fn q8_row(ty: GgmlType, w: &[u8], a: &Q8Acts, r: usize) -> f32 {
    let nb = a.blocks_per_row();
    let xq = |b: usize| a.block(r, b).0;
    let dx = |b: usize| a.block(r, b).1;
    // The activation sums are row-major.
    let at = |b: usize| r * nb + b;
    let (mut acc, mut lin) = (0f32, 0f32);
    match ty {
        GgmlType::Q4_0 | GgmlType::Q4_1 => {
            let (bs, qoff) = q4_layout(ty);
            for b in 0..nb {
                let blk = &w[b * bs..(b + 1) * bs];
                let (d, m) = q4_scale_min(ty, blk);
                let x = xq(b);
                let mut isum = 0i32;
                for j in 0..16 {
                    let q = blk[qoff + j];
                    isum += (q & 0xF) as i32 * x[j] as i32 + (q >> 4) as i32 * x[j + 16] as i32;
                }
                acc += isum as f32 * (d * dx(b));
                lin += m * a.ds[at(b)];
            }
        }
        GgmlType::Q8_0 => {
            for b in 0..nb {
                let blk = &w[b * 34..(b + 1) * 34];
                let d = f16_at(blk, 0);
                let x = xq(b);
                let isum: i32 = (0..QK).map(|j| blk[2 + j] as i8 as i32 * x[j] as i32).sum();
                acc += isum as f32 * (d * dx(b));
            }
        }
        GgmlType::Q4K => {
            for sb in 0..nb / 8 {
                let blk = &w[sb * 144..(sb + 1) * 144];
                let (d, dmin) = (f16_at(blk, 0), f16_at(blk, 2));
                let (scales, qs) = (&blk[4..16], &blk[16..144]);
                for j in 0..8 {
                    let (sc, mn) = scale_min_k4(j, scales);
                    let b = sb * 8 + j;
                    let q = &qs[32 * (j / 2)..32 * (j / 2) + 32];
                    let shift = 4 * (j % 2);
                    let x = xq(b);
                    let isum: i32 = (0..QK)
                        .map(|l| ((q[l] >> shift) & 0xF) as i32 * x[l] as i32)
                        .sum();
                    acc += isum as f32 * (d * sc as f32 * dx(b));
                    lin += -(dmin * mn as f32) * a.ds[at(b)];
                }
            }
        }
        GgmlType::Q6K => {
            for sb in 0..nb / 8 {
                let blk = &w[sb * 210..(sb + 1) * 210];
                let d = f16_at(blk, 208);
                for half in 0..2 {
                    let (ql, qh, sc) = q6k_half(blk, half);
                    for g in 0..4 {
                        let b = sb * 8 + 4 * half + g;
                        let x = xq(b);
                        let q = |l: usize| q6k_value(ql, qh, g, l) as i32;
                        let ia: i32 = (0..16).map(|l| q(l) * x[l] as i32).sum();
                        let ib: i32 = (16..32).map(|l| q(l) * x[l] as i32).sum();
                        let (sa, sb_) = (sc[2 * g] as i8 as f32, sc[2 * g + 1] as i8 as f32);
                        let dx = dx(b);
                        acc += dx * (d * sa * ia as f32 + d * sb_ * ib as f32);
                        lin += -32.0 * d * sa * a.ds16[2 * at(b)]
                            + -32.0 * d * sb_ * a.ds16[2 * at(b) + 1];
                    }
                }
            }
        }
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 | GgmlType::Other(_) => {
            unreachable!("dense types take f32 activations")
        }
    }
    acc + lin
}

/// Bytes per block and offset of the 16 value bytes in it, of Q4_0 or Q4_1.
#[inline(always)]
pub(crate) fn q4_layout(ty: GgmlType) -> (usize, usize) {
    if ty == GgmlType::Q4_0 {
        (18, 2)
    } else {
        (20, 4)
    }
}

/// The scale `d` and the value of a zero nibble `m` of a Q4_0 or Q4_1 block: a weight is
/// `d · q + m` (Q4_0 centres its nibbles at 8; Q4_1 stores its minimum).
#[inline(always)]
pub(crate) fn q4_scale_min(ty: GgmlType, blk: &[u8]) -> (f32, f32) {
    let d = f16_at(blk, 0);
    if ty == GgmlType::Q4_0 {
        (d, -8.0 * d)
    } else {
        (d, f16_at(blk, 2))
    }
}

/// Half `half` (0 or 1) of a Q6_K super-block `blk`: its 64 bytes of low bits, 32 bytes of
/// high bits and 8 sub-block scales.
#[inline(always)]
pub(crate) fn q6k_half(blk: &[u8], half: usize) -> (&[u8], &[u8], &[u8]) {
    (
        &blk[64 * half..64 * half + 64],
        &blk[128 + 32 * half..128 + 32 * half + 32],
        &blk[192 + 8 * half..192 + 8 * half + 8],
    )
}

/// Value `l` (`0..64`) of group `g` of a Q6_K half-super-block: 4 low bits from `ql`, 2 high
/// bits from `qh`.
#[inline(always)]
pub(crate) fn q6k_value(ql: &[u8], qh: &[u8], g: usize, l: usize) -> u8 {
    let low = ql[l + 32 * (g % 2)] >> (4 * (g / 2)) & 0xF;
    let high = (qh[l] >> (2 * g)) & 3;
    low | (high << 4)
}

/// `out[r] = w · x_r` for `f32` activation rows of `cols` values; `w` is one dense weight row.
pub(crate) fn dense_rows(ty: GgmlType, w: &[u8], x: &[f32], cols: usize, out: &mut [f32]) {
    for (o, xr) in out.iter_mut().zip(x.chunks_exact(cols)) {
        *o = match ty {
            GgmlType::F32 => w
                .chunks_exact(4)
                .zip(xr)
                .map(|(c, &v)| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) * v)
                .sum(),
            GgmlType::F16 => w
                .chunks_exact(2)
                .zip(xr)
                .map(|(c, &v)| f16::from_le_bytes([c[0], c[1]]).to_f32() * v)
                .sum(),
            GgmlType::BF16 => w
                .chunks_exact(2)
                .zip(xr)
                .map(|(c, &v)| bf16::from_le_bytes([c[0], c[1]]).to_f32() * v)
                .sum(),
            _ => unreachable!("block types take quantized activations"),
        };
    }
}
