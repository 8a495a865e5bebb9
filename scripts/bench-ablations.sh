#!/usr/bin/env bash
# τ of each heads ablation on Spec-Bench (greedy, the 63-node mc_sim_7b_63 tree), see
# docs/benchmarks.md. Heads from scripts/train-ablations.sh.
# Usage: scripts/bench-ablations.sh [HEADS_DIR] [LIMIT_PER_TASK] [MAX_NEW_TOKENS]
#        (defaults: runs/ablation-1ep, 1, 96)
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-runs/ablation-1ep}
LIMIT=${2:-1}
NEW=${3:-96}
cargo build --release -p s4c
for c in independent tokens full; do
  target/release/s4c bench --questions data/specbench-dev.jsonl \
    --heads "$DIR/$c.safetensors" --tree static --tree-nodes 63 --lookup 0 \
    --limit-per-task "$LIMIT" --max-new-tokens "$NEW" --json "$DIR/bench-$c.json" \
    2> "$DIR/bench-$c.log" > /dev/null
  python3 -c "import json; v=json.load(open('$DIR/bench-$c.json')); o=v['overall']; print('$c', 'tau', round(o['tau'], 3), 'greedy_match', o['greedy_match'], {t: round(x['tau'], 2) for t, x in v['tasks'].items()})"
done
