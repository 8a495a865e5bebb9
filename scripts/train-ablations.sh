#!/usr/bin/env bash
# Trains the three coherence variants — independent (Medusa-style), tokens (+ token
# conditioning), full (+ feature window: S4C) — on the data of scripts/train-default-heads.sh
# with the same vocabulary, seed and epochs, and writes each one's held-out report.
# Usage: scripts/train-ablations.sh [EPOCHS] [OUT_DIR]   (defaults: 1, runs/ablation-<EPOCHS>ep)
set -euo pipefail
cd "$(dirname "$0")/.."
EPOCHS=${1:-1}
OUT=${2:-runs/ablation-${EPOCHS}ep}
cargo build --release -p s4c
S4C=target/release/s4c
COMMON=(--prompts data/train-prompts.jsonl --answer-tokens 96
        --data-batch 24 --data-dir runs/distill --draft-vocab 8192 --seed 0)
mkdir -p "$OUT"
for c in full tokens independent; do
  /usr/bin/time -v "$S4C" train-heads "${COMMON[@]}" --coherence "$c" --epochs "$EPOCHS" \
    --checkpoint-dir "$OUT/train-$c" --out "$OUT/$c.safetensors" 2> "$OUT/train-$c.log"
  "$S4C" train-heads "${COMMON[@]}" --out "$OUT/$c.safetensors" --eval-only > "$OUT/eval-$c.json" \
    2>/dev/null
done
