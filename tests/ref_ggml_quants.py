#!/usr/bin/python3
# Reference for tests/test_ggml_quants.c: an independent numpy implementation of the ggml
# block formats Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K (layouts of llama.cpp's
# ggml-common.h; values as its dequantize_row_*: the same float32 operations in the same
# order), simple quantizers for each (llama.cpp's quantize_row_*_ref for the 32-blocks;
# plain min/max scales packed into the documented super-block layout for the K-quants),
# and a hand-written GGUF v3 writer.
#
# usage: ref_ggml_quants.py DIR
#   DIR/quants.gguf    for each type T and case C: tensor "T.C.q" of ggml type T and
#                      "T.C.ref" (F32, same shape): its dequantized values
#   DIR/bad_cols.gguf  a Q4_K tensor whose row length (100) is not a multiple of 256
# Exits non-zero if a quantize -> dequantize round trip is not close to the weights (which
# would mean the quantizer and the dequantizer disagree about the layout).
import os
import struct
import sys

import numpy as np

f32, f16, u8 = np.float32, np.float16, np.uint8

Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K, F32 = 2, 3, 6, 7, 8, 12, 13, 14, 0
NAMES = {Q4_0: "Q4_0", Q4_1: "Q4_1", Q5_0: "Q5_0", Q5_1: "Q5_1", Q8_0: "Q8_0",
         Q4_K: "Q4_K", Q5_K: "Q5_K", Q6_K: "Q6_K"}
QK = {Q4_0: 32, Q4_1: 32, Q5_0: 32, Q5_1: 32, Q8_0: 32, Q4_K: 256, Q5_K: 256, Q6_K: 256}
BYTES = {Q4_0: 18, Q4_1: 20, Q5_0: 22, Q5_1: 24, Q8_0: 34, Q4_K: 144, Q5_K: 176, Q6_K: 210}
# byte offsets of the fp16 scale fields in a block
SCALE_OFFS = {Q4_0: [0], Q4_1: [0, 2], Q5_0: [0], Q5_1: [0, 2], Q8_0: [0], Q4_K: [0, 2],
              Q5_K: [0, 2], Q6_K: [208]}


def half_bytes(v):  # float32 array (n,) -> (n, 2) bytes of the nearest fp16 (ties to even)
    return np.asarray(v, f32).astype(f16).view(u8).reshape(-1, 2)


def half_at(blk, off):  # (nb, bytes) -> fp16 at byte offset off as float32 (exact)
    return np.ascontiguousarray(blk[:, off:off + 2]).view(f16).reshape(-1).astype(f32)


def roundf(v):  # C roundf: half away from zero
    return np.sign(v) * np.floor(np.abs(v) + f32(0.5))


def safe_inv(d):
    with np.errstate(divide="ignore"):
        return np.where(d != 0, f32(1) / np.where(d != 0, d, f32(1)), f32(0)).astype(f32)


def signed_absmax(x):  # per row of x: the value of largest magnitude (first on ties)
    return x[np.arange(x.shape[0]), np.argmax(np.abs(x), axis=1)]


# ---- quantizers: x (n,) float32 -> (nb, bytes) uint8 ------------------------------------

def quant_q8_0(x):
    x = x.reshape(-1, 32)
    d = (np.abs(x).max(axis=1) / f32(127)).astype(f32)
    q = roundf(x * safe_inv(d)[:, None]).astype(np.int8)
    return np.concatenate([half_bytes(d), q.view(u8)], axis=1)


def quant_q4_0(x, nbits=4):  # also Q5_0 with nbits = 5
    x = x.reshape(-1, 32)
    half = 1 << (nbits - 1)
    d = (signed_absmax(x) / f32(-half)).astype(f32)
    v = x * safe_inv(d)[:, None] + f32(half + 0.5)
    q = np.minimum((1 << nbits) - 1, np.trunc(v)).astype(np.int64)  # (int8_t) cast, then MIN
    return pack_32(d, None, q, nbits)


def quant_q4_1(x, nbits=4):  # also Q5_1 with nbits = 5
    x = x.reshape(-1, 32)
    mn, mx = x.min(axis=1), x.max(axis=1)
    d = ((mx - mn) / f32((1 << nbits) - 1)).astype(f32)
    v = (x - mn[:, None]) * safe_inv(d)[:, None] + f32(0.5)
    q = np.minimum((1 << nbits) - 1, np.trunc(v)).astype(np.int64)
    return pack_32(d, mn, q, nbits)


def pack_32(d, m, q, nbits):  # d, m (nb,), q (nb, 32) codes -> Q4_0/Q4_1/Q5_0/Q5_1 blocks
    parts = [half_bytes(d)]
    if m is not None:
        parts.append(half_bytes(m))
    if nbits == 5:
        hbit = (q >> 4) & 1
        qh = (hbit.astype(np.uint64) << np.arange(32, dtype=np.uint64)).sum(axis=1).astype(np.uint32)
        parts.append(qh.astype("<u4").view(u8).reshape(-1, 4))
    parts.append(((q[:, :16] & 15) | ((q[:, 16:] & 15) << 4)).astype(u8))
    return np.concatenate(parts, axis=1)


def pack_k_scales(ls, lm):  # (nb, 8) 6-bit scales and mins -> (nb, 12) bytes
    out = np.zeros((ls.shape[0], 12), np.int64)
    for j in range(4):
        out[:, j] = ls[:, j] | ((ls[:, j + 4] >> 4) << 6)
        out[:, j + 4] = lm[:, j] | ((lm[:, j + 4] >> 4) << 6)
        out[:, j + 8] = (ls[:, j + 4] & 15) | ((lm[:, j + 4] & 15) << 4)
    return out.astype(u8)


def quant_qk(x, nbits):  # Q4_K (nbits 4) / Q5_K (nbits 5)
    nmax = (1 << nbits) - 1
    xs = x.reshape(-1, 8, 32)
    mn = np.minimum(xs.min(axis=2), f32(0))
    scale = ((xs.max(axis=2) - mn) / f32(nmax)).astype(f32)
    the_min = (-mn).astype(f32)
    max_scale, max_min = scale.max(axis=1), the_min.max(axis=1)
    ls = np.minimum(63, np.rint(safe_inv(max_scale / f32(63))[:, None] * scale)).astype(np.int64)
    lm = np.minimum(63, np.rint(safe_inv(max_min / f32(63))[:, None] * the_min)).astype(np.int64)
    dh, dminh = half_bytes(max_scale / f32(63)), half_bytes(max_min / f32(63))
    d = dh.copy().view(f16).reshape(-1).astype(f32)
    dmin = dminh.copy().view(f16).reshape(-1).astype(f32)
    dq = d[:, None] * ls.astype(f32)
    dm = dmin[:, None] * lm.astype(f32)
    with np.errstate(divide="ignore", invalid="ignore"):
        L = np.rint((xs + dm[:, :, None]) / dq[:, :, None])
    L = np.where(dq[:, :, None] != 0, np.clip(L, 0, nmax), 0).astype(np.int64).reshape(-1, 256)
    parts = [dh, dminh, pack_k_scales(ls, lm)]
    qs = np.zeros((L.shape[0], 128), np.int64)
    qh = np.zeros((L.shape[0], 32), np.int64)
    for g in range(4):
        lo, hi = L[:, 64 * g:64 * g + 32], L[:, 64 * g + 32:64 * g + 64]
        qs[:, 32 * g:32 * g + 32] = (lo & 15) | ((hi & 15) << 4)
        qh |= ((lo >> 4) & 1) << (2 * g) | ((hi >> 4) & 1) << (2 * g + 1)
    if nbits == 5:
        parts.append(qh.astype(u8))
    parts.append(qs.astype(u8))
    return np.concatenate(parts, axis=1)


def quant_q6_k(x):
    xs = x.reshape(-1, 16, 16)
    nb = xs.shape[0]
    sub = (signed_absmax(xs.reshape(-1, 16)).reshape(nb, 16) / f32(-32)).astype(f32)
    max_scale = signed_absmax(sub)
    iscale = np.where(max_scale != 0, f32(-128) / np.where(max_scale != 0, max_scale, f32(1)), f32(0)).astype(f32)
    dh = half_bytes(np.where(iscale != 0, f32(1) / np.where(iscale != 0, iscale, f32(1)), f32(0)))
    d = dh.copy().view(f16).reshape(-1).astype(f32)
    sc = np.clip(np.rint(iscale[:, None] * sub), -128, 127).astype(np.int64)
    ds = d[:, None] * sc.astype(f32)
    with np.errstate(divide="ignore", invalid="ignore"):
        L = np.rint(xs / ds[:, :, None])
    L = (np.where(ds[:, :, None] != 0, np.clip(L, -32, 31), 0) + 32).astype(np.int64).reshape(-1, 256)
    ql = np.zeros((nb, 128), np.int64)
    qh = np.zeros((nb, 64), np.int64)
    for h in range(2):
        c = [L[:, 128 * h + 32 * k:128 * h + 32 * k + 32] for k in range(4)]
        ql[:, 64 * h:64 * h + 32] = (c[0] & 15) | ((c[2] & 15) << 4)
        ql[:, 64 * h + 32:64 * h + 64] = (c[1] & 15) | ((c[3] & 15) << 4)
        qh[:, 32 * h:32 * h + 32] = (c[0] >> 4) | (c[1] >> 4) << 2 | (c[2] >> 4) << 4 | (c[3] >> 4) << 6
    return np.concatenate([ql.astype(u8), qh.astype(u8), sc.astype(np.int8).view(u8), dh], axis=1)


QUANT = {Q8_0: quant_q8_0, Q4_0: quant_q4_0, Q5_0: lambda x: quant_q4_0(x, 5), Q4_1: quant_q4_1,
         Q5_1: lambda x: quant_q4_1(x, 5), Q4_K: lambda x: quant_qk(x, 4),
         Q5_K: lambda x: quant_qk(x, 5), Q6_K: quant_q6_k}


# ---- dequantizers: (nb, bytes) uint8 -> (nb * QK,) float32 -------------------------------

def deq_32(blk, t):
    has_min = t in (Q4_1, Q5_1)
    d = half_at(blk, 0)[:, None]
    m = half_at(blk, 2)[:, None] if has_min else None
    p = 4 if has_min else 2
    if t in (Q5_0, Q5_1):
        qh = blk[:, p:p + 4].astype(np.int64)
        qh = qh[:, 0] | qh[:, 1] << 8 | qh[:, 2] << 16 | qh[:, 3] << 24
        p += 4
    qs = blk[:, p:p + 16].astype(np.int64)
    q = np.concatenate([qs & 15, qs >> 4], axis=1)  # element j < 16: low nibble of qs[j]
    if t in (Q5_0, Q5_1):
        q = q | ((qh[:, None] >> np.arange(32)) & 1) << 4
    if t == Q8_0:
        q = blk[:, 2:34].view(np.int8).astype(np.int64)
    offset = {Q4_0: 8, Q5_0: 16}.get(t, 0)
    y = (q - offset).astype(f32) * d
    if has_min:
        y = y + m
    return y.astype(f32).reshape(-1)


def k_scale_min(scales):  # (nb, 12) -> sc, m (nb, 8) as get_scale_min_k4
    s = scales.astype(np.int64)
    sc, m = np.zeros((s.shape[0], 8), np.int64), np.zeros((s.shape[0], 8), np.int64)
    for j in range(8):
        if j < 4:
            sc[:, j], m[:, j] = s[:, j] & 63, s[:, j + 4] & 63
        else:
            sc[:, j] = (s[:, j + 4] & 0xF) | ((s[:, j - 4] >> 6) << 4)
            m[:, j] = (s[:, j + 4] >> 4) | ((s[:, j] >> 6) << 4)
    return sc, m


def deq_qk(blk, t):
    d, dmin = half_at(blk, 0)[:, None], half_at(blk, 2)[:, None]
    sc, m = k_scale_min(blk[:, 4:16])
    d1 = (d * sc.astype(f32)).astype(f32)     # d * sc, one fp32 rounding
    m1 = (dmin * m.astype(f32)).astype(f32)
    qh = blk[:, 16:48].astype(np.int64) if t == Q5_K else None
    qs = blk[:, 48:176].astype(np.int64) if t == Q5_K else blk[:, 16:144].astype(np.int64)
    y = np.zeros((blk.shape[0], 256), f32)
    for g in range(4):
        q = qs[:, 32 * g:32 * g + 32]
        for k in range(2):
            s = 2 * g + k
            v = (q >> (4 * k)) & 15
            if qh is not None:
                v = v + np.where(qh & (1 << s), 16, 0)
            y[:, 32 * s:32 * s + 32] = d1[:, s:s + 1] * v.astype(f32) - m1[:, s:s + 1]
    return y.reshape(-1)


def deq_q6_k(blk):
    d = half_at(blk, 208)[:, None]
    sc = blk[:, 192:208].view(np.int8).astype(f32)
    y = np.zeros((blk.shape[0], 256), f32)
    for h in range(2):
        ql = blk[:, 64 * h:64 * h + 64].astype(np.int64)
        qh = blk[:, 128 + 32 * h:128 + 32 * h + 32].astype(np.int64)
        for k in range(4):
            lo = (ql[:, 32 * (k & 1):32 * (k & 1) + 32] >> (4 * (k >> 1))) & 15
            q = (lo | ((qh >> (2 * k)) & 3) << 4) - 32
            for half16 in range(2):
                i0 = 128 * h + 32 * k + 16 * half16
                scale = (d * sc[:, i0 // 16:i0 // 16 + 1]).astype(f32)  # d * sc first
                y[:, i0:i0 + 16] = scale * q[:, 16 * half16:16 * half16 + 16].astype(f32)
    return y.reshape(-1)


def dequant(blk, t):
    if t in (Q4_K, Q5_K):
        return deq_qk(blk, t)
    if t == Q6_K:
        return deq_q6_k(blk)
    return deq_32(blk, t)


# ---- GGUF v3 writer ------------------------------------------------------------------------

def gstr(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def write_gguf(path, kv, tensors, align=32):
    # kv: [(key, "str"|"u32"|"f32", value)]; tensors: [(name, ggml type, ne fastest-first, bytes)]
    out = bytearray(b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kv)))
    for key, kind, val in kv:
        out += gstr(key)
        out += {"str": lambda: struct.pack("<I", 8) + gstr(val), "u32": lambda: struct.pack("<II", 4, val),
                "f32": lambda: struct.pack("<If", 6, val)}[kind]()
    offs, off = [], 0
    for name, typ, ne, data in tensors:
        off = (off + align - 1) // align * align
        offs.append(off)
        out += gstr(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", n) for n in ne)
        out += struct.pack("<IQ", typ, off)
        off += len(data)
    out += b"\0" * (-len(out) % align)
    base = len(out)
    for (name, typ, ne, data), o in zip(tensors, offs):
        out += b"\0" * (base + o - len(out))
        out += data
    with open(path + ".tmp", "wb") as f:
        f.write(out)
    os.replace(path + ".tmp", path)


# ---- test data -------------------------------------------------------------------------------

def gauss_rows(rng, rows, cols):
    # varied rows: normal weights, an all-zero row (d = 0), tiny weights (subnormal fp16
    # scales), large ones, all-positive (mins), a single outlier
    w = (rng.standard_normal((rows, cols)) * 0.02).astype(f32)
    w[1] = 0
    w[2] *= f32(5e-4)
    w[3] *= f32(2000)
    w[4] = np.abs(w[4]) + f32(0.01)
    w[5, 7] = f32(0.9)
    return w


def random_blocks(rng, t, nblocks):
    # every bit pattern of the codes and packed scales; finite fp16 scales (some zero,
    # negative and subnormal)
    blk = rng.integers(0, 256, size=(nblocks, BYTES[t]), dtype=np.int64).astype(u8)
    for k, off in enumerate(SCALE_OFFS[t]):
        v = (rng.standard_normal(nblocks) * (0.01 if k == 0 else 0.05)).astype(f32)
        v[::7] = 0
        v[3::11] = f32(3e-6)  # subnormal in fp16
        blk[:, off:off + 2] = half_bytes(v)
    return blk


def main():
    d = sys.argv[1]
    rng = np.random.default_rng(1234)
    tensors, total = [], 0
    # round-trip limits (relative RMS error on the normal rows)
    limit = {Q8_0: 0.01, Q4_0: 0.12, Q4_1: 0.12, Q5_0: 0.06, Q5_1: 0.06, Q4_K: 0.12, Q5_K: 0.06, Q6_K: 0.03}
    bad = []
    for t in NAMES:
        qk = QK[t]
        shapes = [("gauss", 6, 2 * qk if qk == 256 else 96), ("wide", 3, 3072), ("one", 1, qk)]
        for case, rows, cols in shapes:
            w = gauss_rows(rng, rows, cols) if rows >= 6 else (rng.standard_normal((rows, cols)) * 0.05).astype(f32)
            blk = QUANT[t](w.reshape(-1))
            assert blk.shape == (rows * cols // qk, BYTES[t]), (NAMES[t], blk.shape)
            y = dequant(blk, t).reshape(rows, cols)
            normal = [0] + list(range(6, rows)) if rows >= 6 else list(range(rows))
            err = np.sqrt(((y[normal] - w[normal]) ** 2).sum() / (w[normal] ** 2).sum())
            if not err < limit[t] or (rows >= 6 and np.any(y[1] != 0)):
                bad.append(f"{NAMES[t]}.{case}: round-trip relative RMS error {err:.4f} (limit {limit[t]})")
            tensors.append((f"{NAMES[t]}.{case}.q", t, [cols, rows], blk.tobytes()))
            tensors.append((f"{NAMES[t]}.{case}.ref", F32, [cols, rows], y.astype("<f4").tobytes()))
            total += rows * cols
        rows, cols = 5, 3 * qk if qk == 256 else 160
        blk = random_blocks(rng, t, rows * cols // qk)
        y = dequant(blk, t).reshape(rows, cols)
        assert np.all(np.isfinite(y))
        tensors.append((f"{NAMES[t]}.rand.q", t, [cols, rows], blk.tobytes()))
        tensors.append((f"{NAMES[t]}.rand.ref", F32, [cols, rows], y.astype("<f4").tobytes()))
        total += rows * cols
    kv = [("general.architecture", "str", "llama"), ("general.name", "str", "ggml block formats test"),
          ("general.alignment", "u32", 32)]
    write_gguf(os.path.join(d, "quants.gguf"), kv, tensors)
    write_gguf(os.path.join(d, "bad_cols.gguf"), kv[:2],
               [("blk.0.attn_q.weight", Q4_K, [100, 2], bytes(2 * 144))])
    print(f"  ref_ggml_quants.py: {len(tensors) // 2} tensors, {total} values of {len(NAMES)} types")
    if bad:
        print("\n".join("  round trip FAILED " + b for b in bad))
        sys.exit(1)


if __name__ == "__main__":
    main()
