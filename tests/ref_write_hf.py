#!/usr/bin/env python3
"""Independent writer of model files for tests/test_formats.c (PyTorch for the numbers, the
file formats written by hand: no safetensors/gguf libraries).

usage: /usr/bin/python3 tests/ref_write_hf.py OUTDIR
       /usr/bin/python3 tests/ref_write_hf.py read FILE   (.safetensors or .gguf)
The second form is an independent reader for files our writers produce: it prints JSON
{"meta": {key: value}, "tensors": {name: {"dtype": .., "shape": [..], "values": [..]}}}
(shapes as stored: row-major for safetensors, ne fastest-first for GGUF).
Writes a tiny Llama (dim 32, hidden 40, 2 layers, 4 heads of 8, 2 KV heads, vocab 32) as:
  OUTDIR/f16_untied/    HF dir, F16, separate lm_head, tie_word_embeddings false
  OUTDIR/bf16_tied/     HF dir, BF16, no lm_head, tie_word_embeddings true, eos as a list
  OUTDIR/f16_headonly/  HF dir, F16, only lm_head.weight stored (no embed_tokens), tied
  OUTDIR/bf16_nohead/   HF dir, BF16, tie_word_embeddings false but no lm_head (=> tied),
                        header not padded to 8 bytes (data unaligned)
  OUTDIR/gguf/model.gguf   GGUF v3, F32, q/k rows permuted to the GGUF (adjacent) convention
                           the way llama.cpp's convert_hf_to_gguf.py does, untied
  OUTDIR/bin/model.bin     llama2.c legacy checkpoint (Meta q/k order), unshared classifier
Each directory holds expected.f32: the fp32 values a loader must produce in the HF (rotate-
half) convention, in the order embed (V,C); per layer attn_norm, q, k, v, o, gate, up, down,
ffn_norm; final norm; then lm_head when untied.
"""
import json, os, struct, sys
import torch

C, FF, L, H, KVH, V, MAXPOS = 32, 40, 2, 4, 2, 32, 64
D = C // H
EPS, THETA = 1e-5, 10000.0
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def shape_of(tgt):  # (out, in)
    return {"q_proj": (H * D, C), "k_proj": (KVH * D, C), "v_proj": (KVH * D, C),
            "o_proj": (C, H * D), "gate_proj": (FF, C), "up_proj": (FF, C),
            "down_proj": (C, FF)}[tgt]


def hf_name(l, tgt):
    return f"model.layers.{l}.{'self_attn' if tgt[0] in 'qkvo' else 'mlp'}.{tgt}.weight"


def make_weights(seed):
    g = torch.Generator().manual_seed(seed)
    w = {"model.embed_tokens.weight": torch.randn(V, C, generator=g)}
    for l in range(L):
        w[f"model.layers.{l}.input_layernorm.weight"] = 1 + 0.1 * torch.randn(C, generator=g)
        for t in TARGETS:
            w[hf_name(l, t)] = torch.randn(*shape_of(t), generator=g) * 0.2
        w[f"model.layers.{l}.post_attention_layernorm.weight"] = 1 + 0.1 * torch.randn(C, generator=g)
    w["model.norm.weight"] = 1 + 0.1 * torch.randn(C, generator=g)
    w["lm_head.weight"] = torch.randn(V, C, generator=g)
    return w


def expected(w, tied):
    order = ["model.embed_tokens.weight"]
    for l in range(L):
        order.append(f"model.layers.{l}.input_layernorm.weight")
        order += [hf_name(l, t) for t in TARGETS]
        order.append(f"model.layers.{l}.post_attention_layernorm.weight")
    order.append("model.norm.weight")
    if not tied:
        order.append("lm_head.weight")
    return b"".join(w[n].float().contiguous().numpy().astype("<f4").tobytes() for n in order)


def write_safetensors(path, tensors, pad=True):
    codes = {torch.float32: ("F32", torch.float32), torch.float16: ("F16", torch.int16),
             torch.bfloat16: ("BF16", torch.int16)}
    header, blobs, off = {"__metadata__": {"format": "pt"}}, [], 0
    for name in sorted(tensors, reverse=True):  # an order unlike the loader's
        t = tensors[name]
        dt, view = codes[t.dtype]
        raw = t.contiguous().view(view).numpy().astype(view == torch.int16 and "<i2" or "<f4").tobytes()
        header[name] = {"dtype": dt, "shape": list(t.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header).encode()
    if pad:
        h += b" " * (-len(h) % 8)
    elif len(h) % 2 == 0:
        h += b" "  # odd length: every tensor's data starts unaligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def config(tied, eos_list=False, tie_key=True):
    c = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": C,
         "intermediate_size": FF, "num_hidden_layers": L, "num_attention_heads": H,
         "num_key_value_heads": KVH, "vocab_size": V, "rms_norm_eps": EPS,
         "rope_theta": THETA, "max_position_embeddings": MAXPOS, "hidden_act": "silu",
         "bos_token_id": 1, "eos_token_id": [2, 5] if eos_list else 2, "head_dim": None,
         "rope_scaling": None, "torch_dtype": "float16"}
    if tie_key:
        c["tie_word_embeddings"] = tied
    return c


def hf_variant(out, name, w, dtype, tied, drop=(), pad=True, **cfg):
    d = os.path.join(out, name)
    os.makedirs(d, exist_ok=True)
    stored = {k: v.to(dtype) for k, v in w.items() if k not in drop}
    write_safetensors(os.path.join(d, "model.safetensors"), stored, pad)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(config(tied, **cfg), f, indent=2)
    # what the loader must see: values rounded to dtype, and the table it keeps
    exp = {k: v.to(dtype).float() for k, v in w.items()}
    if "model.embed_tokens.weight" in drop:
        exp["model.embed_tokens.weight"] = exp["lm_head.weight"]
    with open(os.path.join(d, "expected.f32"), "wb") as f:
        f.write(expected(exp, tied))


def permute_hf_to_gguf(w, n_head):
    """llama.cpp convert_hf_to_gguf.py LlamaModel.permute: rotate-half rows -> adjacent pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_str(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def write_gguf(path, w):
    kv = [("general.architecture", 8, gguf_str("llama")),
          ("general.name", 8, gguf_str("tiny")),
          ("llama.context_length", 4, struct.pack("<I", MAXPOS)),
          ("llama.embedding_length", 4, struct.pack("<I", C)),
          ("llama.feed_forward_length", 4, struct.pack("<I", FF)),
          ("llama.block_count", 4, struct.pack("<I", L)),
          ("llama.attention.head_count", 4, struct.pack("<I", H)),
          ("llama.attention.head_count_kv", 4, struct.pack("<I", KVH)),
          ("llama.rope.dimension_count", 4, struct.pack("<I", D)),
          ("llama.rope.freq_base", 6, struct.pack("<f", THETA)),
          ("llama.attention.layer_norm_rms_epsilon", 6, struct.pack("<f", EPS)),
          ("tokenizer.ggml.bos_token_id", 4, struct.pack("<I", 1)),
          ("tokenizer.ggml.eos_token_id", 4, struct.pack("<I", 2))]
    gg = {"token_embd.weight": w["model.embed_tokens.weight"],
          "output_norm.weight": w["model.norm.weight"], "output.weight": w["lm_head.weight"]}
    names = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
             "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}
    for l in range(L):
        gg[f"blk.{l}.attn_norm.weight"] = w[f"model.layers.{l}.input_layernorm.weight"]
        gg[f"blk.{l}.ffn_norm.weight"] = w[f"model.layers.{l}.post_attention_layernorm.weight"]
        for t in TARGETS:
            x = w[hf_name(l, t)]
            if t == "q_proj":
                x = permute_hf_to_gguf(x, H)
            if t == "k_proj":
                x = permute_hf_to_gguf(x, KVH)
            gg[f"blk.{l}.{names[t]}.weight"] = x
    head = b"GGUF" + struct.pack("<IQQ", 3, len(gg), len(kv))
    for k, t, v in kv:
        head += gguf_str(k) + struct.pack("<I", t) + v
    data, off = b"", 0
    for name, x in gg.items():
        raw = x.float().contiguous().numpy().astype("<f4").tobytes()
        ne = list(reversed(x.shape))  # fastest first
        head += gguf_str(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", n) for n in ne)
        head += struct.pack("<IQ", 0, off)
        data += raw + b"\0" * (-len(raw) % 32)
        off = len(data)
    head += b"\0" * (-len(head) % 32)
    with open(path, "wb") as f:
        f.write(head + data)


def write_llama2c(path, w):
    """llama2.c export.py legacy_export: Meta q/k order, unshared classifier (vocab < 0)."""
    def meta(name, n_head):
        return permute_hf_to_gguf(w[name], n_head)
    parts = [w["model.embed_tokens.weight"]]
    parts += [w[f"model.layers.{l}.input_layernorm.weight"] for l in range(L)]
    parts += [meta(hf_name(l, "q_proj"), H) for l in range(L)]
    parts += [meta(hf_name(l, "k_proj"), KVH) for l in range(L)]
    for t in ["v_proj", "o_proj"]:
        parts += [w[hf_name(l, t)] for l in range(L)]
    parts += [w[f"model.layers.{l}.post_attention_layernorm.weight"] for l in range(L)]
    for t in ["gate_proj", "down_proj", "up_proj"]:  # w1, w2, w3
        parts += [w[hf_name(l, t)] for l in range(L)]
    parts.append(w["model.norm.weight"])
    freqs = torch.outer(torch.arange(MAXPOS).float(),
                        1.0 / THETA ** (torch.arange(0, D, 2).float() / D))
    parts += [torch.cos(freqs), torch.sin(freqs)]
    parts.append(w["lm_head.weight"])
    with open(path, "wb") as f:
        f.write(struct.pack("<7i", C, FF, L, H, KVH, -V, MAXPOS))
        for p in parts:
            f.write(p.float().contiguous().numpy().astype("<f4").tobytes())


def read_safetensors(path):
    import numpy as np
    raw = open(path, "rb").read()
    (n,) = struct.unpack_from("<Q", raw, 0)
    assert n % 8 == 0, "header not padded to 8 bytes"
    header = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    out = {"meta": header.pop("__metadata__", {}), "tensors": {}}
    end = 0
    for name, h in header.items():
        b, e = h["data_offsets"]
        buf = data[b:e]
        if h["dtype"] == "F32":
            v = np.frombuffer(buf, "<f4")
        elif h["dtype"] == "F16":
            v = np.frombuffer(buf, "<f2").astype(np.float32)
        else:
            v = (np.frombuffer(buf, "<u2").astype(np.uint32) << 16).view(np.float32)
        assert v.size == int(np.prod(h["shape"])), name
        end = max(end, e)
        out["tensors"][name] = {"dtype": h["dtype"], "shape": h["shape"], "values": [float(x) for x in v]}
    assert end == len(data), "data block has trailing bytes"
    return out


def read_gguf(path):
    import numpy as np
    raw = open(path, "rb").read()
    pos = [0]

    def rd(fmt):
        v = struct.unpack_from("<" + fmt, raw, pos[0])
        pos[0] += struct.calcsize("<" + fmt)
        return v[0]

    def rstr():
        n = rd("Q")
        s = raw[pos[0]:pos[0] + n].decode()
        pos[0] += n
        return s

    fmts = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}

    def rval(t):
        if t == 8:
            return rstr()
        if t == 9:
            et, n = rd("I"), rd("Q")
            return [rval(et) for _ in range(n)]
        return rd(fmts[t])

    assert raw[:4] == b"GGUF"
    pos[0] = 4
    version, nt, nkv = rd("I"), rd("Q"), rd("Q")
    assert version == 3
    meta = {}
    for _ in range(nkv):
        k = rstr()
        meta[k] = rval(rd("I"))
    infos = []
    for _ in range(nt):
        name = rstr()
        nd = rd("I")
        ne = [rd("Q") for _ in range(nd)]
        infos.append((name, ne, rd("I"), rd("Q")))
    align = meta.get("general.alignment", 32)
    start = (pos[0] + align - 1) // align * align
    out = {"meta": meta, "tensors": {}}
    for name, ne, t, off in infos:
        assert off % align == 0
        n = int(np.prod(ne))
        if t == 0:
            v = np.frombuffer(raw, "<f4", n, start + off)
        elif t == 1:
            v = np.frombuffer(raw, "<f2", n, start + off).astype(np.float32)
        else:
            assert t == 30
            v = (np.frombuffer(raw, "<u2", n, start + off).astype(np.uint32) << 16).view(np.float32)
        out["tensors"][name] = {"dtype": {0: "F32", 1: "F16", 30: "BF16"}[t], "shape": ne,
                                "values": [float(x) for x in v]}
    return out


def main():
    if sys.argv[1] == "read":
        f = sys.argv[2]
        print(json.dumps(read_gguf(f) if f.endswith(".gguf") else read_safetensors(f)))
        return
    out = sys.argv[1]
    w = make_weights(1234)
    hf_variant(out, "f16_untied", w, torch.float16, False)
    hf_variant(out, "bf16_tied", w, torch.bfloat16, True, drop=("lm_head.weight",), eos_list=True)
    hf_variant(out, "f16_headonly", w, torch.float16, True, drop=("model.embed_tokens.weight",))
    hf_variant(out, "bf16_nohead", w, torch.bfloat16, True, drop=("lm_head.weight",), pad=False,
               tie_key=False)
    for sub, writer, fn in [("gguf", write_gguf, "model.gguf"), ("bin", write_llama2c, "model.bin")]:
        d = os.path.join(out, sub)
        os.makedirs(d, exist_ok=True)
        writer(os.path.join(d, fn), w)
        with open(os.path.join(d, "expected.f32"), "wb") as f:
            f.write(expected({k: v.float() for k, v in w.items()}, False))


if __name__ == "__main__":
    main()
