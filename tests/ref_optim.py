#!/usr/bin/python3
# Reference for tests/test_optim.c: torch.optim.AdamW + LambdaLR (HF warmup schedules) +
# torch.nn.utils.clip_grad_norm_ over the parameters and gradients the C test wrote.
# usage: ref_optim.py DIR
#   reads  DIR/spec.txt ("key value..." lines), DIR/init_<i>.f32, DIR/grads.f32
#          (for each step, for each of 2 micro-batches, for each parameter: n floats)
#   writes DIR/param_<i>.f32, DIR/m_<i>.f32, DIR/v_<i>.f32 (after all steps),
#          DIR/norms.f32 (clip_grad_norm_ result per step), DIR/lrs.f64 (lr per step),
#          DIR/sched.txt ("kind step warmup total multiplier" per line, HF formulas)
import math
import sys

import numpy as np
import torch


# The lambdas of transformers.optimization.get_{constant,linear,cosine}_schedule_with_warmup
def hf_lambda(kind, warmup, total, num_cycles=0.5):
    def constant(step):
        if step < warmup:
            return float(step) / float(max(1.0, warmup))
        return 1.0

    def linear(step):
        if step < warmup:
            return float(step) / float(max(1, warmup))
        return max(0.0, float(total - step) / float(max(1, total - warmup)))

    def cosine(step):
        if step < warmup:
            return float(step) / float(max(1, warmup))
        progress = float(step - warmup) / float(max(1, total - warmup))
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * float(num_cycles) * 2.0 * progress)))

    return {"constant": constant, "linear": linear, "cosine": cosine}[kind]


def main():
    d = sys.argv[1]
    spec = {}
    shapes = []
    for line in open(f"{d}/spec.txt"):
        k, *vals = line.split()
        if k == "shape":
            shapes.append([int(x) for x in vals])
        else:
            spec[k] = vals[0]
    steps, warmup = int(spec["steps"]), int(spec["warmup"])
    lr, wd, max_norm = float(spec["lr"]), float(spec["wd"]), float(spec["max_norm"])
    betas = (float(spec["beta1"]), float(spec["beta2"]))
    eps = float(spec["eps"])

    params = []
    for i, s in enumerate(shapes):
        a = np.fromfile(f"{d}/init_{i}.f32", dtype="<f4").reshape(s)
        params.append(torch.nn.Parameter(torch.from_numpy(a.copy())))
    sizes = [int(np.prod(s)) for s in shapes]
    grads = np.fromfile(f"{d}/grads.f32", dtype="<f4")
    assert grads.size == steps * 2 * sum(sizes), "grads.f32 has the wrong size"

    opt = torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=wd)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, hf_lambda("cosine", warmup, steps))
    norms, lrs = [], []
    off = 0
    for _ in range(steps):
        opt.zero_grad()
        micro = []
        for _m in range(2):
            gs = []
            for p, n in zip(params, sizes):
                gs.append(grads[off:off + n].reshape(p.shape))
                off += n
            micro.append(gs)
        for i, p in enumerate(params):
            p.grad = torch.from_numpy(micro[0][i] + micro[1][i])  # accumulate 2 micro-batches
            p.grad.mul_(0.5)                                       # grads_scale(1/accum)
        norms.append(float(torch.nn.utils.clip_grad_norm_(params, max_norm)))
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()

    for i, p in enumerate(params):
        st = opt.state[p]
        p.detach().numpy().astype("<f4").tofile(f"{d}/param_{i}.f32")
        st["exp_avg"].numpy().astype("<f4").tofile(f"{d}/m_{i}.f32")
        st["exp_avg_sq"].numpy().astype("<f4").tofile(f"{d}/v_{i}.f32")
    np.array(norms, dtype="<f4").tofile(f"{d}/norms.f32")
    np.array(lrs, dtype="<f8").tofile(f"{d}/lrs.f64")

    with open(f"{d}/sched.txt", "w") as f:
        for kind in ("constant", "linear", "cosine"):
            for warm, total in ((3, 10), (0, 10), (5, 5), (100, 1000)):
                for step in sorted({0, 1, warm - 1, warm, warm + 1, (warm + total) // 2,
                                    total - 1, total, total + 3}):
                    if step < 0:
                        continue
                    mult = hf_lambda(kind, warm, total)(step)
                    f.write(f"{kind} {step} {warm} {total} {mult!r}\n")


if __name__ == "__main__":
    main()
