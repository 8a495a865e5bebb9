#!/usr/bin/env python3
"""The most S4C could gain on a machine, whatever its drafts: an oracle bound.

A step that verifies a chain of `n` tokens, every one of them accepted, decodes `n` tokens for
the price of one forward of `n` rows. With a verify-latency curve `cost(n)` (milliseconds, e.g.
the `cpu native` column of `cargo run --release -p s4c-models --example verify_latency`), no
drafter can decode faster than `max_n n · cost(1) / cost(n)` times plain decoding (drafting
itself not counted). The prefill, which plain and S4C decoding share, is not sped up: given a
`s4c bench --json` file (each turn's plain wall and prefill seconds), the script divides every
turn's decode time by a factor and prints the speedup in the bench's measure (mean tok/s over
turns, S4C over plain), for the oracle's factor and for the factor a target speedup needs.

    python3 scripts/speedup-bound.py docs/specbench-heldout-96.json 1=10.4 2=13.6 4=20.1 16=71.2

Pure Python, no dependencies.
"""
import json
import sys


def turns(bench):
    with open(bench) as f:
        data = json.load(f)
    return [t for q in data["questions"] for t in q["turns"]]


def speedup(rows, factor):
    """Mean tok/s over turns with each turn's decode time divided by `factor`, over plain's."""
    plain = [t["plain_new_tokens"] / t["plain_s"] for t in rows]
    faster = [
        t["plain_new_tokens"]
        / (t["plain_prefill_s"] + (t["plain_s"] - t["plain_prefill_s"]) / factor)
        for t in rows
    ]
    return sum(faster) / sum(plain)


def factor_for(rows, target):
    """The smallest decode factor whose speedup reaches `target` (bisection), or None."""
    lo, hi = 1.0, 1e6
    if speedup(rows, hi) < target:
        return None
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if speedup(rows, mid) < target else (lo, mid)
    return hi


def main(argv):
    if len(argv) < 3 or any("=" not in a for a in argv[2:]):
        sys.exit(__doc__)
    rows = turns(argv[1])
    curve = sorted((int(n), float(ms)) for n, ms in (a.split("=") for a in argv[2:]))
    one = dict(curve).get(1)
    if one is None:
        sys.exit("the curve needs the one-row time (1=MS)")
    print("| rows | ms | tokens per plain step's time |")
    print("|---:|---:|---:|")
    for n, ms in curve:
        print(f"| {n} | {ms} | {n * one / ms:.2f} |")
    best_n, best = max(((n, n * one / ms) for n, ms in curve), key=lambda x: x[1])
    print(f"\n{len(rows)} turns; plain's prefill share of wall time: "
          f"{sum(t['plain_prefill_s'] for t in rows) / sum(t['plain_s'] for t in rows):.0%}")
    print(f"oracle decode factor {best:.2f} (chains of {best_n} rows, all accepted): "
          f"speedup at most {speedup(rows, best):.2f}x")
    for target in (1.5, 2.0):
        f = factor_for(rows, target)
        need = f"{f:.2f}" if f else "unreachable even with free decoding"
        print(f"speedup {target}x needs a decode factor of {need}")


if __name__ == "__main__":
    main(sys.argv)
