#!/usr/bin/env bash
# The prepared runs for a GPU machine (docs/benchmarks.md "GPU",
# docs/training.md "Time and memory"). One call of the workplace's `device` tool runs one mode:
#
#   scripts/device-run.sh check        # greedy mismatch diagnosis + a short f16 and f32 bench
#   scripts/device-run.sh train-smoke  # data generation and training speed on 64 prompts
#   scripts/device-run.sh train        # data + fine-tuning the shipped heads + held-out report
#   scripts/device-run.sh speed        # GPU speed: s4c on CUDA (f16, f32) and wgpu, plain and S4C,
#                                      # beside HF transformers on the same prompts and GPU
#
# Environment: S4C (the binary, built here with `cargo build --release -p s4c --features cuda`),
# BACKEND (cuda), DATA (a folder holding specbench-dev.jsonl and train-prompts.jsonl), OUT (where
# results go; the device tool sets it), and for `train`: LIMIT (prompts, default all), SAMPLES
# (sampled answers per prompt, default 4), DATA_BATCH (sequences decoded together, 96), EPOCHS (1),
# BATCH (examples per step, 128), LR (5e-4); ANSWER (answer tokens, 256), BENCH_DTYPE (f16),
# BENCH_TOKENS (512), BENCH_PER_TASK (2) shrink runs for a test on flex. Every stage runs under `timeout` so the call ends
# inside the tool's 10-minute limit; the data folders resume where a stage stopped.
# On flex it runs too (BACKEND=flex), which is how it is tested here with small settings.
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=${1:?usage: scripts/device-run.sh check|train-smoke|train|speed}
S4C=${S4C:-target/release/s4c}
BACKEND=${BACKEND:-cuda}
DATA=${DATA:-data}
OUT=${OUT:-runs/device}
MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
HEADS=assets/SmolLM2-135M-Instruct.heads.safetensors
mkdir -p "$OUT" models
# The binary may travel gzipped (`gzip -9k s4c`: a stripped CUDA build is 35 MB, the repository
# 31 MB, and one call carries 64 MiB).
if [ ! -f "$S4C" ] && [ -f "$S4C.gz" ]; then
  gzip -dc "$S4C.gz" > /tmp/s4c-bin && S4C=/tmp/s4c-bin
fi
chmod +x "$S4C" 2>/dev/null
# The model travels in parts over several calls (one call carries at most 64 MiB, the repository
# included), `xz -9` compressed and split (`split -b 20M model.xz part-`), gathered in /tmp/mparts
# while the machine stays warm: reassemble it.
if [ ! -f "$MODEL" ] && [ -d /tmp/mparts ]; then
  cat /tmp/mparts/part-* | xz -dc > "$MODEL.part" && mv "$MODEL.part" "$MODEL"
fi
sha256sum "$MODEL" | cut -c1-16
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null
# CUDA libraries installed as Python wheels (nvrtc) are found through LD_LIBRARY_PATH.
for d in /usr/local/lib/python3*/dist-packages/nvidia /usr/lib/python3/dist-packages/nvidia \
    /opt/*/.venv/lib/python3*/site-packages/nvidia; do
  for l in $(find "$d" -name lib -type d 2>/dev/null); do export LD_LIBRARY_PATH=$l:${LD_LIBRARY_PATH:-}; done
done
[ -d /usr/local/cuda/lib64 ] && export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
report() { # report LOG: the figures of a train-heads JSON report at the end of LOG
  python3 - "$1" <<'PY'
import json, sys
t = open(sys.argv[1]).read()
try:
    j = json.loads(t[t.index('{'):])
except ValueError:
    sys.exit(print("no report in", sys.argv[1]))
h = j.get("held_out", {})
s, n = j.get("seconds"), j.get("train_positions")
print("train positions", n, "seconds", s, "positions/s", round(n / s) if s and n else None,
      "| held out: top-1", [round(x, 4) for x in h.get("top1", [])], "tau63", h.get("tau_tree63"))
PY
}
LOGS=$OUT
stage() { # stage NAME SECONDS COMMAND...: timed, logged to $LOGS/NAME.log
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" > "$LOGS/$name.log" 2>&1
  echo "== $name: rc=$? in $((SECONDS - t0)) s"; tail -4 "$LOGS/$name.log"
}

case $MODE in
check)
  # Spec-Bench question 255 (summarization) gave a different greedy answer in S4C mode on CUDA
  # f32 in the first smoke run; bench records the divergence's logits along both forward paths.
  # (At most 8 files come back: the charts stay behind.)
  mkdir -p /tmp/s4c-check
  grep '"question_id": 255' "$DATA/specbench-dev.jsonl" > /tmp/s4c-check/q255.jsonl
  stage q255-f32 150 "$S4C" bench --backend "$BACKEND" --questions /tmp/s4c-check/q255.jsonl \
    --max-new-tokens 128 --json /tmp/s4c-check/q255-f32.json
  cp /tmp/s4c-check/q255-f32.json "$OUT/"
  grep -A14 '"divergence": {' "$OUT/q255-f32.json" | head -32
  D=${BENCH_DTYPE:-f16}
  stage bench-$D 240 "$S4C" bench --backend "$BACKEND" --dtype "$D" --compute-dtype "$D" \
    --questions "$DATA/specbench-dev.jsonl" --limit-per-task "${BENCH_PER_TASK:-2}" \
    --max-new-tokens "${BENCH_TOKENS:-512}" --warmup 1 --json /tmp/s4c-check/bench-$D.json
  cp /tmp/s4c-check/bench-$D.json /tmp/s4c-check/bench-$D.md "$OUT/"
  grep -h "greedy mismatch" "$OUT"/*.log
  ;;
train-smoke)
  # One data chunk at two batch sizes, then 1 epoch of fine-tuning on it: the speeds that size
  # a full `train` call.
  for b in 32 96; do
    rm -rf /tmp/s4c-smoke-$b
    stage data-b$b 150 "$S4C" train-heads --backend "$BACKEND" --prompts "$DATA/train-prompts.jsonl" \
      --limit-prompts 32 --answer-tokens "${ANSWER:-256}" --data-batch $b --data-dir /tmp/s4c-smoke-$b \
      --data-only
  done
  stage train-smoke 150 "$S4C" train-heads --backend "$BACKEND" --prompts "$DATA/train-prompts.jsonl" \
    --limit-prompts 32 --answer-tokens "${ANSWER:-256}" --data-dir /tmp/s4c-smoke-96 --draft-vocab 8192 \
    --epochs 1 --lr 5e-4 --feature-loss 10 --seed 0 --batch-size "${BATCH:-128}" --init "$HEADS" \
    --checkpoint-dir /tmp/s4c-smoke-ckpt --out /tmp/s4c-smoke-heads.safetensors
  report "$OUT/train-smoke.log"
  ;;
train)
  LIMIT_ARGS=()
  [ -n "${LIMIT:-}" ] && LIMIT_ARGS=(--limit-prompts "$LIMIT")
  COMMON=(--backend "$BACKEND" --prompts "$DATA/train-prompts.jsonl" "${LIMIT_ARGS[@]}"
          --answer-tokens "${ANSWER:-256}" --data-batch "${DATA_BATCH:-96}")
  stage data-greedy 200 "$S4C" train-heads "${COMMON[@]}" --data-dir /tmp/s4c-greedy --data-only
  stage data-sampled 200 "$S4C" train-heads "${COMMON[@]}" --temperature 0.7 \
    --samples "${SAMPLES:-4}" --data-seed 5 --data-dir /tmp/s4c-sampled --data-only
  stage train 300 "$S4C" train-heads "${COMMON[@]}" --data-dir /tmp/s4c-greedy \
    --extra-data /tmp/s4c-sampled --draft-vocab 8192 --epochs "${EPOCHS:-1}" --lr "${LR:-5e-4}" \
    --feature-loss 10 --seed 0 --batch-size "${BATCH:-128}" --init "$HEADS" \
    --checkpoint-dir /tmp/s4c-train --out /tmp/s4c-heads.safetensors
  stage eval 120 "$S4C" train-heads "${COMMON[@]}" --data-dir /tmp/s4c-greedy \
    --out /tmp/s4c-heads.safetensors --eval-only
  report "$OUT/train.log"; report "$OUT/eval.log"
  # Files come back at most 16 MiB each: the heads in parts (`cat heads.part-* > h.safetensors`).
  if [ -f /tmp/s4c-heads.safetensors ]; then
    split -b 15M /tmp/s4c-heads.safetensors "$OUT/heads.part-"
    cp /tmp/s4c-heads.json "$OUT/heads.json"
  fi
  ;;
speed)
  # Held-out questions (one per task), both modes, after a warm-up that compiles and tunes the
  # kernels; the latency curve `--tree cost` measures first is kept from the profile cache.
  Q=data/specbench-dev-heldout.jsonl
  N=${BENCH_TOKENS:-256}
  P=${BENCH_PER_TASK:-1}
  R=/tmp/s4c-speed
  LOGS=$R/logs  # at most 8 files come back: the logs travel in one archive
  export S4C_CACHE=$R/cache  # the measured latency curves (cost profiles)
  mkdir -p $LOGS
  gpu_bench() { # gpu_bench NAME SECONDS BACKEND DTYPE TOKENS
    stage "$1" "$2" "$S4C" bench --backend "$3" --dtype "$4" --compute-dtype "$4" --questions $Q \
      --limit-per-task "$P" --max-new-tokens "$5" --warmup 1 --json $R/$1.json
    [ -f $R/$1.json ] && cp $R/$1.json "$OUT/"
  }
  gpu_bench cuda-f16 200 "$BACKEND" f16 "$N"
  # HF transformers on the same GPU, the same file (converted), the same prompt ids.
  if [ -f $R/cuda-f16.json ] && "$S4C" convert --model "$MODEL" --out $R/hf > /dev/null; then
    for d in float16 float32; do
      stage hf-$d 60 python3 scripts/bench_hf.py --bench $R/cuda-f16.json --model $R/hf \
        --dtype $d --device "${HF_DEVICE:-cuda}" --json "$OUT/hf-$d.json"
    done
  fi
  gpu_bench cuda-f32 120 "$BACKEND" f32 "$N"
  if [ -n "${WGPU:-}" ]; then
    gpu_bench wgpu-f16 90 wgpu f16 "$((N / 2))"
  fi
  # The latency curves and all logs in one file.
  tar -czf "$OUT/profiles-logs.tgz" -C $R cache logs
  grep -h "greedy mismatch" $LOGS/*.log
  ;;
*) echo "unknown mode $MODE (check, train-smoke, train, speed)"; exit 2 ;;
esac
