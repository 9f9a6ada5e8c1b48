#!/usr/bin/python3
"""PyTorch oracle for tests/test_autograd.c.

Usage: ref_autograd.py IN OUT
IN holds records (int32 ndim, int64 dims[ndim], float32 data) written by the C test, case
after case (see CASES below for the order). For each case this computes, in float64 with the
reference formulations (HF LlamaRMSNorm / rotate_half / repeat_kv attention, Meta complex
RoPE, F.cross_entropy, PEFT LoRA), the output and the gradients of L = sum(out * r) w.r.t.
every input, and writes them to OUT in the same record format: out, then one gradient per
input in input order.
"""
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as F


def read_records(path):
    recs = []
    with open(path, "rb") as f:
        data = f.read()
    off = 0
    while off < len(data):
        (ndim,) = struct.unpack_from("<i", data, off)
        off += 4
        dims = struct.unpack_from("<%dq" % ndim, data, off)
        off += 8 * ndim
        n = int(np.prod(dims))
        arr = np.frombuffer(data, dtype="<f4", count=n, offset=off).reshape(dims)
        off += 4 * n
        recs.append(torch.tensor(arr.astype(np.float64)))
    return recs


def write_records(path, arrays):
    with open(path, "wb") as f:
        for a in arrays:
            a = a.detach().to(torch.float32).numpy()
            if a.ndim == 0:
                a = a.reshape(1)
            f.write(struct.pack("<i", a.ndim))
            f.write(struct.pack("<%dq" % a.ndim, *a.shape))
            f.write(a.astype("<f4").tobytes())


def rope_half(x, meta, inv_freq):
    B, T, H, D, pos0 = [int(v) for v in meta]
    q = x.view(B, T, H, D).transpose(1, 2)  # (B,H,T,D) as in HF
    pos = torch.arange(pos0, pos0 + T, dtype=torch.float64)
    freqs = torch.outer(pos, inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos(), emb.sin()

    def rotate_half(v):
        v1, v2 = v[..., : D // 2], v[..., D // 2:]
        return torch.cat((-v2, v1), dim=-1)

    out = q * cos + rotate_half(q) * sin
    return out.transpose(1, 2).reshape(B, T, H * D)


def rope_adjacent(x, meta, inv_freq):
    B, T, H, D, pos0 = [int(v) for v in meta]
    pos = torch.arange(pos0, pos0 + T, dtype=torch.float64)
    freqs_cis = torch.polar(torch.ones(T, D // 2, dtype=torch.float64), torch.outer(pos, inv_freq))
    xc = torch.view_as_complex(x.view(B, T, H, D // 2, 2).contiguous())
    out = torch.view_as_real(xc * freqs_cis.view(1, T, 1, D // 2))
    return out.reshape(B, T, H * D)


def attention(q, k, v, meta):
    B, Tq, Tk, H, KVH, D, window = [int(x) for x in meta]
    Q = q.view(B, Tq, H, D).transpose(1, 2)
    K = k.view(B, Tk, KVH, D).transpose(1, 2).repeat_interleave(H // KVH, dim=1)
    V = v.view(B, Tk, KVH, D).transpose(1, 2).repeat_interleave(H // KVH, dim=1)
    s = Q @ K.transpose(-1, -2) / D ** 0.5
    qpos = torch.arange(Tq).view(Tq, 1) + (Tk - Tq)
    j = torch.arange(Tk).view(1, Tk)
    vis = j <= qpos
    if window > 0:
        vis = vis & (j > qpos - window)
    s = s.masked_fill(~vis, float("-inf"))
    p = torch.softmax(s, dim=-1)
    return (p @ V).transpose(1, 2).reshape(B, Tq, H * D)


def main():
    recs = read_records(sys.argv[1])
    outs = []

    def run(fn, inputs, r):
        xs = [t.clone().requires_grad_(True) for t in inputs]
        out = fn(*xs)
        (out * r.reshape(out.shape)).sum().backward()
        outs.append(out)
        outs.extend(x.grad for x in xs)

    it = iter(recs)
    nx = lambda: next(it)  # noqa: E731
    # rope, both styles: x, inv_freq, meta, r_half, r_adjacent
    x, inv_freq, meta, r1, r2 = nx(), nx(), nx(), nx(), nx()
    run(lambda x: rope_half(x, meta, inv_freq), [x], r1)
    run(lambda x: rope_adjacent(x, meta, inv_freq), [x], r2)
    # attention: q, k, v, meta, r
    q, k, v, meta, r = nx(), nx(), nx(), nx(), nx()
    run(lambda q, k, v: attention(q, k, v, meta), [q, k, v], r)
    # rmsnorm: x, w, eps, r
    x, w, eps, r = nx(), nx(), nx(), nx()
    run(lambda x, w: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + float(eps[0])) * w, [x, w], r)
    # cross-entropy: logits, targets, norm, r
    logits, targets, norm, r = nx(), nx(), nx(), nx()
    tg = targets.long()
    keep = tg >= 0
    run(lambda l: F.cross_entropy(l[keep], tg[keep], reduction="sum") / float(norm[0]), [logits], r)
    # LoRA linear: x, W, A, B, scale, r
    x, W, A, B, scale, r = nx(), nx(), nx(), nx(), nx(), nx()
    run(lambda x, A, B: F.linear(x, W) + float(scale[0]) * F.linear(F.linear(x, A), B), [x, A, B], r)
    # SwiGLU: gate, up, r
    g, u, r = nx(), nx(), nx()
    run(lambda g, u: F.silu(g) * u, [g, u], r)
    write_records(sys.argv[2], outs)


if __name__ == "__main__":
    main()
