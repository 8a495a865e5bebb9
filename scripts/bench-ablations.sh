#!/usr/bin/env bash
# τ of each heads ablation on Spec-Bench (greedy, the 63-node mc_sim_7b_63 tree), see
# docs/benchmarks.md. Heads from scripts/train-default-heads.sh (runs/heads/*.safetensors).
# Usage: scripts/bench-ablations.sh [LIMIT_PER_TASK] [MAX_NEW_TOKENS]
set -euo pipefail
cd "$(dirname "$0")/.."
LIMIT=${1:-1}
NEW=${2:-96}
cargo build --release -p s4c
for c in independent tokens full; do
  target/release/s4c bench --questions ../shared/data/specbench-dev.jsonl \
    --heads "runs/heads/$c.safetensors" --tree static --tree-nodes 63 \
    --limit-per-task "$LIMIT" --max-new-tokens "$NEW" --json "runs/bench-ablation-$c.json" \
    2> "runs/bench-ablation-$c.log" > /dev/null
  python3 -c "import json; v=json.load(open('runs/bench-ablation-$c.json')); o=v['overall']; print('$c', 'tau', round(o['tau'], 3), 'greedy_match', o['greedy_match'], {t: round(x['tau'], 2) for t, x in v['tasks'].items()})"
done
