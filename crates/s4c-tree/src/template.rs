//! Static tree templates: Medusa's lists of top-k index paths.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::error::TreeError;
use crate::tree::{TokenTree, ROOT};
use crate::CandidateProvider;

/// A static tree shape: each path lists candidate ranks from the root (`[0, 1]` = the second
/// candidate after the first candidate). Stored breadth-first: by length, then lexicographically.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "TemplatePaths", into = "TemplatePaths")]
pub struct Template {
    paths: Vec<Vec<usize>>,
    /// Index (into `paths`) of each path's parent path, `None` under the root.
    parent: Vec<Option<usize>>,
}

#[derive(Serialize, Deserialize)]
struct TemplatePaths {
    paths: Vec<Vec<usize>>,
}

impl TryFrom<TemplatePaths> for Template {
    type Error = TreeError;
    fn try_from(t: TemplatePaths) -> Result<Self, TreeError> {
        Template::new(t.paths)
    }
}

impl From<Template> for TemplatePaths {
    fn from(t: Template) -> Self {
        TemplatePaths { paths: t.paths }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum TemplateJson {
    Bare(Vec<Vec<usize>>),
    Named { paths: Vec<Vec<usize>> },
}

impl Template {
    /// Validates and orders a list of paths: none empty or repeated, every prefix present.
    pub fn new(mut paths: Vec<Vec<usize>>) -> Result<Self, TreeError> {
        if paths.is_empty() {
            return Err(TreeError::ZeroBudget("template size"));
        }
        paths.sort_by(|a, b| a.len().cmp(&b.len()).then_with(|| a.cmp(b)));
        for w in paths.windows(2) {
            if w[0] == w[1] {
                return Err(TreeError::BadPath(w[0].clone()));
            }
        }
        let index: HashMap<&[usize], usize> = paths
            .iter()
            .enumerate()
            .map(|(i, p)| (p.as_slice(), i))
            .collect();
        let mut parent = Vec::with_capacity(paths.len());
        for p in &paths {
            if p.is_empty() {
                return Err(TreeError::BadPath(p.clone()));
            }
            let prefix = &p[..p.len() - 1];
            if prefix.is_empty() {
                parent.push(None);
            } else {
                let &i = index.get(prefix).ok_or_else(|| TreeError::MissingPrefix {
                    path: p.clone(),
                    prefix: prefix.to_vec(),
                })?;
                parent.push(Some(i));
            }
        }
        Ok(Template { paths, parent })
    }

    /// Parses `[[0],[0,0],…]` or `{"paths": [[0],…]}`.
    pub fn from_json(text: &str) -> Result<Self, TreeError> {
        let parsed: TemplateJson =
            serde_json::from_str(text).map_err(|e| TreeError::Json(e.to_string()))?;
        match parsed {
            TemplateJson::Bare(p) | TemplateJson::Named { paths: p } => Template::new(p),
        }
    }

    /// `{"paths": …}` JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("plain data")
    }

    /// Medusa's 63-node tree `mc_sim_7b_63` (calibrated on Vicuna-7B).
    pub fn mc_sim_7b_63() -> Self {
        Template::from_json(include_str!("../templates/mc_sim_7b_63.json"))
            .expect("bundled template is valid")
    }

    /// A single chain of `depth` top-1 candidates.
    pub fn chain(depth: usize) -> Result<Self, TreeError> {
        if depth == 0 {
            return Err(TreeError::ZeroBudget("depth"));
        }
        Template::new((1..=depth).map(|d| vec![0; d]).collect())
    }

    /// The paths, breadth-first.
    pub fn paths(&self) -> &[Vec<usize>] {
        &self.paths
    }

    /// The nodes of depth at most `depth` (a template for a drafter with fewer heads).
    pub fn truncated(&self, depth: usize) -> Result<Self, TreeError> {
        Template::new(
            self.paths
                .iter()
                .filter(|p| p.len() <= depth)
                .cloned()
                .collect(),
        )
    }

    /// Whether `path` (top-k ranks from the root) is one of the template's nodes.
    pub fn contains(&self, path: &[usize]) -> bool {
        let d = path.len();
        // Paths are sorted breadth-first: by length, then lexicographically.
        self.paths
            .binary_search_by(|p| p.len().cmp(&d).then_with(|| p.as_slice().cmp(path)))
            .is_ok()
    }

    /// Number of draft nodes (root excluded).
    pub fn len(&self) -> usize {
        self.paths.len()
    }

    /// Never true: a template has at least one path.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// Longest path.
    pub fn depth(&self) -> usize {
        self.paths.last().map_or(0, Vec::len)
    }

    /// Builds the tree under `root_token`, asking `provider` once per depth for the candidates of
    /// every node that has children in the template.
    pub fn build(
        &self,
        root_token: u32,
        provider: &mut dyn CandidateProvider,
    ) -> Result<TokenTree, TreeError> {
        // Path i becomes node i + 1: paths are breadth-first, so nodes are pushed in order.
        let node_of = |path: Option<usize>| path.map_or(ROOT, |i| i + 1);
        let mut tree = TokenTree::with_capacity(root_token, self.paths.len() + 1);
        let mut start = 0;
        while start < self.paths.len() {
            let d = self.paths[start].len();
            let end = start
                + self.paths[start..]
                    .iter()
                    .take_while(|p| p.len() == d)
                    .count();
            let mut parents: Vec<usize> = vec![];
            let mut slot_of = Vec::with_capacity(end - start);
            let mut k = 0;
            for i in start..end {
                let parent = node_of(self.parent[i]);
                if parents.last() != Some(&parent) {
                    parents.push(parent);
                }
                slot_of.push(parents.len() - 1);
                k = k.max(self.paths[i][d - 1] + 1);
            }
            let cands = provider.expand(&tree, &parents, k)?;
            for (i, slot) in (start..end).zip(slot_of) {
                let rank = self.paths[i][d - 1];
                let list = cands.get(slot).map(Vec::as_slice).unwrap_or(&[]);
                let c = list.get(rank).ok_or(TreeError::TooFewCandidates {
                    node: parents[slot],
                    rank,
                    got: list.len(),
                })?;
                tree.push_ranked(parents[slot], c.token, c.logprob, rank)?;
            }
            start = end;
        }
        Ok(tree)
    }
}
