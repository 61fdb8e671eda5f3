/* make bench: one attention layer's decode step, GQA vs its MLA conversion
   (SmolLM2-135M shapes: D=576, 9 heads, 3 KV heads of 64; MLA r=128, m=64,
   half the cache), at several context lengths, in one process. Also the
   batched paged decode. Timings are CPU wall time; compare the ratios. */
#define _POSIX_C_SOURCE 199309L
#define MLA_IMPLEMENTATION
#include "../mla.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}
static unsigned long long s_ = 7;
static float *rnd(size_t n, float scale) {
    float *p = (float *)malloc(sizeof(float) * n);
    size_t i;
    for (i = 0; i < n; i++) {
        s_ ^= s_ << 13; s_ ^= s_ >> 7; s_ ^= s_ << 17;
        p[i] = ((float)(s_ >> 40) / 16777216.0f - 0.5f) * scale;
    }
    return p;
}

int main(void) {
    const int D = 576, H = 9, G = 3, d = 64, r = 128, m = 64, ctxs[] = {512, 2048, 8192, 32768};
    mla_gqa_config gc;
    mla_gqa_weights gw;
    mla_config mc;
    mla_layer_weights mw;
    int ci;
    memset(&gc, 0, sizeof gc);
    gc.dim = D; gc.n_heads = H; gc.n_kv_heads = G; gc.head_dim = d; gc.rope_theta = 100000;
    memset(&gw, 0, sizeof gw);
    gw.w_q = rnd((size_t)H * d * D, 0.1f); gw.w_k = rnd((size_t)G * d * D, 0.1f);
    gw.w_v = rnd((size_t)G * d * D, 0.1f); gw.w_o = rnd((size_t)D * H * d, 0.1f);
    memset(&mc, 0, sizeof mc);
    mc.dim = D; mc.n_heads = H; mc.kv_lora_rank = r; mc.qk_nope_head_dim = d; mc.qk_rope_head_dim = m;
    mc.v_head_dim = d; mc.rope_theta = 100000;
    memset(&mw, 0, sizeof mw);
    mw.w_q = rnd((size_t)H * (d + m) * D, 0.1f); mw.w_kva = rnd((size_t)(r + m) * D, 0.1f);
    mw.w_kvb = rnd((size_t)H * 2 * d * r, 0.1f); mw.w_o = rnd((size_t)D * H * d, 0.1f);
    printf("one attention layer, decode step (1 token), SmolLM2-135M shapes, 1 thread\n");
    printf("%7s | %14s %12s | %14s %12s | %8s\n", "context", "GQA us/step", "KV B/token", "MLA us/step", "KV B/token", "MLA/GQA");
    for (ci = 0; ci < 4; ci++) {
        int ctx = ctxs[ci], it, iters = ctx > 8192 ? 40 : 200;
        mla_gqa_cache kc;
        mla_cache cache;
        float *x = rnd(D, 1.0f), *out = (float *)malloc(sizeof(float) * D);
        size_t gb = mla_gqa_workspace_bytes(&gc, 1, ctx + 1), mb = mla_workspace_bytes(&mc, 1, ctx + 1, MLA_ABSORBED);
        void *gws = malloc(gb), *mws = malloc(mb);
        double tg, tm;
        float *fill;
        mla_gqa_cache_init(&kc, 1, ctx + 1, G * d);
        fill = rnd((size_t)ctx * G * d, 1.0f);
        memcpy(kc.k, fill, sizeof(float) * ctx * G * d);
        memcpy(kc.v, fill, sizeof(float) * ctx * G * d);
        kc.len = ctx;
        mla_cache_init(&cache, MLA_F32, 1, r, m, ctx + 1, NULL);
        free(fill);
        fill = rnd((size_t)ctx * (r + m), 1.0f);
        memcpy(cache.pool.data, fill, sizeof(float) * ctx * (r + m));
        free(fill);
        mla_seq_reserve(&cache.pool, &cache.seq, ctx);
        cache.seq.len = ctx;
        for (it = 0; it < 5; it++) { /* warm up; the step writes row ctx and does not advance */
            mla_gqa_forward(&gc, &gw, &kc, 0, x, 1, out, gws, gb);
            mla_decode(&mc, &mw, &cache.pool, &cache.seq, 1, 0, x, out, mws, mb);
        }
        tg = now();
        for (it = 0; it < iters; it++) mla_gqa_forward(&gc, &gw, &kc, 0, x, 1, out, gws, gb);
        tg = (now() - tg) / iters;
        tm = now();
        for (it = 0; it < iters; it++) mla_decode(&mc, &mw, &cache.pool, &cache.seq, 1, 0, x, out, mws, mb);
        tm = (now() - tm) / iters;
        printf("%7d | %14.1f %12d | %14.1f %12d | %8.2f\n", ctx, tg * 1e6, 2 * G * d * 2, tm * 1e6, (r + m) * 2, tm / tg);
        mla_gqa_cache_free(&kc);
        mla_cache_free(&cache);
        free(x); free(out); free(gws); free(mws);
    }
    printf("(KV bytes per token per layer at f16; both caches here are f32 in memory)\n");
    return 0;
}
