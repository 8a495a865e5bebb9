"""Writes the seed inputs of the fuzz targets to fuzz/seeds/<target>/ (small valid files).

    python3 fuzz/make_seeds.py        # needs numpy; gguf-py from llama.cpp's source (see below)

The GGUF seed is written with llama.cpp's gguf-py (the llama-cpp-python source distribution that
scripts/bench-peers.sh unpacks under target/peers/), the others by hand.
"""

import json
import shutil
import struct
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SEEDS = ROOT / "fuzz/seeds"
sys.path.insert(0, str(ROOT / "target/peers/llama_cpp_python-0.3.36/vendor/llama.cpp/gguf-py"))
from gguf import GGMLQuantizationType as T, GGUFWriter  # noqa: E402
from gguf.quants import quantize  # noqa: E402


def gguf_seeds():
    rng = np.random.default_rng(0)
    for name, model in [("llama-spm", "llama"), ("llama-bpe", "gpt2")]:
        path = SEEDS / "gguf" / f"{name}.gguf"
        w = GGUFWriter(str(path), "llama")
        w.add_context_length(64)
        w.add_embedding_length(32)
        w.add_block_count(1)
        w.add_feed_forward_length(64)
        w.add_head_count(2)
        w.add_head_count_kv(1)
        w.add_layer_norm_rms_eps(1e-5)
        w.add_rope_freq_base(10000.0)
        w.add_tokenizer_model(model)
        tokens = ["<unk>", "<s>", "</s>", "a", "b", "ab", "\u2581a", "\u0120"]
        w.add_token_list(tokens)
        w.add_token_types([2, 3, 3, 1, 1, 1, 1, 1])
        if model == "llama":
            w.add_token_scores([0.0, 0.0, 0.0, -1.0, -2.0, -3.0, -4.0, -5.0])
        else:
            w.add_tokenizer_pre("llama-bpe")
            w.add_token_merges(["a b"])
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_add_bos_token(True)
        w.add_chat_template("{% for m in messages %}{{ m['content'] }}{% endfor %}")
        w.add_tensor("token_embd.weight", rng.standard_normal((8, 32), dtype=np.float32))
        w.add_tensor("output_norm.weight", np.ones(32, dtype=np.float32))
        w.add_tensor("blk.0.attn_q.weight", rng.standard_normal((32, 32)).astype(np.float16))
        for ty, tname in [(T.Q8_0, "attn_k"), (T.Q4_0, "attn_v"), (T.Q4_1, "attn_output")]:
            data = rng.standard_normal((32, 32), dtype=np.float32)
            w.add_tensor(f"blk.0.{tname}.weight", quantize(data, ty), raw_dtype=ty)
        for ty, tname in [(T.Q4_K, "ffn_up"), (T.Q6_K, "ffn_down")]:
            # K-quant super-blocks of 256 values, random bytes with finite f16 scales.
            per_block = {T.Q4_K: 144, T.Q6_K: 210}[ty]
            raw = rng.integers(0, 256, size=(2, per_block), dtype=np.uint8)
            w.add_tensor(f"blk.0.{tname}.weight", raw, raw_dtype=ty)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()


def safetensors_seed():
    tensors = {
        "model.embed_tokens.weight": np.arange(24, dtype=np.float32).reshape(6, 4),
        "model.norm.weight": np.ones(4, dtype=np.float16),
        "lm_head.weight": (np.arange(24, dtype=np.float32).reshape(6, 4).view(np.uint32) >> 16).astype(np.uint16),
    }
    dtypes = {"model.embed_tokens.weight": "F32", "model.norm.weight": "F16", "lm_head.weight": "BF16"}
    header, data, offset = {}, b"", 0
    for k, v in tensors.items():
        b = v.tobytes()
        header[k] = {"dtype": dtypes[k], "shape": list(v.shape), "data_offsets": [offset, offset + len(b)]}
        data += b
        offset += len(b)
    h = json.dumps(header).encode()
    (SEEDS / "safetensors/small.safetensors").write_bytes(struct.pack("<Q", len(h)) + h + data)


def text_seeds():
    fixtures = ROOT / "crates/s4c-models/tests/fixtures/family"
    for member in ["llama2", "llama3", "mistral"]:
        shutil.copy(fixtures / member / "hf/config.json", SEEDS / f"config_json/{member}.json")
    shutil.copy(fixtures / "llama3/hf/tokenizer.json", SEEDS / "tokenizer_json/llama3.json")
    shutil.copy(fixtures / "llama2/hf/tokenizer.json", SEEDS / "tokenizer_json/llama2.json")
    for t in sorted((ROOT / "data/chat-templates").glob("*.jinja")):
        shutil.copy(t, SEEDS / "chat_template" / t.name)


if __name__ == "__main__":
    gguf_seeds()
    safetensors_seed()
    text_seeds()
