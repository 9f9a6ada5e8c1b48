#!/usr/bin/python3
# Reference for tests/test_quant.c: an independent numpy/torch re-implementation of
# bitsandbytes' quantize_4bit(W, blocksize=64, quant_type="nf4", compress_statistics=True)
# (CUDA kernel semantics: kQuantizeBlockwise + dQuantizeNF4 for the weights,
# create_dynamic_map + kQuantizeBlockwise/dQuantize for the absmax values) and of
# dequantize_4bit.
# usage: ref_nf4.py DIR            DIR/cases.txt holds "name rows cols" lines and
#                                  DIR/<name>.w.f32 the row-major fp32 weights; writes
#                                  DIR/codebook.f32 (16), DIR/dynmap.f32 (256) and per case
#                                  <name>.packed.u8, .absq.u8, .scale2.f32, .offset.f32,
#                                  .deq.f32
#        ref_nf4.py --emit-c-table print the dynamic map as C hex-float literals
import re
import sys
from fractions import Fraction

import numpy as np
import torch

f32 = np.float32

# bitsandbytes' NF4 values as written in functional.py (get_4bit_type) and the CUDA LUT.
NF4 = np.array([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
                -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
                0.07958029955625534, 0.16093020141124725, 0.24611230194568634,
                0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                0.7229568362236023, 1.0], dtype=np.float32)

# The thresholds of dQuantizeNF4, as the decimal float literals of kernels.cu ("...f").
# A C/CUDA compiler rounds such a literal straight to the nearest float32; going through
# a double first (np.float32(0.8614784181118011)) gives a different float for 4 of them,
# so round exactly here.
TH_DEC = ["-0.8480964004993439", "-0.6106329262256622", "-0.4599952697753906",
          "-0.33967943489551544", "-0.23460740596055984", "-0.13791173323988914",
          "-0.045525018125772476", "0.03979014977812767", "0.1202552504837513",
          "0.2035212516784668", "0.2920137718319893", "0.3893125355243683",
          "0.5016634166240692", "0.6427869200706482", "0.8614784181118011"]


def decimal_to_f32(s):
    x = Fraction(s)
    c = f32(float(x))
    cands = [np.nextafter(c, f32(-np.inf)), c, np.nextafter(c, f32(np.inf))]
    dist = [abs(Fraction(float(v)) - x) for v in cands]
    best = min(dist)
    picks = [v for v, d in zip(cands, dist) if d == best]
    if len(picks) > 1:  # exact tie: round half to even mantissa
        picks = [v for v in picks if (np.array(v, dtype=np.float32).view(np.uint32) & 1) == 0]
    return f32(picks[0])


TH = [decimal_to_f32(s) for s in TH_DEC]


def quantize_nf4(x):
    """dQuantizeNF4's decision tree, literally."""
    t = TH
    w = np.where
    return w(x > t[7],
             w(x > t[11],
               w(x > t[13], w(x > t[14], 15, 14), w(x > t[12], 13, 12)),
               w(x > t[9], w(x > t[10], 11, 10), w(x > t[8], 9, 8))),
             w(x > t[3],
               w(x > t[5], w(x > t[6], 7, 6), w(x > t[4], 5, 4)),
               w(x > t[1], w(x > t[2], 3, 2), w(x > t[0], 1, 0)))).astype(np.uint8)


def create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8):
    """bitsandbytes.functional.create_dynamic_map, with torch's float32 linspace."""
    data = []
    non_sign_bits = total_bits - 1
    additional_items = 2 ** (non_sign_bits - max_exponent_bits) - 1
    for i in range(max_exponent_bits):
        fraction_items = int(2 ** (i + non_sign_bits - max_exponent_bits) + 1 if signed
                             else 2 ** (i + non_sign_bits - max_exponent_bits + 1) + 1)
        boundaries = torch.linspace(0.1, 1, fraction_items)
        means = (boundaries[:-1] + boundaries[1:]) / 2.0
        data += ((10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
        if signed:
            data += (-(10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
    assert additional_items == 0
    data.append(0)
    data.append(1.0)
    assert len(data) == 2 ** total_bits
    data.sort()
    return torch.tensor(data, dtype=torch.float32).numpy()


def dquantize8(code, x):
    """kernels.cu dQuantize<0>: 7-step binary search from pivot 127, then midpoint rule."""
    shape = x.shape
    pivot = np.full(shape, 127, dtype=np.int64)
    upper_p = np.full(shape, 255, dtype=np.int64)
    lower_p = np.zeros(shape, dtype=np.int64)
    lower = np.full(shape, -1.0, dtype=np.float32)
    upper = np.full(shape, 1.0, dtype=np.float32)
    val = code[pivot]
    i = 64
    while i > 0:
        gt = x > val
        lower_p = np.where(gt, pivot, lower_p)
        lower = np.where(gt, val, lower)
        upper_p = np.where(gt, upper_p, pivot)
        upper = np.where(gt, upper, val)
        pivot = np.where(gt, pivot + i, pivot - i)
        val = code[pivot]
        i >>= 1
    upper = np.where(upper_p == 255, code[255], upper).astype(np.float32)
    lower = np.where(lower_p == 0, code[0], lower).astype(np.float32)
    gt = x > val
    mid_up = ((upper + val) * f32(0.5)).astype(np.float32)
    mid_lo = ((lower + val) * f32(0.5)).astype(np.float32)
    res = np.where(gt, np.where(x > mid_up, upper_p, pivot), np.where(x < mid_lo, lower_p, pivot))
    return res.astype(np.uint8)


def blockwise_absmax(x, bs):
    """x zero-padded to whole blocks of bs -> (blocks, bs) values and their absmax."""
    nb = (x.size + bs - 1) // bs
    pad = np.zeros(nb * bs, dtype=np.float32)
    pad[:x.size] = x
    blocks = pad.reshape(nb, bs)
    return blocks, np.abs(blocks).max(axis=1).astype(np.float32)


def quantize_4bit_nf4_dq(w):
    n = w.size
    blocks, absmax = blockwise_absmax(w.reshape(-1), 64)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = (f32(1.0) / absmax).astype(np.float32)          # 1.0f / local_abs_max
        ratio = (blocks * inv[:, None]).astype(np.float32)
    # An all-zero block gives 0 * inf = NaN; bitsandbytes' tree sends NaN to code 0 (-1.0),
    # which after double quantization dequantizes to -absmax' != 0. lora.c's one deliberate
    # difference: such values get the code of 0.0 (7), so zero blocks stay exactly zero.
    ratio[np.isnan(ratio)] = 0.0
    codes = quantize_nf4(ratio).reshape(-1)
    if codes.size % 2:
        codes = np.append(codes, 0)
    packed = ((codes[0::2] << 4) | codes[1::2]).astype(np.uint8)[: (n + 1) // 2]
    # double quantization: offset = mean (serial float64 sum, rounded once), then 8-bit
    # blockwise quantization (blocks of 256) of the centred values with the dynamic map
    offset = f32(np.cumsum(absmax.astype(np.float64))[-1] / absmax.size)
    centred = (absmax - offset).astype(np.float32)
    code2 = create_dynamic_map(True)
    blocks2, scale2 = blockwise_absmax(centred, 256)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv2 = (f32(1.0) / scale2).astype(np.float32)
        absq = dquantize8(code2, (blocks2 * inv2[:, None]).astype(np.float32)).reshape(-1)
    absq = absq[: absmax.size]
    torch_mean = absmax_torch_mean(absmax)
    return packed, absq, scale2, offset, code2, absmax, torch_mean


def absmax_torch_mean(absmax):
    return f32(torch.from_numpy(absmax).mean().item())


def dequantize(packed, absq, scale2, offset, code2, n):
    codes = np.empty(packed.size * 2, dtype=np.uint8)
    codes[0::2] = packed >> 4
    codes[1::2] = packed & 15
    codes = codes[:n]
    blk2 = np.arange(absq.size) // 256
    absmax = (code2[absq] * scale2[blk2]).astype(np.float32)   # dequantize_blockwise
    absmax = (absmax + offset).astype(np.float32)              # absmax += offset
    blk = np.arange(n) // 64
    return (NF4[codes] * absmax[blk]).astype(np.float32)


def main():
    if len(sys.argv) == 2 and sys.argv[1] == "--emit-c-table":
        m = create_dynamic_map(True)
        for i in range(0, 256, 4):
            lits = [re.sub(r"\.?0*p", "p", float(v).hex()) + "f" for v in m[i:i + 4]]
            print("    " + ", ".join(lits) + ",")
        return
    d = sys.argv[1]
    NF4.tofile(f"{d}/codebook.f32")
    create_dynamic_map(True).tofile(f"{d}/dynmap.f32")
    with open(f"{d}/cases.txt") as f:
        cases = [line.split() for line in f if line.strip()]
    for name, rows, cols in cases:
        n = int(rows) * int(cols)
        w = np.fromfile(f"{d}/{name}.w.f32", dtype=np.float32)
        assert w.size == n, (name, w.size, n)
        packed, absq, scale2, offset, code2, absmax, tmean = quantize_4bit_nf4_dq(w)
        deq = dequantize(packed, absq, scale2, offset, code2, n)
        packed.tofile(f"{d}/{name}.packed.u8")
        absq.tofile(f"{d}/{name}.absq.u8")
        scale2.astype(np.float32).tofile(f"{d}/{name}.scale2.f32")
        np.array([offset], dtype=np.float32).tofile(f"{d}/{name}.offset.f32")
        deq.tofile(f"{d}/{name}.deq.f32")
        # information only: true nearest codebook value vs the decision tree, and how far
        # torch's float32 mean (what bitsandbytes calls) is from our float64 mean
        with np.errstate(divide="ignore", invalid="ignore"):
            blocks, am = blockwise_absmax(w, 64)
            xn = (blocks * (f32(1.0) / am)[:, None]).astype(np.float32).reshape(-1)[:n]
        ok = np.isfinite(xn)
        nearest = np.abs(xn[ok, None] - NF4[None, :]).argmin(axis=1)
        tree = quantize_nf4(xn[ok])
        ulps = abs(int(np.array(tmean).view(np.int32)) - int(np.array(offset).view(np.int32)))
        err = deq - w
        rel = np.sqrt((err.astype(np.float64) ** 2).sum() / max((w.astype(np.float64) ** 2).sum(), 1e-300))
        print(f"ref_nf4 {name}: {rows}x{cols} tree!=argmin {(nearest != tree).sum()}, "
              f"torch mean differs by {ulps} ulp, mean|err| {np.abs(err).mean():.4g}, rel rms {rel:.4f}")


if __name__ == "__main__":
    main()
