#!/usr/bin/env python3
"""HF transformers plain greedy decoding on the prompts of an `s4c bench` run, token for token.

Reads the JSON that `s4c bench --json` wrote, takes each turn's plain-mode prompt ids (the chat
rendered by s4c, earlier turns answered by s4c's plain decoding), and decodes each with
transformers' `generate` (greedy, KV cache, stopping at the end-of-turn token like s4c, at most
the bench's max new tokens). Tokens per second count the prompt's prefill, as `s4c bench` does.
Prints a summary and writes JSON.

  python3 scripts/bench_hf.py --bench runs/bench.json --model HF_FOLDER --dtype float16 \
      --device cuda --json runs/hf.json

The HF folder is the same GGUF file converted by `s4c convert` (weights dequantized to f32; the
dtype is applied at load). Needs torch and transformers.
"""
import argparse
import json
import platform
import statistics
import time

import torch
import transformers
from transformers import AutoModelForCausalLM

ap = argparse.ArgumentParser()
ap.add_argument("--bench", required=True, help="JSON written by `s4c bench --json`")
ap.add_argument("--model", required=True, help="HF folder (e.g. from `s4c convert`)")
ap.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
ap.add_argument("--device", default="cpu")
ap.add_argument("--json", required=True, help="where to write the results")
args = ap.parse_args()

bench = json.load(open(args.bench))
max_new = bench["max_new_tokens"]
dtype = getattr(torch, args.dtype)
model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype).to(args.device).eval()
# The tokens s4c stops at: the model's EOS ids and the chat template's end-of-turn tokens.
stop = bench["stop_ids"]


def sync():
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()


def decode(ids):
    x = torch.tensor([ids], device=args.device)
    sync()
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(x, max_new_tokens=max_new, do_sample=False, eos_token_id=stop,
                             pad_token_id=stop[0], attention_mask=torch.ones_like(x))
    sync()
    new = out[0, len(ids):].tolist()
    # generate() keeps the stop token; s4c's count includes it too.
    return new, time.perf_counter() - t0


turns = [(q["question_id"], t) for q in bench["questions"] for t in q["turns"]]
decode(turns[0][1]["prompt_ids"])  # warm-up: allocations, kernels
rows = []
for qid, t in turns:
    new, secs = decode(t["prompt_ids"])
    rows.append({"question_id": qid, "prompt_tokens": len(t["prompt_ids"]),
                 "new_tokens": len(new), "seconds": secs, "tok_s": len(new) / secs,
                 "s4c_plain_tok_s": t["plain_tok_s"], "s4c_s4c_tok_s": t["s4c_tok_s"]})
    print(f"q{qid}: {len(new)} tokens, {len(new) / secs:.1f} tok/s "
          f"(s4c plain {t['plain_tok_s']:.1f}, S4C {t['s4c_tok_s']:.1f})", flush=True)

total = lambda k: sum(r[k] for r in rows)
summary = {
    "engine": "transformers",
    "transformers": transformers.__version__,
    "torch": torch.__version__,
    "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor(),
    "dtype": args.dtype,
    "max_new_tokens": max_new,
    "turns": len(rows),
    "tok_s": total("new_tokens") / total("seconds"),
    "median_tok_s": statistics.median(r["tok_s"] for r in rows),
    "s4c_plain_median_tok_s": statistics.median(r["s4c_plain_tok_s"] for r in rows),
    "s4c_s4c_median_tok_s": statistics.median(r["s4c_s4c_tok_s"] for r in rows),
    "rows": rows,
}
json.dump(summary, open(args.json, "w"), indent=1)
print(f"transformers {args.dtype} on {summary['device']}: {summary['tok_s']:.1f} tok/s over "
      f"{len(rows)} turns (median {summary['median_tok_s']:.1f}); s4c plain median "
      f"{summary['s4c_plain_median_tok_s']:.1f}, S4C median {summary['s4c_s4c_median_tok_s']:.1f}")
