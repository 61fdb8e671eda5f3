#include "model.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int get_i(gguf_file *f, const char *arch, const char *key, int64_t *v, int required, int64_t dflt) {
    char k[128];
    snprintf(k, sizeof k, "%s.%s", arch, key);
    if (!gguf_find(f, k)) {
        if (required) { snprintf(f->err, sizeof f->err, "missing metadata %s", k); return -1; }
        *v = dflt;
        return 0;
    }
    if (gguf_get_int(f, k, v)) return -1;
    if (*v < -2147483647 || *v > 2147483647) { /* every field lands in an int */
        snprintf(f->err, sizeof f->err, "metadata %s = %lld is out of range", k, (long long)*v);
        return -1;
    }
    return 0;
}

static int get_f(gguf_file *f, const char *arch, const char *key, double *v, double dflt) {
    char k[128];
    snprintf(k, sizeof k, "%s.%s", arch, key);
    if (!gguf_find(f, k)) { *v = dflt; return 0; }
    return gguf_get_float(f, k, v);
}

static int all_finite(const float *p, size_t n) {
    size_t i;
    for (i = 0; i < n; i++)
        if (!(p[i] - p[i] == 0.0f)) return 0;
    return 1;
}

/* tensor `name` as an f32 [rows][cols] matrix (rows 1 = vector; 0, 0 = any
   shape, checked by the caller); NaN or Inf
   anywhere is a load error (a NaN norm weight makes every logit NaN) */
static float *tensor(gguf_file *f, const char *name, int64_t rows, int64_t cols) {
    float *p = gguf_tensor_f32(f, name, rows, cols);
    if (p && !all_finite(p, (size_t)gguf_tensor_find(f, name)->n_elem)) {
        snprintf(f->err, sizeof f->err, "tensor %s has NaN or Inf values", name);
        free(p);
        return NULL;
    }
    return p;
}

/* tensor "blk.<l>.<name>" */
static float *layer_tensor(gguf_file *f, int l, const char *name, int64_t rows, int64_t cols) {
    char k[128];
    snprintf(k, sizeof k, "blk.%d.%s", l, name);
    return tensor(f, k, rows, cols);
}

/* tensor "blk.<l>.<name>" as stored; 0 or -1 */
static int layer_wmat(gguf_file *f, int l, const char *name, int rows, int cols, wmat *w) {
    char k[128];
    snprintf(k, sizeof k, "blk.%d.%s", l, name);
    return wmat_from_gguf(w, f, k, rows, cols);
}

/* an optional layer tensor: *out NULL if absent; -1 if present but bad */
static int optional_tensor(gguf_file *f, int l, const char *name, int64_t rows, int64_t cols, const float **out) {
    char k[128];
    snprintf(k, sizeof k, "blk.%d.%s", l, name);
    *out = gguf_tensor_find(f, k) ? tensor(f, k, rows, cols) : NULL;
    return *out || !gguf_tensor_find(f, k) ? 0 : -1;
}

/* deepseek2 (llama.cpp's name for DeepSeek-V2/V3 attention): dense blocks
   only; the latent (and query latent) RMSNorms are on, as that format says. */
static int load_deepseek2_config(model *m, gguf_file *f) {
    mla_config *c = &m->mla;
    const char *bad = NULL;
    int64_t v, kl, vl;
    if (get_i(f, "deepseek2", "leading_dense_block_count", &v, 0, 0)) return -1;
    if (v < m->n_layers) {
        snprintf(f->err, sizeof f->err, "deepseek2 blocks %d..%d are mixture-of-experts; this runner has dense FFNs only",
                 (int)v, m->n_layers - 1);
        return -1;
    }
    if (gguf_find(f, "deepseek2.attention.temperature_scale")) {
        snprintf(f->err, sizeof f->err, "deepseek2 attention temperature scaling is not supported by this runner");
        return -1;
    }
    if (get_i(f, "deepseek2", "attention.kv_lora_rank", &v, 1, 0)) return -1;
    c->kv_lora_rank = (int)v;
    if (get_i(f, "deepseek2", "attention.q_lora_rank", &v, 0, 0)) return -1;
    c->q_lora_rank = (int)v;
    if (get_i(f, "deepseek2", "rope.dimension_count", &v, 1, 0)) return -1;
    c->qk_rope_head_dim = (int)v;
    /* absorbed files give the per-head sizes in the *_mla keys (key/value_length
       then describe the latent cache); legacy ones in key/value_length */
    if (gguf_find(f, "deepseek2.attention.key_length_mla")) {
        if (get_i(f, "deepseek2", "attention.key_length_mla", &kl, 1, 0) ||
            get_i(f, "deepseek2", "attention.value_length_mla", &vl, 1, 0))
            return -1;
    } else if (get_i(f, "deepseek2", "attention.key_length", &kl, 1, 0) ||
               get_i(f, "deepseek2", "attention.value_length", &vl, 1, 0)) {
        return -1;
    }
    c->qk_nope_head_dim = (int)(kl - c->qk_rope_head_dim);
    c->v_head_dim = (int)vl;
    c->dim = m->dim; c->n_heads = m->n_heads; c->rms_eps = m->eps; c->rope_theta = m->rope_theta;
    c->rope_layout = MLA_ROPE_INTERLEAVED; /* llama.cpp's NORM rope, DeepSeek's stored layout */
    c->kv_norm = 1;
    c->q_norm = c->q_lora_rank > 0;
    if (mla_config_validate(c, &bad) != MLA_OK) {
        snprintf(f->err, sizeof f->err, "bad deepseek2 hyper-parameter %s", bad ? bad : "?");
        return -1;
    }
    return 0;
}

/* The compact copy of w_kvb [rows][r] that decode reads with 8-bit
   activations: int8 in blocks of 32 (mla_quant_q8; exactly the values of a
   Q8_0 file, a Q4 file's within 1/254 of a block's largest) when the file
   stores it block-quantized, else bf16; half or a quarter of the f32 bytes of
   W_uk and W_uv per step. -1 (f->err set) on out of memory. */
static int kvb_copy(gguf_file *f, mla_layer_weights *w, uint32_t stored, int rows, int r) {
    size_t n = (size_t)rows * r, i;
    if (stored == GGML_Q8_0 || stored == GGML_Q4_0 || stored == GGML_Q4_1) {
        int8_t *q = (int8_t *)malloc(n);
        float *sc = (float *)malloc(sizeof(float) * (size_t)rows * ((r + 31) / 32));
        w->w_kvb_q8 = q; w->w_kvb_q8_scale = sc; /* freed by model_free either way */
        if (q && sc) {
            mla_quant_q8(w->w_kvb, rows, r, q, sc);
            return 0;
        }
    } else {
        uint16_t *b = (uint16_t *)malloc(sizeof(uint16_t) * n);
        w->w_kvb_bf16 = b;
        if (b) {
            for (i = 0; i < n; i++) b[i] = mla_f32_to_bf16(w->w_kvb[i]);
            return 0;
        }
    }
    snprintf(f->err, sizeof f->err, "out of memory");
    return -1;
}

/* w_kvb [h*(d_nope+d_v)][r] from attn_k_b {d_nope, r, h} ([h][c][i] = W_uk[i][c])
   and attn_v_b {r, d_v, h} ([h][e][c] = W_uv[e][c]) */
static float *join_kv_b(gguf_file *f, int l, const mla_config *c) {
    int H = c->n_heads, R = c->kv_lora_rank, dn = c->qk_nope_head_dim, dv = c->v_head_dim, h, i, e;
    char kn[64], vn[64];
    const gguf_tensor *tk, *tv;
    float *kb = NULL, *vb = NULL, *out = NULL;
    snprintf(kn, sizeof kn, "blk.%d.attn_k_b.weight", l);
    snprintf(vn, sizeof vn, "blk.%d.attn_v_b.weight", l);
    tk = gguf_tensor_find(f, kn);
    tv = gguf_tensor_find(f, vn);
    if (!tk || !tv || tk->n_dims != 3 || tv->n_dims != 3 || tk->ne[0] != (uint64_t)dn || tk->ne[1] != (uint64_t)R ||
        tk->ne[2] != (uint64_t)H || tv->ne[0] != (uint64_t)R || tv->ne[1] != (uint64_t)dv || tv->ne[2] != (uint64_t)H) {
        snprintf(f->err, sizeof f->err, "layer %d: attn_k_b / attn_v_b missing or not {%d, %d, %d} / {%d, %d, %d}", l, dn,
                 R, H, R, dv, H);
        return NULL;
    }
    if (!(kb = tensor(f, kn, 0, 0)) || !(vb = tensor(f, vn, 0, 0)) ||
        !(out = (float *)malloc(sizeof(float) * (size_t)H * (dn + dv) * R))) {
        if (kb && vb) snprintf(f->err, sizeof f->err, "out of memory");
        free(kb); free(vb);
        return NULL;
    }
    for (h = 0; h < H; h++)
        for (i = 0; i < R; i++) {
            for (e = 0; e < dn; e++) out[((size_t)h * (dn + dv) + e) * R + i] = kb[((size_t)h * R + i) * dn + e];
            for (e = 0; e < dv; e++) out[((size_t)h * (dn + dv) + dn + e) * R + i] = vb[((size_t)h * dv + e) * R + i];
        }
    free(kb); free(vb);
    return out;
}

#define LOAD(dst, expr)                \
    do {                               \
        if (!((dst) = (expr))) goto bad; \
    } while (0)

int model_load(model *m, gguf_file *f) {
    gguf_str arch;
    int64_t v;
    double d;
    int l, ds;
    const char *a;
    char key[128];
    memset(m, 0, sizeof *m);
    if (gguf_get_str(f, "general.architecture", &arch)) return -1;
    if (arch.n >= sizeof m->arch) { snprintf(f->err, sizeof f->err, "architecture name too long"); return -1; }
    memcpy(m->arch, arch.p, arch.n);
    if (strcmp(m->arch, "llama") && strcmp(m->arch, "llama-mla") && strcmp(m->arch, "deepseek2")) {
        snprintf(f->err, sizeof f->err, "architecture '%s' is not supported (llama, llama-mla or deepseek2)", m->arch);
        return -1;
    }
    a = m->arch;
    m->is_mla = strcmp(a, "llama") != 0;
    ds = !strcmp(a, "deepseek2");
    if (get_i(f, a, "block_count", &v, 1, 0)) return -1;
    m->n_layers = (int)v;
    if (get_i(f, a, "embedding_length", &v, 1, 0)) return -1;
    m->dim = (int)v;
    if (get_i(f, a, "feed_forward_length", &v, 1, 0)) return -1;
    m->ffn_dim = (int)v;
    if (get_i(f, a, "attention.head_count", &v, 1, 0)) return -1;
    m->n_heads = (int)v;
    if (get_i(f, a, "attention.head_count_kv", &v, 0, m->n_heads)) return -1;
    m->n_kv_heads = (int)v;
    if (get_i(f, a, "context_length", &v, 0, 2048)) return -1;
    m->ctx_len = (int)v;
    if (get_f(f, a, "attention.layer_norm_rms_epsilon", &d, 1e-5)) return -1;
    m->eps = (float)d;
    if (get_f(f, a, "rope.freq_base", &d, 10000.0)) return -1;
    m->rope_theta = (float)d;
    if (m->n_layers <= 0 || m->n_layers > 1024 || m->dim <= 0 || m->dim > 65536 || m->ffn_dim <= 0 ||
        m->ffn_dim > 262144 || m->n_heads <= 0 || m->n_kv_heads <= 0 || m->n_heads % m->n_kv_heads ||
        (!ds && m->dim % m->n_heads)) {
        snprintf(f->err, sizeof f->err, "inconsistent model shape (layers %d, dim %d, heads %d/%d, ffn %d)",
                 m->n_layers, m->dim, m->n_heads, m->n_kv_heads, m->ffn_dim);
        return -1;
    }
    m->head_dim = m->dim / m->n_heads;
    if (get_i(f, a, "rope.dimension_count", &v, 0, m->head_dim)) return -1;
    if (v != m->head_dim && !ds) {
        snprintf(f->err, sizeof f->err, "partial RoPE (%d of %d dims) is not supported", (int)v, m->head_dim);
        return -1;
    }
    snprintf(key, sizeof key, "%s.rope.scaling.type", a);
    if (gguf_find(f, key) || gguf_tensor_find(f, "rope_freqs.weight")) {
        snprintf(f->err, sizeof f->err, "RoPE scaling / rope_freqs are not supported by this runner");
        return -1;
    }
    {
        const gguf_tensor *te = gguf_tensor_find(f, "token_embd.weight");
        if (!te || te->n_dims != 2 || te->ne[0] != (uint64_t)m->dim || te->ne[1] > (1u << 24)) {
            snprintf(f->err, sizeof f->err, "token_embd.weight missing or not {%d, vocab}", m->dim);
            return -1;
        }
        m->vocab = (int)te->ne[1];
    }
    m->gqa.dim = m->dim; m->gqa.n_heads = m->n_heads; m->gqa.n_kv_heads = m->n_kv_heads;
    m->gqa.head_dim = m->head_dim; m->gqa.rope_theta = m->rope_theta;
    m->gqa.rope_layout = MLA_ROPE_INTERLEAVED; /* GGUF llama: Q/K rows permuted for NORM rope */
    if (ds && load_deepseek2_config(m, f)) return -1;
    if (m->is_mla && !ds) {
        mla_config *c = &m->mla;
        const char *bad = NULL;
        if (get_i(f, a, "mla.kv_lora_rank", &v, 1, 0)) return -1;
        c->kv_lora_rank = (int)v;
        if (get_i(f, a, "mla.qk_nope_head_dim", &v, 1, 0)) return -1;
        c->qk_nope_head_dim = (int)v;
        if (get_i(f, a, "mla.qk_rope_head_dim", &v, 1, 0)) return -1;
        c->qk_rope_head_dim = (int)v;
        if (get_i(f, a, "mla.v_head_dim", &v, 1, 0)) return -1;
        c->v_head_dim = (int)v;
        if (get_i(f, a, "mla.q_lora_rank", &v, 0, 0)) return -1;
        c->q_lora_rank = (int)v;
        if (get_i(f, a, "mla.attn_bias", &v, 0, 0)) return -1;
        c->attn_bias = (int)v;
        if (get_f(f, a, "mla.softmax_scale", &d, 0)) return -1;
        c->softmax_scale = (float)d;
        c->dim = m->dim; c->n_heads = m->n_heads; c->rms_eps = m->eps; c->rope_theta = m->rope_theta;
        c->rope_layout = MLA_ROPE_INTERLEAVED;
        if (gguf_tensor_find(f, "mla_rope_freqs.weight")) {
            LOAD(m->mla_rope_freqs, tensor(f, "mla_rope_freqs.weight", 1, c->qk_rope_head_dim / 2));
            c->rope_freqs = m->mla_rope_freqs;
        }
        if (mla_config_validate(c, &bad) != MLA_OK) {
            snprintf(f->err, sizeof f->err, "bad MLA hyper-parameter %s", bad ? bad : "?");
            free(m->mla_rope_freqs);
            m->mla_rope_freqs = NULL;
            return -1;
        }
    }
    if (wmat_from_gguf(&m->tok_embd, f, "token_embd.weight", m->vocab, m->dim)) goto bad;
    LOAD(m->out_norm, tensor(f, "output_norm.weight", 1, m->dim));
    if (gguf_tensor_find(f, "output.weight")) {
        if (wmat_from_gguf(&m->output, f, "output.weight", m->vocab, m->dim)) goto bad;
    } else {
        m->output = m->tok_embd;
    }
    m->layers = (model_layer *)calloc((size_t)m->n_layers, sizeof(model_layer));
    if (!m->layers) goto bad;
    for (l = 0; l < m->n_layers; l++) {
        model_layer *L = &m->layers[l];
        int D = m->dim, H = m->n_heads, hd = m->head_dim, kvd = m->n_kv_heads * m->head_dim;
        LOAD(L->attn_norm, layer_tensor(f, l, "attn_norm.weight", 1, D));
        LOAD(L->ffn_norm, layer_tensor(f, l, "ffn_norm.weight", 1, D));
        if (layer_wmat(f, l, "ffn_gate.weight", m->ffn_dim, D, &L->gate) ||
            layer_wmat(f, l, "ffn_up.weight", m->ffn_dim, D, &L->up) ||
            layer_wmat(f, l, "ffn_down.weight", D, m->ffn_dim, &L->down))
            goto bad;
        if (!m->is_mla) {
            if (layer_wmat(f, l, "attn_q.weight", H * hd, D, &L->q) || layer_wmat(f, l, "attn_k.weight", kvd, D, &L->k) ||
                layer_wmat(f, l, "attn_v.weight", kvd, D, &L->v) ||
                layer_wmat(f, l, "attn_output.weight", D, H * hd, &L->o))
                goto bad;
            if (optional_tensor(f, l, "attn_q.bias", 1, H * hd, &L->gqa.b_q) ||
                optional_tensor(f, l, "attn_k.bias", 1, kvd, &L->gqa.b_k) ||
                optional_tensor(f, l, "attn_v.bias", 1, kvd, &L->gqa.b_v))
                goto bad;
            if (L->gqa.b_q || L->gqa.b_k || L->gqa.b_v) {
                if (!L->gqa.b_q || !L->gqa.b_k || !L->gqa.b_v) { snprintf(f->err, sizeof f->err, "layer %d: partial q/k/v biases", l); goto bad; }
                m->gqa.attn_bias = 1;
            }
        } else {
            mla_config *c = &m->mla;
            mla_layer_weights *w = &L->mla;
            int qd = c->qk_nope_head_dim + c->qk_rope_head_dim, r = c->kv_lora_rank, rm = r + c->qk_rope_head_dim;
            if (c->q_lora_rank) {
                if (layer_wmat(f, l, "attn_q_a.weight", c->q_lora_rank, D, &L->q_a) ||
                    layer_wmat(f, l, "attn_q_b.weight", H * qd, c->q_lora_rank, &L->q_b))
                    goto bad;
                if (c->attn_bias) LOAD(w->b_qa, layer_tensor(f, l, "attn_q_a.bias", 1, c->q_lora_rank));
            } else {
                const gguf_tensor *tm;
                snprintf(key, sizeof key, "blk.%d.attn_q_map.weight", l);
                if ((tm = gguf_tensor_find(f, key))) { /* the source's query rows, then each head's rope map */
                    int dn = c->qk_nope_head_dim, m_ = c->qk_rope_head_dim, ds = dn ? dn : (int)tm->ne[0];
                    if (tm->n_dims != 2 || tm->ne[0] == 0 || tm->ne[0] > 4096) {
                        snprintf(f->err, sizeof f->err, "%s is not {d, %d} with 0 < d <= 4096", key, H * m_);
                        goto bad;
                    }
                    if (layer_wmat(f, l, "attn_q_map.weight", H * m_, ds, &L->q_map) ||
                        layer_wmat(f, l, "attn_q.weight", H * ds, D, &L->q))
                        goto bad;
                } else if (layer_wmat(f, l, "attn_q.weight", H * qd, D, &L->q)) {
                    goto bad;
                }
                if (c->attn_bias) LOAD(w->b_q, layer_tensor(f, l, "attn_q.bias", 1, H * qd));
            }
            if (c->q_norm) LOAD(w->q_norm, layer_tensor(f, l, "attn_q_a_norm.weight", 1, c->q_lora_rank));
            if (layer_wmat(f, l, "attn_kv_a_mqa.weight", rm, D, &L->kv_a)) goto bad;
            if (c->attn_bias) LOAD(w->b_kva, layer_tensor(f, l, "attn_kv_a_mqa.bias", 1, rm));
            if (c->kv_norm) LOAD(w->kv_norm, layer_tensor(f, l, "attn_kv_a_norm.weight", 1, r));
            {
                int split = ds && !gguf_tensor_find(f, "blk.0.attn_kv_b.weight"); /* attn_k_b + attn_v_b */
                if (split) LOAD(w->w_kvb, join_kv_b(f, l, c));
                else LOAD(w->w_kvb, layer_tensor(f, l, "attn_kv_b.weight", H * (c->qk_nope_head_dim + c->v_head_dim), r));
                snprintf(key, sizeof key, "blk.%d.attn_%s.weight", l, split ? "k_b" : "kv_b"); /* the stored type */
                if (kvb_copy(f, w, gguf_tensor_find(f, key)->type, H * (c->qk_nope_head_dim + c->v_head_dim), r)) goto bad;
            }
            if (layer_wmat(f, l, "attn_output.weight", D, H * c->v_head_dim, &L->o)) goto bad;
        }
    }
    return 0;
bad:
    model_free(m);
    return -1;
}

void model_free(model *m) {
    int l;
    if (m->conv) { /* converted in memory: attention owned by conv, the rest borrowed */
        for (l = 0; l < m->n_layers; l++) mla_converted_free(&m->conv[l]);
        free(m->conv);
        free(m->layers);
        memset(m, 0, sizeof *m);
        return;
    }
    if (m->layers)
        for (l = 0; l < m->n_layers; l++) {
            model_layer *L = &m->layers[l];
            free(L->attn_norm); free(L->ffn_norm);
            free((void *)L->gqa.w_q); free((void *)L->gqa.w_k); free((void *)L->gqa.w_v); free((void *)L->gqa.w_o);
            free((void *)L->gqa.b_q); free((void *)L->gqa.b_k); free((void *)L->gqa.b_v);
            free((void *)L->mla.w_q); free((void *)L->mla.b_q); free((void *)L->mla.w_qa); free((void *)L->mla.b_qa);
            free((void *)L->mla.w_qb); free((void *)L->mla.w_kva); free((void *)L->mla.b_kva);
            free((void *)L->mla.q_norm); free((void *)L->mla.kv_norm);
            free((void *)L->mla.w_kvb); free((void *)L->mla.w_kvb_bf16); free((void *)L->mla.w_o);
            free((void *)L->mla.w_kvb_q8); free((void *)L->mla.w_kvb_q8_scale);
        }
    free(m->layers);
    free(m->out_norm); free(m->mla_rope_freqs);
    memset(m, 0, sizeof *m);
}

void model_repack(model *m) {
    int l, tied = m->output.q == m->tok_embd.q;
    wmat_repack(&m->tok_embd);
    if (tied) m->output = m->tok_embd;
    else wmat_repack(&m->output);
    for (l = 0; l < m->n_layers; l++) {
        model_layer *L = &m->layers[l];
        wmat *all[10];
        int k;
        all[0] = &L->gate; all[1] = &L->up; all[2] = &L->down; all[3] = &L->q; all[4] = &L->k;
        all[5] = &L->v; all[6] = &L->o; all[7] = &L->q_a; all[8] = &L->q_b; all[9] = &L->kv_a;
        for (k = 0; k < 10; k++)
            if (all[k]->q) wmat_repack(all[k]);
    }
}

/* W_q [h*(dn+m)][D] of a file that stores the source's query rows q [h*d][D]
   and each head's rope map [h*m][d]: head j's rows [q_j ; map_j q_j] (dn = d)
   or [map_j q_j] (dn = 0), as mla.h built them */
static float *q_product(const wmat *q, const wmat *map, int H, int dn) {
    int m = map->rows / H, d = map->cols, D = q->cols, j, i, e, k;
    float *src = wmat_f32(q), *mp = wmat_f32(map), *out = (float *)malloc(sizeof(float) * (size_t)H * (dn + m) * D);
    double *acc = (double *)malloc(sizeof(double) * (size_t)D);
    if (src && mp && out && acc)
        for (j = 0; j < H; j++) {
            float *dst = out + (size_t)j * (dn + m) * D;
            memcpy(dst, src + (size_t)j * d * D, sizeof(float) * (size_t)dn * D);
            for (i = 0; i < m; i++) {
                const float *a = mp + ((size_t)j * m + i) * d;
                memset(acc, 0, sizeof(double) * (size_t)D);
                for (e = 0; e < d; e++)
                    for (k = 0; k < D; k++) acc[k] += (double)a[e] * src[((size_t)j * d + e) * D + k];
                for (k = 0; k < D; k++) dst[(size_t)(dn + i) * D + k] = (float)acc[k];
            }
        }
    else {
        free(out);
        out = NULL;
    }
    free(src); free(mp); free(acc);
    return out;
}

int model_attn_f32(model *m) {
    int l;
    for (l = 0; l < m->n_layers; l++) {
        model_layer *L = &m->layers[l];
        /* a copy per projection the file gives and the f32 weights lack */
#define F32_OF(dst, src)                                                 \
    if (!(dst) && (src).q && !((dst) = wmat_f32(&(src)))) return -1
        if (m->is_mla) {
            if (!L->mla.w_q && L->q_map.q && !(L->mla.w_q = q_product(&L->q, &L->q_map, m->n_heads, m->mla.qk_nope_head_dim)))
                return -1;
            F32_OF(L->mla.w_q, L->q); F32_OF(L->mla.w_qa, L->q_a); F32_OF(L->mla.w_qb, L->q_b);
            F32_OF(L->mla.w_kva, L->kv_a); F32_OF(L->mla.w_o, L->o);
        } else {
            F32_OF(L->gqa.w_q, L->q); F32_OF(L->gqa.w_k, L->k); F32_OF(L->gqa.w_v, L->v); F32_OF(L->gqa.w_o, L->o);
        }
#undef F32_OF
    }
    return 0;
}

void model_attn_views(model *m, int l) {
    model_layer *L = &m->layers[l];
    const mla_config *c = &m->mla;
    const mla_layer_weights *w = &L->mla;
    int qd = c->qk_nope_head_dim + c->qk_rope_head_dim, H = c->n_heads;
    memset(&L->q, 0, sizeof L->q); memset(&L->k, 0, sizeof L->k); memset(&L->v, 0, sizeof L->v);
    memset(&L->q_a, 0, sizeof L->q_a); memset(&L->q_b, 0, sizeof L->q_b); memset(&L->q_map, 0, sizeof L->q_map);
    if (w->w_q) wmat_view_f32(&L->q, w->w_q, H * qd, c->dim);
    if (w->w_qa) wmat_view_f32(&L->q_a, w->w_qa, c->q_lora_rank, c->dim);
    if (w->w_qb) wmat_view_f32(&L->q_b, w->w_qb, H * qd, c->q_lora_rank);
    wmat_view_f32(&L->kv_a, w->w_kva, c->kv_lora_rank + c->qk_rope_head_dim, c->dim);
    wmat_view_f32(&L->o, w->w_o, c->dim, H * c->v_head_dim);
}

long model_kv_values_per_token(const model *m) {
    if (m->is_mla) return (long)(m->mla.kv_lora_rank + m->mla.qk_rope_head_dim) * m->n_layers;
    return 2L * m->n_kv_heads * m->head_dim * m->n_layers;
}

int model_state_init(model_state *s, const model *m, int max_ctx, int max_tokens, mla_dtype cache_type) {
    size_t D = (size_t)m->dim, F = (size_t)m->ffn_dim, T = (size_t)max_tokens;
    int rc;
    memset(s, 0, sizeof *s);
    s->max_ctx = max_ctx; s->max_tokens = max_tokens;
    s->mode = MLA_ABSORBED;       /* decode: read only the latent         */
    s->prefill_mode = MLA_ABSORBED; /* prefill too: decompressing the context for every
                                       chunk made 4K prompts 3.4x slower than the latent */
    if (m->is_mla) {
        rc = mla_cache_init(&s->mla, cache_type, m->n_layers, m->mla.kv_lora_rank, m->mla.qk_rope_head_dim, max_ctx, NULL);
        if (rc) return rc;
        s->ws_bytes = mla_workspace_bytes(&m->mla, max_tokens, max_ctx, MLA_ABSORBED);
    } else {
        rc = mla_gqa_cache_init(&s->gqa, m->n_layers, max_ctx, m->n_kv_heads * m->head_dim);
        if (rc) return rc;
        s->ws_bytes = mla_gqa_workspace_bytes(&m->gqa, max_tokens, max_ctx);
    }
    s->ws = malloc(s->ws_bytes);
    s->x = (float *)malloc(sizeof(float) * T * D);
    s->xb = (float *)malloc(sizeof(float) * T * D);
    s->xc = (float *)malloc(sizeof(float) * T * D);
    s->hb = (float *)malloc(sizeof(float) * T * F);
    s->hb2 = (float *)malloc(sizeof(float) * T * F);
    if (m->is_mla) {
        const mla_config *c = &m->mla;
        size_t qd = (size_t)c->qk_nope_head_dim + c->qk_rope_head_dim, rq = (size_t)c->q_lora_rank;
        int l;
        for (l = 0; l < m->n_layers; l++) /* qa also holds the source's query before a per-head map */
            if (m->layers[l].q_map.q && (size_t)m->layers[l].q.rows > rq) rq = (size_t)m->layers[l].q.rows;
        s->q = (float *)malloc(sizeof(float) * T * c->n_heads * qd);
        s->k = (float *)malloc(sizeof(float) * T * (c->kv_lora_rank + c->qk_rope_head_dim));
        s->o = (float *)malloc(sizeof(float) * T * c->n_heads * c->v_head_dim);
        s->qa = (float *)malloc(sizeof(float) * T * (rq ? rq : 1));
        s->v = (float *)malloc(sizeof(float) * (T * c->n_heads * c->qk_rope_head_dim + 1)); /* q_pe of a q map */
    } else {
        size_t hd = (size_t)m->n_heads * m->head_dim, kvd = (size_t)m->n_kv_heads * m->head_dim;
        s->q = (float *)malloc(sizeof(float) * T * hd);
        s->k = (float *)malloc(sizeof(float) * T * kvd);
        s->v = (float *)malloc(sizeof(float) * T * kvd);
        s->o = (float *)malloc(sizeof(float) * T * hd);
        s->qa = (float *)malloc(sizeof(float));
    }
    if (!s->ws || !s->x || !s->xb || !s->xc || !s->hb || !s->hb2 || !s->q || !s->k || !s->v || !s->o || !s->qa)
        return MLA_ERR_OUT_OF_MEMORY;
    return 0;
}

int model_state_modes(model_state *s, const model *m, mla_mode decode, mla_mode prefill) {
    s->mode = decode;
    s->prefill_mode = prefill;
    if (m->is_mla && (decode == MLA_NAIVE || prefill == MLA_NAIVE)) {
        size_t need = mla_workspace_bytes(&m->mla, s->max_tokens, s->max_ctx, MLA_NAIVE);
        if (need > s->ws_bytes) {
            void *p = realloc(s->ws, need);
            if (!p) return MLA_ERR_OUT_OF_MEMORY;
            s->ws = p;
            s->ws_bytes = need;
        }
    }
    return 0;
}

void model_state_free(model_state *s) {
    mla_cache_free(&s->mla);
    mla_gqa_cache_free(&s->gqa);
    free(s->ws); free(s->x); free(s->xb); free(s->xc); free(s->hb); free(s->hb2);
    free(s->q); free(s->k); free(s->v); free(s->o); free(s->qa);
    memset(s, 0, sizeof *s);
}

void model_state_reset(model_state *s) {
    s->gqa.len = 0;
    s->mla.seq.len = 0;
}

int model_pos(const model *m, const model_state *s) { return m->is_mla ? s->mla.seq.len : s->gqa.len; }

/* y [T][n] += b (b NULL: nothing) */
static void add_bias(float *y, const float *b, int T, int n) {
    int t, i;
    if (b)
        for (t = 0; t < T; t++)
            for (i = 0; i < n; i++) y[(size_t)t * n + i] += b[i];
}

/* One transformer block on the residual stream x [T][D] (in place) at the
   state's next positions; the cache position advances in model_forward. */
int model_layer_forward(const model *m, model_state *s, int l, float *x, int T) {
    size_t D = (size_t)m->dim;
    const model_layer *L = &m->layers[l];
    int t, i, rc;
    mla_seq *seq = &s->mla.seq;
    for (t = 0; t < T; t++) mla_rmsnorm(s->xb + t * D, x + t * D, L->attn_norm, m->dim, m->eps);
    if (m->is_mla) { /* projections here, in the stored types; mla.h's attention core between */
        const mla_config *c = &m->mla;
        mla_layer_weights wl = L->mla;
        const mla_layer_weights *w = &wl;
        int rq = c->q_lora_rank, rm = c->kv_lora_rank + c->qk_rope_head_dim;
        float *y[2];
        const wmat *wm[2];
        if (!wmat_act8()) { /* W_kvb's compact copy only beside 8-bit activations */
            wl.w_kvb_bf16 = NULL;
            wl.w_kvb_q8 = NULL; wl.w_kvb_q8_scale = NULL;
        }
        y[0] = rq || L->q_map.q ? s->qa : s->q; y[1] = s->k;
        wm[0] = rq ? &L->q_a : &L->q; wm[1] = &L->kv_a;
        wmat_mul_n(y, s->xb, wm, 2, T);
        add_bias(s->k, c->attn_bias ? w->b_kva : NULL, T, rm);
        if (rq) {
            add_bias(s->qa, c->attn_bias ? w->b_qa : NULL, T, rq);
            if (c->q_norm)
                for (t = 0; t < T; t++) mla_rmsnorm(s->qa + (size_t)t * rq, s->qa + (size_t)t * rq, w->q_norm, rq, m->eps);
            wmat_mul(s->q, s->qa, &L->q_b, T);
        } else {
            if (L->q_map.q) { /* q_j = [source q_j ; map_j source q_j] */
                int H = c->n_heads, dn = c->qk_nope_head_dim, m_ = c->qk_rope_head_dim, d = L->q_map.cols, j;
                wmat_mul_heads(s->v, s->qa, &L->q_map, H, T);
                for (t = 0; t < T; t++)
                    for (j = 0; j < H; j++) {
                        float *qj = s->q + ((size_t)t * H + j) * (dn + m_);
                        memcpy(qj, s->qa + ((size_t)t * H + j) * d, sizeof(float) * (size_t)dn);
                        memcpy(qj + dn, s->v + ((size_t)t * H + j) * m_, sizeof(float) * (size_t)m_);
                    }
            }
            add_bias(s->q, c->attn_bias ? w->b_q : NULL, T, c->n_heads * (c->qk_nope_head_dim + c->qk_rope_head_dim));
        }
        rc = mla_attend_projected(c, w, &s->mla.pool, &seq, 1, T, l, s->q, s->k, s->o,
                                  T > 1 ? s->prefill_mode : s->mode, s->ws, s->ws_bytes);
        if (rc) return rc;
        wmat_mul(s->xc, s->o, &L->o, T);
        add_bias(s->xc, w->b_o, T, m->dim);
    } else {
        const mla_gqa_weights *w = &L->gqa;
        int ab = m->gqa.attn_bias;
        float *y[3];
        const wmat *wm[3];
        y[0] = s->q; y[1] = s->k; y[2] = s->v;
        wm[0] = &L->q; wm[1] = &L->k; wm[2] = &L->v;
        wmat_mul_n(y, s->xb, wm, 3, T);
        add_bias(s->q, ab ? w->b_q : NULL, T, L->q.rows);
        add_bias(s->k, ab ? w->b_k : NULL, T, L->k.rows);
        add_bias(s->v, ab ? w->b_v : NULL, T, L->v.rows);
        rc = mla_gqa_attend_projected(&m->gqa, &s->gqa, l, s->q, s->k, s->v, T, s->o, s->ws, s->ws_bytes);
        if (rc) return rc;
        wmat_mul(s->xc, s->o, &L->o, T);
        add_bias(s->xc, w->b_o, T, m->dim);
    }
    for (i = 0; i < T * m->dim; i++) x[i] += s->xc[i];
    for (t = 0; t < T; t++) mla_rmsnorm(s->xb + t * D, x + t * D, L->ffn_norm, m->dim, m->eps);
    {
        float *y[2];
        const wmat *wm[2];
        y[0] = s->hb; y[1] = s->hb2;
        wm[0] = &L->gate; wm[1] = &L->up;
        wmat_mul_n(y, s->xb, wm, 2, T);
    }
    for (i = 0; i < T * m->ffn_dim; i++) { /* SwiGLU */
        float g = s->hb[i];
        s->hb[i] = g / (1.0f + expf(-g)) * s->hb2[i];
    }
    wmat_mul(s->xc, s->hb, &L->down, T);
    for (i = 0; i < T * m->dim; i++) x[i] += s->xc[i];
    return 0;
}

void model_advance(const model *m, model_state *s, int T) {
    if (m->is_mla) mla_seq_advance(&s->mla.seq, T);
    else s->gqa.len += T;
}

int model_forward(const model *m, model_state *s, const int *tokens, int T, float *hidden) {
    size_t D = (size_t)m->dim;
    int l, t, rc;
    if (T <= 0 || T > s->max_tokens) return MLA_ERR_INVALID_ARG;
    if (model_pos(m, s) + T > s->max_ctx) return MLA_ERR_CACHE_FULL;
    for (t = 0; t < T; t++) {
        if (tokens[t] < 0 || tokens[t] >= m->vocab) return MLA_ERR_INVALID_ARG;
        wmat_row(&m->tok_embd, tokens[t], s->x + t * D);
    }
    for (l = 0; l < m->n_layers; l++)
        if ((rc = model_layer_forward(m, s, l, s->x, T))) return rc;
    model_advance(m, s, T);
    for (t = 0; t < T; t++) mla_rmsnorm(hidden + t * D, s->x + t * D, m->out_norm, m->dim, m->eps);
    return 0;
}

void model_logits(const model *m, const float *hidden, int T, float *logits) {
    wmat_mul(logits, hidden, &m->output, T);
}
