/* Conversion: eigensolver, lossless GQA -> MLA, RoRoPE/PCA exactness at
   full rank, parameter errors. Random small GQA layers (MHA, g = 1, biases). */
#include "harness.h"
#include "../mla.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

static unsigned long long g_s = 0x9E3779B97F4A7C15ULL;
static double urand(void) {
    g_s ^= g_s << 13; g_s ^= g_s >> 7; g_s ^= g_s << 17;
    return (double)(g_s >> 11) * (1.0 / 9007199254740992.0) * 2.0 - 1.0;
}

/* ||A - V diag(w) V^T|| / ||A|| and ||V^T V - I|| (max norms) */
static void eig_errors(int n, const double *A, const double *V, const double *w, double *rec, double *orth) {
    double amax = 0, emax = 0, omax = 0;
    int i, j, k;
    for (i = 0; i < n; i++)
        for (j = 0; j < n; j++) {
            double r = 0, o = 0;
            for (k = 0; k < n; k++) {
                r += V[(size_t)i * n + k] * w[k] * V[(size_t)j * n + k];
                o += V[(size_t)k * n + i] * V[(size_t)k * n + j];
            }
            if (fabs(A[(size_t)i * n + j]) > amax) amax = fabs(A[(size_t)i * n + j]);
            if (fabs(r - A[(size_t)i * n + j]) > emax) emax = fabs(r - A[(size_t)i * n + j]);
            if (fabs(o - (i == j)) > omax) omax = fabs(o - (i == j));
        }
    *rec = emax / amax;
    *orth = omax;
}

static void test_eigh(void) {
    int sizes[] = {1, 2, 3, 7, 16, 64, 200, 600}, si, kind;
    double worst_rec = 0, worst_orth = 0;
    for (si = 0; si < 8; si++)
        for (kind = 0; kind < (si == 7 ? 1 : 4); kind++) { /* n = 600: random only (time) */
            int n = sizes[si], i, j, k, sorted = 1;
            double *A = (double *)malloc(sizeof(double) * n * n), *V = (double *)malloc(sizeof(double) * n * n);
            double *w = (double *)malloc(sizeof(double) * n), *Q = (double *)malloc(sizeof(double) * n * n);
            double rec, orth;
            if (kind == 0) { /* random symmetric */
                for (i = 0; i < n; i++)
                    for (j = 0; j <= i; j++) A[i * n + j] = A[j * n + i] = urand();
            } else { /* Q diag(lambda) Q^T with chosen spectra: degenerate, rank-deficient, ill-conditioned */
                for (i = 0; i < n * n; i++) Q[i] = urand();
                for (i = 0; i < n; i++) { /* Gram-Schmidt on columns */
                    for (j = 0; j < i; j++) {
                        double dp = 0;
                        for (k = 0; k < n; k++) dp += Q[k * n + i] * Q[k * n + j];
                        for (k = 0; k < n; k++) Q[k * n + i] -= dp * Q[k * n + j];
                    }
                    {
                        double nr = 0;
                        for (k = 0; k < n; k++) nr += Q[k * n + i] * Q[k * n + i];
                        for (k = 0; k < n; k++) Q[k * n + i] /= sqrt(nr);
                    }
                }
                for (i = 0; i < n; i++) {
                    double lam = kind == 1 ? (i < n / 2 ? 2.0 : 2.0) + (i % 3 == 0) /* repeated */
                               : kind == 2 ? (i < n / 3 ? 1.0 + i : 0.0)             /* rank deficient */
                                           : pow(10.0, -12.0 * i / (n > 1 ? n - 1 : 1)); /* cond 1e12 */
                    w[i] = lam;
                }
                for (i = 0; i < n; i++)
                    for (j = 0; j < n; j++) {
                        double acc = 0;
                        for (k = 0; k < n; k++) acc += Q[i * n + k] * w[k] * Q[j * n + k];
                        A[i * n + j] = acc;
                    }
                for (i = 0; i < n; i++) /* exact symmetry */
                    for (j = 0; j < i; j++) A[j * n + i] = A[i * n + j];
            }
            memcpy(V, A, sizeof(double) * n * n);
            CHECK(mla_eigh(n, V, w) == MLA_OK);
            for (i = 0; i + 1 < n; i++) sorted &= w[i] >= w[i + 1];
            CHECK(sorted);
            eig_errors(n, A, V, w, &rec, &orth);
            if (rec > worst_rec) worst_rec = rec;
            if (orth > worst_orth) worst_orth = orth;
            free(A); free(V); free(w); free(Q);
        }
    th_note("eigh n<=200 random/degenerate/rank-deficient/cond 1e12, n=600 random: reconstruction %.1e, orthogonality %.1e",
            worst_rec, worst_orth);
    CHECK_LE(worst_rec, 1e-10);
    CHECK_LE(worst_orth, 1e-10);
    {
        double bad[4] = {1, NAN, NAN, 1}, w2[2];
        CHECK(mla_eigh(2, bad, w2) == MLA_ERR_NONFINITE);
        CHECK(mla_eigh(0, bad, w2) == MLA_ERR_INVALID_ARG);
    }
}

/* ---- a random GQA layer and inputs ---- */
typedef struct {
    mla_gqa_config c;
    mla_gqa_weights w;
    float *mem;
} gqa_layer;

static void gqa_init(gqa_layer *L, int D, int H, int G, int d, int bias, float theta) {
    size_t n = (size_t)H * d * D + 2 * (size_t)G * d * D + (size_t)D * H * d + (size_t)H * d + 2 * (size_t)G * d + D, i;
    float *p;
    memset(L, 0, sizeof *L);
    L->c.dim = D; L->c.n_heads = H; L->c.n_kv_heads = G; L->c.head_dim = d; L->c.attn_bias = bias;
    L->c.rope_theta = theta; L->c.rope_layout = MLA_ROPE_INTERLEAVED;
    L->mem = p = (float *)malloc(sizeof(float) * n);
    for (i = 0; i < n; i++) p[i] = (float)(urand() * 1.7 / sqrt((double)D));
    L->w.w_q = p; p += (size_t)H * d * D;
    L->w.w_k = p; p += (size_t)G * d * D;
    L->w.w_v = p; p += (size_t)G * d * D;
    L->w.w_o = p; p += (size_t)D * H * d;
    L->w.b_q = bias ? p : NULL; p += (size_t)H * d;
    L->w.b_k = bias ? p : NULL; p += (size_t)G * d;
    L->w.b_v = bias ? p : NULL; p += (size_t)G * d;
    L->w.b_o = bias ? p : NULL;
}

/* correlated inputs: x = A z with a fixed random A, so covariances are not white */
static float *make_inputs(int N, int D) {
    float *A = (float *)malloc(sizeof(float) * D * D), *x = (float *)malloc(sizeof(float) * N * D);
    int t, i, j;
    for (i = 0; i < D * D; i++) A[i] = (float)urand() * (i % (D + 1) == 0 ? 2.0f : 0.3f);
    for (t = 0; t < N; t++) {
        float z[256];
        for (j = 0; j < D; j++) z[j] = (float)urand();
        for (i = 0; i < D; i++) {
            double acc = 0;
            for (j = 0; j < D; j++) acc += A[i * D + j] * z[j];
            x[t * D + i] = (float)acc;
        }
    }
    free(A);
    return x;
}

/* cv's query against the source's (mla_converted.q_map): max relative error
   of w_q and b_q against [W_q[j] ; q_map_j W_q[j]] (and the bias) per head */
static double qmap_err(const gqa_layer *L, const mla_converted *cv) {
    int H = L->c.n_heads, d = L->c.head_dim, D = L->c.dim, j, i, k, e;
    int dn = cv->cfg.qk_nope_head_dim, m = cv->cfg.qk_rope_head_dim;
    double err = 0, big = 0;
    if (!cv->q_map || !cv->w.w_q || (dn != 0 && dn != d)) return 1e30;
    for (j = 0; j < H; j++)
        for (i = 0; i < dn + m; i++)
            for (k = 0; k <= D; k++) {
                double ref = 0, got;
                if (k == D && !L->w.b_q) break;
                for (e = 0; e < d; e++) {
                    double a = i < dn ? (e == i) : cv->q_map[((size_t)j * m + i - dn) * d + e];
                    ref += a * (k < D ? L->w.w_q[((size_t)j * d + e) * D + k] : L->w.b_q[(size_t)j * d + e]);
                }
                got = k < D ? cv->w.w_q[((size_t)j * (dn + m) + i) * D + k] : cv->w.b_q[(size_t)j * (dn + m) + i];
                err = fmax(err, fabs(got - ref));
                big = fmax(big, fabs(ref));
            }
    return err / big;
}

/* GQA output vs converted MLA output (prefill + decode, both modes) */
static double compare(const gqa_layer *L, const mla_converted *cv, const float *x, int N, int P) {
    mla_gqa_cache gc;
    mla_cache mc, mn;
    size_t gb = mla_gqa_workspace_bytes(&L->c, N, N), mb = mla_workspace_bytes(&cv->cfg, N, N, MLA_NAIVE);
    void *gw = malloc(gb), *mw = malloc(mb);
    int D = L->c.dim, t;
    float *og = (float *)malloc(sizeof(float) * N * D), *om = (float *)malloc(sizeof(float) * N * D);
    float *on = (float *)malloc(sizeof(float) * N * D);
    double e1, e2;
    mla_gqa_cache_init(&gc, 1, N, L->c.n_kv_heads * L->c.head_dim);
    mla_cache_init(&mc, MLA_F32, 1, cv->cfg.kv_lora_rank, cv->cfg.qk_rope_head_dim, N, NULL);
    mla_cache_init(&mn, MLA_F32, 1, cv->cfg.kv_lora_rank, cv->cfg.qk_rope_head_dim, N, NULL);
    CHECK(mla_gqa_forward(&L->c, &L->w, &gc, 0, x, N, og, gw, gb) == MLA_OK);
    CHECK(mla_forward(&cv->cfg, &cv->w, &mc.pool, &mc.seq, 0, x, P, om, MLA_ABSORBED, mw, mb) == MLA_OK);
    mla_seq_advance(&mc.seq, P);
    for (t = P; t < N; t++) {
        CHECK(mla_decode(&cv->cfg, &cv->w, &mc.pool, SEQS1(&mc.seq), 1, 0, x + t * D, om + t * D, mw, mb) == MLA_OK);
        mla_seq_advance(&mc.seq, 1);
    }
    CHECK(mla_forward(&cv->cfg, &cv->w, &mn.pool, &mn.seq, 0, x, N, on, MLA_NAIVE, mw, mb) == MLA_OK);
    e1 = th_relerr(om, og, (size_t)N * D);
    e2 = th_relerr(on, og, (size_t)N * D);
    mla_gqa_cache_free(&gc);
    mla_cache_free(&mc); mla_cache_free(&mn);
    free(gw); free(mw); free(og); free(om); free(on);
    return e1 > e2 ? e1 : e2;
}

static void test_lossless_random(void) {
    struct { int D, H, G, d, bias; } cases[] = {{48, 6, 2, 8, 0}, {32, 4, 4, 8, 1}, {40, 5, 1, 8, 1}, {64, 8, 2, 16, 1}};
    int i;
    for (i = 0; i < 4; i++) {
        gqa_layer L;
        mla_converted cv;
        float *x;
        double e, eq;
        gqa_init(&L, cases[i].D, cases[i].H, cases[i].G, cases[i].d, cases[i].bias, 10000.0f);
        x = make_inputs(40, cases[i].D);
        CHECK(mla_convert_lossless(&L.c, &L.w, &cv) == MLA_OK);
        CHECK(cv.cfg.kv_lora_rank + cv.cfg.qk_rope_head_dim == 2 * cases[i].G * cases[i].d); /* same cache */
        eq = qmap_err(&L, &cv);
        CHECK_LE(eq, 1e-6);
        e = compare(&L, &cv, x, 40, 13);
        th_note("lossless D=%d h=%d g=%d d=%d bias=%d: rel err %.2e (absorbed decode and naive), W_q vs q_map W_q %.1e",
                cases[i].D, cases[i].H, cases[i].G, cases[i].d, cases[i].bias, e, eq);
        CHECK_LE(e, 1e-5);
        mla_converted_free(&cv);
        free(x);
        free(L.mem);
    }
}

/* RoRoPE with f = 1 keeping every component (m = L) is exact; so is the
   joint PCA at full rank r = 2L - m, for both methods; and at m < L the
   full-rank PCA equals RoRoPE alone (the PCA adds no loss). */
static void test_rorope_pca_exact(void) {
    gqa_layer L;
    mla_calib cal;
    float *x;
    int N = 60, method;
    gqa_init(&L, 48, 6, 3, 8, 1, 500.0f);
    x = make_inputs(N, 48);
    CHECK(mla_calib_init(&cal, 48) == MLA_OK);
    CHECK(mla_calib_add(&cal, x, N) == MLA_OK);
    { /* a NaN activation is refused and adds nothing */
        float keep = x[7];
        x[7] = NAN;
        CHECK(mla_calib_add(&cal, x, N) == MLA_ERR_NONFINITE && cal.n == N);
        x[7] = keep;
        CHECK(mla_calib_add(NULL, x, N) == MLA_ERR_INVALID_ARG && mla_calib_add(&cal, x, -1) == MLA_ERR_INVALID_ARG);
    }
    for (method = 0; method < 2; method++) {
        mla_convert_options o;
        mla_converted cv, rr;
        double *U = (double *)malloc(sizeof(double) * 2 * 24 * 24), e;
        memset(&o, 0, sizeof o);
        o.method = (mla_convert_method)method;
        o.qk_rope_head_dim = 24; /* = L: every component kept */
        o.freqfold = 1;
        CHECK(mla_convert_layer(&L.c, &L.w, &cal, &o, &cv) == MLA_OK);
        e = compare(&L, &cv, x, N, 20);
        th_note("%s RoRoPE f=1 m=L, PCA r=L: rel err %.2e", method ? "qaware  " : "transmla", e);
        CHECK_LE(e, 1e-5);
        mla_converted_free(&cv);
        /* m = 8 < L (lossy RoRoPE), f = 2: full-rank PCA == RoRoPE alone
           (with the key-only RoRoPE basis, which the test rebuilds below) */
        o.qk_rope_head_dim = 8; o.freqfold = 2; o.kv_lora_rank = 0; o.key_only_rorope = 1;
        CHECK(mla_convert_layer(&L.c, &L.w, &cal, &o, &cv) == MLA_OK);
        {
            double ck[24 * 24];
            int i, j;
            /* the key block of the second moment, as the converter builds it */
            for (i = 0; i < 24; i++)
                for (j = 0; j < 24; j++) {
                    double acc = 0;
                    int t;
                    for (t = 0; t < N; t++) {
                        double ki = L.w.b_k[i], kj = L.w.b_k[j];
                        int k;
                        for (k = 0; k < 48; k++) { ki += L.w.w_k[i * 48 + k] * x[t * 48 + k]; kj += L.w.w_k[j * 48 + k] * x[t * 48 + k]; }
                        acc += ki * kj;
                    }
                    ck[i * 24 + j] = acc;
                }
            CHECK(mla_rorope_basis(&L.c, ck, NULL, 8, 2, 0.01, U, U + 24 * 24) == MLA_OK);
            CHECK(!memcmp(U, U + 24 * 24, sizeof(double) * 24 * 24)); /* key-only: one orthogonal basis */
            CHECK(mla_convert_assemble(&L.c, &L.w, U, U + 24 * 24, 8, 2, 40, NULL, NULL, NULL, &rr) == MLA_OK);
        }
        {
            mla_cache c1, c2;
            size_t wb = mla_workspace_bytes(&cv.cfg, N, N, MLA_NAIVE);
            void *ws = malloc(wb);
            float *o1 = (float *)malloc(sizeof(float) * N * 48), *o2 = (float *)malloc(sizeof(float) * N * 48);
            mla_cache_init(&c1, MLA_F32, 1, cv.cfg.kv_lora_rank, 8, N, NULL);
            mla_cache_init(&c2, MLA_F32, 1, rr.cfg.kv_lora_rank, 8, N, NULL);
            CHECK(mla_forward(&cv.cfg, &cv.w, &c1.pool, &c1.seq, 0, x, N, o1, MLA_NAIVE, ws, wb) == MLA_OK);
            CHECK(mla_forward(&rr.cfg, &rr.w, &c2.pool, &c2.seq, 0, x, N, o2, MLA_NAIVE, ws, wb) == MLA_OK);
            e = th_relerr(o1, o2, (size_t)N * 48);
            th_note("%s m=8 f=2: full-rank PCA vs RoRoPE alone rel err %.2e", method ? "qaware  " : "transmla", e);
            CHECK_LE(e, 1e-5);
            mla_cache_free(&c1); mla_cache_free(&c2);
            free(ws); free(o1); free(o2);
        }
        mla_converted_free(&cv);
        mla_converted_free(&rr);
        free(U);
    }
    mla_calib_free(&cal);
    free(x);
    free(L.mem);
}

/* With every key dim kept on RoPE (m = L) only the values are compressed:
   full rank is exact and the error grows as the rank shrinks (nested PCA
   subspaces). Both methods; then the weight-only fallback runs. */
static void test_compression_monotone(void) {
    gqa_layer L;
    mla_calib cal;
    float *x;
    int N = 200, ri, ranks[] = {24, 16, 8, 4}, method;
    double errs[2][4];
    gqa_init(&L, 48, 6, 3, 8, 0, 10000.0f);
    x = make_inputs(N, 48);
    mla_calib_init(&cal, 48);
    CHECK(mla_calib_add(&cal, x, N) == MLA_OK);
    for (ri = 0; ri < 4; ri++)
        for (method = 0; method < 2; method++) {
            mla_convert_options o;
            mla_converted cv;
            memset(&o, 0, sizeof o);
            o.qk_rope_head_dim = 24; o.kv_lora_rank = ranks[ri]; o.method = (mla_convert_method)method;
            CHECK(mla_convert_layer(&L.c, &L.w, &cal, &o, &cv) == MLA_OK);
            errs[method][ri] = compare(&L, &cv, x, N, N - 3);
            th_note("%s r=%2d (m=L=24): output rel err %.3g", method ? "qaware  " : "transmla", ranks[ri], errs[method][ri]);
            mla_converted_free(&cv);
        }
    for (method = 0; method < 2; method++) {
        CHECK_LE(errs[method][0], 1e-5);
        CHECK(errs[method][1] < errs[method][2] && errs[method][2] < errs[method][3]);
    }
    {
        mla_convert_options o;
        mla_converted cv;
        memset(&o, 0, sizeof o);
        o.qk_rope_head_dim = 8; o.freqfold = 2; o.kv_lora_rank = 24;
        CHECK(mla_convert_layer(&L.c, &L.w, NULL, &o, &cv) == MLA_OK); /* weight-only statistics */
        CHECK(compare(&L, &cv, x, 30, 27) < 1.5);
        mla_converted_free(&cv);
    }
    mla_calib_free(&cal);
    free(x);
    free(L.mem);
}

/* low-rank query: exact at full rank, usable below, errors named */
static void test_lowrank_q(void) {
    gqa_layer L;
    mla_calib cal;
    float *x;
    int N = 80;
    mla_convert_options o;
    mla_converted cv;
    double e_full, e_half;
    gqa_init(&L, 48, 6, 3, 8, 1, 10000.0f);
    x = make_inputs(N, 48);
    mla_calib_init(&cal, 48);
    CHECK(mla_calib_add(&cal, x, N) == MLA_OK);
    memset(&o, 0, sizeof o);
    o.qk_rope_head_dim = 24; /* exact RoRoPE, full rank: only the query changes */
    CHECK(mla_convert_layer(&L.c, &L.w, &cal, &o, &cv) == MLA_OK);
    CHECK(mla_convert_lowrank_q(&cv, &cal, 0, 0) == MLA_ERR_BAD_CONFIG);
    CHECK(mla_convert_lowrank_q(&cv, &cal, 48, 0) == MLA_OK); /* rank D: W_q x is reproduced exactly */
    CHECK(cv.cfg.q_lora_rank == 48 && cv.w.w_q == NULL && cv.w.b_qa != NULL && cv.q_map == NULL);
    CHECK(mla_convert_lowrank_q(&cv, &cal, 24, 0) == MLA_ERR_BAD_CONFIG); /* already low-rank */
    e_full = compare(&L, &cv, x, N, 30);
    mla_converted_free(&cv);
    CHECK(mla_convert_layer(&L.c, &L.w, &cal, &o, &cv) == MLA_OK);
    CHECK(mla_convert_lowrank_q(&cv, &cal, 24, 0) == MLA_OK);
    e_half = compare(&L, &cv, x, N, 30);
    mla_converted_free(&cv);
    th_note("low-rank query: r_q = D exact (rel err %.2e), r_q = D/2 rel err %.3f", e_full, e_half);
    CHECK_LE(e_full, 1e-5);
    CHECK(e_half > e_full && e_half < 1.0);
    mla_calib_free(&cal);
    free(x);
    free(L.mem);
}

/* max |a - b| / max |b| over n floats */
static double max_rel(const float *a, const float *b, size_t n) {
    double e = 0, s = 0;
    size_t i;
    for (i = 0; i < n; i++) {
        if (fabs(a[i] - b[i]) > e) e = fabs(a[i] - b[i]);
        if (fabs(b[i]) > s) s = fabs(b[i]);
    }
    return e / s;
}

/* Output-aware refit: with exact statistics it recovers known weights (a
   lossless conversion whose W_uv and W_o were spoiled comes back), on a lossy
   conversion each stage lowers the output error on its calibration tokens,
   and bad calls are named. */
static void test_refit(void) {
    gqa_layer L;
    mla_calib cal;
    mla_convert_options o;
    mla_converted cv;
    mla_refit rf;
    float *x, *good;
    int N = 120, D = 48, H = 6, j, i;
    size_t nkvb, no;
    double e0, e1, e2, ev, eo;
    gqa_init(&L, D, H, 3, 8, 1, 10000.0f);
    x = make_inputs(N, D);
    mla_calib_init(&cal, D);
    CHECK(mla_calib_add(&cal, x, N) == MLA_OK);
    memset(&o, 0, sizeof o);
    o.qk_rope_head_dim = 24; /* m = L, r = 2L - m: exact */
    CHECK(mla_convert_layer(&L.c, &L.w, &cal, &o, &cv) == MLA_OK);
    nkvb = (size_t)H * (cv.cfg.qk_nope_head_dim + cv.cfg.v_head_dim) * cv.cfg.kv_lora_rank;
    no = (size_t)D * H * cv.cfg.v_head_dim;
    good = (float *)malloc(sizeof(float) * (nkvb + no));
    memcpy(good, cv.w.w_kvb, sizeof(float) * nkvb);
    memcpy(good + nkvb, cv.w.w_o, sizeof(float) * no);
    for (j = 0; j < H; j++) /* spoil every value row and W_o */
        for (i = 0; i < cv.cfg.v_head_dim * cv.cfg.kv_lora_rank; i++)
            ((float *)cv.w.w_kvb)[(size_t)j * (cv.cfg.qk_nope_head_dim + cv.cfg.v_head_dim) * cv.cfg.kv_lora_rank +
                                  (size_t)cv.cfg.qk_nope_head_dim * cv.cfg.kv_lora_rank + i] += (float)urand();
    for (i = 0; i < (int)no; i++) ((float *)cv.w.w_o)[i] *= 1.0f + 0.5f * (float)urand();
    CHECK(mla_refit_init(&rf, &cv) == MLA_OK);
    CHECK(mla_refit_apply(&rf, &cv, MLA_REFIT_VALUES, 0) == MLA_ERR_INVALID_ARG); /* no tokens yet */
    CHECK(mla_refit_add(&rf, MLA_REFIT_VALUES, &L.c, &L.w, &cv, x, N) == MLA_OK);
    CHECK(mla_refit_apply(&rf, &cv, MLA_REFIT_OUTPUT, 1e-9) == MLA_ERR_INVALID_ARG); /* its sums not gathered */
    CHECK(mla_refit_apply(&rf, &cv, MLA_REFIT_VALUES, 1e-9) == MLA_OK);
    mla_refit_reset(&rf);
    CHECK(mla_refit_apply(&rf, &cv, MLA_REFIT_VALUES, 1e-9) == MLA_ERR_INVALID_ARG); /* reset forgets */
    CHECK(mla_refit_add(&rf, MLA_REFIT_OUTPUT, &L.c, &L.w, &cv, x, N) == MLA_OK); /* u now from the refit values */
    CHECK(mla_refit_apply(&rf, &cv, MLA_REFIT_OUTPUT, 1e-9) == MLA_OK);
    ev = max_rel(cv.w.w_kvb, good, nkvb);
    eo = max_rel(cv.w.w_o, good + nkvb, no);
    th_note("refit recovers spoiled weights: W_kvb rel err %.2e, W_o %.2e", ev, eo);
    CHECK_LE(ev, 1e-4);
    CHECK_LE(eo, 1e-4);
    CHECK_LE(compare(&L, &cv, x, N, N - 3), 1e-4);
    mla_refit_free(&rf);
    mla_converted_free(&cv);
    free(good);

    /* lossy: r = 8 of 40, m = 8; each stage lowers the error where it was fitted */
    o.qk_rope_head_dim = 8; o.freqfold = 2; o.kv_lora_rank = 8; o.method = MLA_CONVERT_QAWARE;
    CHECK(mla_convert_layer(&L.c, &L.w, &cal, &o, &cv) == MLA_OK);
    e0 = compare(&L, &cv, x, N, N - 3);
    CHECK(mla_refit_init(&rf, &cv) == MLA_OK);
    CHECK(mla_refit_add(&rf, MLA_REFIT_VALUES, &L.c, &L.w, &cv, x, N / 2) == MLA_OK); /* two windows */
    CHECK(mla_refit_add(&rf, MLA_REFIT_VALUES, &L.c, &L.w, &cv, x + (size_t)(N / 2) * D, N / 2) == MLA_OK);
    CHECK(rf.n == N);
    CHECK(mla_refit_apply(&rf, &cv, MLA_REFIT_VALUES, 1e-6) == MLA_OK);
    mla_refit_reset(&rf);
    CHECK(mla_refit_add(&rf, MLA_REFIT_OUTPUT, &L.c, &L.w, &cv, x, N / 2) == MLA_OK);
    CHECK(mla_refit_add(&rf, MLA_REFIT_OUTPUT, &L.c, &L.w, &cv, x + (size_t)(N / 2) * D, N / 2) == MLA_OK);
    e1 = 0;
    {   /* the error over the two windows as fitted (positions restart at 0) */
        double a = compare(&L, &cv, x, N / 2, N / 2 - 3), b = compare(&L, &cv, x + (size_t)(N / 2) * D, N / 2, N / 2 - 3);
        e1 = a > b ? a : b;
    }
    CHECK(mla_refit_apply(&rf, &cv, MLA_REFIT_OUTPUT, 1e-6) == MLA_OK);
    {
        double a = compare(&L, &cv, x, N / 2, N / 2 - 3), b = compare(&L, &cv, x + (size_t)(N / 2) * D, N / 2, N / 2 - 3);
        e2 = a > b ? a : b;
    }
    th_note("refit, r = 8, m = 8: output rel err %.4f (conversion) -> %.4f (values) -> %.4f (+ W_o)", e0, e1, e2);
    CHECK(e1 < e0 && e2 < e1);
    /* errors */
    CHECK(mla_refit_apply(&rf, &cv, 4, 0) == MLA_ERR_INVALID_ARG);
    {
        float *bad = (float *)malloc(sizeof(float) * (size_t)N * D);
        memcpy(bad, x, sizeof(float) * (size_t)N * D);
        bad[5] = NAN;
        CHECK(mla_refit_add(&rf, MLA_REFIT_VALUES, &L.c, &L.w, &cv, bad, N) == MLA_ERR_NONFINITE);
        free(bad);
    }
    CHECK(mla_refit_add(&rf, MLA_REFIT_VALUES, &L.c, &L.w, &cv, x, 0) == MLA_ERR_INVALID_ARG);
    CHECK(mla_refit_add(&rf, 0, &L.c, &L.w, &cv, x, N) == MLA_ERR_INVALID_ARG); /* no target */
    CHECK(mla_refit_add(NULL, MLA_REFIT_VALUES, &L.c, &L.w, &cv, x, N) == MLA_ERR_INVALID_ARG);
    {
        mla_gqa_config g2 = L.c;
        g2.dim = 40;
        CHECK(mla_refit_add(&rf, MLA_REFIT_OUTPUT, &g2, &L.w, &cv, x, N) == MLA_ERR_SHAPE);
    }
    CHECK(mla_convert_lowrank_q(&cv, &cal, 24, 0) == MLA_OK);
    CHECK(mla_refit_add(&rf, MLA_REFIT_VALUES, &L.c, &L.w, &cv, x, N) == MLA_ERR_BAD_CONFIG); /* refit before the low-rank query */
    mla_refit_free(&rf);
    mla_refit_free(&rf); /* twice is harmless */
    mla_converted_free(&cv);
    mla_calib_free(&cal);
    free(x);
    free(L.mem);
}

static void count_progress(void *user, const char *stage, double frac) {
    int *n = (int *)user;
    if (stage && frac >= 0.0 && frac <= 1.0) (*n)++;
}


/* Expected RoPE for the key dims that lose it: with the statistics of a head
   that always looks dt0 back, the converted layer's score at distance dt0
   equals the original's (full rank, m < L), while plain removal does not;
   and mla_calib_attention's statistics are expectations (|E cos| <= 1, the
   slowest pair near 1). Scores are rebuilt from the converted weights. */
static double score_orig(const gqa_layer *L, const float *xt, const float *xu, int j, int t, int u) {
    int d = L->c.head_dim, D = L->c.dim, gj = j / (L->c.n_heads / L->c.n_kv_heads), i, k;
    float q[64], kk[64], freq[32] = {0};
    double s = 0;
    for (i = 0; i < d; i++) {
        double a = L->w.b_q ? L->w.b_q[j * d + i] : 0, b = L->w.b_k ? L->w.b_k[gj * d + i] : 0;
        for (k = 0; k < D; k++) a += L->w.w_q[(size_t)(j * d + i) * D + k] * xt[k];
        for (k = 0; k < D; k++) b += L->w.w_k[(size_t)(gj * d + i) * D + k] * xu[k];
        q[i] = (float)a; kk[i] = (float)b;
    }
    for (i = 0; i < d / 2; i++) freq[i] = (float)pow(L->c.rope_theta, -2.0 * i / d);
    mla_rope_apply(q, d, t, freq, 1.0f, MLA_ROPE_INTERLEAVED);
    mla_rope_apply(kk, d, u, freq, 1.0f, MLA_ROPE_INTERLEAVED);
    for (i = 0; i < d; i++) s += (double)q[i] * kk[i];
    return s / sqrt((double)d);
}
static double score_mla(const mla_converted *cv, const float *xt, const float *xu, int j, int t, int u) {
    const mla_config *c = &cv->cfg;
    int D = c->dim, dn = c->qk_nope_head_dim, m = c->qk_rope_head_dim, r = c->kv_lora_rank, qd = dn + m, i, k;
    float q[128], kpe[64], lat[256];
    double s = 0;
    for (i = 0; i < qd; i++) {
        double a = cv->w.b_q ? cv->w.b_q[j * qd + i] : 0;
        for (k = 0; k < D; k++) a += cv->w.w_q[(size_t)(j * qd + i) * D + k] * xt[k];
        q[i] = (float)a;
    }
    for (i = 0; i < r + m; i++) {
        double a = cv->w.b_kva ? cv->w.b_kva[i] : 0;
        for (k = 0; k < D; k++) a += cv->w.w_kva[(size_t)i * D + k] * xu[k];
        if (i < r) lat[i] = (float)a;
        else kpe[i - r] = (float)a;
    }
    mla_rope_apply(q + dn, m, t, c->rope_freqs, 1.0f, MLA_ROPE_INTERLEAVED);
    mla_rope_apply(kpe, m, u, c->rope_freqs, 1.0f, MLA_ROPE_INTERLEAVED);
    for (i = 0; i < dn; i++) {
        double kn = 0;
        for (k = 0; k < r; k++) kn += cv->w.w_kvb[(size_t)(j * (dn + c->v_head_dim) + i) * r + k] * lat[k];
        s += q[i] * kn;
    }
    for (i = 0; i < m; i++) s += (double)q[dn + i] * kpe[i];
    return s / sqrt((double)qd);
}

static void test_expected_rope(void) {
    gqa_layer L;
    mla_calib cal;
    float *x;
    int N = 64, dt0 = 5, j, i, with;
    double err[2] = {0, 0}, big = 0;
    gqa_init(&L, 32, 4, 2, 8, 1, 100.0f);
    x = make_inputs(N, 32);
    CHECK(mla_calib_init(&cal, 32) == MLA_OK);
    CHECK(mla_calib_add(&cal, x, N) == MLA_OK);
    CHECK(mla_calib_attention(&cal, &L.c, &L.w, x, N) == MLA_OK && cal.n_att == N && cal.att_pairs == 4);
    for (i = 0; i < 4 * 4; i++) CHECK(fabs(cal.att[2 * i] / cal.n_att) <= 1 + 1e-12 && fabs(cal.att[2 * i + 1] / cal.n_att) <= 1 + 1e-12);
    { /* the statistics against the attention rebuilt here from score_orig, head by head */
        double worst = 0, sc[64];
        int h, t, u, pr;
        for (h = 0; h < 4; h++)
            for (pr = 0; pr < 4; pr++) {
                double th = pow(100.0, -2.0 * pr / 8), ec = 0, es = 0;
                for (t = 0; t < N; t++) {
                    double mx = -1e300, sum = 0;
                    for (u = 0; u <= t; u++) {
                        sc[u] = score_orig(&L, x + t * 32, x + u * 32, h, t, u);
                        if (sc[u] > mx) mx = sc[u];
                    }
                    for (u = 0; u <= t; u++) sum += sc[u] = exp(sc[u] - mx);
                    for (u = 0; u <= t; u++) {
                        ec += sc[u] / sum * cos((t - u) * th);
                        es += sc[u] / sum * sin((t - u) * th);
                    }
                }
                worst = fmax(worst, fmax(fabs(ec - cal.att[(h * 4 + pr) * 2]), fabs(es - cal.att[(h * 4 + pr) * 2 + 1])) / N);
            }
        th_note("mla_calib_attention vs attention rebuilt in the test: max |diff| of E[cos], E[sin] %.2e", worst);
        CHECK_LE(worst, 1e-5);
    }
    for (i = 0; i < 4 * 4; i++) { /* now pretend every head looks exactly dt0 back */
        double th = pow(100.0, -2.0 * (i % 4) / 8);
        cal.att[2 * i] = cos(dt0 * th) * cal.n_att;
        cal.att[2 * i + 1] = sin(dt0 * th) * cal.n_att;
    }
    for (with = 0; with < 2; with++) {
        mla_convert_options o;
        mla_converted cv;
        memset(&o, 0, sizeof o);
        /* full rank, f = 1 (FreqFold f > 1 shares frequencies: inexact by design): RoRoPE is the only change */
        o.qk_rope_head_dim = 8; o.freqfold = 1; o.kv_lora_rank = 0;
        o.expected_rope = with;
        CHECK(mla_convert_layer(&L.c, &L.w, &cal, &o, &cv) == MLA_OK);
        CHECK_LE(qmap_err(&L, &cv), 1e-6); /* with the 2x2 expected rotations in the nope rows */
        for (j = 0; j < 4; j++)
            for (i = dt0; i < 20; i++) {
                double so = score_orig(&L, x + i * 32, x + (i - dt0) * 32, j, i, i - dt0);
                double sm = score_mla(&cv, x + i * 32, x + (i - dt0) * 32, j, i, i - dt0);
                if (fabs(so - sm) > err[with]) err[with] = fabs(so - sm);
                if (fabs(so) > big) big = fabs(so);
            }
        mla_converted_free(&cv);
    }
    th_note("score at distance %d, max |error| / max |score|: RoPE dims dropped %.2e, expected rotation %.2e", dt0,
            err[0] / big, err[1] / big);
    CHECK_LE(err[1] / big, 1e-5);
    CHECK(err[0] / big > 1e-2); /* the test can tell the two apart */
    { /* without statistics the option is refused */
        mla_convert_options o;
        mla_converted cv;
        mla_calib plain;
        memset(&o, 0, sizeof o);
        o.qk_rope_head_dim = 4; o.freqfold = 2; o.expected_rope = 1;
        CHECK(mla_calib_init(&plain, 32) == MLA_OK && mla_calib_add(&plain, x, N) == MLA_OK);
        CHECK(mla_convert_layer(&L.c, &L.w, &plain, &o, &cv) == MLA_ERR_INVALID_ARG);
        CHECK(mla_convert_layer(&L.c, &L.w, NULL, &o, &cv) == MLA_ERR_INVALID_ARG);
        mla_calib_free(&plain);
    }
    mla_calib_free(&cal);
    free(x);
    free(L.mem);
}

static void test_convert_errors(void) {
    gqa_layer L;
    mla_convert_options o;
    mla_converted cv;
    gqa_init(&L, 32, 4, 2, 16, 0, 10000.0f); /* L = 32, d = 16 */
    memset(&o, 0, sizeof o);
    {
        int calls = 0;
        o.qk_rope_head_dim = 16; o.kv_lora_rank = 24; o.progress = count_progress; o.progress_user = &calls;
        CHECK(mla_convert_layer(&L.c, &L.w, NULL, &o, &cv) == MLA_OK);
        CHECK(calls >= 4); /* statistics, RoRoPE, PCA, assemble, done */
        mla_converted_free(&cv);
        o.progress = NULL;
    }
    o.qk_rope_head_dim = 16; o.kv_lora_rank = 49;                      /* r > 2L - m = 48 */
    CHECK(mla_convert_layer(&L.c, &L.w, NULL, &o, &cv) == MLA_ERR_BAD_CONFIG);
    o.kv_lora_rank = 16; o.qk_rope_head_dim = 6;                       /* m does not divide d */
    CHECK(mla_convert_layer(&L.c, &L.w, NULL, &o, &cv) == MLA_ERR_BAD_CONFIG);
    o.qk_rope_head_dim = 4; o.freqfold = 2;                            /* c = 4, f = 2 not a multiple */
    CHECK(mla_convert_layer(&L.c, &L.w, NULL, &o, &cv) == MLA_ERR_BAD_CONFIG);
    o.qk_rope_head_dim = 8; o.freqfold = 3;                            /* f does not divide d/2 = 8 */
    CHECK(mla_convert_layer(&L.c, &L.w, NULL, &o, &cv) == MLA_ERR_BAD_CONFIG);
    o.freqfold = 2; o.qk_rope_head_dim = 7;                            /* odd m */
    CHECK(mla_convert_layer(&L.c, &L.w, NULL, &o, &cv) == MLA_ERR_BAD_CONFIG);
    o.qk_rope_head_dim = 8; o.method = (mla_convert_method)9;
    CHECK(mla_convert_layer(&L.c, &L.w, NULL, &o, &cv) == MLA_ERR_BAD_CONFIG);
    o.method = MLA_CONVERT_TRANSMLA;
    L.w.w_v = NULL;
    CHECK(mla_convert_layer(&L.c, &L.w, NULL, &o, &cv) == MLA_ERR_NULL_WEIGHT);
    CHECK(mla_convert_lossless(&L.c, &L.w, &cv) == MLA_ERR_NULL_WEIGHT);
    free(L.mem);
}

void suite_convert(void) {
    RUN(test_eigh);
    RUN(test_lossless_random);
    RUN(test_rorope_pca_exact);
    RUN(test_compression_monotone);
    RUN(test_lowrank_q);
    RUN(test_expected_rope);
    RUN(test_refit);
    RUN(test_convert_errors);
}
