/* libFuzzer: mla.h's public API as an engine drives it. A fuzzed config
   (mostly small and valid, sometimes any 32-bit field), fuzzed weights (some
   NaN/Inf), a pool and three sequences under a random series of reserve /
   advance / release / forward / decode / attend / row calls. Every call
   returns OK or an error code; OK results are finite; nothing reads or writes
   outside the memory the sizing functions asked for (ASan checks). */
#define MLA_IMPLEMENTATION
#include "../../mla.h"
#include "fuzz.h"

/* a config field: small, or (1 in 32) any 32-bit value */
static int field(fz *z, int lo, int hi) {
    if ((fz_u8(z) & 31) == 31) return (int)fz_u32(z);
    return fz_int(z, lo, hi);
}

static float *weights(fz *z, size_t n, int *bad) {
    float *w;
    size_t i;
    int sane = 1;
    if (n > (1u << 20)) return NULL;
    w = (float *)malloc(sizeof(float) * (n ? n : 1));
    for (i = 0; i < n; i++) w[i] = fz_float_sane(z, 0.5f, 1.0f, &sane);
    if (!sane) *bad = 1; /* NaN, Inf or huge: results may overflow */
    return w;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fz z = {data, size};
    mla_config c;
    mla_layer_weights w;
    mla_pool pool;
    mla_seq seq[3];
    int table[3][8], s, op, bad_w = 0, H, qd, ok_cfg;
    float *mem[12] = {0}, *x = NULL, *out = NULL, *q = NULL, *o = NULL, lse[8];
    void *ws = NULL, *scr = NULL;
    size_t wsb = 0, scb = 0;
    const char *badf = NULL;
    memset(&c, 0, sizeof c);
    memset(&w, 0, sizeof w);
    c.dim = field(&z, 1, 24);
    c.n_heads = field(&z, 1, 4);
    c.q_lora_rank = (fz_u8(&z) & 1) ? field(&z, 1, 8) : 0;
    c.kv_lora_rank = field(&z, 1, 12);
    c.qk_nope_head_dim = field(&z, 0, 6);
    c.qk_rope_head_dim = field(&z, 0, 6);
    c.v_head_dim = field(&z, 1, 6);
    c.kv_norm = fz_u8(&z) & 1;
    c.q_norm = c.q_lora_rank ? fz_u8(&z) & 1 : 0;
    c.attn_bias = fz_u8(&z) & 1;
    c.max_seq_len = field(&z, 0, 40);
    c.rope_layout = (mla_rope_layout)fz_int(&z, 0, 2);
    c.rope_theta = (fz_u8(&z) & 1) ? 10000.0f : fz_float(&z, 1e6f);
    if (fz_u8(&z) & 1) {
        c.yarn_factor = fz_float(&z, 8.0f);
        c.yarn_original_max_pos = field(&z, 0, 64);
        c.yarn_mscale = fz_float(&z, 2.0f);
        c.yarn_mscale_all_dim = fz_float(&z, 2.0f);
    }
    if (fz_u8(&z) & 1) c.softmax_scale = fz_float(&z, 1.0f);
    ok_cfg = mla_config_validate(&c, &badf) == MLA_OK;
    if (!ok_cfg) FZ_CHECK(badf != NULL);
    /* sizes of a bad config never wrap: 0 means "cannot exist" */
    (void)mla_workspace_bytes(&c, 4, 64, MLA_NAIVE);
    (void)mla_attend_scratch_bytes(c.n_heads, c.kv_lora_rank, c.qk_rope_head_dim);
    if (!ok_cfg || c.dim > 64 || c.n_heads > 8 || c.kv_lora_rank > 64 || c.q_lora_rank > 64 ||
        c.qk_nope_head_dim > 64 || c.qk_rope_head_dim > 64 || c.v_head_dim > 64)
        return 0;
    H = c.n_heads;
    qd = c.qk_nope_head_dim + c.qk_rope_head_dim;
    {
        size_t D = (size_t)c.dim, r = (size_t)c.kv_lora_rank, m = (size_t)c.qk_rope_head_dim, rq = (size_t)c.q_lora_rank;
        if (rq) {
            w.w_qa = mem[0] = weights(&z, rq * D, &bad_w);
            w.w_qb = mem[1] = weights(&z, (size_t)H * qd * rq, &bad_w);
            if (c.attn_bias) w.b_qa = mem[2] = weights(&z, rq, &bad_w);
            if (c.q_norm) w.q_norm = mem[3] = weights(&z, rq, &bad_w);
        } else {
            w.w_q = mem[0] = weights(&z, (size_t)H * qd * D, &bad_w);
            if (c.attn_bias) w.b_q = mem[2] = weights(&z, (size_t)H * qd, &bad_w);
        }
        w.w_kva = mem[4] = weights(&z, (r + m) * D, &bad_w);
        if (c.attn_bias) w.b_kva = mem[5] = weights(&z, r + m, &bad_w);
        if (c.kv_norm) w.kv_norm = mem[6] = weights(&z, r, &bad_w);
        w.w_kvb = mem[7] = weights(&z, (size_t)H * (c.qk_nope_head_dim + c.v_head_dim) * r, &bad_w);
        w.w_o = mem[8] = weights(&z, D * H * c.v_head_dim, &bad_w);
        if (fz_u8(&z) & 1) w.b_o = mem[9] = weights(&z, D, &bad_w);
        if ((fz_u8(&z) & 15) == 15) w.w_kvb = NULL; /* a missing weight */
    }
    if (mla_weights_validate(&c, &w, 1, &badf) != MLA_OK) {
        FZ_CHECK(badf != NULL);
        goto done;
    }
    {
        mla_dtype type = (mla_dtype)fz_int(&z, 0, 4);
        int n_layers = fz_int(&z, 1, 3), bs = fz_int(&z, 0, 6), nb = fz_int(&z, 1, 6);
        int r = (fz_u8(&z) & 15) == 15 ? c.kv_lora_rank + 1 : c.kv_lora_rank; /* sometimes a pool of another shape */
        if (mla_pool_init(&pool, type, n_layers, r, c.qk_rope_head_dim, bs, nb, NULL) != MLA_OK) goto done;
    }
    for (s = 0; s < 3; s++) mla_seq_init(&seq[s], table[s], fz_int(&z, 0, 8));
    wsb = mla_workspace_bytes(&c, 4, pool.n_blocks * pool.block_size + 4, MLA_NAIVE);
    scb = mla_attend_scratch_bytes(H, c.kv_lora_rank, c.qk_rope_head_dim);
    FZ_CHECK(wsb > 0 && scb > 0);
    ws = malloc(wsb);
    scr = malloc(scb);
    x = (float *)malloc(sizeof(float) * 4 * c.dim);
    out = (float *)malloc(sizeof(float) * 4 * c.dim);
    q = (float *)malloc(sizeof(float) * H * (c.kv_lora_rank + c.qk_rope_head_dim));
    o = (float *)malloc(sizeof(float) * 2 * H * c.kv_lora_rank);
    for (op = 0; op < 24 && z.n; op++) {
        mla_seq *sq = &seq[fz_int(&z, 0, 2)];
        int k, n, layer = fz_int(&z, 0, pool.n_layers), before = sq->len;
        mla_result rc;
        switch (fz_u8(&z) % 7) {
        case 0:
            rc = mla_seq_reserve(&pool, sq, fz_int(&z, -2, 10));
            FZ_CHECK(rc == MLA_OK || rc == MLA_ERR_CACHE_FULL || rc == MLA_ERR_INVALID_ARG);
            FZ_CHECK(sq->capacity >= sq->len && sq->n_blocks <= sq->max_blocks);
            break;
        case 1:
            rc = mla_seq_advance(sq, fz_int(&z, -2, 6));
            FZ_CHECK(rc == MLA_OK ? sq->len >= before && sq->len <= sq->capacity : sq->len == before);
            break;
        case 2:
            mla_seq_release(&pool, sq);
            FZ_CHECK(sq->len == 0 && sq->n_blocks == 0 && pool.n_free <= pool.n_blocks);
            break;
        case 3: {
            int T = fz_int(&z, 0, 4);
            for (k = 0; k < 4 * c.dim; k++) x[k] = fz_bounded(&z, 2.0f);
            rc = mla_forward(&c, &w, &pool, sq, layer, x, T, out, (mla_mode)fz_int(&z, 0, 2), ws, wsb);
            if (rc == MLA_OK && !bad_w) FZ_CHECK(fz_finite(out, (size_t)T * c.dim));
            if (rc == MLA_OK && layer == pool.n_layers - 1) mla_seq_advance(sq, T);
            break;
        }
        case 4: {
            mla_seq *batch[3];
            int B = fz_int(&z, 1, 3);
            for (k = 0; k < B; k++) batch[k] = &seq[fz_int(&z, 0, 2)]; /* duplicates are refused */
            for (k = 0; k < B * c.dim; k++) x[k] = fz_bounded(&z, 2.0f);
            rc = mla_decode(&c, &w, &pool, batch, B, layer, x, out, ws, wsb);
            if (rc == MLA_OK && !bad_w) FZ_CHECK(fz_finite(out, (size_t)B * c.dim));
            if (rc == MLA_OK && layer == pool.n_layers - 1)
                for (k = 0; k < B; k++) mla_seq_advance(batch[k], 1);
            break;
        }
        case 5: {
            int t0 = fz_int(&z, -1, sq->len + 1), t1 = fz_int(&z, -1, sq->len + 1);
            float scale = fz_float(&z, 1.0f);
            for (k = 0; k < H * (c.kv_lora_rank + c.qk_rope_head_dim); k++) q[k] = fz_bounded(&z, 2.0f);
            if (fz_u8(&z) & 1) {
                rc = mla_attend_latent(&pool, sq, layer, H, t1, q, q + H * c.kv_lora_rank, scale, o, scr, scb);
                if (rc == MLA_OK && !bad_w && isfinite(scale) && fabsf(scale) < 10)
                    FZ_CHECK(fz_finite(o, (size_t)H * c.kv_lora_rank));
            } else {
                rc = mla_attend_latent_partial(&pool, sq, layer, H, t0, t1, q, q + H * c.kv_lora_rank, scale, o, lse,
                                               scr, scb);
                if (rc == MLA_OK && !bad_w && isfinite(scale) && fabsf(scale) < 10)
                    FZ_CHECK(fz_finite(o, (size_t)H * c.kv_lora_rank));
            }
            break;
        }
        default: {
            int t = fz_int(&z, -1, sq->capacity + 1);
            char *row = (char *)mla_seq_row(&pool, sq, layer, t);
            if (row) {
                n = (int)mla_pool_row_bytes(&pool);
                FZ_CHECK(row >= (char *)pool.data &&
                         row + n <= (char *)pool.data + (size_t)pool.n_blocks * pool.n_layers * pool.block_size * n);
                memset(row, 0, (size_t)n); /* writable, inside the pool */
            }
        }
        }
    }
    mla_pool_free(&pool);
done:
    for (s = 0; s < 12; s++) free(mem[s]);
    free(ws); free(scr); free(x); free(out); free(q); free(o);
    return 0;
}
