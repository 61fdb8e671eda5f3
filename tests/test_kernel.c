/* The attention kernel: every cache type, odd shapes, tails, page
   boundaries and block size 1 against a double-precision softmax over the
   stored rows; partial + merge == whole; the plain (MLA_NO_SIMD), the
   OpenMP and the vector (no AMX, no AVX-512 VNNI) builds against the same
   reference; int8 rows within their stated bounds. */
#include "harness.h"
#include "../mla.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

const char *plain_kernel_name(void);
size_t plain_attend_scratch_bytes(int H, int r, int m);
mla_result plain_attend_latent(const mla_pool *pool, const mla_seq *seq, int layer, int H, int n_ctx, const float *q_lat,
                               const float *q_pe, float scale, float *o_lat, void *scratch, size_t scratch_bytes);
const char *avx2_kernel_name(void);
mla_result avx2_attend_latent(const mla_pool *pool, const mla_seq *seq, int layer, int H, int n_ctx, const float *q_lat,
                              const float *q_pe, float scale, float *o_lat, void *scratch, size_t scratch_bytes);
const char *vec_kernel_name(void);
mla_result vec_attend_latent(const mla_pool *pool, const mla_seq *seq, int layer, int H, int n_ctx, const float *q_lat,
                             const float *q_pe, float scale, float *o_lat, void *scratch, size_t scratch_bytes);
int omp_set_threads(int n);
mla_result omp_attend_latent(const mla_pool *pool, const mla_seq *seq, int layer, int H, int n_ctx, const float *q_lat,
                             const float *q_pe, float scale, float *o_lat, void *scratch, size_t scratch_bytes);
mla_result omp_decode(const mla_config *c, const mla_layer_weights *w, mla_pool *pool, mla_seq *const *seqs, int B, int layer,
                      const float *x, float *out, void *ws, size_t ws_bytes);
mla_result omp_gqa_forward(const mla_gqa_config *c, const mla_gqa_weights *w, mla_gqa_cache *kc, int layer,
                           const float *x, int T, float *out, void *ws, size_t ws_bytes);

static unsigned long long rs_ = 0x9e3779b97f4a7c15ull;
static float urand(void) { /* uniform in [-1, 1) */
    rs_ ^= rs_ << 13; rs_ ^= rs_ >> 7; rs_ ^= rs_ << 17;
    return (float)(rs_ >> 40) / 8388608.0f - 1.0f;
}

/* a stored row, written and read as documented in mla.h (mla_dtype) */
static size_t i8_scales_at(int r, int m) { return (size_t)((r + m + 3) & ~3); }
static void store_row(void *dst, mla_dtype t, const float *x, int r, int m) {
    int i, n = r + m;
    if (t == MLA_F32) memcpy(dst, x, sizeof(float) * (size_t)n);
    if (t == MLA_F16 || t == MLA_BF16)
        for (i = 0; i < n; i++) ((uint16_t *)dst)[i] = t == MLA_F16 ? mla_f32_to_f16(x[i]) : mla_f32_to_bf16(x[i]);
    if (t == MLA_I8) {
        int8_t *d = (int8_t *)dst;
        float sc[2] = {0, 0};
        for (i = 0; i < n; i++) sc[i >= r] = fabsf(x[i]) > sc[i >= r] ? fabsf(x[i]) : sc[i >= r];
        sc[0] /= 127.0f; sc[1] /= 127.0f;
        for (i = 0; i < n; i++) d[i] = (int8_t)(sc[i >= r] > 0 ? lrintf(x[i] / sc[i >= r]) : 0);
        memcpy(d + i8_scales_at(r, m), sc, sizeof sc);
    }
}
static void load_row(double *y, const void *src, mla_dtype t, int r, int m, float *sc) {
    int i, n = r + m;
    if (t == MLA_I8) memcpy(sc, (const char *)src + i8_scales_at(r, m), 2 * sizeof(float));
    for (i = 0; i < n; i++)
        y[i] = t == MLA_F32 ? ((const float *)src)[i]
             : t == MLA_F16 ? mla_f16_to_f32(((const uint16_t *)src)[i])
             : t == MLA_BF16 ? mla_bf16_to_f32(((const uint16_t *)src)[i])
             : (double)((const int8_t *)src)[i] * sc[i >= r];
}

/* one layer (of 2) of a pool holding one sequence of n random rows; row
   magnitudes vary with t, k_pe's differ from c's, some k_pe are all zero */
typedef struct {
    mla_pool pool;
    mla_seq seq;
    int table[4096];
    mla_dtype type;
    int H, r, m, n;
    float *ql, *qp, scale;
} kcase;

static void kcase_init(kcase *k, mla_dtype type, int H, int r, int m, int bs, int n) {
    float *row = (float *)malloc(sizeof(float) * (size_t)(r + m));
    int t, i;
    memset(k, 0, sizeof *k);
    k->type = type; k->H = H; k->r = r; k->m = m; k->n = n;
    CHECK(mla_pool_init(&k->pool, type, 2, r, m, bs, (n + bs - 1) / bs + 1, NULL) == MLA_OK);
    mla_seq_init(&k->seq, k->table, 4096);
    CHECK(mla_seq_reserve(&k->pool, &k->seq, n) == MLA_OK);
    for (t = 0; t < n; t++) {
        float gc = 0.5f + (float)(t % 7), gp = 0.2f + (float)(t % 3);
        for (i = 0; i < r; i++) row[i] = gc * urand();
        for (i = 0; i < m; i++) row[r + i] = t % 11 == 5 ? 0.0f : gp * urand();
        store_row(mla_seq_row(&k->pool, &k->seq, 1, t), type, row, r, m);
    }
    k->seq.len = n;
    k->ql = (float *)malloc(sizeof(float) * (size_t)H * r);
    k->qp = (float *)malloc(sizeof(float) * ((size_t)H * m + 1));
    for (i = 0; i < H * r; i++) k->ql[i] = urand();
    for (i = 0; i < H * m; i++) k->qp[i] = 2.0f * urand();
    k->scale = 1.0f / sqrtf((float)(r + m));
    free(row);
}

static void kcase_free(kcase *k) {
    mla_pool_free(&k->pool);
    free(k->ql); free(k->qp);
}

/* How this build runs a case's bf16 rows (the rule in mla_attend_latent's
   comment): 2 = AMX tiles with the heads as M, query and probabilities
   split into bf16 hi + lo; 3 = AMX tiles with the rows as M (8-16 heads,
   (r + m) % 32 == 0), the query split, P.V in f32; 0 = f32 arithmetic
   (every other path: the rows widened, the query exact). */
static int bf16_path(const kcase *k) {
    int dk = k->r + k->m;
    if (k->type != MLA_BF16 || strncmp(mla_kernel_name(), "amx", 3) || k->r % 16 || dk % 2) return 0;
    if (k->H >= 8 && k->H <= 16 && dk % 32 == 0) return 3;
    return k->H >= 16 ? 2 : 0;
}

/* Double-precision attention over rows [t0, t1) of the stored values: o [H][r],
   lse [H]; and the largest score change that the kernel's query can cause:
   int8 rows, rounded to int16 (half a step of 2^-13 of each part's largest
   |q|); bf16 rows on AMX (paths 2, 3), 2^-16 of each |q_i k_i|. */
static void reference(const kcase *k, int t0, int t1, double *o, double *lse, double *dq) {
    int H = k->H, r = k->r, m = k->m, j, t, i;
    double *row = (double *)malloc(sizeof(double) * (size_t)(r + m)), *s = (double *)malloc(sizeof(double) * (size_t)(t1 - t0 + 1));
    float sc[2] = {0, 0};
    *dq = 0;
    for (j = 0; j < H; j++) {
        double mx = -HUGE_VAL, sum = 0, aq = 0, ap = 0;
        for (i = 0; i < r; i++) aq = fabs(k->ql[j * r + i]) > aq ? fabs(k->ql[j * r + i]) : aq;
        for (i = 0; i < m; i++) ap = fabs(k->qp[j * m + i]) > ap ? fabs(k->qp[j * m + i]) : ap;
        for (i = 0; i < r; i++) o[j * r + i] = 0;
        for (t = t0; t < t1; t++) {
            double d = 0, ac = 0, apd = 0, aqk = 0;
            load_row(row, mla_seq_row(&k->pool, &k->seq, 1, t), k->type, r, m, sc);
            for (i = 0; i < r + m; i++) {
                float qf = i < r ? k->ql[j * r + i] : k->qp[j * m + i - r];
                d += (double)qf * row[i];
                aqk += fabs(qf * row[i]);
                if (i < r) ac += fabs(row[i]); else apd += fabs(row[i]);
            }
            s[t - t0] = k->scale * d;
            mx = s[t - t0] > mx ? s[t - t0] : mx;
            d = k->type == MLA_I8 ? k->scale * (aq * ac + ap * apd) * ldexp(1.0, -14)
              : k->scale * aqk * (bf16_path(k) >= 2 ? ldexp(1.0, -16) : 0.0);
            *dq = d > *dq ? d : *dq;
        }
        for (t = t0; t < t1; t++) sum += exp(s[t - t0] - mx);
        for (t = t0; t < t1; t++) {
            double p = exp(s[t - t0] - mx) / sum;
            load_row(row, mla_seq_row(&k->pool, &k->seq, 1, t), k->type, r, m, sc);
            for (i = 0; i < r; i++) o[j * r + i] += p * row[i];
        }
        lse[j] = t1 > t0 ? mx + log(sum) : -HUGE_VAL;
    }
    free(row); free(s);
}

/* max |a - b| and max |b| */
static double maxdiff(const float *a, const double *b, size_t n, double *bmax) {
    double e = 0;
    size_t i;
    *bmax = 0;
    for (i = 0; i < n; i++) {
        e = fabs(a[i] - b[i]) > e ? fabs(a[i] - b[i]) : e;
        *bmax = fabs(b[i]) > *bmax ? fabs(b[i]) : *bmax;
    }
    return e;
}

/* The bound a case is held to: fp32 rounding of the kernel, 1e-5 of max|o|;
   where the query was rounded, scores off by at most dq move every
   probability by a factor within exp(+-2 dq), so o moves by at most
   (exp(2 dq) - 1) max|c|; with split probabilities (AMX, psplit) within
   2^-16: o within 2^-16 max|c| more. */
static double bound(double omax, double dq, double cmax, int psplit) {
    return 1e-5 * omax + (exp(2 * dq) - 1) * cmax + (psplit ? ldexp(cmax, -16) : 0.0);
}

static double cmax_of(const kcase *k) {
    double *row = (double *)malloc(sizeof(double) * (size_t)(k->r + k->m)), mx = 0;
    float sc[2];
    int t, i;
    for (t = 0; t < k->n; t++) {
        load_row(row, mla_seq_row(&k->pool, &k->seq, 1, t), k->type, k->r, k->m, sc);
        for (i = 0; i < k->r; i++) mx = fabs(row[i]) > mx ? fabs(row[i]) : mx;
    }
    free(row);
    return mx;
}

static const char *tname(mla_dtype t) { return t == MLA_F32 ? "f32" : t == MLA_F16 ? "f16" : t == MLA_BF16 ? "bf16" : "int8"; }

/* this build, the plain build and the OpenMP build (1 and 2 threads) against
   the reference, on odd shapes, tails, page boundaries, block size 1 */
static void test_kernel_shapes(void) {
    static const struct { int H, r, m, bs, n; } cs[] = {
        {1, 1, 0, 1, 1},     {2, 7, 2, 1, 5},      {3, 16, 6, 3, 31},     {4, 37, 6, 64, 32},   {5, 24, 8, 5, 33},
        {7, 128, 64, 64, 100}, {9, 128, 64, 16, 600}, {16, 40, 0, 7, 257},  {128, 512, 64, 64, 130}, {9, 129, 62, 33, 520},
        {16, 16, 2, 3, 45},  {17, 48, 14, 64, 200}, {33, 32, 0, 100, 70}, /* AMX tails: rows, dk % 32, head groups */
        {8, 16, 16, 3, 50},  {15, 32, 32, 64, 77}, /* AMX with rows as M: parts of 3 rows, a 13-row tail */
        {12, 64, 64, 5, 50}, {8, 128, 0, 64, 77},  /* int8 on AMX too: parts of 5 rows, no k_pe, a 13-row tail */
    };
    static const mla_dtype types[] = {MLA_F32, MLA_F16, MLA_BF16, MLA_I8};
    double worst[4][6] = {{0}};
    int amx_cases = 0, amx_i8 = 0;
    int ci, ti, b;
    for (ci = 0; ci < (int)(sizeof cs / sizeof cs[0]); ci++)
        for (ti = 0; ti < 4; ti++) {
            kcase k;
            int H = cs[ci].H, r = cs[ci].r, m = cs[ci].m, n = cs[ci].n;
            size_t sb = mla_attend_scratch_bytes(H, r, m), sp = plain_attend_scratch_bytes(H, r, m);
            void *scratch = malloc(sb > sp ? sb : sp);
            float *o = (float *)malloc(sizeof(float) * (size_t)H * r);
            double *ref = (double *)malloc(sizeof(double) * (size_t)H * r), *lse = (double *)malloc(sizeof(double) * H);
            double dq, omax, cm, e, lim;
            kcase_init(&k, types[ti], H, r, m, cs[ci].bs, n);
            reference(&k, 0, n, ref, lse, &dq); /* dq: the bound of this build's query rounding */
            cm = cmax_of(&k);
            for (b = 0; b < 6; b++) { /* this build, plain, OpenMP 1 thread, OpenMP 2 threads, vector (no AMX, VNNI), AVX2 */
                mla_result rc;
                memset(o, 0xff, sizeof(float) * (size_t)H * r); /* NaN: every output must be written */
                if (b == 0) rc = mla_attend_latent(&k.pool, &k.seq, 1, H, n, k.ql, k.qp, k.scale, o, scratch, sb);
                else if (b == 1) rc = plain_attend_latent(&k.pool, &k.seq, 1, H, n, k.ql, k.qp, k.scale, o, scratch, sp);
                else if (b == 4) rc = vec_attend_latent(&k.pool, &k.seq, 1, H, n, k.ql, k.qp, k.scale, o, scratch, sb);
                else if (b == 5) rc = avx2_attend_latent(&k.pool, &k.seq, 1, H, n, k.ql, k.qp, k.scale, o, scratch, sb);
                else {
                    omp_set_threads(b - 1);
                    rc = omp_attend_latent(&k.pool, &k.seq, 1, H, n, k.ql, k.qp, k.scale, o, scratch, sb);
                }
                CHECK(rc == MLA_OK);
                e = maxdiff(o, ref, (size_t)H * r, &omax);
                if (b == 1 || b >= 4) /* the plain, vector and AVX2 builds round only int8 queries */
                    lim = bound(omax, types[ti] == MLA_I8 ? dq : 0.0, cm, 0);
                else {
                    lim = bound(omax, dq, cm, bf16_path(&k) == 2);
                    amx_cases += bf16_path(&k) >= 2 && b == 0;
                    amx_i8 += types[ti] == MLA_I8 && b == 0 && !strncmp(mla_kernel_name(), "amx", 3) && H >= 8 && H <= 16 &&
                              r % 64 == 0 && m % 64 == 0;
                }
                if (!(e <= lim))
                    fprintf(stderr, "    H=%d r=%d m=%d bs=%d n=%d %s build %d: err %.3g > bound %.3g\n", H, r, m, cs[ci].bs,
                            n, tname(types[ti]), b, e, lim);
                CHECK(e <= lim);
                worst[ti][b] = e / lim > worst[ti][b] ? e / lim : worst[ti][b];
            }
            omp_set_threads(1);
            kcase_free(&k);
            free(scratch); free(o); free(ref); free(lse);
        }
    th_note("bf16 rows: %d of %d shapes on AMX tiles (bound 2^-16), the rest in f32; int8 rows: %d on int8 tiles (exact "
            "integer sums, as vpdpwssd)", amx_cases, (int)(sizeof cs / sizeof cs[0]), amx_i8);
    for (ti = 0; ti < 4; ti++)
        th_note("%-4s rows, %d shapes: worst err / bound: this build (%s) %.3f, plain (%s) %.3f, OpenMP 1 thread %.3f, 2 threads "
                "%.3f, vector (%s) %.3f, AVX2 (%s) %.3f",
                tname(types[ti]), (int)(sizeof cs / sizeof cs[0]), mla_kernel_name(), worst[ti][0], plain_kernel_name(), worst[ti][1], worst[ti][2],
                worst[ti][3], vec_kernel_name(), worst[ti][4], avx2_kernel_name(), worst[ti][5]);
}

/* partial attention over any split of the rows, merged, == the whole */
static void test_partial_merge(void) {
    static const mla_dtype types[] = {MLA_F32, MLA_BF16, MLA_I8};
    int ti, trial;
    double worst = 0, worst_lse = 0;
    for (ti = 0; ti < 3; ti++) {
        kcase k;
        int H = 5, r = 48, m = 16, n = 300, i, np;
        size_t sb = mla_attend_scratch_bytes(H, r, m);
        void *scratch = malloc(sb);
        float *whole = (float *)malloc(sizeof(float) * H * r), *wl = (float *)malloc(sizeof(float) * H);
        float *parts = (float *)malloc(sizeof(float) * 6 * H * r), *pl = (float *)malloc(sizeof(float) * 6 * H);
        float *mo = (float *)malloc(sizeof(float) * H * r), *ml = (float *)malloc(sizeof(float) * H);
        kcase_init(&k, types[ti], H, r, m, 16, n);
        CHECK(mla_attend_latent_partial(&k.pool, &k.seq, 1, H, 0, n, k.ql, k.qp, k.scale, whole, wl, scratch, sb) == MLA_OK);
        for (trial = 0; trial < 20; trial++) {
            int cut[7], c;
            np = 1 + trial % 6;
            cut[0] = 0; cut[np] = n;
            for (c = 1; c < np; c++) cut[c] = (int)((urand() + 1) * 0.5f * n);
            for (c = 1; c < np; c++) { /* sorted; equal cuts give empty parts */
                int d;
                for (d = c + 1; d < np; d++)
                    if (cut[d] < cut[c]) { int tmp = cut[c]; cut[c] = cut[d]; cut[d] = tmp; }
            }
            if (trial == 3) cut[1] = cut[2] = 17; /* an empty part for sure */
            for (c = 0; c < np; c++)
                CHECK(mla_attend_latent_partial(&k.pool, &k.seq, 1, H, cut[c], cut[c + 1], k.ql, k.qp, k.scale,
                                                parts + (size_t)c * H * r, pl + (size_t)c * H, scratch, sb) == MLA_OK);
            mla_attend_merge(H, r, np, parts, pl, mo, ml);
            for (i = 0; i < H * r; i++) worst = fabs(mo[i] - whole[i]) > worst ? fabs(mo[i] - whole[i]) : worst;
            for (i = 0; i < H; i++) worst_lse = fabs(ml[i] - wl[i]) > worst_lse ? fabs(ml[i] - wl[i]) : worst_lse;
        }
        /* an empty range: o = 0, lse = -inf; merged with others it changes nothing */
        CHECK(mla_attend_latent_partial(&k.pool, &k.seq, 1, H, 7, 7, k.ql, k.qp, k.scale, mo, ml, scratch, sb) == MLA_OK);
        CHECK(ml[0] == -INFINITY && mo[0] == 0.0f);
        CHECK(mla_attend_latent_partial(&k.pool, &k.seq, 1, H, 8, 7, k.ql, k.qp, k.scale, mo, ml, scratch, sb) == MLA_ERR_INVALID_ARG);
        CHECK(mla_attend_latent_partial(&k.pool, &k.seq, 1, H, 0, n, k.ql, k.qp, k.scale, mo, ml, scratch, sb - 1) == MLA_ERR_WORKSPACE);
        CHECK(mla_attend_latent(&k.pool, &k.seq, 1, H, n, k.ql, k.qp, k.scale, mo, scratch, sb - 1) == MLA_ERR_WORKSPACE);
        CHECK(mla_attend_latent(&k.pool, &k.seq, 1, H, n + 200, k.ql, k.qp, k.scale, mo, scratch, sb) == MLA_ERR_INVALID_ARG);
        kcase_free(&k);
        free(scratch); free(whole); free(wl); free(parts); free(pl); free(mo); free(ml);
    }
    th_note("60 random splits into 1-6 parts (empty parts too), f32/bf16/int8: max |merged - whole| %.2e, lse %.2e", worst, worst_lse);
    CHECK_LE(worst, 1e-5);
    CHECK_LE(worst_lse, 1e-5);
}

/* int8 rows as mla_forward writes them: the documented layout, scale =
   absmax / 127, every value within half a step; and attention over them
   against the same rows in f32 within the bound the quantization implies */
static void test_int8_cache(void) {
    mla_config c;
    mla_layer_weights w;
    mla_cache c32, c8;
    int D = 48, H = 4, r = 40, m = 8, T = 90, i, t;
    float *wq = NULL, *wkva, *wkvb, *wo, *x, *out, *o32, *o8;
    size_t wsb, sb = mla_attend_scratch_bytes(H, r, m);
    void *ws, *scratch = malloc(sb);
    double worst_q = 0, e, lim, dmax = 0, scmax = 0, cmax = 0, omax = 0;
    memset(&c, 0, sizeof c);
    c.dim = D; c.n_heads = H; c.kv_lora_rank = r; c.qk_nope_head_dim = 8; c.qk_rope_head_dim = m; c.v_head_dim = 8;
    memset(&w, 0, sizeof w);
    wq = (float *)malloc(sizeof(float) * H * 16 * D); wkva = (float *)malloc(sizeof(float) * (r + m) * D);
    wkvb = (float *)malloc(sizeof(float) * H * 16 * r); wo = (float *)malloc(sizeof(float) * D * H * 8);
    for (i = 0; i < H * 16 * D; i++) wq[i] = 0.3f * urand();
    for (i = 0; i < (r + m) * D; i++) wkva[i] = (i / D >= r ? 2.0f : 0.3f) * urand();
    for (i = 0; i < H * 16 * r; i++) wkvb[i] = 0.3f * urand();
    for (i = 0; i < D * H * 8; i++) wo[i] = 0.3f * urand();
    w.w_q = wq; w.w_kva = wkva; w.w_kvb = wkvb; w.w_o = wo;
    x = (float *)malloc(sizeof(float) * T * D); out = (float *)malloc(sizeof(float) * T * D);
    for (i = 0; i < T * D; i++) x[i] = urand();
    wsb = mla_workspace_bytes(&c, T, T, MLA_NAIVE);
    ws = malloc(wsb);
    CHECK(mla_cache_init(&c32, MLA_F32, 1, r, m, T, NULL) == MLA_OK);
    CHECK(mla_cache_init(&c8, MLA_I8, 1, r, m, T, NULL) == MLA_OK);
    CHECK(mla_pool_row_bytes(&c8.pool) == (size_t)((r + m + 3) / 4 * 4 + 8));
    CHECK(mla_forward(&c, &w, &c32.pool, &c32.seq, 0, x, T, out, MLA_NAIVE, ws, wsb) == MLA_OK);
    CHECK(mla_forward(&c, &w, &c8.pool, &c8.seq, 0, x, T, out, MLA_ABSORBED, ws, wsb) == MLA_OK);
    for (t = 0; t < T; t++) {
        const float *f = (const float *)mla_seq_row(&c32.pool, &c32.seq, 0, t);
        const int8_t *q = (const int8_t *)mla_seq_row(&c8.pool, &c8.seq, 0, t);
        float sc[2], amax[2] = {0, 0};
        memcpy(sc, q + (r + m + 3) / 4 * 4, sizeof sc);
        for (i = 0; i < r + m; i++) amax[i >= r] = fabsf(f[i]) > amax[i >= r] ? fabsf(f[i]) : amax[i >= r];
        CHECK(sc[0] == amax[0] / 127.0f && sc[1] == amax[1] / 127.0f);
        for (i = 0; i < r + m; i++) {
            double d = fabs(q[i] * (double)sc[i >= r] - f[i]) / (sc[i >= r] * 0.5 * (1 + 1e-5));
            worst_q = d > worst_q ? d : worst_q;
        }
        scmax = sc[0] > scmax ? sc[0] : scmax;
    }
    th_note("int8 rows from mla_forward: worst |dequantized - f32| = %.6f of half a step", worst_q);
    CHECK_LE(worst_q, 1.0);
    c32.seq.len = c8.seq.len = T;
    { /* attention over the int8 rows vs the f32 rows */
        float *ql = (float *)malloc(sizeof(float) * H * r), *qp = (float *)malloc(sizeof(float) * H * m), scale = 0.15f;
        o32 = (float *)malloc(sizeof(float) * H * r); o8 = (float *)malloc(sizeof(float) * H * r);
        for (i = 0; i < H * r; i++) ql[i] = urand();
        for (i = 0; i < H * m; i++) qp[i] = urand();
        CHECK(mla_attend_latent(&c32.pool, &c32.seq, 0, H, T, ql, qp, scale, o32, scratch, sb) == MLA_OK);
        CHECK(mla_attend_latent(&c8.pool, &c8.seq, 0, H, T, ql, qp, scale, o8, scratch, sb) == MLA_OK);
        for (t = 0; t < T; t++) { /* the score change the row rounding can cause, + the query's */
            const float *f = (const float *)mla_seq_row(&c32.pool, &c32.seq, 0, t);
            const int8_t *q = (const int8_t *)mla_seq_row(&c8.pool, &c8.seq, 0, t);
            float sc[2];
            int j;
            memcpy(sc, q + (r + m + 3) / 4 * 4, sizeof sc);
            for (i = 0; i < r; i++) cmax = fabs(f[i]) + sc[0] * 0.5 > cmax ? fabs(f[i]) + sc[0] * 0.5 : cmax;
            for (j = 0; j < H; j++) {
                double d = 0, aq = 0, ap = 0, sa = 0, sp = 0;
                for (i = 0; i < r; i++) d += fabs(ql[j * r + i]) * sc[0] * 0.5, aq = fmax(aq, fabs(ql[j * r + i])), sa += fabs(f[i]) + sc[0];
                for (i = 0; i < m; i++) d += fabs(qp[j * m + i]) * sc[1] * 0.5, ap = fmax(ap, fabs(qp[j * m + i])), sp += fabs(f[r + i]) + sc[1];
                d = scale * (d + (aq * sa + ap * sp) * ldexp(1.0, -14));
                dmax = d > dmax ? d : dmax;
            }
        }
        for (i = 0; i < H * r; i++) {
            e = fabs(o8[i] - o32[i]);
            omax = e > omax ? e : omax;
        }
        lim = (exp(2 * dmax) - 1) * cmax + scmax * 0.5 + 1e-5 * cmax;
        th_note("attention, int8 rows vs f32 rows: max |diff| %.3g, bound %.3g (scores within %.3g)", omax, lim, dmax);
        CHECK(omax <= lim);
        free(ql); free(qp); free(o32); free(o8);
    }
    mla_cache_free(&c32); mla_cache_free(&c8);
    free(wq); free(wkva); free(wkvb); free(wo); free(x); free(out); free(ws); free(scratch);
}

/* The OpenMP build: decode of 1 and 8 sequences and GQA with 1 and 2
   threads equal this build's; 2 threads twice give the same bits. */
static void test_threads(void) {
    mla_config c;
    mla_layer_weights w;
    mla_pool pa, pb;
    mla_seq sa[8], sb[8];
    int tabs[2][8][64], D = 64, H = 6, r = 64, m = 16, B, i, t, th, n0 = 700;
    float *mem, *x, *o1, *o2, *o3;
    size_t wsb;
    void *ws;
    double worst = 0;
    int same = 1;
    memset(&c, 0, sizeof c);
    c.dim = D; c.n_heads = H; c.kv_lora_rank = r; c.qk_nope_head_dim = 16; c.qk_rope_head_dim = m; c.v_head_dim = 16;
    c.kv_norm = 1;
    mem = (float *)malloc(sizeof(float) * (H * 32 * D + (r + m) * D + r + H * 32 * r + D * H * 16));
    for (i = 0; i < H * 32 * D + (r + m) * D + r + H * 32 * r + D * H * 16; i++) mem[i] = 0.2f * urand();
    memset(&w, 0, sizeof w);
    w.w_q = mem; w.w_kva = w.w_q + H * 32 * D; w.kv_norm = w.w_kva + (r + m) * D; w.w_kvb = w.kv_norm + r;
    w.w_o = w.w_kvb + H * 32 * r;
    x = (float *)malloc(sizeof(float) * 8 * D); o1 = (float *)malloc(sizeof(float) * 8 * D);
    o2 = (float *)malloc(sizeof(float) * 8 * D); o3 = (float *)malloc(sizeof(float) * 8 * D);
    wsb = mla_workspace_bytes(&c, 8, n0 + 8, MLA_ABSORBED);
    ws = malloc(wsb);
    for (B = 1; B <= 8; B += 7) {
        CHECK(mla_pool_init(&pa, MLA_BF16, 1, r, m, 32, 8 * 40, NULL) == MLA_OK);
        CHECK(mla_pool_init(&pb, MLA_BF16, 1, r, m, 32, 8 * 40, NULL) == MLA_OK);
        for (i = 0; i < B; i++) { /* n0 + 37 i cached rows each, the same in both pools */
            mla_seq_init(&sa[i], tabs[0][i], 64); mla_seq_init(&sb[i], tabs[1][i], 64);
            CHECK(mla_seq_reserve(&pa, &sa[i], n0 + 37 * i) == MLA_OK);
            CHECK(mla_seq_reserve(&pb, &sb[i], n0 + 37 * i) == MLA_OK);
            sa[i].len = sb[i].len = n0 + 37 * i;
        }
        for (i = 0; i < (int)(pa.n_blocks * mla_pool_row_bytes(&pa) * 32 / 2); i++)
            ((uint16_t *)pa.data)[i] = ((uint16_t *)pb.data)[i] = mla_f32_to_bf16(urand());
        for (t = 0; t < 3; t++) {
            for (i = 0; i < B * D; i++) x[i] = urand();
            mla_seq *pa_[8], *pb_[8];
            for (i = 0; i < B; i++) pa_[i] = &sa[i], pb_[i] = &sb[i];
            CHECK(mla_decode(&c, &w, &pa, pa_, B, 0, x, o1, ws, wsb) == MLA_OK);
            for (th = 1; th <= 2; th++) {
                omp_set_threads(th);
                CHECK(omp_decode(&c, &w, &pb, pb_, B, 0, x, o2, ws, wsb) == MLA_OK);
                if (th == 2) {
                    CHECK(omp_decode(&c, &w, &pb, pb_, B, 0, x, o3, ws, wsb) == MLA_OK);
                    same &= !memcmp(o2, o3, sizeof(float) * B * D);
                }
                worst = th_relerr(o2, o1, (size_t)B * D) > worst ? th_relerr(o2, o1, (size_t)B * D) : worst;
            }
            omp_set_threads(1);
            for (i = 0; i < B; i++) mla_seq_advance(&sa[i], 1), mla_seq_advance(&sb[i], 1);
        }
        mla_pool_free(&pa); mla_pool_free(&pb);
    }
    th_note("OpenMP build (%s) vs this build, decode B=1 and 8 at ~700 rows, 1 and 2 threads: rel err %.2e; "
            "2 threads twice: %s", omp_set_threads(2) > 1 ? "2 threads available" : "1 thread only", worst,
            same ? "identical" : "DIFFERENT");
    omp_set_threads(1);
    CHECK_LE(worst, 1e-5);
    CHECK(same);
    { /* GQA with the same kernel: the OpenMP build at 2 threads == this build */
        mla_gqa_config g;
        mla_gqa_weights gw;
        mla_gqa_cache k1, k2;
        int G = 2, d = 16, T = 600;
        float *gm = (float *)malloc(sizeof(float) * 4 * H * d * D), *gx = (float *)malloc(sizeof(float) * T * D);
        float *g1 = (float *)malloc(sizeof(float) * T * D), *g2 = (float *)malloc(sizeof(float) * T * D);
        size_t gb;
        void *gws;
        double ge = 0;
        memset(&g, 0, sizeof g);
        g.dim = D; g.n_heads = H; g.n_kv_heads = G; g.head_dim = d;
        for (i = 0; i < 4 * H * d * D; i++) gm[i] = 0.2f * urand();
        for (i = 0; i < T * D; i++) gx[i] = urand();
        memset(&gw, 0, sizeof gw);
        gw.w_q = gm; gw.w_k = gm + H * d * D; gw.w_v = gw.w_k + G * d * D; gw.w_o = gw.w_v + G * d * D;
        gb = mla_gqa_workspace_bytes(&g, T, T + 1);
        gws = malloc(gb);
        CHECK(mla_gqa_cache_init(&k1, 1, T + 1, G * d) == MLA_OK);
        CHECK(mla_gqa_cache_init(&k2, 1, T + 1, G * d) == MLA_OK);
        CHECK(mla_gqa_forward(&g, &gw, &k1, 0, gx, T, g1, gws, gb) == MLA_OK); /* prefill: parallel over tokens */
        omp_set_threads(2);
        CHECK(omp_gqa_forward(&g, &gw, &k2, 0, gx, T, g2, gws, gb) == MLA_OK);
        ge = th_relerr(g2, g1, (size_t)T * D);
        k1.len = k2.len = T;
        CHECK(mla_gqa_forward(&g, &gw, &k1, 0, gx, 1, g1, gws, gb) == MLA_OK); /* decode: rows split */
        CHECK(omp_gqa_forward(&g, &gw, &k2, 0, gx, 1, g2, gws, gb) == MLA_OK);
        ge = th_relerr(g2, g1, (size_t)D) > ge ? th_relerr(g2, g1, (size_t)D) : ge;
        omp_set_threads(1);
        th_note("GQA, OpenMP build at 2 threads vs this build: prefill 600 + 1 decode step: rel err %.2e", ge);
        CHECK_LE(ge, 1e-5);
        mla_gqa_cache_free(&k1); mla_gqa_cache_free(&k2);
        free(gm); free(gx); free(g1); free(g2); free(gws);
    }
    free(mem); free(x); free(o1); free(o2); free(o3); free(ws);
}

/* sizes that would wrap are refused, never rounded into small buffers
   (issue: 2^20 layers x 2^20 tokens x 2^22 values gave 4 bytes and MLA_OK) */
static void test_size_overflow(void) {
    mla_pool p;
    mla_cache c;
    mla_config cfg;
    mla_gqa_config g;
    mla_gqa_cache gc;
    const char *bad = NULL;
    CHECK(mla_pool_bytes(MLA_F32, 1 << 20, 1 << 21, 1 << 21, 1 << 20, 1) == 0);
    CHECK(mla_pool_bytes(MLA_F32, 1 << 20, 1 << 20, 64, 1 << 20, 1 << 20) == 0);
    CHECK(mla_pool_bytes(MLA_BF16, 0x7fffffff, 0x7fffffff, 0x7fffffff, 0x7fffffff, 0x7fffffff) == 0);
    CHECK(mla_pool_init(&p, MLA_F32, 1 << 20, 1 << 20, 64, 1 << 20, 1, NULL) == MLA_ERR_INVALID_ARG);
    CHECK(mla_cache_init(&c, MLA_F32, 1 << 20, 1 << 21, 1 << 21, 1 << 20, NULL) == MLA_ERR_INVALID_ARG);
    CHECK(mla_pool_bytes(MLA_F32, 2, 16, 8, 4, 3) > 0); /* small ones still fine */
    CHECK(mla_seq_row(NULL, NULL, 0, 0) == NULL);   /* and NULLs are refused, not dereferenced */
    CHECK(mla_cache_init(&c, MLA_BF16, 1, 16, 7, 8, NULL) == MLA_ERR_INVALID_ARG); /* odd m, as the config */
    CHECK(mla_gqa_cache_init(&gc, 1 << 20, 1 << 20, 1 << 22) == MLA_ERR_INVALID_ARG);
    CHECK(mla_attend_scratch_bytes(0x7fffffff, 0x7fffffff, 2) == 0);
    memset(&cfg, 0, sizeof cfg); /* d_nope + m overflowing int must not pass (it was UB, folded away at -O2) */
    cfg.dim = 64; cfg.n_heads = 2; cfg.kv_lora_rank = 16; cfg.v_head_dim = 8;
    cfg.qk_nope_head_dim = 0x7fffffff - 1; cfg.qk_rope_head_dim = 64;
    CHECK(mla_config_validate(&cfg, &bad) == MLA_ERR_BAD_CONFIG && bad);
    CHECK(mla_workspace_bytes(&cfg, 1, 16, MLA_ABSORBED) == 0);
    cfg.qk_nope_head_dim = 1 << 20; cfg.n_heads = 1 << 10; /* each fine, the product not */
    CHECK(mla_config_validate(&cfg, &bad) == MLA_ERR_BAD_CONFIG && bad && !strcmp(bad, "n_heads"));
    cfg.qk_nope_head_dim = 16; cfg.n_heads = 2;
    CHECK(mla_config_validate(&cfg, NULL) == MLA_OK);
    CHECK(mla_workspace_bytes(&cfg, 1 << 30, 1 << 30, MLA_NAIVE) > (size_t)1 << 39); /* huge, not wrapped */
    memset(&g, 0, sizeof g);
    g.dim = 64; g.n_heads = 1 << 20; g.n_kv_heads = 1; g.head_dim = 1 << 20;
    CHECK(mla_gqa_config_validate(&g, &bad) == MLA_ERR_BAD_CONFIG);
}

/* mla_gqa_forward with a negative cache length wrote before the cache */
static void test_gqa_negative_len(void) {
    mla_gqa_config g;
    mla_gqa_weights w;
    mla_gqa_cache kc;
    float *mem = (float *)calloc(4 * 16 * 16, sizeof(float)), x[16] = {0}, out[16];
    size_t wb;
    void *ws;
    memset(&g, 0, sizeof g);
    g.dim = 16; g.n_heads = 2; g.n_kv_heads = 1; g.head_dim = 8;
    memset(&w, 0, sizeof w);
    w.w_q = mem; w.w_k = mem + 256; w.w_v = mem + 512; w.w_o = mem + 768;
    CHECK(mla_gqa_cache_init(&kc, 1, 8, 8) == MLA_OK);
    wb = mla_gqa_workspace_bytes(&g, 1, 8);
    ws = malloc(wb);
    kc.len = -3;
    CHECK(mla_gqa_forward(&g, &w, &kc, 0, x, 1, out, ws, wb) == MLA_ERR_INVALID_ARG);
    kc.len = 0x7fffffff;
    CHECK(mla_gqa_forward(&g, &w, &kc, 0, x, 1, out, ws, wb) != MLA_OK);
    kc.len = 0;
    CHECK(mla_gqa_forward(&g, &w, &kc, 0, x, 1, out, ws, wb) == MLA_OK);
    mla_gqa_cache_free(&kc);
    free(mem); free(ws);
}

/* GQA runs the KV groups of a token in one pass over the cached rows (up to
   MLA_MAX_THREADS / threads groups per pass): each group's output must be
   what that group alone gives. A layer of G groups against G one-group
   layers cut from its weights (w_o's columns too, outputs summed), prefill
   (parallel over tokens) and decode (rows split), this build and the OpenMP
   build at 1 and 2 threads; shapes: 12 groups (more than one pass), 3 of 64
   (SmolLM2), MHA (groups of one head). */
static void test_gqa_groups(void) {
    static const int shapes[3][4] = {{24, 12, 16, 32}, {9, 3, 64, 48}, {4, 4, 8, 16}}; /* H, G, d, D */
    int si;
    for (si = 0; si < 3; si++) {
        const int H = shapes[si][0], G = shapes[si][1], d = shapes[si][2], D = shapes[si][3], grp = H / G;
        const int P = 600, N = P + 3, hd = H * d;
        mla_gqa_config c, c1;
        mla_gqa_weights w, w1;
        mla_gqa_cache kc, k1;
        float *mem = (float *)malloc(sizeof(float) * (size_t)(hd + 2 * G * d + hd) * D), *x = (float *)malloc(sizeof(float) * N * D);
        float *out = (float *)malloc(sizeof(float) * N * D), *ref = (float *)calloc((size_t)N * D, sizeof(float));
        float *part = (float *)malloc(sizeof(float) * N * D), *wo1 = (float *)malloc(sizeof(float) * D * grp * d);
        size_t wb, i;
        void *ws;
        int g, t, b;
        double worst = 0;
        for (i = 0; i < (size_t)(hd + 2 * G * d + hd) * D; i++) mem[i] = (float)(urand() * 1.7 / sqrt((double)D));
        for (i = 0; i < (size_t)N * D; i++) x[i] = urand();
        memset(&c, 0, sizeof c);
        c.dim = D; c.n_heads = H; c.n_kv_heads = G; c.head_dim = d;
        memset(&w, 0, sizeof w);
        w.w_q = mem; w.w_k = w.w_q + (size_t)hd * D; w.w_v = w.w_k + (size_t)G * d * D; w.w_o = w.w_v + (size_t)G * d * D;
        c1 = c; c1.n_heads = grp; c1.n_kv_heads = 1;
        wb = mla_gqa_workspace_bytes(&c, N, N) > mla_gqa_workspace_bytes(&c1, N, N) ? mla_gqa_workspace_bytes(&c, N, N)
                                                                                    : mla_gqa_workspace_bytes(&c1, N, N);
        ws = malloc(wb);
        for (g = 0; g < G; g++) { /* the reference: group g alone, outputs summed */
            int o;
            memset(&w1, 0, sizeof w1);
            w1.w_q = w.w_q + (size_t)g * grp * d * D; w1.w_k = w.w_k + (size_t)g * d * D; w1.w_v = w.w_v + (size_t)g * d * D;
            for (o = 0; o < D; o++) memcpy(wo1 + (size_t)o * grp * d, w.w_o + (size_t)o * hd + (size_t)g * grp * d, sizeof(float) * grp * d);
            w1.w_o = wo1;
            CHECK(mla_gqa_cache_init(&k1, 1, N, d) == MLA_OK);
            CHECK(mla_gqa_forward(&c1, &w1, &k1, 0, x, P, part, ws, wb) == MLA_OK);
            k1.len = P;
            for (t = P; t < N; t++, k1.len++)
                CHECK(mla_gqa_forward(&c1, &w1, &k1, 0, x + (size_t)t * D, 1, part + (size_t)t * D, ws, wb) == MLA_OK);
            for (i = 0; i < (size_t)N * D; i++) ref[i] += part[i];
            mla_gqa_cache_free(&k1);
        }
        for (b = 0; b < 3; b++) { /* this build; the OpenMP build at 1, 2 threads */
            if (b) omp_set_threads(b);
            CHECK(mla_gqa_cache_init(&kc, 1, N, G * d) == MLA_OK);
            CHECK((b ? omp_gqa_forward : mla_gqa_forward)(&c, &w, &kc, 0, x, P, out, ws, wb) == MLA_OK);
            kc.len = P;
            for (t = P; t < N; t++, kc.len++)
                CHECK((b ? omp_gqa_forward : mla_gqa_forward)(&c, &w, &kc, 0, x + (size_t)t * D, 1, out + (size_t)t * D, ws, wb) == MLA_OK);
            worst = th_relerr(out, ref, (size_t)N * D) > worst ? th_relerr(out, ref, (size_t)N * D) : worst;
            mla_gqa_cache_free(&kc);
        }
        omp_set_threads(1);
        th_note("GQA %d heads, %d groups of %d: the groups in one pass vs each alone (600 prefill + 3 decode; this "
                "build, OpenMP 1 and 2 threads): rel err %.2e", H, G, d, worst);
        CHECK_LE(worst, 1e-5);
        free(mem); free(x); free(out); free(ref); free(part); free(wo1); free(ws);
    }
}

void suite_kernel(void) {
    RUN(test_size_overflow);
    RUN(test_gqa_negative_len);
    RUN(test_kernel_shapes);
    RUN(test_partial_merge);
    RUN(test_int8_cache);
    RUN(test_threads);
    RUN(test_gqa_groups);
}
