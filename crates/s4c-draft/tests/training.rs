//! Self-distillation data and training on a tiny random target: batched data generation equals
//! one-prompt-at-a-time greedy decoding, chunks round-trip, a step lowers the loss, gradients
//! stay out of the target, and heads learn a synthetic rule end to end.

use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use half::f16;
use s4c_draft::data::{distill, load_chunk, save_chunk, Dataset, DistillOptions, Sequence};
use s4c_draft::heads::{batch_loss, Heads};
use s4c_draft::train::{build_batch, draft_index, examples, frozen, train, TrainOptions};
use s4c_draft::{fingerprint, Coherence, DrafterConfig};
use s4c_models::testing::tiny_model;
use s4c_models::{CausalLm, Input, Llama, Logits};

type B = Flex;
type AB = Autodiff<Flex>;
const VOCAB: usize = 48;

fn target() -> Llama<B> {
    tiny_model::<B>(VOCAB, 5, &Default::default())
}

/// Plain greedy decoding of one prompt with its own cache: the reference.
fn greedy(t: &Llama<B>, prompt: &[u32], n: usize, stop: &[u32]) -> (Vec<u32>, Vec<f32>) {
    let mut cache = t.new_cache(128);
    let out = t
        .forward(&Input::causal(prompt, 0, Logits::All), &mut cache)
        .unwrap();
    let mut feats = out.features.into_data().to_vec::<f32>().unwrap();
    let mut ids = prompt.to_vec();
    let mut next = out
        .logits
        .argmax(1)
        .into_data()
        .convert::<i64>()
        .to_vec::<i64>()
        .unwrap();
    for step in 0..n {
        let tok = *next.last().unwrap() as u32;
        ids.push(tok);
        if stop.contains(&tok) || step + 1 == n {
            break;
        }
        let pos = ids.len() - 1;
        let out = t
            .forward(&Input::causal(&[tok], pos, Logits::All), &mut cache)
            .unwrap();
        feats.extend(out.features.into_data().to_vec::<f32>().unwrap());
        next = out
            .logits
            .argmax(1)
            .into_data()
            .convert::<i64>()
            .to_vec::<i64>()
            .unwrap();
    }
    (ids, feats)
}

#[test]
fn batched_distillation_equals_greedy_decoding_per_prompt() {
    let t = target();
    let prompts: Vec<Vec<u32>> = vec![vec![3, 4, 5], vec![10, 11], vec![7, 8, 9, 20, 21], vec![1]];
    let options = DistillOptions {
        max_new_tokens: 9,
        batch: 3, // two batches: 3 + 1
        top_k: 4,
        stop_tokens: vec![2],
    };
    let seqs = distill(&t, &prompts, &options, &mut |_, _| {}).unwrap();
    assert_eq!(seqs.len(), prompts.len());
    for (p, s) in prompts.iter().zip(&seqs) {
        let (ids, feats) = greedy(&t, p, 9, &[2]);
        assert_eq!(s.tokens, ids, "prompt {p:?}");
        assert_eq!(s.prompt_len, p.len());
        assert_eq!(s.features.len(), feats.len());
        for (a, b) in s.features.iter().zip(&feats) {
            assert!(
                (a.to_f32() - b).abs() < 2e-3 * (1.0 + b.abs()),
                "{a} vs {b}"
            );
        }
        // Top-1 of every answer row is the next generated token.
        for r in p.len() - 1..s.positions() {
            assert_eq!(s.top_ids[r * 4], s.tokens[r + 1]);
            let probs: Vec<f32> = s.top_probs[r * 4..r * 4 + 4]
                .iter()
                .map(|x| x.to_f32())
                .collect();
            assert!(probs.windows(2).all(|w| w[0] >= w[1]) && probs.iter().sum::<f32>() <= 1.001);
        }
    }
}

#[test]
fn chunks_round_trip_and_bad_files_are_typed_errors() {
    let seq = Sequence {
        tokens: vec![1, 2, 3, 4],
        prompt_len: 2,
        features: (0..6).map(|i| f16::from_f32(i as f32 * 0.5)).collect(),
        top_ids: vec![2, 9, 3, 8, 4, 7],
        top_probs: (0..6).map(|i| f16::from_f32(0.1 * i as f32)).collect(),
    };
    let dir = std::env::temp_dir().join(format!("s4c-chunk-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("c.safetensors");
    save_chunk(&path, 2, 2, &[seq.clone(), seq.clone()]).unwrap();
    let (h, k, back) = load_chunk(&path).unwrap();
    assert_eq!((h, k), (2, 2));
    assert_eq!(back, vec![seq.clone(), seq]);
    std::fs::write(&path, b"garbage").unwrap();
    assert!(matches!(
        load_chunk(&path),
        Err(s4c_draft::DraftError::InvalidData { .. })
    ));
    let _ = std::fs::remove_dir_all(dir);
}

/// Sequences that count up by one (mod vocab), with the tiny target's own features and a
/// distribution that puts all mass on the next token: the synthetic rule heads must learn.
fn counting_data(t: &Llama<B>, n: usize, len: usize) -> Dataset {
    let mut seqs = Vec::new();
    for s in 0..n {
        let start = (s * 7 + 3) % VOCAB;
        let tokens: Vec<u32> = (0..len).map(|i| ((start + i) % VOCAB) as u32).collect();
        let mut cache = t.new_cache(len);
        let out = t
            .forward(
                &Input::causal(&tokens[..len - 1], 0, Logits::Last),
                &mut cache,
            )
            .unwrap();
        let feats = out.features.into_data().to_vec::<f32>().unwrap();
        seqs.push(Sequence {
            features: feats.iter().map(|&x| f16::from_f32(x)).collect(),
            top_ids: tokens[1..].to_vec(),
            top_probs: vec![f16::ONE; len - 1],
            prompt_len: 1,
            tokens,
        });
    }
    Dataset {
        hidden: t.config().hidden_size,
        top_k: 1,
        sequences: seqs,
    }
}

fn config(t: &Llama<B>, coherence: Coherence) -> DrafterConfig {
    let mut c = DrafterConfig::new(fingerprint::<B, _>(t).unwrap());
    c.inner = 128;
    c.window = 4;
    c.coherence = coherence;
    c
}

#[test]
fn one_step_lowers_the_loss_and_gradients_stay_out_of_the_target() {
    let t = target();
    let data = counting_data(&t, 8, 12);
    let cfg = config(&t, Coherence::Full);
    let vocab: Vec<u32> = (0..VOCAB as u32).collect();
    let (embed, head) = frozen::<AB, _>(&t, &vocab);
    let ex = examples(&data);
    let device = Default::default();
    let batch = build_batch(
        &data,
        &ex,
        &cfg,
        &draft_index(&vocab, VOCAB),
        &embed,
        &device,
    );
    let mut heads = Heads::<AB>::init(&cfg, &device, 1);
    let mut optim = AdamWConfig::new().init::<AB, Heads<AB>>();
    let (loss0, _) = batch_loss(&heads, cfg.coherence, &head, &batch, 0.8);
    let raw = loss0.backward();
    // The frozen target tensors get no gradient; the heads do.
    assert!(embed.grad(&raw).is_none());
    assert!(head.grad(&raw).is_none());
    assert!(heads.blocks[0].inp.weight.val().grad(&raw).is_some());
    let before = loss0.into_scalar();
    let grads = GradientsParams::from_grads(raw, &heads);
    heads = optim.step(1e-2, heads, grads);
    let (loss1, _) = batch_loss(&heads, cfg.coherence, &head, &batch, 0.8);
    let after = loss1.into_scalar();
    assert!(after < before, "loss {before} → {after}");
    // The target itself is untouched (it is not even on the autodiff backend).
    let _ = heads.valid();
}

#[test]
fn heads_learn_a_synthetic_rule() {
    let t = target();
    let data = counting_data(&t, 60, 16);
    let vocab: Vec<u32> = (0..VOCAB as u32).collect();
    let options = TrainOptions {
        epochs: 12,
        lr: 1e-2,
        batch_size: 64,
        held_out_every: 6,
        ..Default::default()
    };
    let (_, eval) = train::<AB, _>(
        &t,
        &data,
        config(&t, Coherence::Tokens),
        vocab,
        &options,
        &mut |_| {},
    )
    .unwrap();
    assert!(eval.examples > 0);
    for (k, acc) in eval.top1.iter().enumerate() {
        assert!(*acc > 0.95, "head {} top-1 {acc} ({eval:?})", k + 1);
    }
    assert!(eval.tau_chain > 4.0, "{eval:?}");
}

#[test]
fn training_is_deterministic_and_resumes() {
    let t = target();
    let data = counting_data(&t, 12, 10);
    let vocab: Vec<u32> = (0..VOCAB as u32).collect();
    let dir = std::env::temp_dir().join(format!("s4c-train-ckpt-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let run = |epochs, ckpt: Option<std::path::PathBuf>, stop_after| {
        let options = TrainOptions {
            epochs,
            lr: 5e-3,
            batch_size: 16,
            held_out_every: 4,
            checkpoint_dir: ckpt,
            checkpoint_every: 1,
            seed: 3,
            stop_after,
            ..Default::default()
        };
        let mut losses = vec![];
        let (_, eval) = train::<AB, _>(
            &t,
            &data,
            config(&t, Coherence::Full),
            vocab.clone(),
            &options,
            &mut |p| losses.push(p.head_loss.clone()),
        )
        .unwrap();
        (losses, eval)
    };
    let (la, ea) = run(2, None, None);
    let (lb, eb) = run(2, None, None);
    assert_eq!(la, lb);
    assert_eq!(ea, eb);
    // Interrupted after 3 steps, then resumed from the checkpoint: the same run.
    let (l1, _) = run(2, Some(dir.clone()), Some(3));
    let (l2, e2) = run(2, Some(dir.clone()), None);
    assert_eq!(l1.len(), 3);
    assert_eq!([l1, l2].concat(), la);
    assert_eq!(e2, ea);
    let log = std::fs::read_to_string(dir.join("loss.csv")).unwrap();
    assert_eq!(log.lines().count(), 1 + la.len());
    let _ = std::fs::remove_dir_all(dir);
}
