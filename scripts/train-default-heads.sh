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
COMMON=(--prompts data/train-prompts.jsonl --answer-tokens 256
        --data-batch 24 --data-dir runs/distill-256 --draft-vocab 8192 --seed 0)
mkdir -p runs/heads assets
"$S4C" train-heads "${COMMON[@]}" --data-only
# One sampled answer (T = 0.7) to each usable prompt (45 chunks, ≈ 75 min here): new contexts from
# the same prompts. The greedy data folder's held-out split still decides which prompts are held
# out.
"$S4C" train-heads --prompts data/train-prompts.jsonl \
  --answer-tokens 256 --data-batch 8 --temperature 0.7 --data-seed 1 \
  --data-dir runs/distill-256-t07 --data-only
# A second sampled answer to each usable prompt (seed 2; ≈ 80 min here).
"$S4C" train-heads --prompts data/train-prompts.jsonl \
  --answer-tokens 256 --data-batch 8 --temperature 0.7 --data-seed 2 \
  --data-dir runs/distill-256-t07-s2 --data-only
# A third sampled answer to each usable prompt (seed 3; ≈ 75 min here).
"$S4C" train-heads --prompts data/train-prompts.jsonl \
  --answer-tokens 256 --data-batch 8 --temperature 0.7 --data-seed 3 \
  --data-dir runs/distill-256-t07-s3 --data-only
# Stage 1 heads: greedy + the first sampled answers, 2 epochs (≈ 63 min here).
/usr/bin/time -v "$S4C" train-heads "${COMMON[@]}" --coherence full --epochs 2 --feature-loss 10 \
  --layers 2 --extra-data runs/distill-256-t07 --checkpoint-dir runs/train-s12 \
  --out runs/heads/s12-l2.safetensors 2> runs/train-s12.log
# Stage 2: those heads fine-tuned on the first three answers for one epoch at half the
# learning rate (≈ 51 min here).
/usr/bin/time -v "$S4C" train-heads "${COMMON[@]}" --epochs 1 --feature-loss 10 --lr 5e-4 \
  --init runs/heads/s12-l2.safetensors \
  --extra-data runs/distill-256-t07 --extra-data runs/distill-256-t07-s2 \
  --checkpoint-dir runs/train-s13 --out runs/heads/s13-ft.safetensors 2> runs/train-s13.log
# Stage 3: those fine-tuned again, on the greedy and the third sampled answers
# (≈ 33 min here).
/usr/bin/time -v "$S4C" train-heads "${COMMON[@]}" --epochs 1 --feature-loss 10 --lr 5e-4 \
  --init runs/heads/s13-ft.safetensors --extra-data runs/distill-256-t07-s3 \
  --checkpoint-dir runs/train-s14 --out runs/heads/s14-ft.safetensors 2> runs/train-s14.log
# A fourth sampled answer to each usable prompt (seed 4; ≈ 50 min here).
"$S4C" train-heads --prompts data/train-prompts.jsonl \
  --answer-tokens 256 --data-batch 24 --temperature 0.7 --data-seed 4 \
  --data-dir runs/distill-256-t07-s4 --data-only
# Stage 4: those fine-tuned again, on the greedy and the fourth sampled answers (≈ 16 min).
/usr/bin/time -v "$S4C" train-heads "${COMMON[@]}" --epochs 1 --feature-loss 10 --lr 5e-4 \
  --init runs/heads/s14-ft.safetensors --extra-data runs/distill-256-t07-s4 \
  --checkpoint-dir runs/train-s16 --out runs/heads/s16-ft.safetensors 2> runs/train-s16.log
# Held-out report (answers and all positions); records the answers' acceptance statistics in the
# heads' JSON, which `--tree cost` reads.
"$S4C" train-heads "${COMMON[@]}" --out runs/heads/s16-ft.safetensors --eval-only \
  > runs/eval-s16-ft.json 2>/dev/null
# Stage 5 (shipped): stage 4's heads with context copy added (matches of up to 8 tokens,
# the copy layers as initialised: no training step; seconds). `--epochs 0` also writes the
# held-out acceptance statistics into the heads' JSON.
"$S4C" train-heads "${COMMON[@]}" --epochs 0 --init runs/heads/s16-ft.safetensors --copy 8 \
  --checkpoint-dir runs/train-s17-prior --out runs/heads/s17-prior.safetensors \
  > runs/train-s17-prior.json 2> runs/train-s17-prior.log
cp runs/heads/s17-prior.safetensors assets/SmolLM2-135M-Instruct.heads.safetensors
cp runs/heads/s17-prior.json assets/SmolLM2-135M-Instruct.heads.json
