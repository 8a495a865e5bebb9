#!/usr/bin/env python3
"""Plain greedy decoding speed of the default model: s4c (flex) vs HF transformers (float32),
side by side on this machine. Prints a Markdown table of medians.

Usage: python3 scripts/bench_plain.py [--runs 5] [--new 64]
Needs: target/release/s4c, torch and transformers (only for the HF column).
"""
import argparse, json, os, statistics, subprocess, sys, tempfile, time

ap = argparse.ArgumentParser()
ap.add_argument("--runs", type=int, default=5)
ap.add_argument("--new", type=int, default=64)
ap.add_argument("--prompt", default="What is the capital of France?")
args = ap.parse_args()
root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
s4c = os.path.join(root, "target/release/s4c")

def s4c_run(extra):
    cmd = [s4c, "generate", "--chat", "--prompt", args.prompt, "--max-new-tokens", str(args.new),
           "--ignore-eos", "--json"] + extra
    out = subprocess.run(cmd, cwd=root, capture_output=True, text=True, check=True).stdout
    d = json.loads(out)
    assert d["new_tokens"] == args.new
    return d["tok_per_s"], len(d["prompt_ids"])

configs = {
    "s4c flex f32, 1 shard": ["--shards", "1"],
    "s4c flex f32, 2 shards": ["--shards", "2"],
    "s4c flex f16 weights / f32 compute, 2 shards": ["--dtype", "f16", "--shards", "2"],
}
results = {name: [] for name in configs}
hf = None
try:
    import torch, transformers
    hf_dir = tempfile.mkdtemp(prefix="s4c-hf-")
    subprocess.run([s4c, "convert", "--out", hf_dir], cwd=root, check=True, capture_output=True)
    tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, torch_dtype=torch.float32).eval()
    msgs = [{"role": "system", "content": "You are a helpful AI assistant named SmolLM, trained by Hugging Face"},
            {"role": "user", "content": args.prompt}]
    text = ("<|im_start|>system\n" + msgs[0]["content"] + "<|im_end|>\n<|im_start|>user\n" + args.prompt
            + "<|im_end|>\n<|im_start|>assistant\n")
    ids = tok(text, return_tensors="pt").input_ids
    hf = []
    results[f"HF transformers {transformers.__version__} f32 (torch {torch.__version__}, {torch.get_num_threads()} threads)"] = hf
except ImportError as e:
    print(f"(HF transformers not run: {e})", file=sys.stderr)

def hf_run():
    with torch.no_grad():
        t = time.perf_counter()
        out = model.generate(ids, max_new_tokens=args.new, min_new_tokens=args.new, do_sample=False)
        dt = time.perf_counter() - t
    assert out.shape[1] - ids.shape[1] == args.new
    return args.new / dt

prompt_len = None
for r in range(args.runs + 1):  # first round is warm-up
    for name, extra in configs.items():
        tps, prompt_len = s4c_run(extra)
        if r:
            results[name].append(tps)
    if hf is not None:
        tps = hf_run()
        if r:
            hf.append(tps)

base = statistics.median(hf) if hf else None
print(f"Prompt: {prompt_len} tokens (chat), {args.new} new tokens, greedy, median of {args.runs} runs "
      "(tok/s = new tokens / wall time incl. prefill)\n")
print("| configuration | median tok/s | vs HF f32 |")
print("|---|---|---|")
for name, v in results.items():
    m = statistics.median(v)
    ratio = f"{m / base:.2f}x" if base else "n/a"
    print(f"| {name} | {m:.1f} | {ratio} |")
