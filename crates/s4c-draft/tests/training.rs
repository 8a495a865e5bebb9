//! Self-distillation data and training on a tiny random target: batched data generation equals
//! one-prompt-at-a-time greedy decoding, chunks round-trip, a step lowers the loss, gradients
//! stay out of the target, and heads learn a synthetic rule end to end.

use burn::backend::{Autodiff, Flex};
use burn::module::{AutodiffModule, Param};
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use half::f16;
use s4c_draft::data::{
    chunk_path, chunk_sampling, distill, distill_to_dir, load_chunk, sample_turns, save_chunk,
    Dataset, DistillOptions, Sampling, Sequence,
};
use s4c_draft::heads::{batch_loss, batch_states, Heads, LossWeights};
use s4c_draft::train::{
    build_batch, draft_index, examples, frozen, held_out, held_out_prompts, split, train, Frozen,
    TrainOptions,
};
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
        sampling: None,
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
    save_chunk(&path, 2, 2, &[seq.clone(), seq.clone()], None).unwrap();
    let (h, k, back) = load_chunk(&path).unwrap();
    assert_eq!((h, k), (2, 2));
    assert_eq!(back, vec![seq.clone(), seq.clone()]);
    assert_eq!(chunk_sampling(&path).unwrap(), None);
    let sampling = Sampling {
        temperature: 0.7,
        samples: 2,
        seed: u64::MAX,
    };
    save_chunk(&path, 2, 2, &[seq.clone(), seq], Some(&sampling)).unwrap();
    assert_eq!(chunk_sampling(&path).unwrap(), Some(sampling));
    // Sampling metadata that does not parse is a typed error, not a greedy chunk.
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::U8, vec![1], &[0u8]).unwrap();
    let metadata =
        std::collections::HashMap::from([("temperature".to_string(), "hot".to_string())]);
    safetensors::serialize_to_file([("x", view)], Some(metadata), &path).unwrap();
    assert!(matches!(
        chunk_sampling(&path),
        Err(s4c_draft::DraftError::InvalidData { .. })
    ));
    std::fs::write(&path, b"garbage").unwrap();
    assert!(matches!(
        load_chunk(&path),
        Err(s4c_draft::DraftError::InvalidData { .. })
    ));
    let _ = std::fs::remove_dir_all(dir);
}

/// `distill_to_dir` with chunks of two prompts, and the new tokens it generated (the progress
/// callback's running total).
fn distill_into(
    t: &Llama<B>,
    prompts: &[Vec<u32>],
    dir: &std::path::Path,
    options: &DistillOptions,
) -> (Dataset, usize) {
    let mut generated = 0;
    let ds = distill_to_dir(t, prompts, dir, 2, options, &mut |_, n| {
        generated = generated.max(n)
    })
    .unwrap();
    (ds, generated)
}

#[test]
fn data_folders_resume_and_regenerate_only_chunks_that_differ() {
    let t = target();
    let prompts: Vec<Vec<u32>> = (0..5u32).map(|i| vec![i + 3, i + 4]).collect();
    let options = DistillOptions {
        max_new_tokens: 4,
        batch: 4,
        top_k: 3,
        ..Default::default()
    };
    let dir = std::env::temp_dir().join(format!("s4c-data-dir-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let run =
        |prompts: &[Vec<u32>], options: &DistillOptions| distill_into(&t, prompts, &dir, options);
    let (first, generated) = run(&prompts[..3], &options);
    assert_eq!((first.sequences.len(), generated), (3, 12));
    // Same prompts and options: everything is reused, nothing generated.
    let (again, generated) = run(&prompts[..3], &options);
    assert_eq!((again.clone(), generated), (first.clone(), 0));
    // Two more prompts: chunk 0 is reused; chunk 1 held one prompt and now holds two.
    let (more, generated) = run(&prompts, &options);
    assert_eq!((more.sequences.len(), generated), (5, 12));
    assert_eq!(more.sequences[..2], first.sequences[..2]);
    let tokens = |seqs: &[Sequence]| seqs.iter().map(|s| s.tokens.clone()).collect::<Vec<_>>();
    let fresh = distill(&t, &prompts, &options, &mut |_, _| {}).unwrap();
    assert_eq!(tokens(&more.sequences), tokens(&fresh));
    // Fewer prompts: only their chunks make up the dataset.
    assert_eq!(
        run(&prompts[..2], &options).0.sequences,
        first.sequences[..2]
    );
    // Longer answers: every chunk is regenerated.
    let longer = DistillOptions {
        max_new_tokens: 6,
        ..options.clone()
    };
    let (ds, generated) = run(&prompts, &longer);
    assert_eq!(generated, 30);
    assert!(ds
        .sequences
        .iter()
        .all(|s| s.tokens.len() == s.prompt_len + 6));
    assert!(chunk_path(&dir, 2).exists());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn inverse_cdf_sampling_matches_exact_probabilities() {
    // softmax([0, ln 2, ln 3]) = 1/6, 2/6, 3/6: the cumulative bounds are 1/6 and 1/2.
    let logits = [0.0, 2f32.ln(), 3f32.ln()];
    let softmax = |t| s4c_verify::SamplingParams {
        temperature: t,
        top_k: 0,
        top_p: 1.0,
    };
    let at = |u| softmax(1.0).sample_at(&logits, u);
    assert_eq!(
        [at(0.0), at(0.16), at(0.17), at(0.49), at(0.51), at(0.999)],
        [0, 0, 1, 1, 2, 2]
    );
    // Temperature 0.5 squares the weights: 1/14, 4/14, 9/14.
    let at = |u| softmax(0.5).sample_at(&logits, u);
    assert_eq!([at(0.07), at(0.072), at(0.35), at(0.36)], [0, 1, 1, 2]);
    // Tokens of zero weight are never drawn, even at the end.
    assert_eq!(softmax(1.0).sample_at(&[0.0, f32::NEG_INFINITY], 0.9999), 0);
}

/// The target's next-token distribution after `prompt` at `temperature` (a plain forward).
fn next_token_probs(t: &Llama<B>, prompt: &[u32], temperature: f32) -> Vec<f64> {
    let mut cache = t.new_cache(16);
    let logits = t
        .forward(&Input::causal(prompt, 0, Logits::Last), &mut cache)
        .unwrap()
        .logits
        .into_data()
        .to_vec::<f32>()
        .unwrap();
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let w: Vec<f64> = logits
        .iter()
        .map(|&x| (((x - max) / temperature) as f64).exp())
        .collect();
    let total: f64 = w.iter().sum();
    w.iter().map(|x| x / total).collect()
}

#[test]
fn sampled_answers_follow_the_target_distribution() {
    let t = target();
    let prompt = vec![5u32, 9, 13];
    let n = 4000;
    let options = DistillOptions {
        max_new_tokens: 1,
        batch: 100,
        top_k: 2,
        stop_tokens: vec![],
        sampling: Some(Sampling {
            temperature: 0.6,
            samples: n,
            seed: 3,
        }),
    };
    let seqs = distill(&t, std::slice::from_ref(&prompt), &options, &mut |_, _| {}).unwrap();
    assert_eq!(seqs.len(), n);
    let mut counts = vec![0usize; VOCAB];
    for s in &seqs {
        assert_eq!(s.tokens[..3], prompt[..]);
        counts[s.tokens[3] as usize] += 1;
    }
    // Total variation to the exact distribution: ≈ 0.01 expected for 4,000 draws from this
    // peaked one (its top token has p ≈ 0.82, so greedy answers would be ≈ 0.18 off; those of
    // temperature 1.5, ≈ 0.4).
    let tv = |p: &[f64]| -> f64 {
        0.5 * p
            .iter()
            .zip(&counts)
            .map(|(p, &c)| (p - c as f64 / n as f64).abs())
            .sum::<f64>()
    };
    let probs = next_token_probs(&t, &prompt, 0.6);
    let top = probs.iter().copied().fold(0.0, f64::max);
    assert!(
        top < 0.9,
        "the test needs a distribution greedy answers cannot fake"
    );
    let exact = tv(&probs);
    assert!(exact < 0.04, "total variation {exact}");
    let hotter = tv(&next_token_probs(&t, &prompt, 1.5));
    assert!(hotter > 0.2, "temperature 1.5: {hotter}");
}

#[test]
fn sampled_turns_are_the_continuations_that_end_with_a_stop_token() {
    let t = target();
    let opening = vec![5u32, 9, 13];
    let temperature = 1.5;
    // Stop on the most likely first tokens, ≈ 40% of the mass: a turn ends at once (empty),
    // after one token, or is cut off by the two-token limit and dropped.
    let first = next_token_probs(&t, &opening, temperature);
    let mut ranked: Vec<u32> = (0..VOCAB as u32).collect();
    ranked.sort_by(|&a, &b| first[b as usize].total_cmp(&first[a as usize]));
    let mut stop = Vec::new();
    while stop.iter().map(|&x| first[x as usize]).sum::<f64>() < 0.4 {
        stop.push(ranked[stop.len()]);
    }
    let p_stop = |p: &[f64]| stop.iter().map(|&x| p[x as usize]).sum::<f64>();
    let options = DistillOptions {
        max_new_tokens: 2,
        batch: 100,
        top_k: 1,
        stop_tokens: stop.clone(),
        sampling: None,
    };
    let n = 3000;
    let sampling = Sampling {
        temperature,
        samples: n,
        seed: 4,
    };
    let turns = sample_turns(&t, &opening, sampling, &options, &mut |_, _| {}).unwrap();
    assert!(turns
        .iter()
        .all(|x| x.len() <= 1 && x.iter().all(|t| !stop.contains(t))));
    // Exact probabilities of an empty and of a one-token turn, from plain forwards.
    let p_empty = p_stop(&first);
    let p_one: f64 = (0..VOCAB as u32)
        .filter(|x| !stop.contains(x))
        .map(|x| {
            let mut prefix = opening.clone();
            prefix.push(x);
            first[x as usize] * p_stop(&next_token_probs(&t, &prefix, temperature))
        })
        .sum();
    for (observed, p) in [
        (turns.iter().filter(|x| x.is_empty()).count(), p_empty),
        (turns.iter().filter(|x| x.len() == 1).count(), p_one),
    ] {
        let sd = (n as f64 * p * (1.0 - p)).sqrt();
        assert!(
            n as f64 * p > 10.0 && p < 0.95,
            "the test needs both outcomes to occur ({p})"
        );
        assert!(
            (observed as f64 - n as f64 * p).abs() < 4.0 * sd,
            "{observed} turns vs {:.0} expected",
            n as f64 * p
        );
    }
    // The same seed draws the same turns; a turn needs its end.
    let again = sample_turns(&t, &opening, sampling, &options, &mut |_, _| {}).unwrap();
    assert_eq!(turns, again);
    let endless = DistillOptions {
        stop_tokens: vec![],
        ..options
    };
    assert!(matches!(
        sample_turns(&t, &opening, sampling, &endless, &mut |_, _| {}),
        Err(s4c_draft::DraftError::InvalidOption(_))
    ));
}

#[test]
fn sampled_data_is_the_targets_view_of_its_own_answers_whatever_the_batch() {
    let t = target();
    let prompts: Vec<Vec<u32>> = vec![vec![3, 4, 5], vec![10, 11], vec![7]];
    let options = |batch| DistillOptions {
        max_new_tokens: 6,
        batch,
        top_k: 3,
        stop_tokens: vec![2],
        sampling: Some(Sampling {
            temperature: 1.5,
            samples: 3,
            seed: 11,
        }),
    };
    let one_by_one = distill(&t, &prompts, &options(1), &mut |_, _| {}).unwrap();
    let together = distill(&t, &prompts, &options(9), &mut |_, _| {}).unwrap();
    assert_eq!(one_by_one.len(), 9);
    let tokens = |seqs: &[Sequence]| seqs.iter().map(|s| s.tokens.clone()).collect::<Vec<_>>();
    assert_eq!(tokens(&one_by_one), tokens(&together));
    for (j, s) in together.iter().enumerate() {
        // Prompt by prompt, three answers each, all different.
        assert!(s.tokens.starts_with(&prompts[j / 3]));
        // Every row is the target's own forward over the sampled tokens.
        let mut cache = t.new_cache(32);
        let out = t
            .forward(
                &Input::causal(&s.tokens[..s.tokens.len() - 1], 0, Logits::All),
                &mut cache,
            )
            .unwrap();
        let feats = out.features.into_data().to_vec::<f32>().unwrap();
        let argmax = out
            .logits
            .argmax(1)
            .into_data()
            .convert::<i64>()
            .to_vec::<i64>()
            .unwrap();
        for (a, b) in s.features.iter().zip(&feats) {
            assert!(
                (a.to_f32() - b).abs() < 2e-3 * (1.0 + b.abs()),
                "{a} vs {b}"
            );
        }
        for (r, &m) in argmax.iter().enumerate() {
            assert_eq!(s.top_ids[r * 3] as i64, m);
        }
    }
    let answers: std::collections::HashSet<_> = tokens(&together).into_iter().collect();
    assert_eq!(answers.len(), 9, "sampled answers repeat");
    // Several answers per prompt need a temperature.
    let greedy_many = DistillOptions {
        sampling: Some(Sampling {
            temperature: 0.0,
            samples: 2,
            seed: 0,
        }),
        ..options(4)
    };
    assert!(matches!(
        distill(&t, &prompts, &greedy_many, &mut |_, _| {}),
        Err(s4c_draft::DraftError::InvalidOption(_))
    ));
}

#[test]
fn data_folders_keep_greedy_and_sampled_answers_apart() {
    let t = target();
    let prompts: Vec<Vec<u32>> = (0..3u32).map(|i| vec![i + 3, i + 9]).collect();
    let greedy = DistillOptions {
        max_new_tokens: 4,
        batch: 8,
        top_k: 3,
        ..Default::default()
    };
    let sampled = DistillOptions {
        sampling: Some(Sampling {
            temperature: 1.0,
            samples: 2,
            seed: 5,
        }),
        ..greedy.clone()
    };
    let dir = std::env::temp_dir().join(format!("s4c-sampled-dir-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let run = |options: &DistillOptions| distill_into(&t, &prompts, &dir, options);
    let (g, generated) = run(&greedy);
    assert_eq!((g.sequences.len(), generated), (3, 12));
    // Sampled answers do not reuse greedy chunks, and are reused themselves.
    let (s, generated) = run(&sampled);
    assert_eq!((s.sequences.len(), generated), (6, 24));
    assert!(chunk_sampling(&chunk_path(&dir, 0)).unwrap().is_some());
    let (again, generated) = run(&sampled);
    assert_eq!((again, generated), (s.clone(), 0));
    // Another seed draws other answers.
    let reseeded = DistillOptions {
        sampling: sampled.sampling.map(|x| Sampling { seed: 6, ..x }),
        ..greedy.clone()
    };
    let (r, generated) = run(&reseeded);
    assert_eq!(generated, 24);
    assert_ne!(r.sequences, s.sequences);
    // And greedy answers are made again, as before.
    assert_eq!(run(&greedy), (g, 12));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_split_keeps_every_answer_to_a_prompt_on_one_side() {
    let seq = |prompt: u32, answer: u32| Sequence {
        tokens: vec![prompt, prompt + 1, answer],
        prompt_len: 2,
        features: vec![f16::ZERO; 2],
        top_ids: vec![0; 2],
        top_probs: vec![f16::ZERO; 2],
    };
    // Prompts 0..6 once each, then second answers to all of them, then prompt 3 again.
    let mut sequences: Vec<Sequence> = (0..6).map(|p| seq(10 * p, 1)).collect();
    sequences.extend((0..6).map(|p| seq(10 * p, 2)));
    sequences.push(seq(30, 3));
    let data = Dataset {
        hidden: 1,
        top_k: 1,
        sequences,
    };
    let (train_part, held) = split(&data, 3);
    let prompts = |d: &Dataset| -> Vec<u32> { d.sequences.iter().map(|s| s.tokens[0]).collect() };
    // First answers: indices 2 and 5 held out (prompts 20 and 50), as every third sequence;
    // every later answer follows its prompt.
    assert_eq!(prompts(&held), vec![20, 50, 20, 50]);
    assert_eq!(prompts(&train_part), vec![0, 10, 30, 40, 0, 10, 30, 40, 30]);
    // The same choice from the prompt list alone; `every = 1` holds everything out.
    let first: Vec<Vec<u32>> = (0..6).map(|p| vec![10 * p, 10 * p + 1]).collect();
    assert_eq!(
        held_out_prompts(first.iter().map(Vec::as_slice), 3),
        held_out(&data, 3)[..6]
    );
    assert_eq!(split(&data, 1).1.sequences.len(), data.sequences.len());
}

/// A dataset of `texts` with the tiny target's own features, each position's distribution all
/// on the text's next token (the rule heads must learn), the first token the prompt.
fn dataset_of(t: &Llama<B>, texts: Vec<Vec<u32>>) -> Dataset {
    let sequences = texts
        .into_iter()
        .map(|tokens| {
            let len = tokens.len();
            let mut cache = t.new_cache(len);
            let out = t
                .forward(
                    &Input::causal(&tokens[..len - 1], 0, Logits::Last),
                    &mut cache,
                )
                .unwrap();
            let feats = out.features.into_data().to_vec::<f32>().unwrap();
            Sequence {
                features: feats.iter().map(|&x| f16::from_f32(x)).collect(),
                top_ids: tokens[1..].to_vec(),
                top_probs: vec![f16::ONE; len - 1],
                prompt_len: 1,
                tokens,
            }
        })
        .collect();
    Dataset {
        hidden: t.config().hidden_size,
        top_k: 1,
        sequences,
    }
}

/// Sequences that count up by one (mod vocab): the synthetic rule heads must learn.
fn counting_data(t: &Llama<B>, n: usize, len: usize) -> Dataset {
    let texts = (0..n)
        .map(|s| {
            let start = (s * 7 + 3) % VOCAB;
            (0..len).map(|i| ((start + i) % VOCAB) as u32).collect()
        })
        .collect();
    dataset_of(t, texts)
}

fn config(t: &Llama<B>, coherence: Coherence) -> DrafterConfig {
    let mut c = DrafterConfig::new(fingerprint::<B, _>(t).unwrap());
    c.inner = 128;
    c.window = 4;
    c.coherence = coherence;
    c
}

/// The target's frozen tensors for the draft vocabulary `vocab` and one batch of every example
/// of `data`, in [`examples`] order.
fn batch_over(
    t: &Llama<B>,
    data: &Dataset,
    cfg: &DrafterConfig,
    vocab: &[u32],
) -> (Frozen<AB>, s4c_draft::heads::Batch<AB>) {
    let frozen = frozen::<AB, _>(t, vocab);
    let index = draft_index(vocab, VOCAB);
    let batch = build_batch(
        data,
        &examples(data),
        cfg,
        &index,
        &frozen,
        &Default::default(),
    );
    (frozen, batch)
}

/// [`batch_over`] the full vocabulary: `(embedding, LM head, batch)`.
fn whole_batch(
    t: &Llama<B>,
    data: &Dataset,
    cfg: &DrafterConfig,
) -> (
    burn::tensor::Tensor<AB, 2>,
    burn::tensor::Tensor<AB, 2>,
    s4c_draft::heads::Batch<AB>,
) {
    let vocab: Vec<u32> = (0..VOCAB as u32).collect();
    let (frozen, batch) = batch_over(t, data, cfg, &vocab);
    (frozen.embed, frozen.head, batch)
}

#[test]
fn one_step_lowers_the_loss_and_gradients_stay_out_of_the_target() {
    let t = target();
    let data = counting_data(&t, 8, 12);
    let cfg = config(&t, Coherence::Full);
    let (embed, head, batch) = whole_batch(&t, &data, &cfg);
    let device = Default::default();
    let mut heads = Heads::<AB>::init(&cfg, &device, 1);
    let mut optim = AdamWConfig::new().init::<AB, Heads<AB>>();
    let weights = LossWeights {
        decay: 0.8,
        feature: 1.0,
        dropout: 0.0,
    };
    let (loss0, _) = batch_loss(&heads, cfg.coherence, &head, &batch, weights);
    let raw = loss0.backward();
    // The frozen target tensors get no gradient; the heads do.
    assert!(embed.grad(&raw).is_none());
    assert!(head.grad(&raw).is_none());
    assert!(heads.blocks[0].inp.weight.val().grad(&raw).is_some());
    let before = loss0.into_scalar();
    let grads = GradientsParams::from_grads(raw, &heads);
    heads = optim.step(1e-2, heads, grads);
    let (loss1, _) = batch_loss(&heads, cfg.coherence, &head, &batch, weights);
    let after = loss1.into_scalar();
    assert!(after < before, "loss {before} → {after}");
    // The target itself is untouched (it is not even on the autodiff backend).
    let _ = heads.valid();
}

#[test]
fn dropout_acts_only_while_training() {
    let t = target();
    let data = counting_data(&t, 4, 10);
    let mut cfg = config(&t, Coherence::Full);
    cfg.layers = 2;
    let vocab: Vec<u32> = (0..VOCAB as u32).collect();
    let (frozen, batch) = batch_over(&t, &data, &cfg, &vocab);
    let mut heads = Heads::<AB>::init(&cfg, &Default::default(), 3);
    // Non-zero output layers, so the inner activations reach the state.
    for b in heads.blocks.iter_mut() {
        b.out.weight = Param::from_tensor(b.out.weight.val().ones_like() * 0.01);
        for r in b.more.iter_mut() {
            r.out.weight = Param::from_tensor(r.out.weight.val().ones_like() * 0.01);
        }
    }
    let host = |v: Vec<burn::tensor::Tensor<AB, 2>>| -> Vec<Vec<f32>> {
        v.into_iter()
            .map(|s| s.into_data().to_vec::<f32>().unwrap())
            .collect()
    };
    let plain = host(batch_states(&heads, cfg.coherence, &batch, 0.0));
    assert_eq!(
        plain,
        host(batch_states(&heads, cfg.coherence, &batch, 0.0))
    );
    let dropped = host(batch_states(&heads, cfg.coherence, &batch, 0.5));
    for (a, b) in plain.iter().zip(&dropped) {
        assert_ne!(a, b, "dropout must change the training states");
    }
    // Without autodiff (drafting, evaluation) dropout does nothing.
    let inner = heads.valid();
    let frozen = Frozen::<B> {
        embed: frozen.embed.inner(),
        head: frozen.head.inner(),
        full_head: frozen.full_head.inner(),
    };
    let batch = build_batch::<B>(
        &data,
        &examples(&data),
        &cfg,
        &draft_index(&vocab, VOCAB),
        &frozen,
        &Default::default(),
    );
    let a = batch_states(&inner, cfg.coherence, &batch, 0.0);
    let b = batch_states(&inner, cfg.coherence, &batch, 0.5);
    for (a, b) in a.into_iter().zip(b) {
        assert_eq!(
            a.into_data().to_vec::<f32>().unwrap(),
            b.into_data().to_vec::<f32>().unwrap()
        );
    }
}

#[test]
fn feature_regression_term_matches_a_host_reference() {
    let t = target();
    let data = counting_data(&t, 4, 10);
    let cfg = config(&t, Coherence::Full);
    let (_, head, batch) = whole_batch(&t, &data, &cfg);
    let ex = examples(&data);
    let heads = Heads::<AB>::init(&cfg, &Default::default(), 3);
    let loss = |feature| {
        let (_, per_head) = batch_loss(
            &heads,
            cfg.coherence,
            &head,
            &batch,
            LossWeights {
                decay: 0.8,
                feature,
                dropout: 0.0,
            },
        );
        per_head
            .into_iter()
            .map(|l| l.into_scalar() as f64)
            .collect::<Vec<_>>()
    };
    let (ce, with) = (loss(0.0), loss(2.0));
    // Host reference: mean over labelled rows of the mean smooth-L1 over hidden dimensions
    // between head k's state and the feature at position t + k + 1 of the example's sequence.
    let h = data.hidden;
    let states = batch_states(&heads, cfg.coherence, &batch, 0.0);
    for (k, state) in states.into_iter().enumerate() {
        let state = state.into_data().to_vec::<f32>().unwrap();
        let (mut sum, mut rows) = (0f64, 0usize);
        for (r, &(s, pos)) in ex.iter().enumerate() {
            let seq = &data.sequences[s];
            let row = pos + k + 1;
            if row >= seq.positions() {
                continue;
            }
            rows += 1;
            let per_dim: f64 = (0..h)
                .map(|d| {
                    let x = (state[r * h + d] - seq.features[row * h + d].to_f32()) as f64;
                    if x.abs() < 1.0 {
                        0.5 * x * x
                    } else {
                        x.abs() - 0.5
                    }
                })
                .sum();
            sum += per_dim / h as f64;
        }
        assert!(rows > 0);
        let expected = ce[k] + 2.0 * sum / rows as f64;
        assert!(
            (with[k] - expected).abs() < 1e-4 * expected.abs().max(1.0),
            "head {k}: {} vs {expected}",
            with[k]
        );
        assert!(
            with[k] > ce[k],
            "head {k}: the regression term adds to the loss"
        );
    }
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
    let run = |epochs, ckpt: Option<std::path::PathBuf>, stop_after, feature_noise| {
        let options = TrainOptions {
            epochs,
            lr: 5e-3,
            batch_size: 16,
            held_out_every: 4,
            checkpoint_dir: ckpt,
            checkpoint_every: 1,
            seed: 3,
            stop_after,
            feature_noise,
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
    // Feature noise is seeded too: the same run twice gives the same losses.
    let (la, ea) = run(2, None, None, 0.3);
    let (lb, eb) = run(2, None, None, 0.3);
    assert_eq!(la, lb);
    assert_eq!(ea, eb);
    let (quiet, _) = run(2, None, None, 0.0);
    assert_ne!(quiet, la, "the noise reaches the inputs");
    for bad in [-0.1, f32::INFINITY, f32::NAN] {
        let noise = TrainOptions {
            feature_noise: bad,
            ..Default::default()
        };
        let loss = TrainOptions {
            feature_loss: bad,
            ..Default::default()
        };
        for (what, options) in [("feature noise", noise), ("feature loss", loss)] {
            let err = train::<AB, _>(
                &t,
                &data,
                config(&t, Coherence::Full),
                vocab.clone(),
                &options,
                &mut |_| {},
            );
            assert!(
                matches!(err, Err(s4c_draft::DraftError::InvalidOption(_))),
                "{what} {bad}"
            );
        }
    }
    // Interrupted after 3 steps, then resumed from the checkpoint: the same run.
    let (l1, _) = run(2, Some(dir.clone()), Some(3), 0.3);
    let (l2, e2) = run(2, Some(dir.clone()), None, 0.3);
    assert_eq!(l1.len(), 3);
    assert_eq!([l1, l2].concat(), la);
    assert_eq!(e2, ea);
    let log = std::fs::read_to_string(dir.join("loss.csv")).unwrap();
    assert_eq!(log.lines().count(), 1 + la.len());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn training_starts_from_saved_heads() {
    let t = target();
    let data = counting_data(&t, 24, 12);
    let vocab: Vec<u32> = (0..VOCAB as u32).collect();
    let path = std::env::temp_dir().join(format!("s4c-init-{}.safetensors", std::process::id()));
    let run = |init: Option<std::path::PathBuf>,
               cfg: DrafterConfig,
               vocab: Vec<u32>,
               epochs,
               stop_after| {
        let options = TrainOptions {
            epochs,
            lr: 1e-2,
            batch_size: 32,
            held_out_every: 6,
            stop_after,
            init,
            ..Default::default()
        };
        let mut losses = vec![];
        train::<AB, _>(&t, &data, cfg, vocab, &options, &mut |p| {
            losses.push(p.head_loss[0])
        })
        .map(|(drafter, eval)| (drafter, eval, losses))
    };
    let cfg = config(&t, Coherence::Full);
    let (trained, trained_eval, trained_losses) =
        run(None, cfg.clone(), vocab.clone(), 6, None).unwrap();
    s4c_draft::io::save(&trained, &path).unwrap();

    // No steps from the saved heads: the same heads, scored the same; a random start scores lower.
    let (_, same, _) = run(Some(path.clone()), cfg.clone(), vocab.clone(), 1, Some(0)).unwrap();
    assert_eq!(same, trained_eval);
    let (_, fresh, _) = run(None, cfg.clone(), vocab.clone(), 1, Some(0)).unwrap();
    assert!(
        fresh.top1[0] < trained_eval.top1[0],
        "{fresh:?} vs {trained_eval:?}"
    );

    // Fine-tuning starts where the saved heads ended, not where a random start does, and moves.
    let (_, _, tuned) = run(Some(path.clone()), cfg.clone(), vocab.clone(), 1, None).unwrap();
    assert!(
        tuned[0] < trained_losses[0] / 2.0,
        "first loss {} from the saved heads vs {} from scratch",
        tuned[0],
        trained_losses[0]
    );
    assert_ne!(
        tuned[0],
        tuned[tuned.len() - 1],
        "the saved heads get gradients"
    );

    // Heads made without context copy gain it (fresh copy layers, the rest as saved); the
    // other way round is refused below like any other change of shape.
    let mut copying = cfg.clone();
    copying.copy = 2;
    let (gained, _, _) = run(Some(path.clone()), copying, vocab.clone(), 1, Some(0)).unwrap();
    assert_eq!(gained.config().copy, 2);
    assert!(gained.heads().blocks.iter().all(|b| b.copy.is_some()));
    s4c_draft::io::save(&gained, &path).unwrap();
    let (kept, _, _) = run(
        Some(path.clone()),
        gained.config().clone(),
        vocab.clone(),
        1,
        Some(0),
    )
    .unwrap();
    assert_eq!(kept.config().copy, 2);
    let mut dropped = cfg.clone();
    dropped.copy = 0;
    assert!(matches!(
        run(Some(path.clone()), dropped, vocab.clone(), 1, None).map(|_| ()),
        Err(s4c_draft::DraftError::InvalidOption(_))
    ));
    s4c_draft::io::save(&trained, &path).unwrap();

    // Heads of another shape or vocabulary are refused with a typed error.
    let mut wider = cfg.clone();
    wider.window = 2;
    let mut reversed = vocab.clone();
    reversed.reverse();
    for (what, c, v) in [
        ("shape", wider, vocab.clone()),
        ("vocabulary", cfg, reversed),
    ] {
        let err = run(Some(path.clone()), c, v, 1, None).map(|_| ());
        assert!(
            matches!(err, Err(s4c_draft::DraftError::InvalidOption(_))),
            "{what}: {err:?}"
        );
    }
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(s4c_draft::io::config_path(&path));
}

/// `n` sequences, each a random phrase of `len` tokens said `times` times: after its first
/// saying, every next token is a copy of what followed the same place before, and nothing else
/// predicts it (each sequence's phrase is its own).
fn repeating_data(t: &Llama<B>, n: usize, len: usize, times: usize) -> Dataset {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let texts = (0..n)
        .map(|_| {
            let phrase: Vec<u32> = (0..len)
                .map(|_| rng.random_range(0..VOCAB as u32))
                .collect();
            phrase.iter().copied().cycle().take(len * times).collect()
        })
        .collect();
    dataset_of(t, texts)
}

#[test]
fn heads_with_context_copy_learn_to_copy() {
    let t = target();
    // Phrases of 7 said 4 times: 21 of 27 labels per head are copies (fewer for deeper heads).
    let data = repeating_data(&t, 48, 7, 4);
    let vocab: Vec<u32> = (0..VOCAB as u32).collect();
    let options = TrainOptions {
        epochs: 6,
        lr: 1e-2,
        batch_size: 64,
        held_out_every: 6,
        ..Default::default()
    };
    let run = |copy| {
        let mut cfg = config(&t, Coherence::Full);
        cfg.copy = copy;
        train::<AB, _>(&t, &data, cfg, vocab.clone(), &options, &mut |_| {})
            .unwrap()
            .1
    };
    let (without, with) = (run(0), run(3));
    for k in 0..4 {
        // Held-out phrases are new: only copying predicts them (about 3/4 of the labels).
        assert!(
            with.top1[k] > 0.6 && with.top1[k] > without.top1[k] + 0.3,
            "head {}: with copy {with:?}, without {without:?}",
            k + 1
        );
    }
}

#[test]
fn the_copy_bonus_lands_on_each_rows_candidate() {
    use s4c_draft::copy_candidate;
    use s4c_draft::heads::{batch_logits, COPY_PRIOR};
    let t = target();
    let data = repeating_data(&t, 3, 5, 3);
    let mut cfg = config(&t, Coherence::Full);
    cfg.copy = 3;
    // Tokens 40.. are outside the draft vocabulary: their candidates take the extra column.
    let dv = 40;
    let vocab: Vec<u32> = (0..dv as u32).collect();
    cfg.draft_vocab = dv;
    // Fresh copy layers: zero weights, bias COPY_PRIOR × matched length.
    let heads = Heads::<AB>::init(&cfg, &Default::default(), 2);
    let (frozen, batch) = batch_over(&t, &data, &cfg, &vocab);
    let logits = batch_logits(&heads, Coherence::Full, &frozen.head, &batch);
    let states = batch_states(&heads, Coherence::Full, &batch, 0.0);
    let full = frozen.full_head.into_data().to_vec::<f32>().unwrap();
    let h = t.config().hidden_size;
    let dot = |s: &[f32], tok: usize| -> f32 {
        s.iter()
            .zip(&full[tok * h..(tok + 1) * h])
            .map(|(a, b)| a * b)
            .sum()
    };
    let ex = examples(&data);
    let mut outside = 0;
    for j in 0..4 {
        let l = logits[j].clone().into_data().to_vec::<f32>().unwrap();
        let st = states[j].clone().into_data().to_vec::<f32>().unwrap();
        assert_eq!(l.len(), ex.len() * (dv + 1));
        for (r, &(seq_i, pos)) in ex.iter().enumerate() {
            let seq = &data.sequences[seq_i];
            let row = pos + j + 1;
            let cand = (row < seq.positions())
                .then(|| copy_candidate(&seq.tokens[..row + 1], 3))
                .flatten();
            let s = &st[r * h..(r + 1) * h];
            for col in 0..=dv {
                let mut want = if col < dv { dot(s, col) } else { -1e4 };
                if let Some(c) = cand {
                    let bonus = COPY_PRIOR * c.matched as f32;
                    if col < dv && c.token as usize == col {
                        want += bonus;
                    } else if col == dv && c.token as usize >= dv {
                        want = dot(s, c.token as usize) + bonus;
                    }
                }
                let got = l[r * (dv + 1) + col];
                assert!(
                    (got - want).abs() < 1e-3 * (1.0 + want.abs()),
                    "head {j} row {r} column {col}: {got} vs {want}"
                );
            }
            outside += usize::from(cand.is_some_and(|c| c.token as usize >= dv));
        }
    }
    assert!(
        outside > 0,
        "some candidates fall outside the draft vocabulary"
    );
}
