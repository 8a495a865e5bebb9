//! Cost-aware trees: the backend's verify-latency curve, measured once and cached per backend and
//! model (and measured again where the machine now runs a step well below the cached figure),
//! turned into the predicted step times of the online [`AdaptiveSizer`] that sizes each step's
//! tree for the most expected tokens per second (`--tree cost`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::{backend::Backend, Tensor};
use s4c_draft::Drafter;
use s4c_models::{AttentionMask, CausalLm, Input, Logits};
use s4c_tree::{AcceptanceStats, AdaptiveConfig, AdaptiveSizer, LatencyCurve};
use serde::{Deserialize, Serialize};

use crate::error::Result;

/// Tree sizes (nodes in the forward, root included) the curve is measured at.
pub const CURVE_SIZES: [usize; 8] = [1, 2, 4, 8, 16, 32, 48, 64];

/// A measured latency curve and the drafting cost, with what it was measured on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CostProfile {
    /// What the measurement is valid for (backend, model, dtypes).
    pub key: String,
    /// Seconds of one verification forward per tree size, after `prefix` cached tokens.
    pub verify: LatencyCurve,
    /// Seconds of one drafting level (a head call) for 1 node.
    pub draft_level_s: f64,
    /// Extra seconds per drafted node.
    pub draft_node_s: f64,
    /// Seconds of one token's forward on an empty cache, timed with the curve: what
    /// [`profile`] times again to tell whether a cached profile still holds.
    pub row_s: f64,
}

impl CostProfile {
    /// Drafting cost of a tree of `nodes` draft nodes and `depth` levels.
    pub fn draft_seconds(&self, nodes: usize, depth: usize) -> f64 {
        self.draft_level_s * depth as f64 + self.draft_node_s * nodes as f64
    }
}

/// One latency per size from repeated timings (`samples[i]` holds size `i`'s): the fastest of
/// each size — interference from other work only ever adds time — then made non-decreasing in
/// size (a forward of more tokens never costs less; a smaller size's dearer time is noise).
pub fn curve_from_samples(samples: &[Vec<f64>]) -> Vec<f64> {
    let mut floor = 0.0f64;
    samples
        .iter()
        .map(|times| {
            let fastest = times.iter().copied().fold(f64::INFINITY, f64::min);
            floor = floor.max(fastest);
            floor
        })
        .collect()
}

/// A cached profile is measured again when its [`CostProfile::row_s`] is more than this many
/// times what the machine does now: a curve timed while other work shared the processor prices
/// every tree too high (and drafts too little) for as long as it is cached.
pub const STALE_RATIO: f64 = 1.5;

/// Timed one-token forwards of [`row_seconds`] after its untimed first one (three).
const ROW_REPS: usize = 3;

/// Waits until `device` has run all queued work. Backends with lazy fusion (CUDA, wgpu) run
/// queued operations at the next read: a timer must start on an idle device.
fn idle<B: Backend>(device: &B::Device) -> Result<()> {
    B::sync(device).map_err(|e| s4c_verify::VerifyError::Read(format!("device sync: {e:?}")))?;
    Ok(())
}

/// The fastest of three timed forwards of one token on an empty cache, argmax read back,
/// after an untimed one (weights paged in, kernels compiled): a plain step with nothing cached.
pub fn row_seconds<B: Backend, M: CausalLm<B>>(model: &M) -> Result<f64> {
    let mut cache = model.new_cache(1);
    let mut fastest = f64::INFINITY;
    for rep in 0..=ROW_REPS {
        idle::<B>(model.device())?;
        let t = Instant::now();
        let out = model.forward(&Input::causal(&[0], 0, Logits::Last), &mut cache)?;
        s4c_verify::read_argmax(out.logits)?;
        if rep > 0 {
            fastest = fastest.min(t.elapsed().as_secs_f64());
        }
        cache.truncate(0);
    }
    Ok(fastest)
}

/// Timed rounds of [`measure`] stop at this many seconds' worth (at least one is timed): a 7B
/// model on a small CPU gets a coarser curve in bounded time instead of minutes of profiling.
const MEASURE_BUDGET_S: f64 = 15.0;

/// Measures `model`'s verify latency at [`CURVE_SIZES`] after `prefix` cached tokens, and
/// `drafter`'s cost per level and per node: up to `reps` rounds over every size in turn after a
/// warm-up round (so a burst of other work on the machine touches all sizes alike; fewer when
/// the warm-up round shows they would take more than 15 s), reduced by
/// [`curve_from_samples`]. Its [`CostProfile::row_s`] comes from [`row_seconds`].
pub fn measure<B: Backend, M: CausalLm<B>, D: Drafter<B>>(
    model: &M,
    drafter: &D,
    key: String,
    prefix: usize,
    reps: usize,
) -> Result<CostProfile> {
    let reps = reps.max(1);
    let row_s = row_seconds(model)?;
    let vocab = model.dims().vocab_size as u32;
    let max = *CURVE_SIZES.last().unwrap_or(&1);
    let mut cache = model.new_cache(prefix + max);
    let ctx: Vec<u32> = (0..prefix as u32).map(|i| (i * 31 + 7) % vocab).collect();
    let out = model.forward(&Input::causal(&ctx, 0, Logits::Last), &mut cache)?;
    let hidden = model.dims().hidden_size;
    let feature = out.features.slice([prefix - 1..prefix, 0..hidden]);
    // Each timer starts on an idle device and stops when its work is done: unread drafter
    // outputs would otherwise be run, and on first use compiled, inside the next timed forward.
    let device = feature.device();
    let idle = || idle::<B>(&device);
    let mut verify = vec![Vec::new(); CURVE_SIZES.len()];
    // Drafting: one level for 1 node and for 16 nodes.
    let mut draft = [Vec::new(), Vec::new()];
    let mut rounds = reps;
    let mut round = 0;
    while round <= rounds {
        let started = Instant::now();
        for (i, &n) in CURVE_SIZES.iter().enumerate() {
            let toks: Vec<u32> = (0..n as u32).map(|j| (j * 13 + 5) % vocab).collect();
            // A chain-shaped tree: any tree of n nodes costs the same forward.
            let mask = AttentionMask::causal(prefix, n);
            idle()?;
            let t = Instant::now();
            let out = model.forward(
                &Input::tree(&toks, (prefix..prefix + n).collect(), &mask),
                &mut cache,
            )?;
            // Greedy acceptance reads the argmax of every row: include it.
            s4c_verify::read_argmax(out.logits)?;
            if round > 0 {
                verify[i].push(t.elapsed().as_secs_f64());
            }
            cache.truncate(prefix);
        }
        for (i, m) in [1, 16].into_iter().enumerate() {
            let rows = repeat_rows(&feature, m);
            idle()?;
            let t = Instant::now();
            drafter.expand(0, rows, &vec![1u32; m], &[], 4)?;
            idle()?;
            if round > 0 {
                draft[i].push(t.elapsed().as_secs_f64());
            }
        }
        if round == 0 {
            let warm_up = started.elapsed().as_secs_f64();
            rounds = reps.min(((MEASURE_BUDGET_S / warm_up) as usize).max(1));
        }
        round += 1;
    }
    let points = CURVE_SIZES
        .iter()
        .copied()
        .zip(curve_from_samples(&verify))
        .collect();
    let levels = curve_from_samples(&draft);
    let (one, many) = (levels[0], levels[1]);
    Ok(CostProfile {
        key,
        verify: LatencyCurve::new(points)?,
        draft_level_s: one,
        draft_node_s: ((many - one) / 15.0).max(0.0),
        row_s,
    })
}

fn repeat_rows<B: Backend>(row: &Tensor<B, 2>, m: usize) -> Tensor<B, 2> {
    Tensor::cat(vec![row.clone(); m], 0)
}

/// The processor's model name (`/proc/cpuinfo`), or "unknown".
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// The machine a latency curve was measured on, for its cache key: the processor's model and the
/// threads available (another machine under the same cache directory measures its own curve).
pub fn machine_tag() -> String {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("{}-{threads}t", cpu_model())
}

/// Where cost profiles are cached: `$S4C_CACHE`, else `$XDG_CACHE_HOME/s4c`, else
/// `~/.cache/s4c`, else `runs/cache`.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("S4C_CACHE") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("s4c");
    }
    if let Some(h) = std::env::var_os("HOME") {
        return PathBuf::from(h).join(".cache").join("s4c");
    }
    PathBuf::from("runs/cache")
}

fn file_for(dir: &Path, key: &str) -> PathBuf {
    let safe: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    dir.join(format!("cost-{safe}.json"))
}

/// The cached profile for `key`, or a fresh measurement that is then cached. A cached profile
/// is checked first: where the machine now runs a one-token forward ([`row_seconds`]) more than
/// [`STALE_RATIO`] times faster than the profile says, the profile was measured under load and
/// is measured again; the faster of the two (by [`CostProfile::row_s`]) is kept. A machine
/// busier now than at measuring time keeps its cached profile (the sizer corrects its step times
/// online).
pub fn profile<B: Backend, M: CausalLm<B>, D: Drafter<B>>(
    model: &M,
    drafter: &D,
    key: String,
    dir: &Path,
) -> Result<CostProfile> {
    let path = file_for(dir, &key);
    let cached = std::fs::read_to_string(&path)
        .ok()
        .and_then(|text| serde_json::from_str::<CostProfile>(&text).ok())
        .filter(|p| p.key == key && p.row_s.is_finite() && p.row_s > 0.0);
    if let Some(c) = &cached {
        if c.row_s <= STALE_RATIO * row_seconds(model)? {
            return Ok(c.clone());
        }
    }
    let fresh = measure(model, drafter, key, 128, 5)?;
    let p = match cached {
        Some(c) if c.row_s <= fresh.row_s => c,
        _ => fresh,
    };
    if std::fs::create_dir_all(dir).is_ok() {
        // A cache that cannot be written is only slower next time.
        let _ = std::fs::write(&path, serde_json::to_string_pretty(&p).unwrap_or_default());
    }
    Ok(p)
}

/// Predicted seconds of a step with `n` draft nodes, `n = 0..=max_nodes`: one verification
/// forward of `n + 1` tokens, plus drafting for `n ≥ 1` (`min(n, max_depth)` levels).
pub fn predicted_steps(profile: &CostProfile, max_nodes: usize, max_depth: usize) -> Vec<f64> {
    (0..=max_nodes)
        .map(|n| {
            let draft = if n == 0 {
                0.0
            } else {
                profile.draft_seconds(n, n.min(max_depth))
            };
            profile.verify.at(n + 1) + draft
        })
        .collect()
}

/// The online sizer `--tree cost` uses: the heads' held-out acceptance as its prior and this
/// profile's predicted step times, trees of at most `max_nodes` nodes and `max_depth` levels.
pub fn adaptive_sizer(
    stats: &AcceptanceStats,
    profile: &CostProfile,
    max_nodes: usize,
    max_depth: usize,
) -> Result<AdaptiveSizer> {
    let depth = max_depth.min(stats.max_depth());
    Ok(AdaptiveSizer::new(
        stats,
        predicted_steps(profile, max_nodes, depth),
        AdaptiveConfig::new(max_nodes, depth),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Acceptance rate `top1` (per mille) for the top-ranked draft at every depth, 5% for the
    /// others.
    fn heads(top1: u64) -> AcceptanceStats {
        let mut s = AcceptanceStats::new(4, 8);
        for d in 0..4 {
            for r in 0..8 {
                s.tried[d][r] = 1000;
                s.accepted[d][r] = if r == 0 { top1 } else { 50 };
            }
        }
        s
    }

    fn profile(points: Vec<(usize, f64)>, draft_level_s: f64, draft_node_s: f64) -> CostProfile {
        CostProfile {
            key: "test".into(),
            verify: LatencyCurve::new(points).unwrap(),
            draft_level_s,
            draft_node_s,
            row_s: 0.01,
        }
    }

    /// `profile` measures a tiny model's curve at every size and writes it under its key; the
    /// next call reads the file instead of measuring again while the file's one-token time is
    /// no dearer than the machine's now, and measures again where the file's time is far dearer
    /// (a curve timed under load), writing the new curve over it.
    #[cfg(feature = "flex")]
    #[test]
    fn a_profile_is_read_from_its_file_unless_it_was_measured_under_load() {
        use burn::backend::Flex;
        use s4c_draft::{fingerprint, DrafterConfig, MultiHeadDrafter};
        let model = s4c_models::testing::tiny_model::<Flex>(50, 1, &Default::default());
        let config = DrafterConfig::new(fingerprint::<Flex, _>(&model).unwrap());
        let drafter = MultiHeadDrafter::random(config, &model, 2).unwrap();
        let dir = std::env::temp_dir().join(format!("s4c-cost-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let key = "tiny/test";
        let first = super::profile(&model, &drafter, key.into(), &dir).unwrap();
        assert_eq!(first.key, key);
        let sizes: Vec<usize> = first.verify.points.iter().map(|p| p.0).collect();
        assert_eq!(sizes, CURVE_SIZES.to_vec());
        assert!(first.verify.points.iter().all(|p| p.1 > 0.0));
        assert!(first.draft_level_s > 0.0 && first.draft_node_s >= 0.0);
        assert!(first.row_s > 0.0 && first.row_s < 1.0);
        // The file is there, under a name made safe from the key.
        let path = file_for(&dir, key);
        let read = |p: &Path| -> CostProfile {
            serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
        };
        assert_eq!(read(&path), first);
        let write = |p: &CostProfile| {
            std::fs::write(&path, serde_json::to_string(p).unwrap()).unwrap();
        };
        // A file whose one-token time no machine beats is used as it is.
        let quick = CostProfile {
            key: key.into(),
            row_s: 1e-12,
            ..profile(vec![(1, 7.0), (64, 9.0)], 0.5, 0.25)
        };
        write(&quick);
        let again = super::profile(&model, &drafter, key.into(), &dir).unwrap();
        assert_eq!(again, quick);
        // One whose one-token time is far above the machine's is measured again and replaced.
        let loaded = CostProfile {
            key: key.into(),
            row_s: 1e3,
            ..profile(vec![(1, 1e3), (64, 2e3)], 0.5, 0.25)
        };
        write(&loaded);
        let fresh = super::profile(&model, &drafter, key.into(), &dir).unwrap();
        assert!(fresh.row_s < 1.0);
        let sizes: Vec<usize> = fresh.verify.points.iter().map(|p| p.0).collect();
        assert_eq!(sizes, CURVE_SIZES.to_vec());
        assert!(fresh.verify.points.iter().all(|p| p.1 > 0.0 && p.1 < 1e3));
        assert_eq!(read(&path), fresh);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The fastest timing of each size, never below a smaller size's: a slow burst (another job)
    /// in some rounds and a smaller size measured dearer than a larger one both disappear.
    #[test]
    fn a_curve_is_the_fastest_timing_of_each_size_made_non_decreasing() {
        let samples = vec![
            vec![0.030, 0.066, 0.031], // 1 token: one round during a burst
            vec![0.036, 0.034, 0.090], // 2 tokens
            vec![0.033, 0.047, 0.040], // 4 tokens: fastest below 2's — noise
            vec![0.110, 0.206, 0.105], // 8 tokens
        ];
        let curve = curve_from_samples(&samples);
        assert_eq!(curve, vec![0.030, 0.034, 0.034, 0.105]);
        // Brute force: each entry is the largest per-size minimum up to that size.
        for (i, &c) in curve.iter().enumerate() {
            let want = samples[..=i]
                .iter()
                .map(|t| t.iter().copied().fold(f64::INFINITY, f64::min))
                .fold(0.0, f64::max);
            assert_eq!(c, want);
        }
        assert!(curve.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn weak_heads_start_plain_on_a_steep_curve_and_draft_on_a_flat_one() {
        // This CPU (measured): 2 tokens cost 1.36 decode steps, 64 tokens 9.6; a head call 2 ms.
        let points = vec![
            (1, 0.043),
            (2, 0.0585),
            (4, 0.068),
            (8, 0.1115),
            (64, 0.414),
        ];
        let cpu = profile(points, 0.002, 0.0004);
        let predicted = predicted_steps(&cpu, 64, 4);
        assert_eq!(predicted.len(), 65);
        assert_eq!(predicted[0], 0.043);
        assert!((predicted[1] - (0.0585 + 0.0024)).abs() < 1e-12);
        let first = |top1: u64, p: &CostProfile| {
            adaptive_sizer(&heads(top1), p, 64, 4)
                .unwrap()
                .choose()
                .map_or(0, |t| t.len())
        };
        // Weak heads: plain steps first; good heads (head 1 right 80%) draft.
        assert_eq!(first(300, &cpu), 0);
        assert!(first(800, &cpu) >= 1);
        // A GPU-like curve: a 64-node tree costs about one decode step, drafting little.
        let gpu = profile(vec![(1, 0.010), (64, 0.011)], 0.0002, 0.00001);
        assert!(first(300, &gpu) > 8, "a flat curve pays for a big tree");
    }
}
