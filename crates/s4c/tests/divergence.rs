//! `first_divergence` on a tiny random model: the position and tokens where two outputs part
//! ways, and the target's logits there against a brute-force reference (one causal forward over
//! the whole sequence with every row's logits).

use burn::backend::Flex;
use s4c::first_divergence;
use s4c::plain::{generate_plain, GenerateOptions};
use s4c::EngineError;
use s4c_models::testing::tiny_model;
use s4c_models::{CausalLm, Input, Llama, Logits};
use s4c_verify::read_row;
use std::ops::ControlFlow;

type B = Flex;

const PROMPT: [u32; 5] = [3, 17, 9, 40, 2];

fn setup() -> (Llama<B>, Vec<u32>, usize) {
    let model = tiny_model::<B>(64, 7, &Default::default());
    let opts = GenerateOptions {
        max_new_tokens: 12,
        ..Default::default()
    };
    let capacity = opts.cache_capacity(PROMPT.len(), 64);
    let out = generate_plain(&model, &PROMPT, &opts, 64, &mut |_| {
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(out.new_ids.len(), 12);
    (model, out.new_ids, capacity)
}

/// The logits at new-token position `p` after `prompt + reference[..p]`, from one causal forward
/// over the prompt and the whole reference with every row kept.
fn brute_force(model: &Llama<B>, reference: &[u32], p: usize) -> Vec<f32> {
    let tokens: Vec<u32> = PROMPT.iter().chain(reference).copied().collect();
    let mut cache = model.new_cache(tokens.len());
    let out = model
        .forward(&Input::causal(&tokens, 0, Logits::All), &mut cache)
        .unwrap();
    read_row(&out.logits, PROMPT.len() + p - 1).unwrap()
}

fn top2(row: &[f32]) -> (u32, f32) {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
    (idx[0] as u32, row[idx[0]] - row[idx[1]])
}

#[test]
fn equal_outputs_have_no_divergence() {
    let (model, reference, capacity) = setup();
    let d = first_divergence(&model, &PROMPT, &reference, &reference, capacity).unwrap();
    assert_eq!(d, None);
}

#[test]
fn a_changed_token_is_found_with_the_targets_logits_there() {
    let (model, reference, capacity) = setup();
    for p in [0, 5, 11] {
        let mut other = reference.clone();
        other[p] = (other[p] + 1) % 64;
        other.truncate(p + 3);
        let d = first_divergence(&model, &PROMPT, &reference, &other, capacity)
            .unwrap()
            .expect("outputs differ");
        assert_eq!(d.position, p);
        assert_eq!(d.reference_token, Some(reference[p]));
        assert_eq!(d.other_token, Some(other[p]));
        let want = brute_force(&model, &reference, p);
        let (argmax, margin) = top2(&want);
        // The replay of plain decoding picks what plain decoding picked.
        assert_eq!(d.step.argmax, reference[p]);
        assert_eq!(argmax, reference[p]);
        for got in [&d.step, &d.block] {
            assert!(
                (got.top2_margin - margin).abs() < 1e-4,
                "{got:?} vs {margin}"
            );
            assert!(got.top2_margin >= 0.0);
            let r = got.reference_logit.unwrap();
            let o = got.other_logit.unwrap();
            assert!((r - want[reference[p] as usize]).abs() < 1e-4);
            assert!((o - want[other[p] as usize]).abs() < 1e-4);
            assert!(r > o);
        }
    }
}

#[test]
fn an_output_that_ends_early_diverges_where_it_ends() {
    let (model, reference, capacity) = setup();
    let other = reference[..7].to_vec();
    let d = first_divergence(&model, &PROMPT, &reference, &other, capacity)
        .unwrap()
        .expect("outputs differ");
    assert_eq!(d.position, 7);
    assert_eq!(
        (d.reference_token, d.other_token),
        (Some(reference[7]), None)
    );
    assert_eq!(d.step.other_logit, None);
    assert_eq!(d.step.argmax, reference[7]);
    // And the other way round.
    let d = first_divergence(&model, &PROMPT, &other, &reference, capacity)
        .unwrap()
        .expect("outputs differ");
    assert_eq!(
        (d.reference_token, d.other_token),
        (None, Some(reference[7]))
    );
    assert_eq!(d.block.reference_logit, None);
    let line = d.to_string();
    assert!(
        line.contains("new token 7") && line.contains("(end)"),
        "{line}"
    );
}

#[test]
fn a_cache_too_small_for_the_replay_is_a_typed_error() {
    let (model, reference, _) = setup();
    let mut other = reference.clone();
    other[10] = (other[10] + 1) % 64;
    let err = first_divergence(&model, &PROMPT, &reference, &other, 8).unwrap_err();
    assert!(matches!(err, EngineError::InvalidOption(m) if m.contains("capacity")));
    let err = first_divergence(&model, &[], &reference, &other, 64).unwrap_err();
    assert!(matches!(err, EngineError::InvalidOption(_)));
}
