#!/usr/bin/env bash
# Fuzzes every parser of s4c-models with cargo-fuzz (nightly toolchain, `cargo install cargo-fuzz`):
#
#   fuzz/run.sh [RUNS] [TARGET...]      # default 1000000 executions of each target
#
# Each target starts from fuzz/seeds/<target> (small valid files, made by fuzz/make_seeds.py) and
# keeps what it finds in fuzz/corpus/<target>; a crash is written to fuzz/artifacts/<target>/ and
# stops the run with a non-zero status. The last line of each log gives executions and speed.
set -euo pipefail
cd "$(dirname "$0")"
RUNS=${1:-1000000}
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(gguf safetensors config_json tokenizer_json chat_template)
cargo +nightly fuzz build -O >/dev/null
for t in "${TARGETS[@]}"; do
    mkdir -p "corpus/$t"
    cargo +nightly fuzz run -O "$t" "corpus/$t" "seeds/$t" -- -runs="$RUNS" -max_len=16384 \
        -print_final_stats=1 > "corpus/$t.log" 2>&1 || { tail -30 "corpus/$t.log"; exit 1; }
    echo "$t: $(grep -E '^Done' "corpus/$t.log") $(grep -E 'stat::number_of_executed_units' "corpus/$t.log")"
done
