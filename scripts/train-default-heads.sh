#!/usr/bin/env bash
# Trains the S4C heads shipped in assets/ for the default model (SmolLM2-135M-Instruct).
# See docs/training.md; scripts/train-ablations.sh trains the ablations on the same data.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/fetch-default-model.sh
cargo build --release -p s4c
S4C=target/release/s4c
# All 1,514 training prompts (1,410 of them fit the 512-token prompt limit: 45 chunks of 32),
# 96-token greedy answers, 24 decoded together; the data folder is reused chunk by chunk, so an
# interrupted run resumes where it stopped.
COMMON=(--prompts ../shared/data/train-prompts.jsonl --answer-tokens 96
        --data-batch 24 --data-dir runs/distill --draft-vocab 8192 --seed 0)
mkdir -p runs/heads assets
/usr/bin/time -v "$S4C" train-heads "${COMMON[@]}" --coherence full --epochs 3 \
  --checkpoint-dir runs/train-full --out runs/heads/full.safetensors 2> runs/train-full.log
# Held-out report (answers and all positions); records the answers' acceptance statistics in the
# heads' JSON, which `--tree cost` reads.
"$S4C" train-heads "${COMMON[@]}" --out runs/heads/full.safetensors --eval-only \
  > runs/eval-full.json 2>/dev/null
cp runs/heads/full.safetensors assets/SmolLM2-135M-Instruct.heads.safetensors
cp runs/heads/full.json assets/SmolLM2-135M-Instruct.heads.json
