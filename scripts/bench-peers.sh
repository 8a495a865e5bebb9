#!/usr/bin/env bash
# s4c side by side with llama.cpp in one run: the same GGUF file (the default model), the same
# chat prompts (token for token), the same maximum of new tokens and the same thread count.
#
#   scripts/bench-peers.sh [--questions FILE] [--max-new-tokens N] [--threads N]
#                          [--limit-per-task N] [--out PREFIX]
#   scripts/bench-peers.sh --setup-only    # build llama.cpp and llama-cpp-python, measure nothing
#
# Measures llama.cpp plain decoding (through llama-cpp-python) and its prompt-lookup speculation
# (`llama-lookup`),
# s4c plain and s4c S4C (`s4c bench`), llama-bench's row-count and long-context curves next to
# s4c's, and the logits of the two implementations on the golden texts. Writes PREFIX.json,
# PREFIX.md and PREFIX.svg (default docs/peers) and prints the ratios.
#
# llama.cpp is built here from the source distribution of the pinned PyPI package
# llama-cpp-python (no prebuilt binaries), with cmake and ninja from PyPI, into target/peers/
# (about 20 minutes on 2 cores the first time; later runs reuse it).
set -euo pipefail
cd "$(dirname "$0")/.."

LLAMA_CPP_PYTHON=0.3.36
CMAKE=4.4.5
NINJA=1.13.2
# llama-cpp-python's own requirements, pinned.
NUMPY=2.2.6
TYPING_EXTENSIONS=4.15.0
DISKCACHE=5.6.3
JINJA2=3.1.6
MARKUPSAFE=3.0.2
PEERS=target/peers
VENV=$PEERS/venv
SRC=$PEERS/llama_cpp_python-$LLAMA_CPP_PYTHON
TOOLS=$SRC/vendor/llama.cpp/build/bin

./scripts/fetch-default-model.sh
mkdir -p "$PEERS"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q "cmake==$CMAKE" "ninja==$NINJA" "numpy==$NUMPY" \
    "typing-extensions==$TYPING_EXTENSIONS" "diskcache==$DISKCACHE" "jinja2==$JINJA2" "markupsafe==$MARKUPSAFE"
export PATH="$PWD/$VENV/bin:$PATH"

if [ ! -d "$SRC" ]; then
    "$VENV/bin/pip" download -q --no-deps --no-binary llama-cpp-python -d "$PEERS" \
        "llama-cpp-python==$LLAMA_CPP_PYTHON"
    tar -xzf "$PEERS/llama_cpp_python-$LLAMA_CPP_PYTHON.tar.gz" -C "$PEERS"
fi
if [ ! -x "$TOOLS/llama-bench" ] || [ ! -x "$TOOLS/llama-lookup" ]; then
    cmake -S "$SRC/vendor/llama.cpp" -B "$SRC/vendor/llama.cpp/build" -G Ninja \
        -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
        -DLLAMA_BUILD_SERVER=OFF >/dev/null
    cmake --build "$SRC/vendor/llama.cpp/build" -j "$(nproc)" --target llama-bench llama-lookup
fi
if ! "$VENV/bin/python" -c "import llama_cpp" 2>/dev/null; then
    CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAMA_CURL=OFF" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
        "$VENV/bin/pip" install -q --no-deps --no-binary llama-cpp-python \
        "$PEERS/llama_cpp_python-$LLAMA_CPP_PYTHON.tar.gz"
fi

if [ "${1:-}" = "--setup-only" ]; then
    exit 0
fi

cargo build --release -q -p s4c --bins --examples
cargo build --release -q -p s4c-models --examples
"$VENV/bin/python" scripts/bench_peers.py --llama-bench "$TOOLS/llama-bench" \
    --llama-lookup "$TOOLS/llama-lookup" \
    --llama-cpp-python "$LLAMA_CPP_PYTHON" "$@"
