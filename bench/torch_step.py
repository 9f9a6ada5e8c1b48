#!/usr/bin/env python3
"""PyTorch 1.13 reference for `make bench`: ONE LoRA training step (rank 8, alpha 16, LoRA on
q,k,v,o,gate,up,down, AdamW) of a random-weight Llama with the frozen base in fp32, the same
step bench/bench_step.c times for lora.c.

usage: /usr/bin/python3 bench/torch_step.py SHAPE B T STEPS DTYPE THREADS
  SHAPE   smollm2-135m | tinyllama-1.1b
  DTYPE   fp32 | bf16   (bf16 = torch.autocast("cpu", dtype=torch.bfloat16) around the forward)
  THREADS torch.set_num_threads(THREADS)
Prints one line of key=value pairs: the fastest warm step (the first step is excluded; the
median is med_s),
tokens/s, peak RSS (ru_maxrss). Run each configuration in its own process.

The model is a plain hand-written Llama (as tests/ref_llama.py, which is fixed to a tiny
float64 shape): RMSNorm, HF rotate-half RoPE, GQA causal attention, SwiGLU, tied or untied
lm_head, mean cross-entropy over next tokens.
"""
import math, resource, sys, time
import torch
import torch.nn.functional as F

SHAPES = {  # dim, layers, heads, kv heads, ffn, vocab, tied
    "smollm2-135m": (576, 30, 9, 3, 1536, 49152, True),
    "tinyllama-1.1b": (2048, 22, 32, 4, 5632, 32000, False),
}
RANK, ALPHA, EPS, THETA = 8, 16.0, 1e-5, 10000.0


class LoraLinear(torch.nn.Module):
    def __init__(self, fin, fout):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(fout, fin) * 0.02, requires_grad=False)
        self.A = torch.nn.Parameter(torch.randn(RANK, fin) / math.sqrt(fin))
        self.B = torch.nn.Parameter(torch.zeros(fout, RANK))
        self.scale = ALPHA / RANK

    def forward(self, x):
        return F.linear(x, self.weight) + F.linear(F.linear(x, self.A), self.B) * self.scale


class RMSNorm(torch.nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(dim), requires_grad=False)

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + EPS)).type_as(x) * self.weight


def rope(x, cos, sin):  # x (B,heads,T,D), HF rotate-half
    d = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., d:], x[..., :d]], dim=-1) * sin


class Block(torch.nn.Module):
    def __init__(self, C, H, KV, FF):
        super().__init__()
        self.H, self.KV, self.D = H, KV, C // H
        self.n1, self.n2 = RMSNorm(C), RMSNorm(C)
        self.q, self.k = LoraLinear(C, H * self.D), LoraLinear(C, KV * self.D)
        self.v, self.o = LoraLinear(C, KV * self.D), LoraLinear(H * self.D, C)
        self.gate, self.up, self.down = LoraLinear(C, FF), LoraLinear(C, FF), LoraLinear(FF, C)

    def forward(self, x, cos, sin, mask):
        B, T, _ = x.shape
        h = self.n1(x)
        q = self.q(h).view(B, T, self.H, self.D).transpose(1, 2)
        k = self.k(h).view(B, T, self.KV, self.D).transpose(1, 2)
        v = self.v(h).view(B, T, self.KV, self.D).transpose(1, 2)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        k = k.repeat_interleave(self.H // self.KV, dim=1)
        v = v.repeat_interleave(self.H // self.KV, dim=1)
        att = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(self.D))
        att = att.masked_fill(mask, float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, self.H * self.D)
        x = x + self.o(y)
        h = self.n2(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


class Llama(torch.nn.Module):
    def __init__(self, C, L, H, KV, FF, V, tied):
        super().__init__()
        self.emb = torch.nn.Parameter(torch.randn(V, C) * 0.02, requires_grad=False)
        self.blocks = torch.nn.ModuleList(Block(C, H, KV, FF) for _ in range(L))
        self.norm = RMSNorm(C)
        self.lm_head = self.emb if tied else torch.nn.Parameter(torch.randn(V, C) * 0.02,
                                                                requires_grad=False)
        D = C // H
        self.inv_freq = THETA ** (-torch.arange(0, D, 2, dtype=torch.float32) / D)

    def forward(self, ids, targets):
        T = ids.shape[1]
        ang = torch.arange(T, dtype=torch.float32)[:, None] * self.inv_freq[None, :]
        ang = torch.cat([ang, ang], dim=-1)
        cos, sin = ang.cos(), ang.sin()
        mask = torch.ones(T, T, dtype=torch.bool).triu(1)
        x = F.embedding(ids, self.emb)
        for b in self.blocks:
            x = b(x, cos, sin, mask)
        logits = F.linear(self.norm(x), self.lm_head)
        return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.view(-1))


def main():
    shape, B, T, steps, dtype, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), \
        int(sys.argv[4]), sys.argv[5], int(sys.argv[6])
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    C, L, H, KV, FF, V, tied = SHAPES[shape]
    with torch.no_grad():
        model = Llama(C, L, H, KV, FF, V, tied)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
    ids = torch.randint(0, V, (B, T + 1))
    x, y = ids[:, :-1].contiguous(), ids[:, 1:].contiguous()
    times, loss = [], 0.0
    for _ in range(steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        if dtype == "bf16":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = model(x, y)
        else:
            out = model(x, y)
        out.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        times.append(time.perf_counter() - t0)
        loss = out.item()
        print(f"  step {len(times) - 1}: {times[-1]:.3f} s (loss {loss:.4f})", file=sys.stderr)
    warm = sorted(times[1:]) if len(times) > 1 else times
    med, best = warm[len(warm) // 2], warm[0]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(f"mode=torch dtype={dtype} threads={threads} B={B} T={T} step_s={best:.4f} med_s={med:.4f} "
          f"first_s={times[0]:.4f} tok_s={B * T / best:.2f} peak_rss_mb={rss:.1f} loss={loss:.4f}")


if __name__ == "__main__":
    main()
