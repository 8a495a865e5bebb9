//! Property tests of trees on random inputs, and the bundled templates.

use proptest::prelude::*;
use s4c_tree::*;
use s4c_tree::{choose_size, AcceptanceStats, LatencyCurve};

/// Deterministic candidates: hash of the node's path gives tokens and log-probabilities.
struct Hashed {
    branching: usize,
    seed: u64,
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Hashed {
    fn list(&self, path: &[u32], k: usize) -> Vec<Candidate> {
        let mut h = self.seed;
        for t in path {
            h = mix(h ^ *t as u64);
        }
        let mut c: Vec<Candidate> = (0..self.branching.min(k))
            .map(|r| {
                let z = mix(h.wrapping_add(r as u64 + 1));
                Candidate {
                    token: (z % 1000) as u32,
                    logprob: -(((z >> 20) % 1000) as f32) / 100.0,
                }
            })
            .collect();
        c.sort_by(|a, b| b.logprob.total_cmp(&a.logprob));
        c
    }
}

impl CandidateProvider for Hashed {
    fn expand(
        &mut self,
        tree: &TokenTree,
        nodes: &[usize],
        k: usize,
    ) -> Result<Vec<Vec<Candidate>>, TreeError> {
        Ok({
            nodes
                .iter()
                .map(|&n| self.list(&tree.tokens_to(n), k))
                .collect()
        })
    }
}

/// Random tree: each new node picks a parent among nodes of the previous or current max depth.
fn random_tree(parents_seed: Vec<u32>) -> TokenTree {
    let mut t = TokenTree::new(7);
    for (i, s) in parents_seed.iter().enumerate() {
        // Parents at the deepest-but-one level or deepest level keep BFS order valid.
        let depth = t.depth();
        let candidates: Vec<usize> = (0..t.len())
            .filter(|&j| t.node(j).depth + 1 >= depth)
            .collect();
        let p = candidates[*s as usize % candidates.len()];
        t.push(p, 100 + i as u32, -0.5).unwrap();
    }
    t
}

proptest! {
    #[test]
    fn flatten_is_consistent(seed in proptest::collection::vec(0u32..1000, 0..80), prefix in 0usize..50) {
        let t = random_tree(seed);
        let f = t.flatten();
        let n = t.len();
        // Parents precede children; positions are prefix + depth.
        for i in 1..n {
            let p = f.parents[i];
            prop_assert!(p >= 0 && (p as usize) < i);
            prop_assert_eq!(f.depths[i], f.depths[p as usize] + 1);
        }
        prop_assert_eq!(t.positions(prefix), f.depths.iter().map(|d| prefix + d).collect::<Vec<_>>());
        // mask[i][j] iff j is i or an ancestor of i (brute force by walking parents).
        let dense = f.mask.to_dense();
        for i in 0..n {
            let path = t.path_to(i);
            for j in 0..n {
                prop_assert_eq!(dense[i * n + j], path.contains(&j));
                prop_assert_eq!(f.mask.is_visible(i, j), path.contains(&j));
            }
        }
        // Every retrieve row is a root-to-leaf path, one per leaf.
        let leaves = t.leaves();
        prop_assert_eq!(f.retrieve.len(), leaves.len());
        for (row, leaf) in f.retrieve.iter().zip(&leaves) {
            prop_assert_eq!(row[0], ROOT);
            prop_assert_eq!(*row.last().unwrap(), *leaf);
            for w in row.windows(2) {
                prop_assert_eq!(f.parents[w[1]], w[0] as i64);
            }
            prop_assert!(t.accept(row).is_ok());
        }
        let width = f.retrieve_padded().first().map_or(0, Vec::len);
        prop_assert_eq!(width, t.depth() + 1);
    }

    #[test]
    fn graft_adds_exactly_the_chain(
        seed in proptest::collection::vec(0u32..1000, 0..40),
        follow in 0usize..1000,
        take in 0usize..6,
        fresh in proptest::collection::vec(0u32..3, 0..6),
    ) {
        let t = random_tree(seed);
        // A chain that follows an existing path for a while, then (maybe) leaves the tree.
        let node = follow % t.len();
        let path = t.tokens_to(node);
        let mut chain: Vec<u32> = path[1..].iter().copied().take(take).collect();
        chain.extend(fresh.iter().map(|&f| 100 + f)); // may or may not match a child
        let (g, map) = t.graft(&chain);
        // Brute force: the set of root paths is the old set plus the chain's prefixes.
        let paths = |t: &TokenTree| -> std::collections::BTreeSet<Vec<u32>> {
            (0..t.len()).map(|i| t.tokens_to(i)).collect()
        };
        let mut want = paths(&t);
        for k in 0..=chain.len() {
            let mut p = vec![t.node(ROOT).token];
            p.extend(&chain[..k]);
            want.insert(p);
        }
        prop_assert_eq!(paths(&g), want.clone());
        prop_assert_eq!(g.len(), want.len(), "no duplicate siblings");
        for (i, &new) in map.iter().enumerate() {
            prop_assert_eq!(g.tokens_to(new), t.tokens_to(i));
            prop_assert_eq!(g.node(new).rank, t.node(i).rank);
        }
        for i in 1..g.len() {
            prop_assert!(g.node(i).depth >= g.node(i - 1).depth, "breadth-first");
        }
    }

    #[test]
    fn dynamic_tree_respects_budget_and_equals_brute_force(
        seed in 0u64..10_000, branching in 1usize..4, depth in 1usize..4, budget in 1usize..30
    ) {
        // With a beam wider than the whole tree, nothing is pruned before the final selection,
        // so the result must be exactly the best-`budget` nodes of the full tree.
        let cfg = DynamicConfig { top_k: 27, max_depth: depth, max_nodes: budget };
        let mut p = Hashed { branching, seed };
        let t = build_dynamic(1, &cfg, &mut p).unwrap();
        prop_assert!(t.len() - 1 <= budget);
        prop_assert!(t.depth() <= depth);
        for i in 1..t.len() {
            prop_assert!(t.node(i).parent.unwrap() < i);
        }
        // Brute force: enumerate every path of the full tree with its score.
        let mut all: Vec<(f32, usize, Vec<u32>)> = vec![];
        let mut level: Vec<(Vec<u32>, f32)> = vec![(vec![1], 0.0)];
        for d in 1..=depth {
            let mut next = vec![];
            for (path, score) in &level {
                for c in p.list(path, 27) {
                    let mut q = path.clone();
                    q.push(c.token);
                    all.push((score + c.logprob, d, q.clone()));
                    next.push((q, score + c.logprob));
                }
            }
            level = next;
        }
        // Stable sort by score desc then depth asc keeps enumeration (BFS) order among ties.
        all.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let mut want: Vec<Vec<u32>> = all.iter().take(budget).map(|x| x.2.clone()).collect();
        let mut got: Vec<Vec<u32>> = (1..t.len()).map(|i| t.tokens_to(i)).collect();
        want.sort();
        got.sort();
        prop_assert_eq!(got, want);
    }

    #[test]
    fn template_reproduces_its_paths(seed in proptest::collection::vec(0usize..4, 1..40)) {
        // A random prefix-closed set of paths.
        let mut paths: Vec<Vec<usize>> = vec![];
        for (i, r) in seed.iter().enumerate() {
            let mut p = if paths.is_empty() || i % 3 == 0 { vec![] } else { paths[(i * 7) % paths.len()].clone() };
            p.push(*r);
            if !paths.contains(&p) { paths.push(p); }
        }
        let template = Template::new(paths.clone()).unwrap();
        // Token = 10 × rank + depth lets us read the rank path back from the tree.
        struct Ranks;
        impl CandidateProvider for Ranks {
            fn expand(&mut self, tree: &TokenTree, nodes: &[usize], k: usize) -> Result<Vec<Vec<Candidate>>, TreeError> {
                Ok({
                nodes.iter().map(|&n| (0..k).map(|r| Candidate {
                    token: (10 * r + tree.node(n).depth + 1) as u32, logprob: -(r as f32) }).collect()).collect()
                })
            }
        }
        let t = template.build(0, &mut Ranks).unwrap();
        prop_assert_eq!(t.len(), paths.len() + 1);
        let mut got: Vec<Vec<usize>> = (1..t.len())
            .map(|i| t.path_to(i)[1..].iter().map(|&j| t.node(j).rank).collect())
            .collect();
        for i in 1..t.len() {
            prop_assert_eq!(t.node(i).token as usize, 10 * t.node(i).rank + t.node(i).depth);
        }
        got.sort();
        paths.sort();
        prop_assert_eq!(got, paths);
    }
}

#[test]
fn mc_sim_7b_63_shape() {
    let t = Template::mc_sim_7b_63();
    assert_eq!(t.len(), 63);
    let tree = t
        .build(
            0,
            &mut Hashed {
                branching: 10,
                seed: 1,
            },
        )
        .unwrap();
    assert_eq!(tree.len(), 64);
    let per_depth: Vec<usize> = (1..=4)
        .map(|d| tree.nodes().iter().filter(|n| n.depth == d).count())
        .collect();
    assert_eq!(per_depth, vec![10, 28, 23, 2]);
    assert_eq!(tree.leaves().len(), 42);
    assert_eq!(Template::from_json(&t.to_json()).unwrap(), t);
}

#[test]
fn bad_input_is_a_typed_error() {
    assert!(matches!(
        TokenTree::from_parents(&[1, 2, 3], &[0, 0, 5], &[]),
        Err(TreeError::BadParent { .. })
    ));
    assert!(matches!(
        TokenTree::from_parents(&[1, 2, 3], &[0, 2, 1], &[]),
        Err(TreeError::BadParent { .. })
    ));
    assert!(matches!(
        TokenTree::from_parents(&[1, 2, 3, 4], &[0, 0, 1, 0], &[]),
        Err(TreeError::NotBreadthFirst { .. })
    ));
    assert!(matches!(
        Template::new(vec![vec![0], vec![1, 0]]),
        Err(TreeError::MissingPrefix { .. })
    ));
    assert!(matches!(
        Template::new(vec![vec![0], vec![0]]),
        Err(TreeError::BadPath(_))
    ));
    assert!(matches!(
        Template::new(vec![]),
        Err(TreeError::ZeroBudget(_))
    ));
    assert!(matches!(
        Template::from_json("[[0],"),
        Err(TreeError::Json(_))
    ));
    let cfg = DynamicConfig {
        top_k: 4,
        max_depth: 3,
        max_nodes: 0,
    };
    assert!(matches!(
        build_dynamic(
            0,
            &cfg,
            &mut Hashed {
                branching: 2,
                seed: 0
            }
        ),
        Err(TreeError::ZeroBudget(_))
    ));
    let t = Template::new(vec![vec![0], vec![3]]).unwrap();
    assert!(matches!(
        t.build(
            0,
            &mut Hashed {
                branching: 2,
                seed: 0
            }
        ),
        Err(TreeError::TooFewCandidates { .. })
    ));
    let tree = Template::chain(3)
        .unwrap()
        .build(
            0,
            &mut Hashed {
                branching: 1,
                seed: 0,
            },
        )
        .unwrap();
    assert!(tree.accept(&[0, 2]).is_err());
    assert!(tree.accept(&[1]).is_err());
    assert_eq!(tree.accept(&[0, 1, 2]).unwrap().keep, vec![0, 1, 2]);
}

#[test]
fn reroot_keeps_the_subtree() {
    let t = Template::mc_sim_7b_63()
        .build(
            0,
            &mut Hashed {
                branching: 10,
                seed: 3,
            },
        )
        .unwrap();
    let (sub, old) = t.reroot(1);
    assert_eq!(sub.node(0).token, t.node(1).token);
    for (new, &o) in old.iter().enumerate() {
        assert_eq!(sub.node(new).token, t.node(o).token);
        assert_eq!(sub.node(new).depth + 1, t.node(o).depth);
    }
    // Node 1 = path [0]: its subtree has every template path starting with 0.
    let count = Template::mc_sim_7b_63()
        .paths()
        .iter()
        .filter(|p| p[0] == 0)
        .count();
    assert_eq!(sub.len(), count);
}

#[test]
fn acceptance_stats_and_cost_aware_sizing() {
    // Rates: depth-1 rank-0 always accepted, rank-1 never; deeper levels 50% for rank 0.
    let mut s = AcceptanceStats::new(3, 2);
    s.tried = vec![vec![99, 99], vec![99, 99], vec![99, 99]];
    s.accepted = vec![vec![100, 0], vec![50, 0], vec![50, 0]];
    let chain = Template::chain(3)
        .unwrap()
        .build(
            0,
            &mut Hashed {
                branching: 1,
                seed: 0,
            },
        )
        .unwrap();
    let tau = s.expected_accepted_length(&chain);
    assert!((tau - (1.0 + 1.0 + 0.5 + 0.25)).abs() < 1e-9, "{tau}");
    // Recording counts tries per accepted parent.
    let mut r = AcceptanceStats::new(3, 2);
    let wide = Template::new(vec![vec![0], vec![1], vec![0, 0]])
        .unwrap()
        .build(
            0,
            &mut Hashed {
                branching: 2,
                seed: 0,
            },
        )
        .unwrap();
    r.record(&wide, &[0, 1]);
    assert_eq!(r.tried[0], vec![1, 1]);
    assert_eq!(r.accepted[0], vec![1, 0]);
    assert_eq!(r.tried[1], vec![1, 0]);
    // Flat latency → take the whole useful tree; steep latency → a single node.
    let flat = LatencyCurve::new(vec![(1, 1.0), (64, 1.0)]).unwrap();
    let steep = LatencyCurve::new(vec![(1, 1.0), (2, 1.0), (3, 10.0), (64, 100.0)]).unwrap();
    let big = choose_size(&s, &flat, &|_| 0.0, 6, 3).unwrap();
    assert_eq!(big.template.depth(), 3);
    assert!((big.expected_tau - tau).abs() < 1e-9 || big.expected_tau >= tau);
    let small = choose_size(&s, &steep, &|_| 0.0, 6, 3).unwrap();
    assert_eq!(small.nodes, 1);
    assert!((small.expected_tau - 2.0).abs() < 1e-9);
    assert!((steep.at(50) - (10.0 + 90.0 * 47.0 / 61.0)).abs() < 1e-9);
}

/// A provider that fails at the second depth.
struct Failing;

impl CandidateProvider for Failing {
    fn expand(
        &mut self,
        tree: &TokenTree,
        nodes: &[usize],
        k: usize,
    ) -> Result<Vec<Vec<Candidate>>, TreeError> {
        if nodes.iter().any(|&n| tree.node(n).depth > 0) {
            return Err(TreeError::Provider("the drafter's forward failed".into()));
        }
        Ok(nodes
            .iter()
            .map(|_| {
                (0..k as u32)
                    .map(|token| Candidate {
                        token,
                        logprob: -1.0,
                    })
                    .collect()
            })
            .collect())
    }
}

#[test]
fn a_failing_provider_ends_tree_construction_with_its_error() {
    let want = TreeError::Provider("the drafter's forward failed".into());
    let err = Template::chain(3)
        .unwrap()
        .build(1, &mut Failing)
        .unwrap_err();
    assert_eq!(err, want);
    let config = DynamicConfig {
        top_k: 2,
        max_depth: 3,
        max_nodes: 8,
    };
    assert_eq!(build_dynamic(1, &config, &mut Failing).unwrap_err(), want);
    // One depth only: the provider never fails.
    assert_eq!(
        Template::chain(1)
            .unwrap()
            .build(1, &mut Failing)
            .unwrap()
            .len(),
        2
    );
}
