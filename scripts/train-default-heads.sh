#!/usr/bin/env bash
# Trains the S4C heads shipped in assets/ for the default model (SmolLM2-135M-Instruct), plus
# the two ablations (independent Medusa-style heads; token conditioning without the feature
# window), with the same data, vocabulary, epochs and seed. See docs/training.md.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/fetch-default-model.sh
cargo build --release -p s4c
S4C=target/release/s4c
PROMPTS=../shared/data/train-prompts.jsonl
COMMON=(--prompts "$PROMPTS" --limit-prompts 480 --answer-tokens 96 --data-batch 24
        --data-dir runs/distill --draft-vocab 8192 --epochs 3 --seed 0)
mkdir -p runs/heads assets
for coherence in full tokens independent; do
  /usr/bin/time -v "$S4C" train-heads "${COMMON[@]}" --coherence "$coherence" \
    --checkpoint-dir "runs/train-$coherence" --out "runs/heads/$coherence.safetensors" \
    2> "runs/train-$coherence.log"
  # Held-out report (answers and all positions); records the answers' acceptance statistics in
  # the heads' JSON, which `--tree cost` reads.
  "$S4C" train-heads "${COMMON[@]}" --out "runs/heads/$coherence.safetensors" --eval-only \
    > "runs/eval-$coherence.json" 2>/dev/null
done
cp runs/heads/full.safetensors assets/SmolLM2-135M-Instruct.heads.safetensors
cp runs/heads/full.json assets/SmolLM2-135M-Instruct.heads.json
