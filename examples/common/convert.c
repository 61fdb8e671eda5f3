#include "convert.h"
#include "run.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Runs the calibration windows through the model layer by layer; at each
   layer accumulates the attention input's moments into cal[l] (when cal is
   given), then moves the residual stream through layer l of `through`
   (the source model, or in sequential mode the converted one as it grows).
   convert_layer, when set, converts layer l before it is used. */
typedef int (*layer_hook)(void *ctx, int l, const mla_calib *cal, char *err, size_t errlen);

/* windows whose attention statistics (how far each head looks) are gathered:
   the expected rotations settle within a few thousand tokens */
#define ATT_WINDOWS 8

static int calib_pass(const model *src, const model *through, const int *toks, int n, int window, mla_calib *keep,
                      layer_hook hook, void *hook_ctx, int progress, char *err, size_t errlen) {
    int n_win = n / window, l, w, t, rc = 0;
    size_t D = (size_t)src->dim;
    float *H = (float *)malloc(sizeof(float) * (size_t)n_win * window * D);
    float *xb = (float *)malloc(sizeof(float) * (size_t)window * D);
    model_state st;
    int have_st = 0;
    double t0 = now_s();
    fflush(stdout); /* progress goes to stderr */
    if (!H || !xb) { snprintf(err, errlen, "out of memory for %d calibration tokens", n_win * window); rc = -1; goto done; }
    for (t = 0; t < n_win * window; t++) {
        if (toks[t] < 0 || toks[t] >= src->vocab) { /* no id outside the vocabulary reaches the embedding */
            snprintf(err, errlen, "calibration token %d has id %d, outside the vocabulary (%d)", t, toks[t], src->vocab);
            rc = -1;
            goto done;
        }
        memcpy(H + t * D, src->tok_embd + (size_t)toks[t] * D, sizeof(float) * D);
    }
    for (l = 0; l < src->n_layers; l++) {
        mla_calib cal, *c = keep ? &keep[l] : &cal;
        if (mla_calib_init(c, src->dim)) { snprintf(err, errlen, "out of memory"); rc = -1; goto done; }
        for (w = 0; w < n_win; w++) { /* the attention input of layer l: RMSNorm of the residual */
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
        if (hook && (rc = hook(hook_ctx, l, c, err, errlen))) {
            if (!keep) mla_calib_free(c);
            goto done;
        }
        if (!keep) mla_calib_free(c);
        if (l + 1 < src->n_layers) {
            if (!have_st) {
                if (model_state_init(&st, through, window, window, MLA_F32)) { snprintf(err, errlen, "out of memory"); rc = -1; goto done; }
                have_st = 1;
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
            fprintf(stderr, "\r  calibration: layer %d/%d (%d tokens, %.1f s)", l + 1, src->n_layers, n_win * window, now_s() - t0);
            fflush(stderr);
        }
    }
    if (progress) fprintf(stderr, "\n");
done:
    free(H);
    free(xb);
    if (have_st) model_state_free(&st);
    return rc;
}

mla_calib *calib_collect(const model *src, const int *toks, int n, int window, int progress, char *err, size_t errlen) {
    mla_calib *cal = (mla_calib *)calloc((size_t)src->n_layers, sizeof(mla_calib));
    if (window <= 0) window = CALIB_WINDOW;
    if (!cal) { snprintf(err, errlen, "out of memory"); return NULL; }
    if (n / window < 1) { snprintf(err, errlen, "calibration text shorter than one window (%d tokens)", window); free(cal); return NULL; }
    if (calib_pass(src, src, toks, n, window, cal, NULL, NULL, progress, err, errlen)) {
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

/* convert layer l of src into dst (cal NULL: weight-only) */
static int convert_one(void *p, int l, const mla_calib *cal, char *err, size_t errlen) {
    convert_ctx *c = (convert_ctx *)p;
    const model_layer *L = &c->src->layers[l];
    mla_convert_options mo;
    mla_result r;
    memset(&mo, 0, sizeof mo);
    mo.kv_lora_rank = c->o->rank; mo.qk_rope_head_dim = c->o->rope_dim; mo.freqfold = c->o->freqfold;
    mo.method = c->o->method;
    mo.key_weight = c->o->key_weight;
    mo.expected_rope = c->o->expected_rope && cal;
    r = c->o->lossless ? mla_convert_lossless(&c->src->gqa, &L->gqa, &c->dst->conv[l])
                       : mla_convert_layer(&c->src->gqa, &L->gqa, cal, &mo, &c->dst->conv[l]);
    if (r == MLA_OK && c->o->q_rank > 0) r = mla_convert_lowrank_q(&c->dst->conv[l], cal, c->o->q_rank, 0.0);
    if (r != MLA_OK) {
        snprintf(err, errlen, "layer %d: %s", l, mla_result_string(r));
        return -1;
    }
    c->dst->layers[l].mla = c->dst->conv[l].w;
    if (l == 0) c->dst->mla = c->dst->conv[0].cfg;
    return 0;
}

int convert_model(const model *src, const int *calib, int n_calib, const mla_calib *pre, const convert_opts *o,
                  model *dst, char *err, size_t errlen) {
    int window = o->window > 0 ? o->window : CALIB_WINDOW, l, rc = 0;
    convert_ctx ctx;
    double t0 = now_s();
    if (src->is_mla) { snprintf(err, errlen, "the source model is already MLA"); return -1; }
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
        rc = calib_pass(src, dst, calib, n_calib, window, NULL, convert_one, &ctx, o->progress, err, errlen);
    } else {
        mla_calib *own = pre ? NULL : calib_collect(src, calib, n_calib, window, o->progress, err, errlen);
        const mla_calib *cal = pre ? pre : own;
        if (!cal) rc = -1;
        for (l = 0; l < src->n_layers && !rc; l++) rc = convert_one(&ctx, l, &cal[l], err, errlen);
        calib_free_all(own, src->n_layers);
    }
    if (rc) {
        model_free(dst);
        return -1;
    }
    if (o->progress) fprintf(stderr, "  converted %d layers in %.1f s\n", src->n_layers, now_s() - t0);
    return 0;
}

static void put_matrix(gguf_writer *w, const char *name, const float *p, int rows, int cols) {
    uint64_t ne[2];
    ne[0] = (uint64_t)cols; ne[1] = (uint64_t)rows;
    gguf_w_tensor_f32(w, name, p, rows == 1 ? 1 : 2, ne);
}

int save_converted(const model *m, const gguf_file *sf, const char *path, char *err, size_t errlen) {
    gguf_writer *w = gguf_writer_new();
    const mla_config *c = &m->mla;
    uint64_t i;
    int l, rc, H = m->n_heads, qd = c->qk_nope_head_dim + c->qk_rope_head_dim, r = c->kv_lora_rank;
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
    put_matrix(w, "mla_rope_freqs.weight", m->conv[0].rope_freqs, 1, c->qk_rope_head_dim / 2);
    for (i = 0; i < sf->n_tensors; i++) { /* everything but attention q/k/v: unchanged bytes */
        const gguf_tensor *t = &sf->tensors[i];
        if (strstr(t->name, ".attn_q.") || strstr(t->name, ".attn_k.") || strstr(t->name, ".attn_v.")) continue;
        gguf_w_tensor_raw(w, t->name, t->type, t->data, (int)t->n_dims, t->ne);
    }
    for (l = 0; l < m->n_layers; l++) {
        const mla_layer_weights *lw = &m->layers[l].mla;
        if (c->q_lora_rank) {
            snprintf(key, sizeof key, "blk.%d.attn_q_a.weight", l);
            put_matrix(w, key, lw->w_qa, c->q_lora_rank, m->dim);
            snprintf(key, sizeof key, "blk.%d.attn_q_b.weight", l);
            put_matrix(w, key, lw->w_qb, H * qd, c->q_lora_rank);
            if (c->attn_bias) { snprintf(key, sizeof key, "blk.%d.attn_q_a.bias", l); put_matrix(w, key, lw->b_qa, 1, c->q_lora_rank); }
        } else {
            snprintf(key, sizeof key, "blk.%d.attn_q.weight", l);
            put_matrix(w, key, lw->w_q, H * qd, m->dim);
            if (c->attn_bias) { snprintf(key, sizeof key, "blk.%d.attn_q.bias", l); put_matrix(w, key, lw->b_q, 1, H * qd); }
        }
        snprintf(key, sizeof key, "blk.%d.attn_kv_a_mqa.weight", l);
        put_matrix(w, key, lw->w_kva, r + c->qk_rope_head_dim, m->dim);
        if (c->attn_bias) {
            snprintf(key, sizeof key, "blk.%d.attn_kv_a_mqa.bias", l);
            put_matrix(w, key, lw->b_kva, 1, r + c->qk_rope_head_dim);
        }
        snprintf(key, sizeof key, "blk.%d.attn_kv_b.weight", l);
        put_matrix(w, key, lw->w_kvb, H * (c->qk_nope_head_dim + c->v_head_dim), r);
    }
    rc = gguf_writer_save(w, path, err, errlen);
    gguf_writer_free(w);
    return rc;
}
