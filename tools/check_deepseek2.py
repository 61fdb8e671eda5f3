#!/usr/bin/env python3
"""Independent check of deepseek2 GGUF files written by mla-convert --format gguf.

Reads every file with the `gguf` package from PyPI (llama.cpp's own Python
reader, not this project's C reader) and checks, for each file:
  - the metadata llama.cpp's deepseek2 loader requires, and that the sizes agree
    with each other (key_length = kv_lora_rank + rope dims, the *_mla keys ...);
  - every tensor has exactly the shape llama.cpp creates for it
    (src/models/deepseek2.cpp, load_arch_tensors), no tensor is missing or extra;
  - with --source SRC.gguf: every tokenizer.* key equals the source's, and every
    non-attention tensor equals the source's bytes;
  - with --ref REF.gguf (the same model exported in F32): every tensor,
    dequantized by gguf.quants, is within the rounding bound of its type of the
    F32 tensor (Q8_0: d/2 per value plus the f16 rounding of d; Q4_0: |d|,
    values opposite the block's extreme may clamp at code 15; Q4_1: d/2 plus
    the f16 rounding of d and m; F16: 2^-11 relative; BF16: 2^-8 relative).
Exit status 0 when everything holds; prints one line per file.

usage: check_deepseek2.py [--source SRC.gguf] [--ref REF_F32.gguf] FILE.gguf...
"""
import sys

import numpy as np
from gguf import GGUFReader, GGMLQuantizationType as T
from gguf.quants import dequantize


def kv(reader, key):
    f = reader.fields.get(key)
    if f is None:
        return None
    if len(f.types) == 1 and f.types[0] == 8:  # string
        return bytes(f.parts[f.data[0]]).decode()
    if len(f.types) == 1:
        return f.parts[f.data[0]][0].item()
    return [bytes(f.parts[i]) if f.types[1] == 8 else f.parts[i][0].item() for i in f.data]


def tensors(reader):
    return {t.name: t for t in reader.tensors}


def as_f32(t):
    x = dequantize(t.data, t.tensor_type)
    return np.asarray(x, dtype=np.float64).reshape(-1)


def expected_shapes(r):
    g = lambda k: kv(r, "deepseek2." + k)
    L, D, H = g("block_count"), g("embedding_length"), g("attention.head_count")
    R, m, rq = g("attention.kv_lora_rank"), g("rope.dimension_count"), g("attention.q_lora_rank")
    kmla, vmla, F = g("attention.key_length_mla"), g("attention.value_length_mla"), g("feed_forward_length")
    dn = kmla - m
    V = [t for t in r.tensors if t.name == "token_embd.weight"][0].shape[1]
    s = {"token_embd.weight": (D, V), "output_norm.weight": (D,)}
    if any(t.name == "output.weight" for t in r.tensors):
        s["output.weight"] = (D, V)
    for i in range(L):
        b = "blk.%d." % i
        s[b + "attn_norm.weight"] = (D,)
        if rq:
            s[b + "attn_q_a.weight"] = (D, rq)
            s[b + "attn_q_a_norm.weight"] = (rq,)
            s[b + "attn_q_b.weight"] = (rq, H * kmla)
        else:
            s[b + "attn_q.weight"] = (D, H * kmla)
        s[b + "attn_kv_a_mqa.weight"] = (D, R + m)
        s[b + "attn_kv_a_norm.weight"] = (R,)
        s[b + "attn_k_b.weight"] = (dn, R, H)
        s[b + "attn_v_b.weight"] = (R, vmla, H)
        s[b + "attn_output.weight"] = (H * vmla, D)
        s[b + "ffn_norm.weight"] = (D,)
        s[b + "ffn_gate.weight"] = (D, F)
        s[b + "ffn_up.weight"] = (D, F)
        s[b + "ffn_down.weight"] = (F, D)
    return s


def bound(ref, typ):
    """per-value error bound of storing ref (flat, f32 values) as typ"""
    a = np.abs(ref)
    if typ == T.F32:
        return np.zeros_like(ref)
    if typ == T.F16:
        return a * 2.0**-11 + 2.0**-24
    if typ == T.BF16:
        return a * 2.0**-8 + 1e-38
    blk = ref.reshape(-1, 32)
    if typ == T.Q8_0:
        d = np.abs(blk).max(1, keepdims=True) / 127
        b = d / 2 + 127 * d * 2.0**-10
    elif typ == T.Q4_0:
        d = np.abs(blk).max(1, keepdims=True) / 8
        b = d + 8 * d * 2.0**-10
    elif typ == T.Q4_1:
        lo, hi = blk.min(1, keepdims=True), blk.max(1, keepdims=True)
        d = (hi - lo) / 15
        b = d / 2 + 15 * d * 2.0**-10 + np.abs(lo) * 2.0**-10
    else:
        raise ValueError("type %s" % typ)
    return np.broadcast_to(b, blk.shape).reshape(-1) * (1 + 1e-6) + 1e-30


def check(path, src, ref):
    r = GGUFReader(path)
    bad = []
    if kv(r, "general.architecture") != "deepseek2":
        return ["general.architecture is %r" % kv(r, "general.architecture")]
    need = ["block_count", "embedding_length", "feed_forward_length", "context_length", "attention.head_count",
            "attention.head_count_kv", "attention.key_length", "attention.value_length", "attention.key_length_mla",
            "attention.value_length_mla", "attention.kv_lora_rank", "attention.q_lora_rank",
            "attention.layer_norm_rms_epsilon", "rope.dimension_count", "rope.freq_base", "leading_dense_block_count",
            "expert_feed_forward_length", "expert_shared_count"]
    for k in need:
        if kv(r, "deepseek2." + k) is None:
            bad.append("missing deepseek2." + k)
    if bad:
        return bad
    g = lambda k: kv(r, "deepseek2." + k)
    if g("attention.key_length") != g("attention.kv_lora_rank") + g("rope.dimension_count"):
        bad.append("key_length != kv_lora_rank + rope dims")
    if g("attention.value_length") != g("attention.kv_lora_rank"):
        bad.append("value_length != kv_lora_rank")
    if g("attention.key_length_mla") - g("rope.dimension_count") < 1:
        bad.append("no nope dims (llama.cpp asserts d_nope >= 1)")
    if g("leading_dense_block_count") != g("block_count") or g("attention.head_count_kv") != 1:
        bad.append("not a dense, one-latent-head model")
    want, have = expected_shapes(r), tensors(r)
    for name, shape in want.items():
        if name not in have:
            bad.append("missing tensor " + name)
        elif tuple(int(x) for x in have[name].shape) != shape:
            bad.append("%s has shape %s, llama.cpp expects %s" % (name, tuple(have[name].shape), shape))
    bad += ["unexpected tensor " + n for n in have if n not in want]
    if src:
        s = GGUFReader(src)
        for k in s.fields:
            if k.startswith("tokenizer.") and kv(s, k) != kv(r, k):
                bad.append("tokenizer key %s differs from the source" % k)
        st = tensors(s)
        for n, t in have.items():
            if n in st and not any(a in n for a in (".attn_q", ".attn_k", ".attn_v", ".attn_output")):
                if t.tensor_type != st[n].tensor_type or bytes(t.data) != bytes(st[n].data):
                    bad.append("%s differs from the source" % n)
    worst = 0.0
    if ref:
        rt = tensors(GGUFReader(ref))
        for n, t in have.items():
            if n not in rt:
                bad.append("%s missing from the F32 reference" % n)
                continue
            x, y = as_f32(t), as_f32(rt[n])
            if rt[n].tensor_type != T.F32 or x.shape != y.shape:
                if rt[n].tensor_type != t.tensor_type or bytes(t.data) != bytes(rt[n].data):
                    bad.append("%s: reference not F32 and bytes differ" % n)
                continue
            b = bound(y.astype(np.float32).astype(np.float64), t.tensor_type)
            ratio = float(np.max(np.abs(x - y) / np.maximum(b, 1e-30))) if t.tensor_type != T.F32 else \
                (0.0 if np.array_equal(x, y) else np.inf)
            worst = max(worst, ratio)
            if ratio > 1:
                bad.append("%s (%s): error %.3g x its bound" % (n, t.tensor_type.name, ratio))
    types = sorted({t.tensor_type.name for t in r.tensors})
    print("%s: deepseek2, %d tensors (%s), L=%d H=%d r=%d m=%d d_nope=%d d_v=%d q_lora=%d; worst error / bound %.3f: %s"
          % (path, len(have), "/".join(types), g("block_count"), g("attention.head_count"),
             g("attention.kv_lora_rank"), g("rope.dimension_count"),
             g("attention.key_length_mla") - g("rope.dimension_count"), g("attention.value_length_mla"),
             g("attention.q_lora_rank"), worst, "ok" if not bad else "FAILED"))
    return bad


def main(argv):
    src = ref = None
    files = []
    i = 0
    while i < len(argv):
        if argv[i] in ("--source", "--ref"):
            if argv[i] == "--source":
                src = argv[i + 1]
            else:
                ref = argv[i + 1]
            i += 2
        else:
            files.append(argv[i])
            i += 1
    if not files:
        print(__doc__)
        return 2
    failed = 0
    for f in files:
        bad = check(f, src, ref)
        for b in bad[:20]:
            print("  " + b)
        failed += bool(bad)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
