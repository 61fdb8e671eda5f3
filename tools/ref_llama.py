#!/usr/bin/env python3
"""Reference logits for SmolLM2 (LLaMA architecture), computed independently
in numpy float64 from the same GGUF file read with pip's `gguf` package
(its own dequantization). Q/K rows are un-permuted back to the HF layout and
RoPE is applied HF-style (rotate_half), so the test also checks the C
runner's handling of the GGUF (interleaved) layout.
Token ids come from HF `tokenizers` (see ref_tokenizer.py), not from the C code.
Writes tests/data/llama_ref.mlav: per prompt p: p<k>.ids, p<k>.idx (the vocab
indices kept), p<k>.logits [positions][kept].
Run: pip install numpy gguf tokenizers && python3 tools/ref_llama.py models/SmolLM2-135M-Instruct.Q4_1.gguf"""
import os, sys
import numpy as np
import gguf
from gguf import GGUFReader
from gguf.quants import dequantize

sys.path.insert(0, os.path.dirname(__file__))
from gen_vectors import write_mlav  # noqa: E402

path = sys.argv[1]
r = GGUFReader(path)
T = {t.name: t for t in r.tensors}


def val(key):
    f = r.fields[key]
    return f.parts[f.data[0]][0]


def W(name):
    t = T[name]
    a = dequantize(t.data, t.tensor_type).astype(np.float64)
    return a.reshape([int(x) for x in reversed(t.shape)])  # [rows][cols]


nl, D, H, G = int(val('llama.block_count')), int(val('llama.embedding_length')), int(val('llama.attention.head_count')), int(val('llama.attention.head_count_kv'))
eps, theta = float(val('llama.attention.layer_norm_rms_epsilon')), float(val('llama.rope.freq_base'))
hd = D // H


def unpermute(w, nh):
    # GGUF row 2j+i of a head = HF row i*hd/2 + j
    return w.reshape(nh, hd // 2, 2, -1).swapaxes(1, 2).reshape(nh * hd, -1)


def rms(x, w):
    return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps) * w


def rot_half(x):
    return np.concatenate([-x[..., hd // 2:], x[..., :hd // 2]], -1)


emb = W('token_embd.weight')
out_w = W('output.weight') if 'output.weight' in T else emb
layers = []
for l in range(nl):
    p = 'blk.%d.' % l
    layers.append(dict(an=W(p + 'attn_norm.weight'), fn=W(p + 'ffn_norm.weight'),
                       q=unpermute(W(p + 'attn_q.weight'), H), k=unpermute(W(p + 'attn_k.weight'), G),
                       v=W(p + 'attn_v.weight'), o=W(p + 'attn_output.weight'),
                       g=W(p + 'ffn_gate.weight'), u=W(p + 'ffn_up.weight'), d=W(p + 'ffn_down.weight')))
onorm = W('output_norm.weight')


def forward(ids):
    S = len(ids)
    x = emb[ids]
    inv = 1.0 / theta ** (np.arange(0, hd, 2) / hd)
    fr = np.outer(np.arange(S), inv)
    cos, sin = np.cos(np.concatenate([fr, fr], -1)), np.sin(np.concatenate([fr, fr], -1))
    mask = np.triu(np.full((S, S), -np.inf), 1)
    for L in layers:
        h = rms(x, L['an'])
        q = (h @ L['q'].T).reshape(S, H, hd).transpose(1, 0, 2)
        k = (h @ L['k'].T).reshape(S, G, hd).transpose(1, 0, 2)
        v = (h @ L['v'].T).reshape(S, G, hd).transpose(1, 0, 2)
        q, k = q * cos + rot_half(q) * sin, k * cos + rot_half(k) * sin
        k, v = np.repeat(k, H // G, 0), np.repeat(v, H // G, 0)
        a = q @ k.transpose(0, 2, 1) / np.sqrt(hd) + mask
        a = np.exp(a - a.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        x = x + (a @ v).transpose(1, 0, 2).reshape(S, D) @ L['o'].T
        h = rms(x, L['fn'])
        g = h @ L['g'].T
        x = x + ((g / (1 + np.exp(-g))) * (h @ L['u'].T)) @ L['d'].T
    return rms(x, onorm) @ out_w.T


from ref_tokenizer import build  # noqa: E402

prompts = ["The capital of France is",
           "<|im_start|>user\nWrite a haiku about latent attention.<|im_end|>\n<|im_start|>assistant\n",
           "In 1969, Apollo 11 landed on the Moon; its crew numbered 3 astronauts and"]
tk = build(path)
entries = []
idx = np.arange(0, int(emb.shape[0]), 193)
for pi, ptxt in enumerate(prompts):
    ids = tk.encode(ptxt).ids
    lg = forward(np.array(ids))
    keep = np.unique(np.concatenate([idx, lg.argmax(-1)]))
    entries += [('p%d.ids' % pi, ids), ('p%d.idx' % pi, keep), ('p%d.logits' % pi, lg[:, keep])]
    print(pi, len(ids), 'tokens; argmax of last:', int(lg[-1].argmax()))
write_mlav(os.path.join(os.path.dirname(__file__), '..', 'tests', 'data', 'llama_ref.mlav'), entries)
