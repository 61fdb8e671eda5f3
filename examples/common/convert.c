#include "convert.h"
#include "run.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int convert_model(const model *src, const int *calib, int n_calib, const convert_opts *o, model *dst,
                  char *err, size_t errlen) {
    int window = o->window > 0 ? o->window : 256, n_win = calib ? n_calib / window : 0, l, w, t, rc = 0;
    size_t D = (size_t)src->dim;
    float *H = NULL, *xb = NULL;
    model_state ss, ds;
    mla_convert_options mo;
    double t0 = now_s();
    int have_ds = 0;
    if (src->is_mla) { snprintf(err, errlen, "the source model is already MLA"); return -1; }
    memset(&mo, 0, sizeof mo);
    mo.kv_lora_rank = o->rank; mo.qk_rope_head_dim = o->rope_dim; mo.freqfold = o->freqfold; mo.method = o->method;
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
    memset(&ss, 0, sizeof ss);
    memset(&ds, 0, sizeof ds);
    if (n_win > 0 && !o->lossless) {
        H = (float *)malloc(sizeof(float) * (size_t)n_win * window * D);
        xb = (float *)malloc(sizeof(float) * (size_t)window * D);
        if (!H || !xb || model_state_init(&ss, src, window, window, MLA_F32)) {
            snprintf(err, errlen, "out of memory for %d calibration tokens", n_win * window);
            rc = -1;
            goto done;
        }
        for (t = 0; t < n_win * window; t++) memcpy(H + t * D, src->tok_embd + (size_t)calib[t] * D, sizeof(float) * D);
    }
    for (l = 0; l < src->n_layers; l++) {
        const model_layer *L = &src->layers[l];
        mla_result r;
        if (o->lossless) {
            r = mla_convert_lossless(&src->gqa, &L->gqa, &dst->conv[l]);
        } else {
            mla_calib cal;
            int use = H != NULL;
            if (use) {
                if (mla_calib_init(&cal, src->dim)) { snprintf(err, errlen, "out of memory"); rc = -1; goto done; }
                for (w = 0; w < n_win; w++) { /* the attention input of layer l: RMSNorm of the residual */
                    for (t = 0; t < window; t++)
                        mla_rmsnorm(xb + t * D, H + ((size_t)w * window + t) * D, L->attn_norm, src->dim, src->eps);
                    mla_calib_add(&cal, xb, window);
                }
            }
            r = mla_convert_layer(&src->gqa, &L->gqa, use ? &cal : NULL, &mo, &dst->conv[l]);
            if (use) mla_calib_free(&cal);
        }
        if (r != MLA_OK) {
            snprintf(err, errlen, "layer %d: %s", l, mla_result_string(r));
            rc = -1;
            goto done;
        }
        dst->layers[l].mla = dst->conv[l].w;
        if (l == 0) dst->mla = dst->conv[0].cfg;
        if (H && l + 1 < src->n_layers) { /* move the calibration text through layer l */
            if (o->sequential && !have_ds) {
                if (model_state_init(&ds, dst, window, window, MLA_F32)) { snprintf(err, errlen, "out of memory"); rc = -1; goto done; }
                ds.mode = MLA_NAIVE;
                have_ds = 1;
            }
            for (w = 0; w < n_win; w++) {
                model_state *st = o->sequential ? &ds : &ss;
                model_state_reset(st);
                r = (mla_result)model_layer_forward(o->sequential ? dst : src, st, l, H + (size_t)w * window * D, window);
                if (r != MLA_OK) { snprintf(err, errlen, "layer %d forward: %s", l, mla_result_string(r)); rc = -1; goto done; }
            }
        }
        if (o->progress) {
            fprintf(stderr, "\r  converting: layer %d/%d (%.1f s)", l + 1, src->n_layers, now_s() - t0);
            fflush(stderr);
        }
    }
    if (o->progress) fprintf(stderr, "\n");
done:
    free(H);
    free(xb);
    if (ss.ws) model_state_free(&ss);
    if (have_ds) model_state_free(&ds);
    if (rc) model_free(dst);
    return rc;
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
    gguf_w_u32(w, "llama-mla.mla.q_lora_rank", 0);
    gguf_w_u32(w, "llama-mla.mla.attn_bias", (uint32_t)c->attn_bias);
    put_matrix(w, "mla_rope_freqs.weight", m->conv[0].rope_freqs, 1, c->qk_rope_head_dim / 2);
    for (i = 0; i < sf->n_tensors; i++) { /* everything but attention q/k/v: unchanged bytes */
        const gguf_tensor *t = &sf->tensors[i];
        if (strstr(t->name, ".attn_q.") || strstr(t->name, ".attn_k.") || strstr(t->name, ".attn_v.")) continue;
        gguf_w_tensor_raw(w, t->name, t->type, t->data, (int)t->n_dims, t->ne);
    }
    for (l = 0; l < m->n_layers; l++) {
        const mla_layer_weights *lw = &m->layers[l].mla;
        snprintf(key, sizeof key, "blk.%d.attn_q.weight", l);
        put_matrix(w, key, lw->w_q, H * qd, m->dim);
        if (c->attn_bias) { snprintf(key, sizeof key, "blk.%d.attn_q.bias", l); put_matrix(w, key, lw->b_q, 1, H * qd); }
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
