#!/usr/bin/env python3
"""PyTorch oracle for tests/test_reference.c: a tiny Llama (as HF LlamaForCausalLM) with LoRA
on q,k,v,o,gate,up,down, written out as a HF model dir + PEFT adapter dir, with the expected
logits, loss, LoRA gradients and a 5-step AdamW training run.

usage: /usr/bin/python3 tests/ref_llama.py OUTDIR
writes OUTDIR/{untied,tied,rslora,nf4}/{model/,adapter/,expected.safetensors}
The reference is computed in float64 from the float32 (tied: bf16) values written to disk.
The nf4 variant (QLoRA) writes float32 weights but computes the reference on what lora.c's
`--quant nf4` holds: every linear weight quantized and dequantized by tests/ref_nf4.py (an
independent re-implementation of bitsandbytes' NF4 with double quantization), embeddings and
lm_head rounded to bf16.
"""
import json, math, os, struct, sys
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ref_nf4  # noqa: E402

C, FF, L, H, KVH, V, MAXPOS = 64, 96, 2, 4, 2, 101, 64
D = C // H
EPS, THETA = 1e-5, 10000.0
RANK, ALPHA = 4, 8.0
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
B, T = 2, 12
STEPS, ACCUM, WARMUP = 5, 2, 2
LR, WD, BETAS, ADAM_EPS = 1e-2, 0.01, (0.9, 0.999), 1e-8
f64 = torch.float64


def f32(x):  # the float32 value C will see for a hyperparameter
    return float(torch.tensor(x, dtype=torch.float32))


def write_safetensors(path, tensors, metadata=None):
    """8-byte LE header length, JSON header (padded with spaces to 8 bytes), raw LE data."""
    header, blobs, off = {}, [], 0
    codes = {torch.float32: ("F32", torch.float32), torch.bfloat16: ("BF16", torch.int16),
             torch.int32: ("I32", torch.int32)}
    for name, t in tensors.items():
        dt, view = codes[t.dtype]
        arr = t.contiguous().view(view).numpy()
        raw = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": dt, "shape": list(t.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    if metadata:
        header["__metadata__"] = {k: str(v) for k, v in metadata.items()}
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def module(l, tgt):
    return f"model.layers.{l}.{'self_attn' if tgt[0] in 'qkvo' else 'mlp'}.{tgt}"


def shape_of(tgt):  # (out, in)
    return {"q_proj": (H * D, C), "k_proj": (KVH * D, C), "v_proj": (KVH * D, C),
            "o_proj": (C, H * D), "gate_proj": (FF, C), "up_proj": (FF, C),
            "down_proj": (C, FF)}[tgt]


def make_weights(g, tied):
    # untied: small embeddings (as real Llamas) so that rms_norm_eps visibly matters
    w = {"model.embed_tokens.weight": torch.randn(V, C, generator=g) * (0.1 if tied else 0.02)}
    for l in range(L):
        w[f"model.layers.{l}.input_layernorm.weight"] = 1 + 0.1 * torch.randn(C, generator=g)
        w[f"model.layers.{l}.post_attention_layernorm.weight"] = 1 + 0.1 * torch.randn(C, generator=g)
        for tgt in TARGETS:
            w[module(l, tgt) + ".weight"] = torch.randn(*shape_of(tgt), generator=g) * 0.08
    w["model.norm.weight"] = 1 + 0.1 * torch.randn(C, generator=g)
    if not tied:
        w["lm_head.weight"] = torch.randn(V, C, generator=g) * 0.1
    return w


def make_lora(g):  # A (r,in), B (out,r), both non-zero
    a = {}
    for l in range(L):
        for tgt in TARGETS:
            o, i = shape_of(tgt)
            a[module(l, tgt) + ".lora_A"] = torch.randn(RANK, i, generator=g) * 0.1
            a[module(l, tgt) + ".lora_B"] = torch.randn(o, RANK, generator=g) * 0.1
    return a


def rmsnorm(x, w):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * w


def rope(x):  # x (B,heads,T,D), HF rotate-half
    inv_freq = THETA ** (-torch.arange(0, D, 2, dtype=f64) / D)
    ang = torch.arange(x.shape[2], dtype=f64)[:, None] * inv_freq[None, :]
    emb = torch.cat([ang, ang], dim=-1)
    x1, x2 = x[..., : D // 2], x[..., D // 2:]
    return x * emb.cos() + torch.cat([-x2, x1], dim=-1) * emb.sin()


def forward(w, lora, scale, ids, tied):
    def lin(x, l, tgt):
        name = module(l, tgt)
        A, Bm = lora[name + ".lora_A"], lora[name + ".lora_B"]
        return x @ w[name + ".weight"].T + scale * ((x @ A.T) @ Bm.T)
    nb, nt = ids.shape
    x = w["model.embed_tokens.weight"][ids]
    mask = torch.ones(nt, nt, dtype=torch.bool).tril()
    for l in range(L):
        h = rmsnorm(x, w[f"model.layers.{l}.input_layernorm.weight"])
        q = lin(h, l, "q_proj").view(nb, nt, H, D).transpose(1, 2)
        k = lin(h, l, "k_proj").view(nb, nt, KVH, D).transpose(1, 2)
        v = lin(h, l, "v_proj").view(nb, nt, KVH, D).transpose(1, 2)
        q, k = rope(q), rope(k)
        k, v = k.repeat_interleave(H // KVH, dim=1), v.repeat_interleave(H // KVH, dim=1)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(D)
        att = att.masked_fill(~mask, float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(nb, nt, H * D)
        x = x + lin(y, l, "o_proj")
        h = rmsnorm(x, w[f"model.layers.{l}.post_attention_layernorm.weight"])
        x = x + lin(F.silu(lin(h, l, "gate_proj")) * lin(h, l, "up_proj"), l, "down_proj")
    x = rmsnorm(x, w["model.norm.weight"])
    return x @ w["model.embed_tokens.weight" if tied else "lm_head.weight"].T


def ce_sum(logits, targets):
    return F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1), ignore_index=-1,
                           reduction="sum")


def make_batch(g, prefix):
    """ids (B,T); targets = next token, -1 at the last position, on a prompt prefix of
    prefix[b] positions of row b and at a random ~15% of the rest."""
    ids = torch.randint(0, V, (B, T), generator=g)
    tg = torch.full((B, T), -1, dtype=torch.long)
    tg[:, :-1] = ids[:, 1:]
    drop = torch.rand(B, T, generator=g) < 0.15
    for b in range(B):
        drop[b, : prefix[b]] = True
    tg[drop] = -1
    return ids, tg


def cosine_lambda(step):  # HF get_cosine_schedule_with_warmup (num_cycles 0.5)
    if step < WARMUP:
        return step / max(1, WARMUP)
    progress = (step - WARMUP) / max(1, STEPS - WARMUP)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * 2.0 * 0.5 * progress)))


def train(w, lora0, scale, batches, tied, max_norm):
    params = {k: v.clone().requires_grad_(True) for k, v in lora0.items()}
    plist = list(params.values())
    opt = torch.optim.AdamW(plist, lr=f32(LR), betas=BETAS, eps=ADAM_EPS, weight_decay=f32(WD))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_lambda)
    losses, norms, lrs = [], [], []
    for step in range(STEPS):
        opt.zero_grad()
        micro = batches[step * ACCUM:(step + 1) * ACCUM]
        norm = sum(int((tg >= 0).sum()) for _, tg in micro)
        total = 0.0
        for ids, tg in micro:
            loss = ce_sum(forward(w, params, scale, ids, tied), tg) / norm
            loss.backward()
            total += loss.item()
        norms.append(float(torch.nn.utils.clip_grad_norm_(plist, max_norm)))
        lrs.append(sched.get_last_lr()[0])
        losses.append(total)
        opt.step()
        sched.step()
    return params, losses, norms, lrs


def qlora_view(w32):
    """The weights as `--quant nf4` holds them: linear weights NF4-dequantized, the
    embeddings and lm_head rounded to bf16, norms as they are."""
    w = {}
    for k, v in w32.items():
        if k.endswith("_proj.weight"):
            packed, absq, scale2, offset, code2, _, _ = ref_nf4.quantize_4bit_nf4_dq(v.numpy())
            deq = ref_nf4.dequantize(packed, absq, scale2, offset, code2, v.numel())
            w[k] = torch.from_numpy(deq.copy()).reshape(v.shape)
        elif k in ("model.embed_tokens.weight", "lm_head.weight"):
            w[k] = v.to(torch.bfloat16).to(torch.float32)
        else:
            w[k] = v
    return w


def variant(out, name, seed, tied, rslora, bf16, nf4=False):
    g = torch.Generator().manual_seed(seed)
    d = os.path.join(out, name)
    os.makedirs(os.path.join(d, "model"), exist_ok=True)
    os.makedirs(os.path.join(d, "adapter"), exist_ok=True)
    w32 = make_weights(g, tied)
    if bf16:
        w32 = {k: v.to(torch.bfloat16) for k, v in w32.items()}
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": C,
           "intermediate_size": FF, "num_hidden_layers": L, "num_attention_heads": H,
           "num_key_value_heads": KVH, "vocab_size": V, "rms_norm_eps": EPS,
           "rope_theta": THETA, "max_position_embeddings": MAXPOS, "hidden_act": "silu",
           "tie_word_embeddings": tied, "torch_dtype": "bfloat16" if bf16 else "float32"}
    with open(os.path.join(d, "model", "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    write_safetensors(os.path.join(d, "model", "model.safetensors"), w32, {"format": "pt"})
    lora32 = make_lora(g)
    peft = lambda k: "base_model.model." + k + ".weight"
    write_safetensors(os.path.join(d, "adapter", "adapter_model.safetensors"),
                      {peft(k): v for k, v in lora32.items()}, {"format": "pt"})
    acfg = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": RANK, "lora_alpha": ALPHA,
            "target_modules": TARGETS, "lora_dropout": 0.0, "use_rslora": rslora,
            "bias": "none", "fan_in_fan_out": False, "base_model_name_or_path": "../model",
            "inference_mode": True}
    with open(os.path.join(d, "adapter", "adapter_config.json"), "w") as f:
        json.dump(acfg, f, indent=2)

    w = {k: v.to(f64) for k, v in (qlora_view(w32) if nf4 else w32).items()}
    lora0 = {k: v.to(f64) for k, v in lora32.items()}
    scale = ALPHA / math.sqrt(RANK) if rslora else ALPHA / RANK
    ids, tg = make_batch(g, [3, 0])
    lora = {k: v.clone().requires_grad_(True) for k, v in lora0.items()}
    logits = forward(w, lora, scale, ids, tied)
    kept = int((tg >= 0).sum())
    loss = ce_sum(logits, tg) / kept
    loss.backward()

    batches = [make_batch(g, [2 + i % 3, i % 2 * 4]) for i in range(STEPS * ACCUM)]
    # max_grad_norm: a value that clips some steps but not all, away from every step's norm
    _, _, free_norms, _ = train(w, lora0, scale, batches, tied, float("inf"))
    srt = sorted(free_norms)
    max_norm = f32(0.5 * (srt[1] + srt[2]))
    params, losses, norms, lrs = train(w, lora0, scale, batches, tied, max_norm)
    n_clip = sum(n > max_norm for n in norms)
    assert 0 < n_clip < STEPS and min(abs(n / max_norm - 1) for n in norms) > 1e-3, norms

    exp = {"ids": ids.to(torch.int32), "targets": tg.to(torch.int32),
           "logits": logits.detach().float(), "loss": loss.detach().float().reshape(1),
           "train_ids": torch.stack([b[0] for b in batches]).to(torch.int32),
           "train_targets": torch.stack([b[1] for b in batches]).to(torch.int32),
           "train_loss": torch.tensor(losses, dtype=torch.float32),
           "train_grad_norm": torch.tensor(norms, dtype=torch.float32),
           "train_lr": torch.tensor(lrs, dtype=torch.float32)}
    for k in lora0:
        exp["grad." + peft(k)] = lora[k].grad.float()
        exp["final." + peft(k)] = params[k].detach().float()
    meta = {"scale": repr(scale), "lr": repr(f32(LR)), "weight_decay": repr(f32(WD)), "max_grad_norm": repr(max_norm),
            "steps": STEPS, "grad_accum": ACCUM, "warmup_steps": WARMUP, "kept": kept,
            "clipped_steps": n_clip}
    write_safetensors(os.path.join(d, "expected.safetensors"), exp, meta)
    print(f"{name}: loss {loss.item():.6f} kept {kept} max_norm {max_norm:.4f} "
          f"norms {['%.4f' % n for n in norms]} lrs {['%.5f' % x for x in lrs]} "
          f"train losses {['%.5f' % x for x in losses]}")


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: ref_llama.py OUTDIR")
    torch.set_num_threads(1)
    variant(sys.argv[1], "untied", 1234, tied=False, rslora=False, bf16=False)
    variant(sys.argv[1], "tied", 5678, tied=True, rslora=False, bf16=True)
    variant(sys.argv[1], "rslora", 91011, tied=False, rslora=True, bf16=False)
    variant(sys.argv[1], "nf4", 121314, tied=False, rslora=False, bf16=False, nf4=True)


if __name__ == "__main__":
    main()
