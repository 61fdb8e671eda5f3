/* Core: MLA attention against independent reference vectors, absorbed ==
   naive, chunking, paging, errors, allocation-free decode, CBLAS. */
#include "harness.h"
#include "mlav.h"
#include "../mla.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

extern size_t test_alloc_count;
int cblas_variant_enabled(void);
mla_result cblas_variant_forward(const mla_config *c, const mla_layer_weights *w, mla_pool *pool,
                                 mla_seq *seq, int layer, const float *x, int T, float *out,
                                 mla_mode mode, void *ws, size_t ws_bytes);

#define DATA "tests/data/"

/* ---------------- reference vectors ---------------- */
static void cfg_from_mlav(const mlav *v, mla_config *c) {
    memset(c, 0, sizeof *c);
    c->dim = (int)mlav_num(v, "cfg.D", 0);
    c->n_heads = (int)mlav_num(v, "cfg.h", 0);
    c->q_lora_rank = (int)mlav_num(v, "cfg.q_lora", 0);
    c->q_norm = (int)mlav_num(v, "cfg.q_norm", 0);
    c->kv_lora_rank = (int)mlav_num(v, "cfg.r", 0);
    c->qk_nope_head_dim = (int)mlav_num(v, "cfg.dn", 0);
    c->qk_rope_head_dim = (int)mlav_num(v, "cfg.m", 0);
    c->v_head_dim = (int)mlav_num(v, "cfg.dv", 0);
    c->kv_norm = (int)mlav_num(v, "cfg.kv_norm", 0);
    c->attn_bias = (int)mlav_num(v, "cfg.bias", 0);
    c->rope_layout = mlav_num(v, "cfg.interleaved", 1) ? MLA_ROPE_INTERLEAVED : MLA_ROPE_HALF_SPLIT;
    c->rope_theta = mlav_num(v, "cfg.theta", 0);
    c->rms_eps = mlav_num(v, "cfg.eps", 0);
    c->yarn_factor = mlav_num(v, "cfg.yarn_factor", 0);
    c->yarn_original_max_pos = (int)mlav_num(v, "cfg.orig_max_pos", 0);
    c->yarn_beta_fast = mlav_num(v, "cfg.beta_fast", 0);
    c->yarn_beta_slow = mlav_num(v, "cfg.beta_slow", 0);
    c->yarn_mscale = mlav_num(v, "cfg.mscale", 0);
    c->yarn_mscale_all_dim = mlav_num(v, "cfg.mscale_all_dim", 0);
    c->softmax_scale = mlav_num(v, "cfg.softmax_scale", 0);
}

static void weights_from_mlav(const mlav *v, mla_layer_weights *w) {
    memset(w, 0, sizeof *w);
    w->w_q = mlav_get(v, "w_q", NULL);
    w->b_q = mlav_get(v, "b_q", NULL);
    w->w_qa = mlav_get(v, "w_qa", NULL);
    w->b_qa = mlav_get(v, "b_qa", NULL);
    w->q_norm = mlav_get(v, "q_norm", NULL);
    w->w_qb = mlav_get(v, "w_qb", NULL);
    w->w_kva = mlav_get(v, "w_kva", NULL);
    w->b_kva = mlav_get(v, "b_kva", NULL);
    w->kv_norm = mlav_get(v, "kv_norm", NULL);
    w->w_kvb = mlav_get(v, "w_kvb", NULL);
    w->w_o = mlav_get(v, "w_o", NULL);
    w->b_o = (int)mlav_num(v, "cfg.bias", 0) ? mlav_get(v, "b_o", NULL) : NULL;
}

/* the generator stores every tensor; pass only those the config uses
   (mla_weights_validate refuses a weight its flag switches off) */
static void weights_for_config(const mla_config *c, mla_layer_weights *w) {
    if (!c->attn_bias) w->b_q = w->b_qa = w->b_kva = NULL;
    if (!c->q_norm) w->q_norm = NULL;
    if (!c->kv_norm) w->kv_norm = NULL;
    if (c->q_lora_rank) w->w_q = NULL;
    else w->w_qa = w->w_qb = NULL;
}

/* prefill P tokens with mla_forward(mode), then decode one by one with
   mla_decode; out [N][D]. Returns the relative error against the reference. */
static double run_case(const char *name, mla_dtype type, mla_mode mode, int block_size, double *c_err) {
    char path[256];
    mlav v;
    mla_config c;
    mla_layer_weights w;
    mla_pool pool;
    mla_seq seq;
    int table[64], P, N, t, D;
    float *out;
    void *ws;
    size_t wsb;
    double err = 1e30;
    snprintf(path, sizeof path, DATA "%s.mlav", name);
    if (mlav_load(&v, path)) {
        fprintf(stderr, "cannot read %s\n", path);
        return err;
    }
    cfg_from_mlav(&v, &c);
    weights_from_mlav(&v, &w);
    weights_for_config(&c, &w);
    P = (int)mlav_num(&v, "cfg.P", 0);
    N = (int)mlav_num(&v, "cfg.N", 0);
    D = c.dim;
    CHECK(mla_weights_validate(&c, &w, 1, NULL) == MLA_OK);
    CHECK(mla_pool_init(&pool, type, 2, c.kv_lora_rank, c.qk_rope_head_dim, block_size, 16, NULL) == MLA_OK);
    mla_seq_init(&seq, table, 64);
    out = (float *)calloc((size_t)N * D, sizeof(float));
    wsb = mla_workspace_bytes(&c, N, N, mode);
    ws = malloc(wsb);
    CHECK(mla_forward(&c, &w, &pool, &seq, 1, mlav_get(&v, "x", NULL), P, out, mode, ws, wsb) == MLA_OK);
    CHECK(mla_seq_advance(&seq, P) == MLA_OK);
    for (t = P; t < N; t++) {
        CHECK(mla_decode(&c, &w, &pool, SEQS1(&seq), 1, 1, mlav_get(&v, "x", NULL) + (size_t)t * D,
                         out + (size_t)t * D, ws, wsb) == MLA_OK);
        CHECK(mla_seq_advance(&seq, 1) == MLA_OK);
    }
    err = th_relerr(out, mlav_get(&v, "out", NULL), (size_t)N * D);
    if (c_err) { /* the cached latent c itself */
        int r = c.kv_lora_rank;
        float *cc = (float *)malloc(sizeof(float) * (size_t)N * r);
        for (t = 0; t < N; t++) memcpy(cc + (size_t)t * r, mla_seq_row(&pool, &seq, 1, t), sizeof(float) * r);
        *c_err = th_relerr(cc, mlav_get(&v, "c", NULL), (size_t)N * r);
        free(cc);
    }
    free(out);
    free(ws);
    mla_pool_free(&pool);
    mlav_free(&v);
    return err;
}

static const char *k_cases[] = {"v2lite", "v3small", "halfbias", "nope0"};

/* Bound for f32 caches: 1e-5 normwise relative (the reference is float64). */
static void test_vectors_f32(void) {
    int i, mode;
    for (i = 0; i < 4; i++)
        for (mode = 0; mode < 2; mode++) {
            double cerr = 1, e = run_case(k_cases[i], MLA_F32, (mla_mode)mode, 4, &cerr);
            th_note("%-9s %-8s f32 cache: out rel err %.2e, latent c rel err %.2e", k_cases[i],
                    mode ? "absorbed" : "naive", e, cerr);
            CHECK_LE(e, 1e-5);
            CHECK_LE(cerr, 1e-5);
        }
}

/* f16/bf16 caches: each cached value carries a relative rounding error of at
   most u (f16 2^-11, bf16 2^-8). The output is linear in the cached values
   through V and smooth in them through softmax(q.k); with scores of order 1
   the error amplification is a small constant, so we require <= 4u
   (normwise): f16 1.95e-3, bf16 1.56e-2. Measured values are printed. */
static void test_vectors_half(void) {
    int i;
    for (i = 0; i < 4; i++) {
        double e16 = run_case(k_cases[i], MLA_F16, MLA_ABSORBED, 64, NULL);
        double eb16 = run_case(k_cases[i], MLA_BF16, MLA_ABSORBED, 64, NULL);
        double n16 = run_case(k_cases[i], MLA_F16, MLA_NAIVE, 3, NULL);
        th_note("%-9s f16 cache %.2e (naive %.2e), bf16 cache %.2e", k_cases[i], e16, n16, eb16);
        CHECK_LE(e16, 4 * 0.00048828125);
        CHECK_LE(n16, 4 * 0.00048828125);
        CHECK_LE(eb16, 4 * 0.00390625);
    }
}

/* the GQA config of a reference vector file (tools/gen_vectors.py) */
static void gqa_cfg_from_mlav(const mlav *v, mla_gqa_config *c) {
    memset(c, 0, sizeof *c);
    c->dim = (int)mlav_num(v, "cfg.D", 0);
    c->n_heads = (int)mlav_num(v, "cfg.h", 0);
    c->n_kv_heads = (int)mlav_num(v, "cfg.g", 0);
    c->head_dim = (int)mlav_num(v, "cfg.d", 0);
    c->attn_bias = (int)mlav_num(v, "cfg.bias", 0);
    c->rope_layout = mlav_num(v, "cfg.interleaved", 0) ? MLA_ROPE_INTERLEAVED : MLA_ROPE_HALF_SPLIT;
    c->rope_theta = mlav_num(v, "cfg.theta", 0);
}

static void test_gqa_vectors(void) {
    const char *names[] = {"gqa_half", "gqa_inter"};
    int i;
    for (i = 0; i < 2; i++) {
        char path[256];
        mlav v;
        mla_gqa_config c;
        mla_gqa_weights w;
        mla_gqa_cache kc;
        int P, N, D, t;
        float *out;
        void *ws;
        size_t wsb;
        double e;
        snprintf(path, sizeof path, DATA "%s.mlav", names[i]);
        CHECK(mlav_load(&v, path) == 0);
        if (!v.n) continue;
        gqa_cfg_from_mlav(&v, &c);
        D = c.dim;
        w.w_q = mlav_get(&v, "w_q", NULL); w.w_k = mlav_get(&v, "w_k", NULL);
        w.w_v = mlav_get(&v, "w_v", NULL); w.w_o = mlav_get(&v, "w_o", NULL);
        w.b_q = mlav_get(&v, "b_q", NULL); w.b_k = mlav_get(&v, "b_k", NULL);
        w.b_v = mlav_get(&v, "b_v", NULL); w.b_o = NULL;
        P = (int)mlav_num(&v, "cfg.P", 0);
        N = (int)mlav_num(&v, "cfg.N", 0);
        CHECK(mla_gqa_cache_init(&kc, 1, N, c.n_kv_heads * c.head_dim) == MLA_OK);
        out = (float *)calloc((size_t)N * D, sizeof(float));
        wsb = mla_gqa_workspace_bytes(&c, N, N);
        ws = malloc(wsb);
        CHECK(mla_gqa_forward(&c, &w, &kc, 0, mlav_get(&v, "x", NULL), P, out, ws, wsb) == MLA_OK);
        kc.len += P;
        for (t = P; t < N; t++) {
            CHECK(mla_gqa_forward(&c, &w, &kc, 0, mlav_get(&v, "x", NULL) + (size_t)t * D, 1,
                                  out + (size_t)t * D, ws, wsb) == MLA_OK);
            kc.len++;
        }
        CHECK(mla_gqa_forward(&c, &w, &kc, 0, mlav_get(&v, "x", NULL), 1, out, ws, wsb) == MLA_ERR_CACHE_FULL);
        e = th_relerr(out, mlav_get(&v, "out", NULL), (size_t)N * D);
        th_note("%-9s GQA reference rel err %.2e", names[i], e);
        CHECK_LE(e, 1e-5);
        free(out);
        free(ws);
        mla_gqa_cache_free(&kc);
        mlav_free(&v);
    }
}

/* ---------------- random layers ---------------- */
typedef struct {
    mla_config c;
    mla_layer_weights w;
    float *mem[12];
} rand_layer;

static unsigned long long g_rng = 88172645463325252ULL;
static float frand(void) { /* uniform in [-1, 1) */
    g_rng ^= g_rng << 13; g_rng ^= g_rng >> 7; g_rng ^= g_rng << 17;
    return (float)((g_rng >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}
static float *rand_vec(size_t n, float scale) {
    float *p = (float *)malloc(sizeof(float) * n);
    size_t i;
    for (i = 0; i < n; i++) p[i] = frand() * scale;
    return p;
}

static void rand_layer_init(rand_layer *L, int D, int H, int rq, int r, int dn, int m, int dv, int kvnorm, int bias) {
    mla_config *c = &L->c;
    int qd = dn + m, k = 0;
    memset(L, 0, sizeof *L);
    c->dim = D; c->n_heads = H; c->q_lora_rank = rq; c->kv_lora_rank = r;
    c->qk_nope_head_dim = dn; c->qk_rope_head_dim = m; c->v_head_dim = dv;
    c->kv_norm = kvnorm; c->q_norm = rq > 0; c->attn_bias = bias; c->rope_theta = 10000;
    if (rq) {
        L->w.w_qa = L->mem[k++] = rand_vec((size_t)rq * D, 1.7f / sqrtf((float)D));
        L->w.b_qa = L->mem[k++] = rand_vec((size_t)rq, 0.1f);
        L->w.q_norm = L->mem[k++] = rand_vec((size_t)rq, 1.0f);
        L->w.w_qb = L->mem[k++] = rand_vec((size_t)H * qd * rq, 1.7f / sqrtf((float)rq));
    } else {
        L->w.w_q = L->mem[k++] = rand_vec((size_t)H * qd * D, 1.7f / sqrtf((float)D));
        L->w.b_q = L->mem[k++] = rand_vec((size_t)H * qd, 0.1f);
    }
    L->w.w_kva = L->mem[k++] = rand_vec((size_t)(r + m) * D, 1.7f / sqrtf((float)D));
    L->w.b_kva = L->mem[k++] = rand_vec((size_t)(r + m), 0.1f);
    L->w.kv_norm = L->mem[k++] = rand_vec((size_t)r, 1.0f);
    L->w.w_kvb = L->mem[k++] = rand_vec((size_t)H * (dn + dv) * r, 1.7f / sqrtf((float)r));
    L->w.w_o = L->mem[k++] = rand_vec((size_t)D * H * dv, 1.7f / sqrtf((float)(H * dv)));
    if (!bias) L->w.b_q = L->w.b_qa = L->w.b_kva = NULL; /* allocated (mem indices stay put), not passed */
    if (!kvnorm) L->w.kv_norm = NULL;
}

static void rand_layer_free(rand_layer *L) {
    int i;
    for (i = 0; i < 12; i++) free(L->mem[i]);
}

/* absorbed == naive over many positions (random weights, paged, 2 layers) */
static void test_absorbed_equals_naive(void) {
    rand_layer L;
    mla_pool pa, pn;
    mla_seq sa, sn;
    int ta[64], tn[64], N = 300, P = 37, t, D;
    float *x, *oa, *on;
    void *ws;
    size_t wsb;
    double worst = 0;
    rand_layer_init(&L, 64, 8, 32, 48, 16, 16, 24, 1, 1);
    D = L.c.dim;
    x = rand_vec((size_t)N * D, 1.0f);
    oa = (float *)malloc(sizeof(float) * N * D);
    on = (float *)malloc(sizeof(float) * N * D);
    CHECK(mla_pool_init(&pa, MLA_F32, 2, 48, 16, 16, 40, NULL) == MLA_OK);
    CHECK(mla_pool_init(&pn, MLA_F32, 2, 48, 16, 16, 40, NULL) == MLA_OK);
    mla_seq_init(&sa, ta, 64);
    mla_seq_init(&sn, tn, 64);
    wsb = mla_workspace_bytes(&L.c, P, N, MLA_NAIVE);
    ws = malloc(wsb);
    CHECK(mla_forward(&L.c, &L.w, &pa, &sa, 1, x, P, oa, MLA_ABSORBED, ws, wsb) == MLA_OK);
    CHECK(mla_forward(&L.c, &L.w, &pn, &sn, 1, x, P, on, MLA_NAIVE, ws, wsb) == MLA_OK);
    mla_seq_advance(&sa, P);
    mla_seq_advance(&sn, P);
    for (t = P; t < N; t++) {
        CHECK(mla_decode(&L.c, &L.w, &pa, SEQS1(&sa), 1, 1, x + (size_t)t * D, oa + (size_t)t * D, ws, wsb) == MLA_OK);
        CHECK(mla_forward(&L.c, &L.w, &pn, &sn, 1, x + (size_t)t * D, 1, on + (size_t)t * D, MLA_NAIVE, ws, wsb) == MLA_OK);
        mla_seq_advance(&sa, 1);
        mla_seq_advance(&sn, 1);
    }
    for (t = 0; t < N; t++) {
        double e = th_relerr(oa + (size_t)t * D, on + (size_t)t * D, (size_t)D);
        if (e > worst) worst = e;
    }
    th_note("absorbed vs naive, 300 positions: worst per-token rel err %.2e", worst);
    CHECK_LE(worst, 1e-5);
    free(x); free(oa); free(on); free(ws);
    mla_pool_free(&pa); mla_pool_free(&pn);
    rand_layer_free(&L);
}

/* w_kvb_bf16 and w_kvb_q8: the absorbed path on the compact copy of W_uk/W_uv
   equals the f32 path on the same rounded values (1e-5: only the order of the
   f32 sums differs; r = 44 leaves SIMD tails and a short last q8 block, r = 96
   with d_v = 22 runs the vector paths' 64-value and 4-row blocks and their
   rests); the rounding itself is noted; NaN or Inf in the copy, or codes
   without scales, are refused by name; mla_quant_q8 gives a Q8_0 matrix's
   values back exactly */
static void kvb_copies(int r, int dv, int refusals);
mla_result avx2_decode(const mla_config *c, const mla_layer_weights *w, mla_pool *pool, mla_seq *const *seqs, int B,
                       int layer, const float *x, float *out, void *ws, size_t ws_bytes);
static void test_kvb_copies(void) {
    kvb_copies(44, 20, 1);
    kvb_copies(96, 22, 0);
}

static void kvb_copies(int r, int dv, int refusals) {
    rand_layer L;
    mla_layer_weights wr, wb;
    mla_pool pr, pb, pf;
    mla_seq sr, sb, sf;
    int tr[64], tb[64], tf[64], N = 120, P = 29, t, D, kind, nb;
    size_t n, i;
    float *x, *orr, *ob, *of, *rounded, *scale;
    uint16_t *half;
    int8_t *codes;
    const char *bad = NULL;
    void *ws;
    size_t wsb;
    rand_layer_init(&L, 64, 6, 0, r, 24, 16, dv, 1, 1);
    D = L.c.dim;
    n = (size_t)L.c.n_heads * (L.c.qk_nope_head_dim + L.c.v_head_dim) * L.c.kv_lora_rank;
    nb = (L.c.kv_lora_rank + 31) / 32;
    half = (uint16_t *)malloc(sizeof(uint16_t) * n);
    codes = (int8_t *)malloc(n);
    scale = (float *)malloc(sizeof(float) * n / L.c.kv_lora_rank * nb);
    rounded = (float *)malloc(sizeof(float) * n);
    x = rand_vec((size_t)N * D, 1.0f);
    orr = (float *)malloc(sizeof(float) * N * D);
    ob = (float *)malloc(sizeof(float) * N * D);
    of = (float *)malloc(sizeof(float) * N * D);
    wsb = mla_workspace_bytes(&L.c, P, N, MLA_ABSORBED);
    ws = malloc(wsb);
    mla_quant_q8(L.w.w_kvb, (int)(n / L.c.kv_lora_rank), L.c.kv_lora_rank, codes, scale);
    for (kind = 0; kind < 2; kind++) {
        double worst = 0, moved = 0;
        for (i = 0; i < n; i++) {
            half[i] = mla_f32_to_bf16(L.w.w_kvb[i]);
            rounded[i] = kind == 0 ? mla_bf16_to_f32(half[i])
                                   : scale[i / L.c.kv_lora_rank * nb + i % L.c.kv_lora_rank / 32] * codes[i];
        }
        wr = L.w; wr.w_kvb = rounded; /* f32 path on the rounded values */
        wb = L.w;                     /* the copy's path (w_kvb: the unrounded f32) */
        if (kind == 0) wb.w_kvb_bf16 = half;
        else { wb.w_kvb_bf16 = half; wb.w_kvb_q8 = codes; wb.w_kvb_q8_scale = scale; } /* q8 wins over bf16 */
        CHECK(mla_weights_validate(&L.c, &wb, 1, NULL) == MLA_OK);
        CHECK(mla_pool_init(&pr, MLA_F32, 1, r, 16, 16, 10, NULL) == MLA_OK);
        CHECK(mla_pool_init(&pb, MLA_F32, 1, r, 16, 16, 10, NULL) == MLA_OK);
        CHECK(mla_pool_init(&pf, MLA_F32, 1, r, 16, 16, 10, NULL) == MLA_OK);
        mla_seq_init(&sr, tr, 64); mla_seq_init(&sb, tb, 64); mla_seq_init(&sf, tf, 64);
        CHECK(mla_forward(&L.c, &wr, &pr, &sr, 0, x, P, orr, MLA_ABSORBED, ws, wsb) == MLA_OK);
        CHECK(mla_forward(&L.c, &wb, &pb, &sb, 0, x, P, ob, MLA_ABSORBED, ws, wsb) == MLA_OK);
        CHECK(mla_forward(&L.c, &L.w, &pf, &sf, 0, x, P, of, MLA_ABSORBED, ws, wsb) == MLA_OK);
        mla_seq_advance(&sr, P); mla_seq_advance(&sb, P); mla_seq_advance(&sf, P);
        for (t = P; t < N; t++) {
            CHECK(mla_decode(&L.c, &wr, &pr, SEQS1(&sr), 1, 0, x + (size_t)t * D, orr + (size_t)t * D, ws, wsb) == MLA_OK);
            CHECK(mla_decode(&L.c, &wb, &pb, SEQS1(&sb), 1, 0, x + (size_t)t * D, ob + (size_t)t * D, ws, wsb) == MLA_OK);
            CHECK(mla_decode(&L.c, &L.w, &pf, SEQS1(&sf), 1, 0, x + (size_t)t * D, of + (size_t)t * D, ws, wsb) == MLA_OK);
            mla_seq_advance(&sr, 1); mla_seq_advance(&sb, 1); mla_seq_advance(&sf, 1);
        }
        if (kind == 1) { /* the AVX2 build (MLA_NO_AVX512; on an AVX-512 machine too) decodes on the q8 copy */
            mla_pool pv;
            mla_seq sv;
            int tv[64];
            float *ov = (float *)malloc(sizeof(float) * P * D); /* the prefill's P outputs, then one per step */
            double ev = 0;
            CHECK(mla_pool_init(&pv, MLA_F32, 1, r, 16, 16, 10, NULL) == MLA_OK);
            mla_seq_init(&sv, tv, 64);
            CHECK(mla_forward(&L.c, &wb, &pv, &sv, 0, x, P, ov, MLA_ABSORBED, ws, wsb) == MLA_OK);
            mla_seq_advance(&sv, P);
            for (t = P; t < N; t++) {
                double e;
                CHECK(avx2_decode(&L.c, &wb, &pv, SEQS1(&sv), 1, 0, x + (size_t)t * D, ov, ws, wsb) == MLA_OK);
                e = th_relerr(ov, orr + (size_t)t * D, (size_t)D);
                mla_seq_advance(&sv, 1);
                if (e > ev) ev = e;
            }
            th_note("r %d: q8 W_kvb, the AVX2 build's decode vs f32 on the same rounded values %.2e", r, ev);
            CHECK_LE(ev, 1e-5);
            mla_pool_free(&pv);
            free(ov);
        }
        for (t = 0; t < N; t++) {
            double e = th_relerr(ob + (size_t)t * D, orr + (size_t)t * D, (size_t)D);
            double f = th_relerr(ob + (size_t)t * D, of + (size_t)t * D, (size_t)D);
            if (e > worst) worst = e;
            if (f > moved) moved = f;
        }
        th_note("r %d: %s W_kvb vs f32 on the same rounded values %.2e; vs the unrounded f32 weights %.2e (the rounding)",
                r, kind ? "q8" : "bf16", worst, moved);
        CHECK_LE(worst, 1e-5);
        CHECK(moved > 0); /* the copy was read */
        mla_pool_free(&pr); mla_pool_free(&pb); mla_pool_free(&pf);
    }
    if (refusals) { /* refusals by name */
        mla_layer_weights wq = L.w;
        wq.w_kvb_bf16 = half;
        half[7] = 0x7fc0; /* NaN */
        CHECK(mla_weights_validate(&L.c, &wq, 1, &bad) == MLA_ERR_NONFINITE && bad && strcmp(bad, "w_kvb_bf16") == 0);
        half[7] = 0xff80; /* -Inf */
        CHECK(mla_weights_validate(&L.c, &wq, 1, NULL) == MLA_ERR_NONFINITE);
        wq.w_kvb_bf16 = NULL;
        wq.w_kvb_q8 = codes;
        CHECK(mla_weights_validate(&L.c, &wq, 0, &bad) == MLA_ERR_NULL_WEIGHT && bad && strcmp(bad, "w_kvb_q8_scale") == 0);
        wq.w_kvb_q8 = NULL; wq.w_kvb_q8_scale = scale;
        CHECK(mla_weights_validate(&L.c, &wq, 0, &bad) == MLA_ERR_NULL_WEIGHT && bad && strcmp(bad, "w_kvb_q8") == 0);
        wq.w_kvb_q8 = codes;
        scale[3] = NAN;
        CHECK(mla_weights_validate(&L.c, &wq, 1, &bad) == MLA_ERR_NONFINITE && bad && strcmp(bad, "w_kvb_q8_scale") == 0);
    }
    if (refusals) { /* a Q8_0 matrix's values (f16 scale d, codes with max |q| = 127) come back exactly */
        float v[2 * 40], sc2[2 * 2];
        int8_t q[2 * 40];
        int same = 1, k;
        for (k = 0; k < 80; k++) { /* row k/40, block k%40/32 (of 32 and of 8 columns) */
            float d = mla_f16_to_f32(mla_f32_to_f16(0.0123f * (float)(1 + k / 40 * 2 + k % 40 / 32)));
            int code = k % 40 % 32 == 5 ? -127 : (k * 37) % 255 - 127;
            v[k] = d * (float)code;
        }
        mla_quant_q8(v, 2, 40, q, sc2);
        for (k = 0; k < 80; k++) same = same && sc2[k / 40 * 2 + k % 40 / 32] * q[k] == v[k];
        CHECK(same);
    }
    free(x); free(orr); free(ob); free(of); free(ws); free(half); free(rounded); free(codes); free(scale);
    rand_layer_free(&L);
}

/* the caller's projections for mla_attend_projected: q [T][h*qd], kv [T][r+m] */
static void project_for(const rand_layer *L, const float *x, int T, float *q, float *kv) {
    const mla_config *c = &L->c;
    int qd = c->qk_nope_head_dim + c->qk_rope_head_dim, t;
    if (c->q_lora_rank) {
        float *qa = (float *)malloc(sizeof(float) * (size_t)T * c->q_lora_rank);
        mla_matmul(qa, x, L->w.w_qa, L->w.b_qa, T, c->q_lora_rank, c->dim);
        for (t = 0; t < T; t++)
            mla_rmsnorm(qa + (size_t)t * c->q_lora_rank, qa + (size_t)t * c->q_lora_rank, L->w.q_norm, c->q_lora_rank, 1e-6f);
        mla_matmul(q, qa, L->w.w_qb, NULL, T, c->n_heads * qd, c->q_lora_rank);
        free(qa);
    } else {
        mla_matmul(q, x, L->w.w_q, L->w.b_q, T, c->n_heads * qd, c->dim);
    }
    mla_matmul(kv, x, L->w.w_kva, L->w.b_kva, T, c->kv_lora_rank + c->qk_rope_head_dim, c->dim);
}

/* mla_attend_projected with the caller's projections == mla_forward / mla_decode
   (both modes, low-rank query with its norm, biases, a batch of two sequences),
   and mla_gqa_attend_projected == the GQA reference vectors; bad calls write nothing */
static void test_attend_projected(void) {
    int rq;
    double worst = 0, gworst = 0;
    for (rq = 0; rq <= 32; rq += 32) {
        rand_layer L;
        mla_pool pf, pp;
        mla_seq sf[2], sp[2];
        mla_seq *bf[2], *bp[2];
        int tf[2][16], tp[2][16], N = 40, P = 13, t, b, D, H, qd, rm, dv;
        mla_mode mode;
        float *x, *q, *kv, *o, *of, *op;
        void *ws;
        size_t wsb;
        rand_layer_init(&L, 64, 8, rq, 48, 16, 16, 24, 1, 1);
        D = L.c.dim; H = L.c.n_heads; qd = 32; rm = 64; dv = 24;
        x = rand_vec((size_t)2 * N * D, 1.0f);
        q = (float *)malloc(sizeof(float) * 2 * N * H * qd);
        kv = (float *)malloc(sizeof(float) * 2 * N * rm);
        o = (float *)malloc(sizeof(float) * 2 * N * H * dv);
        of = (float *)malloc(sizeof(float) * 2 * N * D);
        op = (float *)malloc(sizeof(float) * 2 * N * D);
        wsb = mla_workspace_bytes(&L.c, 2 * N, N, MLA_NAIVE);
        ws = malloc(wsb);
        for (mode = MLA_NAIVE; mode <= MLA_ABSORBED; mode = (mla_mode)(mode + 1)) {
            CHECK(mla_pool_init(&pf, MLA_F32, 1, 48, 16, 8, 20, NULL) == MLA_OK);
            CHECK(mla_pool_init(&pp, MLA_F32, 1, 48, 16, 8, 20, NULL) == MLA_OK);
            for (b = 0; b < 2; b++) {
                mla_seq_init(&sf[b], tf[b], 16); mla_seq_init(&sp[b], tp[b], 16);
                bf[b] = &sf[b]; bp[b] = &sp[b];
                /* prefill P tokens of sequence b */
                CHECK(mla_forward(&L.c, &L.w, &pf, &sf[b], 0, x + (size_t)b * N * D, P, of + (size_t)b * N * D, mode, ws, wsb) == MLA_OK);
                project_for(&L, x + (size_t)b * N * D, P, q, kv);
                CHECK(mla_attend_projected(&L.c, &L.w, &pp, &bp[b], 1, P, 0, q, kv, o, mode, ws, wsb) == MLA_OK);
                mla_matmul(op + (size_t)b * N * D, o, L.w.w_o, NULL, P, D, H * dv);
                mla_seq_advance(&sf[b], P); mla_seq_advance(&sp[b], P);
            }
            for (t = P; t < N; t++) { /* both sequences decode a token per step: a batch of two */
                float xb[2 * 64], ob[2 * 64];
                memcpy(xb, x + (size_t)t * D, sizeof(float) * D);
                memcpy(xb + D, x + ((size_t)N + t) * D, sizeof(float) * D);
                if (mode == MLA_ABSORBED) CHECK(mla_decode(&L.c, &L.w, &pf, bf, 2, 0, xb, ob, ws, wsb) == MLA_OK);
                for (b = 0; b < 2 && mode == MLA_NAIVE; b++)
                    CHECK(mla_forward(&L.c, &L.w, &pf, &sf[b], 0, xb + b * D, 1, ob + b * D, mode, ws, wsb) == MLA_OK);
                for (b = 0; b < 2; b++) memcpy(of + ((size_t)b * N + t) * D, ob + b * D, sizeof(float) * D);
                project_for(&L, xb, 2, q, kv);
                CHECK(mla_attend_projected(&L.c, &L.w, &pp, bp, 2, 1, 0, q, kv, o, mode, ws, wsb) == MLA_OK);
                mla_matmul(ob, o, L.w.w_o, NULL, 2, D, H * dv);
                for (b = 0; b < 2; b++) {
                    memcpy(op + ((size_t)b * N + t) * D, ob + b * D, sizeof(float) * D);
                    mla_seq_advance(&sf[b], 1); mla_seq_advance(&sp[b], 1);
                }
            }
            for (t = 0; t < 2 * N; t++) {
                double e = th_relerr(op + (size_t)t * D, of + (size_t)t * D, (size_t)D);
                worst = e > worst ? e : worst;
            }
            if (mode == MLA_ABSORBED) { /* refusals leave the cache as it was */
                mla_layer_weights nokvb = L.w;
                int len = sp[0].len, nb = sp[0].n_blocks;
                project_for(&L, x, 1, q, kv);
                CHECK(mla_attend_projected(&L.c, &L.w, &pp, bp, 1, 1, 0, NULL, kv, o, mode, ws, wsb) == MLA_ERR_INVALID_ARG);
                nokvb.w_kvb = NULL;
                CHECK(mla_attend_projected(&L.c, &nokvb, &pp, bp, 1, 1, 0, q, kv, o, mode, ws, wsb) == MLA_ERR_NULL_WEIGHT);
                kv[3] = NAN;
                CHECK(mla_attend_projected(&L.c, &L.w, &pp, bp, 1, 1, 0, q, kv, o, mode, ws, wsb) == MLA_ERR_NONFINITE);
                kv[3] = 0.0f;
                CHECK(mla_attend_projected(&L.c, &L.w, &pp, bp, 1, 1, 0, q, kv, o, mode, ws, 16) == MLA_ERR_WORKSPACE);
                CHECK(sp[0].len == len && sp[0].n_blocks == nb);
            }
            mla_pool_free(&pf); mla_pool_free(&pp);
        }
        free(x); free(q); free(kv); free(o); free(of); free(op); free(ws);
        rand_layer_free(&L);
    }
    { /* GQA: the reference vectors through the caller's projections */
        const char *names[] = {"gqa_half", "gqa_inter"};
        int i;
        for (i = 0; i < 2; i++) {
            char path[256];
            mlav v;
            mla_gqa_config c;
            mla_gqa_cache kc;
            const float *xs, *wq, *wk, *wv, *wo, *bq, *bk, *bv;
            float *out, *q, *k, *vv, *o;
            int N, D, L, HD, t;
            void *ws;
            size_t wsb;
            snprintf(path, sizeof path, DATA "%s.mlav", names[i]);
            CHECK(mlav_load(&v, path) == 0);
            if (!v.n) continue;
            gqa_cfg_from_mlav(&v, &c);
            D = c.dim;
            N = (int)mlav_num(&v, "cfg.N", 0);
            L = c.n_kv_heads * c.head_dim; HD = c.n_heads * c.head_dim;
            xs = mlav_get(&v, "x", NULL);
            wq = mlav_get(&v, "w_q", NULL); wk = mlav_get(&v, "w_k", NULL); wv = mlav_get(&v, "w_v", NULL);
            wo = mlav_get(&v, "w_o", NULL);
            bq = c.attn_bias ? mlav_get(&v, "b_q", NULL) : NULL;
            bk = c.attn_bias ? mlav_get(&v, "b_k", NULL) : NULL;
            bv = c.attn_bias ? mlav_get(&v, "b_v", NULL) : NULL;
            CHECK(mla_gqa_cache_init(&kc, 1, N, L) == MLA_OK);
            out = (float *)malloc(sizeof(float) * N * D);
            q = (float *)malloc(sizeof(float) * N * HD); o = (float *)malloc(sizeof(float) * N * HD);
            k = (float *)malloc(sizeof(float) * N * L); vv = (float *)malloc(sizeof(float) * N * L);
            wsb = mla_gqa_workspace_bytes(&c, N, N);
            ws = malloc(wsb);
            for (t = 0; t < N; t++) { /* token by token: decode */
                mla_matmul(q, xs + (size_t)t * D, wq, bq, 1, HD, D);
                mla_matmul(k, xs + (size_t)t * D, wk, bk, 1, L, D);
                mla_matmul(vv, xs + (size_t)t * D, wv, bv, 1, L, D);
                CHECK(mla_gqa_attend_projected(&c, &kc, 0, q, k, vv, 1, o, ws, wsb) == MLA_OK);
                mla_matmul(out + (size_t)t * D, o, wo, NULL, 1, D, HD);
                kc.len++;
            }
            gworst = fmax(gworst, th_relerr(out, mlav_get(&v, "out", NULL), (size_t)N * D));
            CHECK(mla_gqa_attend_projected(&c, &kc, 0, q, k, vv, 1, o, ws, wsb) == MLA_ERR_CACHE_FULL);
            kc.len = 0;
            k[0] = NAN;
            CHECK(mla_gqa_attend_projected(&c, &kc, 0, q, k, vv, 1, o, ws, wsb) == MLA_ERR_NONFINITE);
            CHECK(mla_gqa_attend_projected(&c, &kc, 0, NULL, k, vv, 1, o, ws, wsb) == MLA_ERR_INVALID_ARG);
            mla_gqa_cache_free(&kc);
            free(out); free(q); free(k); free(vv); free(o); free(ws);
            mlav_free(&v);
        }
    }
    th_note("caller's projections + mla_attend_projected vs mla_forward/mla_decode: worst per-token rel err %.2e "
            "(naive and absorbed, q_lora on/off, batch of 2); mla_gqa_attend_projected vs GQA reference %.2e",
            worst, gworst);
    CHECK_LE(worst, 1e-5);
    CHECK_LE(gworst, 1e-5);
}

/* prefill in chunks == prefill at once; paged == contiguous */
static void test_chunks_and_paging(void) {
    rand_layer L;
    mla_cache cc;
    mla_pool pool;
    mla_seq seq;
    int table[32], N = 50, chunks[] = {7, 13, 1, 29}, i, off = 0, D, mode;
    float *x, *o1, *o2;
    void *ws;
    size_t wsb;
    rand_layer_init(&L, 48, 4, 0, 40, 8, 8, 8, 0, 0);
    D = L.c.dim;
    x = rand_vec((size_t)N * D, 1.0f);
    o1 = (float *)malloc(sizeof(float) * N * D);
    o2 = (float *)malloc(sizeof(float) * N * D);
    wsb = mla_workspace_bytes(&L.c, N, N, MLA_NAIVE);
    ws = malloc(wsb);
    for (mode = 0; mode < 2; mode++) {
        CHECK(mla_cache_init(&cc, MLA_F32, 1, 40, 8, N, NULL) == MLA_OK);
        CHECK(mla_forward(&L.c, &L.w, &cc.pool, &cc.seq, 0, x, N, o1, (mla_mode)mode, ws, wsb) == MLA_OK);
        CHECK(mla_pool_init(&pool, MLA_F32, 1, 40, 8, 5, 10, NULL) == MLA_OK);
        mla_seq_init(&seq, table, 32);
        for (i = 0, off = 0; i < 4; i++) {
            CHECK(mla_forward(&L.c, &L.w, &pool, &seq, 0, x + (size_t)off * D, chunks[i], o2 + (size_t)off * D,
                              (mla_mode)mode, ws, wsb) == MLA_OK);
            mla_seq_advance(&seq, chunks[i]);
            off += chunks[i];
        }
        CHECK(off == N);
        CHECK(seq.n_blocks == 10 && pool.n_free == 0);
        /* chunking changes only the summation order inside the projections
           (4-token kernel vs single dots), paging nothing: fp32 rounding */
        CHECK_LE(th_relerr(o2, o1, (size_t)N * D), 1e-6);
        {
            double worst = 0;
            for (i = 0; i < N; i++) {
                double e = th_relerr((const float *)mla_seq_row(&pool, &seq, 0, i),
                                     (const float *)mla_seq_row(&cc.pool, &cc.seq, 0, i), 48);
                if (e > worst) worst = e;
            }
            CHECK_LE(worst, 1e-6);
        }
        mla_pool_free(&pool);
        mla_cache_free(&cc);
    }
    free(x); free(o1); free(o2); free(ws);
    rand_layer_free(&L);
}

/* three sequences in one pool, batched decode == each alone; release/reuse */
static void test_pool_sequences(void) {
    rand_layer L;
    enum { S = 3, STEPS = 20 };
    int lens[S] = {5, 17, 1}, tabs[S + 1][16], i, t, D;
    mla_pool pool;
    mla_seq seqs[S];
    mla_cache alone[S];
    float *x, *ob, *oa;
    void *ws;
    size_t wsb;
    double worst = 0;
    rand_layer_init(&L, 32, 4, 0, 24, 8, 8, 8, 1, 0);
    D = L.c.dim;
    CHECK(mla_pool_init(&pool, MLA_BF16, 1, 24, 8, 4, 40, NULL) == MLA_OK);
    x = rand_vec((size_t)(40 + STEPS) * S * D, 1.0f);
    ob = (float *)malloc(sizeof(float) * S * D * 40);
    oa = (float *)malloc(sizeof(float) * S * D * 40);
    wsb = mla_workspace_bytes(&L.c, 40, 64, MLA_ABSORBED);
    ws = malloc(wsb);
    for (i = 0; i < S; i++) {
        mla_seq_init(&seqs[i], tabs[i], 16);
        CHECK(mla_cache_init(&alone[i], MLA_BF16, 1, 24, 8, 64, NULL) == MLA_OK);
        CHECK(mla_forward(&L.c, &L.w, &pool, &seqs[i], 0, x + (size_t)i * 40 * D, lens[i], ob, MLA_ABSORBED, ws, wsb) == MLA_OK);
        CHECK(mla_forward(&L.c, &L.w, &alone[i].pool, &alone[i].seq, 0, x + (size_t)i * 40 * D, lens[i], oa, MLA_ABSORBED, ws, wsb) == MLA_OK);
        mla_seq_advance(&seqs[i], lens[i]);
        mla_seq_advance(&alone[i].seq, lens[i]);
    }
    for (t = 0; t < STEPS; t++) {
        float xb[S * 32];
        for (i = 0; i < S; i++) memcpy(xb + i * D, x + ((size_t)(40 * S) + (size_t)t * S + i) * D, sizeof(float) * D);
        if (t == STEPS / 2) { /* sequence 1 ends; a new one takes its blocks */
            int freed = seqs[1].n_blocks, before = pool.n_free;
            mla_seq_release(&pool, &seqs[1]);
            CHECK(pool.n_free == before + freed && seqs[1].len == 0 && seqs[1].n_blocks == 0);
            mla_cache_free(&alone[1]);
            CHECK(mla_cache_init(&alone[1], MLA_BF16, 1, 24, 8, 64, NULL) == MLA_OK);
        }
        { /* the batch by pointer, in an order that rotates every step: nothing to copy back */
            mla_seq *ps[S];
            float xr[S * 32], orot[S * 32];
            for (i = 0; i < S; i++) {
                ps[i] = &seqs[(i + t) % S];
                memcpy(xr + i * D, xb + ((i + t) % S) * D, sizeof(float) * D);
            }
            CHECK(mla_decode(&L.c, &L.w, &pool, ps, S, 0, xr, orot, ws, wsb) == MLA_OK);
            for (i = 0; i < S; i++) memcpy(ob + ((i + t) % S) * D, orot + i * D, sizeof(float) * D);
        }
        for (i = 0; i < S; i++) {
            CHECK(mla_decode(&L.c, &L.w, &alone[i].pool, SEQS1(&alone[i].seq), 1, 0, xb + i * D, oa + i * D, ws, wsb) == MLA_OK);
            mla_seq_advance(&seqs[i], 1);
            mla_seq_advance(&alone[i].seq, 1);
        }
        {
            double e = th_relerr(ob, oa, (size_t)S * D);
            if (e > worst) worst = e;
        }
    }
    th_note("batched paged decode vs separate caches (bf16): worst rel err %.2e", worst);
    CHECK_LE(worst, 1e-6); /* same arithmetic, same rounding */
    for (i = 0; i < S; i++) mla_cache_free(&alone[i]);
    mla_pool_free(&pool);
    free(x); free(ob); free(oa); free(ws);
    rand_layer_free(&L);
}

/* ---------------- errors ---------------- */
static void test_config_errors(void) {
    mla_config base, c;
    const char *f = NULL;
    memset(&base, 0, sizeof base);
    base.dim = 16; base.n_heads = 2; base.kv_lora_rank = 8; base.qk_nope_head_dim = 4;
    base.qk_rope_head_dim = 4; base.v_head_dim = 4;
    CHECK(mla_config_validate(&base, &f) == MLA_OK && f == NULL);
#define BAD(stmt, field)                                                       \
    c = base;                                                                  \
    stmt;                                                                      \
    CHECK(mla_config_validate(&c, &f) == MLA_ERR_BAD_CONFIG && f && !strcmp(f, field));
    BAD(c.dim = 0, "dim");
    BAD(c.dim = -3, "dim");
    BAD(c.n_heads = 0, "n_heads");
    BAD(c.q_lora_rank = -1, "q_lora_rank");
    BAD(c.kv_lora_rank = 0, "kv_lora_rank");
    BAD(c.qk_nope_head_dim = -1, "qk_nope_head_dim");
    BAD(c.qk_rope_head_dim = 3, "qk_rope_head_dim");
    BAD((c.qk_rope_head_dim = 0, c.qk_nope_head_dim = 0), "qk_nope_head_dim");
    BAD(c.v_head_dim = 0, "v_head_dim");
    BAD(c.rms_eps = -1, "rms_eps");
    BAD(c.kv_norm = 2, "kv_norm");
    BAD(c.q_norm = 1, "q_norm"); /* q_norm without q_lora_rank */
    BAD(c.max_seq_len = -1, "max_seq_len");
    BAD(c.rope_layout = (mla_rope_layout)7, "rope_layout");
    BAD(c.yarn_factor = 4, "yarn_original_max_pos");
    BAD(c.softmax_scale = -1, "softmax_scale");
    /* non-finite floats (found by fuzz_api: an Inf scale made every output NaN) */
    BAD(c.softmax_scale = INFINITY, "softmax_scale");
    BAD(c.softmax_scale = NAN, "softmax_scale");
    BAD(c.softmax_scale = 3e38f, "softmax_scale"); /* fuzz_api: finite, but every score overflowed */
    BAD(c.rope_theta = INFINITY, "rope_theta");
    BAD(c.rms_eps = INFINITY, "rms_eps");
    BAD(c.yarn_factor = INFINITY, "yarn_factor");
    BAD((c.yarn_factor = 4, c.yarn_original_max_pos = 64, c.yarn_beta_slow = NAN), "yarn_beta_slow");
    BAD((c.yarn_factor = 4, c.yarn_original_max_pos = 64, c.yarn_mscale = -100), "yarn_mscale"); /* cos/sin scale <= 0 */
    BAD((c.yarn_factor = 4, c.yarn_original_max_pos = 64, c.yarn_mscale_all_dim = 3e38f), "yarn_mscale_all_dim");
    BAD(c.yarn_mscale_all_dim = NAN, "yarn_mscale_all_dim");
#undef BAD
    CHECK(mla_config_validate(NULL, &f) == MLA_ERR_INVALID_ARG);
    { /* presets: valid, with DeepSeek's published values */
        static const char *names[] = {"deepseek-v2-lite", "deepseek-v2", "deepseek-v3"};
        int i;
        for (i = 0; i < 3; i++) {
            CHECK(mla_config_preset(&c, names[i]) == MLA_OK && mla_config_validate(&c, &f) == MLA_OK);
            CHECK(c.kv_norm == 1 && c.kv_lora_rank == 512 && c.qk_rope_head_dim == 64 && c.yarn_factor == 40.0f);
            CHECK(c.q_norm == (c.q_lora_rank > 0));
        }
        /* V3: 192^-1/2 * (0.1 * 1.0 * ln 40 + 1)^2 = 0.0721688 * 1.368888^2 */
        CHECK(fabs(mla_softmax_scale(&c) - 0.1352338) < 1e-6);
        CHECK(mla_config_preset(&c, "deepseek-v2-lite") == MLA_OK && c.q_lora_rank == 0 && c.dim == 2048);
        /* V2-Lite: mscale 0.707: 192^-1/2 * (0.1 * 0.707 * ln 40 + 1)^2 = 0.0721688 * 1.2608038^2 */
        CHECK(fabs(mla_softmax_scale(&c) - 0.1147214) < 1e-6);
        CHECK(mla_config_preset(&c, "llama") == MLA_ERR_INVALID_ARG && c.dim == 0);
        CHECK(mla_config_preset(&c, NULL) == MLA_ERR_INVALID_ARG);
    }
    CHECK(mla_workspace_bytes(&base, 0, 4, MLA_ABSORBED) == 0);
    {
        int i;
        for (i = 0; i < MLA_ERR_COUNT; i++) CHECK(strlen(mla_result_string((mla_result)i)) > 1);
    }
}

static void test_call_errors(void) {
    rand_layer L;
    mla_pool pool, other;
    mla_seq seq, copy, *dup[2];
    int table[2], D;
    float *x, *out, saved;
    unsigned char *snap;
    size_t pbytes, wsb;
    void *ws;
    const char *f;
    mla_layer_weights w2;
    rand_layer_init(&L, 32, 2, 0, 16, 8, 8, 8, 1, 1);
    D = L.c.dim;
    x = rand_vec((size_t)8 * D, 1.0f);
    out = (float *)malloc(sizeof(float) * 8 * D);
    /* 2 blocks of 2 tokens, one layer: room for 4 tokens */
    CHECK(mla_pool_init(&pool, MLA_F32, 1, 16, 8, 2, 2, NULL) == MLA_OK);
    mla_seq_init(&seq, table, 2);
    wsb = mla_workspace_bytes(&L.c, 8, 8, MLA_NAIVE);
    ws = malloc(wsb);
    pbytes = mla_pool_bytes(MLA_F32, 1, 16, 8, 2, 2);
    snap = (unsigned char *)malloc(pbytes);
    CHECK(mla_forward(&L.c, &L.w, &pool, &seq, 0, x, 3, out, MLA_ABSORBED, ws, wsb) == MLA_OK);
    mla_seq_advance(&seq, 3);
    memcpy(snap, pool.data, pbytes);
#define UNCHANGED() CHECK(!memcmp(snap, pool.data, pbytes) && seq.len == 3 && seq.n_blocks == 2 && pool.n_free == 0)
    /* cache full: 3 + 2 > 4 */
    CHECK(mla_forward(&L.c, &L.w, &pool, &seq, 0, x, 2, out, MLA_ABSORBED, ws, wsb) == MLA_ERR_CACHE_FULL);
    UNCHANGED();
    /* NaN input: rejected, nothing written */
    saved = x[5]; x[5] = NAN;
    CHECK(mla_forward(&L.c, &L.w, &pool, &seq, 0, x, 1, out, MLA_ABSORBED, ws, wsb) == MLA_ERR_NONFINITE);
    x[5] = INFINITY;
    CHECK(mla_decode(&L.c, &L.w, &pool, SEQS1(&seq), 1, 0, x, out, ws, wsb) == MLA_ERR_NONFINITE);
    x[5] = saved;
    UNCHANGED();
    /* position overflow */
    L.c.max_seq_len = 3;
    CHECK(mla_forward(&L.c, &L.w, &pool, &seq, 0, x, 1, out, MLA_NAIVE, ws, wsb) == MLA_ERR_POSITION);
    L.c.max_seq_len = 0;
    UNCHANGED();
    /* workspace too small */
    CHECK(mla_forward(&L.c, &L.w, &pool, &seq, 0, x, 1, out, MLA_NAIVE, ws, 64) == MLA_ERR_WORKSPACE);
    CHECK(mla_forward(&L.c, &L.w, &pool, &seq, 0, x, 1, out, MLA_NAIVE, NULL, wsb) == MLA_ERR_INVALID_ARG);
    /* null weights, each named */
    w2 = L.w; w2.w_kvb = NULL;
    CHECK(mla_forward(&L.c, &w2, &pool, &seq, 0, x, 1, out, MLA_NAIVE, ws, wsb) == MLA_ERR_NULL_WEIGHT);
    CHECK(mla_weights_validate(&L.c, &w2, 0, &f) == MLA_ERR_NULL_WEIGHT && !strcmp(f, "w_kvb"));
    w2 = L.w; w2.kv_norm = NULL;
    CHECK(mla_weights_validate(&L.c, &w2, 0, &f) == MLA_ERR_NULL_WEIGHT && !strcmp(f, "kv_norm"));
    w2 = L.w; w2.b_kva = NULL;
    CHECK(mla_weights_validate(&L.c, &w2, 0, &f) == MLA_ERR_NULL_WEIGHT && !strcmp(f, "b_kva"));
    { /* a weight the config switches off is refused, naming the flag (the
         DeepSeek footgun: q_norm given, cfg.q_norm left 0, 33% off) */
        mla_config c2 = L.c;
        float one[64] = {1};
        c2.kv_norm = 0;
        CHECK(mla_weights_validate(&c2, &L.w, 0, &f) == MLA_ERR_BAD_CONFIG && !strcmp(f, "kv_norm"));
        c2 = L.c; c2.attn_bias = 0;
        CHECK(mla_weights_validate(&c2, &L.w, 0, &f) == MLA_ERR_BAD_CONFIG && !strcmp(f, "attn_bias"));
        CHECK(mla_forward(&c2, &L.w, &pool, &seq, 0, x, 1, out, MLA_NAIVE, ws, wsb) == MLA_ERR_BAD_CONFIG);
        w2 = L.w; w2.q_norm = one; /* this layer has no q_lora_rank */
        CHECK(mla_weights_validate(&L.c, &w2, 0, &f) == MLA_ERR_BAD_CONFIG && !strcmp(f, "q_norm"));
        w2 = L.w; w2.w_qa = one;
        CHECK(mla_weights_validate(&L.c, &w2, 0, &f) == MLA_ERR_BAD_CONFIG && !strcmp(f, "q_lora_rank"));
    }
    /* NaN weights: found by the finite scan */
    w2 = L.w;
    saved = L.mem[2][7]; L.mem[2][7] = NAN; /* mem[2] = w_kva here (after w_q, b_q) */
    CHECK(mla_weights_validate(&L.c, &L.w, 1, &f) == MLA_ERR_NONFINITE && !strcmp(f, "w_kva"));
    L.mem[2][7] = saved;
    CHECK(mla_weights_validate(&L.c, &L.w, 1, &f) == MLA_OK);
    /* shapes: pool built for another r or m */
    CHECK(mla_pool_init(&other, MLA_F32, 1, 32, 8, 2, 2, NULL) == MLA_OK);
    {
        mla_seq s2;
        int t2[2];
        mla_seq_init(&s2, t2, 2);
        CHECK(mla_forward(&L.c, &L.w, &other, &s2, 0, x, 1, out, MLA_NAIVE, ws, wsb) == MLA_ERR_SHAPE);
        CHECK(s2.n_blocks == 0 && other.n_free == 2);
    }
    mla_pool_free(&other);
    /* bad layer, T, mode, duplicate sequence in a batch */
    CHECK(mla_forward(&L.c, &L.w, &pool, &seq, 1, x, 1, out, MLA_NAIVE, ws, wsb) == MLA_ERR_INVALID_ARG);
    CHECK(mla_forward(&L.c, &L.w, &pool, &seq, 0, x, 0, out, MLA_NAIVE, ws, wsb) == MLA_ERR_INVALID_ARG);
    CHECK(mla_forward(&L.c, &L.w, &pool, &seq, 0, x, 1, out, (mla_mode)5, ws, wsb) == MLA_ERR_INVALID_ARG);
    dup[0] = &seq; dup[1] = &seq; /* the same sequence twice */
    CHECK(mla_decode(&L.c, &L.w, &pool, dup, 2, 0, x, out, ws, wsb) == MLA_ERR_INVALID_ARG);
    copy = seq; dup[1] = &copy; /* a copy sharing its block table */
    CHECK(mla_decode(&L.c, &L.w, &pool, dup, 2, 0, x, out, ws, wsb) == MLA_ERR_INVALID_ARG);
    dup[1] = NULL;
    CHECK(mla_decode(&L.c, &L.w, &pool, dup, 2, 0, x, out, ws, wsb) == MLA_ERR_INVALID_ARG);
    UNCHANGED();
    /* the one token that still fits works; then full */
    CHECK(mla_decode(&L.c, &L.w, &pool, SEQS1(&seq), 1, 0, x, out, ws, wsb) == MLA_OK);
    mla_seq_advance(&seq, 1);
    CHECK(mla_decode(&L.c, &L.w, &pool, SEQS1(&seq), 1, 0, x, out, ws, wsb) == MLA_ERR_CACHE_FULL);
    CHECK(mla_seq_reserve(&pool, &seq, 1) == MLA_ERR_CACHE_FULL);
    /* pool/cache arguments */
    CHECK(mla_pool_init(&other, MLA_F32, 0, 16, 8, 2, 2, NULL) == MLA_ERR_INVALID_ARG);
    CHECK(mla_pool_init(&other, (mla_dtype)9, 1, 16, 8, 2, 2, NULL) == MLA_ERR_INVALID_ARG);
    CHECK(mla_seq_row(&pool, &seq, 0, 99) == NULL); /* past the sequence's blocks */
    /* advancing past the reserved rows is refused; a block handed out again
       comes back zeroed (never uninitialised memory or another sequence's rows) */
    CHECK(seq.len == 4 && seq.capacity == 4);
    CHECK(mla_seq_advance(&seq, 1) == MLA_ERR_INVALID_ARG && seq.len == 4);
    CHECK(mla_seq_advance(&seq, -1) == MLA_ERR_INVALID_ARG && mla_seq_advance(&seq, 0x7fffffff) == MLA_ERR_INVALID_ARG);
    CHECK(((float *)mla_seq_row(&pool, &seq, 0, 3))[0] != 0.0f); /* written above */
    mla_seq_release(&pool, &seq);
    CHECK(seq.capacity == 0 && mla_seq_advance(&seq, 1) == MLA_ERR_INVALID_ARG);
    CHECK(mla_seq_reserve(&pool, &seq, 4) == MLA_OK && seq.capacity == 4);
    {
        int k, t, zero = 1;
        for (t = 0; t < 4; t++)
            for (k = 0; k < 24; k++) zero &= ((float *)mla_seq_row(&pool, &seq, 0, t))[k] == 0.0f;
        CHECK(zero);
    }
#undef UNCHANGED
    mla_pool_free(&pool);
    free(snap); free(x); free(out); free(ws);
    rand_layer_free(&L);
}

/* the decode step allocates nothing (counting MLA_MALLOC in tests/impl.c) */
static void test_decode_no_alloc(void) {
    rand_layer L;
    mla_pool pool;
    mla_seq seqs[4];
    int tabs[4][8], i, t;
    float *x, *out;
    void *ws, *pmem;
    size_t wsb, before;
    rand_layer_init(&L, 32, 4, 16, 24, 8, 8, 8, 1, 0);
    pmem = malloc(mla_pool_bytes(MLA_F16, 2, 24, 8, 8, 16));
    CHECK(mla_pool_init(&pool, MLA_F16, 2, 24, 8, 8, 16, pmem) == MLA_OK); /* caller memory */
    wsb = mla_workspace_bytes(&L.c, 4, 64, MLA_ABSORBED);
    ws = malloc(wsb);
    x = rand_vec(4 * 32, 1.0f);
    out = (float *)malloc(sizeof(float) * 4 * 32);
    for (i = 0; i < 4; i++) mla_seq_init(&seqs[i], tabs[i], 8);
    before = test_alloc_count;
    for (t = 0; t < 30; t++) { /* a different subset of the sequences each step */
        mla_seq *ps[4];
        int B = 1 + t % 4;
        for (i = 0; i < B; i++) ps[i] = &seqs[(i + t) % 4];
        CHECK(mla_decode(&L.c, &L.w, &pool, ps, B, 0, x, out, ws, wsb) == MLA_OK);
        CHECK(mla_decode(&L.c, &L.w, &pool, ps, B, 1, out, x, ws, wsb) == MLA_OK);
        for (i = 0; i < B; i++) mla_seq_advance(ps[i], 1);
    }
    CHECK(test_alloc_count == before);
    for (i = 0, t = 0; i < 4; i++) t += seqs[i].len;
    CHECK(t == 73); /* sum over the 30 steps of the batch size 1 + t % 4 */
    th_note("60 batched decode calls: %d heap allocations", (int)(test_alloc_count - before));
    mla_pool_free(&pool);
    free(pmem); free(ws); free(x); free(out);
    rand_layer_free(&L);
}

static void test_dtypes(void) {
    float vals[] = {0.0f, 1.0f, -2.5f, 65504.0f, 6.1035156e-05f, 5.9604645e-08f, 1e-9f, 3.14159265f, 1e6f};
    int i;
    CHECK(mla_f32_to_f16(1.0f) == 0x3c00);
    CHECK(mla_f32_to_f16(-2.0f) == 0xc000);
    CHECK(mla_f32_to_f16(65504.0f) == 0x7bff);
    CHECK(mla_f32_to_f16(65520.0f) == 0x7c00);      /* rounds to inf */
    CHECK(mla_f32_to_f16(5.9604645e-08f) == 0x0001); /* smallest subnormal */
    CHECK(mla_f32_to_f16(1.0f + 1.0f / 2048) == 0x3c00); /* tie -> even */
    CHECK(mla_f32_to_f16(1.0f + 3.0f / 2048) == 0x3c02); /* tie -> even (up) */
    CHECK(mla_f32_to_bf16(1.0f) == 0x3f80);
    CHECK(mla_f32_to_bf16(1.0f + 1.0f / 256) == 0x3f80); /* tie -> even */
    CHECK(mla_f32_to_bf16(1.0f + 3.0f / 256) == 0x3f82);
    CHECK(mla_f16_to_f32(mla_f32_to_f16(NAN)) != mla_f16_to_f32(mla_f32_to_f16(NAN)));
    CHECK(mla_bf16_to_f32(mla_f32_to_bf16(NAN)) != mla_bf16_to_f32(mla_f32_to_bf16(NAN)));
    for (i = 0; i < (int)(sizeof vals / sizeof vals[0]); i++) {
        float h = mla_f16_to_f32(mla_f32_to_f16(vals[i])), b = mla_bf16_to_f32(mla_f32_to_bf16(vals[i]));
        if (fabsf(vals[i]) >= 6.1035156e-05f && fabsf(vals[i]) <= 65504.0f)
            CHECK(fabsf(h - vals[i]) <= fabsf(vals[i]) * 0.00048828125f);
        CHECK(fabsf(b - vals[i]) <= fabsf(vals[i]) * 0.00390625f);
    }
}

/* MLA_USE_CBLAS path == plain path (a private MLA_STATIC copy of the library) */
static void test_cblas(void) {
    rand_layer L;
    mla_cache c1, c2;
    int N = 40, D;
    float *x, *o1, *o2;
    void *ws;
    size_t wsb;
    double e;
    rand_layer_init(&L, 64, 4, 24, 32, 16, 8, 16, 1, 1);
    D = L.c.dim;
    x = rand_vec((size_t)N * D, 1.0f);
    o1 = (float *)malloc(sizeof(float) * N * D);
    o2 = (float *)malloc(sizeof(float) * N * D);
    wsb = mla_workspace_bytes(&L.c, N, N, MLA_NAIVE);
    ws = malloc(wsb);
    CHECK(mla_cache_init(&c1, MLA_F32, 1, 32, 8, N, NULL) == MLA_OK);
    CHECK(mla_cache_init(&c2, MLA_F32, 1, 32, 8, N, NULL) == MLA_OK);
    CHECK(mla_forward(&L.c, &L.w, &c1.pool, &c1.seq, 0, x, N, o1, MLA_NAIVE, ws, wsb) == MLA_OK);
    CHECK(cblas_variant_forward(&L.c, &L.w, &c2.pool, &c2.seq, 0, x, N, o2, MLA_NAIVE, ws, wsb) == MLA_OK);
    e = th_relerr(o2, o1, (size_t)N * D);
    th_note("CBLAS %s vs plain: rel err %.2e", cblas_variant_enabled() ? "enabled" : "NOT available (plain copy)", e);
    CHECK_LE(e, 1e-5);
    mla_cache_free(&c1); mla_cache_free(&c2);
    free(x); free(o1); free(o2); free(ws);
    rand_layer_free(&L);
}

void suite_core(void) {
    RUN(test_vectors_f32);
    RUN(test_vectors_half);
    RUN(test_gqa_vectors);
    RUN(test_absorbed_equals_naive);
    RUN(test_kvb_copies);
    RUN(test_attend_projected);
    RUN(test_chunks_and_paging);
    RUN(test_pool_sequences);
    RUN(test_config_errors);
    RUN(test_call_errors);
    RUN(test_decode_no_alloc);
    RUN(test_dtypes);
    if (cblas_variant_enabled()) RUN(test_cblas);
    else th_skip("test_cblas", "no CBLAS found at build time; install libopenblas-dev");
}
