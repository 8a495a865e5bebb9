//! Online tree sizing: the cost-aware choice of [`crate::cost`], kept up to date during a
//! generation from what it measures on the text being generated.
//!
//! Held-out acceptance rates are optimistic on new text, and a latency curve measured once is
//! noisy. [`AdaptiveSizer`] starts from both, then blends in every verification's accepted path
//! and every step's wall time, and before each step picks the tree (or no tree: a plain step)
//! with the most expected tokens per second. Every `probe_every`-th step it tries a neighbouring
//! size instead, alternately one node more and one fewer (a one-node tree while plain steps win),
//! so that what the current choice is compared with keeps being measured: drafting can come
//! back, trees can grow, and a plain step's own cost is timed rather than inferred.
//!
//! [`AdaptiveSizer::grow`] (what the engine's cost-aware tree does when the heads draft) prices
//! the drafts themselves instead of their depth and rank: it drafts depth by depth and keeps a
//! candidate while its reach — the product of its branch's acceptance estimated from each draft
//! probability, calibrated on this generation's verifications — pays for its row. A confident
//! draft grows a deep branch; an unsure one leaves a plain step. Where the steps that drafted
//! have given fewer tokens per second than those that did not, [`AdaptiveSizer::drafting_pays`]
//! says not to draft at all (a probe every `probe_every`-th step excepted).
//!
//! ```
//! use s4c_tree::{AcceptanceStats, AdaptiveConfig, AdaptiveSizer, Candidate, CandidateProvider, TokenTree, TreeError};
//!
//! // Candidates: token = rank.
//! struct ByRank;
//! impl CandidateProvider for ByRank {
//!     fn expand(&mut self, _: &TokenTree, nodes: &[usize], k: usize) -> Result<Vec<Vec<Candidate>>, TreeError> {
//!         Ok({
//!         let list: Vec<Candidate> =
//!             (0..k as u32).map(|r| Candidate { token: r, logprob: -1.0 }).collect();
//!         vec![list; nodes.len()]
//!         })
//!     }
//! }
//! // Prior: the top candidate is accepted 90% of the time at every depth.
//! let mut prior = AcceptanceStats::new(2, 2);
//! for d in 0..2 {
//!     prior.tried[d] = vec![100, 100];
//!     prior.accepted[d] = vec![90, 5];
//! }
//! // A plain step costs 10 ms, a step with n draft nodes 10 + n ms.
//! let cost: Vec<f64> = (0..=4).map(|n| 0.010 + 0.001 * n as f64).collect();
//! let mut sizer = AdaptiveSizer::new(&prior, cost, AdaptiveConfig::new(4, 2)).unwrap();
//! assert!(sizer.choose().is_some(), "good heads draft");
//! // On this text nothing is ever accepted (the path is the root alone): drafting stops.
//! for _ in 0..40 {
//!     if let Some(template) = sizer.choose() {
//!         let tree = template.build(7, &mut ByRank).unwrap();
//!         sizer.record_acceptance(&tree, &[0]);
//!     }
//! }
//! assert!(sizer.choose().is_none());
//! ```

use crate::cost::{best_paths_by, AcceptanceStats};
use crate::error::TreeError;
use crate::lookup::{LookupDraft, LookupStats};
use crate::template::Template;
use crate::tree::{TokenTree, ROOT};
use crate::CandidateProvider;
use std::time::Instant;

/// Settings of an [`AdaptiveSizer`].
#[derive(Debug, Clone, PartialEq)]
pub struct AdaptiveConfig {
    /// Draft nodes per tree at most (root excluded).
    pub max_nodes: usize,
    /// Tree depth at most (0: the heads never draft; only lookup chains are sized).
    pub max_depth: usize,
    /// Weight of the prior acceptance rates, in trials of the top candidate at depth 1: online
    /// counts outweigh the prior after about this many steps.
    pub prior_trials: u64,
    /// Every this many steps, try a neighbouring size — alternately one node more and one fewer
    /// than the best (0: never).
    pub probe_every: usize,
    /// Whether measured step times replace the predicted ones. Off makes the choice depend on
    /// acceptance only, so a seeded sampled generation is reproducible.
    pub learn_latency: bool,
}

impl AdaptiveConfig {
    /// Defaults: a prior worth 32 steps, a probe every 16th step, latency learned.
    pub fn new(max_nodes: usize, max_depth: usize) -> Self {
        AdaptiveConfig {
            max_nodes,
            max_depth,
            prior_trials: 32,
            probe_every: 16,
            learn_latency: true,
        }
    }
}

/// Lookup acceptance is counted per match length up to this (longer matches count as this long)…
const LOOKUP_MAX_MATCH: usize = 8;
/// …and chains of up to this many tokens.
const LOOKUP_MAX_TOKENS: usize = 64;

/// How much each new step time counts in the running estimate of its tree size.
const TIME_WEIGHT: f64 = 0.25;

/// Draft-probability bins of the calibration that [`AdaptiveSizer::grow`] prices nodes with…
const CALIBRATION_BINS: usize = 10;
/// …each starting from this many pseudo-trials accepted at the draft probability itself.
const CALIBRATION_PRIOR: f64 = 4.0;
/// Steps that drafted before [`AdaptiveSizer::drafting_pays`] may say no.
const MIN_DRAFTED: usize = 8;
/// Candidates asked per expanded node when growing a tree.
const GROW_TOP_K: usize = 4;

/// How often drafted candidates were accepted, per depth and draft-probability bin.
#[derive(Debug, Clone)]
struct Calibration {
    /// `tried[d][b]`: candidates at depth `d + 1` with a draft probability in bin `b` whose
    /// parent was accepted.
    tried: Vec<[u64; CALIBRATION_BINS]>,
    /// `accepted[d][b]`: of those, how many were accepted.
    accepted: Vec<[u64; CALIBRATION_BINS]>,
}

impl Calibration {
    fn new(max_depth: usize) -> Self {
        Calibration {
            tried: vec![[0; CALIBRATION_BINS]; max_depth.max(1)],
            accepted: vec![[0; CALIBRATION_BINS]; max_depth.max(1)],
        }
    }

    /// The table cell of a candidate at `depth` (≥ 1) drafted with probability `p`.
    fn cell(&self, depth: usize, p: f64) -> (usize, usize) {
        let d = depth.clamp(1, self.tried.len()) - 1;
        let b = ((p.clamp(0.0, 1.0) * CALIBRATION_BINS as f64) as usize).min(CALIBRATION_BINS - 1);
        (d, b)
    }

    /// Estimated acceptance of a candidate at `depth` drafted with probability `p`: the counts
    /// of its depth and bin, drawn towards those of its bin at every depth, which are drawn
    /// towards `p` itself (so evidence at one depth moves the others).
    fn rate(&self, depth: usize, p: f64) -> f64 {
        let (d, b) = self.cell(depth, p);
        let (mut t, mut a) = (0.0, 0.0);
        for (tried, accepted) in self.tried.iter().zip(&self.accepted) {
            t += tried[b] as f64;
            a += accepted[b] as f64;
        }
        let pooled = (a + CALIBRATION_PRIOR * p.clamp(0.0, 1.0)) / (t + CALIBRATION_PRIOR);
        let (t, a) = (self.tried[d][b] as f64, self.accepted[d][b] as f64);
        (a + CALIBRATION_PRIOR * pooled) / (t + CALIBRATION_PRIOR)
    }

    /// The most any candidate at `depth` is estimated to be accepted (the best bin at its top
    /// probability).
    fn best(&self, depth: usize) -> f64 {
        (1..=CALIBRATION_BINS)
            .map(|b| self.rate(depth, b as f64 / CALIBRATION_BINS as f64))
            .fold(0.0, f64::max)
    }

    /// Counts every child of an accepted node of `tree` (`path`, root first) by its draft
    /// probability.
    fn record(&mut self, tree: &TokenTree, path: &[usize]) {
        for (step, &node) in path.iter().enumerate() {
            let next = path.get(step + 1).copied();
            for c in tree.children(node) {
                let n = tree.node(c);
                let (d, b) = self.cell(n.depth, f64::from(n.logprob).exp());
                self.tried[d][b] += 1;
                self.accepted[d][b] += u64::from(Some(c) == next);
            }
        }
    }
}

/// Picks each step's tree from acceptance and step times measured so far (see the module docs).
#[derive(Debug, Clone)]
pub struct AdaptiveSizer {
    config: AdaptiveConfig,
    /// Prior counts; each weighs `prior_scale` of an online count.
    prior: AcceptanceStats,
    prior_scale: f64,
    /// Counts measured on this generation.
    online: AcceptanceStats,
    /// Predicted seconds of a step with `n` draft nodes, `n = 0..=max_nodes`.
    predicted: Vec<f64>,
    /// Running mean of measured seconds per size, once a step of that size was timed.
    measured: Vec<Option<f64>>,
    /// Running ratio of measured to predicted seconds (corrects sizes not measured yet).
    scale: f64,
    /// Acceptance of lookup chains measured on this generation.
    lookup: LookupStats,
    /// Acceptance by draft probability measured on this generation ([`Self::grow`]).
    calibration: Calibration,
    /// Running mean of the seconds one drafting level takes in [`Self::grow`].
    level_s: f64,
    /// The tokens and seconds of the steps that drafted and of those that did not, summed
    /// ([`Self::drafting_pays`]).
    drafting: Option<(f64, f64)>,
    not_drafting: Option<(f64, f64)>,
    /// Steps that drafted so far.
    drafted: usize,
    /// Whether the last step drafted, and the tokens its verification gave.
    last: (bool, usize),
    /// Steps sized so far ([`AdaptiveSizer::choose_step`], [`AdaptiveSizer::grow`]).
    steps: usize,
    /// Sequences whose steps share each forward (1: alone; see [`AdaptiveSizer::set_sharing`]).
    sharing: usize,
}

/// One step's choice of [`AdaptiveSizer::choose_step`].
#[derive(Debug, Clone, PartialEq)]
pub struct StepChoice {
    /// The heads' template, or `None`: no drafting.
    pub template: Option<Template>,
    /// Tokens of the lookup chain to add (0: none).
    pub lookup: usize,
}

impl AdaptiveSizer {
    /// A sizer from prior acceptance counts and `predicted[n]`, the predicted seconds of a step
    /// with `n` draft nodes (`predicted[0]`: a plain step); trees get at most
    /// `predicted.len() - 1` nodes.
    pub fn new(
        prior: &AcceptanceStats,
        predicted: Vec<f64>,
        mut config: AdaptiveConfig,
    ) -> Result<Self, TreeError> {
        if config.max_nodes == 0 || prior.max_depth() == 0 {
            return Err(TreeError::ZeroBudget("adaptive max_nodes and prior depth"));
        }
        if predicted.len() < 2 || predicted.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(TreeError::ZeroBudget(
                "predicted step times (positive, for 0 and 1+ nodes)",
            ));
        }
        config.max_nodes = config.max_nodes.min(predicted.len() - 1);
        config.max_depth = config.max_depth.min(prior.max_depth());
        let top = prior.tried[0].first().copied().unwrap_or(0).max(1);
        let prior_scale = config.prior_trials as f64 / top as f64;
        let ranks = prior.tried[0].len();
        Ok(AdaptiveSizer {
            online: AcceptanceStats::new(prior.max_depth(), ranks),
            prior: prior.clone(),
            prior_scale,
            measured: vec![None; predicted.len()],
            predicted,
            scale: 1.0,
            lookup: LookupStats::new(LOOKUP_MAX_MATCH, LOOKUP_MAX_TOKENS),
            calibration: Calibration::new(config.max_depth),
            level_s: 0.0,
            drafting: None,
            not_drafting: None,
            drafted: 0,
            last: (false, 1),
            steps: 0,
            sharing: 1,
            config,
        })
    }

    /// The settings in use (`max_nodes`, `max_depth` clipped to what the prior and the predicted
    /// times cover).
    pub fn config(&self) -> &AdaptiveConfig {
        &self.config
    }

    /// How much easier (> 1) or harder (< 1) this text is than the prior's: accepted drafts over
    /// the number the prior's rates expected for the same trials, both plus one.
    pub fn easiness(&self) -> f64 {
        let (mut expected, mut accepted) = (1.0, 1.0);
        for (d, (tried, acc)) in self
            .online
            .tried
            .iter()
            .zip(&self.online.accepted)
            .enumerate()
        {
            for (r, (&t, &a)) in tried.iter().zip(acc).enumerate() {
                expected += t as f64 * self.prior.rate(d + 1, r);
                accepted += a as f64;
            }
        }
        accepted / expected
    }

    /// The acceptance rate of the rank-`rank` candidate at `depth` (≥ 1) given its parent was
    /// accepted: the prior's counts with their accepted share scaled by [`Self::easiness`] (so
    /// evidence at one depth moves every depth), plus the online counts; 0 for a candidate
    /// neither ever tried.
    pub fn rate(&self, depth: usize, rank: usize) -> f64 {
        self.rate_with(self.easiness(), depth, rank)
    }

    fn rate_with(&self, easiness: f64, depth: usize, rank: usize) -> f64 {
        let (pt, pa) = self.prior.counts(depth, rank);
        let (ot, oa) = self.online.counts(depth, rank);
        let (pt, pa) = (pt as f64 * self.prior_scale, pa as f64 * self.prior_scale);
        let (ot, oa) = (ot as f64, oa as f64);
        if pt + ot <= 0.0 {
            return 0.0;
        }
        ((pa * easiness).min(pt) + oa) / (pt + ot)
    }

    /// Switches learning of step times on or off (see [`AdaptiveConfig::learn_latency`]).
    pub fn set_learn_latency(&mut self, on: bool) {
        self.config.learn_latency = on;
    }

    /// Prices the next steps for a forward that `sequences` sequences share (1: alone), as when a
    /// server verifies several requests' trees in one pass. The weights are then read once for
    /// all of them, so a step's fixed cost — a plain step's time less one row's — is split
    /// `sequences` ways, while every row (the root and each draft node) costs what one more row
    /// costs in a lone block (the predicted curve's mean slope). Shared steps are priced from the
    /// prediction (corrected by the measured-to-predicted ratio) and not timed. Without latency
    /// learning ([`AdaptiveConfig::learn_latency`], off for sampling so that a seed reproduces
    /// its output) this does nothing: choices then never depend on other sequences.
    pub fn set_sharing(&mut self, sequences: usize) {
        if self.config.learn_latency {
            self.sharing = sequences.max(1);
        }
    }

    /// Estimated seconds of a step with `n` draft nodes: the running mean of measured steps of
    /// that size once one was timed, else the prediction corrected by the measured-to-predicted
    /// ratio of the sizes timed so far; this sequence's part of a shared forward when the steps
    /// are shared ([`Self::set_sharing`]).
    pub fn step_seconds(&self, n: usize) -> f64 {
        let n = n.min(self.predicted.len() - 1);
        if self.sharing > 1 {
            let last = self.predicted.len() - 1;
            let row = ((self.predicted[last] - self.predicted[0]) / last as f64).max(0.0);
            let fixed = (self.predicted[0] - row).max(0.0);
            let shared = self.predicted[n] - fixed * (1.0 - 1.0 / self.sharing as f64);
            return shared * self.scale;
        }
        match self.measured[n] {
            Some(mean) if self.config.learn_latency => mean,
            _ => self.predicted[n] * self.scale,
        }
    }

    /// The tree for the next step, or `None` for a plain step (the root alone): the size with
    /// the most expected tokens per second, except that every `probe_every`-th step tries a
    /// neighbour of that size, alternately one node more (the next best path) and one node fewer
    /// (one more is tried while plain steps win).
    pub fn choose(&mut self) -> Option<Template> {
        self.choose_step(None).template
    }

    /// What the next step verifies when `lookup` (a chain copied from the context, see
    /// [`crate::ContextLookup`]) is on offer: the heads' template (or none) and how many of the
    /// chain's tokens to add, chosen together for the most expected tokens per second. The chain's
    /// tokens are priced with their own acceptance rates ([`Self::lookup_rate`]) and counted only
    /// where the heads' tree would not have reached that depth anyway (the two taken as
    /// independent). Probes as [`Self::choose`] does; a probe for one node more also tries one
    /// more chain token.
    pub fn choose_step(&mut self, lookup: Option<&LookupDraft>) -> StepChoice {
        let ranks = self.prior.tried[0].len();
        let easiness = self.easiness();
        let order = best_paths_by(
            &|d, r| self.rate_with(easiness, d, r),
            ranks,
            self.config.max_nodes,
            self.config.max_depth,
        )
        .unwrap_or_default();
        // reach[i - 1]: probability that the chain's first i tokens are all accepted.
        let reach: Vec<f64> = lookup.map_or_else(Vec::new, |d| {
            let mut r = 1.0;
            (1..=d.tokens.len())
                .map(|i| {
                    r *= self.lookup_rate(d.matched, i);
                    r
                })
                .collect()
        });
        // heads[d]: probability that the heads' tree is accepted to depth d or deeper — the sum
        // of the reach of its depth-d paths, each path's reach being what it added to τ.
        let mut heads = vec![0.0; self.config.max_depth + 1];
        let (mut best_n, mut best_l, mut best_rate) = (0, 0, f64::MIN);
        let mut tau = 1.0;
        for n in 0..=order.len() {
            if n > 0 {
                let (path, next) = &order[n - 1];
                heads[path.len()] += next - tau;
                tau = *next;
            }
            let mut expected = tau;
            for l in 0..=reach.len().min(self.config.max_nodes - n) {
                if l > 0 {
                    expected += reach[l - 1] * (1.0 - heads.get(l).copied().unwrap_or(0.0));
                }
                let rate = expected / self.step_seconds(n + l);
                if rate > best_rate {
                    (best_n, best_l, best_rate) = (n, l, rate);
                }
            }
        }
        self.steps += 1;
        if self.probing() {
            let fewer = (self.steps / self.config.probe_every).is_multiple_of(2);
            if fewer && best_n > 0 {
                best_n -= 1;
            } else {
                best_n = (best_n + 1).min(order.len());
                best_l = (best_l + 1).min(reach.len());
            }
            best_l = best_l.min(self.config.max_nodes - best_n);
        }
        let template = (best_n > 0)
            .then(|| Template::new(order[..best_n].iter().map(|(p, _)| p.clone()).collect()).ok())
            .flatten();
        StepChoice {
            template,
            lookup: best_l,
        }
    }

    /// Grows the next step's tree under `root` from the drafted candidates themselves: depth by
    /// depth, `provider` expands the nodes added last, and each candidate is priced by its reach
    /// — its parent's times its own acceptance estimated from its draft probability (counts of
    /// this generation by depth and probability, starting from the probability itself). The
    /// candidates of a depth are added best first while each raises the expected tokens per
    /// second ([`Self::step_seconds`]); growth stops at the first depth that adds none. So a
    /// confident draft grows a deep branch, an unsure one a plain step (the root alone). Then the
    /// most paying number of `lookup`'s tokens is chosen (those the tree already holds cost
    /// nothing; the others a node each, priced with the chain's own acceptance, as in
    /// [`Self::choose_step`]); it is returned with the tree.
    ///
    /// Errors only when `provider` does.
    pub fn grow(
        &mut self,
        root: u32,
        provider: &mut dyn CandidateProvider,
        lookup: Option<&LookupDraft>,
    ) -> Result<(TokenTree, usize), TreeError> {
        let mut tree = TokenTree::new(root);
        // Each node's reach: the probability that the accepted branch passes through it.
        let mut reach = vec![1.0];
        let mut tau = 1.0;
        let mut frontier = vec![ROOT];
        for depth in 1..=self.config.max_depth {
            // Expand only the nodes whose best conceivable child (their reach times the best
            // estimated acceptance) would pay for a node and for this drafting level; a probe
            // step drafts the first level anyway, so that a text where drafts were wrong is
            // measured again.
            let n = tree.len() - 1;
            let sure = self.calibration.best(depth);
            let (now, more) = (
                self.step_seconds(n),
                self.step_seconds(n + 1) + self.level_s,
            );
            let probe = depth == 1 && self.probing();
            frontier.retain(|&f| probe || (tau + reach[f] * sure) / more > tau / now);
            if frontier.is_empty() || n >= self.config.max_nodes {
                break;
            }
            let start = Instant::now();
            let lists = provider.expand(&tree, &frontier, GROW_TOP_K)?;
            if self.config.learn_latency {
                let took = start.elapsed().as_secs_f64();
                self.level_s += TIME_WEIGHT * (took - self.level_s);
            }
            let mut pool: Vec<(f64, usize, usize, u32, f32)> = Vec::new();
            for (&parent, list) in frontier.iter().zip(&lists) {
                for (rank, c) in list.iter().take(GROW_TOP_K).enumerate() {
                    let q =
                        reach[parent] * self.calibration.rate(depth, f64::from(c.logprob).exp());
                    pool.push((q, parent, rank, c.token, c.logprob));
                }
            }
            pool.sort_by(|a, b| b.0.total_cmp(&a.0));
            let mut added = Vec::new();
            for (q, parent, rank, token, logprob) in pool {
                let n = tree.len() - 1;
                if n >= self.config.max_nodes
                    || (tau + q) / self.step_seconds(n + 1) <= tau / self.step_seconds(n)
                {
                    break;
                }
                added.push(tree.push_ranked(parent, token, logprob, rank)?);
                reach.push(q);
                tau += q;
            }
            if added.is_empty() {
                break;
            }
            added.sort_unstable();
            frontier = added;
        }
        let take = self.lookup_take(&tree, tau, lookup);
        self.last.0 = true;
        self.steps += 1;
        Ok((tree, take))
    }

    /// Whether the next step should draft at all: on this text, steps that drafted gave at
    /// least the tokens per second (their drafting included) of steps that did not, as
    /// measured so far in this generation (before a step without drafting was timed, a plain
    /// step as predicted). Yes until 8 drafting steps were timed, on every `probe_every`-th step,
    /// and always without latency learning (the choice then never depends on time).
    pub fn drafting_pays(&self) -> bool {
        let Some((tokens, seconds)) = self.drafting else {
            return true;
        };
        if !self.config.learn_latency
            || self.probing()
            || self.sharing > 1
            || self.drafted < MIN_DRAFTED
        {
            return true;
        }
        let (plain_tokens, plain_seconds) = self
            .not_drafting
            .unwrap_or((1.0, self.predicted[0] * self.scale));
        tokens / seconds >= plain_tokens / plain_seconds
    }

    /// How many of `lookup`'s tokens the next step verifies when it does not draft (where
    /// [`Self::drafting_pays`] says no), chosen as [`Self::grow`] chooses them.
    pub fn lookup_without_drafts(&mut self, lookup: Option<&LookupDraft>) -> usize {
        let take = self.lookup_take(&TokenTree::new(0), 1.0, lookup);
        self.last.0 = false;
        self.steps += 1;
        take
    }

    /// Whether this step is a probe (every `probe_every`-th).
    fn probing(&self) -> bool {
        self.config.probe_every > 0 && self.steps.is_multiple_of(self.config.probe_every)
    }

    /// How many of `lookup`'s tokens to verify beside `tree`, whose expected accepted length is
    /// `tau`: its first `shared` tokens are a branch of the tree already (no node, no gain); each
    /// token after them costs a node and adds its reach — the chain's own acceptance so far, a
    /// branch apart from the tree's others.
    fn lookup_take(&self, tree: &TokenTree, tau: f64, lookup: Option<&LookupDraft>) -> usize {
        let Some(d) = lookup else {
            return 0;
        };
        let n = tree.len() - 1;
        let shared = tree.follow(&d.tokens);
        let mut r: f64 = (1..=shared)
            .map(|i| self.lookup_rate(d.matched, i))
            .product();
        let mut expected = tau;
        let mut best = (shared, tau / self.step_seconds(n));
        let most = (shared + self.config.max_nodes.saturating_sub(n)).min(d.tokens.len());
        for l in shared + 1..=most {
            r *= self.lookup_rate(d.matched, l);
            expected += r;
            let rate = expected / self.step_seconds(n + l - shared);
            if rate > best.1 {
                best = (l, rate);
            }
        }
        best.0
    }

    /// The acceptance rate of a lookup chain's token at `position` (≥ 1) after a
    /// `matched`-token match, given the tokens before it were accepted: this generation's counts
    /// plus a prior of one acceptance in two trials. The first token has a rate of its own; later
    /// positions share one (a copy that started right tends to stay right), so one accepted
    /// chain teaches every length.
    pub fn lookup_rate(&self, matched: usize, position: usize) -> f64 {
        let positions = if position <= 1 {
            1..2
        } else {
            2..LOOKUP_MAX_TOKENS + 1
        };
        let (t, a) = positions
            .map(|i| self.lookup.counts(matched, i))
            .fold((0, 0), |(t, a), (ti, ai)| (t + ti, a + ai));
        (a as f64 + 1.0) / (t as f64 + 2.0)
    }

    /// Records a lookup chain of `proposed` tokens after a `matched`-token match whose first
    /// `accepted` tokens were accepted.
    pub fn record_lookup(&mut self, matched: usize, proposed: usize, accepted: usize) {
        self.lookup.record(matched, proposed, accepted);
    }

    /// Records one verification of `tree` whose accepted node path (root first) was `path`.
    pub fn record_acceptance(&mut self, tree: &TokenTree, path: &[usize]) {
        self.online.record(tree, path);
        self.calibration.record(tree, path);
        self.last.1 = path.len();
    }

    /// Records the wall time of a whole step (draft, verify, accept, commit) with `nodes` draft
    /// nodes (ignored while steps are shared: see [`Self::set_sharing`]).
    pub fn record_time(&mut self, nodes: usize, seconds: f64) {
        let valid = seconds.is_finite() && seconds > 0.0 && nodes < self.predicted.len();
        if !(self.config.learn_latency && valid) || self.sharing > 1 {
            return;
        }
        let mean = &mut self.measured[nodes];
        *mean = Some(mean.map_or(seconds, |m| m + TIME_WEIGHT * (seconds - m)));
        let tokens = self.last.1 as f64;
        self.drafted += usize::from(self.last.0);
        let sums = if self.last.0 {
            &mut self.drafting
        } else {
            &mut self.not_drafting
        };
        *sums = Some(sums.map_or((tokens, seconds), |(t, s)| (t + tokens, s + seconds)));
        self.scale += TIME_WEIGHT * (seconds / self.predicted[nodes] - self.scale);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Candidate, TreeError};

    /// Prior: rank 0 accepted `top1` per mille at every depth, other ranks 5%; as held-out
    /// counts are, depth `d + 1` is tried only as often as depth `d`'s top candidate was accepted.
    fn prior(top1: u64) -> AcceptanceStats {
        let mut s = AcceptanceStats::new(4, 4);
        let mut tried = 100_000;
        for d in 0..4 {
            s.tried[d] = vec![tried; 4];
            s.accepted[d] = vec![tried * top1 / 1000, tried / 20, tried / 20, tried / 20];
            tried = tried * top1 / 1000;
        }
        s
    }

    /// Step seconds: 10 ms plain, + 2 ms per draft node.
    fn linear(max: usize) -> Vec<f64> {
        (0..=max).map(|n| 0.010 + 0.002 * n as f64).collect()
    }

    #[test]
    fn shared_steps_split_the_fixed_cost_and_stop_paying_for_trees() {
        let mut s = AdaptiveSizer::new(&prior(600), linear(8), AdaptiveConfig::new(8, 4)).unwrap();
        assert!(s.clone().choose().is_some(), "alone, a tree pays");
        // 10 ms plain = 8 ms fixed + 2 ms for the root's row; each node another 2 ms.
        s.set_sharing(4);
        assert!((s.step_seconds(0) - 0.004).abs() < 1e-12);
        assert!((s.step_seconds(3) - 0.010).abs() < 1e-12);
        // Timed shared steps teach nothing: the price is the model's.
        s.record_time(3, 1.0);
        assert!((s.step_seconds(3) - 0.010).abs() < 1e-12);
        s.set_sharing(16);
        // 2.5 ms a plain step; one node (accepted 60%) gives 1.6 tokens for 4.5 ms: no tree.
        assert_eq!(s.clone().choose(), None);
        s.set_sharing(1);
        assert!((s.step_seconds(3) - 0.016).abs() < 1e-12);
        assert!(s.clone().choose().is_some());
        // Without latency learning (sampling) the choice never depends on other sequences.
        let mut config = AdaptiveConfig::new(8, 4);
        config.learn_latency = false;
        let mut s = AdaptiveSizer::new(&prior(600), linear(8), config).unwrap();
        s.set_sharing(16);
        assert!(s.choose().is_some());
    }

    /// Candidates: token = rank; the top one drafted with probability `p`, the others with
    /// `(1 - p) / 8`; counts its calls.
    struct Confident {
        p: f32,
        calls: usize,
    }
    impl crate::CandidateProvider for Confident {
        fn expand(
            &mut self,
            _: &TokenTree,
            nodes: &[usize],
            k: usize,
        ) -> Result<Vec<Vec<Candidate>>, TreeError> {
            self.calls += 1;
            let list: Vec<Candidate> = (0..k as u32)
                .map(|r| Candidate {
                    token: r,
                    logprob: if r == 0 { self.p } else { (1.0 - self.p) / 8.0 }.ln(),
                })
                .collect();
            Ok(vec![list; nodes.len()])
        }
    }

    fn build(t: &Template) -> TokenTree {
        t.build(9, &mut Confident { p: 0.5, calls: 0 }).unwrap()
    }

    /// The node path of `tree` that follows rank 0 for `depth` levels.
    fn top_path(tree: &TokenTree, depth: usize) -> Vec<usize> {
        let mut path = vec![0];
        for _ in 0..depth {
            let last = *path.last().unwrap();
            match tree.children(last).find(|&c| tree.node(c).rank == 0) {
                Some(c) => path.push(c),
                None => break,
            }
        }
        path
    }

    #[test]
    fn the_first_choice_is_the_cost_aware_choice_of_the_prior() {
        let stats = prior(800);
        let mut sizer = AdaptiveSizer::new(&stats, linear(16), AdaptiveConfig::new(16, 4)).unwrap();
        let t = sizer.choose().expect("good heads draft");
        // Brute force over the best-first order of the prior's rates: the size with the best
        // τ / seconds.
        let rate =
            |d: usize, r: usize| stats.accepted[d - 1][r] as f64 / stats.tried[d - 1][r] as f64;
        let order = best_paths_by(&rate, 4, 16, 4).unwrap();
        let best = (1..=16)
            .max_by(|&a, &b| {
                let r = |n: usize| order[n - 1].1 / (0.010 + 0.002 * n as f64);
                r(a).total_cmp(&r(b))
            })
            .unwrap();
        assert_eq!(t.len(), best);
        // Weak heads: plain steps.
        let mut weak =
            AdaptiveSizer::new(&prior(50), linear(16), AdaptiveConfig::new(16, 4)).unwrap();
        assert!(weak.choose().is_none());
    }

    #[test]
    fn rejections_on_the_text_turn_drafting_off_and_probes_continue() {
        let mut sizer =
            AdaptiveSizer::new(&prior(800), linear(16), AdaptiveConfig::new(16, 4)).unwrap();
        let mut drafted = vec![];
        for step in 1..=200 {
            if let Some(t) = sizer.choose() {
                let tree = build(&t);
                sizer.record_acceptance(&tree, &[0]); // nothing accepted
                drafted.push((step, t.len()));
            }
        }
        // It starts drafting (good prior), stops, then probes one node every 16th step.
        assert_eq!(drafted[0].0, 1);
        let late: Vec<(usize, usize)> = drafted.into_iter().filter(|d| d.0 > 100).collect();
        let probes: Vec<(usize, usize)> = (7..=12).map(|k| (16 * k, 1)).collect();
        assert_eq!(late, probes);
    }

    #[test]
    fn acceptances_on_the_text_turn_drafting_on_and_grow_the_tree() {
        let mut sizer =
            AdaptiveSizer::new(&prior(150), linear(16), AdaptiveConfig::new(16, 4)).unwrap();
        assert!(sizer.choose().is_none(), "weak prior: plain");
        let mut sizes = vec![];
        for _ in 0..400 {
            if let Some(t) = sizer.choose() {
                let tree = build(&t);
                let path = top_path(&tree, 4); // the top candidate is always right
                sizer.record_acceptance(&tree, &path);
                sizes.push(t.len());
            }
        }
        let last = *sizes.last().unwrap();
        assert!(last >= 4, "sizes {sizes:?}");
        assert!(sizes.len() > 250, "drafts almost every step once it pays");
    }

    #[test]
    fn measured_step_times_override_the_prediction() {
        // Predicted: drafting is cheap and the prior good, so it drafts.
        let mut sizer =
            AdaptiveSizer::new(&prior(600), linear(8), AdaptiveConfig::new(8, 4)).unwrap();
        let n = sizer.choose().expect("drafts").len();
        // Measured: that size takes 10× its prediction, plain steps as predicted.
        for _ in 0..4 {
            sizer.record_time(n, 10.0 * (0.010 + 0.002 * n as f64));
            sizer.record_time(0, 0.010);
        }
        assert!(sizer.step_seconds(n) > 5.0 * (0.010 + 0.002 * n as f64));
        let next = sizer.choose().map_or(0, |t| t.len());
        assert_ne!(next, n, "the slow size is avoided");
        // Not learned when switched off: the prediction stands.
        let mut config = AdaptiveConfig::new(8, 4);
        config.learn_latency = false;
        let mut fixed = AdaptiveSizer::new(&prior(600), linear(8), config).unwrap();
        for _ in 0..4 {
            fixed.record_time(n, 1.0);
        }
        assert_eq!(fixed.step_seconds(n), 0.010 + 0.002 * n as f64);
    }

    #[test]
    fn a_plain_probe_times_plain_steps_instead_of_inferring_them() {
        // Predicted: a plain step 10 ms, a one-node step 11 ms; head 1 right 80% of the time
        // on held-out data, half the time on this text.
        let mut sizer =
            AdaptiveSizer::new(&prior(800), vec![0.010, 0.011], AdaptiveConfig::new(1, 1)).unwrap();
        // Measured: one-node steps take 20 ms, so the ratio to the prediction says plain steps
        // would take ~18 ms; they take 10. Drafting (1.5 tokens per 20 ms) loses to plain decoding.
        let mut plain = vec![];
        for step in 1..=200 {
            match sizer.choose() {
                Some(t) => {
                    let tree = build(&t);
                    let path = if step % 2 == 1 {
                        top_path(&tree, 1)
                    } else {
                        vec![0]
                    };
                    sizer.record_acceptance(&tree, &path);
                    sizer.record_time(1, 0.020);
                }
                None => {
                    plain.push(step);
                    sizer.record_time(0, 0.010);
                }
            }
        }
        // The first probe one node fewer (step 32) times a plain step; plain from then on, but
        // for the probes one node more.
        assert_eq!(plain[0], 32);
        assert_eq!(plain.len(), 200 - 31 - 10, "{plain:?}");
    }

    #[test]
    fn accepted_lookup_chains_are_taken_whole_and_rejected_ones_dropped() {
        let draft = LookupDraft {
            matched: 3,
            tokens: (0..12).collect(),
        };
        // Weak heads: without a chain, plain steps.
        let config = || AdaptiveConfig::new(16, 4);
        let mut good = AdaptiveSizer::new(&prior(50), linear(16), config()).unwrap();
        assert!(good.choose().is_none());
        let mut bad = good.clone();
        let (mut good_lens, mut bad_lens) = (vec![], vec![]);
        for _ in 0..100 {
            let c = good.choose_step(Some(&draft));
            assert!(c.template.is_none() || c.template.as_ref().unwrap().len() <= 1);
            good.record_lookup(3, c.lookup, c.lookup); // every token accepted
            good_lens.push(c.lookup);
            let c = bad.choose_step(Some(&draft));
            bad.record_lookup(3, c.lookup, 0); // the first token rejected
            bad_lens.push(c.lookup);
        }
        // 10 ms + 2 ms per node: twelve sure tokens (13 per 34 ms) beat fewer.
        assert!(good_lens[10..].iter().all(|&l| l == 12), "{good_lens:?}");
        // Rejected chains: after a few, only probes (every 16th step; this sizer's first step
        // was the `choose` above) still try a token.
        let late: Vec<usize> = (10..100).filter(|&i| bad_lens[i] > 0).collect();
        assert_eq!(late, vec![14, 30, 46, 62, 78, 94], "{bad_lens:?}");
        // Other match lengths keep their own counts.
        assert!(good.lookup_rate(3, 5) > 0.95 && good.lookup_rate(1, 5) == 0.5);
        assert_eq!(
            good.lookup_rate(3, 5),
            good.lookup_rate(3, 2),
            "later positions pooled"
        );
        // Without a chain nothing is copied.
        assert_eq!(good.choose_step(None).lookup, 0);
    }

    #[test]
    fn a_chain_adds_least_where_the_heads_already_reach() {
        // The same chain priced against strong and against weak heads: strong heads reach
        // depth 1 most of the time, so the chain's first token adds less and a shorter (or no)
        // chain is worth its nodes.
        let draft = LookupDraft {
            matched: 1,
            tokens: vec![1, 2],
        };
        let pick = |top1| {
            let mut s =
                AdaptiveSizer::new(&prior(top1), linear(4), AdaptiveConfig::new(4, 1)).unwrap();
            for _ in 0..50 {
                s.record_lookup(1, 2, 1); // first token accepted, second rejected
            }
            s.choose_step(Some(&draft))
        };
        let weak = pick(100);
        assert!(weak.template.is_none());
        assert_eq!(
            weak.lookup, 1,
            "a token accepted 98% of the time pays its 2 ms"
        );
        let strong = pick(990);
        assert_eq!(strong.template.as_ref().map(Template::len), Some(1));
        assert_eq!(strong.lookup, 0, "the head already gets that token");
    }

    #[test]
    fn depth_zero_sizes_lookup_chains_alone() {
        let mut sizer =
            AdaptiveSizer::new(&prior(990), linear(8), AdaptiveConfig::new(8, 0)).unwrap();
        let draft = LookupDraft {
            matched: 2,
            tokens: vec![5; 8],
        };
        for _ in 0..40 {
            assert!(sizer.choose().is_none(), "excellent heads, but depth 0");
            let c = sizer.choose_step(Some(&draft));
            assert!(c.template.is_none());
            sizer.record_lookup(2, c.lookup, c.lookup);
        }
        assert_eq!(sizer.choose_step(Some(&draft)).lookup, 8);
    }

    /// Whether `tree` is a chain of the top candidates, `depth` deep.
    fn is_top_chain(tree: &TokenTree, depth: usize) -> bool {
        tree.len() == depth + 1
            && tree.depth() == depth
            && tree.nodes()[1..].iter().all(|n| n.rank == 0)
    }

    #[test]
    fn grown_trees_follow_the_drafts_confidence() {
        let new = || AdaptiveSizer::new(&prior(600), linear(16), AdaptiveConfig::new(16, 4));
        // Sure drafts (p = 0.95 at every depth): 0.95, 0.90, 0.86, 0.81 tokens for 2 ms each
        // on a 10 ms step — the whole chain, and no second candidate (0.006 each).
        let mut sure = Confident { p: 0.95, calls: 0 };
        let (tree, take) = new().unwrap().grow(5, &mut sure, None).unwrap();
        assert!(is_top_chain(&tree, 4), "{tree:?}");
        assert_eq!((tree.node(0).token, take, sure.calls), (5, 0, 4));
        // Unsure ones (p = 0.1: 0.1 tokens for 20% more time): a plain step, one level drafted.
        let mut unsure = Confident { p: 0.1, calls: 0 };
        let (tree, _) = new().unwrap().grow(5, &mut unsure, None).unwrap();
        assert_eq!((tree.len(), unsure.calls), (1, 1));
        // In between (p = 0.6): 0.6 then 0.36 tokens for 2 ms each pay, a third node (0.216)
        // does not, and the fourth level is not drafted.
        let mut half = Confident { p: 0.6, calls: 0 };
        let (tree, _) = new().unwrap().grow(5, &mut half, None).unwrap();
        assert!(is_top_chain(&tree, 2), "{tree:?}");
        assert_eq!(half.calls, 3);
    }

    #[test]
    fn rejected_confident_drafts_stop_growing() {
        let mut s =
            AdaptiveSizer::new(&prior(600), linear(16), AdaptiveConfig::new(16, 4)).unwrap();
        let mut lens = vec![];
        for _ in 0..16 {
            let (tree, _) = s
                .grow(5, &mut Confident { p: 0.95, calls: 0 }, None)
                .unwrap();
            lens.push(tree.len() - 1);
            s.record_acceptance(&tree, &[0]); // the target never agrees
        }
        // The first rejections at depth 1 also lower what deeper drafts of that confidence are
        // worth: the chain shrinks, then plain steps.
        assert_eq!(lens[0], 4);
        assert!(lens[8..].iter().all(|&n| n == 0), "{lens:?}");
        // Accepted drafts of another probability are still taken (their bin is untouched).
        let (tree, _) = s
            .grow(5, &mut Confident { p: 0.75, calls: 0 }, None)
            .unwrap();
        assert!(tree.len() > 1);
    }

    #[test]
    fn a_chain_costs_only_the_tokens_the_grown_tree_lacks() {
        let mut s =
            AdaptiveSizer::new(&prior(600), linear(16), AdaptiveConfig::new(16, 4)).unwrap();
        for _ in 0..50 {
            s.record_lookup(3, 12, 12); // chains after 3-token matches are always right
        }
        // The sure heads' chain is tokens 0 0 0 0; a lookup chain starting 0 0 shares two.
        let draft = LookupDraft {
            matched: 3,
            tokens: vec![0, 0, 7, 8, 9, 10, 11, 12],
        };
        let (tree, take) = s
            .grow(5, &mut Confident { p: 0.95, calls: 0 }, Some(&draft))
            .unwrap();
        assert!(is_top_chain(&tree, 4));
        // 16 nodes at most: the 4 heads' nodes and 6 chain tokens beyond the 2 shared.
        assert_eq!(take, 8);
        // A chain that is always wrong is not taken, beyond what the tree shares.
        let mut wrong =
            AdaptiveSizer::new(&prior(600), linear(16), AdaptiveConfig::new(16, 4)).unwrap();
        for _ in 0..50 {
            wrong.record_lookup(3, 12, 0);
        }
        let (_, take) = wrong
            .grow(5, &mut Confident { p: 0.95, calls: 0 }, Some(&draft))
            .unwrap();
        assert_eq!(take, 2);
        let (_, take) = wrong
            .grow(5, &mut Confident { p: 0.1, calls: 0 }, Some(&draft))
            .unwrap();
        assert_eq!(take, 0);
    }

    #[test]
    fn drafting_stops_where_drafting_steps_are_slower_than_plain_ones() {
        let mut s =
            AdaptiveSizer::new(&prior(600), linear(16), AdaptiveConfig::new(16, 4)).unwrap();
        assert!(s.drafting_pays(), "nothing measured yet");
        // Drafting steps (drafts of probability 0.55, all rejected) that gave one token in
        // 20 ms each: half a predicted plain step's rate. After eight of them, no more drafting.
        for i in 0..MIN_DRAFTED {
            assert!(s.drafting_pays(), "step {i}");
            let (tree, _) = s
                .grow(5, &mut Confident { p: 0.55, calls: 0 }, None)
                .unwrap();
            s.record_acceptance(&tree, &[0]);
            s.record_time(tree.len() - 1, 0.020);
        }
        assert!(!s.drafting_pays());
        // Plain steps measured at 10 ms (one token each): no drafting, except a probe on every
        // 16th step.
        let mut pays = vec![];
        for _ in 0..20 {
            pays.push(s.drafting_pays());
            assert_eq!(s.lookup_without_drafts(None), 0);
            s.record_acceptance(&TokenTree::new(5), &[0]);
            s.record_time(0, 0.010);
        }
        let probes: Vec<usize> = (0..20).filter(|&i| pays[i]).collect();
        assert_eq!(probes, vec![16 - MIN_DRAFTED], "{pays:?}");
        // Without latency learning (sampling) the choice never depends on time.
        let mut config = AdaptiveConfig::new(16, 4);
        config.learn_latency = false;
        let mut s = AdaptiveSizer::new(&prior(600), linear(16), config).unwrap();
        let (tree, _) = s
            .grow(5, &mut Confident { p: 0.95, calls: 0 }, None)
            .unwrap();
        s.record_acceptance(&tree, &[0]);
        s.record_time(tree.len() - 1, 1.0);
        assert!(s.drafting_pays());
    }

    #[test]
    fn bad_inputs_are_refused() {
        let s = prior(500);
        assert!(AdaptiveSizer::new(&s, linear(4), AdaptiveConfig::new(0, 4)).is_err());
        assert!(AdaptiveSizer::new(&s, vec![0.01], AdaptiveConfig::new(4, 4)).is_err());
        assert!(AdaptiveSizer::new(&s, vec![0.01, f64::NAN], AdaptiveConfig::new(4, 4)).is_err());
        // Sizes beyond the predicted times are clipped.
        let sizer = AdaptiveSizer::new(&s, linear(3), AdaptiveConfig::new(64, 9)).unwrap();
        assert_eq!(sizer.config().max_nodes, 3);
        assert_eq!(sizer.config().max_depth, 4);
    }
}
