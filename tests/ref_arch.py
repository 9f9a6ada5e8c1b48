#!/usr/bin/env python3
"""PyTorch oracle for tests/test_arch.c: tiny random models of the architectures other than
plain Llama, each as HF writes them (config.json with architectures/model_type, a
model.safetensors with the real HF tensor names), a PEFT adapter with random non-zero A and B
on every target module of that architecture (named as PEFT names them), and the expected
logits, loss and LoRA gradients computed in float64 (the approach of tests/ref_llama.py,
whose helpers it imports).

usage: /usr/bin/python3 tests/ref_arch.py OUTDIR
writes OUTDIR/<variant>/{model/,adapter/,expected.safetensors} for the variants below, and
(all but mistral) OUTDIR/<variant>/model.gguf: the same weights as llama.cpp's converter
writes them (see write_gguf_model)
  llama3   Llama with Llama-3 rope_scaling (rope_type llama3, factor 32, low 1, high 4,
           original_max_position_embeddings 8192); expected also holds "inv_freq" (D/2)
  mistral  Mistral: sliding_window 4 (keys at positions > query - 4 only)
  qwen2    Qwen2: q/k/v biases (no o bias), tied embeddings
  phi3     Phi-3: fused qkv_proj (q rows, then k, then v) and gate_up_proj (gate rows, then
           up); PEFT targets qkv_proj, o_proj, gate_up_proj, down_proj
  gemma    Gemma: GeGLU with gelu_pytorch_tanh, RMSNorm scaled by (1 + w), embeddings scaled
           by sqrt(hidden_size) (as an fp32 number), tied lm_head, head_dim 16 with
           hidden_size 48 (so H*D != C)
"""
import json, math, os, sys
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ref_llama import write_safetensors, f32, make_batch, B, T, V  # noqa: E402

f64 = torch.float64
RANK, ALPHA = 4, 8.0
LLAMA3_SCALING = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                  "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}

BASE = dict(C=64, FF=96, L=2, H=4, KVH=2, D=16, eps=1e-5, theta=10000.0, tied=False,
            rope_scaling=None, window=0, qkv_bias=False, norm_offset=0.0, embed_scale=False,
            act="silu", fused=False)
VARIANTS = {
    "llama3": dict(arch="LlamaForCausalLM", model_type="llama", theta=10000.0,
                   rope_scaling=LLAMA3_SCALING, seed=2001),
    "mistral": dict(arch="MistralForCausalLM", model_type="mistral", window=4, seed=2002),
    "qwen2": dict(arch="Qwen2ForCausalLM", model_type="qwen2", theta=1000000.0, eps=1e-6,
                  qkv_bias=True, tied=True, seed=2003),
    "phi3": dict(arch="Phi3ForCausalLM", model_type="phi3", fused=True, KVH=4, seed=2004),
    "gemma": dict(arch="GemmaForCausalLM", model_type="gemma", C=48, eps=1e-6, tied=True,
                  norm_offset=1.0, embed_scale=True, act="gelu_tanh", seed=2005),
}


def targets_of(c):
    if c["fused"]:
        return ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
    return ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def module(l, tgt):
    return f"model.layers.{l}.{'self_attn' if tgt[0] in 'qkvo' else 'mlp'}.{tgt}"


def shape_of(c, tgt):  # (out, in)
    C, FF, H, KVH, D = c["C"], c["FF"], c["H"], c["KVH"], c["D"]
    return {"q_proj": (H * D, C), "k_proj": (KVH * D, C), "v_proj": (KVH * D, C),
            "qkv_proj": ((H + 2 * KVH) * D, C), "o_proj": (C, H * D), "gate_proj": (FF, C),
            "up_proj": (FF, C), "gate_up_proj": (2 * FF, C), "down_proj": (C, FF)}[tgt]


def make_weights(g, c):
    C = c["C"]
    # Gemma's norms hold w with the model using (1 + w): centre them on 0 there
    nw = lambda: (1.0 - c["norm_offset"]) + 0.1 * torch.randn(C, generator=g)
    w = {"model.embed_tokens.weight": torch.randn(V, C, generator=g) * (0.1 if c["tied"] else 0.02)}
    for l in range(c["L"]):
        w[f"model.layers.{l}.input_layernorm.weight"] = nw()
        w[f"model.layers.{l}.post_attention_layernorm.weight"] = nw()
        for tgt in targets_of(c):
            w[module(l, tgt) + ".weight"] = torch.randn(*shape_of(c, tgt), generator=g) * 0.08
        if c["qkv_bias"]:
            for tgt in ("q_proj", "k_proj", "v_proj"):
                w[module(l, tgt) + ".bias"] = torch.randn(shape_of(c, tgt)[0], generator=g) * 0.1
    w["model.norm.weight"] = nw()
    if not c["tied"]:
        w["lm_head.weight"] = torch.randn(V, C, generator=g) * 0.1
    return w


def make_lora(g, c):  # A (r,in), B (out,r), both non-zero
    a = {}
    for l in range(c["L"]):
        for tgt in targets_of(c):
            o, i = shape_of(c, tgt)
            a[module(l, tgt) + ".lora_A"] = torch.randn(RANK, i, generator=g) * 0.1
            a[module(l, tgt) + ".lora_B"] = torch.randn(o, RANK, generator=g) * 0.1
    return a


def inv_freq_of(c):
    """HF _compute_default_rope_parameters, then _compute_llama3_parameters when
    rope_scaling says llama3 (float64 here)."""
    D = c["D"]
    inv = c["theta"] ** (-torch.arange(0, D, 2, dtype=f64) / D)
    rs = c["rope_scaling"]
    if not rs:
        return inv
    factor, lo, hi = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
    old = rs["original_max_position_embeddings"]
    lo_wavelen, hi_wavelen = old / lo, old / hi
    wavelen = 2 * math.pi / inv
    out = torch.where(wavelen > lo_wavelen, inv / factor, inv)
    smooth = (old / wavelen - lo) / (hi - lo)
    smoothed = (1 - smooth) * out / factor + smooth * out
    medium = ~(wavelen < hi_wavelen) & ~(wavelen > lo_wavelen)
    out = torch.where(medium, smoothed, out)
    kinds = {"low": int((wavelen > lo_wavelen).sum()), "medium": int(medium.sum()),
             "high": int((wavelen < hi_wavelen).sum())}
    assert all(v > 0 for v in kinds.values()), kinds  # every branch is exercised
    return out


def rope(x, inv_freq):  # x (B,heads,T,D), HF rotate-half
    ang = torch.arange(x.shape[2], dtype=f64)[:, None] * inv_freq[None, :]
    emb = torch.cat([ang, ang], dim=-1)
    D = x.shape[-1]
    x1, x2 = x[..., : D // 2], x[..., D // 2:]
    return x * emb.cos() + torch.cat([-x2, x1], dim=-1) * emb.sin()


def gelu_tanh(x):  # gelu_pytorch_tanh
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def forward(w, lora, scale, ids, c):
    H, KVH, D, L = c["H"], c["KVH"], c["D"], c["L"]

    def lin(x, l, tgt):
        name = module(l, tgt)
        y = x @ w[name + ".weight"].T
        if name + ".bias" in w:
            y = y + w[name + ".bias"]
        A, Bm = lora[name + ".lora_A"], lora[name + ".lora_B"]
        return y + scale * ((x @ A.T) @ Bm.T)

    def norm(x, wt):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + c["eps"]) * (c["norm_offset"] + wt)

    nb, nt = ids.shape
    x = w["model.embed_tokens.weight"][ids]
    if c["embed_scale"]:
        x = x * f32(math.sqrt(c["C"]))  # HF: torch.tensor(hidden_size**0.5, dtype=x.dtype)
    pos = torch.arange(nt)
    mask = pos[None, :] <= pos[:, None]
    if c["window"]:
        mask &= pos[None, :] > pos[:, None] - c["window"]
    inv_freq = inv_freq_of(c)
    for l in range(L):
        h = norm(x, w[f"model.layers.{l}.input_layernorm.weight"])
        if c["fused"]:
            q, k, v = lin(h, l, "qkv_proj").split([H * D, KVH * D, KVH * D], dim=-1)
        else:
            q, k, v = lin(h, l, "q_proj"), lin(h, l, "k_proj"), lin(h, l, "v_proj")
        q = q.reshape(nb, nt, H, D).transpose(1, 2)
        k = k.reshape(nb, nt, KVH, D).transpose(1, 2)
        v = v.reshape(nb, nt, KVH, D).transpose(1, 2)
        q, k = rope(q, inv_freq), rope(k, inv_freq)
        k, v = k.repeat_interleave(H // KVH, dim=1), v.repeat_interleave(H // KVH, dim=1)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(D)
        att = att.masked_fill(~mask, float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(nb, nt, H * D)
        x = x + lin(y, l, "o_proj")
        h = norm(x, w[f"model.layers.{l}.post_attention_layernorm.weight"])
        if c["fused"]:
            gate, up = lin(h, l, "gate_up_proj").chunk(2, dim=-1)
        else:
            gate, up = lin(h, l, "gate_proj"), lin(h, l, "up_proj")
        act = F.silu(gate) if c["act"] == "silu" else gelu_tanh(gate)
        x = x + lin(act * up, l, "down_proj")
    x = norm(x, w["model.norm.weight"])
    return x @ w["model.embed_tokens.weight" if c["tied"] else "lm_head.weight"].T


def write_gguf_model(path, c, name, w32):
    """The same model as llama.cpp's converter writes it: GGUF names, `<arch>.` metadata,
    q/k rows permuted to adjacent pairs for llama, Gemma's norms stored as 1 + w, Phi-3's
    gate_up_proj as ffn_up, Llama-3's rope scaling as rope_freqs.weight (factors)."""
    from ref_ggml_quants import write_gguf
    arch = {"llama3": "llama", "qwen2": "qwen2", "gemma": "gemma", "phi3": "phi3"}[name]
    H, KVH, D = c["H"], c["KVH"], c["D"]

    def permute(w, heads):  # HF rotate-half rows -> GGUF adjacent pairs
        return w.reshape(heads, 2, D // 2, -1).transpose(1, 2).reshape(w.shape)

    names = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
             "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down",
             "qkv_proj": "attn_qkv", "gate_up_proj": "ffn_up"}
    t = []

    def add(n, x):
        x = x.float().contiguous()
        if n.endswith("norm.weight") and c["norm_offset"]:
            x = x + c["norm_offset"]
        t.append((n, 0, list(reversed(x.shape)), x.numpy().astype("<f4").tobytes()))

    add("token_embd.weight", w32["model.embed_tokens.weight"])
    for l in range(c["L"]):
        p = f"model.layers.{l}."
        add(f"blk.{l}.attn_norm.weight", w32[p + "input_layernorm.weight"])
        add(f"blk.{l}.ffn_norm.weight", w32[p + "post_attention_layernorm.weight"])
        for tgt in targets_of(c):
            x = w32[module(l, tgt) + ".weight"]
            if arch == "llama" and tgt in ("q_proj", "k_proj"):
                x = permute(x, H if tgt == "q_proj" else KVH)
            add(f"blk.{l}.{names[tgt]}.weight", x)
            if module(l, tgt) + ".bias" in w32:
                add(f"blk.{l}.{names[tgt]}.bias", w32[module(l, tgt) + ".bias"])
    add("output_norm.weight", w32["model.norm.weight"])
    if not c["tied"]:
        add("output.weight", w32["lm_head.weight"])
    if c["rope_scaling"]:
        plain = dict(c, rope_scaling=None)
        add("rope_freqs.weight", (inv_freq_of(plain) / inv_freq_of(c)).float())
    kv = [("general.architecture", "str", arch), ("general.alignment", "u32", 32),
          (arch + ".embedding_length", "u32", c["C"]), (arch + ".feed_forward_length", "u32", c["FF"]),
          (arch + ".block_count", "u32", c["L"]), (arch + ".attention.head_count", "u32", H),
          (arch + ".attention.head_count_kv", "u32", KVH), (arch + ".attention.key_length", "u32", D),
          (arch + ".attention.value_length", "u32", D), (arch + ".rope.dimension_count", "u32", D),
          (arch + ".context_length", "u32", 64),
          (arch + ".attention.layer_norm_rms_epsilon", "f32", c["eps"]),
          (arch + ".rope.freq_base", "f32", c["theta"])]
    write_gguf(path, kv, t)


def hf_config(c, name):
    cfg = {"architectures": [c["arch"]], "model_type": c["model_type"], "hidden_size": c["C"],
           "intermediate_size": c["FF"], "num_hidden_layers": c["L"],
           "num_attention_heads": c["H"], "num_key_value_heads": c["KVH"], "vocab_size": V,
           "rms_norm_eps": c["eps"], "rope_theta": c["theta"], "max_position_embeddings": 64,
           "hidden_act": "silu", "tie_word_embeddings": c["tied"], "torch_dtype": "float32",
           "bos_token_id": 1, "eos_token_id": 2}
    if c["rope_scaling"]:
        cfg["rope_scaling"] = c["rope_scaling"]
    if name == "mistral":
        cfg["sliding_window"] = c["window"]
    if name == "qwen2":
        cfg.update(use_sliding_window=False, sliding_window=32, max_window_layers=2)
    if name == "phi3":
        cfg.update(sliding_window=None, original_max_position_embeddings=64, rope_scaling=None,
                   attention_bias=False, resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0)
    if name == "gemma":
        cfg.update(head_dim=c["D"], hidden_act="gelu_pytorch_tanh",
                   hidden_activation="gelu_pytorch_tanh")
    return cfg


def variant(out, name):
    c = dict(BASE)
    c.update(VARIANTS[name])
    g = torch.Generator().manual_seed(c["seed"])
    d = os.path.join(out, name)
    os.makedirs(os.path.join(d, "model"), exist_ok=True)
    os.makedirs(os.path.join(d, "adapter"), exist_ok=True)
    w32 = make_weights(g, c)
    with open(os.path.join(d, "model", "config.json"), "w") as f:
        json.dump(hf_config(c, name), f, indent=2)
    write_safetensors(os.path.join(d, "model", "model.safetensors"), w32, {"format": "pt"})
    if name != "mistral":  # GGUF has no sliding window for llama-arch Mistral files
        write_gguf_model(os.path.join(d, "model.gguf"), c, name, w32)
    lora32 = make_lora(g, c)
    peft = lambda k: "base_model.model." + k + ".weight"
    write_safetensors(os.path.join(d, "adapter", "adapter_model.safetensors"),
                      {peft(k): v for k, v in lora32.items()}, {"format": "pt"})
    acfg = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": RANK, "lora_alpha": ALPHA,
            "target_modules": targets_of(c), "lora_dropout": 0.0, "use_rslora": False,
            "bias": "none", "fan_in_fan_out": False, "base_model_name_or_path": "../model",
            "inference_mode": True}
    with open(os.path.join(d, "adapter", "adapter_config.json"), "w") as f:
        json.dump(acfg, f, indent=2)

    w = {k: v.to(f64) for k, v in w32.items()}
    scale = ALPHA / RANK
    ids, tg = make_batch(g, [3, 0])
    lora = {k: v.to(f64).requires_grad_(True) for k, v in lora32.items()}
    logits = forward(w, lora, scale, ids, c)
    kept = int((tg >= 0).sum())
    loss = F.cross_entropy(logits.reshape(-1, V), tg.reshape(-1), ignore_index=-1,
                           reduction="sum") / kept
    loss.backward()
    # the feature under test must matter: logits without it differ by more than 1e-4 of
    # their largest magnitude (test_arch.c's floor is 5% of it, so 40x its tolerance)
    plain = dict(c, rope_scaling=None, window=0, qkv_bias=False, norm_offset=0.0,
                 embed_scale=False, act="silu")
    wp = {k: v for k, v in w.items() if not k.endswith(".bias")}
    if name == "gemma":  # (1 + w) norms read as w
        wp = {k: (v + 1 if k.endswith("norm.weight") else v) for k, v in wp.items()}
    if name != "phi3":
        with torch.no_grad():
            diff = (forward(wp, lora, scale, ids, plain) - logits).abs().max() / logits.abs().max()
        assert diff > 2e-4, (name, float(diff))
    else:
        diff = float("nan")

    exp = {"ids": ids.to(torch.int32), "targets": tg.to(torch.int32),
           "logits": logits.detach().float(), "loss": loss.detach().float().reshape(1),
           "inv_freq": inv_freq_of(c).float()}
    for k in lora32:
        exp["grad." + peft(k)] = lora[k].grad.float()
    meta = {"scale": repr(scale), "kept": kept, "targets": ",".join(targets_of(c))}
    write_safetensors(os.path.join(d, "expected.safetensors"), exp, meta)
    print(f"  ref_arch {name}: loss {loss.item():.6f} kept {kept}; logits differ from plain "
          f"Llama's by {float(diff):.2e} (rel)")


def main():
    if len(sys.argv) < 2:
        sys.exit("usage: ref_arch.py OUTDIR [VARIANT...]")
    torch.set_num_threads(1)
    for name in sys.argv[2:] or VARIANTS:
        variant(sys.argv[1], name)


if __name__ == "__main__":
    main()
