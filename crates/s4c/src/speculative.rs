//! S4C speculative generation: prefill → [draft → build tree → verify → accept → commit]* with
//! feature reuse — the verification pass's features feed the next round of drafting directly.

use std::borrow::Cow;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use burn::tensor::{backend::Backend, Int, Tensor, TensorData};
use s4c_draft::{Drafter, Drafting};
use s4c_models::{AttentionMask, CausalLm, Input, Logits};
use s4c_tree::{
    build_dynamic, AdaptiveSizer, ContextLookup, DynamicConfig, LookupDraft, Template, TokenTree,
    TreeError,
};
use s4c_verify::Sampler;
use s4c_verify::{Acceptor, Proposal};
use serde::Serialize;

use crate::error::{EngineError, Result};
use crate::plain::{next_token, GenerateOptions, StopReason};

/// How each step's tree is shaped.
#[derive(Debug, Clone)]
pub enum TreeShape {
    /// A fixed template of top-k paths (truncated to the drafter's depth).
    Static(Template),
    /// EAGLE-2-style best-first expansion by cumulative draft probability.
    Dynamic(DynamicConfig),
    /// Cost-aware and online: before each step an [`AdaptiveSizer`] picks the template (or no
    /// draft) with the most expected tokens per second, from acceptance and step times measured
    /// so far in this generation. Each generation starts from the sizer as given. With sampling,
    /// step times are not learned, so a seed reproduces its output.
    Adaptive(Box<AdaptiveSizer>),
    /// No draft at all: each step verifies the root alone (plain decoding through the same
    /// loop, the drafter never called).
    RootOnly,
}

impl TreeShape {
    /// Number of draft nodes at most (root excluded).
    pub fn max_nodes(&self) -> usize {
        match self {
            TreeShape::Static(t) => t.len(),
            TreeShape::Dynamic(c) => c.max_nodes,
            TreeShape::Adaptive(s) => s.config().max_nodes,
            TreeShape::RootOnly => 0,
        }
    }
}

/// Statistics of one speculative generation.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SpecStats {
    /// Verification steps (forward passes after prefill).
    pub steps: usize,
    /// Mean tokens per step, τ = new tokens / (steps + 1): the prefill's token is one step,
    /// each verification step gives its accepted drafts plus the bonus token (plain = 1).
    pub tau: f64,
    /// `accepted_at_depth[d]`: steps whose accepted branch reached depth `d + 1`.
    pub accepted_at_depth: Vec<usize>,
    /// Mean draft nodes per tree.
    pub mean_tree_nodes: f64,
    /// Draft tokens verified, all steps together (llama.cpp's `draft_n`).
    pub drafted: usize,
    /// Of those, tokens the target accepted (llama.cpp's `draft_n_accepted`).
    pub accepted: usize,
    /// Steps that drafted nothing (the root alone: a plain decoding step).
    pub plain_steps: usize,
    /// Steps whose tree held a chain copied from the context (see [`s4c_tree::ContextLookup`]).
    pub lookup_steps: usize,
    /// Tokens of those chains.
    pub lookup_proposed: usize,
    /// Of those, tokens accepted (the accepted branch followed the chain).
    pub lookup_accepted: usize,
    /// Seconds spent drafting (initial states and heads).
    pub draft_s: f64,
    /// Seconds in verification forwards.
    pub verify_s: f64,
    /// Seconds in acceptance (including reading logits).
    pub accept_s: f64,
    /// Seconds committing the KV cache and updating the feature window.
    pub commit_s: f64,
}

/// The result of one speculative generation.
#[derive(Debug, Clone, Serialize)]
pub struct SpecGeneration {
    /// New token ids (a final stop token included).
    pub new_ids: Vec<u32>,
    /// Wall time of the whole generation, prefill included.
    pub elapsed: Duration,
    /// Wall time of the prefill.
    pub prefill: Duration,
    /// Why it ended.
    pub stop: StopReason,
    /// Per-step statistics.
    pub stats: SpecStats,
}

impl SpecGeneration {
    /// New tokens per second over the whole generation, prefill included.
    pub fn tokens_per_second(&self) -> f64 {
        self.new_ids.len() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Speculative generation with a target `M`, a drafter `D` and an acceptance rule `A`.
pub struct SpeculativeGenerator<'a, B: Backend, M: CausalLm<B>, D: Drafter<B>, A: Acceptor<B>> {
    model: &'a M,
    drafter: &'a D,
    acceptor: A,
    shape: TreeShape,
    lookup: Option<ContextLookup>,
    _backend: std::marker::PhantomData<B>,
}

impl<'a, B: Backend, M: CausalLm<B>, D: Drafter<B>, A: Acceptor<B>>
    SpeculativeGenerator<'a, B, M, D, A>
{
    /// A generator; a static template deeper than the drafter is cut to its depth, an adaptive
    /// sizer deeper than the drafter is refused. With a drafter that drafts nothing
    /// ([`s4c_draft::NoDrafter`]) every shape is the root alone, except an adaptive sizer of depth
    /// 0, which still sizes the lookup chains ([`Self::with_lookup`]).
    pub fn new(model: &'a M, drafter: &'a D, acceptor: A, shape: TreeShape) -> Result<Self> {
        let lookup_sizer = matches!(&shape, TreeShape::Adaptive(s) if s.config().max_depth == 0);
        let shape = match shape {
            // A drafter that drafts nothing: trees of the root alone (plus any lookup chain,
            // sized by an adaptive sizer of depth 0 if one was given).
            _ if drafter.max_depth() == 0 && !lookup_sizer => TreeShape::RootOnly,
            TreeShape::Static(t) if t.depth() > drafter.max_depth() => {
                TreeShape::Static(t.truncated(drafter.max_depth())?)
            }
            TreeShape::Adaptive(s) if s.config().max_depth > drafter.max_depth() => {
                return Err(EngineError::InvalidOption(format!(
                    "the adaptive tree reaches depth {} but the drafter has {} heads; give the \
                     sizer a max_depth of at most {}",
                    s.config().max_depth,
                    drafter.max_depth(),
                    drafter.max_depth()
                )));
            }
            s => s,
        };
        Ok(SpeculativeGenerator {
            model,
            drafter,
            acceptor,
            shape,
            lookup: None,
            _backend: std::marker::PhantomData,
        })
    }

    /// Adds to every step's tree the continuation [`ContextLookup`] finds for the context (prompt
    /// and answer so far), as one more branch: the whole chain with static and dynamic shapes, as
    /// many of its tokens as pay for their verification with the adaptive one, which prices them
    /// from their own acceptance on this text. `None` (the default) turns it off.
    ///
    /// Candidates copied from the context are fixed before the target's verdict, so output stays
    /// exactly that of plain decoding (greedy) or the target's distribution (sampling).
    pub fn with_lookup(mut self, lookup: Option<ContextLookup>) -> Self {
        self.lookup = lookup.filter(|l| l.max_tokens > 0);
        self
    }

    /// The tree shape in use.
    pub fn shape(&self) -> &TreeShape {
        &self.shape
    }

    /// Generates after `prompt`. `on_tokens` receives the tokens of every step as they are
    /// accepted (for streaming); returning [`ControlFlow::Break`] ends generation after them
    /// ([`StopReason::Interrupted`]). `options.sampling` must match the acceptor's (greedy with
    /// [`s4c_verify::GreedyAcceptor`]); the first token is drawn with `options.seed`.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        options: &GenerateOptions,
        context: usize,
        on_tokens: &mut dyn FnMut(&[u32]) -> ControlFlow<()>,
    ) -> Result<SpecGeneration> {
        options.validate(prompt.len(), context)?;
        let start = Instant::now();
        let model = self.model;
        let hidden = model.dims().hidden_size;
        let device = model.device().clone();
        let w = self.drafter.window();
        // Room for the whole answer plus one tree beyond it.
        let lookup_nodes = self.lookup.map_or(0, |l| l.max_tokens);
        let capacity =
            (prompt.len() + options.max_new_tokens + self.shape.max_nodes() + lookup_nodes + 1)
                .min(context);
        let mut cache = model.new_cache(capacity);
        let mut stats = SpecStats {
            accepted_at_depth: vec![0; self.drafter.max_depth().max(lookup_nodes)],
            ..Default::default()
        };

        // Prefill: the first token, and the last prompt token's feature with its window.
        let out = model.forward(&Input::causal(prompt, 0, Logits::Last), &mut cache)?;
        let mut sampler = Sampler::new(options.sampling, options.seed);
        let first = next_token(out.logits, &mut sampler)?;
        let n = prompt.len();
        let keep = (w + 1).min(n);
        // The committed features the window reads: the last `w` before the newest one.
        let mut history = out.features.slice([n - keep..n, 0..hidden]);
        let prefill = start.elapsed();

        let mut new_ids = vec![first];
        let mut flow = on_tokens(&[first]);
        // Prompt and answer so far, the root last: where context lookup searches.
        let mut text: Vec<u32> = prompt.to_vec();
        text.push(first);
        let mut root = first;
        // The online sizer of an adaptive shape, fresh for this generation.
        let mut sizer = match &self.shape {
            TreeShape::Adaptive(s) => {
                let mut s = AdaptiveSizer::clone(s);
                if !options.sampling.is_greedy() {
                    s.set_learn_latency(false);
                }
                Some(s)
            }
            _ => None,
        };
        // What the next step drafts: a template of its own (adaptive), the shape's, or nothing,
        // and the lookup chain it adds.
        let mut plan = plan_step(&self.shape, self.lookup, &mut sizer, &text);
        // The drafter's initial state of the newest committed feature: computed by the first
        // step that drafts, then by feature reuse while steps keep drafting.
        let mut state: Option<Tensor<B, 2>> = None;
        // Seconds of the feature reuse that prepared this step's draft (timed with this step).
        let mut reuse_s = 0.0;

        let stop = loop {
            if flow.is_break() {
                break StopReason::Interrupted;
            }
            if options.stop_tokens.contains(&root) {
                break StopReason::StopToken;
            }
            if new_ids.len() >= options.max_new_tokens {
                break StopReason::MaxTokens;
            }
            let room = cache.capacity() - cache.len();
            if room == 0 {
                break StopReason::ContextFull;
            }
            let step_start = Instant::now();

            // Draft: the heads' tree, then the lookup chain grafted on.
            let t = Instant::now();
            let drafted = self.draft_step(&mut plan, root, state.take(), &history, &text, room)?;
            let DraftedTree {
                tree,
                heads_tree,
                heads_map,
            } = drafted;
            stats.draft_s += t.elapsed().as_secs_f64();
            stats.drafted += tree.len() - 1;
            stats.plain_steps += usize::from(tree.len() == 1);

            // Verify: one forward over the whole tree.
            let t = Instant::now();
            let out = verify(model, &tree, &mut cache)?;
            stats.verify_s += t.elapsed().as_secs_f64();

            // Accept.
            let t = Instant::now();
            let proposals = vec![Proposal::Deterministic; tree.len()];
            let verdict = self.acceptor.accept(&tree, &proposals, out.logits)?;
            stats.accept_s += t.elapsed().as_secs_f64();
            stats.steps += 1;
            stats.accepted += verdict.path.len() - 1;
            for (d, hit) in verdict
                .accepted_per_depth(stats.accepted_at_depth.len())
                .into_iter()
                .enumerate()
            {
                stats.accepted_at_depth[d] += hit as usize;
            }

            // Commit: keep the root and the accepted nodes; the bonus becomes the next root.
            let t = Instant::now();
            cache.commit(&verdict.path)?;
            let (emitted, ended) = emitted_tokens(verdict.emitted(), options, new_ids.len());
            new_ids.extend(&emitted);
            text.extend(&emitted);
            flow = on_tokens(&emitted);
            stats.commit_s += t.elapsed().as_secs_f64();
            learn(
                &plan,
                &tree,
                &heads_tree,
                &heads_map,
                &verdict.path,
                &mut stats,
                sizer.as_mut(),
            );
            if let Some(s) = sizer.as_mut() {
                s.record_time(tree.len() - 1, step_start.elapsed().as_secs_f64() + reuse_s);
            }
            if let Some(reason) = ended {
                break reason;
            }
            if flow.is_break() {
                break StopReason::Interrupted;
            }
            root = verdict.bonus;

            // Feature reuse: the accepted nodes' features join the window and, if the next step
            // drafts, the first drafting stage runs on every node so the accepted one's state is
            // ready.
            let t = Instant::now();
            plan = plan_step(&self.shape, self.lookup, &mut sizer, &text);
            let drafts = !matches!(plan.heads, Heads::None);
            let (next_state, next_history) = self.reuse(
                &tree,
                &verdict.path,
                out.features,
                &history,
                drafts,
                &device,
            )?;
            state = next_state;
            history = next_history;
            reuse_s = t.elapsed().as_secs_f64();
            stats.draft_s += reuse_s;
        };
        // The prefill's token counts as a step of its own, as in plain decoding (τ = 1).
        stats.tau = new_ids.len() as f64 / (stats.steps + 1) as f64;
        stats.mean_tree_nodes = stats.drafted as f64 / stats.steps.max(1) as f64;
        Ok(SpecGeneration {
            new_ids,
            elapsed: start.elapsed(),
            prefill,
            stop,
            stats,
        })
    }

    /// The draft stage: the heads' part of the tree `plan` asks for (from `state`, or the
    /// newest feature of `history`), the lookup chain grafted on, cut to `room` nodes.
    fn draft_step(
        &self,
        plan: &mut Plan<'_>,
        root: u32,
        state: Option<Tensor<B, 2>>,
        history: &Tensor<B, 2>,
        text: &[u32],
        room: usize,
    ) -> Result<DraftedTree> {
        let device = self.model.device().clone();
        let mut heads_tree = match &plan.heads {
            Heads::None => TokenTree::new(root),
            Heads::Template(tpl) => self.draft(state, history, text, &device, |drafting| {
                tpl.build(root, drafting)
            })?,
            Heads::Dynamic(cfg) => self.draft(state, history, text, &device, |drafting| {
                build_dynamic(root, cfg, drafting)
            })?,
        };
        if let Some(c) = plan.lookup.as_mut() {
            // Chain tokens the heads' tree already holds cost no node: spend them on the
            // chain's next tokens instead, so the tree has the size the sizer chose.
            let shared = heads_tree.follow(&c.tokens);
            let more = shared.min(plan.spare.len());
            c.tokens.extend(plan.spare.drain(..more));
        }
        let chain = plan.lookup.as_ref().map_or(&[][..], |c| &c.tokens[..]);
        let (mut tree, mut heads_map) = heads_tree.graft(chain);
        if tree.len() > room {
            // Near the end of the context: keep the first `room` nodes (parents come first;
            // the kept nodes keep their indices, and the heads' tree loses the same nodes).
            let keep: Vec<bool> = (0..tree.len()).map(|i| i < room).collect();
            tree = tree.retain(&keep);
            let keep: Vec<bool> = heads_map.iter().map(|&i| i < room).collect();
            heads_tree = heads_tree.retain(&keep);
            heads_map.truncate(heads_tree.len());
        }
        Ok(DraftedTree {
            tree,
            heads_tree,
            heads_map,
        })
    }

    /// Grows a tree with `build` from `state` — the initial state feature reuse prepared — or,
    /// after plain steps, from one computed for the newest feature of `history`; `text` is the
    /// prompt and answer so far, the root last.
    fn draft(
        &self,
        state: Option<Tensor<B, 2>>,
        history: &Tensor<B, 2>,
        text: &[u32],
        device: &B::Device,
        build: impl FnOnce(&mut Drafting<'_, B, D>) -> std::result::Result<TokenTree, TreeError>,
    ) -> Result<TokenTree> {
        let state = match state {
            Some(s) => s,
            None => self.initial_for_last(history, device)?,
        };
        let mut drafting = Drafting::new(self.drafter, state, text);
        Ok(build(&mut drafting)?)
    }

    /// The initial state of the last row of `history` (its window: the rows before it).
    fn initial_for_last(&self, history: &Tensor<B, 2>, device: &B::Device) -> Result<Tensor<B, 2>> {
        let [len, h] = history.dims();
        let w = self.drafter.window();
        let feature = history.clone().slice([len - 1..len, 0..h]);
        let (window, valid) = window_rows(history, &[(0..len - 1).collect()], w, device);
        Ok(self.drafter.initial_states(feature, window, valid))
    }

    /// Runs the first drafting stage on all tree nodes (each with its own window: the committed
    /// history, then its ancestors) and picks the accepted node's state, if `drafts` (the next
    /// step drafts); returns it with the new history (last `window + 1` committed features).
    fn reuse(
        &self,
        tree: &TokenTree,
        path: &[usize],
        features: Tensor<B, 2>,
        history: &Tensor<B, 2>,
        drafts: bool,
        device: &B::Device,
    ) -> Result<(Option<Tensor<B, 2>>, Tensor<B, 2>)> {
        let w = self.drafter.window();
        let [hl, h] = history.dims();
        let n = tree.len();
        // Rows: history (0..hl) then tree nodes (hl..hl+n).
        let all = Tensor::cat(vec![history.clone(), features.clone()], 0);
        // New history: old history then the accepted nodes, last w + 1 rows.
        let mut rows: Vec<usize> = (0..hl).collect();
        rows.extend(path.iter().map(|&p| hl + p));
        let keep = &rows[rows.len().saturating_sub(w + 1)..];
        let next_history = all.clone().select(0, ids::<B>(keep, device));
        if !drafts {
            return Ok((None, next_history));
        }
        let accepted = *path.last().unwrap_or(&0);
        let windows: Vec<Vec<usize>> = if w == 0 {
            vec![Vec::new(); n]
        } else {
            (0..n)
                .map(|i| {
                    let mut rows: Vec<usize> = (0..hl).collect();
                    let anc = tree.path_to(i);
                    rows.extend(anc[..anc.len() - 1].iter().map(|&a| hl + a));
                    rows
                })
                .collect()
        };
        let (window, valid) = window_rows(&all, &windows, w, device);
        let states = self.drafter.initial_states(features, window, valid);
        let state = states.slice([accepted..accepted + 1, 0..h]);
        Ok((Some(state), next_history))
    }
}

/// What one step drafts.
/// One step's tree: the whole tree verified, the heads' part of it, and where each node of the
/// heads' part is in the whole tree.
struct DraftedTree {
    tree: TokenTree,
    heads_tree: TokenTree,
    heads_map: Vec<usize>,
}

/// The verify stage: one forward over the whole tree (depth positions, tree mask).
fn verify<B: Backend, M: CausalLm<B>>(
    model: &M,
    tree: &TokenTree,
    cache: &mut s4c_models::KvCache<B>,
) -> Result<s4c_models::LmOutput<B>> {
    let flat = tree.flatten();
    let base = cache.len();
    let positions: Vec<usize> = flat.depths.iter().map(|&d| base + d).collect();
    let mask = AttentionMask::tree(base, tree.len(), &flat.mask.to_dense())
        .ok_or_else(|| EngineError::InvalidOption("internal: tree mask size".into()))?;
    Ok(model.forward(&Input::tree(&flat.tokens, positions, &mask), cache)?)
}

/// The tokens a step gives after `done` new ones: cut after a stop token or at the token
/// limit, with the reason generation ends there, if it does.
fn emitted_tokens(
    mut emitted: Vec<u32>,
    options: &GenerateOptions,
    done: usize,
) -> (Vec<u32>, Option<StopReason>) {
    let mut ended = None;
    if let Some(i) = emitted.iter().position(|t| options.stop_tokens.contains(t)) {
        emitted.truncate(i + 1);
        ended = Some(StopReason::StopToken);
    }
    let left = options.max_new_tokens - done;
    if emitted.len() >= left {
        emitted.truncate(left);
        ended = ended.or(Some(StopReason::MaxTokens));
    }
    (emitted, ended)
}

/// What a step teaches: the lookup chain's acceptance (statistics and the sizer), and the
/// heads' own acceptance along the accepted `path` (the sizer).
fn learn(
    plan: &Plan<'_>,
    tree: &TokenTree,
    heads_tree: &TokenTree,
    heads_map: &[usize],
    path: &[usize],
    stats: &mut SpecStats,
    mut sizer: Option<&mut AdaptiveSizer>,
) {
    if let Some(draft) = &plan.lookup {
        // The chain's tokens the accepted branch followed.
        let accepted = path[1..].iter().map(|&i| tree.node(i).token);
        let copied = accepted
            .zip(&draft.tokens)
            .take_while(|(a, b)| a == *b)
            .count();
        stats.lookup_steps += 1;
        stats.lookup_proposed += draft.tokens.len();
        stats.lookup_accepted += copied;
        if let Some(s) = sizer.as_deref_mut() {
            s.record_lookup(draft.matched, draft.tokens.len(), copied);
        }
    }
    if let Some(s) = sizer {
        // The heads' own acceptance: the accepted path as far as it is in their tree.
        let mut in_heads = vec![usize::MAX; tree.len()];
        for (old, &new) in heads_map.iter().enumerate() {
            in_heads[new] = old;
        }
        let heads_path: Vec<usize> = path
            .iter()
            .map(|&i| in_heads[i])
            .take_while(|&i| i != usize::MAX)
            .collect();
        s.record_acceptance(heads_tree, &heads_path);
    }
}

struct Plan<'s> {
    /// The heads' part of the tree.
    heads: Heads<'s>,
    /// A chain copied from the context, cut to the tokens this step verifies.
    lookup: Option<LookupDraft>,
    /// The chain's tokens after the cut (adaptive sizing), which may stand in for chain tokens
    /// the heads' tree turns out to share.
    spare: Vec<u32>,
}

/// The heads' part of a step's tree.
enum Heads<'s> {
    /// Nothing: the root alone.
    None,
    /// A template: the static shape's, or the one the adaptive sizer chose for this step.
    Template(Cow<'s, Template>),
    /// A dynamic tree.
    Dynamic(&'s DynamicConfig),
}

/// What the next step drafts after `text` (prompt and answer, the root last): the adaptive
/// sizer's choice, else the shape as it is with the whole lookup chain.
fn plan_step<'s>(
    shape: &'s TreeShape,
    lookup: Option<ContextLookup>,
    sizer: &mut Option<AdaptiveSizer>,
    text: &[u32],
) -> Plan<'s> {
    let chain = lookup.and_then(|l| l.propose(text));
    match (sizer.as_mut(), shape) {
        (Some(s), _) => {
            let choice = s.choose_step(chain.as_ref());
            let mut spare = Vec::new();
            let lookup = chain
                .map(|mut c| {
                    spare = c.tokens.split_off(choice.lookup.min(c.tokens.len()));
                    c
                })
                .filter(|c| !c.tokens.is_empty());
            let heads = choice
                .template
                .map_or(Heads::None, |t| Heads::Template(Cow::Owned(t)));
            Plan {
                heads,
                lookup,
                spare,
            }
        }
        (None, shape) => {
            let heads = match shape {
                TreeShape::Static(t) => Heads::Template(Cow::Borrowed(t)),
                TreeShape::Dynamic(c) => Heads::Dynamic(c),
                TreeShape::Adaptive(_) | TreeShape::RootOnly => Heads::None,
            };
            Plan {
                heads,
                lookup: chain,
                spare: Vec::new(),
            }
        }
    }
}

/// For each entry of `rows` (indices into `source`, oldest first), the last `w` of them as a
/// `[n, w, hidden]` window (left-padded with zeros) and its `[n, w]` validity.
fn window_rows<B: Backend>(
    source: &Tensor<B, 2>,
    rows: &[Vec<usize>],
    w: usize,
    device: &B::Device,
) -> (Tensor<B, 3>, Tensor<B, 2>) {
    let [len, h] = source.dims();
    let n = rows.len();
    if w == 0 {
        return (
            Tensor::zeros([n, 0, h], device),
            Tensor::zeros([n, 0], device),
        );
    }
    // Row `len` of the padded source is zeros.
    let padded = Tensor::cat(vec![source.clone(), Tensor::zeros([1, h], device)], 0);
    let mut idx = Vec::with_capacity(n * w);
    let mut valid = Vec::with_capacity(n * w);
    for r in rows {
        let take = &r[r.len().saturating_sub(w)..];
        for _ in take.len()..w {
            idx.push(len);
            valid.push(0.0f32);
        }
        idx.extend_from_slice(take);
        valid.extend(std::iter::repeat_n(1.0f32, take.len()));
    }
    let window = padded.select(0, ids::<B>(&idx, device)).reshape([n, w, h]);
    let valid = Tensor::from_data(TensorData::new(valid, [n, w]), device);
    (window, valid)
}

fn ids<B: Backend>(v: &[usize], device: &B::Device) -> Tensor<B, 1, Int> {
    let v: Vec<i64> = v.iter().map(|&x| x as i64).collect();
    let n = v.len();
    Tensor::from_data(TensorData::new(v, [n]), device)
}
