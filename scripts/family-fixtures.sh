#!/usr/bin/env bash
# Regenerates crates/s4c-models/tests/fixtures/family/: tiny random-weight models with the shapes
# of Llama 2 / Vicuna, TinyLlama, Llama 3.2 and Mistral, made and run by HF transformers, converted
# to GGUF (f16, Q8_0) by llama.cpp's own convert_hf_to_gguf.py, with the reference outputs of
# transformers (float32) and of llama.cpp that crates/s4c-models/tests/family.rs checks.
#
#   scripts/family-fixtures.sh
#
# Packages are pinned (the versions llama.cpp's converter asks for); llama.cpp comes from the
# source distribution of the pinned llama-cpp-python, built by scripts/bench-peers.sh --setup-only.
# Deterministic on one machine (seeded weights and training); a few minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."

LLAMA_CPP_PYTHON=0.3.36
TORCH=2.11.0
TRANSFORMERS=4.57.6
TOKENIZERS=0.22.2
SAFETENSORS=0.8.0
NUMPY=2.2.6
SENTENCEPIECE=0.2.0
PROTOBUF=4.25.9
VENV=target/fixtures-venv
SRC=target/peers/llama_cpp_python-$LLAMA_CPP_PYTHON

scripts/bench-peers.sh --setup-only
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q "torch==$TORCH" "transformers==$TRANSFORMERS" "tokenizers==$TOKENIZERS" \
    "safetensors==$SAFETENSORS" "numpy==$NUMPY" "sentencepiece==$SENTENCEPIECE" "protobuf==$PROTOBUF"
"$VENV/bin/python" scripts/family_fixtures.py --converter "$SRC/vendor/llama.cpp/convert_hf_to_gguf.py"
target/peers/venv/bin/python scripts/family_llama_cpp.py
