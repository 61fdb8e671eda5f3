/* bench_cuda: absorbed MLA decode on the GPU at DeepSeek-V3's shape
   (128 heads, r = 512, m = 64, bf16 cache, 64-token pages): achieved GB/s of
   cache read against a device-to-device copy measured in the same run, and
   TFLOPS, for batch 1/16/64/128 x context 1K/8K/32K. Writes argv[1]. */
#define _POSIX_C_SOURCE 199309L
#include "../mla_cuda.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

int main(int argc, char **argv) {
    const int H = 128, r = 512, m = 64, bs = 64;
    const int batches[] = {1, 16, 64, 128}, ctxs[] = {1024, 8192, 32768};
    int max_tokens = 128 * 32768, n_blocks = max_tokens / bs, bi, ci, i;
    FILE *out = fopen(argc > 1 ? argv[1] : "bench_cuda.txt", "w");
    mla_cuda_pool *p = NULL;
    size_t bytes, chunk = 64u << 20, k;
    unsigned short *fill;
    double copy_gbs, t0;
    void *a, *b;
    if (!mla_cuda_is_gpu()) max_tokens = 2 * 8192, n_blocks = max_tokens / bs; /* CPU build: a smoke run */
    if (mla_cuda_pool_create(&p, MLA_BF16, 1, r, m, bs, n_blocks) != MLA_OK) { fprintf(stderr, "pool: out of memory\n"); return 1; }
    /* fill the cache with small random bf16 values */
    fill = (unsigned short *)malloc(chunk);
    for (k = 0; k < chunk / 2; k++) fill[k] = mla_f32_to_bf16((float)((k * 2654435761u) % 1000) / 1000.0f - 0.5f);
    mla_cuda_pool_data(p, &bytes);
    for (k = 0; k < bytes; k += chunk)
        mla_cuda_to_device((char *)mla_cuda_pool_data(p, NULL) + k, fill, bytes - k < chunk ? bytes - k : chunk);
    /* copy bandwidth: read + write of 1 GiB */
    a = mla_cuda_malloc(1u << 30);
    b = mla_cuda_malloc(1u << 30);
    mla_cuda_copy(b, a, 1u << 30);
    mla_cuda_sync();
    t0 = now();
    for (i = 0; i < 10; i++) mla_cuda_copy(b, a, 1u << 30);
    mla_cuda_sync();
    copy_gbs = 10.0 * 2.0 * (1u << 30) / (now() - t0) / 1e9;
    mla_cuda_free(a);
    mla_cuda_free(b);
    fprintf(out, "device-to-device copy: %.0f GB/s (read + write)\n", copy_gbs);
    fprintf(out, "shape: H=%d r=%d m=%d bf16, block %d\n%6s %7s %10s %9s %8s %8s\n", H, r, m, bs, "batch", "context", "time_us",
            "GB/s", "%copy", "TFLOPS");
    printf("device-to-device copy: %.0f GB/s\n", copy_gbs);
    for (bi = 0; bi < 4; bi++)
        for (ci = 0; ci < 3; ci++) {
            int B = batches[bi], ctx = ctxs[ci], mb = ctx / bs, iters = 20;
            int *tables, *lens, *tables_d, *lens_d;
            float *q, *ql_d, *qp_d, *o_d;
            void *ws;
            size_t wsb;
            double t, gbs, tflops;
            if ((long)B * ctx > max_tokens) continue;
            tables = (int *)malloc(sizeof(int) * B * mb);
            lens = (int *)malloc(sizeof(int) * B);
            for (i = 0; i < B * mb; i++) tables[i] = i;
            for (i = 0; i < B; i++) lens[i] = ctx;
            q = (float *)calloc((size_t)B * H * r, sizeof(float));
            for (i = 0; i < B * H * r; i++) q[i] = (float)(i % 17) / 17.0f - 0.5f;
            ql_d = (float *)mla_cuda_malloc(sizeof(float) * B * H * r);
            qp_d = (float *)mla_cuda_malloc(sizeof(float) * B * H * m);
            o_d = (float *)mla_cuda_malloc(sizeof(float) * B * H * r);
            tables_d = (int *)mla_cuda_malloc(sizeof(int) * B * mb);
            lens_d = (int *)mla_cuda_malloc(sizeof(int) * B);
            mla_cuda_to_device(ql_d, q, sizeof(float) * B * H * r);
            mla_cuda_to_device(qp_d, q, sizeof(float) * B * H * m);
            mla_cuda_to_device(tables_d, tables, sizeof(int) * B * mb);
            mla_cuda_to_device(lens_d, lens, sizeof(int) * B);
            wsb = mla_cuda_decode_workspace_bytes(p, B, H, ctx);
            ws = mla_cuda_malloc(wsb);
            if (!mla_cuda_is_gpu()) iters = 1;
            for (i = 0; i < 2; i++)
                if (mla_cuda_decode(p, 0, B, H, ql_d, qp_d, tables_d, mb, lens_d, ctx, 0.07f, o_d, ws, wsb, NULL) != MLA_OK) {
                    fprintf(stderr, "decode failed: %s\n", mla_cuda_error(p));
                    return 1;
                }
            mla_cuda_sync();
            t0 = now();
            for (i = 0; i < iters; i++) mla_cuda_decode(p, 0, B, H, ql_d, qp_d, tables_d, mb, lens_d, ctx, 0.07f, o_d, ws, wsb, NULL);
            mla_cuda_sync();
            t = (now() - t0) / iters;
            gbs = (double)B * ctx * (r + m) * 2 / t / 1e9;
            tflops = (double)B * H * ctx * (2.0 * (r + m) + 2.0 * r) / t / 1e12;
            fprintf(out, "%6d %7d %10.1f %9.1f %7.1f%% %8.2f\n", B, ctx, t * 1e6, gbs, 100 * gbs / copy_gbs * 2, tflops);
            printf("B=%3d ctx=%5d: %8.1f us, %7.1f GB/s (%.0f%% of copy), %.2f TFLOPS\n", B, ctx, t * 1e6, gbs,
                   100 * gbs / copy_gbs * 2, tflops);
            fflush(stdout);
            mla_cuda_free(ql_d); mla_cuda_free(qp_d); mla_cuda_free(o_d); mla_cuda_free(tables_d); mla_cuda_free(lens_d);
            mla_cuda_free(ws);
            free(tables); free(lens); free(q);
        }
    fprintf(out, "(%%copy compares the cache read rate with the copy's read rate, i.e. half its read+write figure)\n");
    fclose(out);
    mla_cuda_pool_destroy(p);
    free(fill);
    return 0;
}
