#!/usr/bin/env bash
# Trains the S4C heads shipped in assets/ for the default model (SmolLM2-135M-Instruct).
# See docs/training.md; scripts/train-ablations.sh trains the ablations on the same data.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/fetch-default-model.sh
cargo build --release -p s4c
S4C=target/release/s4c
# All 1,514 training prompts (1,410 of them fit the 512-token prompt limit: 45 chunks of 32),
# greedy answers of up to 256 tokens, 24 decoded together; the data folder is reused chunk by
# chunk, so an interrupted run resumes where it stopped (and so does training, from its
# checkpoints).
COMMON=(--prompts ../shared/data/train-prompts.jsonl --answer-tokens 256
        --data-batch 24 --data-dir runs/distill-256 --draft-vocab 8192 --seed 0)
mkdir -p runs/heads assets
"$S4C" train-heads "${COMMON[@]}" --data-only
# One sampled answer (T = 0.7) to each usable prompt (45 chunks, ≈ 75 min here): new contexts from
# the same prompts. The greedy data folder's held-out split still decides which prompts are held
# out.
"$S4C" train-heads --prompts ../shared/data/train-prompts.jsonl \
  --answer-tokens 256 --data-batch 8 --temperature 0.7 --data-seed 1 \
  --data-dir runs/distill-256-t07 --data-only
/usr/bin/time -v "$S4C" train-heads "${COMMON[@]}" --coherence full --epochs 2 --feature-loss 10 \
  --layers 2 --extra-data runs/distill-256-t07 --checkpoint-dir runs/train-s12 \
  --out runs/heads/s12-l2.safetensors 2> runs/train-s12.log
# Held-out report (answers and all positions); records the answers' acceptance statistics in the
# heads' JSON, which `--tree cost` reads.
"$S4C" train-heads "${COMMON[@]}" --out runs/heads/s12-l2.safetensors --eval-only \
  > runs/eval-s12-l2.json 2>/dev/null
cp runs/heads/s12-l2.safetensors assets/SmolLM2-135M-Instruct.heads.safetensors
cp runs/heads/s12-l2.json assets/SmolLM2-135M-Instruct.heads.json
