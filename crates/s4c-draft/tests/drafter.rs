//! The drafter on a tiny random target: shapes, window masking, determinism, batched tree
//! drafting against one-node-at-a-time drafting, save/load, mismatched heads.

use burn::backend::Flex;
use burn::module::Param;
use burn::tensor::{Tensor, TensorData};
use s4c_draft::copy_candidate;
use s4c_draft::{
    fingerprint, io, Coherence, DraftError, Drafter, DrafterConfig, Drafting, Heads,
    MultiHeadDrafter,
};
use s4c_models::gguf::GgmlType;
use s4c_models::quant::{Isa, QMatrix, Threads};
use s4c_models::testing::tiny_model;
use s4c_models::{CausalLm, Llama};
use s4c_tree::{build_dynamic, CandidateProvider, DynamicConfig, Template, TokenTree};

type B = Flex;
const VOCAB: usize = 64;

fn target(seed: u64) -> Llama<B> {
    tiny_model::<B>(VOCAB, seed, &Default::default())
}

fn config(t: &Llama<B>, coherence: Coherence) -> DrafterConfig {
    let mut c = DrafterConfig::new(fingerprint::<B, _>(t).unwrap());
    c.window = 3;
    c.coherence = coherence;
    c
}

fn features(n: usize, h: usize, seed: u64) -> Tensor<B, 2> {
    let v: Vec<f32> = (0..n * h)
        .map(|i| (((i as u64 + 1) * (seed + 7)) % 97) as f32 / 97.0 - 0.5)
        .collect();
    Tensor::from_data(TensorData::new(v, [n, h]), &Default::default())
}

fn host(t: Tensor<B, 2>) -> Vec<f32> {
    t.into_data().to_vec::<f32>().unwrap()
}

#[test]
fn shapes_and_candidates() {
    let t = target(1);
    let d = MultiHeadDrafter::random(config(&t, Coherence::Full), &t, 3).unwrap();
    let h = 32;
    let f = features(5, h, 1);
    let win = features(15, h, 2).reshape([5, 3, h]);
    let valid = Tensor::<B, 2>::ones([5, 3], &Default::default());
    let s = d.initial_states(f, win, valid);
    assert_eq!(s.dims(), [5, h]);
    let (states, cands) = d.expand(0, s, &[1, 2, 3, 4, 5], &[], 4).unwrap();
    assert_eq!(states.dims(), [5, h]);
    assert_eq!(cands.len(), 5);
    for c in &cands {
        assert_eq!(c.len(), 4);
        assert!(c.windows(2).all(|w| w[0].logprob >= w[1].logprob));
        assert!(c
            .iter()
            .all(|x| (x.token as usize) < VOCAB && x.logprob <= 0.0));
    }
    // Beyond the last head there is nothing to draft.
    let (_, none) = d.expand(4, features(2, h, 3), &[1, 2], &[], 4).unwrap();
    assert!(none.iter().all(Vec::is_empty));
}

#[test]
fn the_host_head_drafts_what_the_backend_head_drafts() {
    let t = target(4);
    let d = MultiHeadDrafter::random(config(&t, Coherence::Full), &t, 5).unwrap();
    let threads = Threads::new(2, Isa::detect()).unwrap();
    // The head copied from the drafter's tensor, and taken row by row from the target's matrix.
    let w = host(t.lm_head_weight());
    let h = 32;
    let matrix = QMatrix::from_f32(VOCAB, h, &w, GgmlType::F32).unwrap();
    for source in [None, Some(&matrix)] {
        let dh = MultiHeadDrafter::random(config(&t, Coherence::Full), &t, 5)
            .unwrap()
            .with_host_head(threads.clone(), source)
            .unwrap();
        assert!(dh.host_head() && !d.host_head());
        // The backend copy is dropped; training still reads the same head, rebuilt from the
        // host copy.
        assert_eq!(host(dh.head()), host(d.head()));
        // The host blocks round their weights and inputs to 8-bit blocks, as the target's
        // quantized layers do: states agree to that precision, and so do the candidates
        // wherever the backend's are not nearly tied.
        for n in [1usize, 3, 7] {
            let s = features(n, h, n as u64);
            let toks: Vec<u32> = (0..n as u32).map(|i| i * 9 % VOCAB as u32).collect();
            let (sa, ca) = d.expand(1, s.clone(), &toks, &[], 5).unwrap();
            let (sb, cb) = dh.expand(1, s, &toks, &[], 5).unwrap();
            let (sa, sb) = (host(sa), host(sb));
            let scale = sa.iter().fold(0f32, |m, x| m.max(x.abs()));
            let diff = sa
                .iter()
                .zip(&sb)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(diff > 0.0 && diff < 0.02 * scale, "{diff} of {scale}");
            for (a, b) in ca.iter().zip(&cb) {
                assert_eq!((a.len(), b.len()), (5, 5));
                // The k-th best value moves by at most what any value moves.
                for (x, y) in a.iter().zip(b) {
                    assert!((x.logprob - y.logprob).abs() < 0.05, "{x:?} vs {y:?}");
                }
                if a[0].logprob - a[1].logprob > 0.1 {
                    assert_eq!(a[0].token, b[0].token, "{a:?} vs {b:?}");
                }
            }
        }
    }
    // A head of another shape is refused.
    let wrong = QMatrix::from_f32(VOCAB - 1, h, &w[..(VOCAB - 1) * h], GgmlType::F32).unwrap();
    let e = MultiHeadDrafter::random(config(&t, Coherence::Full), &t, 5)
        .unwrap()
        .with_host_head(threads, Some(&wrong))
        .err()
        .expect("a head of the wrong shape");
    assert!(e.to_string().contains("LM head"), "{e}");
}

#[test]
fn padded_window_entries_are_ignored() {
    let t = target(1);
    let d = MultiHeadDrafter::random(config(&t, Coherence::Full), &t, 3).unwrap();
    let h = 32;
    let f = features(1, h, 1);
    let valid = Tensor::<B, 2>::from_data(
        TensorData::new(vec![0.0f32, 1.0, 1.0], [1, 3]),
        &Default::default(),
    );
    let a = features(3, h, 2);
    // Same real entries (1, 2), different padding (0).
    let mut b_rows = host(a.clone());
    for x in &mut b_rows[..h] {
        *x += 10.0;
    }
    let b = Tensor::<B, 2>::from_data(TensorData::new(b_rows.clone(), [3, h]), &Default::default());
    let sa = host(d.initial_states(f.clone(), a.clone().reshape([1, 3, h]), valid.clone()));
    let sb = host(d.initial_states(f.clone(), b.reshape([1, 3, h]), valid.clone()));
    assert!(sa.iter().zip(&sb).all(|(x, y)| (x - y).abs() < 1e-5));
    // A change in a real entry does change the state.
    let mut c_rows = host(a);
    for x in &mut c_rows[h..2 * h] {
        *x += 10.0;
    }
    let c = Tensor::<B, 2>::from_data(TensorData::new(c_rows, [3, h]), &Default::default());
    let sc = host(d.initial_states(f.clone(), c.reshape([1, 3, h]), valid));
    assert!(sa.iter().zip(&sc).any(|(x, y)| (x - y).abs() > 1e-4));
    // Without semantic coherence the state is the feature itself.
    let d2 = MultiHeadDrafter::random(config(&t, Coherence::Tokens), &t, 3).unwrap();
    let s2 = host(d2.initial_states(
        f.clone(),
        features(3, h, 2).reshape([1, 3, h]),
        Tensor::ones([1, 3], &Default::default()),
    ));
    assert_eq!(s2, host(f));
}

#[test]
fn same_seed_same_drafts() {
    let t = target(1);
    let draft = |seed| {
        let d = MultiHeadDrafter::random(config(&t, Coherence::Full), &t, seed).unwrap();
        let s = features(1, 32, 5);
        d.expand(0, s, &[7], &[], 6).unwrap().1
    };
    assert_eq!(draft(11), draft(11));
    assert_ne!(draft(11), draft(12));
}

/// Drafts one node at a time along its branch: the reference for batched drafting.
fn branch_candidates(
    d: &MultiHeadDrafter<B>,
    s0: &Tensor<B, 2>,
    path: &[u32],
    k: usize,
) -> Vec<u32> {
    let mut state = s0.clone();
    let mut cands = vec![];
    for (depth, &tok) in path.iter().enumerate() {
        let parent = if d.chains() { state } else { s0.clone() };
        let (s, c) = d.expand(depth, parent, &[tok], &[], k).unwrap();
        state = s;
        cands = c[0].iter().map(|c| c.token).collect();
    }
    cands
}

#[test]
fn drafting_drafts_each_branch_from_its_own_parent() {
    let t = target(2);
    for coherence in Coherence::ALL {
        let d = MultiHeadDrafter::random(config(&t, coherence), &t, 4).unwrap();
        let s0 = features(1, 32, 9);
        let mut drafting = Drafting::new(&d, s0.clone(), &[]);
        let tree = Template::mc_sim_7b_63().build(5, &mut drafting).unwrap();
        assert_eq!(tree.len(), 64);
        // Every node's children are the k best drafts of its own branch.
        for n in 0..tree.len() {
            let kids: Vec<u32> = tree.children(n).map(|c| tree.node(c).token).collect();
            if kids.is_empty() {
                continue;
            }
            let path = tree.tokens_to(n);
            let expect = branch_candidates(&d, &s0, &path, kids.len());
            assert_eq!(kids, expect, "{coherence}: node {n}");
        }
        // Independent heads ignore the branch: same candidates at every node of a depth.
        if coherence == Coherence::Independent {
            let a = branch_candidates(&d, &s0, &[5, 1], 3);
            let b = branch_candidates(&d, &s0, &[9, 2], 3);
            assert_eq!(a, b);
        }
    }
}

#[test]
fn dynamic_trees_respect_the_heads_depth() {
    let t = target(2);
    let d = MultiHeadDrafter::random(config(&t, Coherence::Full), &t, 4).unwrap();
    let mut drafting = Drafting::new(&d, features(1, 32, 9), &[]);
    let tree = build_dynamic(
        5,
        &DynamicConfig {
            top_k: 2,
            max_depth: 8,
            max_nodes: 200,
        },
        &mut drafting,
    )
    .unwrap();
    assert!(tree.len() <= 201);
    assert!((0..tree.len()).all(|n| tree.node(n).depth <= 4));
    assert!((0..tree.len()).any(|n| tree.node(n).depth == 4));
}

#[test]
fn save_load_round_trip_and_mismatch() {
    let t = target(1);
    let mut c = config(&t, Coherence::Full);
    c.draft_vocab = 40;
    c.layers = 2;
    c.copy = 3;
    let d = MultiHeadDrafter::random(c, &t, 3).unwrap();
    let dir = std::env::temp_dir().join(format!("s4c-draft-io-{}", std::process::id()));
    let path = dir.join("heads.safetensors");
    io::save(&d, &path).unwrap();
    let back = io::load::<B, _>(&path, &t).unwrap();
    assert_eq!(back.config(), d.config());
    assert_eq!(back.vocab(), d.vocab());
    let s0 = features(1, 32, 4);
    // A context with repeats: the copy layers are read too.
    let context = [3, 7, 9, 3, 30, 7, 9, 12, 3];
    let mut s1 = Drafting::new(&d, s0.clone(), &context);
    let mut s2 = Drafting::new(&back, s0, &context);
    let t1 = Template::mc_sim_7b_63().build(3, &mut s1).unwrap();
    let t2 = Template::mc_sim_7b_63().build(3, &mut s2).unwrap();
    assert_eq!(t1.flatten().tokens, t2.flatten().tokens);
    assert!(t1.flatten().tokens.iter().skip(1).all(|&x| x < 40));

    // Another target (other weights) is refused with a clear error.
    match io::load::<B, _>(&path, &target(9)) {
        Err(DraftError::WrongTarget { reason, .. }) => assert!(reason.contains("LM head")),
        other => panic!("expected WrongTarget, got {:?}", other.err()),
    }
    // A target with another vocabulary too.
    let other = tiny_model::<B>(80, 1, &Default::default());
    match io::load::<B, _>(&path, &other) {
        Err(DraftError::WrongTarget { reason, .. }) => assert!(reason.contains("vocabulary")),
        other => panic!("expected WrongTarget, got {:?}", other.err()),
    }
    // Missing and malformed files are typed errors.
    assert!(matches!(
        io::load::<B, _>(&dir.join("nope.safetensors"), &t),
        Err(DraftError::Io { .. })
    ));
    // A file cut short: its header names bytes the file does not hold.
    let whole = std::fs::read(&path).unwrap();
    std::fs::write(&path, &whole[..whole.len() - 100]).unwrap();
    match io::load::<B, _>(&path, &t) {
        Err(DraftError::InvalidHeads { reason, .. }) => assert!(reason.contains("out-of-file")),
        other => panic!("expected InvalidHeads, got {:?}", other.err()),
    }
    std::fs::write(&path, b"not safetensors").unwrap();
    assert!(matches!(
        io::load::<B, _>(&path, &t),
        Err(DraftError::InvalidHeads { .. })
    ));
    std::fs::write(io::config_path(&path), b"{").unwrap();
    assert!(matches!(
        io::load::<B, _>(&path, &t),
        Err(DraftError::InvalidHeads { .. })
    ));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn heads_saved_before_the_layers_option_load_with_one_layer() {
    let t = target(1);
    let mut v = serde_json::to_value(config(&t, Coherence::Full)).unwrap();
    assert_eq!(v["layers"], 1);
    v.as_object_mut().unwrap().remove("layers");
    let old: DrafterConfig = serde_json::from_value(v).unwrap();
    assert_eq!(old.layers, 1);
    // Each further layer adds a residual MLP per head and changes the drafts.
    let mut c = config(&t, Coherence::Full);
    c.layers = 3;
    let d = MultiHeadDrafter::random(c, &t, 3).unwrap();
    assert!(d.heads().blocks.iter().all(|b| b.more.len() == 2));
    let one = MultiHeadDrafter::random(config(&t, Coherence::Full), &t, 3).unwrap();
    let s0 = features(1, 32, 4);
    let deep = Template::mc_sim_7b_63()
        .build(3, &mut Drafting::new(&d, s0.clone(), &[]))
        .unwrap();
    let shallow = Template::mc_sim_7b_63()
        .build(3, &mut Drafting::new(&one, s0, &[]))
        .unwrap();
    assert_ne!(deep.flatten().tokens, shallow.flatten().tokens);
}

#[test]
fn templates_deeper_than_the_heads() {
    let t = target(1);
    let mut c = config(&t, Coherence::Full);
    c.heads = 1;
    let d = MultiHeadDrafter::random(c, &t, 1).unwrap();
    let mut s = Drafting::new(&d, features(1, 32, 1), &[]);
    let tree = TokenTree::new(3);
    let out = s.expand(&tree, &[0], 3).unwrap();
    assert_eq!(out[0].len(), 3);
    // A template deeper than the heads is a typed error; truncated to the heads it builds.
    assert!(Template::chain(3).unwrap().build(3, &mut s).is_err());
    let tree = Template::chain(3)
        .unwrap()
        .truncated(1)
        .unwrap()
        .build(3, &mut s)
        .unwrap();
    assert_eq!(tree.len(), 2, "one head drafts one level");
    let _ = t.config();
}

#[test]
fn context_copy_follows_each_branch_through_the_text() {
    let t = target(1);
    let mut c = config(&t, Coherence::Full);
    c.copy = 2;
    let device = Default::default();
    let mut heads = Heads::<B>::init(&c, &device, 5);
    // An overwhelming bonus: every head drafts the copy candidate first, whatever its state.
    for b in heads.blocks.iter_mut() {
        let copy = b.copy.as_mut().unwrap();
        copy.bias = Some(Param::from_tensor(Tensor::from_data(
            TensorData::new(vec![1e4f32, 2e4], [2]),
            &device,
        )));
    }
    let vocab: Vec<u32> = (0..VOCAB as u32).collect();
    let d = MultiHeadDrafter::new(c.clone(), heads, vocab, &t).unwrap();
    // "1 5 9 11 20 3 5": the root 5 occurred before, followed by 9 11 20.
    let context = [1, 5, 9, 11, 20, 3, 5];
    let s0 = features(1, 32, 4);
    let mut drafting = Drafting::new(&d, s0.clone(), &context);
    let chain = Template::chain(3).unwrap().build(5, &mut drafting).unwrap();
    assert_eq!(chain.flatten().tokens, vec![5, 9, 11, 20]);
    // Each node's own branch decides: after 11 comes 20 (the one-token match "11"), after 3
    // comes 5; a token the text never shows has no candidate, and the heads draft as they would
    // without copy (same parameters otherwise: the copy layer draws no random numbers).
    let mut plain_config = c;
    plain_config.copy = 0;
    let plain_heads = Heads::<B>::init(&plain_config, &device, 5);
    let vocab: Vec<u32> = (0..VOCAB as u32).collect();
    let plain = MultiHeadDrafter::new(plain_config, plain_heads, vocab, &t).unwrap();
    let mut tree = TokenTree::new(5);
    let nodes: Vec<usize> = [11, 3, 40]
        .iter()
        .map(|&tok| tree.push(0, tok, 0.0).unwrap())
        .collect();
    let mut drafting = Drafting::new(&d, s0.clone(), &context);
    let mut reference = Drafting::new(&plain, s0, &context);
    drafting.expand(&tree, &[0], 1).unwrap();
    reference.expand(&tree, &[0], 1).unwrap();
    let copied = drafting.expand(&tree, &nodes, 1).unwrap();
    let own = reference.expand(&tree, &nodes, 1).unwrap();
    for (i, &tok) in [11u32, 3, 40].iter().enumerate() {
        let mut text = context.to_vec();
        text.push(tok);
        let want = copy_candidate(&text, 2).map_or(own[i][0].token, |c| c.token);
        assert_eq!(copied[i][0].token, want, "below {tok}");
    }
    assert_eq!(copied[0][0].token, 20);
    assert_eq!(copied[1][0].token, 5);
}

#[test]
fn copied_tokens_outside_the_draft_vocabulary_are_scored_with_the_lm_head() {
    let t = target(1);
    let mut c = config(&t, Coherence::Full);
    c.copy = 2;
    c.draft_vocab = 32;
    // On the backend, and with the head and blocks on the host.
    for on_host in [false, true] {
        let d = MultiHeadDrafter::random(c.clone(), &t, 4).unwrap();
        let d = if on_host {
            d.with_host_head(Threads::new(2, Isa::detect()).unwrap(), None)
                .unwrap()
        } else {
            d
        };
        // Root 7 followed 50 before: 50 is outside the 32-token draft vocabulary.
        let context = [3, 7, 50, 9, 7];
        let s0 = features(1, 32, 6);
        let copies = [copy_candidate(&context, 2)];
        assert_eq!(copies[0].unwrap().token, 50);
        let (states, cands) = d.expand(0, s0, &[7], &copies, 33).unwrap();
        // Brute force: softmax over the draft vocabulary's logits and the candidate's own
        // column, LM-head row · state + its bonus.
        let s = host(states.clone());
        let head = host(d.head());
        let full = host(t.lm_head_weight());
        let h = s.len();
        let dot = |w: &[f32]| -> f32 { s.iter().zip(w).map(|(a, b)| a * b).sum() };
        let bonus = host(d.heads().copy_bonus(0, states).unwrap());
        let m = copies[0].unwrap().matched;
        let mut logits: Vec<f32> = (0..32).map(|i| dot(&head[i * h..(i + 1) * h])).collect();
        logits.push(dot(&full[50 * h..51 * h]) + bonus[m - 1]);
        let max = logits.iter().cloned().fold(f32::MIN, f32::max);
        let z: f32 = logits.iter().map(|x| (x - max).exp()).sum();
        let want = logits[32] - max - z.ln();
        let got = cands[0]
            .iter()
            .find(|x| x.token == 50)
            .expect("50 is proposed");
        assert!(
            (got.logprob - want).abs() < 1e-4,
            "{} vs {want} (host: {on_host})",
            got.logprob
        );
        assert_eq!(
            cands[0].len(),
            33,
            "the draft vocabulary and the copied token"
        );
    }
}

#[test]
fn the_fingerprint_reads_the_same_probe_from_host_rows_as_from_the_tensor() {
    // The CPU engine's fingerprint reads the probed rows of its head in their storage type; the
    // tensor engine's selects them from the whole head as a tensor.
    use s4c_models::testing::tiny_model_on;
    use s4c_models::EngineKind;
    for seed in [1, 7] {
        let d = Default::default();
        let host = tiny_model_on::<B>(VOCAB, seed, &d, EngineKind::Cpu);
        let tensors = tiny_model_on::<B>(VOCAB, seed, &d, EngineKind::Tensors);
        assert!(host.lm_head_matrix().is_some() && tensors.lm_head_matrix().is_none());
        let (a, b) = (fingerprint(&host).unwrap(), fingerprint(&tensors).unwrap());
        assert_eq!(a.lm_head_probe, b.lm_head_probe);
        assert!(a.lm_head_probe.iter().any(|&x| x != 0.0));
    }
}
