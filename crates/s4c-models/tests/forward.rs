//! Forward-pass invariants on tiny random models, for both engines (the CPU engine with either KV
//! cache type): caching, masks, trees, commit; the CPU engine against the tensor engine; the CPU
//! engine's batch invariance; the f16 KV cache against the f32 one.

use burn::backend::Flex;
use burn::tensor::{DType, Tensor};
use s4c_models::testing::{tiny_model_on, tiny_model_with};
use s4c_models::{AttentionMask, CausalLm, EngineKind, Input, Llama, LoadOptions, Logits};

type B = Flex;
const VOCAB: usize = 50;

/// The same random model on the CPU engine (KV cache in f32, then in f16) and on the tensor
/// engine.
fn engines(seed: u64) -> [Llama<B>; 3] {
    let f16_kv = LoadOptions {
        engine: EngineKind::Cpu,
        dtype: Some(DType::F32),
        kv_dtype: Some(DType::F16),
        threads: 2,
        ..LoadOptions::default()
    };
    let d = Default::default();
    [
        tiny_model_on(VOCAB, seed, &d, EngineKind::Cpu),
        tiny_model_with(VOCAB, seed, &d, &f16_kv).unwrap(),
        tiny_model_on(VOCAB, seed, &d, EngineKind::Tensors),
    ]
}

fn rows(t: Tensor<B, 2>) -> Vec<Vec<f32>> {
    let [n, v] = t.dims();
    let d = t.into_data().convert::<f32>().to_vec::<f32>().unwrap();
    (0..n).map(|i| d[i * v..(i + 1) * v].to_vec()).collect()
}

fn assert_close(a: &[f32], b: &[f32], tol: f32, what: &str) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= tol, "{what}: [{i}] {x} vs {y}");
    }
}

#[test]
fn sequence_at_once_equals_token_by_token_with_cache() {
    for m in engines(1) {
        let toks: Vec<u32> = vec![3, 17, 5, 42, 8, 1, 9, 30];
        let mut c1 = m.new_cache(64);
        let all = rows(
            m.forward(&Input::causal(&toks, 0, Logits::All), &mut c1)
                .unwrap()
                .logits,
        );
        let mut c2 = m.new_cache(64);
        for (i, t) in toks.iter().enumerate() {
            let one = rows(
                m.forward(&Input::causal(&[*t], i, Logits::All), &mut c2)
                    .unwrap()
                    .logits,
            );
            assert_close(&one[0], &all[i], 1e-4, &format!("token {i}"));
        }
        assert_eq!(c2.len(), toks.len());
    }
}

/// A cache grown with `reserve` after a first forward continues as one made large at the start:
/// the same logits for the next tokens (the same bits on the CPU engine), and the new room used.
#[test]
fn a_grown_cache_keeps_its_entries() {
    for (e, m) in engines(7).into_iter().enumerate() {
        let (first, next): (&[u32], &[u32]) = (&[3, 17, 5, 42, 8], &[1, 9, 30, 12, 44, 6]);
        let mut large = m.new_cache(16);
        m.forward(&Input::causal(first, 0, Logits::Last), &mut large)
            .unwrap();
        let want = rows(
            m.forward(&Input::causal(next, first.len(), Logits::All), &mut large)
                .unwrap()
                .logits,
        );
        let mut small = m.new_cache(first.len());
        m.forward(&Input::causal(first, 0, Logits::Last), &mut small)
            .unwrap();
        assert!(
            m.forward(&Input::causal(next, first.len(), Logits::All), &mut small)
                .is_err(),
            "engine {e}: a full cache must refuse more tokens"
        );
        small.truncate(first.len());
        small.reserve(first.len() + next.len());
        assert_eq!(small.capacity(), first.len() + next.len());
        let got = rows(
            m.forward(&Input::causal(next, first.len(), Logits::All), &mut small)
                .unwrap()
                .logits,
        );
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            if e < 2 {
                assert_eq!(g, w, "engine {e}: row {i} after growing");
            } else {
                assert_close(g, w, 1e-5, &format!("engine {e}: row {i} after growing"));
            }
        }
    }
}

#[test]
fn chain_mask_equals_causal_forward() {
    for m in engines(2) {
        let prefix = [4u32, 9, 11];
        let block = [7u32, 2, 33, 21];
        let run = |mask: Option<&AttentionMask>| {
            let mut c = m.new_cache(32);
            m.forward(&Input::causal(&prefix, 0, Logits::Last), &mut c)
                .unwrap();
            let input = Input {
                tokens: &block,
                positions: (3..7).collect(),
                mask,
                logits: Logits::All,
            };
            let out = m.forward(&input, &mut c).unwrap();
            (rows(out.logits), rows(out.features))
        };
        let chain: Vec<bool> = (0..4).flat_map(|i| (0..4).map(move |j| j <= i)).collect();
        let mask = AttentionMask::tree(3, 4, &chain).unwrap();
        let (l1, f1) = run(None);
        let (l2, f2) = run(Some(&mask));
        for i in 0..4 {
            assert_close(&l1[i], &l2[i], 1e-5, "logits");
            assert_close(&f1[i], &f2[i], 1e-5, "features");
        }
    }
}

/// A branching tree: root r=5 at depth 0; children a, b (depth 1); a has children c, d (depth 2).
/// Each node's logits must equal running its root-to-node path causally.
#[test]
fn branching_tree_equals_each_path_run_separately() {
    for m in engines(3) {
        let prefix = [10u32, 20, 30, 40];
        let tokens = [5u32, 6, 7, 8, 9];
        let parent = [usize::MAX, 0, 0, 1, 1];
        let depth = [0usize, 1, 1, 2, 2];
        let n = tokens.len();
        let mut vis = vec![false; n * n];
        for i in 0..n {
            let mut j = i;
            loop {
                vis[i * n + j] = true;
                if parent[j] == usize::MAX {
                    break;
                }
                j = parent[j];
            }
        }
        let mask = AttentionMask::tree(prefix.len(), n, &vis).unwrap();
        let mut c = m.new_cache(32);
        m.forward(&Input::causal(&prefix, 0, Logits::Last), &mut c)
            .unwrap();
        let positions = depth.iter().map(|d| prefix.len() + d).collect();
        let tree = rows(
            m.forward(&Input::tree(&tokens, positions, &mask), &mut c)
                .unwrap()
                .logits,
        );
        for (node, tree_row) in tree.iter().enumerate() {
            let mut path = vec![node];
            while parent[*path.last().unwrap()] != usize::MAX {
                path.push(parent[*path.last().unwrap()]);
            }
            path.reverse();
            let mut seq = prefix.to_vec();
            seq.extend(path.iter().map(|&p| tokens[p]));
            let mut c2 = m.new_cache(32);
            let want = rows(
                m.forward(&Input::causal(&seq, 0, Logits::Last), &mut c2)
                    .unwrap()
                    .logits,
            );
            assert_close(tree_row, &want[0], 1e-4, &format!("node {node}"));
        }
    }
}

#[test]
fn commit_then_continue_equals_never_drafting_rejected_tokens() {
    for m in engines(4) {
        let prefix = [1u32, 2, 3];
        // Tree: root 11 (0); children 12 (1), 13 (2); 14 (3) child of 13. Accept path 0 → 2 → 3.
        let tokens = [11u32, 12, 13, 14];
        let vis = [
            true, false, false, false, //
            true, true, false, false, //
            true, false, true, false, //
            true, false, true, true,
        ];
        let mask = AttentionMask::tree(3, 4, &vis).unwrap();
        let mut c = m.new_cache(32);
        m.forward(&Input::causal(&prefix, 0, Logits::Last), &mut c)
            .unwrap();
        m.forward(&Input::tree(&tokens, vec![3, 4, 4, 5], &mask), &mut c)
            .unwrap();
        c.commit(&[0, 2, 3]).unwrap();
        assert_eq!(c.len(), 6);
        let after = rows(
            m.forward(&Input::causal(&[15, 16], 6, Logits::All), &mut c)
                .unwrap()
                .logits,
        );

        let seq = [1u32, 2, 3, 11, 13, 14, 15, 16];
        let mut c2 = m.new_cache(32);
        let want = rows(
            m.forward(&Input::causal(&seq, 0, Logits::All), &mut c2)
                .unwrap()
                .logits,
        );
        assert_close(&after[0], &want[6], 1e-4, "first after commit");
        assert_close(&after[1], &want[7], 1e-4, "second after commit");

        // truncate rolls back too.
        c.truncate(3);
        let again = rows(
            m.forward(&Input::causal(&[11, 13, 14], 3, Logits::All), &mut c)
                .unwrap()
                .logits,
        );
        assert_close(&again[2], &want[5], 1e-4, "after truncate");
        assert!(c.commit(&[7]).is_err());
    }
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    for m in engines(5) {
        let mut c = m.new_cache(4);
        assert!(m
            .forward(&Input::causal(&[], 0, Logits::All), &mut c)
            .is_err());
        let err = m
            .forward(&Input::causal(&[1, 2, 3, 4, 5], 0, Logits::All), &mut c)
            .unwrap_err();
        assert!(err.to_string().contains("context full"), "{err}");
        assert!(m
            .forward(&Input::causal(&[VOCAB as u32], 0, Logits::All), &mut c)
            .is_err());
        let input = Input {
            tokens: &[1, 2],
            positions: vec![0],
            mask: None,
            logits: Logits::All,
        };
        assert!(m.forward(&input, &mut c).is_err());
        let mask = AttentionMask::causal(0, 3);
        let input = Input {
            tokens: &[1, 2],
            positions: vec![0, 1],
            mask: Some(&mask),
            logits: Logits::All,
        };
        assert!(m.forward(&input, &mut c).is_err());
        let mut big = m.new_cache(1000);
        assert!(m
            .forward(&Input::causal(&[1], 10_000, Logits::All), &mut big)
            .is_err());
    }
}

#[test]
fn sharded_weights_give_the_same_logits() {
    use burn::tensor::DType;
    use s4c_models::testing::random_weights;
    use s4c_models::LlamaConfig;
    let config = LlamaConfig::tiny(VOCAB);
    let w = random_weights(&config, 6);
    let d = Default::default();
    let one = Llama::<B>::tensors(&config, &w, &d, DType::F32, DType::F32, 64, 1).unwrap();
    let three = Llama::<B>::tensors(&config, &w, &d, DType::F32, DType::F32, 64, 3).unwrap();
    // One row (parallel shards) and many rows (sequential shards).
    for toks in [vec![5u32], vec![5, 6, 7, 8, 9, 10, 11]] {
        let mut c1 = one.new_cache(16);
        let mut c3 = three.new_cache(16);
        let a = rows(
            one.forward(&Input::causal(&toks, 0, Logits::All), &mut c1)
                .unwrap()
                .logits,
        );
        let b = rows(
            three
                .forward(&Input::causal(&toks, 0, Logits::All), &mut c3)
                .unwrap()
                .logits,
        );
        for (x, y) in a.iter().zip(&b) {
            assert_close(x, y, 1e-5, "sharded");
        }
    }
}

#[test]
fn cpu_engine_forward_equals_the_tensor_engine_forward() {
    let [host, _, plain] = engines(6);
    assert_eq!((host.engine(), plain.engine()), ("cpu", "tensors"));
    let toks: Vec<u32> = (0..20).map(|i| (i * 7 + 3) % VOCAB as u32).collect();
    // Blocks of 20, 16, 4 and 1 rows (whole and partial register tiles), then a tree.
    let (mut c1, mut c2) = (plain.new_cache(64), host.new_cache(64));
    let mut start = 0;
    for n in [20usize, 4, 1, 16] {
        let block: Vec<u32> = (0..n as u32)
            .map(|i| (i * 5 + start as u32) % VOCAB as u32)
            .collect();
        let block = if start == 0 { toks.clone() } else { block };
        let a = plain
            .forward(&Input::causal(&block, start, Logits::All), &mut c1)
            .unwrap();
        let b = host
            .forward(&Input::causal(&block, start, Logits::All), &mut c2)
            .unwrap();
        for (x, y) in rows(a.logits).iter().zip(rows(b.logits)) {
            assert_close(x, &y, 1e-4, &format!("block of {n}"));
        }
        assert_eq!(
            rows(plain.lm_head_weight()),
            rows(host.lm_head_weight()),
            "the LM head weight is the same"
        );
        start += block.len();
    }
    // A tree block (two branches from one root: depth positions, ancestor mask); the caches
    // above hold the same tokens.
    let parents = [usize::MAX, 0, 0, 1, 2, 3, 4, 5, 6];
    let n = parents.len();
    let depth = |mut i: usize| {
        let mut d = 0;
        while parents[i] != usize::MAX {
            i = parents[i];
            d += 1;
        }
        d
    };
    let visible: Vec<bool> = (0..n * n)
        .map(|ij| {
            let (i, j) = (ij / n, ij % n);
            let mut a = i;
            loop {
                if a == j {
                    return true;
                }
                if parents[a] == usize::MAX {
                    return false;
                }
                a = parents[a];
            }
        })
        .collect();
    let mask = AttentionMask::tree(start, n, &visible).unwrap();
    let block: Vec<u32> = (0..n as u32).map(|i| (i * 11 + 2) % VOCAB as u32).collect();
    let positions: Vec<usize> = (0..n).map(|i| start + depth(i)).collect();
    let a = plain
        .forward(&Input::tree(&block, positions.clone(), &mask), &mut c1)
        .unwrap();
    let b = host
        .forward(&Input::tree(&block, positions, &mask), &mut c2)
        .unwrap();
    for (x, y) in rows(a.logits).iter().zip(rows(b.logits)) {
        assert_close(x, &y, 1e-4, "tree block");
    }
    for (x, y) in rows(a.features).iter().zip(rows(b.features)) {
        assert_close(x, &y, 1e-4, "tree block features");
    }
    // A prompt longer than the CPU engine's blocks runs in blocks of 64 (the last one short).
    let prompt: Vec<u32> = (0..150).map(|i| (i * 13 + 5) % VOCAB as u32).collect();
    let (mut c1, mut c2) = (plain.new_cache(160), host.new_cache(160));
    for logits in [Logits::All, Logits::Last] {
        let a = plain
            .forward(&Input::causal(&prompt, 0, logits), &mut c1)
            .unwrap();
        let b = host
            .forward(&Input::causal(&prompt, 0, logits), &mut c2)
            .unwrap();
        assert_eq!(
            b.logits.dims()[0],
            if logits == Logits::All { 150 } else { 1 }
        );
        assert_eq!(b.features.dims()[0], 150);
        for (x, y) in rows(a.logits).iter().zip(rows(b.logits)) {
            assert_close(x, &y, 1e-4, "long prompt");
        }
        for (x, y) in rows(a.features).iter().zip(rows(b.features)) {
            assert_close(x, &y, 1e-4, "long prompt features");
        }
        assert_eq!(c2.len(), 150);
        c1.truncate(0);
        c2.truncate(0);
    }
}

/// The CPU engine computes each token's row on its own: a token's logits and features are the
/// same bits decoded alone, inside a prompt block, or at any node of a verification tree — and
/// after a commit, as if the rejected branches had never been verified. For f32 weights and for
/// block-quantized ones (one block per row and an odd count: hidden 32, intermediate 64).
#[test]
fn cpu_engine_rows_are_bit_identical_alone_in_blocks_and_in_trees() {
    use s4c_models::gguf::GgmlType;
    use s4c_models::testing::tiny_quantized_model;
    let bits = |t: Tensor<B, 2>| -> Vec<Vec<u32>> {
        rows(t)
            .into_iter()
            .map(|r| r.into_iter().map(f32::to_bits).collect())
            .collect()
    };
    let d = Default::default();
    let models = [
        tiny_model_on::<B>(VOCAB, 9, &d, EngineKind::Cpu),
        tiny_quantized_model::<B>(VOCAB, 9, GgmlType::Q4_1, &d).unwrap(),
        tiny_quantized_model::<B>(VOCAB, 9, GgmlType::Q8_0, &d).unwrap(),
        tiny_quantized_model::<B>(VOCAB, 9, GgmlType::Q4_0, &d).unwrap(),
    ];
    for m in &models {
        let seq: Vec<u32> = (0..90).map(|i| (i * 17 + 4) % VOCAB as u32).collect();
        // One token at a time.
        let mut c = m.new_cache(128);
        let mut alone = vec![];
        let mut alone_features = vec![];
        for (i, t) in seq.iter().enumerate() {
            let o = m
                .forward(&Input::causal(&[*t], i, Logits::All), &mut c)
                .unwrap();
            alone.extend(bits(o.logits));
            alone_features.extend(bits(o.features));
        }
        // One prompt (blocks of 64 and 26).
        let mut c = m.new_cache(128);
        let o = m
            .forward(&Input::causal(&seq, 0, Logits::All), &mut c)
            .unwrap();
        assert_eq!(
            bits(o.logits),
            alone,
            "{:?}: prompt block",
            m.weight_types()
        );
        assert_eq!(bits(o.features), alone_features);
        // A tree after 10 tokens: node i's path is seq[10..] for the chain 0→1→3→5, and a
        // branch 0→2→4 of other tokens.
        let base = 10;
        let parents = [usize::MAX, 0, 0, 1, 2, 3];
        let tokens = [seq[10], seq[11], 7, seq[12], 8, seq[13]];
        let n = parents.len();
        let anc = |mut i: usize, j: usize| loop {
            if i == j {
                return true;
            }
            if parents[i] == usize::MAX {
                return false;
            }
            i = parents[i];
        };
        let vis: Vec<bool> = (0..n * n).map(|ij| anc(ij / n, ij % n)).collect();
        let depth = [0, 1, 1, 2, 2, 3];
        let mask = AttentionMask::tree(base, n, &vis).unwrap();
        let mut c = m.new_cache(128);
        m.forward(&Input::causal(&seq[..base], 0, Logits::Last), &mut c)
            .unwrap();
        let positions = depth.iter().map(|d| base + d).collect();
        let tree = bits(
            m.forward(&Input::tree(&tokens, positions, &mask), &mut c)
                .unwrap()
                .logits,
        );
        for (node, pos) in [(0, 10), (1, 11), (3, 12), (5, 13)] {
            assert_eq!(
                tree[node],
                alone[pos],
                "{:?}: node {node}",
                m.weight_types()
            );
        }
        // Commit the chain; the rest continues as plain decoding did.
        c.commit(&[0, 1, 3, 5]).unwrap();
        let o = m
            .forward(&Input::causal(&seq[14..20], 14, Logits::All), &mut c)
            .unwrap();
        assert_eq!(bits(o.logits), alone[14..20].to_vec());
    }
}

/// The KV cache writes each new token with `slice_assign`; burn-flex 0.21.0 copied the whole
/// destination on every such write (O(capacity) per token). The workspace patches it
/// (`vendor/burn-flex/PATCHED.md`); this fails if the patch is dropped before Burn has the fix.
#[test]
fn slice_assign_writes_a_uniquely_owned_tensor_in_place() {
    use burn::tensor::TensorPrimitive;
    let storage = |t: &Tensor<B, 3>| -> *const f32 {
        match t.clone().into_primitive() {
            TensorPrimitive::Float(f) => f.storage::<f32>().as_ptr(),
            TensorPrimitive::QFloat(_) => unreachable!("float tensor"),
        }
    };
    let cache = Tensor::<B, 3>::zeros([3, 64, 8], &Default::default());
    let before = storage(&cache);
    let cache = cache.slice_assign(
        [0..3, 5..6, 0..8],
        Tensor::<B, 3>::ones([3, 1, 8], &Default::default()),
    );
    assert_eq!(
        storage(&cache),
        before,
        "slice_assign copied the destination"
    );
    let d = cache.into_data().to_vec::<f32>().unwrap();
    assert_eq!(d.iter().sum::<f32>(), 24.0);
    assert_eq!(d[5 * 8], 1.0);
}

/// The patched burn-flex reads attention keys and values in place when each head's rows are
/// contiguous (the valid prefix of the KV cache): the result must equal attention on copies.
#[test]
fn attention_on_cache_views_equals_attention_on_copies() {
    use burn::tensor::{module::attention, ops::AttentionModuleOptions, Distribution};
    let d = Default::default();
    let normal =
        |shape: [usize; 4]| Tensor::<B, 4>::random(shape, Distribution::Normal(0.0, 1.0), &d);
    // (query rows, keys): flex's naive path, and its flash path (query rows × keys > 256 Ki).
    for (rows, len) in [(4usize, 5usize), (4, 40), (64, 4200)] {
        let q = normal([1, 3, rows, 8]);
        let (k_buf, v_buf) = (normal([1, 3, len + 7, 8]), normal([1, 3, len + 7, 8]));
        let view = |t: &Tensor<B, 4>| t.clone().slice([0..1, 0..3, 0..len, 0..8]);
        let copy = |t: &Tensor<B, 4>| Tensor::<B, 4>::from_data(view(t).into_data(), &d);
        let opts = AttentionModuleOptions::default;
        let a = attention(q.clone(), view(&k_buf), view(&v_buf), None, None, opts());
        let b = attention(q, copy(&k_buf), copy(&v_buf), None, None, opts());
        let (a, b) = (
            a.into_data().to_vec::<f32>().unwrap(),
            b.into_data().to_vec::<f32>().unwrap(),
        );
        assert_close(&a, &b, 1e-6, &format!("{rows} rows, {len} keys"));
    }
}

/// flex's naive attention (with s4c's patch that runs the (batch, head) pairs in parallel when
/// each has enough work) against a brute-force softmax(q·kᵀ/√d + mask)·v in f64: small shapes
/// (one pair after another) and decode-sized ones over long contexts (in parallel), with and
/// without a mask, several heads and two batch entries.
#[test]
fn attention_matches_a_brute_force_reference() {
    use burn::tensor::{module::attention, ops::AttentionModuleOptions, Bool, Distribution};
    let d = Default::default();
    for (batch, heads, rows, keys, hd, masked) in [
        (1usize, 3usize, 3usize, 40usize, 8usize, false),
        (1, 3, 3, 2000, 64, false),
        (2, 3, 12, 700, 16, true),
        // Parallel in blocks of query rows (an uneven split; a 16-token tree after 1,024
        // tokens; a 64-token prompt block after 1,436, on the naive path since the patch).
        (1, 3, 5, 300, 64, true),
        (1, 3, 48, 1040, 64, true),
        (1, 3, 192, 1500, 64, true),
    ] {
        let q =
            Tensor::<B, 4>::random([batch, heads, rows, hd], Distribution::Normal(0.0, 1.0), &d);
        let k =
            Tensor::<B, 4>::random([batch, heads, keys, hd], Distribution::Normal(0.0, 1.0), &d);
        let v =
            Tensor::<B, 4>::random([batch, heads, keys, hd], Distribution::Normal(0.0, 1.0), &d);
        // Mask (true = hidden): row r sees keys below keys - rows + r + 1 (causal over a block).
        let hidden: Vec<bool> = (0..batch * heads * rows * keys)
            .map(|i| masked && (i % keys) > keys - rows + (i / keys) % rows)
            .collect();
        let mask = masked.then(|| {
            Tensor::<B, 4, Bool>::from_data(
                burn::tensor::TensorData::new(hidden.clone(), [batch, heads, rows, keys]),
                &d,
            )
        });
        let got = attention(
            q.clone(),
            k.clone(),
            v.clone(),
            mask,
            None,
            AttentionModuleOptions::default(),
        )
        .into_data()
        .to_vec::<f32>()
        .unwrap();
        let (q, k, v) = (
            q.into_data().to_vec::<f32>().unwrap(),
            k.into_data().to_vec::<f32>().unwrap(),
            v.into_data().to_vec::<f32>().unwrap(),
        );
        let mut want = vec![0f32; batch * heads * rows * hd];
        for p in 0..batch * heads {
            for r in 0..rows {
                let qr = &q[(p * rows + r) * hd..][..hd];
                let scores: Vec<f64> = (0..keys)
                    .map(|j| {
                        if hidden[(p * rows + r) * keys + j] {
                            return f64::NEG_INFINITY;
                        }
                        let kj = &k[(p * keys + j) * hd..][..hd];
                        let dot: f64 = qr.iter().zip(kj).map(|(a, b)| *a as f64 * *b as f64).sum();
                        dot / (hd as f64).sqrt()
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let total: f64 = weights.iter().sum();
                for c in 0..hd {
                    let out: f64 = (0..keys)
                        .map(|j| weights[j] * v[(p * keys + j) * hd + c] as f64)
                        .sum();
                    want[(p * rows + r) * hd + c] = (out / total) as f32;
                }
            }
        }
        assert_close(
            &got,
            &want,
            1e-4,
            &format!(
                "batch {batch}, heads {heads}, {rows} rows, {keys} keys, hd {hd}, mask {masked}"
            ),
        );
    }
}

/// Several sequences in one batched forward — a causal step beside verification trees — give
/// each the bits its own forward gives (CPU engine: one pass for all rows), and the tensor
/// engine's sequential batch the same as its forwards; caches advance as with single forwards.
#[test]
fn a_batched_forward_equals_each_sequence_alone() {
    use s4c_models::gguf::GgmlType;
    use s4c_models::testing::tiny_quantized_model;
    use s4c_models::SequenceInput;
    let d = Default::default();
    let models = [
        tiny_quantized_model::<B>(VOCAB, 4, GgmlType::Q4_1, &d).unwrap(),
        tiny_quantized_model::<B>(VOCAB, 4, GgmlType::Q8_0, &d).unwrap(),
        tiny_model_on::<B>(VOCAB, 4, &d, EngineKind::Tensors),
    ];
    let prompts: [&[u32]; 3] = [&[1, 2, 3, 4, 5], &[7, 8], &[9, 10, 11, 12, 13, 14, 15, 16]];
    let steps: [&[u32]; 3] = [&[6], &[9, 4, 5], &[3, 2]];
    // Sequence 0 takes a causal step; 1 a tree whose two leaves see the root alone (depths
    // 0, 1, 1); 2 a chain given as a tree.
    let trees: [Option<(Vec<usize>, Vec<bool>)>; 3] = [
        None,
        Some((
            vec![0, 1, 1],
            vec![true, false, false, true, true, false, true, false, true],
        )),
        Some((vec![0, 1], vec![true, false, true, true])),
    ];
    let masks: Vec<Option<AttentionMask>> = prompts
        .iter()
        .zip(&trees)
        .zip(steps)
        .map(|((p, t), s)| {
            t.as_ref()
                .map(|(_, dense)| AttentionMask::tree(p.len(), s.len(), dense).unwrap())
        })
        .collect();
    let input = |i: usize| -> Input<'_> {
        let start = prompts[i].len();
        match (&trees[i], &masks[i]) {
            (Some((depths, _)), Some(mask)) => {
                Input::tree(steps[i], depths.iter().map(|d| start + d).collect(), mask)
            }
            _ => Input::causal(steps[i], start, Logits::All),
        }
    };
    for model in &models {
        let bits = |t: Tensor<B, 2>| -> Vec<u32> {
            rows(t).concat().iter().map(|x| x.to_bits()).collect()
        };
        // Alone: prefill, then the step.
        let mut alone = vec![];
        for (i, p) in prompts.iter().enumerate() {
            let mut cache = model.new_cache(32);
            model
                .forward(&Input::causal(p, 0, Logits::Last), &mut cache)
                .unwrap();
            let out = model.forward(&input(i), &mut cache).unwrap();
            alone.push((bits(out.logits), bits(out.features), cache.len()));
        }
        // Together: the same prefills, then one batched step.
        let mut caches: Vec<_> = prompts
            .iter()
            .map(|p| {
                let mut c = model.new_cache(32);
                model
                    .forward(&Input::causal(p, 0, Logits::Last), &mut c)
                    .unwrap();
                c
            })
            .collect();
        let inputs: Vec<Input<'_>> = (0..prompts.len()).map(input).collect();
        let mut items: Vec<SequenceInput<'_, B>> = inputs
            .iter()
            .zip(caches.iter_mut())
            .map(|(input, cache)| SequenceInput { input, cache })
            .collect();
        let outs = model.forward_batch(&mut items).unwrap();
        drop(items);
        for (i, out) in outs.into_iter().enumerate() {
            let got = (bits(out.logits), bits(out.features), caches[i].len());
            assert_eq!(got, alone[i], "sequence {i} on {}", model.engine());
        }
    }
}

#[test]
fn an_f16_kv_cache_rounds_keys_and_values_and_stays_close_to_f32() {
    let d = Default::default();
    let with = |kv| {
        let o = LoadOptions {
            engine: EngineKind::Cpu,
            dtype: Some(DType::F32),
            kv_dtype: kv,
            threads: 2,
            ..LoadOptions::default()
        };
        tiny_model_with::<B>(VOCAB, 12, &d, &o).unwrap()
    };
    let (m32, m16) = (with(None), with(Some(DType::F16)));
    assert_eq!(
        m32.kv_dtype(),
        DType::F32,
        "f32 weights keep an f32 cache by default"
    );
    assert_eq!(m16.kv_dtype(), DType::F16);
    let seq: Vec<u32> = (0..60).map(|i| (i * 7 + 3) % VOCAB as u32).collect();
    let run = |m: &Llama<B>| {
        let mut c = m.new_cache(64);
        rows(
            m.forward(&Input::causal(&seq, 0, Logits::All), &mut c)
                .unwrap()
                .logits,
        )
    };
    let (a, b) = (run(&m32), run(&m16));
    // The first row attends to its own key and value only: softmax of one score is 1 whatever
    // its rounding, so the row's output is its value rounded to f16.
    let mut worst = 0f32;
    let mut scale = 0f32;
    for (x, y) in a.iter().flatten().zip(b.iter().flatten()) {
        worst = worst.max((x - y).abs());
        scale = scale.max(x.abs());
    }
    assert!(worst > 0.0, "the f16 cache must round (identical logits)");
    assert!(
        worst <= 2e-3 * scale.max(1.0),
        "max diff {worst} (logits up to {scale})"
    );
    // Quantized weights take an f16 cache by default; bf16 and a tensor-engine cache type other
    // than its compute dtype are refused.
    let q = s4c_models::testing::tiny_quantized_model::<B>(
        VOCAB,
        1,
        s4c_models::gguf::GgmlType::Q8_0,
        &d,
    )
    .unwrap();
    assert_eq!(q.kv_dtype(), DType::F16);
    for (engine, kv) in [
        (EngineKind::Cpu, DType::BF16),
        (EngineKind::Tensors, DType::F16),
    ] {
        let o = LoadOptions {
            engine,
            kv_dtype: Some(kv),
            ..LoadOptions::default()
        };
        let e = tiny_model_with::<B>(VOCAB, 1, &d, &o)
            .err()
            .expect("refused");
        assert!(e.to_string().contains("KV cache"), "{e}");
    }
}
