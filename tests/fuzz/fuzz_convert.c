/* libFuzzer: the conversion entry points on degenerate statistics. A small
   GQA layer (fuzzed shape and weights), calibration moments that are zero,
   NaN, rank-deficient (fewer tokens than dims) or ordinary, and fuzzed
   options go through mla_convert_layer (both methods), mla_convert_lowrank_q
   and mla_eigh. Each returns an error code, or an MLA layer whose weights are
   finite and pass mla_weights_validate. */
#define MLA_IMPLEMENTATION
#include "../../mla.h"
#include "fuzz.h"

static int g_sane; /* every fuzzed number so far finite and moderate */
static float fv(fz *z, float s) { return fz_float_sane(z, s, 1e3f, &g_sane); }

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fz z = {data, size};
    mla_gqa_config g;
    mla_gqa_weights w;
    mla_calib cal;
    mla_convert_options opt;
    mla_converted cv;
    float *mem[7] = {0};
    int i, mode, D, L, use_cal;
    size_t k;
    mla_result rc;
    g_sane = 1;
    memset(&g, 0, sizeof g);
    memset(&w, 0, sizeof w);
    memset(&opt, 0, sizeof opt);
    g.n_kv_heads = fz_int(&z, 1, 2);
    g.n_heads = g.n_kv_heads * fz_int(&z, 1, 3);
    g.head_dim = 2 * fz_int(&z, 1, 4);
    g.dim = fz_int(&z, 1, 16);
    g.attn_bias = fz_u8(&z) & 1;
    g.rope_layout = (mla_rope_layout)(fz_u8(&z) & 1);
    D = g.dim;
    L = g.n_kv_heads * g.head_dim;
    {
        size_t n[7] = {(size_t)g.n_heads * g.head_dim * D, (size_t)L * D, (size_t)L * D, (size_t)D * g.n_heads * g.head_dim,
                       (size_t)g.n_heads * g.head_dim, (size_t)L, (size_t)L};
        for (i = 0; i < 7; i++) {
            mem[i] = (float *)malloc(sizeof(float) * n[i]);
            for (k = 0; k < n[i]; k++) mem[i][k] = fv(&z, 1.0f);
        }
        w.w_q = mem[0]; w.w_k = mem[1]; w.w_v = mem[2]; w.w_o = mem[3];
        if (g.attn_bias) { w.b_q = mem[4]; w.b_k = mem[5]; w.b_v = mem[6]; }
    }
    /* statistics */
    mode = fz_u8(&z) % 4;
    use_cal = mode != 3;
    if (mla_calib_init(&cal, D) != MLA_OK) goto done;
    if (mode == 1) { /* NaN in the moments */
        cal.n = 4;
        cal.xx[fz_int(&z, 0, D * D - 1)] = NAN;
    } else if (mode == 2) { /* a few tokens: rank-deficient (or zero tokens: all zeros) */
        int T = fz_int(&z, 0, 3);
        float *x = (float *)malloc(sizeof(float) * (size_t)(T ? T : 1) * D);
        for (k = 0; k < (size_t)T * D; k++) x[k] = fv(&z, 2.0f);
        mla_calib_add(&cal, x, T);
        free(x);
    } else if (mode == 0) {
        float x[16 * 16];
        for (k = 0; k < (size_t)16 * D; k++) x[k] = fv(&z, 2.0f);
        mla_calib_add(&cal, x, 16);
    }
    opt.qk_rope_head_dim = fz_int(&z, 0, L);
    opt.freqfold = fz_int(&z, 0, 4);
    opt.kv_lora_rank = fz_int(&z, 0, 2 * L);
    opt.method = (mla_convert_method)fz_int(&z, 0, 2);
    opt.damp = (fz_u8(&z) & 1) ? fv(&z, 1.0f) : 0.0;
    opt.key_weight = (fz_u8(&z) & 1) ? fv(&z, 4.0f) : 0.0;
    opt.key_only_rorope = fz_u8(&z) & 1;
    rc = mla_convert_layer(&g, &w, use_cal ? &cal : NULL, &opt, &cv);
    FZ_CHECK(rc >= 0 && rc < MLA_ERR_COUNT);
    if (rc == MLA_OK) {
        const char *bad = NULL;
        mla_result v = mla_weights_validate(&cv.cfg, &cv.w, 1, &bad);
        /* finite inputs and options give a finite layer */
        int sane = g_sane && mode != 1;
        if (sane) FZ_CHECK(v == MLA_OK);
        if (v == MLA_OK && (fz_u8(&z) & 1)) {
            rc = mla_convert_lowrank_q(&cv, use_cal ? &cal : NULL, fz_int(&z, -1, 2 * D), fz_float(&z, 1.0f));
            FZ_CHECK(rc >= 0 && rc < MLA_ERR_COUNT);
            if (rc == MLA_OK && sane) FZ_CHECK(mla_weights_validate(&cv.cfg, &cv.w, 1, &bad) == MLA_OK);
        }
        mla_converted_free(&cv);
    }
    { /* eigh on a fuzzed symmetric matrix */
        int n = fz_int(&z, 0, 8), a, b;
        double A[64], ev[8];
        for (a = 0; a < n; a++)
            for (b = 0; b <= a; b++) A[a * n + b] = A[b * n + a] = fz_float(&z, 4.0f);
        rc = mla_eigh(n, A, ev);
        FZ_CHECK(rc >= 0 && rc < MLA_ERR_COUNT);
    }
    mla_calib_free(&cal);
done:
    for (i = 0; i < 7; i++) free(mem[i]);
    return 0;
}
