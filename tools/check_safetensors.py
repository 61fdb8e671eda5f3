#!/usr/bin/env python3
"""Independent check of mla-convert --format safetensors output.

Loads DIR/config.json and DIR/model.safetensors with numpy and the `safetensors`
package (PyPI), checks the DeepSeek-V3 names and shapes config.json implies, and
runs one layer's attention with DeepSeek-V3's published math (modeling_deepseek.py
/ transformers' DeepseekV3Attention: RMSNorm of the input, q_proj or
q_a_proj -> q_a_layernorm -> q_b_proj, kv_a_proj_with_mqa -> kv_a_layernorm ->
kv_b_proj, RoPE on the interleaved pairs (view(d/2, 2).transpose then
rotate_half), softmax scale qk_head_dim^-0.5, causal softmax, o_proj), written
here from that description, not from this project's C code. The input and the
expected output come from a .mlav file the C test writes with mla.h on the
converted model in memory ("x": [T][D] residual stream before the layer's
input norm, "out": [T][D] attention output, "layer", "T").
Prints the relative error (max |diff| / max |out|); exit 1 if above --tol
(default 1e-4).

usage: check_safetensors.py DIR VECTORS.mlav [--tol 1e-4]
"""
import json
import struct
import sys

import numpy as np
from safetensors.numpy import load_file


def read_mlav(path):
    out = {}
    with open(path, "rb") as f:
        magic, _, n = f.read(4), *struct.unpack("<II", f.read(8))
        assert magic == b"MLAV"
        for _ in range(n):
            (ln,) = struct.unpack("<I", f.read(4))
            name = f.read(ln).decode()
            (cnt,) = struct.unpack("<I", f.read(4))
            out[name] = np.frombuffer(f.read(4 * cnt), dtype="<f4").astype(np.float64)
    return out


def rmsnorm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rotate_half(x):
    h = x.shape[-1] // 2
    return np.concatenate([-x[..., h:], x[..., :h]], axis=-1)


def rope_interleaved(x, pos, theta):
    """x [..., T, d] with pairs (2i, 2i+1); DeepSeek-V3's apply_rotary_pos_emb"""
    d = x.shape[-1]
    inv = 1.0 / theta ** (np.arange(0, d, 2, dtype=np.float64) / d)
    fr = np.outer(pos, inv)
    emb = np.concatenate([fr, fr], axis=-1)
    cos, sin = np.cos(emb), np.sin(emb)
    x = x.reshape(*x.shape[:-1], d // 2, 2).swapaxes(-1, -2).reshape(x.shape)
    return x * cos + rotate_half(x) * sin


def attention(cfg, W, l, x):
    p = "model.layers.%d." % l
    g = lambda n: W[p + n].astype(np.float64)
    T = x.shape[0]
    H, R, m = cfg["num_attention_heads"], cfg["kv_lora_rank"], cfg["qk_rope_head_dim"]
    dn, dv, eps = cfg["qk_nope_head_dim"], cfg["v_head_dim"], cfg["rms_norm_eps"]
    h = rmsnorm(x, g("input_layernorm.weight"), eps)
    if cfg.get("q_lora_rank"):
        q = rmsnorm(h @ g("self_attn.q_a_proj.weight").T, g("self_attn.q_a_layernorm.weight"), eps)
        q = q @ g("self_attn.q_b_proj.weight").T
    else:
        q = h @ g("self_attn.q_proj.weight").T
    q = q.reshape(T, H, dn + m).transpose(1, 0, 2)  # [H][T][dn+m]
    q_nope, q_pe = q[..., :dn], q[..., dn:]
    ckv = h @ g("self_attn.kv_a_proj_with_mqa.weight").T
    c, k_pe = ckv[:, :R], ckv[:, R:]
    kv = rmsnorm(c, g("self_attn.kv_a_layernorm.weight"), eps) @ g("self_attn.kv_b_proj.weight").T
    kv = kv.reshape(T, H, dn + dv).transpose(1, 0, 2)
    k_nope, v = kv[..., :dn], kv[..., dn:]
    pos = np.arange(T, dtype=np.float64)
    q_pe = rope_interleaved(q_pe, pos, cfg["rope_theta"])
    k_pe = rope_interleaved(k_pe[None], pos, cfg["rope_theta"])
    qs = np.concatenate([q_nope, q_pe], -1)
    ks = np.concatenate([k_nope, np.broadcast_to(k_pe, (H, T, m))], -1)
    s = qs @ ks.transpose(0, 2, 1) * (dn + m) ** -0.5
    s = np.where(np.tril(np.ones((T, T), bool)), s, -np.inf)
    s = np.exp(s - s.max(-1, keepdims=True))
    s /= s.sum(-1, keepdims=True)
    o = (s @ v).transpose(1, 0, 2).reshape(T, H * dv)
    return o @ g("self_attn.o_proj.weight").T


def check_names(cfg, W):
    D, H, L = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_hidden_layers"]
    R, m, dn, dv, F, V = (cfg[k] for k in ("kv_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim",
                                          "intermediate_size", "vocab_size"))
    rq = cfg.get("q_lora_rank")
    want = {"model.embed_tokens.weight": (V, D), "model.norm.weight": (D,), "lm_head.weight": (V, D)}
    for l in range(L):
        p = "model.layers.%d." % l
        want.update({p + "input_layernorm.weight": (D,), p + "post_attention_layernorm.weight": (D,),
                     p + "self_attn.kv_a_proj_with_mqa.weight": (R + m, D), p + "self_attn.kv_a_layernorm.weight": (R,),
                     p + "self_attn.kv_b_proj.weight": (H * (dn + dv), R), p + "self_attn.o_proj.weight": (D, H * dv),
                     p + "mlp.gate_proj.weight": (F, D), p + "mlp.up_proj.weight": (F, D),
                     p + "mlp.down_proj.weight": (D, F)})
        if rq:
            want.update({p + "self_attn.q_a_proj.weight": (rq, D), p + "self_attn.q_a_layernorm.weight": (rq,),
                         p + "self_attn.q_b_proj.weight": (H * (dn + m), rq)})
        else:
            want[p + "self_attn.q_proj.weight"] = (H * (dn + m), D)
    bad = ["missing " + n for n in want if n not in W]
    bad += ["%s shape %s, expected %s" % (n, W[n].shape, s) for n, s in want.items() if n in W and W[n].shape != s]
    bad += ["unexpected " + n for n in W if n not in want]
    return bad


def main(argv):
    if len(argv) < 2:
        print(__doc__)
        return 2
    tol = float(argv[argv.index("--tol") + 1]) if "--tol" in argv else 1e-4
    cfg = json.load(open(argv[0] + "/config.json"))
    W = load_file(argv[0] + "/model.safetensors")
    bad = check_names(cfg, W)
    if cfg.get("model_type") != "deepseek_v3" or not cfg.get("rope_interleave", True):
        bad.append("config.json: model_type %r, rope_interleave %r" % (cfg.get("model_type"), cfg.get("rope_interleave")))
    v = read_mlav(argv[1])
    T, l = int(v["T"][0]), int(v["layer"][0])
    x = v["x"].reshape(T, cfg["hidden_size"])
    ref = v["out"].reshape(T, cfg["hidden_size"])
    out = attention(cfg, W, l, x)
    err = float(np.max(np.abs(out - ref)) / np.max(np.abs(ref)))
    ok = not bad and err <= tol
    print("%s: %d tensors, DeepSeek-V3 attention of layer %d on %d tokens vs mla.h: rel err %.2e (tol %.0e): %s"
          % (argv[0], len(W), l, T, err, tol, "ok" if ok else "FAILED"))
    for b in bad[:20]:
        print("  " + b)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
