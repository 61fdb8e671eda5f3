#!/usr/bin/env python3
"""Reference vectors for mla.h's attention, computed independently in float64
numpy, following the math of the published DeepSeek-V2/V3 HF modeling code
(modeling_deepseek.py: DeepseekV2Attention, DeepseekV2YarnRotaryEmbedding,
apply_rotary_pos_emb with its interleaved->half view, yarn_get_mscale,
yarn_find_correction_range, yarn_linear_ramp_mask). Whole sequences are
computed at once with a causal mask; the C tests run prefill + decode steps.

Writes tests/data/<case>.mlav. File format (little-endian):
  "MLAV" u32 version=1 u32 n_entries, then per entry:
  u32 name_len, name bytes, u32 count, count x f32.
Regenerate: pip install numpy && python3 tools/gen_vectors.py
"""
import math, os, struct, sys
import numpy as np

OUT = os.path.join(os.path.dirname(__file__), '..', 'tests', 'data')


def write_mlav(path, entries):
    with open(path, 'wb') as f:
        f.write(b'MLAV' + struct.pack('<II', 1, len(entries)))
        for name, arr in entries:
            a = np.asarray(arr, dtype='<f4').ravel()
            nb = name.encode()
            f.write(struct.pack('<I', len(nb)) + nb + struct.pack('<I', a.size) + a.tobytes())


def yarn_get_mscale(scale=1, mscale=1):
    if scale <= 1:
        return 1.0
    return 0.1 * mscale * math.log(scale) + 1.0


def yarn_find_correction_dim(num_rotations, dim, base, max_pos):
    return (dim * math.log(max_pos / (num_rotations * 2 * math.pi))) / (2 * math.log(base))


def yarn_find_correction_range(low_rot, high_rot, dim, base, max_pos):
    low = math.floor(yarn_find_correction_dim(low_rot, dim, base, max_pos))
    high = math.ceil(yarn_find_correction_dim(high_rot, dim, base, max_pos))
    return max(low, 0), min(high, dim - 1)


def yarn_linear_ramp_mask(mn, mx, dim):
    if mn == mx:
        mx += 0.001
    lin = (np.arange(dim, dtype=np.float64) - mn) / (mx - mn)
    return np.clip(lin, 0, 1)


def rope_cos_sin(c, positions):
    m, base = c['m'], c['theta']
    exps = np.arange(0, m, 2, dtype=np.float64) / m
    mscale = 1.0
    if c.get('yarn_factor', 0) > 1:
        f = c['yarn_factor']
        extra = 1.0 / base ** exps
        inter = 1.0 / (f * base ** exps)
        lo, hi = yarn_find_correction_range(c['beta_fast'], c['beta_slow'], m, base, c['orig_max_pos'])
        mask = 1.0 - yarn_linear_ramp_mask(lo, hi, m // 2)
        inv_freq = inter * (1 - mask) + extra * mask
        mscale = yarn_get_mscale(f, c['mscale']) / yarn_get_mscale(f, c['mscale_all_dim'])
    else:
        inv_freq = 1.0 / base ** exps
    freqs = np.outer(np.asarray(positions, np.float64), inv_freq)
    emb = np.concatenate([freqs, freqs], -1)
    return np.cos(emb) * mscale, np.sin(emb) * mscale


def rotate_half(x):
    h = x.shape[-1] // 2
    return np.concatenate([-x[..., h:], x[..., :h]], -1)


def apply_rope(x, cos, sin, interleaved):
    # x [..., s, m]; cos/sin [s, m]
    if interleaved:  # DeepSeek checkpoints: view(d//2, 2).transpose -> half-split order
        sh = x.shape
        x = x.reshape(*sh[:-1], sh[-1] // 2, 2).swapaxes(-1, -2).reshape(sh)
    return x * cos + rotate_half(x) * sin


def rmsnorm(x, w, eps):
    var = np.mean(x * x, axis=-1, keepdims=True)
    return x / np.sqrt(var + eps) * w


def mla_attention(c, W, x):
    """x [S][D] -> out [S][D], c_latent [S][r] (DeepseekV2Attention.forward, bsz 1)."""
    S = x.shape[0]
    H, dn, m, dv, r = c['h'], c['dn'], c['m'], c['dv'], c['r']
    qd = dn + m
    if c['q_lora'] == 0:
        q = x @ W['w_q'].T + (W['b_q'] if c['bias'] else 0)
    else:
        qa = x @ W['w_qa'].T + (W['b_qa'] if c['bias'] else 0)
        if c['q_norm']:
            qa = rmsnorm(qa, W['q_norm'], c['eps'])
        q = qa @ W['w_qb'].T
    q = q.reshape(S, H, qd).transpose(1, 0, 2)            # [H][S][qd]
    q_nope, q_pe = q[..., :dn], q[..., dn:]
    ckv = x @ W['w_kva'].T + (W['b_kva'] if c['bias'] else 0)
    cl, k_pe = ckv[:, :r], ckv[:, r:]                     # [S][r], [S][m]
    if c['kv_norm']:
        cl = rmsnorm(cl, W['kv_norm'], c['eps'])
    kv = (cl @ W['w_kvb'].T).reshape(S, H, dn + dv).transpose(1, 0, 2)
    k_nope, v = kv[..., :dn], kv[..., dn:]
    cos, sin = rope_cos_sin(c, np.arange(S))
    q_pe = apply_rope(q_pe, cos, sin, c['interleaved'])
    k_pe = apply_rope(k_pe[None], cos, sin, c['interleaved'])  # [1][S][m]
    qs = np.concatenate([q_nope, q_pe], -1)
    ks = np.concatenate([k_nope, np.broadcast_to(k_pe, (H, S, m))], -1)
    if c.get('softmax_scale', 0) > 0:
        scale = c['softmax_scale']
    else:
        scale = qd ** -0.5
        if c.get('yarn_factor', 0) > 1 and c.get('mscale_all_dim', 0):
            ms = yarn_get_mscale(c['yarn_factor'], c['mscale_all_dim'])
            scale = scale * ms * ms
    att = qs @ ks.transpose(0, 2, 1) * scale
    att = att + np.triu(np.full((S, S), -np.inf), 1)
    att = np.exp(att - att.max(-1, keepdims=True))
    att /= att.sum(-1, keepdims=True)
    o = (att @ v).transpose(1, 0, 2).reshape(S, H * dv)
    out = o @ W['w_o'].T + (W['b_o'] if c['bias'] else 0)
    return out, cl


CASES = {
    # DeepSeek-V2-Lite-like: no q_lora, latent norm, interleaved rope
    'v2lite': dict(D=48, h=4, q_lora=0, q_norm=0, r=32, dn=16, m=8, dv=16, kv_norm=1, bias=0,
                   interleaved=1, theta=10000.0, eps=1e-6, P=6, N=11),
    # DeepSeek-V3-like, scaled down: q_lora with q norm, YaRN, d_v != d_nope
    'v3small': dict(D=64, h=4, q_lora=24, q_norm=1, r=32, dn=16, m=8, dv=12, kv_norm=1, bias=0,
                    interleaved=1, theta=10000.0, eps=1e-6, yarn_factor=4.0, orig_max_pos=16,
                    beta_fast=32.0, beta_slow=1.0, mscale=1.0, mscale_all_dim=1.0, P=7, N=12),
    # HF half-split rope, biases, no latent norm
    'halfbias': dict(D=40, h=3, q_lora=0, q_norm=0, r=20, dn=8, m=6, dv=10, kv_norm=0, bias=1,
                     interleaved=0, theta=500.0, eps=1e-5, P=5, N=10),
    # TransMLA lossless shape: d_nope = 0, explicit softmax scale, q_lora without norm
    'nope0': dict(D=32, h=2, q_lora=16, q_norm=0, r=24, dn=0, m=16, dv=12, kv_norm=0, bias=1,
                  interleaved=1, theta=10000.0, eps=1e-6, softmax_scale=0.2, P=4, N=9),
}


def make_case(name, c, seed):
    rng = np.random.default_rng(seed)
    D, H, r, dn, m, dv, rq = c['D'], c['h'], c['r'], c['dn'], c['m'], c['dv'], c['q_lora']
    qd = dn + m
    W = {}
    g = lambda *s: rng.standard_normal(s) / math.sqrt(s[-1])
    if rq == 0:
        W['w_q'] = g(H * qd, D)
        W['b_q'] = rng.standard_normal(H * qd) * 0.1
    else:
        W['w_qa'] = g(rq, D)
        W['b_qa'] = rng.standard_normal(rq) * 0.1
        W['q_norm'] = 1 + 0.1 * rng.standard_normal(rq)
        W['w_qb'] = g(H * qd, rq)
    W['w_kva'] = g(r + m, D)
    W['b_kva'] = rng.standard_normal(r + m) * 0.1
    W['kv_norm'] = 1 + 0.1 * rng.standard_normal(r)
    W['w_kvb'] = g(H * (dn + dv), r)
    W['w_o'] = g(D, H * dv)
    W['b_o'] = rng.standard_normal(D) * 0.1
    # round weights to f32 first so both sides use identical values
    W = {k: v.astype(np.float32).astype(np.float64) for k, v in W.items()}
    x = rng.standard_normal((c['N'], D)).astype(np.float32).astype(np.float64)
    out, cl = mla_attention(c, W, x)
    cfg = [('cfg.' + k, [float(v)]) for k, v in c.items()]
    write_mlav(os.path.join(OUT, name + '.mlav'), cfg + sorted(W.items()) + [('x', x), ('out', out), ('c', cl)])


if __name__ == '__main__':
    os.makedirs(OUT, exist_ok=True)
    for i, (name, c) in enumerate(CASES.items()):
        make_case(name, c, 42 + i)
        print('wrote', name)


# ---- plain GQA attention (LLaMA/Qwen HF math: repeat_kv, rotate_half) ----
def gqa_attention(c, W, x):
    S, H, G, d = x.shape[0], c['h'], c['g'], c['d']
    q = (x @ W['w_q'].T + (W['b_q'] if c['bias'] else 0)).reshape(S, H, d).transpose(1, 0, 2)
    k = (x @ W['w_k'].T + (W['b_k'] if c['bias'] else 0)).reshape(S, G, d).transpose(1, 0, 2)
    v = (x @ W['w_v'].T + (W['b_v'] if c['bias'] else 0)).reshape(S, G, d).transpose(1, 0, 2)
    cc = dict(m=d, theta=c['theta'])
    cos, sin = rope_cos_sin(cc, np.arange(S))
    q, k = apply_rope(q, cos, sin, c['interleaved']), apply_rope(k, cos, sin, c['interleaved'])
    k, v = np.repeat(k, H // G, 0), np.repeat(v, H // G, 0)
    att = q @ k.transpose(0, 2, 1) / math.sqrt(d) + np.triu(np.full((S, S), -np.inf), 1)
    att = np.exp(att - att.max(-1, keepdims=True))
    att /= att.sum(-1, keepdims=True)
    return (att @ v).transpose(1, 0, 2).reshape(S, H * d) @ W['w_o'].T


GQA_CASES = {
    'gqa_half': dict(D=48, h=6, g=2, d=8, bias=1, interleaved=0, theta=10000.0, P=5, N=9),
    'gqa_inter': dict(D=32, h=4, g=4, d=8, bias=0, interleaved=1, theta=100000.0, P=3, N=8),
}


def make_gqa_case(name, c, seed):
    rng = np.random.default_rng(seed)
    D, H, G, d = c['D'], c['h'], c['g'], c['d']
    g = lambda *s: rng.standard_normal(s) / math.sqrt(s[-1])
    W = dict(w_q=g(H * d, D), w_k=g(G * d, D), w_v=g(G * d, D), w_o=g(D, H * d),
             b_q=0.1 * rng.standard_normal(H * d), b_k=0.1 * rng.standard_normal(G * d),
             b_v=0.1 * rng.standard_normal(G * d))
    W = {k: v.astype(np.float32).astype(np.float64) for k, v in W.items()}
    x = rng.standard_normal((c['N'], D)).astype(np.float32).astype(np.float64)
    out = gqa_attention(c, W, x)
    cfg = [('cfg.' + k, [float(v)]) for k, v in c.items()]
    write_mlav(os.path.join(OUT, name + '.mlav'), cfg + sorted(W.items()) + [('x', x), ('out', out)])


if __name__ == '__main__':
    for i, (name, c) in enumerate(GQA_CASES.items()):
        make_gqa_case(name, c, 100 + i)
        print('wrote', name)
