"""Random-weight Llama 2 7B-shape model files, for measuring s4c at the paper's model size.

Writes into OUT (default target/scale):

  llama2-7b-shape.Q4_0.gguf   every matrix Q4_0 except the output head (Q6_K), as llama.cpp's
                              `llama-quantize Q4_0` leaves a Llama 2 7B; norms f32 (3.8 GB)
  llama2-7b-shape-hf/         config.json, model-0000{1,2}-of-00002.safetensors in f16 with
                              their index, tokenizer.json and tokenizer_config.json (13.5 GB)

The vocabulary is Llama 2's own (32,000 SentencePiece pieces), read from llama.cpp's tokenizer
test file `models/ggml-vocab-llama-spm.gguf` in the llama-cpp-python source distribution that
scripts/bench-peers.sh unpacks. The weights are random: the files measure loading, memory and
speed, not text. Needs numpy and `pip install gguf transformers tokenizers` (the HF tokenizer is
converted from the GGUF vocabulary by transformers).
"""

import argparse
import json
import struct
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
LLAMA_CPP = REPO / "target/peers/llama_cpp_python-0.3.36/vendor/llama.cpp"
sys.path.insert(0, str(LLAMA_CPP / "gguf-py"))
import gguf  # noqa: E402

HIDDEN, FFN, LAYERS, HEADS, VOCAB, CONTEXT = 4096, 11008, 32, 32, 32000, 4096


def matrices():
    """(HF name, GGUF name, rows, cols) of every matrix; norms come separately."""
    yield "model.embed_tokens.weight", "token_embd.weight", VOCAB, HIDDEN
    for i in range(LAYERS):
        for hf, gg, r, c in [("self_attn.q_proj", "attn_q", HIDDEN, HIDDEN), ("self_attn.k_proj", "attn_k", HIDDEN, HIDDEN),
                             ("self_attn.v_proj", "attn_v", HIDDEN, HIDDEN), ("self_attn.o_proj", "attn_output", HIDDEN, HIDDEN),
                             ("mlp.gate_proj", "ffn_gate", FFN, HIDDEN), ("mlp.up_proj", "ffn_up", FFN, HIDDEN),
                             ("mlp.down_proj", "ffn_down", HIDDEN, FFN)]:
            yield f"model.layers.{i}.{hf}.weight", f"blk.{i}.{gg}.weight", r, c
    yield "lm_head.weight", "output.weight", VOCAB, HIDDEN


def norms():
    for i in range(LAYERS):
        yield f"model.layers.{i}.input_layernorm.weight", f"blk.{i}.attn_norm.weight"
        yield f"model.layers.{i}.post_attention_layernorm.weight", f"blk.{i}.ffn_norm.weight"
    yield "model.norm.weight", "output_norm.weight"


def random_blocks(rng, rows, cols, ty):
    """Random blocks of `ty` with finite scales of about 1/sqrt(cols) per value."""
    per_block, block_bytes = gguf.GGML_QUANT_SIZES[ty]
    n = rows * cols // per_block
    raw = rng.integers(0, 256, size=(n, block_bytes), dtype=np.uint8)
    scale = np.float16(2.0 / np.sqrt(cols) / 8.0)
    d = np.frombuffer(scale.tobytes(), dtype=np.uint8)
    if ty == gguf.GGMLQuantizationType.Q4_0:
        raw[:, 0:2] = d
    elif ty == gguf.GGMLQuantizationType.Q6_K:
        raw[:, 208:210] = d
        raw[:, 192:208] = rng.integers(1, 32, size=(n, 16), dtype=np.uint8)
    return raw.reshape(rows, cols // per_block * block_bytes)


def vocab():
    r = gguf.GGUFReader(str(LLAMA_CPP / "models/ggml-vocab-llama-spm.gguf"))
    f = r.fields
    tokens = [bytes(f["tokenizer.ggml.tokens"].parts[i]).decode("utf-8") for i in f["tokenizer.ggml.tokens"].data]
    scores = [float(f["tokenizer.ggml.scores"].parts[i][0]) for i in f["tokenizer.ggml.scores"].data]
    types = [int(f["tokenizer.ggml.token_type"].parts[i][0]) for i in f["tokenizer.ggml.token_type"].data]
    return tokens, scores, types


def write_gguf(path: Path, rng):
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("llama2-7b-shape (random weights)")
    w.add_context_length(CONTEXT)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(FFN)
    w.add_rope_dimension_count(HIDDEN // HEADS)
    w.add_head_count(HEADS)
    w.add_head_count_kv(HEADS)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_0)
    tokens, scores, types = vocab()
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    for _, name, rows, cols in matrices():
        ty = gguf.GGMLQuantizationType.Q6_K if name == "output.weight" else gguf.GGMLQuantizationType.Q4_0
        w.add_tensor(name, random_blocks(rng, rows, cols, ty), raw_dtype=ty)
    for _, name in norms():
        w.add_tensor(name, (1.0 + 0.1 * rng.standard_normal(HIDDEN)).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file(progress=False)
    w.close()


def random_f16(rng, shape, cols):
    """Random f16 values of about 1/sqrt(cols), made from random bits (fast for 13 GB)."""
    n = int(np.prod(shape))
    # exponent 0x2000..0x2BFF: magnitudes 2^-7 .. 2^-4; random sign.
    bits = rng.integers(0x2000, 0x2C00, size=n, dtype=np.uint16) | (rng.integers(0, 2, size=n, dtype=np.uint16) << 15)
    return bits.view(np.float16).reshape(shape)


def write_safetensors(path: Path, tensors: dict):
    """A safetensors file written tensor by tensor (no copy of the whole shard in memory)."""
    header, offset = {}, 0
    for name, (dtype, shape, _) in tensors.items():
        nbytes = int(np.prod(shape)) * (2 if dtype == "F16" else 4)
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for name, (_, _, make) in tensors.items():
            f.write(make().tobytes())


def write_hf(dir: Path, rng):
    dir.mkdir(parents=True, exist_ok=True)
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN,
        "intermediate_size": FFN, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
        "num_key_value_heads": HEADS, "vocab_size": VOCAB, "max_position_embeddings": CONTEXT,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False, "hidden_act": "silu",
        "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float16",
    }
    (dir / "config.json").write_text(json.dumps(config, indent=2))
    entries = [(hf, (r, c)) for hf, _, r, c in matrices()] + [(hf, (HIDDEN,)) for hf, _ in norms()]
    half = len(entries) // 2
    weight_map = {}
    for k, part in enumerate([entries[:half], entries[half:]]):
        name = f"model-0000{k + 1}-of-00002.safetensors"
        tensors = {}
        for hf, shape in part:
            if len(shape) == 1:
                tensors[hf] = ("F16", shape, lambda: (1.0 + 0.1 * rng.standard_normal(HIDDEN)).astype(np.float16))
            else:
                tensors[hf] = ("F16", shape, lambda shape=shape: random_f16(rng, shape, shape[1]))
            weight_map[hf] = name
        write_safetensors(dir / name, tensors)
    (dir / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}, indent=1))
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(LLAMA_CPP / "models"), gguf_file="ggml-vocab-llama-spm.gguf")
    tok.save_pretrained(str(dir))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "target/scale")
    ap.add_argument("--skip-hf", action="store_true", help="write only the GGUF file")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    write_gguf(args.out / "llama2-7b-shape.Q4_0.gguf", rng)
    print("wrote", args.out / "llama2-7b-shape.Q4_0.gguf", flush=True)
    if not args.skip_hf:
        write_hf(args.out / "llama2-7b-shape-hf", rng)
        print("wrote", args.out / "llama2-7b-shape-hf", flush=True)


if __name__ == "__main__":
    main()
