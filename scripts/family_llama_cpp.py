"""Adds llama.cpp's logits to the family fixtures' reference.json files.

For every GGUF file of crates/s4c-models/tests/fixtures/family/<name>/, llama.cpp (through
llama-cpp-python, built from source by scripts/bench-peers.sh's recipe) evaluates the reference's
prompts with all logits kept; reference.json gains "llama_cpp": {file: [per prompt: last_logits,
top8_ids, top8_values]}. Run by scripts/family-fixtures.sh with the peers' Python.
"""

import json
import sys
from pathlib import Path

import llama_cpp
import numpy as np

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "crates/s4c-models/tests/fixtures/family"


def main():
    for ref_path in sorted(OUT.glob("*/reference.json")):
        ref = json.loads(ref_path.read_text(encoding="utf-8"))
        prompts = ref["text_ids"] + [ref["chat_ids"]]
        ref["llama_cpp"] = {"llama_cpp_python": llama_cpp.__version__}
        for gguf in sorted(ref_path.parent.glob("*.gguf")):
            model = llama_cpp.Llama(str(gguf), n_ctx=512, n_batch=512, n_threads=2, logits_all=True,
                                    verbose=False)
            rows = []
            for ids in prompts:
                model.reset()
                model.eval(ids)
                logits = np.array(model.scores[: len(ids)], dtype=np.float32)
                top = np.argsort(-logits, axis=1, kind="stable")[:, :8]
                rows.append({
                    "last_logits": [round(float(v), 6) for v in logits[-1]],
                    "top8_ids": top.tolist(),
                    "top8_values": [[round(float(v), 6) for v in logits[i, top[i]]] for i in range(len(ids))],
                })
            ref["llama_cpp"][gguf.name] = rows
            del model
            print(f"{ref_path.parent.name}/{gguf.name}: {len(rows)} prompts", file=sys.stderr)
        ref_path.write_text(json.dumps(ref, ensure_ascii=False, separators=(",", ":")), encoding="utf-8")


if __name__ == "__main__":
    main()
