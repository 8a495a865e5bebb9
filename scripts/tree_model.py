#!/usr/bin/env python3
"""How much a better tree shape could buy: expected tokens per step under an independence model.

`s4c train-heads ... --eval-only` writes, per head k and candidate rank r, how often the target's
token was the head's rank-r candidate (earlier depths teacher-forced). Taking those rates as
independent along a path, a node at ranks (r1, ..., rd) is accepted with probability
p[1][r1] * ... * p[d][rd], and a tree's expected tokens per step is 1 (the bonus token) plus the
sum over its nodes. This script reports that figure for the chain, for Medusa's `mc_sim_7b_63`
(next to the τ63 the evaluation measured without the independence assumption, as a check of the
model) and for the best trees of N nodes (best-first: a child is never worth more than its
parent, so the N best nodes always form a tree), and with a fifth head whose rates are the
fourth's. Standard library only.

    python3 scripts/tree_model.py runs/eval-s13-ft.json
"""
import heapq
import json
import sys
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parent.parent / "crates/s4c-tree/templates/mc_sim_7b_63.json"


def rates(evaluation):
    """p[k][r]: the held-out answers' acceptance rate of head k's rank-r candidate."""
    acc = evaluation["held_out"]["acceptance"]
    return [[a / t if t else 0.0 for a, t in zip(row_a, row_t)]
            for row_a, row_t in zip(acc["accepted"], acc["tried"])]


def path_value(p, path):
    v = 1.0
    for depth, rank in enumerate(path):
        if depth >= len(p) or rank >= len(p[depth]):
            return 0.0
        v *= p[depth][rank]
    return v


def tree_value(p, paths):
    return 1.0 + sum(path_value(p, path) for path in paths)


def best_tree(p, nodes):
    """The `nodes` paths of highest value (a tree, since values fall along every path)."""
    heap = [(-p[0][r], (r,)) for r in range(len(p[0]))]
    heapq.heapify(heap)
    chosen = []
    while heap and len(chosen) < nodes:
        neg, path = heapq.heappop(heap)
        chosen.append(path)
        if len(path) < len(p):
            for r in range(len(p[len(path)])):
                heapq.heappush(heap, (neg * p[len(path)][r], path + (r,)))
    return chosen


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    evaluation = json.loads(Path(sys.argv[1]).read_text())
    p = rates(evaluation)
    template = json.loads(TEMPLATE.read_text())["paths"]
    chain = [tuple([0] * d) for d in range(1, len(p) + 1)]
    print(f"heads: {len(p)}, ranks: {len(p[0])}")
    print(f"measured tau63 (no independence assumption): {evaluation['held_out']['tau_tree63']:.3f}")
    print(f"model: chain of {len(p)}: {tree_value(p, chain):.3f}")
    print(f"model: mc_sim_7b_63: {tree_value(p, template):.3f}")
    five = p + [p[-1]]
    for n in (15, 31, 63, 127):
        best = best_tree(p, n)
        depth = max(len(path) for path in best)
        print(f"model: best {n}-node tree: {tree_value(p, best):.3f} (depth {depth}); "
              f"with a 5th head like the 4th: {tree_value(five, best_tree(five, n)):.3f}")


if __name__ == "__main__":
    main()
