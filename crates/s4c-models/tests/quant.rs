//! The CPU kernels of `s4c_models::quant` against brute force: every storage type, every
//! instruction set this CPU has, and batch invariance (a row alone equals the same row inside a
//! block, bit for bit).

use std::sync::Arc;

use s4c_models::gguf::GgmlType;
use s4c_models::quant::{Isa, Linear, Q8Acts, QMatrix, Threads, WeightBytes};
use s4c_models::testing::SplitMix;

const BLOCK_TYPES: [GgmlType; 5] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q8_0,
    GgmlType::Q4K,
    GgmlType::Q6K,
];
const DENSE_TYPES: [GgmlType; 3] = [GgmlType::F32, GgmlType::F16, GgmlType::BF16];

fn random_matrix(ty: GgmlType, rows: usize, cols: usize, rng: &mut SplitMix) -> QMatrix {
    s4c_models::testing::random_matrix(ty, rows, cols, rng.next_u64()).unwrap()
}

fn random_rows(m: usize, cols: usize, rng: &mut SplitMix) -> Vec<f32> {
    (0..m * cols).map(|_| rng.symmetric() * 2.0).collect()
}

/// `x · Wᵀ` in f64 from dequantized weights and the activations `x`.
fn brute_force(w: &QMatrix, x: &[f32], m: usize) -> Vec<f64> {
    let wf = w.dequantize();
    let (rows, cols) = (w.rows(), w.cols());
    let mut y = vec![0f64; m * rows];
    for r in 0..m {
        for o in 0..rows {
            y[r * rows + o] = (0..cols)
                .map(|k| wf[o * cols + k] as f64 * x[r * cols + k] as f64)
                .sum();
        }
    }
    y
}

#[test]
fn every_type_and_instruction_set_matches_brute_force() {
    let mut rng = SplitMix(7);
    let (rows, m) = (37, 5);
    // 512 columns: 16 blocks of 32, 2 super-blocks of 256; 800: an odd number of blocks (25),
    // and a width no vector divides into for the dense types.
    let cases = BLOCK_TYPES
        .into_iter()
        .chain(DENSE_TYPES)
        .map(|t| (t, 512))
        .chain([GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0].map(|t| (t, 800)))
        .chain(DENSE_TYPES.map(|t| (t, 803)));
    for (ty, cols) in cases {
        let w = random_matrix(ty, rows, cols, &mut rng);
        let x = random_rows(m, cols, &mut rng);
        // Block types multiply the activations as quantized to 8-bit blocks.
        let xq = if DENSE_TYPES.contains(&ty) {
            x.clone()
        } else {
            Q8Acts::quantize(&x, m, cols).dequantize()
        };
        let want = brute_force(&w, &xq, m);
        let scale = want.iter().fold(0f64, |a, v| a.max(v.abs()));
        let lin = Linear::new(vec![w.clone()]).unwrap();
        for isa in Isa::available() {
            let threads = Threads::new(2, isa).unwrap();
            let got = lin.forward(&x, m, &threads);
            let err = got
                .iter()
                .zip(&want)
                .fold(0f64, |a, (g, w)| a.max((*g as f64 - w).abs()));
            assert!(
                err <= 1e-5 * scale.max(1.0),
                "{} ({cols} columns) on {}: max error {err} (values up to {scale})",
                ty.name(),
                isa.name()
            );
        }
        // Quantizing the activations costs little against full f32 activations.
        if !DENSE_TYPES.contains(&ty) {
            let exact = brute_force(&w, &x, m);
            let err = exact
                .iter()
                .zip(&want)
                .fold(0f64, |a, (e, w)| a.max((e - w).abs()));
            assert!(
                err <= 0.02 * scale,
                "{}: 8-bit activations off by {err}",
                ty.name()
            );
        }
    }
}

/// The NEON kernels keep the portable kernel's floating-point operations and order (their
/// integer sums are exact), so they give its bits.
#[cfg(target_arch = "aarch64")]
#[test]
fn neon_kernels_equal_the_portable_kernels_bit_for_bit() {
    let mut rng = SplitMix(5);
    let portable = Threads::new(1, Isa::portable()).unwrap();
    for ty in BLOCK_TYPES {
        let cols = if matches!(ty, GgmlType::Q4K | GgmlType::Q6K) {
            512
        } else {
            800
        };
        let lin = Linear::new(vec![random_matrix(ty, 21, cols, &mut rng)]).unwrap();
        let x = random_rows(9, cols, &mut rng);
        let want: Vec<u32> = lin
            .forward(&x, 9, &portable)
            .iter()
            .map(|v| v.to_bits())
            .collect();
        let neon: Vec<Isa> = Isa::available()
            .into_iter()
            .filter(|i| i.name().starts_with("neon"))
            .collect();
        assert!(!neon.is_empty(), "NEON is part of every aarch64 CPU");
        for isa in neon {
            let got = lin.forward(&x, 9, &Threads::new(2, isa).unwrap());
            let got: Vec<u32> = got.iter().map(|v| v.to_bits()).collect();
            assert_eq!(got, want, "{} on {}", ty.name(), isa.name());
        }
    }
}

#[test]
fn a_row_alone_equals_the_same_row_in_any_block_bit_for_bit() {
    let mut rng = SplitMix(11);
    let rows = 40;
    for ty in BLOCK_TYPES.into_iter().chain(DENSE_TYPES) {
        // An odd number of blocks where the type allows it.
        let cols = if matches!(ty, GgmlType::Q4K | GgmlType::Q6K) {
            256
        } else {
            288
        };
        let lin = Linear::new(vec![random_matrix(ty, rows, cols, &mut rng)]).unwrap();
        let x = random_rows(64, cols, &mut rng);
        for isa in Isa::available() {
            let threads = Threads::new(2, isa).unwrap();
            let alone: Vec<Vec<f32>> = (0..64)
                .map(|r| lin.forward(&x[r * cols..(r + 1) * cols], 1, &threads))
                .collect();
            for m in [2, 3, 4, 5, 7, 16, 33, 64] {
                let block = lin.forward(&x[..m * cols], m, &threads);
                for (r, row) in block.chunks(rows).enumerate() {
                    assert_eq!(
                        row.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        alone[r].iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        "{} on {}: row {r} of a block of {m}",
                        ty.name(),
                        isa.name()
                    );
                }
            }
        }
    }
}

#[test]
fn results_do_not_depend_on_the_thread_count_and_fused_parts_stack() {
    let mut rng = SplitMix(3);
    let cols = 256;
    let parts = vec![
        random_matrix(GgmlType::Q4K, 24, cols, &mut rng),
        random_matrix(GgmlType::Q6K, 8, cols, &mut rng),
        random_matrix(GgmlType::F16, 8, cols, &mut rng),
    ];
    let fused = Linear::new(parts.clone()).unwrap();
    let x = random_rows(6, cols, &mut rng);
    let isa = Isa::detect();
    let one = fused.forward(&x, 6, &Threads::new(1, isa).unwrap());
    let three = fused.forward(&x, 6, &Threads::new(3, isa).unwrap());
    assert_eq!(one, three);
    // Each part's columns equal that part multiplied alone.
    let mut col = 0;
    for p in parts {
        let alone =
            Linear::new(vec![p.clone()])
                .unwrap()
                .forward(&x, 6, &Threads::new(2, isa).unwrap());
        for r in 0..6 {
            assert_eq!(
                &one[r * 40 + col..r * 40 + col + p.rows()],
                &alone[r * p.rows()..(r + 1) * p.rows()]
            );
        }
        col += p.rows();
    }
}

#[test]
fn bad_matrices_are_refused_with_a_reason() {
    let bytes = |n: usize| WeightBytes::Owned(Arc::new(vec![0u8; n]));
    let e = QMatrix::new(GgmlType::Q4_0, 2, 48, bytes(54)).unwrap_err();
    assert!(e.to_string().contains("whole blocks of 32"), "{e}");
    let e = QMatrix::new(GgmlType::Q4_0, 2, 64, bytes(71)).unwrap_err();
    assert!(e.to_string().contains("71 bytes"), "{e}");
    let e = QMatrix::new(GgmlType::Other(99), 2, 64, bytes(64)).unwrap_err();
    assert!(e.to_string().contains("unsupported type"), "{e}");
    assert!(Linear::new(vec![]).is_err());
    let a = QMatrix::from_f32(1, 32, &[0.0; 32], GgmlType::F32).unwrap();
    let b = QMatrix::from_f32(1, 64, &[0.0; 64], GgmlType::F32).unwrap();
    assert!(Linear::new(vec![a, b]).is_err());
}

#[test]
fn f32_values_quantize_to_q8_0_as_llama_cpp_does() {
    let mut rng = SplitMix(11);
    let (rows, cols) = (3, 96);
    let mut x: Vec<f32> = (0..rows * cols).map(|_| rng.symmetric() * 0.3).collect();
    x[32..64].fill(0.0); // an all-zero block
    let w = QMatrix::from_f32(rows, cols, &x, GgmlType::Q8_0).unwrap();
    assert_eq!(w.ty(), GgmlType::Q8_0);
    // llama.cpp's quantize_row_q8_0_ref: d = amax / 127 (stored as f16), q = round(x / d).
    let mut want = Vec::new();
    for block in x.chunks(32) {
        let d = block.iter().fold(0f32, |a, v| a.max(v.abs())) / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let d16 = half::f16::from_f32(d).to_f32();
        want.extend(block.iter().map(|v| d16 * (v * id).round()));
    }
    assert_eq!(w.dequantize(), want);
    let err = QMatrix::from_f32(1, 40, &[0.0; 40], GgmlType::Q8_0).unwrap_err();
    assert!(err.to_string().contains("whole blocks of 32"), "{err}");
}
