//! Forward parity of the `wgpu` backend with `flex` on a tiny random model: a causal prefill, a
//! tree-masked block with explicit positions, a KV commit, and decode steps after it. On a
//! CPU-only machine this runs on Mesa's lavapipe Vulkan driver (CI installs it).
#![cfg(feature = "wgpu")]

use burn::backend::{Flex, Wgpu};
use burn::tensor::{backend::Backend, Tensor};
use s4c_models::testing::tiny_model;
use s4c_models::{AttentionMask, CausalLm, Input, Logits};

const VOCAB: usize = 50;

fn host<B: Backend>(t: Tensor<B, 2>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec::<f32>().unwrap()
}

/// Logits and features of every forward of a fixed script on backend `B`.
fn script<B: Backend>(device: &B::Device) -> Vec<Vec<f32>> {
    let m = tiny_model::<B>(VOCAB, 3, device);
    let mut cache = m.new_cache(64);
    let mut out = vec![];
    // Causal prefill, all rows.
    let prompt = [3u32, 17, 5, 42, 8, 1];
    let o = m
        .forward(&Input::causal(&prompt, 0, Logits::All), &mut cache)
        .unwrap();
    out.push(host(o.logits));
    out.push(host(o.features));
    // A tree: root 9 with children 4 and 12, and 4's child 30 (depths 0,1,1,2).
    let toks = [9u32, 4, 12, 30];
    let parents = [None, Some(0), Some(0), Some(1)];
    let mut vis = vec![false; 16];
    for i in 0..4 {
        let mut j = Some(i);
        while let Some(a) = j {
            vis[i * 4 + a] = true;
            j = parents[a];
        }
    }
    let mask = AttentionMask::tree(6, 4, &vis).unwrap();
    let o = m
        .forward(&Input::tree(&toks, vec![6, 7, 7, 8], &mask), &mut cache)
        .unwrap();
    out.push(host(o.logits));
    out.push(host(o.features));
    // Accept root → 4 → 30, then decode two tokens after the committed branch.
    cache.commit(&[0, 1, 3]).unwrap();
    for (i, t) in [11u32, 2].into_iter().enumerate() {
        let o = m
            .forward(&Input::causal(&[t], 9 + i, Logits::All), &mut cache)
            .unwrap();
        out.push(host(o.logits));
    }
    out
}

#[test]
fn wgpu_matches_flex() {
    let cpu = script::<Flex>(&Default::default());
    let gpu = script::<Wgpu>(&Default::default());
    assert_eq!(cpu.len(), gpu.len());
    for (k, (a, b)) in cpu.iter().zip(&gpu).enumerate() {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= 1e-3 * (1.0 + x.abs()),
                "output {k}[{i}]: flex {x} vs wgpu {y}"
            );
        }
    }
}
