/* hello_mla: one DeepSeek-V2-Lite-shaped MLA layer with random weights.
   Prefill a 32-token "prompt", decode 8 tokens, check that the absorbed path
   equals the naive one, and compare cache bytes per token with MHA. */
#define MLA_IMPLEMENTATION
#include "mla.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

static float *random_matrix(int rows, int cols, unsigned *seed) {
    float *m = (float *)malloc(sizeof(float) * (size_t)rows * cols);
    size_t i;
    for (i = 0; i < (size_t)rows * cols; i++) {
        *seed = *seed * 1664525u + 1013904223u; /* LCG, uniform in [-1, 1) */
        m[i] = ((float)(*seed >> 8) / 8388608.0f - 1.0f) * 1.7f / sqrtf((float)cols);
    }
    return m;
}

int main(void) {
    enum { PROMPT = 32, NEW = 8, CTX = PROMPT + NEW };
    mla_config cfg = {0};
    mla_layer_weights w = {0};
    mla_cache cache, check;
    unsigned seed = 1234;
    float *x, *out, *out_naive;
    void *ws;
    size_t ws_bytes;
    int t, i, H, qd;
    double worst = 0;
    mla_result rc;

    cfg.dim = 512; cfg.n_heads = 16; cfg.kv_lora_rank = 128;  /* V2-Lite: 2048/16/512 */
    cfg.qk_nope_head_dim = 32; cfg.qk_rope_head_dim = 16; cfg.v_head_dim = 32;
    cfg.kv_norm = 1;
    H = cfg.n_heads; qd = cfg.qk_nope_head_dim + cfg.qk_rope_head_dim;
    w.w_q = random_matrix(H * qd, cfg.dim, &seed);
    w.w_kva = random_matrix(cfg.kv_lora_rank + cfg.qk_rope_head_dim, cfg.dim, &seed);
    w.kv_norm = random_matrix(1, cfg.kv_lora_rank, &seed);
    w.w_kvb = random_matrix(H * (cfg.qk_nope_head_dim + cfg.v_head_dim), cfg.kv_lora_rank, &seed);
    w.w_o = random_matrix(cfg.dim, H * cfg.v_head_dim, &seed);
    x = random_matrix(CTX, cfg.dim, &seed);
    out = (float *)malloc(sizeof(float) * CTX * cfg.dim);
    out_naive = (float *)malloc(sizeof(float) * CTX * cfg.dim);

    mla_cache_init(&cache, MLA_BF16, 1, cfg.kv_lora_rank, cfg.qk_rope_head_dim, CTX, NULL);
    mla_cache_init(&check, MLA_BF16, 1, cfg.kv_lora_rank, cfg.qk_rope_head_dim, CTX, NULL);
    ws_bytes = mla_workspace_bytes(&cfg, CTX, CTX, MLA_NAIVE); /* sized for the largest call */
    ws = malloc(ws_bytes);

    /* prefill: the whole prompt in one call, then decode one token at a time */
    rc = mla_forward(&cfg, &w, &cache.pool, &cache.seq, 0, x, PROMPT, out, MLA_ABSORBED, ws, ws_bytes);
    if (rc != MLA_OK) { fprintf(stderr, "prefill: %s\n", mla_result_string(rc)); return 1; }
    mla_seq_advance(&cache.seq, PROMPT);
    for (t = PROMPT; t < CTX; t++) {
        mla_seq *batch[1];
        batch[0] = &cache.seq; /* mla_decode batches sequences by pointer; here one */
        rc = mla_decode(&cfg, &w, &cache.pool, batch, 1, 0, x + (size_t)t * cfg.dim,
                        out + (size_t)t * cfg.dim, ws, ws_bytes);
        if (rc != MLA_OK) { fprintf(stderr, "decode: %s\n", mla_result_string(rc)); return 1; }
        mla_seq_advance(&cache.seq, 1);
    }
    /* the same tokens through the naive path (decompressed K and V) */
    rc = mla_forward(&cfg, &w, &check.pool, &check.seq, 0, x, CTX, out_naive, MLA_NAIVE, ws, ws_bytes);
    if (rc != MLA_OK) { fprintf(stderr, "naive: %s\n", mla_result_string(rc)); return 1; }
    for (i = 0; i < CTX * cfg.dim; i++) {
        double d = fabs(out[i] - out_naive[i]);
        if (d > worst) worst = d;
    }
    printf("MLA layer: D=%d, %d heads, latent r=%d, rope m=%d, d_nope=%d, d_v=%d\n", cfg.dim, H,
           cfg.kv_lora_rank, cfg.qk_rope_head_dim, cfg.qk_nope_head_dim, cfg.v_head_dim);
    printf("prefilled %d tokens, decoded %d; absorbed vs naive max |diff| = %.2e\n", PROMPT, NEW, worst);
    printf("out[last][0..3] = %.5f %.5f %.5f %.5f\n", out[(CTX - 1) * cfg.dim], out[(CTX - 1) * cfg.dim + 1],
           out[(CTX - 1) * cfg.dim + 2], out[(CTX - 1) * cfg.dim + 3]);
    printf("cache per token per layer (bf16):\n");
    printf("  MLA latent [c | k_pe]      : %4d values = %5d bytes\n", cfg.kv_lora_rank + cfg.qk_rope_head_dim,
           (int)mla_pool_row_bytes(&cache.pool));
    printf("  MHA with the same heads    : %4d values = %5d bytes (K %d x %d + V %d x %d)\n",
           H * (qd + cfg.v_head_dim), 2 * H * (qd + cfg.v_head_dim), H, qd, H, cfg.v_head_dim);
    printf("  workspace for this call    : %zu bytes\n", ws_bytes);
    mla_cache_free(&cache);
    mla_cache_free(&check);
    free(ws); free(x); free(out); free(out_naive);
    free((void *)w.w_q); free((void *)w.w_kva); free((void *)w.kv_norm);
    free((void *)w.w_kvb); free((void *)w.w_o);
    return 0;
}
