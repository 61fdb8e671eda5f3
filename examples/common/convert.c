#define _POSIX_C_SOURCE 200809L /* mkdir */
#include "convert.h"
#include "run.h"
#include "outfile.h"
#include <errno.h>
#include <math.h>
#include <sys/stat.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Runs the calibration windows through the model layer by layer; at each
   layer accumulates the attention input's moments into keep[l] (when keep is
   given; `pre` instead: statistics gathered before, nothing accumulated),
   then moves the residual stream through layer l of `through` (the source
   model, or in sequential mode the converted one as it grows). The hook,
   when set, converts layer l before it is used; it sees the statistics and
   the residual stream entering layer l (n_win windows of `window` tokens). */
typedef struct {
    const mla_calib *cal;
    const float *resid; /* [n_win * window][D] */
    int n_win, window;
} layer_input;
typedef int (*layer_hook)(void *ctx, int l, const layer_input *in, char *err, size_t errlen);

/* windows whose attention statistics (how far each head looks) are gathered:
   the expected rotations settle within a few thousand tokens */
#define ATT_WINDOWS 8

static int calib_pass(model *src, const model *through, const int *toks, int n, int window, mla_calib *keep,
                      const mla_calib *pre, layer_hook hook, void *hook_ctx, int progress, char *err, size_t errlen) {
    int n_win = n / window, l, w, t, rc = 0, act8 = wmat_act8();
    size_t D = (size_t)src->dim;
    float *H = (float *)malloc(sizeof(float) * (size_t)n_win * window * D);
    float *xb = (float *)malloc(sizeof(float) * (size_t)window * D);
    model_state st;
    int have_st = 0;
    double t0 = now_s();
    fflush(stdout); /* progress goes to stderr */
    wmat_set_act8(0); /* the statistics of the model itself, not of 8-bit activations */
    if (!H || !xb || model_attn_f32(src)) {
        snprintf(err, errlen, "out of memory for %d calibration tokens", n_win * window);
        rc = -1;
        goto done;
    }
    for (t = 0; t < n_win * window; t++) {
        if (toks[t] < 0 || toks[t] >= src->vocab) { /* no id outside the vocabulary reaches the embedding */
            snprintf(err, errlen, "calibration token %d has id %d, outside the vocabulary (%d)", t, toks[t], src->vocab);
            rc = -1;
            goto done;
        }
        wmat_row(&src->tok_embd, toks[t], H + t * D);
    }
    for (l = 0; l < src->n_layers; l++) {
        mla_calib cal, *c = keep ? &keep[l] : &cal;
        layer_input in;
        if (pre) c = (mla_calib *)&pre[l]; /* read only: the loop below is skipped */
        else if (mla_calib_init(c, src->dim)) { snprintf(err, errlen, "out of memory"); rc = -1; goto done; }
        for (w = 0; w < n_win && !pre; w++) { /* the attention input of layer l: RMSNorm of the residual */
            for (t = 0; t < window; t++)
                mla_rmsnorm(xb + t * D, H + ((size_t)w * window + t) * D, src->layers[l].attn_norm, src->dim, src->eps);
            if (w < ATT_WINDOWS && !src->is_mla &&
                mla_calib_attention(c, &src->gqa, &src->layers[l].gqa, xb, window) != MLA_OK) {
                snprintf(err, errlen, "layer %d: attention statistics failed", l);
                if (!keep) mla_calib_free(c);
                rc = -1;
                goto done;
            }
            if (mla_calib_add(c, xb, window) != MLA_OK) {
                snprintf(err, errlen, "layer %d: the calibration activations hold NaN or Inf", l);
                if (!keep) mla_calib_free(c);
                rc = -1;
                goto done;
            }
        }
        in.cal = c; in.resid = H; in.n_win = n_win; in.window = window;
        if (hook && (rc = hook(hook_ctx, l, &in, err, errlen))) {
            if (!keep && !pre) mla_calib_free(c);
            goto done;
        }
        if (!keep && !pre) mla_calib_free(c);
        if (l + 1 < src->n_layers) {
            if (!have_st) {
                if (model_state_init(&st, through, window, window, MLA_F32)) { snprintf(err, errlen, "out of memory"); rc = -1; goto done; }
                have_st = 1;
                /* the reference path, as the evaluation */
                if (model_state_modes(&st, through, MLA_ABSORBED, MLA_NAIVE)) { snprintf(err, errlen, "out of memory"); rc = -1; goto done; }
            }
            for (w = 0; w < n_win; w++) {
                model_state_reset(&st);
                if ((rc = model_layer_forward(through, &st, l, H + (size_t)w * window * D, window))) {
                    snprintf(err, errlen, "layer %d forward: %s", l, mla_result_string((mla_result)rc));
                    rc = -1;
                    goto done;
                }
            }
        }
        if (progress) {
            fprintf(stderr, "\r  %s: layer %d/%d (%d tokens, %.1f s)", hook ? "calibration + conversion" : "calibration",
                    l + 1, src->n_layers, n_win * window, now_s() - t0);
            fflush(stderr);
        }
    }
    if (progress) fprintf(stderr, "\n");
done:
    wmat_set_act8(act8);
    free(H);
    free(xb);
    if (have_st) model_state_free(&st);
    return rc;
}

mla_calib *calib_collect(model *src, const int *toks, int n, int window, int progress, char *err, size_t errlen) {
    mla_calib *cal = (mla_calib *)calloc((size_t)src->n_layers, sizeof(mla_calib));
    if (window <= 0) window = CALIB_WINDOW;
    if (!cal) { snprintf(err, errlen, "out of memory"); return NULL; }
    if (n / window < 1) { snprintf(err, errlen, "calibration text shorter than one window (%d tokens)", window); free(cal); return NULL; }
    if (calib_pass(src, src, toks, n, window, cal, NULL, NULL, NULL, progress, err, errlen)) {
        calib_free_all(cal, src->n_layers);
        return NULL;
    }
    return cal;
}

void calib_free_all(mla_calib *cal, int n_layers) {
    int l;
    if (!cal) return;
    for (l = 0; l < n_layers; l++) mla_calib_free(&cal[l]);
    free(cal);
}

typedef struct {
    const model *src;
    model *dst;
    const convert_opts *o;
} convert_ctx;

int refit_targets(const convert_opts *o, const model *src, int n_tokens) {
    int t = o->refit;
    if (o->refit_tokens > 0 && o->refit_tokens < n_tokens) n_tokens = o->refit_tokens;
    if (n_tokens < REFIT_MIN_RATIO * src->n_heads * src->head_dim) t &= ~MLA_REFIT_OUTPUT;
    if (n_tokens < REFIT_MIN_RATIO * (o->rank > 0 ? o->rank : 2 * src->n_kv_heads * src->head_dim)) t &= ~MLA_REFIT_VALUES;
    return t;
}

/* Output-aware refit of converted layer l (mla_refit_*) on the windows of
   the residual stream entering it: values first, then W_o on statistics
   gathered with the refit values. */
static int refit_layer(const convert_ctx *c, int l, const layer_input *in, char *err, size_t errlen) {
    const model_layer *L = &c->src->layers[l];
    mla_converted *cv = &c->dst->conv[l];
    size_t D = (size_t)c->src->dim;
    float *x = (float *)malloc(sizeof(float) * (size_t)in->window * D);
    mla_refit rf;
    mla_result r = x ? mla_refit_init(&rf, cv) : MLA_ERR_OUT_OF_MEMORY;
    int stage, w, t, n_win = in->n_win, targets;
    if (c->o->refit_tokens > 0 && c->o->refit_tokens / in->window < n_win)
        n_win = c->o->refit_tokens / in->window > 0 ? c->o->refit_tokens / in->window : 1;
    targets = refit_targets(c->o, c->src, n_win * in->window);
    for (stage = 0; stage < 2 && r == MLA_OK; stage++) {
        int target = stage == 0 ? MLA_REFIT_VALUES : MLA_REFIT_OUTPUT;
        if (!(targets & target)) continue;
        mla_refit_reset(&rf);
        for (w = 0; w < n_win && r == MLA_OK; w++) {
            for (t = 0; t < in->window; t++)
                mla_rmsnorm(x + t * D, in->resid + ((size_t)w * in->window + t) * D, L->attn_norm, (int)D, c->src->eps);
            r = mla_refit_add(&rf, target, &c->src->gqa, &L->gqa, cv, x, in->window);
        }
        if (r == MLA_OK) r = mla_refit_apply(&rf, cv, target, c->o->refit_damp);
    }
    if (x) mla_refit_free(&rf);
    free(x);
    if (r != MLA_OK) {
        snprintf(err, errlen, "layer %d: refit: %s", l, mla_result_string(r));
        return -1;
    }
    return 0;
}

/* convert layer l of src into dst (in NULL or no statistics: weight-only) */
static int convert_one(void *p, int l, const layer_input *in, char *err, size_t errlen) {
    convert_ctx *c = (convert_ctx *)p;
    const model_layer *L = &c->src->layers[l];
    const mla_calib *cal = in ? in->cal : NULL;
    mla_convert_options mo;
    mla_result r;
    memset(&mo, 0, sizeof mo);
    mo.kv_lora_rank = c->o->rank; mo.qk_rope_head_dim = c->o->rope_dim; mo.freqfold = c->o->freqfold;
    mo.method = c->o->method;
    mo.key_weight = c->o->key_weight;
    mo.expected_rope = c->o->expected_rope && cal;
    r = c->o->lossless ? mla_convert_lossless(&c->src->gqa, &L->gqa, &c->dst->conv[l])
                       : mla_convert_layer(&c->src->gqa, &L->gqa, cal, &mo, &c->dst->conv[l]);
    if (r != MLA_OK) {
        snprintf(err, errlen, "layer %d: %s", l, mla_result_string(r));
        return -1;
    }
    if (c->o->refit && !c->o->lossless && in && in->resid && refit_layer(c, l, in, err, errlen)) return -1;
    if (c->o->q_rank > 0 && (r = mla_convert_lowrank_q(&c->dst->conv[l], cal, c->o->q_rank, 0.0)) != MLA_OK) {
        snprintf(err, errlen, "layer %d: %s", l, mla_result_string(r));
        return -1;
    }
    c->dst->layers[l].mla = c->dst->conv[l].w;
    if (l == 0) c->dst->mla = c->dst->conv[0].cfg;
    model_attn_views(c->dst, l);
    return 0;
}

int convert_model(model *src, const int *calib, int n_calib, const mla_calib *pre, const convert_opts *o,
                  model *dst, char *err, size_t errlen) {
    int window = o->window > 0 ? o->window : CALIB_WINDOW, l, rc = 0;
    convert_ctx ctx;
    double t0 = now_s();
    if (src->is_mla) { snprintf(err, errlen, "the source model is already MLA"); return -1; }
    if (model_attn_f32(src)) { snprintf(err, errlen, "out of memory for the f32 attention weights"); return -1; }
    if (!o->lossless && !pre && calib && n_calib < window) {
        snprintf(err, errlen, "%d calibration tokens: at least one window of %d is needed", n_calib, window);
        return -1;
    }
    *dst = *src;
    dst->is_mla = 1;
    snprintf(dst->arch, sizeof dst->arch, "llama-mla");
    dst->layers = (model_layer *)calloc((size_t)src->n_layers, sizeof(model_layer));
    dst->conv = (mla_converted *)calloc((size_t)src->n_layers, sizeof(mla_converted));
    if (!dst->layers || !dst->conv) { snprintf(err, errlen, "out of memory"); return -1; }
    for (l = 0; l < src->n_layers; l++) {
        dst->layers[l] = src->layers[l];
        memset(&dst->layers[l].gqa, 0, sizeof dst->layers[l].gqa);
    }
    ctx.src = src; ctx.dst = dst; ctx.o = o;
    if (o->lossless || (!pre && !calib)) { /* no statistics needed / weight-only */
        for (l = 0; l < src->n_layers && !rc; l++) rc = convert_one(&ctx, l, NULL, err, errlen);
    } else if (o->sequential) { /* GPTQ-style: layer l sees what the converted layers before it produce */
        rc = calib_pass(src, dst, calib, n_calib, window, NULL, NULL, convert_one, &ctx, o->progress, err, errlen);
    } else if (o->refit && calib) { /* one pass of the original: convert, then refit on its inputs */
        rc = calib_pass(src, src, calib, n_calib, window, NULL, pre, convert_one, &ctx, o->progress, err, errlen);
    } else {
        mla_calib *own = pre ? NULL : calib_collect(src, calib, n_calib, window, o->progress, err, errlen);
        const mla_calib *cal = pre ? pre : own;
        layer_input in;
        if (!cal) rc = -1;
        memset(&in, 0, sizeof in);
        for (l = 0; l < src->n_layers && !rc; l++) {
            in.cal = &cal[l];
            rc = convert_one(&ctx, l, &in, err, errlen);
        }
        calib_free_all(own, src->n_layers);
    }
    if (rc) {
        model_free(dst);
        return -1;
    }
    if (o->progress) fprintf(stderr, "  converted %d layers in %.1f s\n", src->n_layers, now_s() - t0);
    return 0;
}

/* the source's q/k/v projections (weights and biases), which a conversion replaces */
static int gqa_attention(const char *name) {
    return strstr(name, ".attn_q.") || strstr(name, ".attn_k.") || strstr(name, ".attn_v.");
}

/* a tensor in `type` if its rows allow, else F32 (said once per name) */
static void put_typed(gguf_writer *w, const char *name, uint32_t type, const float *p, int n_dims, const uint64_t *ne) {
    if (gguf_w_tensor_as(w, name, type, p, n_dims, ne)) {
        fprintf(stderr, "  %s: rows of %llu do not fit %s blocks, stored as F32\n", name,
                (unsigned long long)ne[0], ggml_type_name(type));
        gguf_w_tensor_as(w, name, GGML_F32, p, n_dims, ne);
    }
}

/* [rows][cols] matrices in the chosen type; vectors (biases, tables) in F32 */
static void put_matrix(gguf_writer *w, const char *name, uint32_t type, const float *p, int rows, int cols) {
    uint64_t ne[2];
    ne[0] = (uint64_t)cols; ne[1] = (uint64_t)rows;
    put_typed(w, name, rows == 1 ? GGML_F32 : type, p, rows == 1 ? 1 : 2, ne);
}

/* the source tensor `name` if it holds exactly `p` (then copied as stored) */
static const gguf_tensor *same_as_source(const gguf_file *sf, const char *name, const float *p, size_t n) {
    const gguf_tensor *t = gguf_tensor_find(sf, name);
    float *s;
    int same;
    if (!t || t->n_elem != n || !(s = (float *)malloc(sizeof(float) * n))) return NULL;
    same = !gguf_dequant(t->type, t->data, s, n) && !memcmp(s, p, sizeof(float) * n);
    free(s);
    return same ? t : NULL;
}

int save_converted(const model *m, const gguf_file *sf, const char *path, uint32_t type, char *err, size_t errlen) {
    gguf_writer *w = gguf_writer_new();
    const mla_config *c = &m->mla;
    uint64_t i;
    int l, rc, H = m->n_heads, qd = c->qk_nope_head_dim + c->qk_rope_head_dim, r = c->kv_lora_rank;
    const gguf_tensor *o;
    char key[160];
    if (!m->is_mla || !m->conv) { snprintf(err, errlen, "not a converted model"); gguf_writer_free(w); return -1; }
    gguf_w_str(w, "general.architecture", "llama-mla");
    for (i = 0; i < sf->n_kv; i++) { /* llama.* -> llama-mla.*, general.* and tokenizer.* as they are */
        const gguf_kv *kv = &sf->kv[i];
        if (kv->key.n == 20 && !memcmp(kv->key.p, "general.architecture", 20)) continue;
        if (kv->key.n == 17 && !memcmp(kv->key.p, "general.file_type", 17)) continue;
        if (kv->key.n > 6 && !memcmp(kv->key.p, "llama.", 6)) {
            snprintf(key, sizeof key, "llama-mla.%.*s", (int)kv->key.n - 6, kv->key.p + 6);
            gguf_w_copy_as(w, key, kv);
        } else {
            gguf_w_copy(w, kv);
        }
    }
    gguf_w_u32(w, "llama-mla.mla.kv_lora_rank", (uint32_t)r);
    gguf_w_u32(w, "llama-mla.mla.qk_nope_head_dim", (uint32_t)c->qk_nope_head_dim);
    gguf_w_u32(w, "llama-mla.mla.qk_rope_head_dim", (uint32_t)c->qk_rope_head_dim);
    gguf_w_u32(w, "llama-mla.mla.v_head_dim", (uint32_t)c->v_head_dim);
    gguf_w_u32(w, "llama-mla.mla.q_lora_rank", (uint32_t)c->q_lora_rank);
    gguf_w_u32(w, "llama-mla.mla.attn_bias", (uint32_t)c->attn_bias);
    put_matrix(w, "mla_rope_freqs.weight", type, m->conv[0].rope_freqs, 1, c->qk_rope_head_dim / 2);
    for (i = 0; i < sf->n_tensors; i++) { /* everything but attention q/k/v/o: unchanged bytes */
        const gguf_tensor *t = &sf->tensors[i];
        if (gqa_attention(t->name) || strstr(t->name, ".attn_output.")) continue;
        gguf_w_tensor_raw(w, t->name, t->type, t->data, (int)t->n_dims, t->ne);
    }
    for (l = 0; l < m->n_layers; l++) {
        const mla_layer_weights *lw = &m->layers[l].mla;
        if (c->q_lora_rank) {
            snprintf(key, sizeof key, "blk.%d.attn_q_a.weight", l);
            put_matrix(w, key, type, lw->w_qa, c->q_lora_rank, m->dim);
            snprintf(key, sizeof key, "blk.%d.attn_q_b.weight", l);
            put_matrix(w, key, type, lw->w_qb, H * qd, c->q_lora_rank);
            if (c->attn_bias) { snprintf(key, sizeof key, "blk.%d.attn_q_a.bias", l); put_matrix(w, key, type, lw->b_qa, 1, c->q_lora_rank); }
        } else {
            snprintf(key, sizeof key, "blk.%d.attn_q.weight", l);
            if (m->conv[l].q_map && (o = gguf_tensor_find(sf, key)) && o->n_elem == (uint64_t)H * m->head_dim * m->dim) {
                /* the source's query rows as stored, then each head's rope map: fewer bytes
                   than the product and no second rounding of them; the map in F32 for an exact
                   file, else in 16 bits (F16: 11 significant bits; BF16 when asked for) */
                uint32_t mt = type == GGML_F32 ? GGML_F32 : type == GGML_BF16 ? GGML_BF16 : GGML_F16;
                gguf_w_tensor_raw(w, key, o->type, o->data, (int)o->n_dims, o->ne);
                snprintf(key, sizeof key, "blk.%d.attn_q_map.weight", l);
                put_matrix(w, key, mt, m->conv[l].q_map, H * c->qk_rope_head_dim, m->head_dim);
            } else {
                put_matrix(w, key, type, lw->w_q, H * qd, m->dim);
            }
            if (c->attn_bias) { snprintf(key, sizeof key, "blk.%d.attn_q.bias", l); put_matrix(w, key, type, lw->b_q, 1, H * qd); }
        }
        snprintf(key, sizeof key, "blk.%d.attn_kv_a_mqa.weight", l);
        put_matrix(w, key, type, lw->w_kva, r + c->qk_rope_head_dim, m->dim);
        if (c->attn_bias) {
            snprintf(key, sizeof key, "blk.%d.attn_kv_a_mqa.bias", l);
            put_matrix(w, key, type, lw->b_kva, 1, r + c->qk_rope_head_dim);
        }
        snprintf(key, sizeof key, "blk.%d.attn_kv_b.weight", l);
        put_matrix(w, key, type, lw->w_kvb, H * (c->qk_nope_head_dim + c->v_head_dim), r);
        snprintf(key, sizeof key, "blk.%d.attn_output.weight", l); /* the source's bytes unless refit */
        if ((o = same_as_source(sf, key, lw->w_o, (size_t)m->dim * H * c->v_head_dim)))
            gguf_w_tensor_raw(w, key, o->type, o->data, (int)o->n_dims, o->ne);
        else
            put_matrix(w, key, type, lw->w_o, m->dim, H * c->v_head_dim);
    }
    rc = gguf_writer_save(w, path, err, errlen);
    gguf_writer_free(w);
    return rc;
}

/* ---------------------------------------------------------------------
   deepseek2 export: the converted model as a GGUF that stock llama.cpp runs
   (../shared notes: GGUF.md "deepseek2 files"). What llama.cpp's deepseek2
   computes differs from the converted model in four places, each handled
   exactly or refused:
   - it always RMS-normalises the latent (and the query latent): the rows are
     scaled by a tiny alpha so that eps dominates the norm, which is then
     linear, and the norm weight sqrt(eps)/alpha undoes the scale (below);
   - its softmax scale is 1/sqrt(d_nope + m): the difference is folded into
     the query rows;
   - it needs d_nope >= 1: the lossless rewrite (d_nope = 0) gets zero
     nope dims, which add nothing to any score;
   - no attention biases and only the standard RoPE table theta^(-2p/m):
     models that need either are refused, or with lossy set, exported without
     them (the caller measures the cost).
   --------------------------------------------------------------------- */

/* Relative change of the latent the norm construction may cause (bound, not
   estimate): with norm(a c) = a c / sqrt(a^2 mean(c^2) + eps), the latent comes
   back as c / sqrt(1 + a^2 mean(c^2)/eps), off by at most a^2 max mean(c^2) / (2 eps). */
#define LATENT_NORM_TOL 1e-8

/* alpha for the rows W [n][D] of a latent fed by RMSNorm(x) * g: the norm's
   input has |x|^2 <= D max g^2, so mean(c^2) <= |W|_F^2 D max g^2 / n. */
static double norm_alpha(const float *W, int n, int D, const float *g, double eps) {
    double fro = 0, gmax = 0, bound;
    size_t i;
    for (i = 0; i < (size_t)n * D; i++) fro += (double)W[i] * W[i];
    for (i = 0; i < (size_t)D; i++) gmax = fabs(g[i]) > gmax ? fabs(g[i]) : gmax;
    bound = fro * D * gmax * gmax / n;
    return bound > 0 ? sqrt(2.0 * eps * LATENT_NORM_TOL / bound) : 1.0;
}

/* what a converted model needs that deepseek2 cannot say; NULL if nothing */
const char *deepseek2_lossy_reason(const model *m, char *buf, size_t n) {
    const mla_config *c = &m->mla;
    int p, l, M = c->qk_rope_head_dim;
    double worst = 0, theta = c->rope_theta > 0 ? c->rope_theta : 10000.0;
    if (c->attn_bias) return "the model has attention biases (Qwen-style q/k/v biases); deepseek2 has none";
    for (l = 0; l < m->n_layers; l++)
        if (m->layers[l].mla.b_o) return "the model has an output-projection bias; deepseek2 has none";
    if (c->yarn_factor > 1) return "YaRN RoPE scaling is not exported";
    for (p = 0; p < M / 2 && c->rope_freqs; p++) {
        double ref = pow(theta, -2.0 * p / M), dev = fabs(c->rope_freqs[p] - ref) / ref;
        worst = dev > worst ? dev : worst;
    }
    if (worst > 1e-6) {
        snprintf(buf, n, "its RoPE frequencies are not the standard table theta^(-2p/m) (off by up to %.3g relative; "
                 "FreqFold with a non-default fold?); deepseek2 has no per-pair table", worst);
        return buf;
    }
    return NULL;
}


/* One layer's attention in the form DeepSeek's stock code computes it. */
typedef struct {
    int H, D, R, M, dn, dn2, dv, rq, in, qd2; /* dn2 = max(dn, 1): the nope dims written */
    double scale;                              /* softmax-scale fix folded into q        */
    float *q;   /* q_proj [H*qd2][D] or q_b_proj [H*qd2][rq]: per head dn2 nope rows, M rope rows */
    float *qa;  /* q_a_proj [rq][D], rows times alpha_q                                 */
    float *qan; /* q_a_layernorm [rq] = sqrt(eps)/alpha_q                                */
    float *kva; /* kv_a_proj_with_mqa [R+M][D], latent rows times alpha                  */
    float *kvn; /* kv_a_layernorm [R] = sqrt(eps)/alpha                                  */
    float *kvb; /* kv_b_proj [H*(dn2+dv)][R]: per head dn2 k rows (zero pad), dv v rows   */
    double alpha;
} ds_attn;

static void ds_free(ds_attn *a) {
    free(a->q); free(a->qa); free(a->qan); free(a->kva); free(a->kvn); free(a->kvb);
}

static int ds_init(ds_attn *a, const model *m) {
    const mla_config *c = &m->mla;
    memset(a, 0, sizeof *a);
    a->H = m->n_heads; a->D = m->dim; a->R = c->kv_lora_rank; a->M = c->qk_rope_head_dim;
    a->dn = c->qk_nope_head_dim; a->dn2 = a->dn > 0 ? a->dn : 1; a->dv = c->v_head_dim; a->rq = c->q_lora_rank;
    a->in = a->rq ? a->rq : a->D; a->qd2 = a->dn2 + a->M;
    a->scale = mla_softmax_scale(c) * sqrt((double)a->qd2);
    a->q = (float *)calloc((size_t)a->H * a->qd2 * a->in, sizeof(float));
    a->kva = (float *)malloc(sizeof(float) * (size_t)(a->R + a->M) * a->D);
    a->kvn = (float *)malloc(sizeof(float) * (size_t)a->R);
    a->kvb = (float *)calloc((size_t)a->H * (a->dn2 + a->dv) * a->R, sizeof(float));
    if (a->rq) {
        a->qa = (float *)malloc(sizeof(float) * (size_t)a->rq * a->D);
        a->qan = (float *)malloc(sizeof(float) * (size_t)a->rq);
    }
    if (!a->q || !a->kva || !a->kvn || !a->kvb || (a->rq && (!a->qa || !a->qan))) {
        ds_free(a);
        memset(a, 0, sizeof *a); /* nothing left to free */
        return -1;
    }
    return 0;
}

/* where a head's row i (nope rows first) lands once the nope part is padded to dn2 */
static int ds_row(const ds_attn *a, int i) { return i < a->dn ? i : i - a->dn + a->dn2; }

/* fills a with layer l (pad rows stay zero from ds_init) */
static void ds_layer(ds_attn *a, const model *m, int l) {
    const mla_layer_weights *lw = &m->layers[l].mla;
    const float *g = m->layers[l].attn_norm;
    int qd = a->dn + a->M, h, i, e;
    size_t k;
    for (h = 0; h < a->H; h++)
        for (i = 0; i < qd; i++) {
            const float *src = (a->rq ? lw->w_qb : lw->w_q) + ((size_t)h * qd + i) * a->in;
            float *dst = a->q + ((size_t)h * a->qd2 + ds_row(a, i)) * a->in;
            for (e = 0; e < a->in; e++) dst[e] = (float)(src[e] * a->scale);
        }
    a->alpha = norm_alpha(lw->w_kva, a->R, a->D, g, m->eps);
    for (k = 0; k < (size_t)(a->R + a->M) * a->D; k++)
        a->kva[k] = k < (size_t)a->R * a->D ? (float)(lw->w_kva[k] * a->alpha) : lw->w_kva[k];
    for (i = 0; i < a->R; i++) a->kvn[i] = (float)(sqrt((double)m->eps) / a->alpha);
    for (h = 0; h < a->H; h++)
        for (i = 0; i < a->dn + a->dv; i++)
            memcpy(a->kvb + ((size_t)h * (a->dn2 + a->dv) + ds_row(a, i)) * a->R,
                   lw->w_kvb + ((size_t)h * (a->dn + a->dv) + i) * a->R, sizeof(float) * a->R);
    if (a->rq) {
        double aq = norm_alpha(lw->w_qa, a->rq, a->D, g, m->eps);
        for (k = 0; k < (size_t)a->rq * a->D; k++) a->qa[k] = (float)(lw->w_qa[k] * aq);
        for (i = 0; i < a->rq; i++) a->qan[i] = (float)(sqrt((double)m->eps) / aq);
    }
}

/* the checks every deepseek-format export makes; 0 or -1 with err */
static int ds_check(const model *m, int lossy, char *err, size_t errlen) {
    char buf[256];
    const char *why;
    if (!m->is_mla || !m->conv) { snprintf(err, errlen, "not a converted model"); return -1; }
    if (m->mla.kv_norm || m->mla.q_norm) { snprintf(err, errlen, "the model already has latent norms (not a conversion of ours)"); return -1; }
    if ((why = deepseek2_lossy_reason(m, buf, sizeof buf))) {
        if (!lossy) {
            snprintf(err, errlen, "cannot export to the DeepSeek format exactly: %s (--lossy exports it anyway)", why);
            return -1;
        }
        fprintf(stderr, "  --lossy: %s; exported without it\n", why);
    }
    return 0;
}

static void ds_report(const char *fmt, const ds_attn *a, double worst_alpha, const char *types) {
    fprintf(stderr, "  %s: latent norm made linear (rows scaled by alpha <= %.3g, latent off by <= %.0e relative), "
            "softmax scale x%.6g folded into the query, %s%s\n", fmt, worst_alpha, LATENT_NORM_TOL, a->scale, types,
            a->dn == 0 ? ", one zero nope dim (stock code needs d_nope >= 1)" : "");
}

int save_deepseek2(const model *m, const gguf_file *sf, const char *path, uint32_t type, int lossy, char *err,
                   size_t errlen) {
    uint32_t lat_type = type == GGML_BF16 ? GGML_BF16 : GGML_F32; /* F16/Q8_0 block scales would underflow */
    double worst = 0;
    char key[160], types[96];
    gguf_writer *w;
    float *kb = NULL, *vb = NULL;
    uint64_t ne[3], k;
    ds_attn a;
    int l, h, i, e, rc;
    if (ds_check(m, lossy, err, errlen)) return -1;
    if (ds_init(&a, m)) { snprintf(err, errlen, "out of memory"); return -1; }
    w = gguf_writer_new();
    kb = (float *)malloc(sizeof(float) * (size_t)a.H * a.R * a.dn2);
    vb = (float *)malloc(sizeof(float) * (size_t)a.H * a.R * a.dv);
    if (!w || !kb || !vb) {
        snprintf(err, errlen, "out of memory");
        rc = -1;
        goto done;
    }
    gguf_w_str(w, "general.architecture", "deepseek2");
    for (k = 0; k < sf->n_kv; k++) { /* general.* and tokenizer.* unchanged; llama.* rewritten below */
        const gguf_kv *kv = &sf->kv[k];
        if (kv->key.n == 20 && !memcmp(kv->key.p, "general.architecture", 20)) continue;
        if ((kv->key.n > 8 && !memcmp(kv->key.p, "general.", 8)) || (kv->key.n > 10 && !memcmp(kv->key.p, "tokenizer.", 10)))
            gguf_w_copy(w, kv);
    }
#define DS(name, v) gguf_w_u32(w, "deepseek2." name, (uint32_t)(v))
    DS("context_length", m->ctx_len); DS("embedding_length", a.D); DS("block_count", m->n_layers);
    DS("feed_forward_length", m->ffn_dim); DS("expert_feed_forward_length", m->ffn_dim);
    DS("leading_dense_block_count", m->n_layers); DS("expert_shared_count", 0);
    DS("attention.head_count", a.H); DS("attention.head_count_kv", 1);
    DS("attention.key_length", a.R + a.M); DS("attention.value_length", a.R); /* what the cache holds */
    DS("attention.key_length_mla", a.qd2); DS("attention.value_length_mla", a.dv); /* absorbed path */
    DS("attention.kv_lora_rank", a.R); DS("attention.q_lora_rank", a.rq);
    DS("rope.dimension_count", a.M);
    DS("vocab_size", m->vocab);
#undef DS
    gguf_w_f32(w, "deepseek2.attention.layer_norm_rms_epsilon", m->eps);
    gguf_w_f32(w, "deepseek2.rope.freq_base", m->mla.rope_theta > 0 ? m->mla.rope_theta : 10000.0f);
    gguf_w_f32(w, "deepseek2.expert_weights_scale", 1.0f);
    for (k = 0; k < sf->n_tensors; k++) { /* embeddings, norms, FFN: as stored */
        const gguf_tensor *t = &sf->tensors[k];
        if (!gqa_attention(t->name) && !strstr(t->name, ".attn_output."))
            gguf_w_tensor_raw(w, t->name, t->type, t->data, (int)t->n_dims, t->ne);
    }
    for (l = 0; l < m->n_layers; l++) {
        const gguf_tensor *o;
        const float *wo = m->layers[l].mla.w_o;
        ds_layer(&a, m, l);
        worst = a.alpha > worst ? a.alpha : worst;
        for (h = 0; h < a.H; h++) /* k_b [h][c][i] = W_uk[i][c]; v_b [h][e][c] = W_uv[e][c] */
            for (i = 0; i < a.R; i++) {
                const float *kvb = a.kvb + (size_t)h * (a.dn2 + a.dv) * a.R + i;
                for (e = 0; e < a.dn2; e++) kb[((size_t)h * a.R + i) * a.dn2 + e] = kvb[(size_t)e * a.R];
                for (e = 0; e < a.dv; e++) vb[((size_t)h * a.dv + e) * a.R + i] = kvb[(size_t)(a.dn2 + e) * a.R];
            }
        if (a.rq) {
            snprintf(key, sizeof key, "blk.%d.attn_q_a.weight", l);
            ne[0] = (uint64_t)a.D; ne[1] = (uint64_t)a.rq;
            gguf_w_tensor_as(w, key, lat_type, a.qa, 2, ne);
            snprintf(key, sizeof key, "blk.%d.attn_q_a_norm.weight", l);
            gguf_w_tensor_as(w, key, GGML_F32, a.qan, 1, ne + 1);
        }
        snprintf(key, sizeof key, a.rq ? "blk.%d.attn_q_b.weight" : "blk.%d.attn_q.weight", l);
        ne[0] = (uint64_t)a.in; ne[1] = (uint64_t)a.H * a.qd2;
        put_typed(w, key, type, a.q, 2, ne);
        snprintf(key, sizeof key, "blk.%d.attn_kv_a_mqa.weight", l);
        ne[0] = (uint64_t)a.D; ne[1] = (uint64_t)(a.R + a.M);
        gguf_w_tensor_as(w, key, lat_type, a.kva, 2, ne);
        snprintf(key, sizeof key, "blk.%d.attn_kv_a_norm.weight", l);
        ne[0] = (uint64_t)a.R;
        gguf_w_tensor_as(w, key, GGML_F32, a.kvn, 1, ne);
        snprintf(key, sizeof key, "blk.%d.attn_k_b.weight", l);
        ne[0] = (uint64_t)a.dn2; ne[1] = (uint64_t)a.R; ne[2] = (uint64_t)a.H;
        put_typed(w, key, type, kb, 3, ne);
        snprintf(key, sizeof key, "blk.%d.attn_v_b.weight", l);
        ne[0] = (uint64_t)a.R; ne[1] = (uint64_t)a.dv; ne[2] = (uint64_t)a.H;
        put_typed(w, key, type, vb, 3, ne);
        snprintf(key, sizeof key, "blk.%d.attn_output.weight", l);
        ne[0] = (uint64_t)a.H * a.dv; ne[1] = (uint64_t)a.D;
        if ((o = same_as_source(sf, key, wo, (size_t)a.D * a.H * a.dv))) gguf_w_tensor_raw(w, key, o->type, o->data, 2, ne);
        else put_typed(w, key, type, wo, 2, ne);
    }
    snprintf(types, sizeof types, "attention tensors %s (kv_a_mqa %s)", ggml_type_name(type), ggml_type_name(lat_type));
    ds_report("deepseek2", &a, worst, types);
    rc = gguf_writer_save(w, path, err, errlen);
done:
    gguf_writer_free(w);
    free(kb); free(vb);
    ds_free(&a);
    return rc;
}

/* a malloc'd copy of n floats (NULL on out of memory: st_add then refuses) */
static float *dup_f32(const float *p, size_t n) {
    float *d = (float *)malloc(sizeof(float) * n);
    if (d) memcpy(d, p, sizeof(float) * n);
    return d;
}

/* an integer token id key of the source, -1 when absent or not an integer */
static int64_t token_id(const gguf_file *sf, const char *key) {
    int64_t v = -1;
    if (gguf_find(sf, key) && gguf_get_int((gguf_file *)sf, key, &v)) v = -1; /* the getter only writes f->err */
    return v;
}

static int write_config_json(const model *m, const gguf_file *sf, const ds_attn *a, st_dtype dt, const char *path,
                             char *err, size_t errlen) {
    outfile o;
    int64_t bos = token_id(sf, "tokenizer.ggml.bos_token_id"), eos = token_id(sf, "tokenizer.ggml.eos_token_id");
    if (outfile_open(&o, path, err, errlen)) return -1;
    fprintf(o.fp,
            "{\n  \"architectures\": [\"DeepseekV3ForCausalLM\"],\n  \"model_type\": \"deepseek_v3\",\n"
            "  \"vocab_size\": %d,\n  \"hidden_size\": %d,\n  \"intermediate_size\": %d,\n"
            "  \"moe_intermediate_size\": %d,\n  \"num_hidden_layers\": %d,\n  \"num_attention_heads\": %d,\n"
            "  \"num_key_value_heads\": %d,\n  \"kv_lora_rank\": %d,\n  \"q_lora_rank\": %s%.0d,\n" /* null, or the rank
                                                              (%.0d prints nothing for 0) */
            "  \"qk_rope_head_dim\": %d,\n  \"qk_nope_head_dim\": %d,\n  \"v_head_dim\": %d,\n"
            "  \"rope_theta\": %.9g,\n  \"rope_scaling\": null,\n  \"rope_interleave\": true,\n"
            "  \"rms_norm_eps\": %.9g,\n  \"max_position_embeddings\": %d,\n  \"hidden_act\": \"silu\",\n"
            "  \"attention_bias\": false,\n  \"attention_dropout\": 0.0,\n"
            "  \"n_routed_experts\": null,\n  \"n_shared_experts\": null,\n  \"num_experts_per_tok\": null,\n"
            "  \"first_k_dense_replace\": %d,\n  \"moe_layer_freq\": 1,\n  \"tie_word_embeddings\": false,\n",
            m->vocab, a->D, m->ffn_dim, m->ffn_dim, m->n_layers, a->H, a->H, a->R, a->rq ? "" : "null", a->rq, a->M,
            a->dn2, a->dv, m->mla.rope_theta > 0 ? m->mla.rope_theta : 10000.0, m->eps, m->ctx_len, m->n_layers);
    if (bos >= 0) fprintf(o.fp, "  \"bos_token_id\": %lld,\n", (long long)bos);
    if (eos >= 0) fprintf(o.fp, "  \"eos_token_id\": %lld,\n", (long long)eos);
    fprintf(o.fp, "  \"torch_dtype\": \"%s\",\n  \"use_cache\": true\n}\n",
            dt == ST_F32 ? "float32" : dt == ST_F16 ? "float16" : "bfloat16");
    return outfile_commit(&o, err, errlen);
}

int save_deepseek_safetensors(const model *m, const gguf_file *sf, const char *dir, st_dtype dt, int lossy, char *err,
                              size_t errlen) {
    char path[1024], name[160], types[64];
    st_writer *w;
    ds_attn a;
    double worst = 0;
    int64_t sh[2];
    int l, rc;
    size_t F = (size_t)m->ffn_dim;
    if (ds_check(m, lossy, err, errlen)) return -1;
    if (mkdir(dir, 0777) && errno != EEXIST) {
        snprintf(err, errlen, "cannot create directory %s: %s", dir, strerror(errno));
        return -1;
    }
    if (ds_init(&a, m) || !(w = st_writer_new(dt))) {
        ds_free(&a); /* all NULL when ds_init failed */
        snprintf(err, errlen, "out of memory");
        return -1;
    }
#define ST2(nm, p, rows, cols) (sh[0] = (rows), sh[1] = (cols), st_add(w, nm, dup_f32(p, (size_t)sh[0] * (size_t)sh[1]), 2, sh))
#define ST1(nm, p, n) (sh[0] = (n), st_add(w, nm, dup_f32(p, (size_t)sh[0]), 1, sh))
    sh[0] = m->vocab; sh[1] = a.D;
    st_add(w, "model.embed_tokens.weight", wmat_f32(&m->tok_embd), 2, sh);
    for (l = 0; l < m->n_layers; l++) {
        const model_layer *L = &m->layers[l];
        ds_layer(&a, m, l);
        worst = a.alpha > worst ? a.alpha : worst;
#define NM(x) (snprintf(name, sizeof name, "model.layers.%d.%s.weight", l, x), name)
        ST1(NM("input_layernorm"), L->attn_norm, a.D);
        if (a.rq) {
            ST2(NM("self_attn.q_a_proj"), a.qa, a.rq, a.D);
            ST1(NM("self_attn.q_a_layernorm"), a.qan, a.rq);
            ST2(NM("self_attn.q_b_proj"), a.q, (int64_t)a.H * a.qd2, a.rq);
        } else {
            ST2(NM("self_attn.q_proj"), a.q, (int64_t)a.H * a.qd2, a.D);
        }
        ST2(NM("self_attn.kv_a_proj_with_mqa"), a.kva, a.R + a.M, a.D);
        ST1(NM("self_attn.kv_a_layernorm"), a.kvn, a.R);
        ST2(NM("self_attn.kv_b_proj"), a.kvb, (int64_t)a.H * (a.dn2 + a.dv), a.R);
        ST2(NM("self_attn.o_proj"), L->mla.w_o, a.D, (int64_t)a.H * a.dv);
        ST1(NM("post_attention_layernorm"), L->ffn_norm, a.D);
        sh[0] = (int64_t)F; sh[1] = a.D;
        st_add(w, NM("mlp.gate_proj"), wmat_f32(&L->gate), 2, sh);
        st_add(w, NM("mlp.up_proj"), wmat_f32(&L->up), 2, sh);
        sh[0] = a.D; sh[1] = (int64_t)F;
        st_add(w, NM("mlp.down_proj"), wmat_f32(&L->down), 2, sh);
#undef NM
    }
    ST1("model.norm.weight", m->out_norm, a.D);
    sh[0] = m->vocab; sh[1] = a.D;
    st_add(w, "lm_head.weight", wmat_f32(&m->output), 2, sh);
#undef ST1
#undef ST2
    snprintf(types, sizeof types, "every tensor %s", st_dtype_name(dt));
    ds_report("safetensors (DeepSeek-V3 naming)", &a, worst, types);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    rc = st_save(w, path, err, errlen);
    snprintf(path, sizeof path, "%s/config.json", dir);
    if (!rc) rc = write_config_json(m, sf, &a, dt, path, err, errlen);
    if (!rc) { /* the tokenizer, where the source says enough to write it */
        char why[256];
        int t = write_hf_tokenizer(sf, dir, why, sizeof why);
        if (t < 0) { snprintf(err, errlen, "%s", why); rc = -1; }
        else if (t > 0) fprintf(stderr, "  tokenizer files not written: %s\n", why);
    }
    st_writer_free(w);
    ds_free(&a);
    return rc;
}

/* a JSON string literal of s (n bytes of UTF-8) */
static void json_str(FILE *fp, const char *s, uint64_t n) {
    uint64_t i;
    fputc('"', fp);
    for (i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '"' || ch == '\\') fprintf(fp, "\\%c", ch);
        else if (ch < 0x20) fprintf(fp, "\\u%04x", ch);
        else fputc(ch, fp);
    }
    fputc('"', fp);
}

static int str_is(gguf_str s, const char *t) { return s.n == strlen(t) && !memcmp(s.p, t, s.n); }

int write_hf_tokenizer(const gguf_file *sf, const char *dir, char *why, size_t whylen) {
    gguf_file *f = (gguf_file *)sf; /* the getters only write f->err */
    gguf_str model, pre = {"default", 7}, *tok = NULL, *mer = NULL, tmpl;
    uint64_t nt = 0, nm = 0, ntt = 0, i;
    int32_t *tt = NULL;
    int64_t bos = -1, eos = -1;
    int digits, rc = -1, first;
    char path[1024];
    outfile o;
    if (!gguf_find(sf, "tokenizer.ggml.model") || gguf_get_str(f, "tokenizer.ggml.model", &model) || !str_is(model, "gpt2")) {
        snprintf(why, whylen, "the source tokenizer is not byte-level BPE (tokenizer.ggml.model gpt2)");
        return 1;
    }
    if (gguf_find(sf, "tokenizer.ggml.pre") && gguf_get_str(f, "tokenizer.ggml.pre", &pre)) {
        snprintf(why, whylen, "tokenizer.ggml.pre is not a string");
        return 1;
    }
    if (!str_is(pre, "smollm") && !str_is(pre, "gpt2") && !str_is(pre, "default")) {
        snprintf(why, whylen, "pre-tokenizer '%.*s' has no known Hugging Face equivalent here", (int)pre.n, pre.p);
        return 1;
    }
    digits = str_is(pre, "smollm"); /* every digit alone, then GPT-2's ByteLevel regex */
    tok = gguf_get_str_array(f, "tokenizer.ggml.tokens", &nt);
    mer = gguf_get_str_array(f, "tokenizer.ggml.merges", &nm);
    if (gguf_find(sf, "tokenizer.ggml.token_type")) tt = gguf_get_i32_array(f, "tokenizer.ggml.token_type", &ntt);
    if (!tok || !mer || (tt && ntt != nt)) {
        snprintf(why, whylen, "the source lacks tokenizer.ggml.tokens / merges / a matching token_type");
        rc = 1;
        goto done;
    }
    bos = token_id(sf, "tokenizer.ggml.bos_token_id");
    eos = token_id(sf, "tokenizer.ggml.eos_token_id");
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    if (outfile_open(&o, path, why, whylen)) goto done;
    fprintf(o.fp, "{\"version\":\"1.0\",\"truncation\":null,\"padding\":null,\"added_tokens\":[");
    for (i = 0, first = 1; tt && i < nt; i++) /* control tokens (type 3) and user-defined ones (4) match whole */
        if (tt[i] == 3 || tt[i] == 4) {
            fprintf(o.fp, "%s{\"id\":%llu,\"content\":", first ? "" : ",", (unsigned long long)i);
            json_str(o.fp, tok[i].p, tok[i].n);
            fprintf(o.fp, ",\"single_word\":false,\"lstrip\":false,\"rstrip\":false,\"normalized\":false,\"special\":%s}",
                    tt[i] == 3 ? "true" : "false");
            first = 0;
        }
    fprintf(o.fp, "],\"normalizer\":null,\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":[%s"
            "{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"trim_offsets\":true,\"use_regex\":true}]},"
            "\"post_processor\":null,\"decoder\":{\"type\":\"ByteLevel\",\"add_prefix_space\":true,\"trim_offsets\":true,"
            "\"use_regex\":true},\"model\":{\"type\":\"BPE\",\"dropout\":null,\"unk_token\":null,"
            "\"continuing_subword_prefix\":null,\"end_of_word_suffix\":null,\"fuse_unk\":false,\"byte_fallback\":false,"
            "\"vocab\":{", digits ? "{\"type\":\"Digits\",\"individual_digits\":true}," : "");
    for (i = 0; i < nt; i++) {
        if (i) fputc(',', o.fp);
        json_str(o.fp, tok[i].p, tok[i].n);
        fprintf(o.fp, ":%llu", (unsigned long long)i);
    }
    fprintf(o.fp, "},\"merges\":[");
    for (i = 0; i < nm; i++) {
        if (i) fputc(',', o.fp);
        json_str(o.fp, mer[i].p, mer[i].n);
    }
    fprintf(o.fp, "]}}\n");
    if (outfile_commit(&o, why, whylen)) goto done;
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    if (outfile_open(&o, path, why, whylen)) goto done;
    fprintf(o.fp, "{\n  \"tokenizer_class\": \"PreTrainedTokenizerFast\",\n  \"add_bos_token\": false,\n"
            "  \"clean_up_tokenization_spaces\": false");
    if (bos >= 0 && (uint64_t)bos < nt) { fprintf(o.fp, ",\n  \"bos_token\": "); json_str(o.fp, tok[bos].p, tok[bos].n); }
    if (eos >= 0 && (uint64_t)eos < nt) { fprintf(o.fp, ",\n  \"eos_token\": "); json_str(o.fp, tok[eos].p, tok[eos].n); }
    if (gguf_find(sf, "tokenizer.chat_template") && !gguf_get_str(f, "tokenizer.chat_template", &tmpl)) {
        fprintf(o.fp, ",\n  \"chat_template\": ");
        json_str(o.fp, tmpl.p, tmpl.n);
    }
    fprintf(o.fp, "\n}\n");
    rc = outfile_commit(&o, why, whylen);
done:
    free(tok); free(mer); free(tt);
    return rc;
}
