//! S4C speculative generation: prefill → [draft → build tree → verify → accept → commit]* with
//! feature reuse — the verification pass's features feed the next round of drafting directly.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use burn::tensor::{backend::Backend, Int, Tensor, TensorData};
use s4c_draft::{Drafter, Drafting};
use s4c_models::{AttentionMask, CausalLm, Input, KvCache, LmOutput, Logits};
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
    /// Cost-aware and online: each step an [`AdaptiveSizer`] grows the tree from the drafts
    /// ([`AdaptiveSizer::grow`]: each candidate kept while its calibrated acceptance pays for its
    /// row; none: a plain step) and sizes the lookup chain, from acceptance and step times
    /// measured so far in this generation; at depth 0 (no heads) it sizes lookup chains alone.
    /// Each generation starts from the sizer as given. With sampling, step times are not
    /// learned, so a seed reproduces its output.
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

/// What every S4C sequence of a target shares: the target `M`, the drafter `D`, the tree shape
/// and context lookup. [`Speculator::start`] begins a [`SpecSequence`].
pub struct Speculator<'a, B: Backend, M: CausalLm<B>, D: Drafter<B>> {
    model: &'a M,
    drafter: &'a D,
    shape: TreeShape,
    lookup: Option<ContextLookup>,
    _backend: std::marker::PhantomData<B>,
}

impl<'a, B: Backend, M: CausalLm<B>, D: Drafter<B>> Speculator<'a, B, M, D> {
    /// A speculator; a static template deeper than the drafter is cut to its depth, an adaptive
    /// sizer deeper than the drafter is refused. With a drafter that drafts nothing
    /// ([`s4c_draft::NoDrafter`]) every shape is the root alone, except an adaptive sizer of depth
    /// 0, which still sizes the lookup chains ([`Self::with_lookup`]).
    pub fn new(model: &'a M, drafter: &'a D, shape: TreeShape) -> Result<Self> {
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
        Ok(Speculator {
            model,
            drafter,
            shape,
            lookup: None,
            _backend: std::marker::PhantomData,
        })
    }

    /// Adds context lookup to every step's tree (see [`SpeculativeGenerator::with_lookup`]).
    pub fn with_lookup(mut self, lookup: Option<ContextLookup>) -> Self {
        self.lookup = lookup.filter(|l| l.max_tokens > 0);
        self
    }

    /// The tree shape in use.
    pub fn shape(&self) -> &TreeShape {
        &self.shape
    }

    /// How many of a prompt's last rows of features a sequence begins with (the drafter's
    /// window and the newest): a prefill must run at least that many prompt tokens for the
    /// drafts to be those of a whole prompt's prefill.
    pub fn feature_rows(&self) -> usize {
        self.drafter.window() + 1
    }

    /// A sequence for `prompt`, before its prefill: the options checked, the cache made, the
    /// acceptor (matching `options.sampling`) its own. Run the prompt causally into
    /// [`SpecSequence::cache_mut`] (last logits), then [`SpecSequence::begin`].
    pub fn start<A: Acceptor<B>>(
        &self,
        prompt: &[u32],
        options: &GenerateOptions,
        context: usize,
        acceptor: A,
    ) -> Result<SpecSequence<B, A>> {
        options.validate(prompt.len(), context)?;
        // Room for the whole answer plus one tree beyond it.
        let lookup_nodes = self.lookup.map_or(0, |l| l.max_tokens);
        let capacity =
            (prompt.len() + options.max_new_tokens + self.shape.max_nodes() + lookup_nodes + 1)
                .min(context);
        // The online sizer of an adaptive shape, fresh for this generation.
        let sizer = match &self.shape {
            TreeShape::Adaptive(s) => {
                let mut s = AdaptiveSizer::clone(s);
                if !options.sampling.is_greedy() {
                    s.set_learn_latency(false);
                }
                Some(Box::new(s))
            }
            _ => None,
        };
        Ok(SpecSequence {
            cache: self.model.new_cache(capacity),
            acceptor,
            options: options.clone(),
            stats: SpecStats {
                accepted_at_depth: vec![0; self.drafter.max_depth().max(lookup_nodes)],
                ..Default::default()
            },
            new_ids: vec![],
            text: prompt.to_vec(),
            history: None,
            sizer,
            plan: None,
            state: None,
            reuse_s: 0.0,
            start: Instant::now(),
            prefill: Duration::ZERO,
            stop: None,
        })
    }

    /// One generation after `prompt` with `acceptor`, a sequence driven alone: prefill, then
    /// draft → verify → accept until it ends (see [`SpeculativeGenerator::generate`]).
    pub fn generate<A: Acceptor<B>>(
        &self,
        prompt: &[u32],
        options: &GenerateOptions,
        context: usize,
        acceptor: A,
        on_tokens: &mut dyn FnMut(&[u32]) -> ControlFlow<()>,
    ) -> Result<SpecGeneration> {
        let mut seq = self.start(prompt, options, context, acceptor)?;
        let out = self
            .model
            .forward(&Input::causal(prompt, 0, Logits::Last), seq.cache_mut())?;
        seq.begin(self, out, on_tokens)?;
        seq.run(self, on_tokens)?;
        Ok(seq.finish())
    }

    /// The draft stage: the heads' part of the tree `plan` asks for (from `state`, or the
    /// newest feature of `history`), the lookup chain grafted on, cut to `room` nodes.
    #[allow(clippy::too_many_arguments)]
    fn draft_tree(
        &self,
        plan: &mut Plan,
        sizer: Option<&mut AdaptiveSizer>,
        root: u32,
        state: Option<Tensor<B, 2>>,
        history: &Tensor<B, 2>,
        text: &[u32],
        room: usize,
    ) -> Result<DraftedTree> {
        let mut heads_tree = match &plan.heads {
            Heads::None => TokenTree::new(root),
            Heads::Grown => {
                let sizer = sizer.ok_or_else(|| {
                    EngineError::InvalidOption("internal: a grown tree needs its sizer".into())
                })?;
                let offer = plan.lookup.take();
                let (tree, take) = self.draft(state, history, text, |drafting| {
                    sizer.grow(root, drafting, offer.as_ref())
                })?;
                // The sizer priced the chain with what the tree shares: nothing to respend.
                plan.spare.clear();
                plan.lookup = cut(offer, take);
                tree
            }
            Heads::Template(tpl) => {
                self.draft(state, history, text, |drafting| tpl.build(root, drafting))?
            }
            Heads::Dynamic(cfg) => self.draft(state, history, text, |drafting| {
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
    fn draft<T>(
        &self,
        state: Option<Tensor<B, 2>>,
        history: &Tensor<B, 2>,
        text: &[u32],
        build: impl FnOnce(&mut Drafting<'_, B, D>) -> std::result::Result<T, TreeError>,
    ) -> Result<T> {
        let state = match state {
            Some(s) => s,
            None => self.initial_for_last(history),
        };
        let mut drafting = Drafting::new(self.drafter, state, text);
        Ok(build(&mut drafting)?)
    }

    /// The initial state of the last row of `history` (its window: the rows before it).
    fn initial_for_last(&self, history: &Tensor<B, 2>) -> Tensor<B, 2> {
        let [len, h] = history.dims();
        let w = self.drafter.window();
        let feature = history.clone().slice([len - 1..len, 0..h]);
        let (window, valid) = window_rows(history, &[(0..len - 1).collect()], w, self.device());
        self.drafter.initial_states(feature, window, valid)
    }

    fn device(&self) -> &B::Device {
        self.model.device()
    }

    /// Runs the first drafting stage on the accepted node (its window: the committed history,
    /// then its ancestors), if `drafts` (the next step drafts); returns its state with the new
    /// history (last `window + 1` committed features).
    fn reuse(
        &self,
        tree: &TokenTree,
        path: &[usize],
        features: Tensor<B, 2>,
        history: &Tensor<B, 2>,
        drafts: bool,
    ) -> (Option<Tensor<B, 2>>, Tensor<B, 2>) {
        let device = self.device();
        let w = self.drafter.window();
        let [hl, h] = history.dims();
        // Rows: history (0..hl) then tree nodes (hl..).
        let all = Tensor::cat(vec![history.clone(), features.clone()], 0);
        // New history: old history then the accepted nodes, last w + 1 rows.
        let mut rows: Vec<usize> = (0..hl).collect();
        rows.extend(path.iter().map(|&p| hl + p));
        let keep = &rows[rows.len().saturating_sub(w + 1)..];
        let next_history = all.clone().select(0, ids::<B>(keep, device));
        if !drafts {
            return (None, next_history);
        }
        // Only the accepted node's state is needed: its feature, with its window (the committed
        // history before this step, then its ancestors in the tree).
        let accepted = *path.last().unwrap_or(&0);
        let window_of: Vec<usize> = if w == 0 {
            Vec::new()
        } else {
            let anc = tree.path_to(accepted);
            (0..hl)
                .chain(anc[..anc.len() - 1].iter().map(|&a| hl + a))
                .collect()
        };
        let (window, valid) = window_rows(&all, &[window_of], w, device);
        let feature = features.slice([accepted..accepted + 1, 0..h]);
        let state = self.drafter.initial_states(feature, window, valid);
        (Some(state), next_history)
    }
}

/// One S4C generation taken a step at a time — [`Self::draft`] a tree, run its
/// [`SpecStep::input`] through the target, [`Self::accept`] the output — so that several
/// sequences can share each forward ([`CausalLm::forward_batch`]). Its tokens are those
/// [`SpeculativeGenerator::generate`] gives.
pub struct SpecSequence<B: Backend, A> {
    cache: KvCache<B>,
    acceptor: A,
    options: GenerateOptions,
    stats: SpecStats,
    new_ids: Vec<u32>,
    /// Prompt and answer so far, the root last: where context lookup searches.
    text: Vec<u32>,
    /// The committed features the window reads: the last `w` before the newest one, and it.
    history: Option<Tensor<B, 2>>,
    /// The online sizer of an adaptive shape.
    sizer: Option<Box<AdaptiveSizer>>,
    /// What the next step drafts.
    plan: Option<Plan>,
    /// The drafter's initial state of the newest committed feature: computed by the first step
    /// that drafts, then by feature reuse while steps keep drafting.
    state: Option<Tensor<B, 2>>,
    /// Seconds of the feature reuse that prepared the next step's draft (timed with that step).
    reuse_s: f64,
    start: Instant,
    prefill: Duration,
    stop: Option<StopReason>,
}

/// One step's drafted tree, ready for the target: [`Self::input`] is what it verifies.
pub struct SpecStep {
    drafted: DraftedTree,
    plan: Plan,
    tokens: Vec<u32>,
    positions: Vec<usize>,
    mask: AttentionMask,
    draft_s: f64,
}

impl SpecStep {
    /// The forward input: the tree's tokens at depth positions under the tree mask.
    pub fn input(&self) -> Input<'_> {
        Input::tree(&self.tokens, self.positions.clone(), &self.mask)
    }
}

impl<B: Backend, A: Acceptor<B>> SpecSequence<B, A> {
    /// Its cache.
    pub fn cache_mut(&mut self) -> &mut KvCache<B> {
        &mut self.cache
    }

    /// Whether it still generates (then [`Self::draft`] the next step).
    pub fn is_running(&self) -> bool {
        self.stop.is_none() && !self.new_ids.is_empty()
    }

    /// Takes the first token and the prompt's last features from the prefill's `out` (the prompt
    /// run causally, last logits) and plans the first step; `on_tokens` receives the token.
    pub fn begin<M: CausalLm<B>, D: Drafter<B>>(
        &mut self,
        sp: &Speculator<'_, B, M, D>,
        out: LmOutput<B>,
        on_tokens: &mut dyn FnMut(&[u32]) -> ControlFlow<()>,
    ) -> Result<()> {
        let mut sampler = Sampler::new(self.options.sampling, self.options.seed);
        let first = next_token(out.logits, &mut sampler)?;
        let [n, hidden] = out.features.dims();
        let keep = sp.feature_rows().min(n);
        self.history = Some(out.features.slice([n - keep..n, 0..hidden]));
        self.prefill = self.start.elapsed();
        self.new_ids.push(first);
        self.text.push(first);
        let flow = on_tokens(&[first]);
        self.plan = Some(plan_step(&sp.shape, sp.lookup, &mut self.sizer, &self.text));
        self.settle(flow);
        Ok(())
    }

    /// Decodes alone until generation ends: draft → verify (one forward of the tree) → accept.
    pub fn run<M: CausalLm<B>, D: Drafter<B>>(
        &mut self,
        sp: &Speculator<'_, B, M, D>,
        on_tokens: &mut dyn FnMut(&[u32]) -> ControlFlow<()>,
    ) -> Result<()> {
        while self.is_running() {
            let step = self.draft(sp)?;
            let t = Instant::now();
            let out = sp.model.forward(&step.input(), &mut self.cache)?;
            let verify_s = t.elapsed().as_secs_f64();
            self.accept(sp, step, out, verify_s, on_tokens)?;
        }
        Ok(())
    }

    /// Drafts the next step's tree: the heads' part, then the lookup chain grafted on.
    pub fn draft<M: CausalLm<B>, D: Drafter<B>>(
        &mut self,
        sp: &Speculator<'_, B, M, D>,
    ) -> Result<SpecStep> {
        let (Some(mut plan), Some(history), Some(&root), true) = (
            self.plan.take(),
            self.history.as_ref(),
            self.new_ids.last(),
            self.stop.is_none(),
        ) else {
            return Err(EngineError::InvalidOption(
                "this sequence is not running: begin it, and draft only while it runs".into(),
            ));
        };
        let t = Instant::now();
        let room = self.cache.capacity() - self.cache.len();
        let drafted = sp.draft_tree(
            &mut plan,
            self.sizer.as_deref_mut(),
            root,
            self.state.take(),
            history,
            &self.text,
            room,
        )?;
        let tree = &drafted.tree;
        let flat = tree.flatten();
        let base = self.cache.len();
        let positions: Vec<usize> = flat.depths.iter().map(|&d| base + d).collect();
        let mask = AttentionMask::tree(base, tree.len(), &flat.mask.to_dense())
            .ok_or_else(|| EngineError::InvalidOption("internal: tree mask size".into()))?;
        let draft_s = t.elapsed().as_secs_f64();
        self.stats.draft_s += draft_s;
        self.stats.drafted += tree.len() - 1;
        self.stats.plain_steps += usize::from(tree.len() == 1);
        Ok(SpecStep {
            drafted,
            plan,
            tokens: flat.tokens,
            positions,
            mask,
            draft_s,
        })
    }

    /// Accepts from the target's output `out` for `step`'s input (its forward took `verify_s`
    /// seconds: this sequence's share when several shared it), commits the accepted branch,
    /// gives its tokens to `on_tokens`, and prepares the next step's draft.
    pub fn accept<M: CausalLm<B>, D: Drafter<B>>(
        &mut self,
        sp: &Speculator<'_, B, M, D>,
        step: SpecStep,
        out: LmOutput<B>,
        verify_s: f64,
        on_tokens: &mut dyn FnMut(&[u32]) -> ControlFlow<()>,
    ) -> Result<()> {
        let SpecStep {
            drafted,
            plan,
            draft_s,
            ..
        } = step;
        let DraftedTree {
            tree,
            heads_tree,
            heads_map,
        } = drafted;
        let stats = &mut self.stats;
        stats.verify_s += verify_s;

        // Accept.
        let t = Instant::now();
        let proposals = vec![Proposal::Deterministic; tree.len()];
        let verdict = self.acceptor.accept(&tree, &proposals, out.logits)?;
        stats.steps += 1;
        stats.accepted += verdict.path.len() - 1;
        for (d, hit) in verdict
            .accepted_per_depth(stats.accepted_at_depth.len())
            .into_iter()
            .enumerate()
        {
            stats.accepted_at_depth[d] += hit as usize;
        }
        let accept_s = t.elapsed().as_secs_f64();
        stats.accept_s += accept_s;

        // Commit: keep the root and the accepted nodes; the bonus becomes the next root.
        let t = Instant::now();
        self.cache.commit(&verdict.path)?;
        let (emitted, ended) = emitted_tokens(verdict.emitted(), &self.options, self.new_ids.len());
        self.new_ids.extend(&emitted);
        self.text.extend(&emitted);
        let flow = on_tokens(&emitted);
        learn(
            &plan,
            &tree,
            &heads_tree,
            &heads_map,
            &verdict.path,
            stats,
            self.sizer.as_deref_mut(),
        );
        stats.commit_s += t.elapsed().as_secs_f64();
        if let Some(s) = self.sizer.as_mut() {
            let step_s = self.reuse_s + draft_s + verify_s + accept_s + t.elapsed().as_secs_f64();
            s.record_time(tree.len() - 1, step_s);
        }
        if ended.is_some() || flow.is_break() {
            self.stop = ended.or(Some(StopReason::Interrupted));
            return Ok(());
        }

        // Feature reuse: the accepted nodes' features join the window and, if the next step
        // drafts, the first drafting stage runs on the last accepted node.
        let t = Instant::now();
        let plan = plan_step(&sp.shape, sp.lookup, &mut self.sizer, &self.text);
        let drafts = !matches!(plan.heads, Heads::None);
        let history = self.history.take().ok_or_else(|| {
            EngineError::InvalidOption("internal: accepted before the prefill".into())
        })?;
        let (state, history) = sp.reuse(&tree, &verdict.path, out.features, &history, drafts);
        self.plan = Some(plan);
        self.state = state;
        self.history = Some(history);
        self.reuse_s = t.elapsed().as_secs_f64();
        self.stats.draft_s += self.reuse_s;
        self.settle(ControlFlow::Continue(()));
        Ok(())
    }

    /// Whether generation ends before the next step: `flow` (the caller's callback), a stop
    /// token, the token limit or a full context.
    fn settle(&mut self, flow: ControlFlow<()>) {
        let root = self.new_ids.last().copied();
        self.stop = if flow.is_break() {
            Some(StopReason::Interrupted)
        } else if root.is_some_and(|r| self.options.stop_tokens.contains(&r)) {
            Some(StopReason::StopToken)
        } else if self.new_ids.len() >= self.options.max_new_tokens {
            Some(StopReason::MaxTokens)
        } else if self.cache.len() >= self.cache.capacity() {
            Some(StopReason::ContextFull)
        } else {
            None
        };
    }

    /// Tells an adaptive tree that `sequences` sequences (this one included) share the coming
    /// steps' forwards ([`AdaptiveSizer::set_sharing`]): it then sizes trees by what their rows
    /// add to a shared pass. 1 (the default): alone.
    pub fn set_sharing(&mut self, sequences: usize) {
        if let Some(s) = self.sizer.as_mut() {
            s.set_sharing(sequences);
        }
    }

    /// The result (once [`Self::is_running`] is false, or to cut generation short).
    pub fn finish(self) -> SpecGeneration {
        self.finish_with_cache().0
    }

    /// [`Self::finish`], and the cache: the keys and values of the prompt and of every accepted
    /// token but the last.
    pub fn finish_with_cache(self) -> (SpecGeneration, KvCache<B>) {
        let mut stats = self.stats;
        // The prefill's token counts as a step of its own, as in plain decoding (τ = 1).
        stats.tau = self.new_ids.len() as f64 / (stats.steps + 1) as f64;
        stats.mean_tree_nodes = stats.drafted as f64 / stats.steps.max(1) as f64;
        let generation = SpecGeneration {
            new_ids: self.new_ids,
            elapsed: self.start.elapsed(),
            prefill: self.prefill,
            stop: self.stop.unwrap_or(StopReason::Interrupted),
            stats,
        };
        (generation, self.cache)
    }
}

/// Speculative generation with a target `M`, a drafter `D` and an acceptance rule `A`.
pub struct SpeculativeGenerator<'a, B: Backend, M: CausalLm<B>, D: Drafter<B>, A: Acceptor<B>> {
    speculator: Speculator<'a, B, M, D>,
    acceptor: A,
}

impl<'a, B: Backend, M: CausalLm<B>, D: Drafter<B>, A: Acceptor<B>>
    SpeculativeGenerator<'a, B, M, D, A>
{
    /// A generator; the shape is checked against the drafter as [`Speculator::new`] does.
    pub fn new(model: &'a M, drafter: &'a D, acceptor: A, shape: TreeShape) -> Result<Self> {
        Ok(SpeculativeGenerator {
            speculator: Speculator::new(model, drafter, shape)?,
            acceptor,
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
        self.speculator = self.speculator.with_lookup(lookup);
        self
    }

    /// The tree shape in use.
    pub fn shape(&self) -> &TreeShape {
        self.speculator.shape()
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
        self.speculator
            .generate(prompt, options, context, &mut self.acceptor, on_tokens)
    }
}

/// One step's tree: the whole tree verified, the heads' part of it, and where each node of the
/// heads' part is in the whole tree.
struct DraftedTree {
    tree: TokenTree,
    heads_tree: TokenTree,
    heads_map: Vec<usize>,
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
    plan: &Plan,
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

/// What one step drafts.
struct Plan {
    /// The heads' part of the tree.
    heads: Heads,
    /// A chain copied from the context, cut to the tokens this step verifies.
    lookup: Option<LookupDraft>,
    /// The chain's tokens after the cut (adaptive sizing), which may stand in for chain tokens
    /// the heads' tree turns out to share.
    spare: Vec<u32>,
}

/// The heads' part of a step's tree.
enum Heads {
    /// Nothing: the root alone.
    None,
    /// A template: the static shape's, or the one the adaptive sizer chose for this step.
    Template(Template),
    /// A dynamic tree.
    Dynamic(DynamicConfig),
    /// Grown from the drafts by the adaptive sizer ([`AdaptiveSizer::grow`]), which also cuts
    /// the lookup chain.
    Grown,
}

/// What the next step drafts after `text` (prompt and answer, the root last): the adaptive
/// sizer's choice, else the shape as it is with the whole lookup chain.
fn plan_step(
    shape: &TreeShape,
    lookup: Option<ContextLookup>,
    sizer: &mut Option<Box<AdaptiveSizer>>,
    text: &[u32],
) -> Plan {
    let chain = lookup.and_then(|l| l.propose(text));
    match (sizer.as_mut(), shape) {
        (Some(s), _) if s.config().max_depth > 0 => {
            if s.drafting_pays() {
                Plan {
                    heads: Heads::Grown,
                    lookup: chain,
                    spare: Vec::new(),
                }
            } else {
                let take = s.lookup_without_drafts(chain.as_ref());
                Plan {
                    heads: Heads::None,
                    lookup: cut(chain, take),
                    spare: Vec::new(),
                }
            }
        }
        (Some(s), _) => {
            let choice = s.choose_step(chain.as_ref());
            let mut spare = Vec::new();
            let lookup = chain
                .map(|mut c| {
                    spare = c.tokens.split_off(choice.lookup.min(c.tokens.len()));
                    c
                })
                .filter(|c| !c.tokens.is_empty());
            let heads = choice.template.map_or(Heads::None, Heads::Template);
            Plan {
                heads,
                lookup,
                spare,
            }
        }
        (None, shape) => {
            let heads = match shape {
                TreeShape::Static(t) => Heads::Template(t.clone()),
                TreeShape::Dynamic(c) => Heads::Dynamic(*c),
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

/// `chain` cut to its first `take` tokens; none where that leaves none.
fn cut(chain: Option<LookupDraft>, take: usize) -> Option<LookupDraft> {
    chain
        .map(|mut c| {
            c.tokens.truncate(take);
            c
        })
        .filter(|c| !c.tokens.is_empty())
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
