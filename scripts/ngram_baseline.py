#!/usr/bin/env python3
"""What head 1 would score without the target's feature: n-gram baselines on the held-out split.

Head 1 reads the feature at position t and the token x[t+1] and must name the target's next token
x[t+2]. This script predicts it from the last 1, 2 or 3 tokens alone (the most frequent successor
in the training split, backing off to the shorter context) and reports the top-1 agreement with the
target on the held-out answers (and on all positions), using the same split as `s4c train-heads`:
every 20th sequence, grouped by prompt. Needs numpy and safetensors (`pip install numpy
safetensors`).

    python3 scripts/ngram_baseline.py runs/distill-256
"""
import glob
import sys
from collections import Counter, defaultdict

import numpy as np
from safetensors.numpy import load_file

HELD_OUT_EVERY = 20


def sequences(folder):
    """(tokens, prompt_len, target top-1 per position, its probability) per sequence."""
    out = []
    for path in sorted(glob.glob(f"{folder}/chunk-*.safetensors")):
        d = load_file(path)
        starts, prompt_lens = d["starts"], d["prompt_lens"]
        row = 0
        for j, prompt_len in enumerate(prompt_lens):
            tokens = d["tokens"][starts[j]:starts[j + 1]]
            n = len(tokens) - 1  # positions with a forward
            out.append((tokens, int(prompt_len), d["top_ids"][row:row + n, 0],
                        d["top_probs"][row:row + n, 0].astype(np.float32)))
            row += n
    return out


def split(seqs):
    side = {}
    for i, (tokens, prompt_len, _, _) in enumerate(seqs):
        side.setdefault(tuple(tokens[:prompt_len]), i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1)
    held = [s for s in seqs if side[tuple(s[0][:s[1]])]]
    train = [s for s in seqs if not side[tuple(s[0][:s[1]])]]
    return train, held


def head1_examples(seq, answers_only):
    """(x[t-1], x[t], x[t+1], label, target probability) of head 1's examples."""
    tokens, prompt_len, top, prob = seq
    for t in range(len(top) - 1):
        row = t + 1  # the row whose next token head 1 names
        if answers_only and t + 1 < prompt_len:
            continue  # as `s4c train-heads`: the root token x[t+1] is one the target generated
        before = tokens[t - 1] if t > 0 else -1
        yield before, tokens[t], tokens[t + 1], top[row], prob[row]


def main():
    folder = sys.argv[1] if len(sys.argv) > 1 else "runs/distill-256"
    train, held = split(sequences(folder))
    tables = [defaultdict(Counter) for _ in range(3)]
    for seq in train:
        for a, b, c, label, _ in head1_examples(seq, False):
            for n, key in enumerate(((c,), (b, c), (a, b, c))):
                tables[n][key][label] += 1
    print(f"{folder}: {len(train)} training and {len(held)} held-out sequences")
    for answers_only in (True, False):
        hits, count, probs = [0, 0, 0], 0, []
        for seq in held:
            for a, b, c, label, p in head1_examples(seq, answers_only):
                count += 1
                probs.append(p)
                guess = -1
                for n, key in enumerate(((c,), (b, c), (a, b, c))):
                    seen = tables[n].get(key)
                    if seen:
                        guess = seen.most_common(1)[0][0]
                    hits[n] += guess == label
        probs = np.array(probs)
        print(f"{'answers' if answers_only else 'all positions'}: {count} examples; top-1 of "
              f"bigram {hits[0] / count:.3f}, trigram {hits[1] / count:.3f}, "
              f"4-gram {hits[2] / count:.3f}; the target's own top-1 probability: mean "
              f"{probs.mean():.3f}, above 0.5 at {(probs > 0.5).mean():.3f}")


if __name__ == "__main__":
    main()
