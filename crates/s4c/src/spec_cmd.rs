//! The S4C side of the CLI: choosing the tree from the options, and running one generation with
//! the acceptor that matches the sampling options.

use std::path::PathBuf;

use burn::tensor::backend::Backend;
use s4c::cost::{adaptive_sizer, cache_dir, profile};
use s4c::plain::GenerateOptions;
use s4c::speculative::{SpecGeneration, SpeculativeGenerator, TreeShape};
use s4c::{EngineError, Result};
use s4c_draft::{Drafter, MultiHeadDrafter, NoDrafter};
use s4c_models::CausalLm;
use s4c_tree::{AcceptanceStats, ContextLookup, DynamicConfig, Template};
use s4c_verify::{GreedyAcceptor, SamplingAcceptor};
use serde_json::{json, Value};

use crate::{Loaded, Runner, SpecArgs, TreeKind};

/// What S4C runs with, as the options ask: the heads found for the model (if any), their drafter,
/// and the tree — context lookup alone when there are no heads.
pub struct Speculation<B: Backend> {
    /// The heads' file, if heads were found.
    pub heads: Option<PathBuf>,
    /// Their drafter (`None` drafts nothing).
    pub drafter: Option<MultiHeadDrafter<B>>,
    /// The tree shape.
    pub shape: TreeShape,
    /// A JSON description of the tree, lookup included.
    pub info: Value,
}

/// Finds and loads the heads for `loaded` and chooses the tree (see [`Speculation`]).
pub fn speculation<B: Backend>(loaded: &Loaded<B>, spec: &SpecArgs) -> Result<Speculation<B>> {
    let heads = loaded.find_heads(spec);
    let drafter = heads
        .as_ref()
        .map(|h| {
            let d = s4c_draft::io::load::<B, _>(h, &loaded.m.model)?;
            // With the target on the CPU engine, the drafter's LM head goes there too.
            match loaded.m.model.threads() {
                Some(t) => d.with_host_head(t.clone()),
                None => Ok(d),
            }
        })
        .transpose()?;
    let (shape, mut info) = match &drafter {
        Some(d) => tree_shape(loaded, d, spec)?,
        None => lookup_shape(loaded, spec)?,
    };
    info["lookup"] = json!(spec.lookup);
    Ok(Speculation {
        heads,
        drafter,
        shape,
        info,
    })
}

/// The tree shape the options ask for, and a JSON description of it.
fn tree_shape<B: Backend>(
    loaded: &Loaded<B>,
    drafter: &MultiHeadDrafter<B>,
    spec: &SpecArgs,
) -> Result<(TreeShape, Value)> {
    let depth = spec
        .tree_depth
        .unwrap_or(drafter.max_depth())
        .min(drafter.max_depth());
    if spec.tree_nodes == 0 {
        return Err(EngineError::InvalidOption(
            "--tree-nodes must be at least 1".into(),
        ));
    }
    // Depth 0: the heads never draft; only context lookup (sized by the cost-aware tree).
    if depth == 0 && !(matches!(spec.tree, TreeKind::Cost) && spec.lookup > 0) {
        return Err(EngineError::InvalidOption(
            "--tree-depth must be at least 1 (0, context lookup alone, needs --tree cost and \
             --lookup N with N ≥ 1)"
                .into(),
        ));
    }
    let first_n = |t: Template| -> Result<Template> {
        let t = t.truncated(depth)?;
        let n = spec.tree_nodes.min(t.len());
        Ok(Template::new(t.paths()[..n].to_vec())?)
    };
    match spec.tree {
        TreeKind::Static => {
            let t = match &spec.template_file {
                Some(f) => {
                    let text = std::fs::read_to_string(f).map_err(|source| EngineError::Io {
                        path: f.clone(),
                        source,
                    })?;
                    Template::from_json(&text)?
                }
                None => Template::mc_sim_7b_63(),
            };
            let t = first_n(t)?;
            let info = json!({"kind": "static", "nodes": t.len(), "depth": t.depth()});
            Ok((TreeShape::Static(t), info))
        }
        TreeKind::Dynamic => {
            let c = DynamicConfig {
                top_k: spec.tree_top_k.max(1),
                max_depth: depth,
                max_nodes: spec.tree_nodes,
            };
            let info =
                json!({"kind": "dynamic", "nodes": c.max_nodes, "depth": depth, "top_k": c.top_k});
            Ok((TreeShape::Dynamic(c), info))
        }
        TreeKind::Cost => {
            let stats = drafter.config().acceptance.clone().ok_or_else(|| {
                EngineError::InvalidOption(
                    "these heads carry no acceptance statistics (retrain them with `s4c \
                     train-heads`), so --tree cost cannot size the tree; use --tree static or \
                     dynamic"
                        .into(),
                )
            })?;
            let c = drafter.config();
            let model = &loaded.m.model;
            let key = format!(
                "{}-{}x{}-dv{}{}",
                model_key(loaded),
                c.heads,
                c.inner,
                c.draft_vocab,
                if drafter.host_head() { "-hosthead" } else { "" }
            );
            let p = profile(model, drafter, key, &cache_dir())?;
            let sizer = adaptive_sizer(&stats, &p, spec.tree_nodes, depth)?;
            // What the prior alone picks for the first step (the sizer then learns).
            let first = sizer.clone().choose();
            let info = json!({
                "kind": "cost",
                "adaptive": true,
                "max_nodes": sizer.config().max_nodes,
                "depth": sizer.config().max_depth,
                "first_nodes": first.as_ref().map_or(0, |t| t.len()),
                "first_paths": first.as_ref().map(|t| t.paths().to_vec()),
                "plain_step_s": sizer.step_seconds(0),
            });
            Ok((TreeShape::Adaptive(Box::new(sizer)), info))
        }
    }
}

/// Everything a latency curve depends on besides the drafter: the engine's version and the
/// forward's revision (either may change what a forward costs), the machine, backend, dtypes and
/// model shape.
fn model_key<B: Backend>(loaded: &Loaded<B>) -> String {
    let model = &loaded.m.model;
    format!(
        "{}r{}-{}-{}-{}-c{:?}-{}{}-{}l-{}h-{}",
        env!("CARGO_PKG_VERSION"),
        s4c_models::FORWARD_REVISION,
        s4c::cost::machine_tag(),
        loaded.backend,
        loaded.dtype_name(),
        model.compute_dtype(),
        model.engine(),
        model
            .threads()
            .map(|t| format!("-{}t-{}", t.count(), t.isa().name()))
            .unwrap_or_default(),
        model.config().num_layers,
        model.config().hidden_size,
        model.config().vocab_size,
    )
}

/// The tree for a model without heads: context lookup alone — with `--tree cost` its chains sized
/// online by a depth-0 [`s4c_tree::AdaptiveSizer`] on the measured latency curve, otherwise whole
/// chains every step; and a JSON description.
fn lookup_shape<B: Backend>(loaded: &Loaded<B>, spec: &SpecArgs) -> Result<(TreeShape, Value)> {
    if spec.lookup == 0 || spec.tree_nodes == 0 {
        return Err(EngineError::InvalidOption(format!(
            "no draft heads for {}, and --lookup 0 or --tree-nodes 0 leaves nothing to verify; pass \
             --heads FILE, train them with `s4c train-heads`, drop --lookup 0, or use --mode plain",
            loaded.path.display()
        )));
    }
    if !matches!(spec.tree, TreeKind::Cost) {
        let info = json!({"kind": "lookup", "depth": 0});
        return Ok((TreeShape::RootOnly, info));
    }
    let key = format!("{}-noheads", model_key(loaded));
    let p = profile(&loaded.m.model, &NoDrafter, key, &cache_dir())?;
    let sizer = adaptive_sizer(&AcceptanceStats::new(1, 1), &p, spec.tree_nodes, 0)?;
    let info = json!({
        "kind": "cost",
        "adaptive": true,
        "max_nodes": sizer.config().max_nodes,
        "depth": 0,
        "plain_step_s": sizer.step_seconds(0),
    });
    Ok((TreeShape::Adaptive(Box::new(sizer)), info))
}

/// Context lookup as the options ask for it: chains of up to `--lookup` tokens after matches of
/// 1–8 tokens, or none for `--lookup 0`. (Matches longer than 4 tokens rarely pick another place
/// than 4 would, but the sizer counts their acceptance apart: a long match — a loop, a quotation
/// — is right more often than a 4-token one.)
pub fn lookup(spec: &SpecArgs) -> Option<ContextLookup> {
    (spec.lookup > 0).then(|| ContextLookup::new(1, 8, spec.lookup))
}

/// One S4C generation: greedy acceptance at temperature 0, lossless sampling otherwise.
#[allow(clippy::too_many_arguments)]
pub fn run_spec<B: Backend, M: CausalLm<B>, D: Drafter<B>>(
    model: &M,
    drafter: &D,
    shape: TreeShape,
    lookup: Option<ContextLookup>,
    prompt: &[u32],
    opts: &GenerateOptions,
    context: usize,
    on_tokens: &mut dyn FnMut(&[u32]),
) -> Result<SpecGeneration> {
    if opts.sampling.is_greedy() {
        SpeculativeGenerator::new(model, drafter, GreedyAcceptor, shape)?
            .with_lookup(lookup)
            .generate(prompt, opts, context, on_tokens)
    } else {
        let acceptor = SamplingAcceptor::new(opts.sampling, opts.seed ^ 0x5345_4c45_4354)?;
        SpeculativeGenerator::new(model, drafter, acceptor, shape)?
            .with_lookup(lookup)
            .generate(prompt, opts, context, on_tokens)
    }
}
