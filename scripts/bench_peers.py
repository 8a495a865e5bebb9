#!/usr/bin/env python3
"""s4c and llama.cpp side by side in one run; see scripts/bench-peers.sh, which builds llama.cpp
and calls this with its virtual environment's Python (llama-cpp-python installed).

Every system decodes the same prompts, token for token, and writes as many new tokens: `s4c
bench` renders each turn with the model's chat template, records the ids and the length of its
greedy answer (up to --max-new-tokens, ended by end-of-sequence); llama.cpp gets those ids and
writes that many tokens (end-of-sequence banned until then — its own greedy answer can end
earlier or later, its arithmetic differing slightly). tok/s counts new tokens over the wall time
of the whole answer, prefill included; overall figures are the mean over turns of per-turn tok/s,
as `s4c bench` reports them.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = "models/SmolLM2-135M-Instruct.Q4_1.gguf"


def sh(cmd, **kw):
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    return subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True, **kw).stdout


def peak_rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


def llama_plain(turns, threads, lengths):
    """llama.cpp plain greedy decoding (through llama-cpp-python) of each turn's prompt ids, as
    many new tokens as s4c's answer to that turn has (end-of-sequence banned before)."""
    from llama_cpp import Llama

    llm = Llama(model_path=os.path.join(ROOT, MODEL), n_ctx=4096, n_threads=threads,
                n_threads_batch=threads, verbose=False)
    out = []
    for ids, length in zip(turns, lengths):
        llm.reset()  # no reuse of an earlier prompt's keys and values
        start = time.perf_counter()
        r = llm.create_completion(prompt=ids, max_tokens=length, temperature=0.0,
                                  logit_bias={llm.token_eos(): float("-inf")})
        elapsed = time.perf_counter() - start
        n = r["usage"]["completion_tokens"]
        out.append({"new_tokens": n, "tok_s": n / elapsed})
    return out


def llama_lookup(binary, turns, threads, lengths):
    """llama.cpp's prompt-lookup speculation (`llama-lookup`, its defaults) on each turn: the
    prompt ids as text with their special tokens (the tool tokenizes it again), as many new
    tokens as s4c's answer to that turn has."""
    import re
    from llama_cpp import Llama

    vocab = Llama(model_path=os.path.join(ROOT, MODEL), vocab_only=True, verbose=False)
    prompt = os.path.join(ROOT, "target/peers/prompt.txt")
    out = []
    for ids, length in zip(turns, lengths):
        with open(prompt, "wb") as f:
            f.write(vocab.detokenize(ids, special=True))
        log = subprocess.run([binary, "-m", MODEL, "-f", prompt, "-n", str(length), "-t", str(threads),
                              "--temp", "0", "-c", "4096", "--ignore-eos"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stderr
        enc = re.search(r"encoded\s+(\d+) tokens in\s+([\d.]+) seconds", log)
        dec = re.search(r"decoded\s+(\d+) tokens in\s+([\d.]+) seconds", log)
        n = int(dec.group(1))
        out.append({"new_tokens": n, "tok_s": n / (float(enc.group(2)) + float(dec.group(2)))})
    return out


def logits_vs_llama_cpp(threads, golden, s4c_dump):
    """s4c's logits (the default engine, the file's own weights) against llama.cpp's on every
    position of the golden texts (prompt + reference answer): largest and mean |Δlogit|, top-1
    agreement and mean KL(p_llama.cpp ‖ p_s4c)."""
    import numpy as np
    from llama_cpp import Llama

    llm = Llama(model_path=os.path.join(ROOT, MODEL), n_ctx=1024, n_threads=threads,
                logits_all=True, verbose=False)
    theirs = []
    for case in golden["cases"]:
        ids = case["input_ids"] + case["greedy_new_ids"]
        llm.reset()
        llm.eval(ids)
        theirs.append(np.array(llm.scores[: len(ids)], dtype=np.float64))
    theirs = np.concatenate(theirs)
    ours = np.fromfile(s4c_dump, dtype="<f4").astype(np.float64).reshape(theirs.shape)
    diff = np.abs(ours - theirs)

    def log_softmax(x):
        x = x - x.max(axis=1, keepdims=True)
        return x - np.log(np.exp(x).sum(axis=1, keepdims=True))

    lp, lq = log_softmax(theirs), log_softmax(ours)
    kl = (np.exp(lp) * (lp - lq)).sum(axis=1)
    return {"positions": int(theirs.shape[0]), "max_abs_logit_diff": float(diff.max()),
            "mean_abs_logit_diff": float(diff.mean()),
            "top1_agreement": float((ours.argmax(1) == theirs.argmax(1)).mean()),
            "mean_kl": float(kl.mean())}


def llama_bench(binary, threads):
    """llama-bench's prompt sizes, decode, long prompt and decode over a long cache."""
    runs = {}
    for name, args in [("prompt", ["-p", "1,4,16,64", "-n", "0"]), ("decode", ["-p", "0", "-n", "128"]),
                       ("prefill_1024", ["-p", "1024", "-n", "0"]),
                       ("decode_at_1024", ["-p", "0", "-n", "64", "-d", "1024"])]:
        out = sh([binary, "-m", MODEL, "-t", str(threads), "-r", "3", "-o", "json"] + args)
        runs[name] = [{"n_prompt": r["n_prompt"], "n_gen": r["n_gen"], "tok_s": r["avg_ts"]}
                      for r in json.loads(out)]
    return runs


def svg(rows, title):
    """A horizontal bar chart of tok/s per system."""
    w, bar, gap, left = 640, 26, 10, 230
    top = max(v for _, v in rows)
    h = 50 + len(rows) * (bar + gap)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="13">',
             f'<text x="10" y="22" font-size="15" font-weight="bold">{title}</text>']
    for i, (name, v) in enumerate(rows):
        y = 40 + i * (bar + gap)
        length = (w - left - 90) * v / top
        colour = "#d95f02" if name.startswith("s4c") else "#7570b3"
        parts.append(f'<text x="10" y="{y + 18}">{name}</text>')
        parts.append(f'<rect x="{left}" y="{y}" width="{length:.1f}" height="{bar}" fill="{colour}"/>')
        parts.append(f'<text x="{left + length + 6:.1f}" y="{y + 18}">{v:.1f} tok/s</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--questions", default="data/specbench-dev-heldout.jsonl")
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit-per-task", type=int)
    ap.add_argument("--out", default="docs/peers")
    ap.add_argument("--llama-bench", required=True)
    ap.add_argument("--llama-lookup", required=True)
    ap.add_argument("--llama-cpp-python", required=True)
    a = ap.parse_args()
    started = time.strftime("%Y-%m-%d")
    s4c = os.path.join(ROOT, "target/release/s4c")
    bench_json = os.path.join(ROOT, "target/peers/s4c-bench.json")
    limit = ["--limit-per-task", str(a.limit_per_task)] if a.limit_per_task else []
    sh([s4c, "bench", "--questions", a.questions, "--max-new-tokens", str(a.max_new_tokens),
        "--threads", str(a.threads), "--json", bench_json] + limit)
    bench = json.load(open(bench_json))
    turns = [(q["task"], t) for q in bench["questions"] for t in q["turns"]]
    prompts = [t["prompt_ids"] for _, t in turns]
    # Every system writes as many tokens per turn as s4c plain did (S4C's answer is the same).
    lengths = [t["plain_new_tokens"] for _, t in turns]
    plain = llama_plain(prompts, a.threads, lengths)
    lookup = llama_lookup(a.llama_lookup, prompts, a.threads, lengths)
    llama_rss = peak_rss_mib()

    systems = {
        "llama.cpp plain": [p["tok_s"] for p in plain],
        "llama.cpp prompt lookup": [p["tok_s"] for p in lookup],
        "s4c plain": [t["plain_tok_s"] for _, t in turns],
        "s4c S4C": [t["s4c_tok_s"] for _, t in turns],
    }
    tasks = sorted({task for task, _ in turns})
    by_task = {task: {name: statistics.mean(v for (tk, _), v in zip(turns, vals) if tk == task)
                      for name, vals in systems.items()} for task in tasks}
    overall = {name: statistics.mean(v) for name, v in systems.items()}
    medians = {name: statistics.median(v) for name, v in systems.items()}
    ratios = {
        "s4c plain / llama.cpp plain": overall["s4c plain"] / overall["llama.cpp plain"],
        "s4c S4C / llama.cpp plain": overall["s4c S4C"] / overall["llama.cpp plain"],
        "s4c S4C / llama.cpp prompt lookup": overall["s4c S4C"] / overall["llama.cpp prompt lookup"],
        "s4c S4C / s4c plain": overall["s4c S4C"] / overall["s4c plain"],
    }
    curves = json.loads(sh(["cargo", "run", "--release", "-q", "-p", "s4c-models", "--example",
                            "peer_curves", "--", str(a.threads)]))
    dump = os.path.join(ROOT, "target/peers/s4c-logits.f32")
    sh(["cargo", "run", "--release", "-q", "-p", "s4c-models", "--example", "fidelity", "--",
        MODEL, "data/golden-smollm2-135m-instruct.json", "--dump", dump])
    golden = json.load(open(os.path.join(ROOT, "data/golden-smollm2-135m-instruct.json")))
    fidelity = logits_vs_llama_cpp(a.threads, golden, dump)
    result = {
        "date": started, "model": MODEL, "questions": a.questions, "turns": len(turns),
        "max_new_tokens": a.max_new_tokens, "threads": a.threads, "machine": bench["machine"],
        "llama_cpp_python": a.llama_cpp_python, "s4c": {k: bench[k] for k in
            ["engine", "isa", "dtype", "kernel_threads", "tree", "heads", "peak_rss_mib"]},
        "llama_cpp_peak_rss_mib": llama_rss,
        "overall_tok_s": overall, "median_tok_s": medians, "by_task_tok_s": by_task, "ratios": ratios,
        "s4c_tau": bench["overall"]["tau"], "s4c_greedy_match": bench["overall"]["greedy_match"],
        "llama_bench": llama_bench(a.llama_bench, a.threads), "s4c_curves": curves,
        "logits_vs_llama_cpp": fidelity,
    }
    out = os.path.join(ROOT, a.out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out + ".json", "w") as f:
        json.dump(result, f, indent=1)
    names = list(systems)
    md = [f"| task | {' | '.join(names)} |", "|---|" + "---:|" * len(names)]
    for task in tasks:
        md.append(f"| {task} | " + " | ".join(f"{by_task[task][n]:.1f}" for n in names) + " |")
    md.append("| **overall (mean of turns)** | " + " | ".join(f"**{overall[n]:.1f}**" for n in names) + " |")
    md.append("| median of turns | " + " | ".join(f"{medians[n]:.1f}" for n in names) + " |")
    md.append("")
    md += [f"- {k}: **{v:.2f}×**" for k, v in ratios.items()]
    md.append(f"- s4c τ {result['s4c_tau']:.2f}, greedy match {result['s4c_greedy_match']:.0%}; "
              f"peak RSS s4c {result['s4c']['peak_rss_mib']:.0f} MiB")
    with open(out + ".md", "w") as f:
        f.write("\n".join(md) + "\n")
    with open(out + ".svg", "w") as f:
        f.write(svg([(n, overall[n]) for n in names],
                    f"{len(turns)} turns, {a.max_new_tokens} new tokens max, {a.threads} threads, {started}"))
    print("\n".join(md))


if __name__ == "__main__":
    main()
