//! Self-distillation data: the target answers the training prompts and every position's feature
//! and top-k next-token distribution are kept, so training never runs the target again.
//!
//! Answers are generated for many prompts at once in one shared KV cache: each step feeds one
//! token per unfinished sequence, with a block-diagonal mask so a sequence sees only its own slots
//! (batched decoding through the same tree-masked forward that verification uses). They are greedy
//! by default; with a temperature, each prompt can get several sampled answers (more data from the
//! same prompts), every one drawn from its own seeded generator so batching does not change its
//! draws (only the float rounding of the rows, which can tip a draw that lands on a boundary).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::tensor::{backend::Backend, Tensor};
use half::f16;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use s4c_models::{AttentionMask, CausalLm, Input, Logits};
use safetensors::{tensor::TensorView, Dtype, SafeTensors};

use crate::error::{DraftError, Result};

/// One sequence of the distillation set: prompt then the target's own answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Sequence {
    /// Prompt ids followed by the generated ids.
    pub tokens: Vec<u32>,
    /// How many of `tokens` are the prompt.
    pub prompt_len: usize,
    /// `[tokens.len() - 1, hidden]` final-norm features: row `t` is the target's state at token
    /// `t`, the input of its prediction of token `t + 1`.
    pub features: Vec<f16>,
    /// `[tokens.len() - 1, top_k]` the target's most likely next tokens at each row, best first.
    pub top_ids: Vec<u32>,
    /// `[tokens.len() - 1, top_k]` their probabilities.
    pub top_probs: Vec<f16>,
}

impl Sequence {
    /// Number of positions with a feature (`tokens.len() - 1`).
    pub fn positions(&self) -> usize {
        self.tokens.len().saturating_sub(1)
    }
}

/// A set of sequences with the feature width and distribution size they share.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Dataset {
    /// Feature width (the target's hidden size).
    pub hidden: usize,
    /// Entries kept per next-token distribution.
    pub top_k: usize,
    /// The sequences.
    pub sequences: Vec<Sequence>,
}

impl Dataset {
    /// Total positions with a feature.
    pub fn positions(&self) -> usize {
        self.sequences.iter().map(Sequence::positions).sum()
    }

    /// Total generated (answer) tokens.
    pub fn answer_tokens(&self) -> usize {
        self.sequences
            .iter()
            .map(|s| s.tokens.len() - s.prompt_len)
            .sum()
    }
}

/// Options of [`distill`].
#[derive(Debug, Clone)]
pub struct DistillOptions {
    /// Answer length limit per prompt.
    pub max_new_tokens: usize,
    /// Upper bound on the sequences decoded together (also bounded by the cache capacity).
    pub batch: usize,
    /// Entries kept per next-token distribution.
    pub top_k: usize,
    /// Tokens that end an answer (kept as the answer's last token).
    pub stop_tokens: Vec<u32>,
    /// How answers are drawn: `None` = greedily, one per prompt.
    pub sampling: Option<Sampling>,
}

impl Default for DistillOptions {
    fn default() -> Self {
        DistillOptions {
            max_new_tokens: 128,
            batch: 16,
            top_k: 8,
            stop_tokens: Vec::new(),
            sampling: None,
        }
    }
}

/// Sampled answers: each answer token is drawn from the target's `softmax(logits / temperature)`
/// (the stored next-token distributions stay the target's own, at temperature 1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// Temperature, above 0.
    pub temperature: f32,
    /// Answers per prompt; the sequences of one prompt are consecutive.
    pub samples: usize,
    /// Seed: answer `s` of prompt `i` draws from its own generator, seeded by `(seed, i, s)`.
    pub seed: u64,
}

impl Sampling {
    fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature > 0.0) || self.samples == 0 {
            return Err(DraftError::InvalidOption(format!(
                "sampled answers need a temperature above 0 and at least one sample per prompt \
                 (got temperature {} and {} samples)",
                self.temperature, self.samples
            )));
        }
        Ok(())
    }

    /// The generator of answer `sample` of prompt `prompt`.
    fn rng(&self, prompt: usize, sample: usize) -> StdRng {
        StdRng::seed_from_u64(mix(mix(self.seed, prompt as u64), sample as u64))
    }
}

/// A 64-bit mix of two words (SplitMix64's finaliser over `a + golden · (b + 1)`).
fn mix(a: u64, b: u64) -> u64 {
    let mut z = a.wrapping_add(0x9E37_79B9_7F4A_7C15u64.wrapping_mul(b.wrapping_add(1)));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One answer to generate: its prompt and, when sampled, its generator.
struct Job<'a> {
    prompt: &'a [u32],
    rng: Option<StdRng>,
}

/// Runs the target on `prompts` (token ids, chat template applied) and returns their
/// distillation sequences in the same order (with [`Sampling`], `samples` consecutive sequences
/// per prompt). `progress(done_sequences, new_tokens)` is called after every decoding step.
pub fn distill<B: Backend, M: CausalLm<B>>(
    model: &M,
    prompts: &[Vec<u32>],
    options: &DistillOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<Sequence>> {
    if options.batch == 0 || options.top_k == 0 || options.max_new_tokens == 0 {
        return Err(DraftError::InvalidOption(
            "distillation needs batch, top_k and max_new_tokens of at least 1".into(),
        ));
    }
    if let Some(s) = &options.sampling {
        s.validate()?;
    }
    let mut jobs: Vec<Job> = Vec::new();
    for (i, p) in prompts.iter().enumerate() {
        match &options.sampling {
            None => jobs.push(Job {
                prompt: p,
                rng: None,
            }),
            Some(s) => jobs.extend((0..s.samples).map(|k| Job {
                prompt: p,
                rng: Some(s.rng(i, k)),
            })),
        }
    }
    let capacity = model.max_positions();
    let mut out = Vec::with_capacity(jobs.len());
    let mut rest = &mut jobs[..];
    while !rest.is_empty() {
        // As many answers as fit in one cache.
        let mut end = 0;
        let mut need = 0;
        while end < rest.len() && end < options.batch {
            let n = rest[end].prompt.len() + options.max_new_tokens;
            if need + n > capacity {
                break;
            }
            need += n;
            end += 1;
        }
        if end == 0 {
            return Err(DraftError::InvalidOption(format!(
                "a prompt of {} tokens plus {} new tokens does not fit the context of \
                 {capacity}; shorten the answers",
                rest[0].prompt.len(),
                options.max_new_tokens
            )));
        }
        let (batch, tail) = rest.split_at_mut(end);
        let done = out.len();
        let mut report = |tokens: usize| progress(done, tokens);
        out.extend(distill_batch(model, batch, need, options, &mut report)?);
        rest = tail;
    }
    progress(out.len(), 0);
    Ok(out)
}

/// Self-generated prompts (Magpie-style prompt synthesis): `sampling.samples` continuations of
/// `opening` — a conversation opened at a user turn, so the target writes the user's message —
/// drawn at `sampling.temperature`, each from its own generator seeded by `(sampling.seed, 0, s)`.
/// Returns, in draw order, the turns that ended with one of `options.stop_tokens` within
/// `options.max_new_tokens` (without that token); turns cut off by the length limit are dropped.
/// `options.sampling` is ignored. `progress(done_turns, new_tokens)`.
pub fn sample_turns<B: Backend, M: CausalLm<B>>(
    model: &M,
    opening: &[u32],
    sampling: Sampling,
    options: &DistillOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<Vec<u32>>> {
    if options.stop_tokens.is_empty() {
        return Err(DraftError::InvalidOption(
            "sampling turns needs the tokens that end a turn (stop tokens)".into(),
        ));
    }
    let options = DistillOptions {
        sampling: Some(sampling),
        ..options.clone()
    };
    let seqs = distill(model, &[opening.to_vec()], &options, progress)?;
    Ok(seqs
        .into_iter()
        .filter_map(|s| {
            let turn = &s.tokens[s.prompt_len..];
            let (last, text) = turn.split_last()?;
            options.stop_tokens.contains(last).then(|| text.to_vec())
        })
        .collect())
}

/// One batch of answers decoded together in one cache of `capacity` slots.
fn distill_batch<B: Backend, M: CausalLm<B>>(
    model: &M,
    jobs: &mut [Job],
    capacity: usize,
    options: &DistillOptions,
    progress: &mut dyn FnMut(usize),
) -> Result<Vec<Sequence>> {
    let n = jobs.len();
    let mut cache = model.new_cache(capacity);
    let mut seqs: Vec<Sequence> = jobs
        .iter()
        .map(|j| Sequence {
            tokens: j.prompt.to_vec(),
            prompt_len: j.prompt.len(),
            features: Vec::new(),
            top_ids: Vec::new(),
            top_probs: Vec::new(),
        })
        .collect();
    // Cache slots of each sequence.
    let mut slots: Vec<Vec<usize>> = vec![Vec::new(); n];
    // A uniform draw for the row whose next token a sampled answer takes from it.
    let mut draw = |i: usize, last: bool| -> Option<f32> {
        jobs[i]
            .rng
            .as_mut()
            .filter(|_| last)
            .map(|r| r.random::<f32>())
    };

    // Prefill every prompt in one block-diagonal causal pass.
    let mut tokens = Vec::new();
    let mut positions = Vec::new();
    let mut owner = Vec::new();
    let mut draws = Vec::new();
    for (i, s) in seqs.iter().enumerate() {
        if s.tokens.is_empty() {
            return Err(DraftError::InvalidOption(format!("prompt {i} is empty")));
        }
        for (pos, &t) in s.tokens.iter().enumerate() {
            slots[i].push(tokens.len());
            tokens.push(t);
            positions.push(pos);
            owner.push(i);
            draws.push(draw(i, pos + 1 == s.tokens.len()));
        }
    }
    let mut active: Vec<usize> = (0..n).collect();
    let mut next = vec![0u32; n];
    let rows = step(
        model, &mut cache, &tokens, positions, &owner, &slots, &draws, options,
    )?;
    let mut new_tokens = 0;
    for (row, &i) in rows.into_iter().zip(&owner) {
        next[i] = row.next;
        seqs[i].features.extend(row.feature);
        seqs[i].top_ids.extend(row.ids);
        seqs[i].top_probs.extend(row.probs);
    }

    loop {
        // Append each active sequence's next token; finish those that stop.
        active.retain(|&i| {
            seqs[i].tokens.push(next[i]);
            new_tokens += 1;
            let generated = seqs[i].tokens.len() - seqs[i].prompt_len;
            !(options.stop_tokens.contains(&next[i]) || generated >= options.max_new_tokens)
        });
        progress(new_tokens);
        if active.is_empty() {
            break;
        }
        let base = cache.len();
        let tokens: Vec<u32> = active.iter().map(|&i| next[i]).collect();
        let positions: Vec<usize> = active.iter().map(|&i| slots[i].len()).collect();
        for (r, &i) in active.iter().enumerate() {
            slots[i].push(base + r);
        }
        let draws: Vec<Option<f32>> = active.iter().map(|&i| draw(i, true)).collect();
        let rows = step(
            model, &mut cache, &tokens, positions, &active, &slots, &draws, options,
        )?;
        for (row, &i) in rows.into_iter().zip(&active) {
            next[i] = row.next;
            seqs[i].features.extend(row.feature);
            seqs[i].top_ids.extend(row.ids);
            seqs[i].top_probs.extend(row.probs);
        }
    }
    Ok(seqs)
}

/// The host copy of one row of a forward pass.
struct Row {
    feature: Vec<f16>,
    ids: Vec<u32>,
    probs: Vec<f16>,
    /// The token that follows: the argmax, or the sample of the row's draw.
    next: u32,
}

/// One forward over `tokens` (owned by `owner[r]`, each seeing only its owner's `slots`) and the
/// per-row features, top-k distributions and next tokens (`draws[r]`, when given, samples row
/// `r`'s next token at the temperature of `options.sampling`).
#[allow(clippy::too_many_arguments)]
fn step<B: Backend, M: CausalLm<B>>(
    model: &M,
    cache: &mut s4c_models::KvCache<B>,
    tokens: &[u32],
    positions: Vec<usize>,
    owner: &[usize],
    slots: &[Vec<usize>],
    draws: &[Option<f32>],
    options: &DistillOptions,
) -> Result<Vec<Row>> {
    let n = tokens.len();
    let temperature = options.sampling.map_or(1.0, |s| s.temperature);
    let cols = cache.len() + n;
    let base = cache.len();
    let mut visible = vec![false; n * cols];
    for (r, &i) in owner.iter().enumerate() {
        let me = base + r;
        for &s in &slots[i] {
            if s <= me {
                visible[r * cols + s] = true;
            }
        }
    }
    let mask = AttentionMask::new(n, cols, visible)
        .ok_or_else(|| DraftError::InvalidOption("internal: bad distillation mask".into()))?;
    let input = Input {
        tokens,
        positions,
        mask: Some(&mask),
        logits: Logits::All,
    };
    let out = model.forward(&input, cache)?;
    let logits = to_host(out.logits)?;
    let features = to_host(out.features)?;
    let vocab = logits.len() / n;
    let hidden = features.len() / n;
    let k = options.top_k.min(vocab);
    Ok(logits
        .par_chunks(vocab)
        .zip(features.par_chunks(hidden))
        .zip(draws.par_iter())
        .map(|((l, f), draw)| {
            let (ids, probs) = top_k_softmax(l, k);
            Row {
                feature: f.iter().map(|&x| f16::from_f32(x)).collect(),
                next: draw.map_or(ids[0], |u| softmax_at(temperature).sample_at(l, u as f64)),
                ids,
                probs: probs.into_iter().map(f16::from_f32).collect(),
            }
        })
        .collect())
}

/// A tensor's values on the host, as `f32`.
pub(crate) fn to_host<B: Backend>(t: Tensor<B, 2>) -> Result<Vec<f32>> {
    t.into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .map_err(|e| DraftError::Read(format!("{e:?}")))
}

/// The `k` most likely ids of `softmax(logits)` with their probabilities, best first; ties go to
/// the lower id (as the greedy argmax does).
pub fn top_k_softmax(logits: &[f32], k: usize) -> (Vec<u32>, Vec<f32>) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let total: f32 = logits.iter().map(|&x| (x - max).exp()).sum();
    // One pass keeps the best `k` so far, best first: a value enters only if it beats the
    // worst kept one, and goes after every kept value at least as high (those have lower ids).
    let k = k.min(logits.len());
    let mut idx: Vec<u32> = Vec::with_capacity(k + 1);
    for (i, &x) in logits.iter().enumerate() {
        if idx.len() == k {
            match idx.last() {
                Some(&w) if x.total_cmp(&logits[w as usize]).is_gt() => {}
                _ => continue,
            }
        }
        let at = idx.partition_point(|&j| logits[j as usize].total_cmp(&x).is_ge());
        idx.insert(at, i as u32);
        idx.truncate(k);
    }
    let probs = idx
        .iter()
        .map(|&i| (logits[i as usize] - max).exp() / total)
        .collect();
    (idx, probs)
}

/// Writes `sequences` to one safetensors chunk file; `sampling` (how the answers were drawn,
/// `None` = greedily) goes into its metadata.
pub fn save_chunk(
    path: &Path,
    hidden: usize,
    top_k: usize,
    sequences: &[Sequence],
    sampling: Option<&Sampling>,
) -> Result<()> {
    let mut tokens = Vec::new();
    let mut starts = vec![0u32];
    let mut prompt_lens = Vec::new();
    let (mut feats, mut ids, mut probs) = (Vec::new(), Vec::new(), Vec::new());
    for s in sequences {
        tokens.extend(&s.tokens);
        starts.push(tokens.len() as u32);
        prompt_lens.push(s.prompt_len as u32);
        feats.extend(&s.features);
        ids.extend(&s.top_ids);
        probs.extend(&s.top_probs);
    }
    let positions = feats.len() / hidden.max(1);
    let bytes_u32 = |v: &[u32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let bytes_f16 = |v: &[f16]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let data = [
        ("tokens", Dtype::U32, vec![tokens.len()], bytes_u32(&tokens)),
        ("starts", Dtype::U32, vec![starts.len()], bytes_u32(&starts)),
        (
            "prompt_lens",
            Dtype::U32,
            vec![prompt_lens.len()],
            bytes_u32(&prompt_lens),
        ),
        (
            "features",
            Dtype::F16,
            vec![positions, hidden],
            bytes_f16(&feats),
        ),
        (
            "top_ids",
            Dtype::U32,
            vec![positions, top_k],
            bytes_u32(&ids),
        ),
        (
            "top_probs",
            Dtype::F16,
            vec![positions, top_k],
            bytes_f16(&probs),
        ),
    ];
    let views = data
        .iter()
        .map(|(name, dt, shape, b)| {
            TensorView::new(*dt, shape.clone(), b)
                .map(|v| (name.to_string(), v))
                .map_err(|e| DraftError::InvalidOption(format!("internal: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let tmp = path.with_extension("tmp");
    let metadata = sampling.map(|s| {
        HashMap::from([
            ("temperature".to_string(), s.temperature.to_string()),
            ("samples".to_string(), s.samples.to_string()),
            ("seed".to_string(), s.seed.to_string()),
        ])
    });
    safetensors::serialize_to_file(views, metadata, &tmp).map_err(|e| DraftError::InvalidData {
        path: tmp.clone(),
        reason: e.to_string(),
    })?;
    std::fs::rename(&tmp, path).map_err(|e| DraftError::io(path, e))
}

/// Reads a chunk written by [`save_chunk`]: `(hidden, top_k, sequences)`.
pub fn load_chunk(path: &Path) -> Result<(usize, usize, Vec<Sequence>)> {
    read_chunk(path).map(|(h, k, seqs, _)| (h, k, seqs))
}

/// How the answers of the chunk at `path` were drawn (`None` = greedily).
pub fn chunk_sampling(path: &Path) -> Result<Option<Sampling>> {
    read_chunk(path).map(|(_, _, _, sampling)| sampling)
}

/// A chunk's `(hidden, top_k, sequences, sampling)`.
fn read_chunk(path: &Path) -> Result<(usize, usize, Vec<Sequence>, Option<Sampling>)> {
    let bad = |reason: String| DraftError::InvalidData {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| DraftError::io(path, e))?;
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
    let sampling = match header.metadata() {
        None => None,
        Some(m) => Some(Sampling {
            temperature: metadata_number(m, "temperature").map_err(bad)?,
            samples: metadata_number(m, "samples").map_err(bad)?,
            seed: metadata_number(m, "seed").map_err(bad)?,
        }),
    };
    let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
    let get = |name: &str, dt: Dtype| {
        let t = st
            .tensor(name)
            .map_err(|_| bad(format!("tensor {name} missing")))?;
        if t.dtype() != dt {
            return Err(bad(format!("tensor {name} is {:?}", t.dtype())));
        }
        Ok((t.shape().to_vec(), t.data().to_vec()))
    };
    let u32s = |b: &[u8]| -> Vec<u32> {
        b.chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    let f16s = |b: &[u8]| -> Vec<f16> {
        b.chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]))
            .collect()
    };
    let tokens = u32s(&get("tokens", Dtype::U32)?.1);
    let starts = u32s(&get("starts", Dtype::U32)?.1);
    let prompt_lens = u32s(&get("prompt_lens", Dtype::U32)?.1);
    let (fshape, fbytes) = get("features", Dtype::F16)?;
    let (ishape, ibytes) = get("top_ids", Dtype::U32)?;
    let probs = f16s(&get("top_probs", Dtype::F16)?.1);
    let (feats, ids) = (f16s(&fbytes), u32s(&ibytes));
    if fshape.len() != 2 || ishape.len() != 2 || starts.len() != prompt_lens.len() + 1 {
        return Err(bad("inconsistent shapes".into()));
    }
    let (hidden, top_k) = (fshape[1], ishape[1]);
    let mut seqs = Vec::new();
    let mut row = 0usize;
    for (s, w) in starts.windows(2).enumerate() {
        let (a, b) = (w[0] as usize, w[1] as usize);
        if b < a + 1 || b > tokens.len() {
            return Err(bad(format!("sequence {s} has bad bounds")));
        }
        let n = b - a - 1;
        if (row + n) * hidden > feats.len() || (row + n) * top_k > ids.len().min(probs.len()) {
            return Err(bad("fewer features than tokens".into()));
        }
        seqs.push(Sequence {
            tokens: tokens[a..b].to_vec(),
            prompt_len: prompt_lens[s] as usize,
            features: feats[row * hidden..(row + n) * hidden].to_vec(),
            top_ids: ids[row * top_k..(row + n) * top_k].to_vec(),
            top_probs: probs[row * top_k..(row + n) * top_k].to_vec(),
        });
        row += n;
    }
    Ok((hidden, top_k, seqs, sampling))
}

/// Field `key` of a chunk's sampling metadata, parsed.
fn metadata_number<T: std::str::FromStr>(
    m: &HashMap<String, String>,
    key: &str,
) -> std::result::Result<T, String> {
    m.get(key)
        .ok_or_else(|| format!("sampling metadata lacks {key}"))?
        .parse()
        .map_err(|_| format!("sampling metadata {key} is not a number"))
}

/// The path of chunk `i` in a data folder.
pub fn chunk_path(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("chunk-{i:05}.safetensors"))
}

/// Loads every chunk of a data folder, in order.
pub fn load_dir(dir: &Path) -> Result<Dataset> {
    let mut ds = Dataset::default();
    let mut i = 0;
    while chunk_path(dir, i).exists() {
        let (hidden, top_k, seqs) = load_chunk(&chunk_path(dir, i))?;
        if i > 0 && (hidden, top_k) != (ds.hidden, ds.top_k) {
            return Err(DraftError::InvalidData {
                path: chunk_path(dir, i),
                reason: "feature width or top-k differs from chunk 0".into(),
            });
        }
        ds.hidden = hidden;
        ds.top_k = top_k;
        ds.sequences.extend(seqs);
        i += 1;
    }
    Ok(ds)
}

/// Distils `prompts` into `dir`, `chunk` prompts per file, and returns their dataset (in prompt
/// order). A chunk already in `dir` is reused when it holds exactly these prompts with answers
/// made under these options (so an interrupted run resumes, and a run with more prompts or other
/// options regenerates only what differs). Sampled answers of chunk `i` use the seed
/// `(sampling.seed, i)`. `progress(done_prompts, new_tokens)`.
pub fn distill_to_dir<B: Backend, M: CausalLm<B>>(
    model: &M,
    prompts: &[Vec<u32>],
    dir: &Path,
    chunk: usize,
    options: &DistillOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Dataset> {
    if chunk == 0 {
        return Err(DraftError::InvalidOption(
            "chunk size must be at least 1".into(),
        ));
    }
    if let Some(s) = &options.sampling {
        s.validate()?;
    }
    std::fs::create_dir_all(dir).map_err(|e| DraftError::io(dir, e))?;
    let mut ds = Dataset {
        hidden: model.dims().hidden_size,
        top_k: options.top_k,
        sequences: Vec::with_capacity(prompts.len()),
    };
    let samples = options.sampling.map_or(1, |s| s.samples);
    let mut tokens = 0;
    for (i, part) in prompts.chunks(chunk).enumerate() {
        let path = chunk_path(dir, i);
        let before = i * chunk;
        let options = DistillOptions {
            sampling: options.sampling.map(|s| Sampling {
                seed: mix(s.seed, i as u64),
                ..s
            }),
            ..options.clone()
        };
        if let Some(seqs) = reusable_chunk(&path, part, &ds, &options) {
            progress(before + part.len(), tokens);
            ds.sequences.extend(seqs);
            continue;
        }
        let seqs = distill(model, part, &options, &mut |done, t| {
            progress(before + done / samples, tokens + t)
        })?;
        tokens += seqs
            .iter()
            .map(|s| s.tokens.len() - s.prompt_len)
            .sum::<usize>();
        save_chunk(&path, ds.hidden, ds.top_k, &seqs, options.sampling.as_ref())?;
        ds.sequences.extend(seqs);
    }
    Ok(ds)
}

/// The sequences of the chunk at `path` if it answers exactly `prompts` under `options` (same
/// prompts, feature width, top-k and sampling; every answer stopped or reached `max_new_tokens`).
fn reusable_chunk(
    path: &Path,
    prompts: &[Vec<u32>],
    ds: &Dataset,
    options: &DistillOptions,
) -> Option<Vec<Sequence>> {
    if !path.exists() {
        return None;
    }
    let (hidden, top_k, seqs, sampling) = read_chunk(path).ok()?;
    let samples = options.sampling.map_or(1, |s| s.samples);
    let matches = hidden == ds.hidden
        && top_k == ds.top_k
        && sampling == options.sampling
        && seqs.len() == prompts.len() * samples
        && seqs.iter().enumerate().all(|(j, s)| {
            let p = &prompts[j / samples];
            let answer = &s.tokens[s.prompt_len.min(s.tokens.len())..];
            s.tokens.starts_with(p)
                && s.prompt_len == p.len()
                && (answer.len() == options.max_new_tokens
                    || (answer.len() < options.max_new_tokens
                        && answer
                            .last()
                            .is_some_and(|t| options.stop_tokens.contains(t))))
        });
    matches.then_some(seqs)
}

/// Plain softmax sampling at `temperature` (no top-k or top-p), as the shared sampler does it.
fn softmax_at(temperature: f32) -> s4c_verify::SamplingParams {
    s4c_verify::SamplingParams {
        temperature,
        top_k: 0,
        top_p: 1.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Every id sorted by (logit descending, id ascending), then cut to `k`.
    fn by_sorting(logits: &[f32], k: usize) -> Vec<u32> {
        let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
        idx.sort_by(|a, b| {
            logits[*b as usize]
                .total_cmp(&logits[*a as usize])
                .then(a.cmp(b))
        });
        idx.truncate(k);
        idx
    }

    proptest! {
        /// The one-pass selection picks the ids a full sort does, ties to the lower id, with
        /// the softmax probabilities of the whole row.
        #[test]
        fn top_k_is_the_head_of_the_sorted_row(
            // Few distinct values, so ties are common.
            logits in prop::collection::vec((-4i32..4).prop_map(|v| v as f32 * 0.5), 0..64),
            k in 0usize..12,
        ) {
            let (ids, probs) = top_k_softmax(&logits, k);
            prop_assert_eq!(&ids, &by_sorting(&logits, k));
            let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let total: f64 = logits.iter().map(|&x| ((x - max) as f64).exp()).sum();
            for (&i, &p) in ids.iter().zip(&probs) {
                let want = ((logits[i as usize] - max) as f64).exp() / total;
                prop_assert!((p as f64 - want).abs() < 1e-6, "{p} vs {want}");
            }
        }
    }
}
