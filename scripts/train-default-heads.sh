#!/usr/bin/env bash
# Trains the S4C heads shipped in assets/ for the default model (SmolLM2-135M-Instruct), plus
# the two ablations (independent Medusa-style heads; token conditioning without the feature
# window), on the same data and vocabulary. See docs/training.md.
# Usage: scripts/train-default-heads.sh [EPOCHS_OF_THE_ABLATIONS]   (default 3; 0 skips them)
set -euo pipefail
cd "$(dirname "$0")/.."
ABLATION_EPOCHS=${1:-3}
./scripts/fetch-default-model.sh
cargo build --release -p s4c
S4C=target/release/s4c
# The first 1,235 training prompts (1,152 of them fit the 512-token prompt limit: 36 chunks of
# 32), 96-token greedy answers, 24 decoded together; the data folder is reused chunk by chunk, so
# an interrupted run resumes and a longer --limit-prompts adds only new chunks.
COMMON=(--prompts ../shared/data/train-prompts.jsonl --limit-prompts 1235 --answer-tokens 96 --data-batch 24
        --data-dir runs/distill --draft-vocab 8192 --seed 0)
mkdir -p runs/heads assets
train() { # coherence epochs
  /usr/bin/time -v "$S4C" train-heads "${COMMON[@]}" --coherence "$1" --epochs "$2" \
    --checkpoint-dir "runs/train-$1" --out "runs/heads/$1.safetensors" 2> "runs/train-$1.log"
  # Held-out report (answers and all positions); records the answers' acceptance statistics in
  # the heads' JSON, which `--tree cost` reads.
  "$S4C" train-heads "${COMMON[@]}" --out "runs/heads/$1.safetensors" --eval-only \
    > "runs/eval-$1.json" 2>/dev/null
}
train full 3
cp runs/heads/full.safetensors assets/SmolLM2-135M-Instruct.heads.safetensors
cp runs/heads/full.json assets/SmolLM2-135M-Instruct.heads.json
if [ "$ABLATION_EPOCHS" -gt 0 ]; then
  train tokens "$ABLATION_EPOCHS"
  train independent "$ABLATION_EPOCHS"
fi
