//! How much a better tree shape could buy, under the acceptance model `--tree cost` uses.
//!
//! `s4c train-heads ... --eval-only` reports, per depth and candidate rank, how often the target's
//! token was the heads' candidate of that rank (earlier depths teacher-forced); the heads' JSON
//! carries the same table. [`AcceptanceStats`] takes those rates as independent along a path:
//! this prints the expected tokens per step of the chain, of Medusa's `mc_sim_7b_63`, and of the
//! best trees of N nodes ([`AcceptanceStats::best_paths`]), also with one more head as good as
//! the last.
//!
//! ```sh
//! cargo run --release -p s4c-tree --example tree_model -- runs/eval-s14-ft.json
//! cargo run --release -p s4c-tree --example tree_model -- assets/SmolLM2-135M-Instruct.heads.json
//! ```

use std::error::Error;

use s4c_tree::{AcceptanceStats, Candidate, CandidateProvider, Template, TokenTree, TreeError};

/// Any distinct tokens: only the tree's shape matters here.
struct Shape;

impl CandidateProvider for Shape {
    fn expand(
        &mut self,
        _tree: &TokenTree,
        nodes: &[usize],
        k: usize,
    ) -> Result<Vec<Vec<Candidate>>, TreeError> {
        Ok({
            let ranked = (0..k as u32).map(|r| Candidate {
                token: r,
                logprob: 0.0,
            });
            nodes.iter().map(|_| ranked.clone().collect()).collect()
        })
    }
}

/// Expected tokens per step of `template` under `stats`.
fn value(stats: &AcceptanceStats, template: &Template) -> Result<f64, Box<dyn Error>> {
    Ok(stats.expected_accepted_length(&template.build(0, &mut Shape)?))
}

/// Expected tokens per step of the best `nodes`-node tree within `depth`.
fn best(stats: &AcceptanceStats, nodes: usize, depth: usize) -> Result<f64, Box<dyn Error>> {
    let paths = stats.best_paths(nodes, depth)?;
    Ok(paths.last().map_or(1.0, |(_, tau)| *tau))
}

fn main() -> Result<(), Box<dyn Error>> {
    let path = std::env::args()
        .nth(1)
        .ok_or("usage: tree_model <eval JSON of `s4c train-heads --eval-only` | heads JSON>")?;
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{path} is not JSON: {e}"))?;
    // An evaluation holds `held_out.acceptance` (and the measured τ63); a heads JSON `acceptance`.
    let held_out = json.get("held_out");
    let table = held_out
        .and_then(|h| h.get("acceptance"))
        .or_else(|| json.get("acceptance"))
        .ok_or(format!(
            "{path}: no acceptance table (`held_out.acceptance` or `acceptance`)"
        ))?;
    let stats: AcceptanceStats = serde_json::from_value(table.clone())
        .map_err(|e| format!("{path}: malformed acceptance table: {e}"))?;
    let heads = stats.max_depth();
    if heads == 0 || stats.accepted.len() != heads {
        return Err(format!("{path}: the acceptance table is empty or ragged").into());
    }
    let mut more = stats.clone();
    more.tried.push(stats.tried[heads - 1].clone());
    more.accepted.push(stats.accepted[heads - 1].clone());

    println!("heads: {heads}, ranks: {}", stats.tried[0].len());
    if let Some(tau) = held_out
        .and_then(|h| h.get("tau_tree63"))
        .and_then(|t| t.as_f64())
    {
        println!("measured mc_sim_7b_63 (no independence assumption): {tau:.3}");
    }
    let chain = Template::chain(heads)?;
    let medusa = Template::mc_sim_7b_63().truncated(heads)?;
    println!("model: chain of {heads}: {:.3}", value(&stats, &chain)?);
    println!("model: mc_sim_7b_63: {:.3}", value(&stats, &medusa)?);
    for n in [15, 31, 63, 127] {
        println!(
            "model: best {n}-node tree: {:.3}; with head {} as good as head {heads}: {:.3}",
            best(&stats, n, heads)?,
            heads + 1,
            best(&more, n, heads + 1)?
        );
    }
    Ok(())
}
