"""Tiny random-weight members of the Llama family and their reference outputs.

For each member (the shapes of Llama 2 / Vicuna, TinyLlama, Llama 3.2 and Mistral at toy size)
this writes crates/s4c-models/tests/fixtures/family/<name>/:

  hf/              config.json, model.safetensors (in the family's usual dtype), tokenizer files
                   (tokenizer.json, tokenizer_config.json with the chat template; tokenizer.model
                   for SentencePiece members), saved by HF transformers
  model.f16.gguf   converted from hf/ by llama.cpp's own convert_hf_to_gguf.py
  model.q8_0.gguf  the same, with the weight matrices in Q8_0
  reference.json   what HF transformers (float32) computes: token ids of texts and of a chat,
                   and for each file the logits of the prompts and 32 greedy tokens, computed with
                   the weights exactly as that file stores them (read back from the file with
                   llama.cpp's gguf-py, dequantized, and the rotary row order undone)

Run through scripts/family-fixtures.sh, which pins every package and adds llama.cpp's own logits
(scripts/family_llama_cpp.py). The tokenizers are trained here
on data/train-prompts.jsonl (Apache-2.0): SentencePiece BPE with byte fallback for the
Llama 2 / TinyLlama / Mistral members, byte-level BPE with Llama 3's split pattern for Llama 3.
"""

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "crates/s4c-models/tests/fixtures/family"
TEMPLATES = REPO / "data/chat-templates"
NEW_TOKENS = 32
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "def add(a, b):\n    return a + b",
    "Zürich, 1999: naïve café résumé — 42%",
]
CHAT = [
    {"role": "system", "content": "You are brief."},
    {"role": "user", "content": "Name three colors."},
    {"role": "assistant", "content": "Red, green, blue."},
    {"role": "user", "content": "Two more?"},
]
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# name: (transformers config class, config, safetensors dtype, tokenizer kind, chat template)
MEMBERS = {
    # Llama 2 / Vicuna: multi-head attention, untied head, f16 weights.
    "llama2": ("LlamaConfig", dict(num_attention_heads=4, num_key_value_heads=4, rope_theta=10000.0,
                                   tie_word_embeddings=False, rms_norm_eps=1e-5), torch.float16, "spm",
               "llama2-chat.jinja"),
    # TinyLlama: grouped-query attention (4 query heads per key head), untied, f32 weights.
    "tinyllama": ("LlamaConfig", dict(num_attention_heads=4, num_key_value_heads=1, rope_theta=10000.0,
                                      tie_word_embeddings=False, rms_norm_eps=1e-5), torch.float32, "spm",
                  "vicuna-v1.1.jinja"),
    # Llama 3.2: GQA, tied head, rope_theta 500000 with llama3 rotary scaling, bf16 weights.
    "llama3": ("LlamaConfig", dict(num_attention_heads=4, num_key_value_heads=2, rope_theta=500000.0,
                                   rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                                 "high_freq_factor": 4.0,
                                                 "original_max_position_embeddings": 8192},
                                   max_position_embeddings=131072, tie_word_embeddings=True,
                                   rms_norm_eps=1e-5), torch.bfloat16, "llama3",
               "llama3.1.jinja"),
    # Mistral: GQA, untied, rope_theta 1e6, a sliding window longer than the fixtures' prompts.
    "mistral": ("MistralConfig", dict(num_attention_heads=4, num_key_value_heads=2, rope_theta=1e6,
                                      sliding_window=256, tie_word_embeddings=False, rms_norm_eps=1e-5),
                torch.bfloat16, "spm", "mistral-instruct.jinja"),
}


def training_text():
    lines = []
    with open(REPO / "data/train-prompts.jsonl", encoding="utf-8") as f:
        for line in f:
            lines.append(json.loads(line)["prompt"])
    return lines[:600] + TEXTS


def spm_tokenizer(work: Path, template: str):
    """A Llama-2-style SentencePiece BPE with byte fallback, saved as transformers saves Llama's."""
    import sentencepiece as spm
    from transformers import LlamaTokenizerFast

    work.mkdir(parents=True, exist_ok=True)
    prefix = work / "spm"
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(training_text()), model_prefix=str(prefix), vocab_size=448,
        model_type="bpe", byte_fallback=True, character_coverage=0.9995, split_digits=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, add_dummy_prefix=True,
        remove_extra_whitespaces=False, normalization_rule_name="identity",
        allow_whitespace_only_pieces=True, num_threads=2, minloglevel=2,
    )
    # legacy=True gives the normalizer of Llama 2's published tokenizer.json (prepend "▁",
    # spaces to "▁"); the ids must be SentencePiece's own.
    fast = LlamaTokenizerFast(vocab_file=str(prefix) + ".model", legacy=True, add_prefix_space=True,
                              from_slow=True)
    fast.chat_template = template
    sp = spm.SentencePieceProcessor(model_file=str(prefix) + ".model")
    for text in TEXTS:
        assert fast(text).input_ids == [sp.bos_id()] + sp.encode(text), text
    return fast


def llama3_tokenizer(template: str):
    """A byte-level BPE with Llama 3's split pattern and its special tokens at the end."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=440, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(training_text(), trainer)
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                "<|eot_id|>"]
    tok.add_special_tokens(specials)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
        special_tokens=[("<|begin_of_text|>", bos)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>",
                                   eos_token="<|eot_id|>", clean_up_tokenization_spaces=False)
    fast.chat_template = template
    return fast


def make_model(cls_name: str, extra: dict, vocab: int, bos: int, eos: int, seed: int):
    import transformers

    config = getattr(transformers, cls_name)(
        vocab_size=vocab, hidden_size=64, intermediate_size=192, num_hidden_layers=2,
        initializer_range=0.1, bos_token_id=bos, eos_token_id=eos, **{"max_position_embeddings": 512, **extra})
    torch.manual_seed(seed)
    model = getattr(transformers, cls_name.replace("Config", "ForCausalLM"))(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
    return model


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undoes llama.cpp's rotary row order of a query/key matrix (its converter's `permute`)."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def state_from_gguf(path: Path, config) -> dict:
    """The file's weights in transformers' names and layout, dequantized with llama.cpp's gguf-py."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    names = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
             "output.weight": "lm_head.weight"}
    per_layer = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
                 "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                 "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                 "ffn_down": "mlp.down_proj"}
    state = {}
    for t in GGUFReader(str(path)).tensors:
        if t.name == "rope_freqs.weight":
            continue
        shape = [int(x) for x in reversed(t.shape)]
        w = dequantize(t.data, t.tensor_type).astype(np.float32).reshape(shape)
        if t.name in names:
            hf = names[t.name]
        else:
            _, layer, kind, _ = t.name.split(".")
            hf = f"model.layers.{layer}.{per_layer[kind]}.weight"
            if kind == "attn_q":
                w = unpermute(w, config.num_attention_heads)
            elif kind == "attn_k":
                w = unpermute(w, config.num_key_value_heads)
        state[hf] = torch.from_numpy(w.copy())
    if config.tie_word_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    return state


def outputs(model, prompts: list) -> dict:
    """Float32 logits of every prompt (full last row; top 8 of every position) and greedy tokens."""
    model = model.float().eval()
    result = []
    with torch.no_grad():
        for ids in prompts:
            x = torch.tensor([ids])
            logits = model(x).logits[0]
            top = torch.topk(logits, 8, dim=-1)
            gen = model.generate(x, max_new_tokens=NEW_TOKENS, do_sample=False, min_new_tokens=NEW_TOKENS,
                                 pad_token_id=0)
            new = gen[0, len(ids):].tolist()
            full = model(gen).logits[0, len(ids) - 1:-1]
            two = torch.topk(full, 2, dim=-1).values
            result.append({
                "last_logits": [round(v, 6) for v in logits[-1].tolist()],
                "top8_ids": top.indices.tolist(),
                "top8_values": [[round(v, 6) for v in row] for row in top.values.tolist()],
                "greedy_new_ids": new,
                "greedy_top2_margins": [round(v, 6) for v in (two[:, 0] - two[:, 1]).tolist()],
            })
    return result


def convert(converter: Path, hf: Path, out: Path, outtype: str, pre: str | None):
    """Runs llama.cpp's convert_hf_to_gguf.py in this process. For a byte-level BPE it names the
    pre-tokenizer, because llama.cpp identifies pre-tokenizers by hashing a published vocabulary's
    output and a trained toy vocabulary has no published hash."""
    import convert_hf_to_gguf as c

    if pre is not None:
        base = sys.modules["conversion.base"]
        base.TextModel.get_vocab_base_pre = lambda self, tokenizer: pre
    argv = sys.argv
    sys.argv = ["convert_hf_to_gguf.py", str(hf), "--outfile", str(out), "--outtype", outtype]
    try:
        c.main()
    finally:
        sys.argv = argv


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--converter", type=Path, required=True, help="llama.cpp's convert_hf_to_gguf.py")
    ap.add_argument("--work", type=Path, default=REPO / "target/family-fixtures")
    args = ap.parse_args()
    # llama.cpp's converter and its gguf-py (also used to read the converted files back).
    sys.path.insert(0, str(args.converter.parent))
    sys.path.insert(0, str(args.converter.parent / "gguf-py"))
    import transformers

    OUT.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    for seed, (name, (cls_name, extra, dtype, tok_kind, template_file)) in enumerate(MEMBERS.items()):
        print(f"== {name}", flush=True)
        dest = OUT / name
        shutil.rmtree(dest, ignore_errors=True)
        hf = dest / "hf"
        template = (TEMPLATES / template_file).read_text(encoding="utf-8")
        if tok_kind == "spm":
            tokenizer = spm_tokenizer(args.work / name, template)
        else:
            tokenizer = llama3_tokenizer(template)
        vocab = len(tokenizer)
        model = make_model(cls_name, extra, vocab, tokenizer.bos_token_id, tokenizer.eos_token_id, seed)
        model = model.to(dtype)
        model.config.torch_dtype = dtype
        model.save_pretrained(hf, safe_serialization=True)
        tokenizer.save_pretrained(hf)
        (hf / "generation_config.json").unlink(missing_ok=True)

        prompts = [tokenizer(t).input_ids for t in TEXTS]
        # Mistral's template has no system role.
        chat = CHAT[1:] if name == "mistral" else CHAT
        chat_text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        chat_ids = tokenizer.apply_chat_template(chat, tokenize=True, add_generation_prompt=True)
        reference = {
            "generator": "scripts/family_fixtures.py",
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "config": {k: v for k, v in model.config.to_dict().items() if not k.startswith("_")},
            "texts": TEXTS,
            "text_ids": prompts,
            "chat": chat,
            "chat_text": chat_text,
            "chat_ids": chat_ids,
            "files": {},
        }
        def holding(state):
            """A model of this member holding `state` (transformers' names; a tied head may be
            left out)."""
            m = make_model(cls_name, extra, vocab, tokenizer.bos_token_id, tokenizer.eos_token_id, seed)
            missing, unexpected = m.load_state_dict(state, strict=False)
            assert not unexpected, unexpected
            assert all(k == "lm_head.weight" for k in missing), missing
            if m.config.tie_word_embeddings:
                m.tie_weights()
            return m

        # hf/: the weights as saved (rounded to `dtype`), computed in float32.
        state = load_file(hf / "model.safetensors")
        reference["files"]["hf"] = outputs(holding({k: v.float() for k, v in state.items()}),
                                           prompts + [chat_ids])
        pre = "llama-bpe" if tok_kind == "llama3" else None
        for outtype in ["f16", "q8_0"]:
            gguf_path = dest / f"model.{outtype}.gguf"
            convert(args.converter, hf, gguf_path, outtype, pre)
            reference["files"][gguf_path.name] = outputs(
                holding(state_from_gguf(gguf_path, model.config)), prompts + [chat_ids])
        with open(dest / "reference.json", "w", encoding="utf-8") as f:
            json.dump(reference, f, ensure_ascii=False, separators=(",", ":"))
        size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
        print(f"   vocab {vocab}, {size / 1024:.0f} KiB", flush=True)


if __name__ == "__main__":
    main()
