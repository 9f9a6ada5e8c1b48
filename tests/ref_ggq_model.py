#!/usr/bin/python3
"""Quantized GGUF bases for tests/test_arch.c: a tiny random llama written twice as GGUF,
  DIR/q.gguf    linear weights in ggml block formats (one type per projection: q Q8_0,
                k Q4_0, v Q4_K, o Q5_K, gate Q6_K, up Q4_1, down Q5_0; layer 1 shifts the
                list by one), token_embd Q8_0, output Q6_K, norms F32
  DIR/f32.gguf  the same model with every tensor the dequantized values of q.gguf, in F32
The block packing and dequantization are tests/ref_ggml_quants.py's (numpy, independent of
the C kernels). q/k rows are written in GGUF's adjacent-pairs order as a converter would.
usage: ref_ggq_model.py DIR
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ref_ggml_quants import (QUANT, dequant, write_gguf, F32, Q4_0, Q4_1, Q5_0, Q8_0, Q4_K, Q5_K,  # noqa: E402
                             Q6_K, NAMES)

C, FF, L, H, KVH, V = 256, 512, 2, 4, 2, 101
D = C // H
TYPES = [Q8_0, Q4_0, Q4_K, Q5_K, Q6_K, Q4_1, Q5_0]
PROJ = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]


def shape(p):  # (out, in)
    return {"attn_q": (H * D, C), "attn_k": (KVH * D, C), "attn_v": (KVH * D, C),
            "attn_output": (C, H * D), "ffn_gate": (FF, C), "ffn_up": (FF, C),
            "ffn_down": (C, FF)}[p]


def main():
    d = sys.argv[1]
    os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(4242)
    qt, ft = [], []

    def add(name, typ, w):
        rows, cols = w.shape
        if typ == F32:
            data = w.astype("<f4")
            qt.append((name, F32, [cols] if rows == 1 else [cols, rows], data.tobytes()))
            ft.append(qt[-1])
            return
        blk = QUANT[typ](w.astype(np.float32).reshape(-1))
        y = dequant(blk, typ).reshape(rows, cols).astype("<f4")
        qt.append((name, typ, [cols, rows], blk.tobytes()))
        ft.append((name, F32, [cols, rows], y.tobytes()))

    add("token_embd.weight", Q8_0, rng.standard_normal((V, C)) * 0.1)
    for l in range(L):
        add(f"blk.{l}.attn_norm.weight", F32, (1 + 0.1 * rng.standard_normal((1, C))))
        add(f"blk.{l}.ffn_norm.weight", F32, (1 + 0.1 * rng.standard_normal((1, C))))
        for i, p in enumerate(PROJ):
            add(f"blk.{l}.{p}.weight", TYPES[(i + l) % len(TYPES)],
                rng.standard_normal(shape(p)) * 0.05)
    add("output_norm.weight", F32, (1 + 0.1 * rng.standard_normal((1, C))))
    add("output.weight", Q6_K, rng.standard_normal((V, C)) * 0.1)
    kv = [("general.architecture", "str", "llama"), ("general.name", "str", "ggq test"),
          ("general.alignment", "u32", 32), ("llama.embedding_length", "u32", C),
          ("llama.feed_forward_length", "u32", FF), ("llama.block_count", "u32", L),
          ("llama.attention.head_count", "u32", H), ("llama.attention.head_count_kv", "u32", KVH),
          ("llama.context_length", "u32", 64), ("llama.vocab_size", "u32", V),
          ("llama.attention.layer_norm_rms_epsilon", "f32", 1e-5),
          ("llama.rope.freq_base", "f32", 10000.0)]
    write_gguf(os.path.join(d, "q.gguf"), kv, qt)
    write_gguf(os.path.join(d, "f32.gguf"), kv, ft)
    used = sorted({NAMES[t] for _, t, _, _ in qt if t != F32})
    print(f"  ref_ggq_model.py: {len(qt)} tensors, types {','.join(used)}")


if __name__ == "__main__":
    main()
