#!/usr/bin/env bash
# Talks to a running `s4c serve` at $1 (e.g. http://127.0.0.1:8080) with the official `openai`
# Python package, pinned, installed into target/openai-venv: chat and text completions, streamed
# and whole, stop strings, the error of an unknown model. Exits non-zero on any mismatch.
# Exit status 3: the package could not be installed (offline).
set -euo pipefail
cd "$(dirname "$0")/.."
URL=${1:?usage: scripts/openai-client-check.sh http://127.0.0.1:PORT [API_KEY]}
KEY=${2:-none}
VENV=target/openai-venv
if ! "$VENV/bin/python" -c "import openai" 2>/dev/null; then
    python3 -m venv "$VENV" >/dev/null 2>&1 || exit 3
    "$VENV/bin/python" -m pip install --quiet openai==1.99.9 || exit 3
fi
exec "$VENV/bin/python" scripts/openai_client_check.py "$URL" "$KEY"
