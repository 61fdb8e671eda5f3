/* The CUDA backend (mla_cuda.h) against mla.h's CPU latent attention in its
   plain build (MLA_NO_SIMD, fp32 throughout: tests/variant.c).
   Linked with the CPU build of mla_cuda.cu in `make test` (host logic, split
   plan, log-sum-exp combine, paging), and with the GPU build in
   tools/gpu_check.sh (build/test_cuda_gpu). Both read the same stored cache
   values (bf16 here), so they differ only in fp32 summation order and exp:
   bound 2e-5 normwise relative. */
#include "harness.h"
#include "../mla_cuda.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

size_t plain_attend_scratch_bytes(int H, int r, int m);
mla_result plain_attend_latent(const mla_pool *pool, const mla_seq *seq, int layer, int H, int n_ctx, const float *q_lat,
                               const float *q_pe, float scale, float *o_lat, void *scratch, size_t scratch_bytes);

static unsigned long long g_r = 0x2545F4914F6CDD1DULL;
static float fr(void) {
    g_r ^= g_r << 13; g_r ^= g_r >> 7; g_r ^= g_r << 17;
    return (float)((g_r >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

/* One decode over B ragged sequences, GPU/CPU backend vs mla_attend_latent. */
static double check_shape(int B, int H, int r, int m, int bs, const int *lens, mla_dtype type, int *splits_used) {
    int max_len = 0, b, i, n_blocks = 0, max_blocks, next = 0, L = 2, layer = 1;
    int *tables, *seqlens_d, *tables_d;
    mla_pool host;
    mla_cuda_pool *dev = NULL;
    float *ql, *qp, *o_ref, *o_dev, *ql_d, *qp_d, *o_d, *scratch;
    void *ws;
    size_t wsb, bytes;
    double err = 1e30;
    float scale = 1.0f / sqrtf((float)(r + m)) * 4.0f; /* sharp softmax: a stricter test */
    int sl, ns;
    for (b = 0; b < B; b++) {
        if (lens[b] > max_len) max_len = lens[b];
        n_blocks += (lens[b] + bs - 1) / bs;
    }
    max_blocks = (max_len + bs - 1) / bs;
    if (max_blocks < 1) max_blocks = 1;
    mla_cuda_plan(B, H, max_len, &sl, &ns);
    *splits_used = ns;
    CHECK(mla_pool_init(&host, type, L, r, m, bs, n_blocks + 1, NULL) == MLA_OK);
    CHECK(mla_cuda_pool_create(&dev, type, L, r, m, bs, n_blocks + 1) == MLA_OK);
    if (!dev) return err;
    tables = (int *)calloc((size_t)B * max_blocks, sizeof(int));
    for (b = 0; b < B; b++) /* blocks handed out in reverse: tables are not the identity */
        for (i = 0; i < (lens[b] + bs - 1) / bs; i++) tables[b * max_blocks + i] = n_blocks - 1 - next++;
    /* the same random cache bytes in both pools */
    {
        size_t n = mla_pool_bytes(type, L, r, m, bs, n_blocks + 1) - sizeof(int) * (size_t)(n_blocks + 1), k;
        float *row = (float *)malloc(sizeof(float) * (r + m));
        for (k = 0; k < n / mla_pool_row_bytes(&host); k++) {
            int c;
            for (c = 0; c < r + m; c++) row[c] = fr() * 2.0f;
            if (type == MLA_F32) memcpy((char *)host.data + k * mla_pool_row_bytes(&host), row, sizeof(float) * (r + m));
            else
                for (c = 0; c < r + m; c++)
                    ((uint16_t *)((char *)host.data + k * mla_pool_row_bytes(&host)))[c] =
                        type == MLA_F16 ? mla_f32_to_f16(row[c]) : mla_f32_to_bf16(row[c]);
        }
        free(row);
        CHECK(mla_cuda_pool_data(dev, &bytes) != NULL && bytes == n);
        CHECK(mla_cuda_to_device(mla_cuda_pool_data(dev, NULL), host.data, n) == 0);
    }
    ql = (float *)malloc(sizeof(float) * B * H * r);
    qp = (float *)malloc(sizeof(float) * B * H * (m + 1));
    o_ref = (float *)malloc(sizeof(float) * B * H * r);
    o_dev = (float *)malloc(sizeof(float) * B * H * r);
    for (i = 0; i < B * H * r; i++) ql[i] = fr();
    for (i = 0; i < B * H * m; i++) qp[i] = fr();
    scratch = (float *)malloc(plain_attend_scratch_bytes(H, r, m));
    for (b = 0; b < B; b++) { /* reference: mla.h over the same pool */
        mla_seq s;
        mla_seq_init(&s, tables + b * max_blocks, max_blocks);
        s.n_blocks = (lens[b] + bs - 1) / bs;
        s.len = lens[b];
        if (lens[b] > 0)
            CHECK(plain_attend_latent(&host, &s, layer, H, lens[b], ql + (size_t)b * H * r, qp + (size_t)b * H * m, scale,
                                      o_ref + (size_t)b * H * r, scratch, plain_attend_scratch_bytes(H, r, m)) == MLA_OK);
        else
            memset(o_ref + (size_t)b * H * r, 0, sizeof(float) * H * r);
    }
    ql_d = (float *)mla_cuda_malloc(sizeof(float) * B * H * r);
    qp_d = (float *)mla_cuda_malloc(sizeof(float) * B * H * (m + 1));
    o_d = (float *)mla_cuda_malloc(sizeof(float) * B * H * r);
    tables_d = (int *)mla_cuda_malloc(sizeof(int) * B * max_blocks);
    seqlens_d = (int *)mla_cuda_malloc(sizeof(int) * B);
    mla_cuda_to_device(ql_d, ql, sizeof(float) * B * H * r);
    mla_cuda_to_device(qp_d, qp, sizeof(float) * B * H * (m + 1));
    mla_cuda_to_device(tables_d, tables, sizeof(int) * B * max_blocks);
    mla_cuda_to_device(seqlens_d, lens, sizeof(int) * B);
    wsb = mla_cuda_decode_workspace_bytes(dev, B, H, max_len);
    ws = mla_cuda_malloc(wsb);
    CHECK(mla_cuda_decode(dev, layer, B, H, ql_d, qp_d, tables_d, max_blocks, seqlens_d, max_len, scale, o_d, ws, wsb,
                          NULL) == MLA_OK);
    CHECK(mla_cuda_sync() == 0);
    if (mla_cuda_error(dev)[0]) fprintf(stderr, "  CUDA: %s\n", mla_cuda_error(dev));
    mla_cuda_to_host(o_dev, o_d, sizeof(float) * B * H * r);
    err = th_relerr(o_dev, o_ref, (size_t)B * H * r);
    mla_cuda_free(ql_d); mla_cuda_free(qp_d); mla_cuda_free(o_d); mla_cuda_free(tables_d); mla_cuda_free(seqlens_d);
    mla_cuda_free(ws);
    mla_cuda_pool_destroy(dev);
    mla_pool_free(&host);
    free(tables); free(ql); free(qp); free(o_ref); free(o_dev); free(scratch);
    return err;
}

static void test_cuda_decode_vs_cpu(void) {
    static const int l1[] = {1, 63, 64, 65, 700};           /* page boundaries of 64 */
    static const int l2[] = {2500};                          /* many splits, one sequence */
    static const int l3[] = {129, 0, 257, 31};               /* an empty sequence too */
    static const int l4[] = {300, 17};
    struct { int B, H, r, m, bs; const int *lens; mla_dtype t; const char *name; } cases[] = {
        {5, 16, 512, 64, 64, l1, MLA_BF16, "H=16 r=512 m=64 bf16, ragged around pages"},
        {1, 128, 512, 64, 64, l2, MLA_BF16, "DeepSeek-V3 shape H=128 r=512 m=64, 2500 tokens"},
        {4, 9, 128, 64, 16, l3, MLA_F16, "SmolLM2-MLA shape H=9 r=128 m=64 f16, empty sequence"},
        {2, 8, 1024, 128, 32, l4, MLA_F32, "largest supported r=1024 m=128 f32"},
        {2, 3, 40, 0, 7, l4, MLA_BF16, "no rope part (m=0), odd block size"},
    };
    int i;
    for (i = 0; i < 5; i++) {
        int splits = 0;
        double e = check_shape(cases[i].B, cases[i].H, cases[i].r, cases[i].m, cases[i].bs, cases[i].lens, cases[i].t, &splits);
        th_note("%s backend, %s: %d splits, rel err %.2e", mla_cuda_is_gpu() ? "GPU" : "CPU-build", cases[i].name, splits, e);
        CHECK_LE(e, 2e-5);
    }
}

static void test_cuda_errors(void) {
    mla_cuda_pool *p = NULL;
    int lens[1] = {10}, bt[1] = {0};
    float q[64], o[64];
    char ws[16];
    CHECK(mla_cuda_pool_create(&p, MLA_BF16, 1, 1025, 64, 64, 4) == MLA_ERR_SHAPE && !p);   /* r too large */
    CHECK(mla_cuda_pool_create(&p, MLA_BF16, 1, 512, 130, 64, 4) == MLA_ERR_SHAPE && !p);   /* m too large */
    CHECK(mla_cuda_pool_create(&p, MLA_BF16, 1, 512, 63, 64, 4) == MLA_ERR_SHAPE && !p);    /* m odd */
    CHECK(mla_cuda_pool_create(&p, (mla_dtype)7, 1, 512, 64, 64, 4) == MLA_ERR_INVALID_ARG);
    CHECK(mla_cuda_pool_create(&p, MLA_BF16, 0, 512, 64, 64, 4) == MLA_ERR_INVALID_ARG);
    CHECK(mla_cuda_pool_create(&p, MLA_BF16, 1, 32, 8, 4, 4) == MLA_OK && p);
    if (!p) return;
    CHECK(mla_cuda_decode(p, 0, 1, 1, q, q, bt, 1, lens, 10, 1.0f, o, ws, sizeof ws, NULL) == MLA_ERR_SHAPE);   /* 10 > 1 block of 4 */
    CHECK(mla_cuda_decode(p, 0, 1, 1, q, q, bt, 4, lens, 10, 1.0f, o, ws, 1, NULL) == MLA_ERR_WORKSPACE);
    CHECK(mla_cuda_decode(p, 3, 1, 1, q, q, bt, 4, lens, 10, 1.0f, o, ws, sizeof ws, NULL) == MLA_ERR_INVALID_ARG); /* layer */
    CHECK(mla_cuda_append(p, 0, 1, NULL, bt, NULL) == MLA_ERR_INVALID_ARG);
    CHECK(mla_cuda_error(p) != NULL);
    mla_cuda_pool_destroy(p);
}

/* append through slots, then decode == CPU over rows appended the same way */
static void test_cuda_append(void) {
    mla_cuda_pool *p = NULL;
    enum { R = 32, M = 8, N = 10 };
    float rows[N * (R + M)], back[N * (R + M)];
    int slots[N], i, *slots_d;
    float *rows_d;
    size_t bytes;
    for (i = 0; i < N * (R + M); i++) rows[i] = fr();
    for (i = 0; i < N; i++) slots[i] = (i * 7) % 16; /* scattered over 4 blocks of 4 */
    CHECK(mla_cuda_pool_create(&p, MLA_F32, 2, R, M, 4, 4) == MLA_OK);
    if (!p) return;
    rows_d = (float *)mla_cuda_malloc(sizeof rows);
    slots_d = (int *)mla_cuda_malloc(sizeof slots);
    mla_cuda_to_device(rows_d, rows, sizeof rows);
    mla_cuda_to_device(slots_d, slots, sizeof slots);
    CHECK(mla_cuda_append(p, 1, N, rows_d, slots_d, NULL) == MLA_OK);
    mla_cuda_sync();
    {
        float *all = (float *)malloc(mla_cuda_pool_data(p, &bytes) ? bytes : 1);
        mla_cuda_to_host(all, mla_cuda_pool_data(p, NULL), bytes);
        for (i = 0; i < N; i++) { /* row (block, layer 1, offset) */
            int blk = slots[i] / 4, off = slots[i] % 4;
            memcpy(back + i * (R + M), all + ((size_t)(blk * 2 + 1) * 4 + off) * (R + M), sizeof(float) * (R + M));
        }
        free(all);
    }
    CHECK(!memcmp(back, rows, sizeof rows));
    mla_cuda_free(rows_d);
    mla_cuda_free(slots_d);
    mla_cuda_pool_destroy(p);
}

void suite_cuda(void) {
    RUN(test_cuda_decode_vs_cpu);
    RUN(test_cuda_errors);
    RUN(test_cuda_append);
}
