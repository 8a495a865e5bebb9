//! What S4C runs with: the heads found for the model, their drafter, the tree shape and context
//! lookup, chosen from [`TreeOptions`]; and one generation with the acceptor that matches the
//! sampling options.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use s4c_draft::{Drafter, MultiHeadDrafter, NoDrafter};
use s4c_models::{CausalLm, LoadedModel};
use s4c_tree::{AcceptanceStats, ContextLookup, DynamicConfig, Template};
use s4c_verify::{Acceptor, GreedyAcceptor, SamplingAcceptor};
use serde::Serialize;
use serde_json::{json, Value};

use crate::cost::{adaptive_sizer, cache_dir, profile};
use crate::plain::GenerateOptions;
use crate::speculative::{Speculator, TreeShape};
use crate::{EngineError, Result};

/// How each step's verification tree is shaped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TreeKind {
    /// A fixed template (`template_file`, default `mc_sim_7b_63`), cut to `nodes`.
    Static,
    /// Best-first expansion by draft probability (EAGLE-2 style).
    Dynamic,
    /// Grown every step for the most expected tok/s: each draft kept while its acceptance,
    /// estimated from its draft probability and what was accepted so far, pays for its row on
    /// this backend's latency curve (measured once, cached; then the step times measured while
    /// generating); plain steps when no draft pays.
    #[default]
    Cost,
}

/// The tree options of S4C. The defaults are what `s4c generate` uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeOptions {
    /// Tree shape.
    pub kind: TreeKind,
    /// Most draft nodes per tree.
    pub nodes: usize,
    /// Deepest draft depth (`None`: the number of heads; `Some(0)` with [`TreeKind::Cost`]: the
    /// heads never draft, context lookup alone).
    pub depth: Option<usize>,
    /// Candidates per expanded node of a dynamic tree.
    pub top_k: usize,
    /// A static template file (JSON list of top-k paths, Medusa format).
    pub template_file: Option<PathBuf>,
    /// Most tokens copied from the context per step (context lookup: the continuation of the
    /// latest earlier occurrence of the last 1–8 tokens, verified with the heads' tree); 0 turns
    /// it off.
    pub lookup: usize,
}

impl Default for TreeOptions {
    fn default() -> Self {
        TreeOptions {
            kind: TreeKind::Cost,
            nodes: 64,
            depth: None,
            top_k: 8,
            template_file: None,
            lookup: 16,
        }
    }
}

/// Heads, tree and lookup of an engine in S4C mode.
pub(crate) struct Speculation<B: Backend> {
    /// The heads' file, if heads were found.
    pub heads: Option<PathBuf>,
    /// Their drafter (`None` drafts nothing: context lookup alone).
    pub drafter: Option<MultiHeadDrafter<B>>,
    /// The tree shape (each generation starts from a clone).
    pub shape: TreeShape,
    /// Context lookup.
    pub lookup: Option<ContextLookup>,
    /// A JSON description of the tree, lookup included.
    pub info: Value,
}

/// Where heads for the model at `model` are looked for, in order: `$S4C_HEADS` (a heads file,
/// or a folder holding `<name>.heads.safetensors`), `heads.safetensors` inside an HF folder,
/// `<name>.heads.safetensors` next to the model file, and under `assets/` of the working
/// directory — `<name>` being the model file's name up to its first dot.
pub fn heads_search_path(model: &Path) -> Vec<PathBuf> {
    let name = model
        .file_name()
        .and_then(|s| s.to_str())
        .map(|s| format!("{}.heads.safetensors", s.split('.').next().unwrap_or(s)));
    let mut v = vec![];
    if let Some(env) = std::env::var_os("S4C_HEADS") {
        let env = PathBuf::from(env);
        match &name {
            Some(n) if env.is_dir() => v.push(env.join(n)),
            _ => v.push(env),
        }
    }
    if model.is_dir() {
        v.push(model.join("heads.safetensors"));
    }
    if let Some(n) = &name {
        if let Some(dir) = model.parent() {
            v.push(dir.join(n));
        }
        v.push(Path::new("assets").join(n));
    }
    v
}

/// Loads heads for `m`: from `given`, or the first file of [`heads_search_path`] made for this
/// model (heads of another model are passed over). With the target on the CPU engine, the
/// drafter's LM head goes there too.
pub(crate) fn find_heads<B: Backend>(
    m: &LoadedModel<B>,
    given: Option<&Path>,
) -> Result<Option<(PathBuf, MultiHeadDrafter<B>)>> {
    let place = |d: MultiHeadDrafter<B>| -> Result<MultiHeadDrafter<B>> {
        Ok(match m.model.threads() {
            Some(t) => d.with_host_head(t.clone(), m.model.lm_head_matrix())?,
            None => d,
        })
    };
    if let Some(path) = given {
        let d = s4c_draft::io::load::<B, _>(path, &m.model)?;
        return Ok(Some((path.to_path_buf(), place(d)?)));
    }
    for path in heads_search_path(&m.path) {
        if !path.is_file() {
            continue;
        }
        if let Ok(d) = s4c_draft::io::load::<B, _>(&path, &m.model) {
            return Ok(Some((path, place(d)?)));
        }
    }
    Ok(None)
}

/// The speculation `options` ask for with `drafter` (context lookup alone without one).
/// `model_key` names everything a latency curve depends on besides the drafter.
pub(crate) fn speculation<B: Backend>(
    m: &LoadedModel<B>,
    heads: Option<(PathBuf, MultiHeadDrafter<B>)>,
    options: &TreeOptions,
    model_key: &str,
) -> Result<Speculation<B>> {
    let (heads, drafter) = match heads {
        Some((p, d)) => (Some(p), Some(d)),
        None => (None, None),
    };
    let (shape, mut info) = match &drafter {
        Some(d) => tree_shape(m, d, options, model_key)?,
        None => lookup_shape(m, options, model_key)?,
    };
    info["lookup"] = json!(options.lookup);
    Ok(Speculation {
        heads,
        drafter,
        shape,
        lookup: (options.lookup > 0).then(|| ContextLookup::new(1, 8, options.lookup)),
        info,
    })
}

/// The tree shape the options ask for, and a JSON description of it.
fn tree_shape<B: Backend>(
    m: &LoadedModel<B>,
    drafter: &MultiHeadDrafter<B>,
    options: &TreeOptions,
    model_key: &str,
) -> Result<(TreeShape, Value)> {
    let depth = options
        .depth
        .unwrap_or(drafter.max_depth())
        .min(drafter.max_depth());
    if options.nodes == 0 {
        return Err(EngineError::InvalidOption(
            "--tree-nodes must be at least 1".into(),
        ));
    }
    // Depth 0: the heads never draft; only context lookup (sized by the cost-aware tree).
    if depth == 0 && !(options.kind == TreeKind::Cost && options.lookup > 0) {
        return Err(EngineError::InvalidOption(
            "--tree-depth must be at least 1 (0, context lookup alone, needs --tree cost and \
             --lookup N with N ≥ 1)"
                .into(),
        ));
    }
    let first_n = |t: Template| -> Result<Template> {
        let t = t.truncated(depth)?;
        let n = options.nodes.min(t.len());
        Ok(Template::new(t.paths()[..n].to_vec())?)
    };
    match options.kind {
        TreeKind::Static => {
            let t = match &options.template_file {
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
                top_k: options.top_k.max(1),
                max_depth: depth,
                max_nodes: options.nodes,
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
            let key = format!(
                "{model_key}-{}x{}-dv{}{}",
                c.heads,
                c.inner,
                c.draft_vocab,
                if drafter.host_head() { "-host-q8" } else { "" }
            );
            let p = profile(&m.model, drafter, key, &cache_dir())?;
            let sizer = adaptive_sizer(&stats, &p, options.nodes, depth)?;
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

/// The tree for a model without heads: context lookup alone — with the cost tree its chains
/// sized online by a depth-0 [`s4c_tree::AdaptiveSizer`] on the measured latency curve,
/// otherwise whole chains every step; and a JSON description.
fn lookup_shape<B: Backend>(
    m: &LoadedModel<B>,
    options: &TreeOptions,
    model_key: &str,
) -> Result<(TreeShape, Value)> {
    if options.lookup == 0 || options.nodes == 0 {
        return Err(EngineError::InvalidOption(format!(
            "no draft heads for {}, and --lookup 0 or --tree-nodes 0 leaves nothing to verify; \
             pass --heads FILE, train them with `s4c train-heads`, drop --lookup 0, or use \
             --mode plain",
            m.path.display()
        )));
    }
    if options.kind != TreeKind::Cost {
        let info = json!({"kind": "lookup", "depth": 0});
        return Ok((TreeShape::RootOnly, info));
    }
    let key = format!("{model_key}-noheads");
    let p = profile(&m.model, &NoDrafter, key, &cache_dir())?;
    let sizer = adaptive_sizer(&AcceptanceStats::new(1, 1), &p, options.nodes, 0)?;
    let info = json!({
        "kind": "cost",
        "adaptive": true,
        "max_nodes": sizer.config().max_nodes,
        "depth": 0,
        "plain_step_s": sizer.step_seconds(0),
    });
    Ok((TreeShape::Adaptive(Box::new(sizer)), info))
}

impl<B: Backend> Speculation<B> {
    /// What S4C sequences of `model` share: the drafter (if any), the tree shape, the lookup.
    pub fn speculator<'a, M: CausalLm<B>>(
        &'a self,
        model: &'a M,
    ) -> Result<Speculator<'a, B, M, Option<MultiHeadDrafter<B>>>> {
        Ok(Speculator::new(model, &self.drafter, self.shape.clone())?.with_lookup(self.lookup))
    }
}

/// The acceptor `opts` ask for: greedy at temperature 0, lossless sampling (seeded from
/// `opts.seed`) otherwise.
pub(crate) fn acceptor<B: Backend>(opts: &GenerateOptions) -> Result<Box<dyn Acceptor<B>>> {
    Ok(if opts.sampling.is_greedy() {
        Box::new(GreedyAcceptor)
    } else {
        Box::new(SamplingAcceptor::new(
            opts.sampling,
            opts.seed ^ 0x5345_4c45_4354,
        )?)
    })
}
