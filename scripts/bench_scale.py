"""s4c at Llama 2 7B size on this machine: load time, peak resident memory and plain / S4C decoding
speed of the random-weight 7B-shape files made by scripts/scale_model.py.

    python3 scripts/bench_scale.py [--dir target/scale] [--threads 2] [--max-new-tokens 32]
                                   [--out docs/scale-7b]

Each file is run by `s4c generate --json` under `/usr/bin/time -v`, in plain mode and in S4C mode
(no heads exist for random weights, so S4C verifies chains found in the context), the first S4C
run with an empty cost-profile cache (it measures the model's verify-latency curve). The load
time is the wall-clock time less the generation's own; the files are read from the page cache when it
holds them (it does after one run on a machine with enough memory). Writes PREFIX.json and
PREFIX.md and prints the table.
"""

import argparse
import json
import os
import platform
import shutil
import re
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROMPT = ("Write a short story about a lighthouse keeper who finds a message in a bottle, "
          "and tell it in the first person.")


def run(binary, model, mode, threads, new_tokens, cache, label=None):
    cmd = ["/usr/bin/time", "-v", str(binary), "generate", "--model", str(model), "--prompt", PROMPT,
           "--max-new-tokens", str(new_tokens), "--mode", mode, "--json", "--ignore-eos",
           "--threads", str(threads)]
    start = time.monotonic()
    env = dict(os.environ, S4C_CACHE=str(cache))
    p = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    wall = time.monotonic() - start
    out = json.loads(p.stdout)
    rss_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr).group(1))
    return {
        "mode": label or mode,
        "wall_s": round(wall, 2),
        "load_s": round(wall - out["elapsed_s"], 2),
        "prefill_s": round(out["prefill_s"], 3),
        "prompt_tokens": len(out["prompt_ids"]),
        "new_tokens": out["new_tokens"],
        "decode_tok_per_s": round(out["timings"]["predicted_per_second"], 3),
        "tau": out["tau"],
        "peak_rss_mib": round(rss_kib / 1024, 1),
        "dtype": out["dtype"],
    }


def size_of(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.glob("*.safetensors"))
    return path.stat().st_size


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", type=Path, default=REPO / "target/scale")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--out", default="docs/scale-7b")
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "s4c", "--bins"], check=True, cwd=REPO)
    binary = REPO / "target/release/s4c"
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    mem_kib = next((int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal")), 0)
    mem = f"{mem_kib / 2**20:.0f} GiB RAM"
    results = {"machine": {"cpu": cpu, "memory": mem, "system": platform.platform()},
               "threads": args.threads, "max_new_tokens": args.max_new_tokens, "date": time.strftime("%Y-%m-%d"),
               "models": []}
    for name in ["llama2-7b-shape.Q4_0.gguf", "llama2-7b-shape-hf"]:
        model = args.dir / name
        if not model.exists():
            print(f"skipping {model}: run scripts/scale_model.py first")
            continue
        # One run to bring the file into the page cache, then the measured runs; the first S4C
        # run measures the cost curve of the model (cached for the next ones).
        cache = args.dir / "cost-cache"
        shutil.rmtree(cache, ignore_errors=True)
        run(binary, model, "plain", args.threads, 2, cache)
        entry = {"model": name, "file_bytes": size_of(model), "runs": []}
        for mode, label in [("plain", None), ("s4c", "s4c, first run"), ("s4c", None)]:
            entry["runs"].append(run(binary, model, mode, args.threads, args.max_new_tokens, cache, label))
        results["models"].append(entry)
    Path(REPO / f"{args.out}.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = ["| file | size | mode | load | peak RSS | RSS / size | prefill | decode | τ |", "|---|---|---|---|---|---|---|---|---|"]
    for m in results["models"]:
        gib = m["file_bytes"] / 2**30
        for r in m["runs"]:
            lines.append(f"| {m['model']} ({r['dtype']}) | {gib:.2f} GiB | {r['mode']} | {r['load_s']:.1f} s | "
                         f"{r['peak_rss_mib'] / 1024:.2f} GiB | {r['peak_rss_mib'] / 1024 / gib:.2f} | "
                         f"{r['prefill_s']:.1f} s ({r['prompt_tokens']} tokens) | {r['decode_tok_per_s']:.2f} tok/s | "
                         f"{r['tau'] if r['tau'] is not None else '–'} |")
    table = "\n".join(lines)
    Path(REPO / f"{args.out}.md").write_text(
        f"Random-weight Llama 2 7B-shape files (scripts/scale_model.py), `s4c generate`, "
        f"{args.threads} threads, {args.max_new_tokens} new tokens, {cpu}, {mem}, {results['date']}.\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    main()
