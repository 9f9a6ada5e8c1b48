#!/usr/bin/env python3
"""Random PEFT LoRA adapters for a Llama shape: OUT/PREFIX{FIRST..FIRST+N-1}/ with
adapter_model.safetensors (F32) and adapter_config.json; every projection targeted, A and B
~ N(0, std^2) (B non-zero, so each adapter changes the output). Standard library only (numpy
when present, for speed). Used by tests/test_serve.sh and bench/bench.sh.
usage: random_adapters.py OUT --n N --rank R --dim C --layers L --heads H --kv-heads KVH --ffn F
                          [--std 0.02] [--seed 1] [--prefix a] [--first 1]
"""
import argparse, json, os, random, struct

p = argparse.ArgumentParser()
p.add_argument("out")
for k in ("n", "rank", "dim", "layers", "heads", "kv_heads", "ffn"):
    p.add_argument("--" + k.replace("_", "-"), type=int, required=True)
p.add_argument("--std", type=float, default=0.02)
p.add_argument("--seed", type=int, default=1)
p.add_argument("--prefix", default="a")
p.add_argument("--first", type=int, default=1)
a = p.parse_args()
try:
    import numpy as np
except ImportError:
    np = None
C, D = a.dim, a.dim // a.heads
shapes = {"q_proj": (a.heads * D, C), "k_proj": (a.kv_heads * D, C), "v_proj": (a.kv_heads * D, C),
          "o_proj": (C, a.heads * D), "gate_proj": (a.ffn, C), "up_proj": (a.ffn, C), "down_proj": (C, a.ffn)}


def normal(rnd, n):
    if np is not None:
        return (rnd.standard_normal(n) * a.std).astype("<f4").tobytes()
    return struct.pack("<%df" % n, *[rnd.gauss(0, a.std) for _ in range(n)])


for k in range(a.first, a.first + a.n):
    rnd = np.random.default_rng(a.seed + k) if np is not None else random.Random(a.seed + k)
    d = os.path.join(a.out, "%s%d" % (a.prefix, k))
    os.makedirs(d, exist_ok=True)
    header, blobs, off = {}, [], 0
    for l in range(a.layers):
        for t, (o, i) in shapes.items():
            mod = "base_model.model.model.layers.%d.%s.%s" % (l, "self_attn" if t[0] in "qkvo" else "mlp", t)
            for name, (rows, cols) in ((mod + ".lora_A.weight", (a.rank, i)), (mod + ".lora_B.weight", (o, a.rank))):
                raw = normal(rnd, rows * cols)
                header[name] = {"dtype": "F32", "shape": [rows, cols], "data_offsets": [off, off + len(raw)]}
                blobs.append(raw)
                off += len(raw)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(os.path.join(d, "adapter_model.safetensors.tmp"), "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))
    with open(os.path.join(d, "adapter_config.json"), "w") as f:
        json.dump({"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": a.rank, "lora_alpha": 2 * a.rank,
                   "target_modules": list(shapes), "lora_dropout": 0.0, "bias": "none",
                   "fan_in_fan_out": False, "inference_mode": True}, f)
    os.replace(os.path.join(d, "adapter_model.safetensors.tmp"), os.path.join(d, "adapter_model.safetensors"))
