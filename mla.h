/* mla.h - Multi-Head Latent Attention (DeepSeek-V2/V3) in one C99 header,
   with GQA -> MLA conversion.                       MIT license, see LICENSE.

   Do this in exactly one C or C++ file:
       #define MLA_IMPLEMENTATION
       #include "mla.h"
   Everywhere else include "mla.h" without the macro.

   ---------------------------------------------------------------- usage --
   A single MLA layer, prefill of T tokens then one decode step:

       mla_config cfg = {0};                     // zero fields = defaults
       cfg.dim = 1024; cfg.n_heads = 16; cfg.kv_lora_rank = 512;
       cfg.qk_nope_head_dim = 128; cfg.qk_rope_head_dim = 64;
       cfg.v_head_dim = 128; cfg.kv_norm = 1;
       mla_layer_weights w = {0};                // your f32 [out][in] arrays
       w.w_q = wq; w.w_kva = wkva; w.kv_norm = kvn; w.w_kvb = wkvb; w.w_o = wo;
       mla_cache cache;                          // contiguous latent cache
       mla_cache_init(&cache, MLA_BF16, 1, cfg.kv_lora_rank,
                      cfg.qk_rope_head_dim, 4096, NULL);
       size_t wsb = mla_workspace_bytes(&cfg, T, 4096, MLA_ABSORBED);
       void *ws = malloc(wsb);
       mla_forward(&cfg, &w, &cache.pool, &cache.seq, 0, x, T, out,
                   MLA_ABSORBED, ws, wsb);
       mla_seq_advance(&cache.seq, T);           // after all layers
       mla_seq *batch[1] = {&cache.seq};         // decode takes pointers
       mla_decode(&cfg, &w, &cache.pool, batch, 1, 0, x1, out1, ws, wsb);
       mla_seq_advance(&cache.seq, 1);
       mla_cache_free(&cache);
   Every call that can fail returns an mla_result; mla_result_string() names it.

   ------------------------------------------------------------- contents --
     0. results      mla_result codes; helpers mla_matmul, mla_rmsnorm
     1. config       mla_config, defaults, presets, validation, RoPE + YaRN
     2. weights      mla_layer_weights (non-owning f32 pointers)
     3. cache        latent KV cache: paged pool, sequences, contiguous cache
     4. attention    the kernel (tiles of cached rows read once for all
                     heads, online softmax, split over threads), naive and
                     absorbed forward, batched decode, core latent
                     attention, and a plain GQA/MHA reference beside it
     5. conversion   GQA -> MLA: calibration, stage 1 lossless rewrite,
                     2 RoRoPE, 3-4 latent PCA assembled, 5 low-rank query,
                     the whole layer (compiled out with MLA_NO_CONVERT)
   Declarations and implementation follow this order.

   -------------------------------------------------------------- options --
     MLA_STATIC        make every function static (private vendoring)
     MLAPI             define it to set the functions' linkage yourself
     MLA_NO_CONVERT    leave section 5 (conversion) out
     MLA_MALLOC/MLA_FREE/MLA_ASSERT   override before the implementation
     MLA_USE_CBLAS     matrix products through cblas_sgemm (link a BLAS)
     MLA_NO_SIMD       no SIMD: no vector extensions or intrinsics, plain C loops
     MLA_NO_AVX512     AVX-512 builds: the AVX2 kernels (MLA_NO_BF16_DOT, its
                       old name, still works)
     MLA_NO_AMX        AMX builds: leave the tile unit alone (AVX-512 only)
     MLA_MAX_THREADS   most threads one attention call uses (default 8)
     Compile with -fopenmp to run matrix products and attention on several
     threads; with -mavx2 -mfma (or -march=native on such a CPU) the
     attention kernels use AVX2/FMA (and F16C when present); with AVX-512
     F/BW/VL (+ VNNI), e.g. -march=sapphirerapids, znver4 or skylake-avx512,
     f32 and bf16 rows are widened to f32 in registers for 512-bit FMAs,
     int8 rows scored by vpdpwssd, and with AMX bf16 rows of 8+ heads run
     on tiles. The choice is made at compile time: a binary built for
     AVX-512 needs a CPU that has it.

   ------------------------------------------------------ memory and errors --
   The library never prints, exits or aborts. Weights are borrowed. Scratch
   memory comes from the caller (mla_workspace_bytes() sizes it); the decode
   step performs no heap allocation. A call that fails writes nothing to the
   cache. Inputs containing NaN/Inf are rejected with MLA_ERR_NONFINITE. */

#ifndef MLA_H
#define MLA_H

#include <stddef.h>
#include <stdint.h>

#define MLA_VERSION_MAJOR 0
#define MLA_VERSION_MINOR 5
#define MLA_VERSION_PATCH 0
#define MLA_VERSION "0.5.0"

#ifndef MLAPI /* define it first to set the linkage yourself (e.g. __declspec(dllexport)) */
#ifdef MLA_STATIC
#define MLAPI static
#else
#define MLAPI extern
#endif
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ====================================================================== */
/* 0. results and helpers                                                   */
/* ====================================================================== */
typedef enum {
    MLA_OK = 0,
    MLA_ERR_INVALID_ARG,     /* NULL pointer or negative count             */
    MLA_ERR_BAD_CONFIG,      /* a config field is out of range (see field) */
    MLA_ERR_NULL_WEIGHT,     /* a weight the config needs is NULL          */
    MLA_ERR_NONFINITE,       /* NaN or Inf in an input or in weights       */
    MLA_ERR_SHAPE,           /* buffers were built for other shapes        */
    MLA_ERR_CACHE_FULL,      /* no free block / sequence table full        */
    MLA_ERR_POSITION,        /* position would pass cfg.max_seq_len        */
    MLA_ERR_WORKSPACE,       /* workspace smaller than mla_workspace_bytes */
    MLA_ERR_OUT_OF_MEMORY,
    MLA_ERR_NO_CONVERGENCE,  /* eigensolver did not converge               */
    MLA_ERR_COUNT
} mla_result;

MLAPI const char *mla_result_string(mla_result r);

/* Two helpers the library is built on, public because model runners need
   them too (the examples' runner does). */
/* y[T][n] = x[T][k] W[n][k]^T (+ b[n]); with MLA_USE_CBLAS, cblas_sgemm */
MLAPI void mla_matmul(float *y, const float *x, const float *W, const float *b,
                      int T, int n, int k);
/* y[n] = x[n] / sqrt(mean(x^2) + eps) * w[n] (w NULL = 1); y may equal x */
MLAPI void mla_rmsnorm(float *y, const float *x, const float *w, int n, float eps);

/* ====================================================================== */
/* 1. config                                                                */
/* ====================================================================== */
typedef enum {
    MLA_ROPE_INTERLEAVED = 0, /* pairs (x[2i], x[2i+1]): DeepSeek, GGUF "NORM" */
    MLA_ROPE_HALF_SPLIT = 1   /* pairs (x[i], x[i+m/2]): HF rotate_half/NEOX */
} mla_rope_layout;

/* Cache storage. MLA_I8 (quantized when a row is written): a row is
   [c as int8 (r) | k_pe as int8 (m) | 0 pad to 4 bytes | f32 scale of c |
   f32 scale of k_pe], scale = absmax / 127 (0 for an all-zero part), value =
   round(x / scale); 200 bytes at r = 128, m = 64 (bf16: 384). The attention
   kernel reads it with the query rounded to int16 per head and part (a step
   of at most 2^-13 of that part's largest |q|). */
typedef enum { MLA_F32 = 0, MLA_F16 = 1, MLA_BF16 = 2, MLA_I8 = 3 } mla_dtype;

/* Every zero field means its documented default. Names follow DeepSeek-V2. */
typedef struct {
    int dim;              /* D, hidden size                                  */
    int n_heads;          /* h, query heads                                  */
    int q_lora_rank;      /* r_q; 0 = full-rank W_q                          */
    int kv_lora_rank;     /* r, latent size                                  */
    int qk_nope_head_dim; /* d_nope (may be 0)                               */
    int qk_rope_head_dim; /* m, even (may be 0)                              */
    int v_head_dim;       /* d_v                                             */
    float rms_eps;        /* RMSNorm epsilon; 0 -> 1e-6                      */
    int kv_norm;          /* 1: RMSNorm on the latent c (DeepSeek); 0: none  */
    int q_norm;           /* 1: RMSNorm after W_qa (DeepSeek); 0: none       */
    int attn_bias;        /* 1: b_q (or b_qa) and b_kva are used             */
    int max_seq_len;      /* positions allowed; 0 -> 1<<30                   */
    /* RoPE */
    float rope_theta;            /* 0 -> 10000                               */
    mla_rope_layout rope_layout; /* default interleaved                      */
    const float *rope_freqs;     /* optional [m/2] inverse frequencies; overrides theta/YaRN */
    /* YaRN (DeepSeek-V2/V3 "rope_scaling"); off when yarn_factor <= 1 */
    float yarn_factor;
    int yarn_original_max_pos;   /* required when yarn_factor > 1           */
    float yarn_beta_fast;        /* 0 -> 32                                  */
    float yarn_beta_slow;        /* 0 -> 1                                   */
    float yarn_mscale;           /* 0 -> 1                                   */
    float yarn_mscale_all_dim;   /* 0 -> 0 (no softmax-scale correction)     */
    float softmax_scale;         /* 0 -> 1/sqrt(d_nope+m) * yarn mscale^2; <= 1e4 */
} mla_config;

/* MLA_OK, or MLA_ERR_BAD_CONFIG with *bad_field (if non-NULL) naming the field. */
MLAPI mla_result mla_config_validate(const mla_config *cfg, const char **bad_field);
/* The attention config of a published checkpoint, every field as its
   config.json has it (both RMSNorms on, YaRN on, interleaved RoPE as the
   weights are stored): "deepseek-v2-lite", "deepseek-v2", "deepseek-v3" (also
   R1). The HF config.json key of each field is in docs/deepseek.md. MLA_OK,
   or MLA_ERR_INVALID_ARG (cfg zeroed) for another name. */
MLAPI mla_result mla_config_preset(mla_config *cfg, const char *name);
/* The scale applied to q.k (default or override, YaRN included). */
MLAPI float mla_softmax_scale(const mla_config *cfg);
/* RoPE inverse frequencies [m/2] (caller table, or theta with YaRN) and the
   factor YaRN applies to cos/sin (1 without YaRN). */
MLAPI void mla_rope_freqs(const mla_config *cfg, float *inv_freq, float *cos_scale);
/* Rotate x[m] in place for position pos (inv_freq from mla_rope_freqs). */
MLAPI void mla_rope_apply(float *x, int m, int pos, const float *inv_freq,
                          float cos_scale, mla_rope_layout layout);

/* ====================================================================== */
/* 2. weights: f32, row-major [out][in] (PyTorch Linear and GGUF layout)    */
/* ====================================================================== */
typedef struct {
    const float *w_q;     /* [h*(d_nope+m)][D]        when q_lora_rank == 0   */
    const float *b_q;     /* [h*(d_nope+m)]           when attn_bias          */
    const float *w_qa;    /* [r_q][D]                 when q_lora_rank > 0    */
    const float *b_qa;    /* [r_q]                    when attn_bias          */
    const float *q_norm;  /* [r_q]                    when cfg.q_norm         */
    const float *w_qb;    /* [h*(d_nope+m)][r_q]      when q_lora_rank > 0    */
    const float *w_kva;   /* [r+m][D]  kv_a_proj_with_mqa: rows c then k_pe   */
    const float *b_kva;   /* [r+m]                    when attn_bias          */
    const float *kv_norm; /* [r]                      when cfg.kv_norm        */
    const float *w_kvb;   /* [h*(d_nope+d_v)][r]: per head d_nope k rows, d_v v rows */
    const float *w_o;     /* [D][h*d_v]                                       */
    const float *b_o;     /* [D] optional (NULL = none)                       */
    /* Optional: w_kvb rounded to bf16 (mla_f32_to_bf16), same layout. When
       set, the absorbed path (decode, absorbed prefill) reads W_uk and W_uv
       from it: half the bytes, which at a few hundred cached tokens are most
       of a decode step's attention bytes. Each weight moves by at most 2^-9
       of itself. The naive path and the conversion use w_kvb. */
    const uint16_t *w_kvb_bf16;
    /* Optional: w_kvb as int8 codes [h*(d_nope+d_v)][r] with one f32 scale
       per 32 columns of a row, [h*(d_nope+d_v)][(r+31)/32] (mla_quant_q8):
       W_kvb[i][k] = w_kvb_q8_scale[i][k/32] * w_kvb_q8[i][k]. A GGUF Q8_0
       matrix is exactly this (its scales are f16), so the absorbed path then
       reads a Q8_0 file's W_kvb as stored, in half the bytes of bf16. Both
       pointers or neither; used instead of w_kvb_bf16 when both are set. */
    const int8_t *w_kvb_q8;
    const float *w_kvb_q8_scale;
} mla_layer_weights;

/* Checks that every weight the config needs is present (MLA_ERR_NULL_WEIGHT,
   *bad_field names it). With check_finite, also scans all values for NaN/Inf
   (MLA_ERR_NONFINITE): O(parameters), do it once after loading. */
MLAPI mla_result mla_weights_validate(const mla_config *cfg, const mla_layer_weights *w,
                                      int check_finite, const char **bad_field);

/* ====================================================================== */
/* 3. latent KV cache                                                       */
/* ====================================================================== */
/* Per token per layer the cache holds one row [c (r) | k_pe (m)].
   A pool is n_blocks blocks; a block holds block_size tokens of every layer:
   element (block b, layer l, token i) is row ((b*n_layers + l)*block_size + i).
   A sequence owns a block table into one pool; many sequences share a pool. */
typedef struct {
    mla_dtype type;
    int n_layers, kv_lora_rank, qk_rope_head_dim, block_size, n_blocks;
    void *data;     /* n_blocks * n_layers * block_size * (r+m) elements    */
    int *free_list; /* stack of free block ids                              */
    int n_free;
    void *owned;    /* memory to MLA_FREE in mla_pool_free, or NULL          */
} mla_pool;

typedef struct {
    int len;          /* tokens whose rows are complete in every layer       */
    int n_blocks;     /* blocks held                                         */
    int max_blocks;   /* room in block_table                                 */
    int *block_table; /* caller memory [max_blocks]                          */
    int capacity;     /* tokens the held blocks cover (n_blocks * block_size) */
} mla_seq;

/* Bytes mla_pool_init needs (data + free list). block_size 0 -> 64.
   0 for bad arguments (qk_rope_head_dim must be even, as in mla_config) or a
   size past what can exist (never wraps). */
MLAPI size_t mla_pool_bytes(mla_dtype type, int n_layers, int kv_lora_rank,
                            int qk_rope_head_dim, int block_size, int n_blocks);
/* mem: caller memory of mla_pool_bytes() bytes (aligned for float), or NULL
   to allocate with MLA_MALLOC. */
MLAPI mla_result mla_pool_init(mla_pool *pool, mla_dtype type, int n_layers,
                               int kv_lora_rank, int qk_rope_head_dim,
                               int block_size, int n_blocks, void *mem);
MLAPI void mla_pool_free(mla_pool *pool);
MLAPI size_t mla_pool_row_bytes(const mla_pool *pool); /* one token, one layer */

MLAPI void mla_seq_init(mla_seq *seq, int *block_table, int max_blocks);
/* Makes room for n_tokens more tokens (takes free blocks and zeroes them:
   a row never written reads as zeros, never as another sequence's data).
   All or nothing: MLA_ERR_CACHE_FULL leaves pool and seq unchanged.
   mla_forward/mla_decode call it themselves. */
MLAPI mla_result mla_seq_reserve(mla_pool *pool, mla_seq *seq, int n_tokens);
/* seq->len += n once every layer has written its rows. MLA_ERR_INVALID_ARG
   (seq unchanged) if n < 0 or len + n passes the reserved rows. */
MLAPI mla_result mla_seq_advance(mla_seq *seq, int n);
/* Returns all blocks of seq to the pool; seq becomes empty. */
MLAPI void mla_seq_release(mla_pool *pool, mla_seq *seq);
/* Row (token t, layer) of a sequence, NULL if t is outside its blocks. */
MLAPI void *mla_seq_row(const mla_pool *pool, const mla_seq *seq, int layer, int t);

/* Contiguous cache = a pool of one block of `capacity` tokens + one sequence. */
typedef struct {
    mla_pool pool;
    mla_seq seq;
    int table[1];
} mla_cache;
MLAPI mla_result mla_cache_init(mla_cache *cache, mla_dtype type, int n_layers,
                                int kv_lora_rank, int qk_rope_head_dim,
                                int capacity, void *mem);
MLAPI void mla_cache_free(mla_cache *cache);

/* Storage conversions (round to nearest even). */
MLAPI uint16_t mla_f32_to_f16(float f);
MLAPI float mla_f16_to_f32(uint16_t h);
MLAPI uint16_t mla_f32_to_bf16(float f);
MLAPI float mla_bf16_to_f32(uint16_t h);
/* x [rows][cols] (finite) -> int8 q [rows][cols] and scale [rows][(cols+31)/32]:
   per 32 columns of a row (the last block may be shorter) scale = absmax/127,
   q = x/scale to nearest. Values that are a Q8_0 matrix's come back exactly. */
MLAPI void mla_quant_q8(const float *x, int rows, int cols, int8_t *q, float *scale);

/* ====================================================================== */
/* 4. attention                                                             */
/* ====================================================================== */
typedef enum {
    MLA_NAIVE = 0,   /* decompress K and V from the latent, ordinary attention */
    MLA_ABSORBED = 1 /* W_uk into the query, W_uv after attention: reads only the latent */
} mla_mode;

/* Scratch bytes for up to max_tokens tokens per call (T of mla_forward, B of
   mla_decode) over contexts of up to max_ctx tokens (the context length of
   the call: cached + new tokens). MLA_ABSORBED needs nothing per context
   token; a workspace sized for MLA_NAIVE serves MLA_ABSORBED and mla_decode
   with the same max_tokens and max_ctx too. */
MLAPI size_t mla_workspace_bytes(const mla_config *cfg, int max_tokens, int max_ctx,
                                 mla_mode mode);

/* The attention block of one layer for T new tokens of one sequence, at
   positions seq->len .. seq->len+T-1 (causal, attends to the cache):
   x [T][D] -> out [T][D], projections and W_o included. Writes the tokens'
   latent rows for `layer`; call mla_seq_advance(seq, T) after the last layer. */
MLAPI mla_result mla_forward(const mla_config *cfg, const mla_layer_weights *w,
                             mla_pool *pool, mla_seq *seq, int layer,
                             const float *x, int T, float *out, mla_mode mode,
                             void *ws, size_t ws_bytes);

/* One decode step for B sequences (one new token each, absorbed):
   x [B][D] -> out [B][D]; *seqs[b] gets its row at position seqs[b]->len.
   seqs holds pointers, so a batch is any subset of the live sequences, in
   any order, with nothing to copy back (one sequence: &seq, B = 1; the same
   sequence twice is MLA_ERR_INVALID_ARG). Call mla_seq_advance(seqs[b], 1)
   after the last layer. */
MLAPI mla_result mla_decode(const mla_config *cfg, const mla_layer_weights *w,
                            mla_pool *pool, mla_seq *const *seqs, int B, int layer,
                            const float *x, float *out, void *ws, size_t ws_bytes);

/* The same block without its input and output projections, for engines
   that run them in their own (quantized, batched) matmuls:
     q  [T][h*(d_nope+m)]  the query projection's output (W_q x + b_q, or
                           W_qb q_norm(W_qa x + b_qa)), RoPE not applied;
     kv [T][r+m]           W_kva x + b_kva, before the latent norm and RoPE;
     o  [T][h*d_v]         the heads' outputs; the block's out = W_o o + b_o.
   q and kv are used as scratch (normed and rotated in place). Only w->w_kvb
   (and w->kv_norm when cfg.kv_norm) are read. T = n_seq * chunk tokens,
   token i of sequence seqs[i / chunk]; mode as mla_forward's (mla_decode:
   chunk 1, MLA_ABSORBED). Same workspace, checks and results as mla_forward
   (tests: equal to it within the order of f32 sums). */
MLAPI mla_result mla_attend_projected(const mla_config *cfg, const mla_layer_weights *w,
                                      mla_pool *pool, mla_seq *const *seqs, int n_seq,
                                      int chunk, int layer, float *q, float *kv, float *o,
                                      mla_mode mode, void *ws, size_t ws_bytes);

/* Core latent attention (absorbed form), for callers with their own
   projections: over the first n_ctx rows of (seq, layer),
     s[j][t] = scale * (q_lat[j].c[t] + q_pe[j].k_pe[t]),  o_lat[j] = sum_t softmax(s[j])[t] c[t]
   q_lat [h][r], q_pe [h][m] (RoPE already applied), o_lat [h][r].
   The cache is read in tiles of rows, once for all heads, with an online
   softmax; with OpenMP the context is split over up to MLA_MAX_THREADS
   threads and the parts merged by their log-sum-exp (deterministic for a
   given thread count). scratch: mla_attend_scratch_bytes(h, r, m) bytes,
   aligned for float, whatever n_ctx is (mla_workspace_bytes covers it).
   Precision: sums and softmax in f32. f32 and f16 rows use the query as
   given. int8 rows round each query part to int16 (a score moves by at most
   scale * 2^-14 * (max|q_lat| sum|c| + max|q_pe| sum|k_pe|); the same
   integer sums on AMX-INT8 tiles, 8-16 heads, r and m multiples of 64). bf16 rows:
   - AMX (mla_kernel_name() starts "amx"; r % 16 == 0, r + m even, and
     h >= 16, or 8 <= h <= 16 with (r + m) % 32 == 0; with fewer heads the
     padding to 16 costs more than the tiles gain): scores with the query
     split into bf16 hi + lo parts: a score moves by at most
     2^-16 * scale * sum_i |q_i k_i|. P.V: in f32 up to 16 heads with
     (r + m) % 32 == 0 (the cached rows are the tiles' M); otherwise on
     tiles with the probabilities split too: o by 2^-16 max|c| more;
   - else in f32: the rows widened, the query as given.
   MLA_NO_AMX leaves the tiles alone, MLA_NO_AVX512 runs the AVX2 kernels.
   Scores do not depend on how rows fall into tiles, pages or threads. */
MLAPI size_t mla_attend_scratch_bytes(int n_heads, int kv_lora_rank, int qk_rope_head_dim);
MLAPI mla_result mla_attend_latent(const mla_pool *pool, const mla_seq *seq, int layer,
                                   int n_heads, int n_ctx, const float *q_lat,
                                   const float *q_pe, float scale, float *o_lat,
                                   void *scratch, size_t scratch_bytes);
/* The same over rows t0 <= t < t1 only, one thread: o_lat normalised over
   those rows and lse[j] = log sum_t exp(s[j][t]) (-INFINITY, o_lat = 0 for an
   empty range). Parts of one context merge exactly with mla_attend_merge:
   split-KV decode, chunked prefill, several devices. */
MLAPI mla_result mla_attend_latent_partial(const mla_pool *pool, const mla_seq *seq, int layer,
                                           int n_heads, int t0, int t1, const float *q_lat,
                                           const float *q_pe, float scale, float *o_lat, float *lse,
                                           void *scratch, size_t scratch_bytes);
/* o [h][d], lse [h] from n parts o_parts [n][h][d], lse_parts [n][h]. */
MLAPI void mla_attend_merge(int n_heads, int d, int n_parts, const float *o_parts,
                            const float *lse_parts, float *o, float *lse);
/* Which kernels this build runs: "amx-bf16+avx512+vnni", "avx512+vnni",
   "avx512", "avx2+fma+f16c", "avx2+fma" or "portable". */
MLAPI const char *mla_kernel_name(void);

/* ---- plain GQA / MHA attention, the reference beside MLA ---- */
typedef struct {
    int dim, n_heads, n_kv_heads, head_dim; /* g = n_kv_heads divides h       */
    float rope_theta;                       /* 0 -> 10000                     */
    mla_rope_layout rope_layout;
    const float *rope_freqs;                /* optional [head_dim/2]          */
    float softmax_scale;                    /* 0 -> 1/sqrt(head_dim)          */
    int attn_bias;                          /* 1: b_q, b_k, b_v used          */
    int max_seq_len;                        /* 0 -> 1<<30                     */
} mla_gqa_config;

typedef struct {
    const float *w_q, *w_k, *w_v, *w_o; /* [h*d][D], [g*d][D], [g*d][D], [D][h*d] */
    const float *b_q, *b_k, *b_v, *b_o; /* b_o optional                         */
} mla_gqa_weights;

/* f32 cache: k and v [n_layers][capacity][g*d] (k after RoPE). */
typedef struct {
    int n_layers, capacity, kv_dim, len;
    float *k, *v;
} mla_gqa_cache;

MLAPI mla_result mla_gqa_config_validate(const mla_gqa_config *cfg, const char **bad_field);
MLAPI mla_result mla_gqa_cache_init(mla_gqa_cache *c, int n_layers, int capacity, int kv_dim);
MLAPI void mla_gqa_cache_free(mla_gqa_cache *c);
MLAPI size_t mla_gqa_workspace_bytes(const mla_gqa_config *cfg, int max_tokens, int max_ctx);
/* x [T][D] -> out [T][D] at positions kc->len..; kc->len += T after the last layer. */
MLAPI mla_result mla_gqa_forward(const mla_gqa_config *c, const mla_gqa_weights *w,
                                 mla_gqa_cache *kc, int layer, const float *x, int T,
                                 float *out, void *ws, size_t ws_bytes);
/* The same without projections: q [T][h*d], k and v [T][g*d] (projection
   outputs, biases added, RoPE not applied: q and k are rotated in place)
   -> o [T][h*d] (out = W_o o + b_o). Writes the k, v rows; kc->len += T
   after the last layer as for mla_gqa_forward. */
MLAPI mla_result mla_gqa_attend_projected(const mla_gqa_config *c, mla_gqa_cache *kc, int layer,
                                          float *q, float *k, float *v, int T, float *o,
                                          void *ws, size_t ws_bytes);

/* ====================================================================== */
/* 5. conversion: GQA -> MLA (TransMLA, arXiv 2502.07864, and a query-aware  */
/*    variant). Not a hot path: it allocates with MLA_MALLOC.               */
/*    Define MLA_NO_CONVERT to leave it out (an engine that only runs MLA). */
/* ====================================================================== */
#ifndef MLA_NO_CONVERT
/* Symmetric eigendecomposition in double (Householder tridiagonalisation +
   implicit QL). a [n][n] in: symmetric matrix; out: eigenvectors as columns
   (a[i*n+k] = component i of vector k), sorted by eigenvalue descending
   into w [n]. */
MLAPI mla_result mla_eigh(int n, double *a, double *w);

/* Calibration: uncentered second moment of a layer's attention input x (the
   normalised hidden state). Every projection's statistics follow exactly:
   E[y y^T] for y = W x + b is W XX W^T + W sx b^T + b sx^T W^T + n b b^T.
   Memory: D*D doubles per layer being converted. */
typedef struct {
    int dim;
    double n;    /* tokens seen              */
    double *xx;  /* [D][D] sum of x x^T      */
    double *sx;  /* [D]    sum of x          */
    /* optional (mla_calib_attention): how far each query head looks. For head
       j and RoPE pair i, the sums over queries of E_p[cos(dt theta_i)] and
       E_p[sin(dt theta_i)], p = the head's attention over the distances dt:
       [n_heads][head_dim/2][2], NULL until the first mla_calib_attention */
    int att_heads, att_pairs;
    double n_att; /* queries seen            */
    double *att;
} mla_calib;
MLAPI mla_result mla_calib_init(mla_calib *c, int dim);
/* x [T][D]; MLA_ERR_NONFINITE (nothing added) if x holds NaN/Inf. Without
   memory for its blocked f32 kernel it falls back to plain double loops. */
MLAPI mla_result mla_calib_add(mla_calib *c, const float *x, int T);
MLAPI void mla_calib_free(mla_calib *c);
/* The original layer's attention over one window of T tokens at positions
   0..T-1 (x [T][D] its attention input, as for mla_calib_add): adds, per
   query head and RoPE pair, the expected rotation over the distances the head
   attends to. The conversion uses it (mla_convert_options.expected_rope) to
   replace, in the key dims that lose RoPE, the rotation R(dt) by its
   expectation instead of by I. O(T^2 h d) per call. */
MLAPI mla_result mla_calib_attention(mla_calib *c, const mla_gqa_config *g, const mla_gqa_weights *w,
                                     const float *x, int T);

typedef enum {
    MLA_CONVERT_TRANSMLA = 0, /* RoRoPE + balanced joint K/V PCA (the paper's code)      */
    MLA_CONVERT_QAWARE = 1    /* RoRoPE + PCA whitened by the query (keys) and W_o
                                 (values): minimises score / output error instead of K/V */
} mla_convert_method;

typedef struct {
    int kv_lora_rank;     /* r; 0 = no compression (r = 2L - m)                          */
    int qk_rope_head_dim; /* m; 0 = L (lossless stage 1: every key dim keeps RoPE)        */
    int freqfold;         /* f, neighbouring frequencies rotated together; 0 -> 1         */
    mla_convert_method method;
    double damp;          /* covariance damping, fraction of the mean diagonal; 0 -> 0.01 */
    int key_only_rorope;  /* QAWARE: keep TransMLA's key-only RoRoPE (an ablation switch)  */
    double key_weight;    /* QAWARE: weight of key errors vs value errors; 0 -> 1          */
    int expected_rope;    /* 1: the key dims that lose RoPE keep its expected rotation over
                             the distances each head attends to (needs calib statistics from
                             mla_calib_attention); 0: they lose it (TransMLA)                */
    /* optional progress report: stage name and fraction of the layer done */
    void (*progress)(void *user, const char *stage, double fraction);
    void *progress_user;
} mla_convert_options;

/* A converted layer: config and weights it owns (free with mla_converted_free). */
typedef struct {
    mla_config cfg;
    mla_layer_weights w;
    float *rope_freqs; /* [m/2], cfg.rope_freqs points here                  */
    float *mem;        /* one block for all weights                          */
    float *mem_q;      /* low-rank query weights (mla_convert_lowrank_q)     */
    /* [h][m][d]: head j's query is [q_j ; q_map_j q_j] of the source's head-j
       query q_j = W_q[j] x + b_q[j] before RoPE (d_nope is d, or 0: then
       just q_map_j q_j); w.w_q and w.b_q are that product. A file can store
       the source's W_q as it is plus this map: fewer bytes than the product
       (twice the source's rows at d_nope = m = d) and no second rounding of
       quantized weights. In mem; NULL after mla_convert_lowrank_q. */
    float *q_map;
} mla_converted;
MLAPI void mla_converted_free(mla_converted *c);

/* Stage 1, exact: GQA written as MLA with the same cache (2L values/token):
   k_pe = RoPE(W_k x) (m = L, caller-style frequency table repeating the head's
   d/2 frequencies g times), c = W_v x (r = L), d_nope = 0. Biases carried. */
MLAPI mla_result mla_convert_lossless(const mla_gqa_config *g, const mla_gqa_weights *w,
                                      mla_converted *out);

/* Stage 2, RoRoPE: a basis of the key space that commutes with RoPE inside
   each group of f neighbouring frequencies: new key k' = Kd^T k, and
   k = Ku k' (Ku Kd^T = I), both [L][L]. Columns 0..m-1 are the rope dims
   (interleaved pairs; frequencies from mla_rorope_freqs), m..L-1 the dims
   that lose RoPE. ck: [L][L] second moment of the pre-RoPE keys (interleaved
   layout). cq NULL: TransMLA, principal axes of the keys (Kd = Ku orthogonal).
   cq [L][L] (the summed second moment of the queries reading each key dim):
   query-aware, the axes that diagonalise key and query energies together,
   ranked by their product (the energy of each component's score term). */
MLAPI mla_result mla_rorope_basis(const mla_gqa_config *g, const double *ck, const double *cq, int m, int f,
                                  double damp, double *Kd, double *Ku);
/* the inverse frequencies [m/2] of the rope dims chosen by mla_rorope_basis */
MLAPI void mla_rorope_freqs(const mla_gqa_config *g, int m, int f, float *inv_freq);

/* Stages 3-4 assembled: given the key bases Kd, Ku (stage 2) and the latent
   maps down [r][2L-m] (c = down z) and up [2L-m][r] (z ~ up c) of
   z = [Kd_nope^T k ; v], write the MLA layer: query nope part the source's
   W_q as it is, rope part Ku_rope(g)^T W_q (mla_converted.q_map), the scale
   fix sq = sqrt((d_nope+m)/d) (so the default scale is right) in the rope part
   and in W_uk, W_kva = [down [Kd_nope^T W_k ; W_v] ; Kd_rope^T W_k], W_kvb per
   head [sq Ku_nope(g) up_k ; v_up up_v], biases carried. down/up NULL = identity.
   rope_expect [h][d/2][2] (NULL = none): per query head and RoPE pair the
   expected (cos, sin) of the rotation over the distances the head attends
   to; head j's W_uk rows then turn each pair of its key by E[R(dt)], so the key
   dims that lose RoPE score q.E[R].k instead of q.k (exact for a head that
   always looks the same distance back). */
MLAPI mla_result mla_convert_assemble(const mla_gqa_config *g, const mla_gqa_weights *w,
                                      const double *Kd, const double *Ku, int m, int f, int r,
                                      const double *down, const double *up, const double *rope_expect,
                                      mla_converted *out);

/* Stage 5, optional: low-rank query. PCA of the converted query q = W_q x + b
   (second moment from calib; NULL = weight-only) keeps the top q_lora_rank
   directions R: W_qa = R^T W_q, b_qa = R^T b, W_qb = R (no q norm). Exact
   when q_lora_rank = n_heads * (d_nope + m). Saves query parameters and
   compute, not cache. */
MLAPI mla_result mla_convert_lowrank_q(mla_converted *cv, const mla_calib *calib, int q_lora_rank, double damp);

/* The whole conversion of one layer. calib NULL = weight-only statistics
   (x assumed white: E[x x^T] = I), a fallback when no text is at hand. */
MLAPI mla_result mla_convert_layer(const mla_gqa_config *g, const mla_gqa_weights *w,
                                   const mla_calib *calib, const mla_convert_options *opt,
                                   mla_converted *out);

/* Output-aware refit in closed form (optional; after mla_convert_layer,
   before stage 5). The bases above are chosen to reconstruct K and V; what
   the model sees is the attention output. With the latent fixed, run the
   original layer and the converted
   one on the same calibration windows (positions 0..T-1) and refit by least
   squares, with a ridge (damp times the mean diagonal; 0 -> 1e-3) that pulls
   toward the current weights, so what the calibration text does not excite
   stays as the conversion left it:
   - MLA_REFIT_VALUES: each head's W_uv (its d_v value rows of W_kvb) maps
     z_j = sum_t p_jt c_t (the head's attention-weighted latent, with the
     converted layer's own probabilities p) to the original head's output:
     W_uv_j = E[o_j z_j^T] E[z_j z_j^T]^-1 (before the ridge). Score errors are compensated
     where they land, in value space.
   - MLA_REFIT_OUTPUT: W_o maps the converted heads' outputs u to the original
     layer's output y = W_o o (heads can compensate each other):
     W_o = E[y u^T] E[u u^T]^-1.
   Statistics are of the converted layer as it is when mla_refit_add runs:
   to refit both, gather for VALUES, apply, reset, gather for OUTPUT, apply.
   Needs a full-rank query (refit before mla_convert_lowrank_q). Exact where
   it should be: a converted layer that equals the original is a fixed point. */
typedef enum { MLA_REFIT_VALUES = 1, MLA_REFIT_OUTPUT = 2 } mla_refit_target;
typedef struct {
    int n_heads, kv_lora_rank, v_head_dim, dim;
    double n;     /* tokens seen                                */
    int gathered; /* the targets whose sums mla_refit_add fed   */
    double *zz;   /* [h][r][r]      sum z_j z_j^T               */
    double *oz;   /* [h][d_v][r]    sum o_j z_j^T               */
    double *uu;   /* [h*d_v][h*d_v] sum u u^T                   */
    double *yu;   /* [D][h*d_v]     sum y u^T                   */
} mla_refit;
MLAPI mla_result mla_refit_init(mla_refit *rf, const mla_converted *cv);
MLAPI void mla_refit_reset(mla_refit *rf); /* zero the sums */
MLAPI void mla_refit_free(mla_refit *rf);
/* One window x [T][D] (the layer's attention input) through the original
   layer (g, w) and the converted one; adds the sums the targets
   (mla_refit_target bits) need. O(T^2 h (d_nope + m + r)), and O(T (h d_v)^2)
   for MLA_REFIT_OUTPUT; allocates its scratch. */
MLAPI mla_result mla_refit_add(mla_refit *rf, int targets, const mla_gqa_config *g, const mla_gqa_weights *w,
                               const mla_converted *cv, const float *x, int T);
/* Replaces the targets in cv; MLA_ERR_INVALID_ARG for a target whose sums
   were not gathered since the last reset. */
MLAPI mla_result mla_refit_apply(mla_refit *rf, mla_converted *cv, int targets, double damp);

#endif /* MLA_NO_CONVERT */

#ifdef __cplusplus
}
#endif
#endif /* MLA_H */

/* ====================================================================== */
/*                             IMPLEMENTATION                               */
/* ====================================================================== */
#ifdef MLA_IMPLEMENTATION
#ifndef MLA_IMPLEMENTATION_DONE
#define MLA_IMPLEMENTATION_DONE

#include <math.h>
#include <string.h>

#if !defined(MLA_MALLOC) || !defined(MLA_FREE)
#include <stdlib.h>
#endif
#ifndef MLA_MALLOC
#define MLA_MALLOC(sz) malloc(sz)
#endif
#ifndef MLA_FREE
#define MLA_FREE(p) free(p)
#endif
#ifndef MLA_ASSERT
#include <assert.h>
#define MLA_ASSERT(x) assert(x)
#endif
#ifdef MLA_USE_CBLAS
#include <cblas.h>
#endif
#if !defined(MLA_NO_SIMD) && defined(__AVX2__) && defined(__FMA__) && defined(__GNUC__)
#define MLA__AVX2 1
#include <immintrin.h>
/* keeps a loaded vector in a register (GCC would fold the load into every use) */
#define MLA__KEEP(v) __asm__("" : "+x"(v))
/* a += vpmaddwd(w, x), the sum written in place: as intrinsics, GCC 12 gives
   each sum a new register and copies it back (or spills it) every iteration */
#define MLA__MADD(a_, w_, x_)                                                                           \
    {                                                                                                   \
        __m256i t_;                                                                                     \
        __asm__("{vpmaddwd %[w], %[x], %[t]\n\tvpaddd %[t], %[a], %[a]|vpmaddwd %[t], %[x], %[w]\n\tvpaddd %[a], %[a], %[t]}" \
                : [a] "+x"(a_), [t] "=&x"(t_) : [w] "x"(w_), [x] "x"(x_));                          \
    }
#endif
/* AVX-512 F/BW/VL: f32 and bf16 rows widened to f32 in registers for both
   GEMMs (512-bit FMAs). MLA_NO_AVX512 (or its old name MLA_NO_BF16_DOT):
   the AVX2 path. */
#if defined(MLA__AVX2) && defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && \
    !defined(MLA_NO_AVX512) && !defined(MLA_NO_BF16_DOT)
#define MLA__AVX512 1
#if defined(__AVX512VNNI__)
#define MLA__VNNI 1 /* int8 cache scores: vpdpwssd */
#endif
#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__linux__) && defined(__x86_64__) && !defined(MLA_NO_AMX)
#define MLA__AMX 1 /* bf16 (and int8) rows on AMX tiles when Linux grants them (and these hold:) */
#define MLA__AMX_FOR(type, H, dv, dk) \
    ((type) == MLA_BF16 && (dv) % 16 == 0 && (dk) % 2 == 0 && ((H) >= 16 || MLA__AMX_ROWS(H, dk)))
/* 8 to 16 heads with whole 32-value chunks: the cached rows are the tiles'
   M (read as stored); more heads: the heads are, and the rows transposed.
   (Below 8 heads the padding to 16 costs more than the tiles gain.) */
#define MLA__AMX_ROWS(H, dk) ((H) >= 8 && (H) <= 16 && (dk) % 32 == 0)
#if defined(__AMX_INT8__)
#define MLA__AMXI8 1 /* int8 rows of 8 to 16 heads with whole 64-byte parts: int8 tile products (amx 3) */
#define MLA__AMX_I8(type, H, dv, dk) ((type) == MLA_I8 && (H) >= 8 && (H) <= 16 && (dv) % 64 == 0 && ((dk) - (dv)) % 64 == 0)
#else
#define MLA__AMX_I8(type, H, dv, dk) 0
#endif
static int mla__amx_ok(void);
#endif
#endif
#ifdef _OPENMP
#include <omp.h>
#endif
#ifndef MLA_MAX_THREADS
#define MLA_MAX_THREADS 8
#endif

#if defined(MLA_STATIC) && defined(__GNUC__)
#define MLADEF static __attribute__((unused))
#elif defined(MLA_STATIC)
#define MLADEF static
#else
#define MLADEF
#endif

#define MLA__MAX_POS (1 << 30)
#define MLA__MAX_DIM (1 << 24)      /* any one size field, and r + m             */
#define MLA__HUGE ((size_t)1 << 60) /* sizes at or past this are overflow (0)    */

/* a * b, or MLA__HUGE when it reaches MLA__HUGE (sizes never wrap) */
static size_t mla__mul(size_t a, size_t b) {
    if (a && b > (MLA__HUGE - 1) / a) return MLA__HUGE;
    return a * b;
}

/* ====================================================================== */
/* 0. results and helpers                                                   */
/* ====================================================================== */
MLADEF const char *mla_result_string(mla_result r) {
    switch (r) {
    case MLA_OK: return "ok";
    case MLA_ERR_INVALID_ARG: return "invalid argument (NULL pointer or negative count)";
    case MLA_ERR_BAD_CONFIG: return "invalid config field";
    case MLA_ERR_NULL_WEIGHT: return "a weight required by the config is NULL";
    case MLA_ERR_NONFINITE: return "NaN or Inf in input or weights";
    case MLA_ERR_SHAPE: return "buffer shapes do not match the config";
    case MLA_ERR_CACHE_FULL: return "KV cache full (no free block or block table full)";
    case MLA_ERR_POSITION: return "position beyond max_seq_len";
    case MLA_ERR_WORKSPACE: return "workspace too small (see mla_workspace_bytes)";
    case MLA_ERR_OUT_OF_MEMORY: return "out of memory";
    case MLA_ERR_NO_CONVERGENCE: return "eigensolver did not converge";
    default: return "unknown mla_result";
    }
}

static float mla__dot(const float *a, const float *b, int n) {
    float s[16] = {0};
    float t = 0.0f;
    int i = 0, u;
    for (; i + 16 <= n; i += 16)
        for (u = 0; u < 16; u++) s[u] += a[i + u] * b[i + u];
    for (; i < n; i++) t += a[i] * b[i];
    for (u = 0; u < 8; u++) s[u] += s[u + 8];
    for (u = 0; u < 4; u++) s[u] += s[u + 4];
    return t + ((s[0] + s[1]) + (s[2] + s[3]));
}

static void mla__axpy(float *y, float a, const float *x, int n) {
    int i = 0;
#ifdef MLA__AVX2
    __m256 va = _mm256_set1_ps(a);
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
#endif
    for (; i < n; i++) y[i] += a * x[i];
}

static int mla__all_finite(const float *x, size_t n) {
    size_t i;
    for (i = 0; i < n; i++)
        if (!(x[i] - x[i] == 0.0f)) return 0; /* NaN or Inf */
    return 1;
}

#ifndef MLA_USE_CBLAS
/* out[t][i] = x_t . w_i for 4 tokens x 4 weight rows: every load of x and w
   feeds 4 products. With GCC/Clang vector extensions (16 floats, one AVX-512
   register or two AVX ones) unless MLA_NO_SIMD; else plain dot products. */
#if defined(__GNUC__) && !defined(MLA_NO_SIMD)
typedef float mla__v16 __attribute__((vector_size(64)));
/* vectors never cross a function boundary by value (that would tie the ABI to -mavx512f) */
#define MLA__LD16(v, p) memcpy(&(v), (p), sizeof(v))
static float mla__hsum16(const mla__v16 *v) {
    float a[16], s = 0;
    int u;
    memcpy(a, v, sizeof a);
    for (u = 0; u < 16; u++) s += a[u];
    return s;
}
static void mla__dot4x4(const float *x, size_t ldx, const float *w, size_t ldw, int k, float out[4][4]) {
    mla__v16 a00 = {0}, a01 = {0}, a02 = {0}, a03 = {0}, a10 = {0}, a11 = {0}, a12 = {0}, a13 = {0};
    mla__v16 a20 = {0}, a21 = {0}, a22 = {0}, a23 = {0}, a30 = {0}, a31 = {0}, a32 = {0}, a33 = {0};
    int kk, t, i, u;
    for (kk = 0; kk + 16 <= k; kk += 16) {
        mla__v16 w0, w1, w2, w3, x0, x1, x2, x3;
        MLA__LD16(w0, w + kk); MLA__LD16(w1, w + ldw + kk); MLA__LD16(w2, w + 2 * ldw + kk); MLA__LD16(w3, w + 3 * ldw + kk);
        MLA__LD16(x0, x + kk); MLA__LD16(x1, x + ldx + kk); MLA__LD16(x2, x + 2 * ldx + kk); MLA__LD16(x3, x + 3 * ldx + kk);
        a00 += x0 * w0; a01 += x0 * w1; a02 += x0 * w2; a03 += x0 * w3;
        a10 += x1 * w0; a11 += x1 * w1; a12 += x1 * w2; a13 += x1 * w3;
        a20 += x2 * w0; a21 += x2 * w1; a22 += x2 * w2; a23 += x2 * w3;
        a30 += x3 * w0; a31 += x3 * w1; a32 += x3 * w2; a33 += x3 * w3;
    }
    out[0][0] = mla__hsum16(&a00); out[0][1] = mla__hsum16(&a01); out[0][2] = mla__hsum16(&a02); out[0][3] = mla__hsum16(&a03);
    out[1][0] = mla__hsum16(&a10); out[1][1] = mla__hsum16(&a11); out[1][2] = mla__hsum16(&a12); out[1][3] = mla__hsum16(&a13);
    out[2][0] = mla__hsum16(&a20); out[2][1] = mla__hsum16(&a21); out[2][2] = mla__hsum16(&a22); out[2][3] = mla__hsum16(&a23);
    out[3][0] = mla__hsum16(&a30); out[3][1] = mla__hsum16(&a31); out[3][2] = mla__hsum16(&a32); out[3][3] = mla__hsum16(&a33);
    for (t = 0; t < 4; t++)
        for (i = 0; i < 4; i++)
            for (u = kk; u < k; u++) out[t][i] += x[t * ldx + u] * w[i * ldw + u];
}
#else
static void mla__dot4x4(const float *x, size_t ldx, const float *w, size_t ldw, int k, float out[4][4]) {
    int t, i;
    for (t = 0; t < 4; t++)
        for (i = 0; i < 4; i++) out[t][i] = mla__dot(x + t * ldx, w + i * ldw, k);
}
#endif

/* y[t][i] (row stride ldy) = x_t . W_i for T rows of x (stride ldx) and n
   rows of W (stride ldw), k long: the one matrix-product kernel. With
   OpenMP, blocks of W rows go to threads. */
#endif /* !MLA_USE_CBLAS */
static void mla__gemm_nt(float *y, size_t ldy, const float *x, size_t ldx, const float *W, size_t ldw,
                         int T, int n, int k) {
#ifdef MLA_USE_CBLAS
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, n, k, 1.0f, x, (int)ldx, W, (int)ldw, 0.0f, y, (int)ldy);
#else
    int ib;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if ((long)n * k * T > 65536)
#endif
    for (ib = 0; ib < (n + 3) / 4; ib++) { /* 4 weight rows, read once for all T rows of x */
        int i0 = ib * 4, t0, t, i;
        for (t0 = 0; t0 < T; t0 += 4) {
            if (t0 + 4 <= T && i0 + 4 <= n) {
                float o[4][4];
                mla__dot4x4(x + (size_t)t0 * ldx, ldx, W + (size_t)i0 * ldw, ldw, k, o);
                for (t = 0; t < 4; t++)
                    for (i = 0; i < 4; i++) y[(size_t)(t0 + t) * ldy + i0 + i] = o[t][i];
            } else {
                for (t = t0; t < T && t < t0 + 4; t++)
                    for (i = i0; i < n && i < i0 + 4; i++)
                        y[(size_t)t * ldy + i] = mla__dot(x + (size_t)t * ldx, W + (size_t)i * ldw, k);
            }
        }
    }
#endif
}

MLADEF void mla_matmul(float *y, const float *x, const float *W, const float *b,
                       int T, int n, int k) {
    int t, i;
    mla__gemm_nt(y, (size_t)n, x, (size_t)k, W, (size_t)k, T, n, k);
    if (b)
        for (t = 0; t < T; t++)
            for (i = 0; i < n; i++) y[(size_t)t * n + i] += b[i];
}

MLADEF void mla_rmsnorm(float *y, const float *x, const float *w, int n, float eps) {
    double ss = 0.0;
    float inv;
    int i;
    for (i = 0; i < n; i++) ss += (double)x[i] * x[i];
    inv = (float)(1.0 / sqrt(ss / n + eps));
    for (i = 0; i < n; i++) y[i] = x[i] * inv * (w ? w[i] : 1.0f);
}

/* p[n]: scores in, probabilities out (max-subtracted, sum in double) */
static void mla__softmax(float *p, int n) {
    float mx = p[0];
    double sum = 0.0;
    int i;
    for (i = 1; i < n; i++) mx = p[i] > mx ? p[i] : mx;
    for (i = 0; i < n; i++) {
        p[i] = expf(p[i] - mx);
        sum += p[i];
    }
    for (i = 0; i < n; i++) p[i] = (float)(p[i] / sum);
}

/* One query against n keys: out[dv] = sum_t softmax(scale*q.k_t)[t] v_t,
   k_t = k + t*ks (dk values), v_t = v + t*vs. p: scratch [n]. */
static void mla__attend_one(const float *q, const float *k, size_t ks, int dk,
                            const float *v, size_t vs, int dv, int n, float scale,
                            float *p, float *out) {
    int t;
    for (t = 0; t < n; t++) p[t] = scale * mla__dot(q, k + (size_t)t * ks, dk);
    mla__softmax(p, n);
    memset(out, 0, sizeof(float) * (size_t)dv);
    for (t = 0; t < n; t++) mla__axpy(out, p[t], v + (size_t)t * vs, dv);
}

/* ====================================================================== */
/* 1. config                                                                */
/* ====================================================================== */
static float mla__eps(const mla_config *c) { return c->rms_eps > 0 ? c->rms_eps : 1e-6f; }
static int mla__max_pos(int v) { return v > 0 ? v : MLA__MAX_POS; }
static int mla__qk_dim(const mla_config *c) { return c->qk_nope_head_dim + c->qk_rope_head_dim; }

#define MLA__BAD(name)                          \
    do {                                        \
        if (bad_field) *bad_field = name;       \
        return MLA_ERR_BAD_CONFIG;              \
    } while (0)

/* finite (x - x is NaN for NaN and Inf) */
static int mla__finite(double x) { return x - x == 0; }

static double mla__yarn_mscale(double factor, double mscale) {
    return factor <= 1.0 ? 1.0 : 0.1 * mscale * log(factor) + 1.0;
}

MLADEF mla_result mla_config_validate(const mla_config *c, const char **bad_field) {
    if (bad_field) *bad_field = NULL;
    if (!c) return MLA_ERR_INVALID_ARG;
    if (c->dim <= 0) MLA__BAD("dim");
    if (c->n_heads <= 0) MLA__BAD("n_heads");
    if (c->q_lora_rank < 0) MLA__BAD("q_lora_rank");
    if (c->kv_lora_rank <= 0) MLA__BAD("kv_lora_rank");
    if (c->qk_nope_head_dim < 0) MLA__BAD("qk_nope_head_dim");
    if (c->qk_rope_head_dim < 0 || c->qk_rope_head_dim % 2) MLA__BAD("qk_rope_head_dim");
    if ((long)c->qk_nope_head_dim + c->qk_rope_head_dim <= 0) MLA__BAD("qk_nope_head_dim");
    if (c->v_head_dim <= 0) MLA__BAD("v_head_dim");
    /* sizes: each field, and every product the layer indexes with, well inside int */
    if (c->dim > MLA__MAX_DIM) MLA__BAD("dim");
    if (c->q_lora_rank > MLA__MAX_DIM) MLA__BAD("q_lora_rank");
    if ((long)c->kv_lora_rank + c->qk_rope_head_dim > MLA__MAX_DIM) MLA__BAD("kv_lora_rank");
    if ((long)c->qk_nope_head_dim + c->qk_rope_head_dim + c->v_head_dim > MLA__MAX_DIM) MLA__BAD("qk_nope_head_dim");
    if ((double)c->n_heads * ((double)c->qk_nope_head_dim + c->qk_rope_head_dim + c->v_head_dim) > MLA__MAX_DIM)
        MLA__BAD("n_heads");
    /* float fields: finite and in range */
    if (c->rms_eps < 0 || !mla__finite(c->rms_eps)) MLA__BAD("rms_eps");
    if (c->kv_norm != 0 && c->kv_norm != 1) MLA__BAD("kv_norm");
    if (c->q_norm != 0 && c->q_norm != 1) MLA__BAD("q_norm");
    if (c->q_norm && c->q_lora_rank == 0) MLA__BAD("q_norm");
    if (c->attn_bias != 0 && c->attn_bias != 1) MLA__BAD("attn_bias");
    if (c->max_seq_len < 0) MLA__BAD("max_seq_len");
    if (c->rope_theta < 0 || c->rope_theta == 1.0f || !mla__finite(c->rope_theta)) MLA__BAD("rope_theta");
    if (c->rope_layout != MLA_ROPE_INTERLEAVED && c->rope_layout != MLA_ROPE_HALF_SPLIT) MLA__BAD("rope_layout");
    if (!mla__finite(c->yarn_factor) || c->yarn_factor < 0) MLA__BAD("yarn_factor");
    if (c->yarn_factor > 1.0f && !c->rope_freqs) {
        if (c->yarn_original_max_pos <= 0) MLA__BAD("yarn_original_max_pos");
        if (c->yarn_beta_fast < 0 || !mla__finite(c->yarn_beta_fast)) MLA__BAD("yarn_beta_fast");
        if (c->yarn_beta_slow < 0 || !mla__finite(c->yarn_beta_slow)) MLA__BAD("yarn_beta_slow");
    }
    if (!mla__finite(c->yarn_mscale)) MLA__BAD("yarn_mscale");
    if (!mla__finite(c->yarn_mscale_all_dim)) MLA__BAD("yarn_mscale_all_dim");
    if (c->softmax_scale < 0 || c->softmax_scale > 1e4f || !mla__finite(c->softmax_scale))
        MLA__BAD("softmax_scale"); /* real ones are ~1/sqrt(head dim); 3e38 overflowed every score */
    if (c->yarn_factor > 1.0f) { /* YaRN's factors: finite and positive (they scale cos/sin and the softmax) */
        double a = mla__yarn_mscale(c->yarn_factor, c->yarn_mscale);
        double b = mla__yarn_mscale(c->yarn_factor, c->yarn_mscale_all_dim);
        if (!(a > 0 && a < 1e30)) MLA__BAD("yarn_mscale");
        if (!(b > 0 && b < 1e15)) MLA__BAD("yarn_mscale_all_dim");
    }
    return MLA_OK;
}

MLADEF mla_result mla_config_preset(mla_config *c, const char *name) {
    /* hidden_size, num_attention_heads, q_lora_rank, mscale (= mscale_all_dim) */
    static const struct { const char *name; int dim, heads, q_rank; float mscale; } k[] = {
        {"deepseek-v2-lite", 2048, 16, 0, 0.707f},
        {"deepseek-v2", 5120, 128, 1536, 0.707f},
        {"deepseek-v3", 7168, 128, 1536, 1.0f}};
    size_t i;
    if (!c) return MLA_ERR_INVALID_ARG;
    memset(c, 0, sizeof *c);
    for (i = 0; name && i < sizeof k / sizeof k[0]; i++) {
        if (strcmp(name, k[i].name)) continue;
        c->dim = k[i].dim; c->n_heads = k[i].heads; c->q_lora_rank = k[i].q_rank;
        c->kv_lora_rank = 512; c->qk_nope_head_dim = 128; c->qk_rope_head_dim = 64; c->v_head_dim = 128;
        c->rms_eps = 1e-6f; c->kv_norm = 1; c->q_norm = k[i].q_rank > 0;
        c->max_seq_len = 163840; c->rope_theta = 10000.0f; c->rope_layout = MLA_ROPE_INTERLEAVED;
        c->yarn_factor = 40.0f; c->yarn_original_max_pos = 4096; c->yarn_beta_fast = 32.0f; c->yarn_beta_slow = 1.0f;
        c->yarn_mscale = k[i].mscale; c->yarn_mscale_all_dim = k[i].mscale;
        return MLA_OK;
    }
    return MLA_ERR_INVALID_ARG;
}

MLADEF float mla_softmax_scale(const mla_config *c) {
    double s;
    if (c->softmax_scale > 0) return c->softmax_scale;
    s = 1.0 / sqrt((double)mla__qk_dim(c));
    if (c->yarn_factor > 1.0f && c->yarn_mscale_all_dim != 0.0f) {
        double ms = mla__yarn_mscale(c->yarn_factor, c->yarn_mscale_all_dim);
        s *= ms * ms;
    }
    return (float)s;
}

/* dimension index at which a wavelength makes num_rot rotations over max_pos */
static double mla__yarn_dim(double num_rot, int dim, double base, int max_pos) {
    return (dim * log(max_pos / (num_rot * 2.0 * 3.14159265358979323846))) / (2.0 * log(base));
}

MLADEF void mla_rope_freqs(const mla_config *c, float *inv_freq, float *cos_scale) {
    int m = c->qk_rope_head_dim, i;
    double base = c->rope_theta > 0 ? c->rope_theta : 10000.0;
    *cos_scale = 1.0f;
    if (c->rope_freqs) {
        memcpy(inv_freq, c->rope_freqs, sizeof(float) * (size_t)(m / 2));
        return;
    }
    if (!(c->yarn_factor > 1.0f)) {
        for (i = 0; i < m / 2; i++) inv_freq[i] = (float)pow(base, -2.0 * i / m);
        return;
    }
    { /* YaRN: interpolate low frequencies by 1/factor, keep high ones */
        double f = c->yarn_factor;
        double bf = c->yarn_beta_fast > 0 ? c->yarn_beta_fast : 32.0;
        double bs = c->yarn_beta_slow > 0 ? c->yarn_beta_slow : 1.0;
        double ms = c->yarn_mscale > 0 ? c->yarn_mscale : 1.0;
        double lo = floor(mla__yarn_dim(bf, m, base, c->yarn_original_max_pos));
        double hi = ceil(mla__yarn_dim(bs, m, base, c->yarn_original_max_pos));
        if (lo < 0) lo = 0;
        if (hi > m - 1) hi = m - 1;
        if (lo == hi) hi += 0.001;
        for (i = 0; i < m / 2; i++) {
            double extra = pow(base, -2.0 * i / m), inter = extra / f;
            double ramp = (i - lo) / (hi - lo);
            double keep = 1.0 - (ramp < 0 ? 0 : ramp > 1 ? 1 : ramp);
            inv_freq[i] = (float)(inter * (1.0 - keep) + extra * keep);
        }
        *cos_scale = (float)(mla__yarn_mscale(f, ms) / mla__yarn_mscale(f, c->yarn_mscale_all_dim));
    }
}

/* Rotates n vectors x, x + stride, ... of one position: each pair's cos and
   sin computed once for all of them (a decode step's heads). */
static void mla__rope_n(float *x, size_t stride, int n, int m, int pos, const float *inv_freq,
                        float cos_scale, mla_rope_layout layout) {
    int i, k, half = m / 2;
    for (i = 0; i < half; i++) {
        double a = (double)pos * inv_freq[i];
        float cs = (float)cos(a) * cos_scale, sn = (float)sin(a) * cos_scale;
        int i0 = layout == MLA_ROPE_INTERLEAVED ? 2 * i : i;
        int i1 = layout == MLA_ROPE_INTERLEAVED ? 2 * i + 1 : i + half;
        for (k = 0; k < n; k++) {
            float *v = x + (size_t)k * stride, x0 = v[i0], x1 = v[i1];
            v[i0] = x0 * cs - x1 * sn;
            v[i1] = x0 * sn + x1 * cs;
        }
    }
}

MLADEF void mla_rope_apply(float *x, int m, int pos, const float *inv_freq,
                           float cos_scale, mla_rope_layout layout) {
    mla__rope_n(x, 0, 1, m, pos, inv_freq, cos_scale, layout);
}

/* ====================================================================== */
/* 2. weights                                                               */
/* ====================================================================== */
#define MLA__NEED(ptr, name)                    \
    do {                                        \
        if (!(ptr)) {                           \
            if (bad_field) *bad_field = name;   \
            return MLA_ERR_NULL_WEIGHT;         \
        }                                       \
    } while (0)
#define MLA__FINITE(ptr, n, name)                                     \
    do {                                                              \
        if (check_finite && (ptr) && !mla__all_finite(ptr, n)) {      \
            if (bad_field) *bad_field = name;                         \
            return MLA_ERR_NONFINITE;                                 \
        }                                                             \
    } while (0)

MLADEF mla_result mla_weights_validate(const mla_config *c, const mla_layer_weights *w,
                                       int check_finite, const char **bad_field) {
    mla_result rc = mla_config_validate(c, bad_field);
    size_t D, H, qd, r, m, rq, kvb;
    if (rc != MLA_OK) return rc;
    if (!w) return MLA_ERR_INVALID_ARG;
    D = (size_t)c->dim; H = (size_t)c->n_heads; qd = (size_t)mla__qk_dim(c);
    r = (size_t)c->kv_lora_rank; m = (size_t)c->qk_rope_head_dim; rq = (size_t)c->q_lora_rank;
    kvb = H * (size_t)(c->qk_nope_head_dim + c->v_head_dim) * r;
    if (rq == 0) {
        MLA__NEED(w->w_q, "w_q");
        if (c->attn_bias) MLA__NEED(w->b_q, "b_q");
    } else {
        MLA__NEED(w->w_qa, "w_qa");
        MLA__NEED(w->w_qb, "w_qb");
        if (c->attn_bias) MLA__NEED(w->b_qa, "b_qa");
        if (c->q_norm) MLA__NEED(w->q_norm, "q_norm");
    }
    MLA__NEED(w->w_kva, "w_kva");
    if (c->attn_bias) MLA__NEED(w->b_kva, "b_kva");
    if (c->kv_norm) MLA__NEED(w->kv_norm, "kv_norm");
    MLA__NEED(w->w_kvb, "w_kvb");
    MLA__NEED(w->w_o, "w_o");
    /* a weight given for a step the config switches off would be silently
       ignored (a DeepSeek layer with q_norm = 0 is 33% off): refuse, naming the flag */
    if ((w->b_q || w->b_qa || w->b_kva) && !c->attn_bias) MLA__BAD("attn_bias");
    if (w->q_norm && !c->q_norm) MLA__BAD("q_norm");
    if (w->kv_norm && !c->kv_norm) MLA__BAD("kv_norm");
    if (rq == 0 && (w->w_qa || w->w_qb)) MLA__BAD("q_lora_rank");
    if (rq > 0 && w->w_q) MLA__BAD("q_lora_rank");
    if (rq == 0) {
        MLA__FINITE(w->w_q, H * qd * D, "w_q");
        if (c->attn_bias) MLA__FINITE(w->b_q, H * qd, "b_q");
    } else {
        MLA__FINITE(w->w_qa, rq * D, "w_qa");
        MLA__FINITE(w->w_qb, H * qd * rq, "w_qb");
        if (c->attn_bias) MLA__FINITE(w->b_qa, rq, "b_qa");
        if (c->q_norm) MLA__FINITE(w->q_norm, rq, "q_norm");
    }
    MLA__FINITE(w->w_kva, (r + m) * D, "w_kva");
    if (c->attn_bias) MLA__FINITE(w->b_kva, r + m, "b_kva");
    if (c->kv_norm) MLA__FINITE(w->kv_norm, r, "kv_norm");
    MLA__FINITE(w->w_kvb, kvb, "w_kvb");
    if (check_finite && w->w_kvb_bf16) {
        size_t i;
        for (i = 0; i < kvb; i++)
            if ((w->w_kvb_bf16[i] & 0x7f80u) == 0x7f80u) { /* exponent all ones: Inf or NaN */
                if (bad_field) *bad_field = "w_kvb_bf16";
                return MLA_ERR_NONFINITE;
            }
    }
    if (!w->w_kvb_q8 != !w->w_kvb_q8_scale) { /* codes without scales or the other way round */
        if (bad_field) *bad_field = w->w_kvb_q8 ? "w_kvb_q8_scale" : "w_kvb_q8";
        return MLA_ERR_NULL_WEIGHT;
    }
    MLA__FINITE(w->w_kvb_q8_scale, kvb / r * ((r + 31) / 32), "w_kvb_q8_scale");
    MLA__FINITE(w->w_o, D * H * (size_t)c->v_head_dim, "w_o");
    MLA__FINITE(w->b_o, D, "b_o");
    return MLA_OK;
}

/* ====================================================================== */
/* 3. latent KV cache                                                       */
/* ====================================================================== */
MLADEF uint16_t mla_f32_to_f16(float f) {
    uint32_t x, sign, ax;
    memcpy(&x, &f, 4);
    sign = (x >> 16) & 0x8000u;
    ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) return (uint16_t)(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0u));
    if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* rounds past 65504 */
    if (ax < 0x38800000u) { /* half subnormal: let the FPU round (adds 0.5f) */
        float af;
        uint32_t u;
        memcpy(&af, &ax, 4);
        af += 0.5f;
        memcpy(&u, &af, 4);
        return (uint16_t)(sign | (u - 0x3f000000u));
    }
    ax += ((uint32_t)(15 - 127) << 23) + 0xfffu + ((ax >> 13) & 1u);
    return (uint16_t)(sign | (ax >> 13));
}

MLADEF float mla_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, mant = h & 0x3ffu, x;
    float f;
    if (e == 0) {
        f = (float)mant * 5.9604644775390625e-8f; /* 2^-24 */
        return sign ? -f : f;
    }
    x = e == 31 ? (sign | 0x7f800000u | (mant << 13)) : (sign | ((e + 112u) << 23) | (mant << 13));
    memcpy(&f, &x, 4);
    return f;
}

MLADEF uint16_t mla_f32_to_bf16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40u);
    x += 0x7fffu + ((x >> 16) & 1u);
    return (uint16_t)(x >> 16);
}

MLADEF float mla_bf16_to_f32(uint16_t h) {
    uint32_t x = (uint32_t)h << 16;
    float f;
    memcpy(&f, &x, 4);
    return f;
}

/* An int8 row is [c (r) | k_pe (m) | pad to 4 | f32 scale of c | f32 scale of k_pe]. */
static size_t mla__i8_scales_at(int r, int m) { return ((size_t)r + (size_t)m + 3) & ~(size_t)3; }
static size_t mla__row_bytes(mla_dtype t, int r, int m) {
    return t == MLA_I8 ? mla__i8_scales_at(r, m) + 8 : ((size_t)r + (size_t)m) * (t == MLA_F32 ? 4 : 2);
}

/* int8 of x[n] with scale absmax/127 (round to nearest); returns the scale */
static float mla__quant_i8(int8_t *d, const float *x, int n) {
    float amax = 0.0f, sc;
    int i;
    for (i = 0; i < n; i++) amax = fabsf(x[i]) > amax ? fabsf(x[i]) : amax;
    sc = amax / 127.0f;
    for (i = 0; i < n; i++) d[i] = (int8_t)(sc > 0 ? lrintf(x[i] / sc) : 0);
    return sc;
}

MLADEF void mla_quant_q8(const float *x, int rows, int cols, int8_t *q, float *scale) {
    int i, k, nb = (cols + 31) / 32;
    for (i = 0; i < rows; i++)
        for (k = 0; k < cols; k += 32)
            scale[(size_t)i * nb + k / 32] = mla__quant_i8(q + (size_t)i * cols + k, x + (size_t)i * cols + k,
                                                           cols - k < 32 ? cols - k : 32);
}

/* row [c (r) | k_pe (m)] in f32 -> stored row */
static void mla__store_row(void *dst, mla_dtype t, const float *src, int r, int m) {
    int i, n = r + m;
    if (t == MLA_F32) {
        memcpy(dst, src, sizeof(float) * (size_t)n);
    } else if (t == MLA_I8) {
        float sc[2];
        int8_t *d = (int8_t *)dst;
        sc[0] = mla__quant_i8(d, src, r);
        sc[1] = mla__quant_i8(d + r, src + r, m);
        for (i = n; i < (int)mla__i8_scales_at(r, m); i++) d[i] = 0;
        memcpy(d + mla__i8_scales_at(r, m), sc, sizeof sc);
    } else {
        uint16_t *d = (uint16_t *)dst;
        for (i = 0; i < n; i++) d[i] = t == MLA_F16 ? mla_f32_to_f16(src[i]) : mla_f32_to_bf16(src[i]);
    }
}

/* f32 view of a stored row (r + m values): the row itself for f32, else
   converted into buf */
static const float *mla__load_row(const void *src, mla_dtype t, float *buf, int r, int m) {
    const uint16_t *s = (const uint16_t *)src;
    int i, n = r + m;
    if (t == MLA_F32) return (const float *)src;
    if (t == MLA_I8) {
        const int8_t *b = (const int8_t *)src;
        float sc[2];
        memcpy(sc, b + mla__i8_scales_at(r, m), sizeof sc);
        for (i = 0; i < n; i++) buf[i] = (float)b[i] * sc[i >= r];
    } else if (t == MLA_F16) {
        for (i = 0; i < n; i++) buf[i] = mla_f16_to_f32(s[i]);
    } else {
        for (i = 0; i < n; i++) buf[i] = mla_bf16_to_f32(s[i]);
    }
    return buf;
}

static size_t mla__pool_data_bytes(mla_dtype type, int n_layers, int r, int m, int bs, int nb) {
    return mla__mul(mla__mul(mla__mul((size_t)nb, (size_t)n_layers), (size_t)bs), mla__row_bytes(type, r, m));
}

MLADEF size_t mla_pool_bytes(mla_dtype type, int n_layers, int r, int m, int bs, int nb) {
    size_t d;
    if (bs == 0) bs = 64;
    if (n_layers <= 0 || r <= 0 || m < 0 || m % 2 || bs < 0 || nb <= 0 || (long)r + m > MLA__MAX_DIM ||
        (type != MLA_F32 && type != MLA_F16 && type != MLA_BF16 && type != MLA_I8))
        return 0;
    d = mla__pool_data_bytes(type, n_layers, r, m, bs, nb);
    if (d >= MLA__HUGE) return 0;
    d = (d + 15) & ~(size_t)15;
    return d + sizeof(int) * (size_t)nb;
}

MLADEF mla_result mla_pool_init(mla_pool *p, mla_dtype type, int n_layers, int r, int m,
                                int bs, int nb, void *mem) {
    size_t bytes, data;
    int i;
    if (!p) return MLA_ERR_INVALID_ARG;
    memset(p, 0, sizeof *p);
    if (bs == 0) bs = 64;
    bytes = mla_pool_bytes(type, n_layers, r, m, bs, nb);
    if (!bytes) return MLA_ERR_INVALID_ARG; /* a bad argument, or more bytes than can exist */
    data = bytes - sizeof(int) * (size_t)nb;
    if (!mem) {
        mem = MLA_MALLOC(bytes);
        if (!mem) return MLA_ERR_OUT_OF_MEMORY;
        p->owned = mem;
    }
    p->type = type; p->n_layers = n_layers; p->kv_lora_rank = r; p->qk_rope_head_dim = m;
    p->block_size = bs; p->n_blocks = nb;
    p->data = mem;
    p->free_list = (int *)((char *)mem + data);
    for (i = 0; i < nb; i++) p->free_list[i] = nb - 1 - i; /* pop gives block 0 first */
    p->n_free = nb;
    return MLA_OK;
}

MLADEF void mla_pool_free(mla_pool *p) {
    if (!p) return;
    if (p->owned) MLA_FREE(p->owned);
    memset(p, 0, sizeof *p);
}

MLADEF size_t mla_pool_row_bytes(const mla_pool *p) {
    return mla__row_bytes(p->type, p->kv_lora_rank, p->qk_rope_head_dim);
}

MLADEF void mla_seq_init(mla_seq *s, int *table, int max_blocks) {
    s->len = 0; s->n_blocks = 0; s->max_blocks = max_blocks; s->block_table = table; s->capacity = 0;
}

static int mla__blocks_needed(const mla_pool *p, const mla_seq *s, int n_tokens) {
    long want = ((long)s->len + n_tokens + p->block_size - 1) / p->block_size;
    return want > s->n_blocks ? (int)(want - s->n_blocks) : 0;
}

MLADEF mla_result mla_seq_reserve(mla_pool *p, mla_seq *s, int n_tokens) {
    int need, i;
    if (!p || !s || n_tokens < 0) return MLA_ERR_INVALID_ARG;
    need = mla__blocks_needed(p, s, n_tokens);
    if (need > p->n_free || s->n_blocks + need > s->max_blocks) return MLA_ERR_CACHE_FULL;
    for (i = 0; i < need; i++) { /* a block is all layers' rows of block_size tokens, contiguous */
        size_t block = (size_t)p->n_layers * p->block_size * mla_pool_row_bytes(p);
        int b = p->free_list[--p->n_free];
        memset((char *)p->data + (size_t)b * block, 0, block);
        s->block_table[s->n_blocks++] = b;
    }
    s->capacity = (long)s->n_blocks * p->block_size > 0x7fffffff ? 0x7fffffff : s->n_blocks * p->block_size;
    return MLA_OK;
}

MLADEF mla_result mla_seq_advance(mla_seq *s, int n) {
    if (!s || n < 0 || n > s->capacity - s->len) return MLA_ERR_INVALID_ARG;
    s->len += n;
    return MLA_OK;
}

MLADEF void mla_seq_release(mla_pool *p, mla_seq *s) {
    while (s->n_blocks > 0) p->free_list[p->n_free++] = s->block_table[--s->n_blocks];
    s->len = 0;
    s->capacity = 0;
}

MLADEF void *mla_seq_row(const mla_pool *p, const mla_seq *s, int layer, int t) {
    int b, i;
    size_t row;
    if (!p || !s || !s->block_table || t < 0 || layer < 0 || layer >= p->n_layers) return NULL;
    b = t / p->block_size; i = t % p->block_size;
    if (b >= s->n_blocks) return NULL;
    row = ((size_t)s->block_table[b] * p->n_layers + layer) * p->block_size + i;
    return (char *)p->data + row * mla_pool_row_bytes(p);
}

MLADEF mla_result mla_cache_init(mla_cache *c, mla_dtype type, int n_layers, int r, int m,
                                 int capacity, void *mem) {
    mla_result rc;
    if (!c) return MLA_ERR_INVALID_ARG;
    if (capacity <= 0) return MLA_ERR_INVALID_ARG;
    rc = mla_pool_init(&c->pool, type, n_layers, r, m, capacity, 1, mem);
    if (rc != MLA_OK) return rc;
    mla_seq_init(&c->seq, c->table, 1);
    return MLA_OK;
}

MLADEF void mla_cache_free(mla_cache *c) {
    if (c) mla_pool_free(&c->pool);
}

/* ====================================================================== */
/* 4. attention                                                             */
/* ====================================================================== */
/* Regions are carved at 16-float (64-byte) steps. With base == NULL only the
   size is computed. */
static float *mla__carve(float *base, size_t *off, size_t n) {
    float *p = base ? base + *off : NULL;
    *off = n >= MLA__HUGE || *off >= MLA__HUGE - n - 16 ? MLA__HUGE : *off + ((n + 15) & ~(size_t)15);
    return p;
}

/* ---------------------------------------------------------------------- */
/* 4a. the attention kernel, shared by MLA (latent rows) and GQA (k, v     */
/*     rows): a tile of cached rows is read once for all heads, scores are  */
/*     a small GEMM (heads x rows), the softmax is online (running max and  */
/*     sum per head), P.V a second small GEMM; no score row of n_ctx.       */
/* ---------------------------------------------------------------------- */
#define MLA__TILE 64        /* cached rows per tile (at most)                 */
#define MLA__PST (MLA__TILE + 4) /* row stride of the score tile (blocks may overhang) */
#define MLA__SPLIT_ROWS 256 /* fewest rows worth a thread of their own        */
#define MLA__HB 3           /* heads per register block (both GEMMs)          */
#define MLA__GROUP_HEADS 64 /* absorbed prefill: consecutive tokens of a sequence
                               share one pass over the rows they all see, as
                               up to this many heads (9-head SmolLM2: 7 tokens) */
#define MLA__IPAD 32        /* int8 rows: each part padded to whole registers
                               (the same in every build: scratch sizes agree) */
static int mla__imin(int a, int b) { return a < b ? a : b; }

MLADEF const char *mla_kernel_name(void) {
#ifdef MLA__AMX
    if (mla__amx_ok()) return "amx-bf16+avx512+vnni";
#endif
#if defined(MLA__VNNI)
    return "avx512+vnni";
#elif defined(MLA__AVX512)
    return "avx512";
#elif defined(MLA__AVX2) && defined(__F16C__)
    return "avx2+fma+f16c";
#elif defined(MLA__AVX2)
    return "avx2+fma";
#else
    return "portable";
#endif
}

/* where cached rows come from: a sequence's pages, or contiguous arrays */
typedef struct {
    mla_dtype type;
    const mla_pool *pool; const mla_seq *seq; int layer; /* paged latent rows, or (pool NULL) */
    const char *k, *v; size_t ks, vs;                    /* contiguous rows, byte strides     */
} mla__rows;

/* Rows t.. that lie contiguously (at most want): pointers and byte strides. */
static int mla__rows_at(const mla__rows *src, int t, int want, const char **k, const char **v,
                        size_t *ks, size_t *vs) {
    if (src->pool) {
        int left = src->pool->block_size - t % src->pool->block_size;
        *k = *v = (const char *)mla_seq_row(src->pool, src->seq, src->layer, t);
        *ks = *vs = mla_pool_row_bytes(src->pool);
        return mla__imin(want, left);
    }
    *k = src->k + (size_t)t * src->ks; *v = src->v + (size_t)t * src->vs;
    *ks = src->ks; *vs = src->vs;
    return want;
}

/* The running state of one set of queries (H heads) against a row stream.
   A key row has dk values, its value row the first dv values of the v row;
   MLA: k row = [c | k_pe] (dk = r+m), v row = the same row (dv = r). */
typedef struct {
    int H, Hp, dk, dv;  /* heads (Hp: rounded up to MLA__HB), lengths              */
    int H16, Hr, amx;   /* heads rounded up to 16; rows of o and p, max(Hp, H16);  */
                        /* AMX tiles in use: 0 no; bf16 rows: 1 heads as the tiles'*/
                        /* M, 2 rows as M (MLA__AMX_ROWS); 3 int8 rows, rows as M  */
    int rp, mp;         /* int8 rows: c (dv) and k_pe (dk-dv) parts padded to IPAD */
    int dk32;           /* bf16 query row stride (dk padded to 32)                 */
    float *q;           /* [H][dk] queries, softmax scale folded in                */
    float *o, *mx, *l;  /* [max(Hp,H16)][dv] output (unnormalised), [H] max, sum   */
    float *p;           /* [max(Hp,H16)][PST] scores, then probabilities (amx 2, 3:*/
                        /* [TILE][16 heads])                                       */
    float *kb, *vb;     /* [TILE][dk], [TILE][dv] rows converted to f32            */
    int16_t *qi, *ki;   /* int8 rows: [H][rp+mp] query, [TILE][rp+mp] rows         */
    float *qs, *rs;     /* int8 rows: [2][H] query scales, [2][PST] row scales     */
    uint16_t *qh;       /* AMX: the query as bf16 hi + lo: [2][H16][dk32] (amx 1), */
                        /* [dk32/32][2][16 pairs][16 heads][2] B tiles (amx 2);    */
                        /* int8 hi + lo, [dk/64][2][16 quads][16 heads][4] (amx 3) */
    float *qw;          /* AVX-512, f32 and bf16 rows: [H][dk32] the query laid    */
                        /* out for mla__scores_512 (the memory of qh)              */
    uint32_t *kt;       /* AMX: [dk32/32][2][16][16] bf16 pairs of k, transposed   */
                        /* (amx 1); up to 16 rows zero padded to 16 (amx 2, 3)     */
    uint16_t *vv;       /* AMX: [2][dv/16][16][32] value rows, pairs interleaved   */
    uint16_t *pa;       /* AMX: [2][2][16][32] probabilities of 16 heads, hi + lo  */
    float *ct;          /* AMX: [16][32] the query-lo part of 16 heads' scores;    */
                        /* [4][16][16] int32 sums (amx 3)                          */
    const char *pf;     /* AVX-512 f32/bf16 rows: the next tile's key rows (pfn of */
    size_t pfs, pfb;    /* them, pfs bytes apart, pfb bytes each), prefetched by   */
    int pfn;            /* mla__scores_512 8 rows per register block; NULL: none   */
} mla__att;

/* One thread's scratch: the absorbed query/output of one token and a state. */
typedef struct {
    float *qlat, *olat, *lse; /* [H][dv], [H][dv], [H] (q_pe is read in place) */
    mla__att a;
} mla__slot;

static size_t mla__slot_layout(int H, int dk, int dv, float *base, mla__slot *s) {
    size_t off = 0, Hp = (size_t)(H + MLA__HB - 1) / MLA__HB * MLA__HB, T = MLA__TILE;
    size_t H16 = ((size_t)H + 15) & ~(size_t)15, Hr = Hp > H16 ? Hp : H16; /* rows of o and p */
    int rp = (dv + MLA__IPAD - 1) & ~(MLA__IPAD - 1), mp = (dk - dv + MLA__IPAD - 1) & ~(MLA__IPAD - 1);
    mla__slot tmp;
    if (!s) s = &tmp;
    s->qlat = mla__carve(base, &off, (size_t)H * dv);
    s->olat = mla__carve(base, &off, (size_t)H * dv);
    s->lse = mla__carve(base, &off, (size_t)H);
    s->a.H = H; s->a.Hp = (int)Hp; s->a.dk = dk; s->a.dv = dv; s->a.rp = rp; s->a.mp = mp;
    s->a.dk32 = (dk + 31) & ~31; s->a.H16 = (int)H16; s->a.Hr = (int)Hr; s->a.amx = 0; s->a.pf = NULL;
    s->a.q = mla__carve(base, &off, (size_t)H * dk);
    s->a.o = mla__carve(base, &off, Hr * dv);
    s->a.mx = mla__carve(base, &off, (size_t)H);
    s->a.l = mla__carve(base, &off, (size_t)H);
    s->a.p = mla__carve(base, &off, Hr * MLA__PST);
    s->a.kb = mla__carve(base, &off, T * dk);
    s->a.vb = mla__carve(base, &off, T * dv);
    s->a.qi = (int16_t *)mla__carve(base, &off, (size_t)H * (rp + mp) / 2);
    s->a.ki = (int16_t *)mla__carve(base, &off, T * (rp + mp) / 2);
    s->a.qs = mla__carve(base, &off, 2 * (size_t)H);
    s->a.rs = mla__carve(base, &off, 2 * MLA__PST);
    s->a.qh = (uint16_t *)mla__carve(base, &off, H16 * s->a.dk32);
    s->a.qw = (float *)s->a.qh;
    s->a.kt = (uint32_t *)mla__carve(base, &off, (size_t)s->a.dk32 * T / 2);
    s->a.vv = (uint16_t *)mla__carve(base, &off, (((size_t)dv + 15) & ~(size_t)15) * T / 2);
    s->a.pa = (uint16_t *)mla__carve(base, &off, 2 * 16 * T / 2);
    s->a.ct = mla__carve(base, &off, 16 * T);
    return off;
}

MLADEF size_t mla_attend_scratch_bytes(int H, int r, int m) {
    if (H <= 0 || r <= 0 || m < 0 || (double)H * ((double)r + m) > MLA__MAX_DIM) return 0;
    return sizeof(float) * MLA_MAX_THREADS * mla__slot_layout(H, r + m, r, NULL, NULL);
}

/* ---- the two small GEMMs and exp, AVX2/FMA or plain C ---- */
#ifdef MLA__AVX2
/* [s0..s7] = horizontal sums of a0..a7 */
static __m256 mla__hsum8(__m256 a0, __m256 a1, __m256 a2, __m256 a3, __m256 a4, __m256 a5, __m256 a6, __m256 a7) {
    __m256 t0 = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
    __m256 t1 = _mm256_hadd_ps(_mm256_hadd_ps(a4, a5), _mm256_hadd_ps(a6, a7));
    return _mm256_add_ps(_mm256_permute2f128_ps(t0, t1, 0x20), _mm256_permute2f128_ps(t0, t1, 0x31));
}
/* exp(x) for x <= 0: 2^n e^f, |f| <= ln2/2, degree-7 Taylor (rel. error < 2e-7);
   0 below -87 */
static __m256 mla__exp8(__m256 x) {
    const __m256 lo = _mm256_set1_ps(-87.0f);
    __m256 ok = _mm256_cmp_ps(x, lo, _CMP_GE_OQ), n, f, y;
    __m256i e;
    x = _mm256_max_ps(x, lo);
    n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    f = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145751953125f), x);
    f = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.42860677e-6f), f);
    y = _mm256_set1_ps(1.0f / 5040);
    y = _mm256_fmadd_ps(y, f, _mm256_set1_ps(1.0f / 720));
    y = _mm256_fmadd_ps(y, f, _mm256_set1_ps(1.0f / 120));
    y = _mm256_fmadd_ps(y, f, _mm256_set1_ps(1.0f / 24));
    y = _mm256_fmadd_ps(y, f, _mm256_set1_ps(1.0f / 6));
    y = _mm256_fmadd_ps(y, f, _mm256_set1_ps(0.5f));
    y = _mm256_fmadd_ps(y, f, _mm256_set1_ps(1.0f));
    y = _mm256_fmadd_ps(y, f, _mm256_set1_ps(1.0f));
    e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_and_ps(_mm256_mul_ps(y, _mm256_castsi256_ps(e)), ok);
}
#ifdef MLA__AVX512
static __mmask32 mla__mask32(int n) { return n >= 32 ? 0xffffffffu : (__mmask32)((1u << (n > 0 ? n : 0)) - 1u); }
static __m256 mla__half512(__m512 a) { /* the two halves added */
    __m512d d = _mm512_castps_pd(a); /* (maskz: GCC 12's plain forms warn in C++) */
    return _mm256_add_ps(_mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xff, d, 0)),
                         _mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xff, d, 1)));
}
#endif
#endif

/* p[i] = exp(p[i] - mx) for i < n; returns the sum */
static float mla__exp_sum(float *p, int n, float mx) {
    float sum = 0.0f;
    int i = 0;
#ifdef MLA__AVX2
    __m256 acc = _mm256_setzero_ps(), m = _mm256_set1_ps(mx);
    float part[8];
    for (; i + 8 <= n; i += 8) {
        __m256 y = mla__exp8(_mm256_sub_ps(_mm256_loadu_ps(p + i), m));
        _mm256_storeu_ps(p + i, y);
        acc = _mm256_add_ps(acc, y);
    }
    _mm256_storeu_ps(part, acc);
    sum = ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
#endif
    for (; i < n; i++) sum += p[i] = expf(p[i] - mx);
    return sum;
}

/* s[j][t] (row stride MLA__PST) = q_j . k_t, j < H, t < n; k rows ks floats apart.
   Blocks of 3 heads x 4 rows: clamped pointers recompute the last head or row,
   and s gets values (to be ignored) up to a multiple of 3 rows and 4 columns. */
static void mla__scores_f32(const float *q, int H, int dk, const float *k, size_t ks, int n, float *s) {
    int j0, t0, j, t, i;
    for (j0 = 0; j0 < H; j0 += MLA__HB)
        for (t0 = 0; t0 < n; t0 += 4) {
            const float *qr[3], *kr[4];
            float o[16];
            for (j = 0; j < 3; j++) qr[j] = q + (size_t)mla__imin(j0 + j, H - 1) * dk; /* clamped: */
            for (t = 0; t < 4; t++) kr[t] = k + (size_t)mla__imin(t0 + t, n - 1) * ks; /* stored once */
            i = 0;
#ifdef MLA__AVX2
            {
                __m256 a00 = _mm256_setzero_ps(), a01 = a00, a02 = a00, a03 = a00, a10 = a00, a11 = a00;
                __m256 a12 = a00, a13 = a00, a20 = a00, a21 = a00, a22 = a00, a23 = a00, w0, w1, w2, x;
                for (; i + 8 <= dk; i += 8) {
                    w0 = _mm256_loadu_ps(qr[0] + i); w1 = _mm256_loadu_ps(qr[1] + i); w2 = _mm256_loadu_ps(qr[2] + i);
                    MLA__KEEP(w0); MLA__KEEP(w1); MLA__KEEP(w2); /* (else GCC folds their loads into every FMA) */
                    x = _mm256_loadu_ps(kr[0] + i); MLA__KEEP(x);
                    a00 = _mm256_fmadd_ps(w0, x, a00); a10 = _mm256_fmadd_ps(w1, x, a10); a20 = _mm256_fmadd_ps(w2, x, a20);
                    x = _mm256_loadu_ps(kr[1] + i); MLA__KEEP(x);
                    a01 = _mm256_fmadd_ps(w0, x, a01); a11 = _mm256_fmadd_ps(w1, x, a11); a21 = _mm256_fmadd_ps(w2, x, a21);
                    x = _mm256_loadu_ps(kr[2] + i); MLA__KEEP(x);
                    a02 = _mm256_fmadd_ps(w0, x, a02); a12 = _mm256_fmadd_ps(w1, x, a12); a22 = _mm256_fmadd_ps(w2, x, a22);
                    x = _mm256_loadu_ps(kr[3] + i); MLA__KEEP(x);
                    a03 = _mm256_fmadd_ps(w0, x, a03); a13 = _mm256_fmadd_ps(w1, x, a13); a23 = _mm256_fmadd_ps(w2, x, a23);
                }
                x = _mm256_setzero_ps();
                _mm256_storeu_ps(o, mla__hsum8(a00, a01, a02, a03, a10, a11, a12, a13));
                _mm256_storeu_ps(o + 8, mla__hsum8(a20, a21, a22, a23, x, x, x, x));
            }
#else
            memset(o, 0, sizeof o);
#endif
            if (i < dk)
                for (j = 0; j < 3; j++)
                    for (t = 0; t < 4; t++) {
                        int u;
                        for (u = i; u < dk; u++) o[j * 4 + t] += qr[j][u] * kr[t][u];
                    }
            for (j = 0; j < 3; j++) /* s has rows to a multiple of 3 and columns to TILE + 4 */
                memcpy(s + (size_t)(j0 + j) * MLA__PST + t0, o + j * 4, 4 * sizeof(float));
        }
}

/* int8 rows: s[j][t] (+)= qs[j] rs[t] (qi_j . ki_t) over int16 values [k0, k0+len), len % 16 == 0 */
static void mla__scores_i16(const int16_t *qi, size_t ldq, int H, const int16_t *ki, size_t ldk, int n, int k0,
                            int len, const float *qs, const float *rs, int add, float *s) {
    int j0, t0, j, t, i;
#ifdef MLA__VNNI /* 3 heads x 8 rows, vpdpwssd; len % 32 == 0 here */
    for (j0 = 0; j0 < H; j0 += MLA__HB)
        for (t0 = 0; t0 < n; t0 += 8) {
            const int16_t *qr[3], *kr[8];
            __m512i a[3][8];
            for (j = 0; j < 3; j++) qr[j] = qi + (size_t)mla__imin(j0 + j, H - 1) * ldq + k0;
            for (t = 0; t < 8; t++) kr[t] = ki + (size_t)mla__imin(t0 + t, n - 1) * ldk + k0;
            a[0][0] = _mm512_setzero_si512();
            a[0][1] = a[0][2] = a[0][3] = a[0][4] = a[0][5] = a[0][6] = a[0][7] = a[0][0];
            a[1][0] = a[1][1] = a[1][2] = a[1][3] = a[1][4] = a[1][5] = a[1][6] = a[1][7] = a[0][0];
            a[2][0] = a[2][1] = a[2][2] = a[2][3] = a[2][4] = a[2][5] = a[2][6] = a[2][7] = a[0][0];
            for (i = 0; i < len; i += 32) {
                __m512i w0 = _mm512_loadu_si512(qr[0] + i), w1 = _mm512_loadu_si512(qr[1] + i);
                __m512i w2 = _mm512_loadu_si512(qr[2] + i), x;
#define MLA__SC(t)                                                                                            \
    x = _mm512_loadu_si512(kr[t] + i);                                                                        \
    a[0][t] = _mm512_dpwssd_epi32(a[0][t], w0, x); a[1][t] = _mm512_dpwssd_epi32(a[1][t], w1, x);             \
    a[2][t] = _mm512_dpwssd_epi32(a[2][t], w2, x);
                MLA__SC(0) MLA__SC(1) MLA__SC(2) MLA__SC(3) MLA__SC(4) MLA__SC(5) MLA__SC(6) MLA__SC(7)
#undef MLA__SC
            }
#define MLA__F(j, t) mla__half512(_mm512_maskz_cvtepi32_ps(0xffff, a[j][t]))
#define MLA__ST(j)                                                                                            \
    {                                                                                                         \
        float *d = s + (size_t)(j0 + j) * MLA__PST + t0; /* s and rs have room past n (MLA__PST) */          \
        __m256 f = mla__hsum8(MLA__F(j, 0), MLA__F(j, 1), MLA__F(j, 2), MLA__F(j, 3), MLA__F(j, 4),           \
                              MLA__F(j, 5), MLA__F(j, 6), MLA__F(j, 7));                                      \
        f = _mm256_mul_ps(_mm256_mul_ps(f, _mm256_set1_ps(qs[mla__imin(j0 + j, H - 1)])), _mm256_loadu_ps(rs + t0)); \
        _mm256_storeu_ps(d, add ? _mm256_add_ps(_mm256_loadu_ps(d), f) : f);                                 \
    }
            MLA__ST(0) MLA__ST(1) MLA__ST(2)
#undef MLA__ST
#undef MLA__F
        }
    return;
#endif
    for (j0 = 0; j0 < H; j0 += MLA__HB)
        for (t0 = 0; t0 < n; t0 += 3) {
            const int16_t *qr[3], *kr[3];
            int32_t o[16];
            for (j = 0; j < 3; j++) qr[j] = qi + (size_t)mla__imin(j0 + j, H - 1) * ldq + k0;
            for (t = 0; t < 3; t++) kr[t] = ki + (size_t)mla__imin(t0 + t, n - 1) * ldk + k0;
#ifdef MLA__AVX2
            {
                __m256i a00 = _mm256_setzero_si256(), a01 = a00, a02 = a00, a10 = a00, a11 = a00, a12 = a00;
                __m256i a20 = a00, a21 = a00, a22 = a00, w0, w1, w2, x;
                for (i = 0; i < len; i += 16) {
                    w0 = _mm256_loadu_si256((const __m256i *)(qr[0] + i));
                    w1 = _mm256_loadu_si256((const __m256i *)(qr[1] + i));
                    w2 = _mm256_loadu_si256((const __m256i *)(qr[2] + i));
                    x = _mm256_loadu_si256((const __m256i *)(kr[0] + i));
                    a00 = _mm256_add_epi32(a00, _mm256_madd_epi16(w0, x)); a10 = _mm256_add_epi32(a10, _mm256_madd_epi16(w1, x));
                    a20 = _mm256_add_epi32(a20, _mm256_madd_epi16(w2, x));
                    x = _mm256_loadu_si256((const __m256i *)(kr[1] + i));
                    a01 = _mm256_add_epi32(a01, _mm256_madd_epi16(w0, x)); a11 = _mm256_add_epi32(a11, _mm256_madd_epi16(w1, x));
                    a21 = _mm256_add_epi32(a21, _mm256_madd_epi16(w2, x));
                    x = _mm256_loadu_si256((const __m256i *)(kr[2] + i));
                    a02 = _mm256_add_epi32(a02, _mm256_madd_epi16(w0, x)); a12 = _mm256_add_epi32(a12, _mm256_madd_epi16(w1, x));
                    a22 = _mm256_add_epi32(a22, _mm256_madd_epi16(w2, x));
                }
                {
                    __m256i h0 = _mm256_hadd_epi32(_mm256_hadd_epi32(a00, a01), _mm256_hadd_epi32(a02, a10));
                    __m256i h1 = _mm256_hadd_epi32(_mm256_hadd_epi32(a11, a12), _mm256_hadd_epi32(a20, a21));
                    __m256i h2 = _mm256_hadd_epi32(_mm256_hadd_epi32(a22, a22), _mm256_hadd_epi32(a22, a22));
                    _mm256_storeu_si256((__m256i *)o, _mm256_add_epi32(_mm256_permute2x128_si256(h0, h1, 0x20),
                                                                      _mm256_permute2x128_si256(h0, h1, 0x31)));
                    _mm256_storeu_si256((__m256i *)(o + 8), _mm256_add_epi32(_mm256_permute2x128_si256(h2, h2, 0x20),
                                                                            _mm256_permute2x128_si256(h2, h2, 0x31)));
                }
            }
#else
            for (j = 0; j < 9; j++) {
                int32_t acc = 0;
                for (i = 0; i < len; i++) acc += (int32_t)qr[j / 3][i] * kr[j % 3][i];
                o[j] = acc;
            }
#endif
            for (j = 0; j < 3; j++) { /* s and rs have room past n (MLA__PST) */
                float qsj = qs[mla__imin(j0 + j, H - 1)], *d = s + (size_t)(j0 + j) * MLA__PST + t0;
                for (t = 0; t < 3; t++) d[t] = (add ? d[t] : 0.0f) + qsj * rs[t0 + t] * (float)o[j * 3 + t];
            }
        }
}

/* o[j][0..dv) += sum_t p[j][t] v_t for j < Hp (pad rows of p are 0); v rows vs floats apart,
   p rows MLA__PST apart */
static void mla__pv_f32(float *o, int Hp, int dv, const float *p, const float *v, size_t vs, int n) {
    int d = 0, t, j;
#ifdef MLA__AVX2
    int j0;
    for (j0 = 0; j0 < Hp; j0 += 3) {
        const float *p0 = p + (size_t)j0 * MLA__PST, *p1 = p0 + MLA__PST, *p2 = p1 + MLA__PST;
        float *o0 = o + (size_t)j0 * dv, *o1 = o0 + dv, *o2 = o1 + dv;
        for (d = 0; d + 24 <= dv; d += 24) {
            __m256 a00 = _mm256_loadu_ps(o0 + d), a01 = _mm256_loadu_ps(o0 + d + 8), a02 = _mm256_loadu_ps(o0 + d + 16);
            __m256 a10 = _mm256_loadu_ps(o1 + d), a11 = _mm256_loadu_ps(o1 + d + 8), a12 = _mm256_loadu_ps(o1 + d + 16);
            __m256 a20 = _mm256_loadu_ps(o2 + d), a21 = _mm256_loadu_ps(o2 + d + 8), a22 = _mm256_loadu_ps(o2 + d + 16);
            for (t = 0; t < n; t++) {
                const float *vt = v + (size_t)t * vs + d;
                __m256 x0 = _mm256_loadu_ps(vt), x1 = _mm256_loadu_ps(vt + 8), x2 = _mm256_loadu_ps(vt + 16), b;
                MLA__KEEP(x0); MLA__KEEP(x1); MLA__KEEP(x2);
                b = _mm256_broadcast_ss(p0 + t);
                a00 = _mm256_fmadd_ps(b, x0, a00); a01 = _mm256_fmadd_ps(b, x1, a01); a02 = _mm256_fmadd_ps(b, x2, a02);
                b = _mm256_broadcast_ss(p1 + t);
                a10 = _mm256_fmadd_ps(b, x0, a10); a11 = _mm256_fmadd_ps(b, x1, a11); a12 = _mm256_fmadd_ps(b, x2, a12);
                b = _mm256_broadcast_ss(p2 + t);
                a20 = _mm256_fmadd_ps(b, x0, a20); a21 = _mm256_fmadd_ps(b, x1, a21); a22 = _mm256_fmadd_ps(b, x2, a22);
            }
            _mm256_storeu_ps(o0 + d, a00); _mm256_storeu_ps(o0 + d + 8, a01); _mm256_storeu_ps(o0 + d + 16, a02);
            _mm256_storeu_ps(o1 + d, a10); _mm256_storeu_ps(o1 + d + 8, a11); _mm256_storeu_ps(o1 + d + 16, a12);
            _mm256_storeu_ps(o2 + d, a20); _mm256_storeu_ps(o2 + d + 8, a21); _mm256_storeu_ps(o2 + d + 16, a22);
        }
        for (; d + 8 <= dv; d += 8) {
            __m256 a0 = _mm256_loadu_ps(o0 + d), a1 = _mm256_loadu_ps(o1 + d), a2 = _mm256_loadu_ps(o2 + d);
            for (t = 0; t < n; t++) {
                __m256 x = _mm256_loadu_ps(v + (size_t)t * vs + d);
                a0 = _mm256_fmadd_ps(_mm256_broadcast_ss(p0 + t), x, a0);
                a1 = _mm256_fmadd_ps(_mm256_broadcast_ss(p1 + t), x, a1);
                a2 = _mm256_fmadd_ps(_mm256_broadcast_ss(p2 + t), x, a2);
            }
            _mm256_storeu_ps(o0 + d, a0); _mm256_storeu_ps(o1 + d, a1); _mm256_storeu_ps(o2 + d, a2);
        }
    }
#endif
    for (j = 0; j < Hp && d < dv; j++) /* the rest (all of it in the plain build) */
        for (t = 0; t < n; t++) {
            float pj = p[(size_t)j * MLA__PST + t], *oj = o + (size_t)j * dv;
            const float *vt = v + (size_t)t * vs;
            int u;
            for (u = d; u < dv; u++) oj[u] += pj * vt[u];
        }
}

#ifdef MLA__AVX2
/* The query of the vector GEMMs that read rows as stored (mla__scores_256,
   mla__scores_512): qw [H][dk32] f32, zero padded, laid out as their row
   loaders produce each chunk of c values (AVX2 16, AVX-512 32) of the first
   `whole` values of a row: f32 and f16 rows in order; bf16 rows as the
   chunk's c/2 even then c/2 odd values (a 32-bit lane holds a bf16 pair:
   the low half shifted up is the even value, the high half masked the odd
   one; no shuffle). Past `whole`, in order. */
static void mla__query_w(float *qw, int dk32, const float *q, int H, int dk, mla_dtype type, int c, int whole) {
    int j, i, u, h = c / 2;
    for (j = 0; j < H; j++) {
        float *w = qw + (size_t)j * dk32;
        const float *qj = q + (size_t)j * dk;
        i = 0;
        if (type == MLA_BF16)
            for (; i < whole; i += c)
                for (u = 0; u < h; u++) {
                    w[i + u] = i + 2 * u < dk ? qj[i + 2 * u] : 0.0f;
                    w[i + h + u] = i + 2 * u + 1 < dk ? qj[i + 2 * u + 1] : 0.0f;
                }
        for (; i < dk32; i++) w[i] = i < dk ? qj[i] : 0.0f;
    }
}
#endif

#if defined(MLA__AVX2) && !defined(MLA__AVX512)
/* ---- AVX2: the two GEMMs on rows as stored, widened to f32 in registers ---- */

/* value u of a stored row as f32 (int8: unscaled) */
static float mla__val(const char *row, mla_dtype t, int u) {
    uint16_t h;
    if (t == MLA_F32) { float f; memcpy(&f, row + 4 * (size_t)u, 4); return f; }
    if (t == MLA_I8) return (float)((const int8_t *)row)[u];
    memcpy(&h, row + 2 * (size_t)u, 2);
    return t == MLA_BF16 ? mla_bf16_to_f32(h) : mla_f16_to_f32(h);
}

/* s[j][t] (row stride MLA__PST) = q_j . k_t, j < H, t < n, for f32, bf16 or
   (with F16C) f16 rows ks bytes apart: each 16-value chunk of a row becomes
   two f32 vectors in registers (bf16: its even and its odd values, see
   mla__query_w), multiplied by the query qw with f32 FMAs, so every row type
   is scored as precisely as f32 rows; the rest of a row (dk % 16 values) in
   scalar. Blocks of 3 heads x 4 rows (12 accumulators, 3 query vectors, one
   row vector: the 16 registers), clamped like mla__scores_f32; rows outer, so
   a block's 4 rows stay in L1 while all heads read them. */
static void mla__scores_256(const mla__att *at, mla_dtype type, const char *k, size_t ks, int n, float *s) {
    const float *qw = at->qw;
    const int dk32 = at->dk32, H = at->H, dk = at->dk, d16 = dk & ~15;
    int j0, t0, j, t, i, u;
    for (t0 = 0; t0 < n; t0 += 4)
        for (j0 = 0; j0 < H; j0 += MLA__HB) {
            const float *q0 = qw + (size_t)mla__imin(j0, H - 1) * dk32, *q1 = qw + (size_t)mla__imin(j0 + 1, H - 1) * dk32;
            const float *q2 = qw + (size_t)mla__imin(j0 + 2, H - 1) * dk32;
            const char *k0 = k + (size_t)t0 * ks, *k1 = k + (size_t)mla__imin(t0 + 1, n - 1) * ks;
            const char *k2 = k + (size_t)mla__imin(t0 + 2, n - 1) * ks, *k3 = k + (size_t)mla__imin(t0 + 3, n - 1) * ks;
            const char *kr[4];
            __m256 a00 = _mm256_setzero_ps(), a01 = a00, a02 = a00, a03 = a00, a10 = a00, a11 = a00;
            __m256 a12 = a00, a13 = a00, a20 = a00, a21 = a00, a22 = a00, a23 = a00, w0, w1, w2, x;
            float o[16];
            /* one half (8 values) of chunk i of each of the 4 rows against the query's 8 at qo */
#define MLA__HALF(LOAD, qo)                                                                             \
    w0 = _mm256_loadu_ps(q0 + (qo)); w1 = _mm256_loadu_ps(q1 + (qo)); w2 = _mm256_loadu_ps(q2 + (qo));  \
    MLA__KEEP(w0); MLA__KEEP(w1); MLA__KEEP(w2);                                                        \
    x = LOAD(k0); MLA__KEEP(x);                                                                         \
    a00 = _mm256_fmadd_ps(w0, x, a00); a10 = _mm256_fmadd_ps(w1, x, a10); a20 = _mm256_fmadd_ps(w2, x, a20); \
    x = LOAD(k1); MLA__KEEP(x);                                                                         \
    a01 = _mm256_fmadd_ps(w0, x, a01); a11 = _mm256_fmadd_ps(w1, x, a11); a21 = _mm256_fmadd_ps(w2, x, a21); \
    x = LOAD(k2); MLA__KEEP(x);                                                                         \
    a02 = _mm256_fmadd_ps(w0, x, a02); a12 = _mm256_fmadd_ps(w1, x, a12); a22 = _mm256_fmadd_ps(w2, x, a22); \
    x = LOAD(k3); MLA__KEEP(x);                                                                         \
    a03 = _mm256_fmadd_ps(w0, x, a03); a13 = _mm256_fmadd_ps(w1, x, a13); a23 = _mm256_fmadd_ps(w2, x, a23);
#define MLA__F32(r) _mm256_loadu_ps((const float *)(r) + i)
#define MLA__F16(r) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)(r) + i)))
#define MLA__BF_0(r) _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_loadu_si256((const __m256i *)((const uint16_t *)(r) + i)), 16))
#define MLA__BF_1(r) _mm256_and_ps(_mm256_loadu_ps((const float *)((const uint16_t *)(r) + i)), hi16) /* (the mask \
                  stays a memory operand: no 17th register; 3.5 % faster than two shifts on Zen 3, A/B) */
            /* one half per loop (two in one body need more than 16 registers) */
            if (type == MLA_BF16) {
                const __m256 hi16 = _mm256_castsi256_ps(_mm256_set1_epi32((int)0xffff0000u));
                for (i = 0; i < d16; i += 16) { MLA__HALF(MLA__BF_0, i) }
                for (i = 0; i < d16; i += 16) { MLA__HALF(MLA__BF_1, i + 8) }
            }
#ifdef __F16C__
            else if (type == MLA_F16)
                for (i = 0; i < d16; i += 8) { MLA__HALF(MLA__F16, i) }
#endif
            else
                for (i = 0; i < d16; i += 8) { MLA__HALF(MLA__F32, i) }
#undef MLA__HALF
#undef MLA__F32
#undef MLA__F16
#undef MLA__BF_0
#undef MLA__BF_1
            x = _mm256_setzero_ps();
            _mm256_storeu_ps(o, mla__hsum8(a00, a01, a02, a03, a10, a11, a12, a13));
            _mm256_storeu_ps(o + 8, mla__hsum8(a20, a21, a22, a23, x, x, x, x));
            kr[0] = k0; kr[1] = k1; kr[2] = k2; kr[3] = k3;
            for (u = d16; u < dk; u++) /* the rest of the rows, in order in qw */
                for (j = 0; j < 3; j++)
                    for (t = 0; t < 4; t++)
                        o[j * 4 + t] += qw[(size_t)mla__imin(j0 + j, H - 1) * dk32 + u] * mla__val(kr[t], type, u);
            for (j = 0; j < 3; j++) /* s has rows to a multiple of 3 and columns to TILE + 4 */
                memcpy(s + (size_t)(j0 + j) * MLA__PST + t0, o + j * 4, 4 * sizeof(float));
        }
}

/* int8 rows [c (r) | k_pe (m) | pad | scales] as stored (r, m multiples of
   16): s[j][t] = qs[j] rs[t] (qi_j . c_t) + qs[H+j] rs[PST+t] (qi_j . pe_t)
   against the int16 query qi [H][ldq] (c at 0, k_pe at rp); each 16 values
   widened to int16 in a register (no copy of the row), vpmaddwd. Blocks of
   3 heads x 3 rows, clamped like mla__scores_f32; the 9 sums of a block
   reduced together and scaled as one vector. */
static void mla__scores_i8_256(const int16_t *qi, size_t ldq, int rp, int H, const char *k, size_t ks, int n, int r,
                               int m, const float *qs, const float *rs, float *s) {
    const __m256i rows = _mm256_setr_epi32(0, 1, 2, 0, 1, 2, 0, 1); /* lane: block row of sums 0..7 */
    int j0, t0, i, part;
    for (j0 = 0; j0 < H; j0 += MLA__HB) {
        const int j1 = mla__imin(j0 + 1, H - 1), j2 = mla__imin(j0 + 2, H - 1);
        __m256 qv[2]; /* the query scales of sums 0..7 (head j0 x3, j1 x3, j2 x2), per part */
        for (part = 0; part < 2; part++) {
            const float *q = qs + part * H;
            qv[part] = _mm256_setr_ps(q[j0], q[j0], q[j0], q[j1], q[j1], q[j1], q[j2], q[j2]);
        }
        for (t0 = 0; t0 < n; t0 += 3) {
            const int16_t *w0p = qi + (size_t)j0 * ldq, *w1p = qi + (size_t)j1 * ldq, *w2p = qi + (size_t)j2 * ldq;
            const int8_t *r0 = (const int8_t *)(k + (size_t)t0 * ks), *r1 = (const int8_t *)(k + (size_t)mla__imin(t0 + 1, n - 1) * ks);
            const int8_t *r2 = (const int8_t *)(k + (size_t)mla__imin(t0 + 2, n - 1) * ks);
            __m256 f = _mm256_setzero_ps(); /* scores of heads j0, j0+1, j0+2 (the last: f8 at row 2) x rows t0.. */
            float f8 = 0.0f, o[8];
            for (part = 0; part < 2; part++) {
                const int len = part ? m : r;
                __m256i a00 = _mm256_setzero_si256(), a01 = a00, a02 = a00, a10 = a00, a11 = a00, a12 = a00;
                __m256i a20 = a00, a21 = a00, a22 = a00, w0, w1, w2, x;
                for (i = 0; i < len; i += 16) {
                    w0 = _mm256_loadu_si256((const __m256i *)(w0p + i));
                    w1 = _mm256_loadu_si256((const __m256i *)(w1p + i));
                    w2 = _mm256_loadu_si256((const __m256i *)(w2p + i));
                    MLA__KEEP(w0); MLA__KEEP(w1); MLA__KEEP(w2);
#define MLA__SC(rr, t)                                                                                 \
    x = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)((rr) + i))); MLA__KEEP(x);             \
    MLA__MADD(a0##t, w0, x) MLA__MADD(a1##t, w1, x) MLA__MADD(a2##t, w2, x)
                    MLA__SC(r0, 0) MLA__SC(r1, 1) MLA__SC(r2, 2)
#undef MLA__SC
                }
                { /* sums 0..7 in the lanes of one vector, times row and query scales (rs: 4 floats read, room past n) */
                    const float *rsp = rs + part * MLA__PST + t0;
                    __m256i h0 = _mm256_hadd_epi32(_mm256_hadd_epi32(a00, a01), _mm256_hadd_epi32(a02, a10));
                    __m256i h1 = _mm256_hadd_epi32(_mm256_hadd_epi32(a11, a12), _mm256_hadd_epi32(a20, a21));
                    __m128i g = _mm_add_epi32(_mm256_castsi256_si128(a22), _mm256_extracti128_si256(a22, 1));
                    __m256 v = _mm256_cvtepi32_ps(_mm256_add_epi32(_mm256_permute2x128_si256(h0, h1, 0x20),
                                                                   _mm256_permute2x128_si256(h0, h1, 0x31)));
                    v = _mm256_mul_ps(_mm256_mul_ps(v, _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_loadu_ps(rsp)), rows)), qv[part]);
                    f = _mm256_add_ps(f, v);
                    g = _mm_hadd_epi32(g, g);
                    f8 += (float)_mm_cvtsi128_si32(_mm_hadd_epi32(g, g)) * rsp[2] * qs[part * H + j2];
                }
                if (!m) break;
                w0p += rp; w1p += rp; w2p += rp; r0 += r; r1 += r; r2 += r;
            }
            _mm256_storeu_ps(o, f); /* s has rows to a multiple of 3 and columns to TILE + 4 */
            memcpy(s + (size_t)j0 * MLA__PST + t0, o, 3 * sizeof(float));
            memcpy(s + (size_t)(j0 + 1) * MLA__PST + t0, o + 3, 3 * sizeof(float));
            memcpy(s + (size_t)(j0 + 2) * MLA__PST + t0, o + 6, 2 * sizeof(float));
            s[(size_t)(j0 + 2) * MLA__PST + t0 + 2] = f8;
        }
    }
}

/* o[j][0..dv) += sum_t p[j][t] v_t for j < Hp (pad heads of p are 0; p rows
   MLA__PST apart): v rows of f32, bf16, f16 (F16C) or int8 values as stored,
   vs bytes apart, each 8 widened to f32 in a register; f32 FMAs, so P.V
   rounds as the plain path does. Rows to widen, 9 heads at a time: blocks of
   9 heads x 8 values (each 8 widened once for the 9); f32 rows, and the
   last heads: 3 heads x 32 values (12 accumulators, 3 broadcast
   probabilities, one value vector), then x 8; the rest (dv % 8) in scalar. */
static void mla__pv_256(float *o, int Hp, int dv, const float *p, mla_dtype type, const char *v, size_t vs, int n) {
    int j0, d = 0, t, j, nh;
    for (j0 = 0; j0 < Hp; j0 += nh) {
        const float *p0 = p + (size_t)j0 * MLA__PST, *p1 = p0 + MLA__PST, *p2 = p1 + MLA__PST;
        float *o0 = o + (size_t)j0 * dv, *o1 = o0 + dv, *o2 = o1 + dv;
        __m256 b0, b1, b2, x;
        nh = Hp - j0 >= 9 && type != MLA_F32 ? 9 : 3;
        /* 8 values from u of row vt as f32, by type */
#define MLA__V_F32(u) _mm256_loadu_ps((const float *)vt + (u))
#define MLA__V_BF(u) _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)((const uint16_t *)vt + (u)))), 16))
#define MLA__V_I8(u) _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)((const int8_t *)vt + (u)))))
#define MLA__V_F16(u) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)vt + (u))))
#define MLA__FMA3(LD, a0, a1, a2, u)                                                                     \
    x = LD(u); MLA__KEEP(x);                                                                            \
    a0 = _mm256_fmadd_ps(b0, x, a0); a1 = _mm256_fmadd_ps(b1, x, a1); a2 = _mm256_fmadd_ps(b2, x, a2);
#define MLA__ROWS(BODY)                                                                                 \
    for (t = 0; t < n; t++) {                                                                           \
        const char *vt = v + (size_t)t * vs;                                                            \
        b0 = _mm256_broadcast_ss(p0 + t); b1 = _mm256_broadcast_ss(p1 + t); b2 = _mm256_broadcast_ss(p2 + t); \
        MLA__KEEP(b0); MLA__KEEP(b1); MLA__KEEP(b2);                                                    \
        BODY                                                                                            \
    }
#define MLA__B32(LD) MLA__FMA3(LD, a00, a10, a20, d) MLA__FMA3(LD, a01, a11, a21, d + 8) \
                     MLA__FMA3(LD, a02, a12, a22, d + 16) MLA__FMA3(LD, a03, a13, a23, d + 24)
#define MLA__B8(LD) MLA__FMA3(LD, a0, a1, a2, d)
#ifdef __F16C__
#define MLA__BY_TYPE(B)                                                                                 \
    if (type == MLA_BF16) { MLA__ROWS(B(MLA__V_BF)) } else if (type == MLA_I8) { MLA__ROWS(B(MLA__V_I8)) } \
    else if (type == MLA_F16) { MLA__ROWS(B(MLA__V_F16)) } else { MLA__ROWS(B(MLA__V_F32)) }
#else /* (f16 rows come here only with F16C) */
#define MLA__BY_TYPE(B)                                                                                 \
    if (type == MLA_BF16) { MLA__ROWS(B(MLA__V_BF)) } else if (type == MLA_I8) { MLA__ROWS(B(MLA__V_I8)) } \
    else { MLA__ROWS(B(MLA__V_F32)) }
#endif
        if (nh == 9) { /* widened rows: 9 heads x 8 values, each 8 widened once for all 9 */
            for (d = 0; d + 8 <= dv; d += 8) {
                __m256 c0 = _mm256_loadu_ps(o0 + d), c1 = _mm256_loadu_ps(o1 + d), c2 = _mm256_loadu_ps(o2 + d);
                __m256 c3 = _mm256_loadu_ps(o2 + dv + d), c4 = _mm256_loadu_ps(o2 + 2 * dv + d), c5 = _mm256_loadu_ps(o2 + 3 * dv + d);
                __m256 c6 = _mm256_loadu_ps(o2 + 4 * dv + d), c7 = _mm256_loadu_ps(o2 + 5 * dv + d), c8 = _mm256_loadu_ps(o2 + 6 * dv + d);
#define MLA__P(c, j) c = _mm256_fmadd_ps(_mm256_broadcast_ss(p0 + (j) * MLA__PST + t), x, c);
#define MLA__B9(LD) x = LD(d); MLA__KEEP(x); MLA__P(c0, 0) MLA__P(c1, 1) MLA__P(c2, 2) MLA__P(c3, 3) MLA__P(c4, 4) \
                    MLA__P(c5, 5) MLA__P(c6, 6) MLA__P(c7, 7) MLA__P(c8, 8)
#define MLA__ROWS9(B) for (t = 0; t < n; t++) { const char *vt = v + (size_t)t * vs; B }
                if (type == MLA_BF16) { MLA__ROWS9(MLA__B9(MLA__V_BF)) }
                else if (type == MLA_I8) { MLA__ROWS9(MLA__B9(MLA__V_I8)) }
#ifdef __F16C__
                else { MLA__ROWS9(MLA__B9(MLA__V_F16)) }
#endif
#undef MLA__P
#undef MLA__B9
#undef MLA__ROWS9
                _mm256_storeu_ps(o0 + d, c0); _mm256_storeu_ps(o1 + d, c1); _mm256_storeu_ps(o2 + d, c2);
                _mm256_storeu_ps(o2 + dv + d, c3); _mm256_storeu_ps(o2 + 2 * dv + d, c4); _mm256_storeu_ps(o2 + 3 * dv + d, c5);
                _mm256_storeu_ps(o2 + 4 * dv + d, c6); _mm256_storeu_ps(o2 + 5 * dv + d, c7); _mm256_storeu_ps(o2 + 6 * dv + d, c8);
            }
            continue;
        }
        for (d = 0; d + 32 <= dv; d += 32) {
            __m256 a00 = _mm256_loadu_ps(o0 + d), a01 = _mm256_loadu_ps(o0 + d + 8), a02 = _mm256_loadu_ps(o0 + d + 16);
            __m256 a03 = _mm256_loadu_ps(o0 + d + 24), a10 = _mm256_loadu_ps(o1 + d), a11 = _mm256_loadu_ps(o1 + d + 8);
            __m256 a12 = _mm256_loadu_ps(o1 + d + 16), a13 = _mm256_loadu_ps(o1 + d + 24), a20 = _mm256_loadu_ps(o2 + d);
            __m256 a21 = _mm256_loadu_ps(o2 + d + 8), a22 = _mm256_loadu_ps(o2 + d + 16), a23 = _mm256_loadu_ps(o2 + d + 24);
            MLA__BY_TYPE(MLA__B32)
            _mm256_storeu_ps(o0 + d, a00); _mm256_storeu_ps(o0 + d + 8, a01); _mm256_storeu_ps(o0 + d + 16, a02);
            _mm256_storeu_ps(o0 + d + 24, a03); _mm256_storeu_ps(o1 + d, a10); _mm256_storeu_ps(o1 + d + 8, a11);
            _mm256_storeu_ps(o1 + d + 16, a12); _mm256_storeu_ps(o1 + d + 24, a13); _mm256_storeu_ps(o2 + d, a20);
            _mm256_storeu_ps(o2 + d + 8, a21); _mm256_storeu_ps(o2 + d + 16, a22); _mm256_storeu_ps(o2 + d + 24, a23);
        }
        for (; d + 8 <= dv; d += 8) {
            __m256 a0 = _mm256_loadu_ps(o0 + d), a1 = _mm256_loadu_ps(o1 + d), a2 = _mm256_loadu_ps(o2 + d);
            MLA__BY_TYPE(MLA__B8)
            _mm256_storeu_ps(o0 + d, a0); _mm256_storeu_ps(o1 + d, a1); _mm256_storeu_ps(o2 + d, a2);
        }
#undef MLA__V_F32
#undef MLA__V_BF
#undef MLA__V_I8
#undef MLA__V_F16
#undef MLA__FMA3
#undef MLA__ROWS
#undef MLA__B32
#undef MLA__B8
#undef MLA__BY_TYPE
    }
    for (j = 0; j < Hp && d < dv; j++) /* the rest */
        for (t = 0; t < n; t++) {
            float pj = p[(size_t)j * MLA__PST + t], *oj = o + (size_t)j * dv;
            int u;
            for (u = d; u < dv; u++) oj[u] += pj * mla__val(v + (size_t)t * vs, type, u);
        }
}
#endif

#ifdef MLA__AVX512
/* ---- AVX-512: the two GEMMs on rows as stored, widened to f32 in registers ---- */

/* s[j][t] (row stride MLA__PST) = q_j . k_t, j < H, t < n, for f32 or bf16
   rows ks bytes apart: each 32-value chunk of a row becomes two f32 vectors
   in registers, multiplied by the query qw (mla__query_w) with f32 FMAs:
   the products are exact (a bf16 times an f32 fits an f32 FMA), so bf16 rows
   are scored as precisely as f32 rows. (vdpbf16ps would round the query to
   bf16 and, on the Xeon this was measured on, issues every other cycle: half
   the rate of two 512-bit FMAs.) Blocks of 3 heads x 8 rows, clamped like
   mla__scores_f32; each sum is 16 lanes, reduced once per block. */
static void mla__scores_512(const mla__att *at, mla_dtype type, const char *k, size_t ks, int n, float *s) {
    const float *qw = at->qw;
    const int dk32 = at->dk32, H = at->H, dk = at->dk;
    int j0, t0, j, t, i;
    const __m512i hi = _mm512_set1_epi32((int)0xffff0000u);
    for (j0 = 0; j0 < H; j0 += MLA__HB)
        for (t0 = 0; t0 < n; t0 += 8) {
            const float *qr[3];
            const char *kr[8];
            __m512 a[3][8], x0, x1;
            for (j = 0; j < 3; j++) qr[j] = qw + (size_t)mla__imin(j0 + j, H - 1) * dk32;
            for (t = 0; t < 8; t++) kr[t] = k + (size_t)mla__imin(t0 + t, n - 1) * ks;
            if (j0 == 0 && at->pf) { /* the next tile's rows, spread over the blocks (not one burst) */
                size_t b;
                for (t = t0; t < t0 + 8 && t < at->pfn; t++)
                    for (b = 0; b < at->pfb; b += 64) _mm_prefetch(at->pf + (size_t)t * at->pfs + b, _MM_HINT_T0);
            }
            a[0][0] = _mm512_setzero_ps(); /* (no loops over the accumulators: they stay in registers) */
            a[0][1] = a[0][2] = a[0][3] = a[0][4] = a[0][5] = a[0][6] = a[0][7] = a[0][0];
            a[1][0] = a[1][1] = a[1][2] = a[1][3] = a[1][4] = a[1][5] = a[1][6] = a[1][7] = a[0][0];
            a[2][0] = a[2][1] = a[2][2] = a[2][3] = a[2][4] = a[2][5] = a[2][6] = a[2][7] = a[0][0];
            for (i = 0; i < dk; i += 32) {
                __mmask32 mk = mla__mask32(dk - i);
                __mmask16 m0 = (__mmask16)(mk & 0xffff), m1 = (__mmask16)(mk >> 16);
#define MLA__SC(t)                                                                                      \
    if (type == MLA_BF16) {                                                                             \
        __m512i w_ = _mm512_maskz_loadu_epi16(mk, (const uint16_t *)kr[t] + i);                         \
        x0 = _mm512_castsi512_ps(_mm512_maskz_slli_epi32(0xffff, w_, 16));                              \
        x1 = _mm512_castsi512_ps(_mm512_and_si512(w_, hi));                                             \
    } else {                                                                                            \
        x0 = _mm512_maskz_loadu_ps(m0, (const float *)kr[t] + i);                                       \
        x1 = _mm512_maskz_loadu_ps(m1, (const float *)kr[t] + i + 16);                                  \
    }                                                                                                   \
    a[0][t] = _mm512_fmadd_ps(_mm512_loadu_ps(qr[0] + i), x0, a[0][t]);                                 \
    a[1][t] = _mm512_fmadd_ps(_mm512_loadu_ps(qr[1] + i), x0, a[1][t]);                                 \
    a[2][t] = _mm512_fmadd_ps(_mm512_loadu_ps(qr[2] + i), x0, a[2][t]);                                 \
    a[0][t] = _mm512_fmadd_ps(_mm512_loadu_ps(qr[0] + i + 16), x1, a[0][t]);                            \
    a[1][t] = _mm512_fmadd_ps(_mm512_loadu_ps(qr[1] + i + 16), x1, a[1][t]);                            \
    a[2][t] = _mm512_fmadd_ps(_mm512_loadu_ps(qr[2] + i + 16), x1, a[2][t]);
                MLA__SC(0) MLA__SC(1) MLA__SC(2) MLA__SC(3) MLA__SC(4) MLA__SC(5) MLA__SC(6) MLA__SC(7)
#undef MLA__SC
            }
#define MLA__ST(j) /* s has rows to a multiple of 3 and columns to TILE + 4 */                          \
    _mm256_storeu_ps(s + (size_t)(j0 + j) * MLA__PST + t0,                                              \
                     mla__hsum8(mla__half512(a[j][0]), mla__half512(a[j][1]), mla__half512(a[j][2]),   \
                                mla__half512(a[j][3]), mla__half512(a[j][4]), mla__half512(a[j][5]),   \
                                mla__half512(a[j][6]), mla__half512(a[j][7])));
            MLA__ST(0) MLA__ST(1) MLA__ST(2)
#undef MLA__ST
        }
}

/* o[j][0..dv) += sum_t p[j][t] v_t for j < Hp (pad heads of p are 0; p[j][t]
   at p + j hs + t ts): v rows of f32, bf16 or int8 values, vs bytes apart, widened
   to f32 in registers; f32 FMAs, so P.V rounds as the plain path does. Blocks
   of 9 heads (3 at the end) x 32 values. */
static void mla__pv_512(float *o, int Hp, int dv, const float *p, size_t hs, size_t ts, mla_dtype type, const char *v,
                        size_t vs, int n) {
    int j0, nh, d, t;
    for (j0 = 0; j0 < Hp; j0 += nh) {
        nh = Hp - j0 >= 9 ? 9 : 3;
        for (d = 0; d < dv; d += 32) {
            __mmask32 mr = mla__mask32(dv - d);
            __mmask16 m0 = (__mmask16)(mr & 0xffff), m1 = (__mmask16)(mr >> 16);
            __m512 lo[9], hi[9], x0, x1, b;
            const float *pt = p + (size_t)j0 * hs;
            float *oj;
#define MLA__LD(j)                                                                                  \
    oj = o + (size_t)(j0 + j) * dv + d;                                                             \
    lo[j] = _mm512_maskz_loadu_ps(m0, oj); hi[j] = _mm512_maskz_loadu_ps(m1, oj + 16);
#define MLA__ST(j)                                                                                  \
    oj = o + (size_t)(j0 + j) * dv + d;                                                             \
    _mm512_mask_storeu_ps(oj, m0, lo[j]); _mm512_mask_storeu_ps(oj + 16, m1, hi[j]);
#define MLA__PV(j)                                                                                  \
    b = _mm512_set1_ps(pt[(size_t)(j) * hs + (size_t)t * ts]);                                      \
    lo[j] = _mm512_fmadd_ps(b, x0, lo[j]); hi[j] = _mm512_fmadd_ps(b, x1, hi[j]);
#define MLA__ROWS(LOAD)                                                                             \
    for (t = 0; t < n; t++) {                                                                       \
        const char *vt = v + (size_t)t * vs;                                                        \
        LOAD;                                                                                       \
        MLA__PV(0) MLA__PV(1) MLA__PV(2)                                                            \
        if (nh == 9) { MLA__PV(3) MLA__PV(4) MLA__PV(5) MLA__PV(6) MLA__PV(7) MLA__PV(8) }          \
    }
            MLA__LD(0) MLA__LD(1) MLA__LD(2)
            if (nh == 9) {
                MLA__LD(3) MLA__LD(4) MLA__LD(5) MLA__LD(6) MLA__LD(7) MLA__LD(8)
            } else {
                lo[3] = lo[4] = lo[5] = lo[6] = lo[7] = lo[8] = _mm512_setzero_ps();
                hi[3] = hi[4] = hi[5] = hi[6] = hi[7] = hi[8] = lo[3];
            }
            if (type == MLA_F32) {
                MLA__ROWS(x0 = _mm512_maskz_loadu_ps(m0, (const float *)vt + d);
                          x1 = _mm512_maskz_loadu_ps(m1, (const float *)vt + d + 16))
            } else if (type == MLA_BF16) {
                MLA__ROWS(x0 = _mm512_castsi512_ps(_mm512_maskz_slli_epi32(0xffff, 
                              _mm512_maskz_cvtepu16_epi32(0xffff, _mm256_maskz_loadu_epi16(m0, (const uint16_t *)vt + d)), 16));
                          x1 = _mm512_castsi512_ps(_mm512_maskz_slli_epi32(0xffff, 
                              _mm512_maskz_cvtepu16_epi32(0xffff, _mm256_maskz_loadu_epi16(m1, (const uint16_t *)vt + d + 16)), 16)))
            } else {
                MLA__ROWS(x0 = _mm512_maskz_cvtepi32_ps(0xffff, _mm512_maskz_cvtepi8_epi32(0xffff, _mm_maskz_loadu_epi8(m0, (const int8_t *)vt + d)));
                          x1 = _mm512_maskz_cvtepi32_ps(0xffff, _mm512_maskz_cvtepi8_epi32(0xffff, _mm_maskz_loadu_epi8(m1, (const int8_t *)vt + d + 16))))
            }
            MLA__ST(0) MLA__ST(1) MLA__ST(2)
            if (nh == 9) { MLA__ST(3) MLA__ST(4) MLA__ST(5) MLA__ST(6) MLA__ST(7) MLA__ST(8) }
#undef MLA__LD
#undef MLA__ST
#undef MLA__PV
#undef MLA__ROWS
        }
    }
}

#ifdef MLA__AMX
/* ---- AMX tiles (Intel Xeon 4th gen and later) for bf16 rows ----
   A tile multiply tdpbf16ps adds a 16 x 32 by 32 x 16 bf16 product into 16 x
   16 f32, about ten times the rate of the vector units. Scores: 16 heads of
   the query (bf16 hi and lo parts, row-major) by 16 cached rows whose value
   pairs are transposed into a B tile (mla__transpose16); P.V: 16 heads' probabilities
   (f32 split into bf16 hi + lo) by value rows interleaved in pairs. Both
   splits keep every product within 2^-16 of its f32 value. Linux grants the
   tile state on request (arch_prctl ARCH_REQ_XCOMP_PERM, once per process);
   refused, the AVX-512 path runs. */
static int mla__amx_state; /* 0 not asked, 1 granted, -1 refused (threads racing write the same value) */
static int mla__amx_ok(void) {
    if (!mla__amx_state) {
        long rc;
        __asm__ volatile("syscall" : "=a"(rc) : "a"(158L), "D"(0x1023L), "S"(18L) : "rcx", "r11", "memory");
        mla__amx_state = rc == 0 ? 1 : -1;
    }
    return mla__amx_state > 0;
}
/* all 8 tiles 16 rows of 64 bytes: C (16 x 16 f32) in 0, 1, 6, 7; A (16 x 32
   bf16) in 2, 3; B in 4, 5 */
static void mla__amx_config(void) { /* static: ldtilecfg's asm operand names only its first 8 bytes */
    static const unsigned char cfg[64] = {1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,          /* palette 1 */
                                          64, 0, 64, 0, 64, 0, 64, 0, 64, 0, 64, 0, 64, 0, 64, 0, /* bytes per row */
                                          0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                          16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0}; /* rows */
    _tile_loadconfig(cfg);
}

/* u[j][i] = r[i][j]: a 16 x 16 transpose of 32-bit values (4 x 16 shuffles;
   the maskz forms because GCC 12 warns on the plain ones in C++) */
static void mla__transpose16(const __m512i *r, __m512i *u) {
    __m512i a[16], b[16], c0, c1, c2, c3;
    int k, q;
    for (k = 0; k < 8; k++) { /* lane L of a[2k]: r2k[4L], r2k+1[4L], r2k[4L+1], r2k+1[4L+1] */
        a[2 * k] = _mm512_maskz_unpacklo_epi32(0xffff, r[2 * k], r[2 * k + 1]);
        a[2 * k + 1] = _mm512_maskz_unpackhi_epi32(0xffff, r[2 * k], r[2 * k + 1]);
    }
    for (k = 0; k < 4; k++) { /* lane L of b[4k+q]: column 4L+q of rows 4k..4k+3 */
        b[4 * k] = _mm512_maskz_unpacklo_epi64(0xff, a[4 * k], a[4 * k + 2]);
        b[4 * k + 1] = _mm512_maskz_unpackhi_epi64(0xff, a[4 * k], a[4 * k + 2]);
        b[4 * k + 2] = _mm512_maskz_unpacklo_epi64(0xff, a[4 * k + 1], a[4 * k + 3]);
        b[4 * k + 3] = _mm512_maskz_unpackhi_epi64(0xff, a[4 * k + 1], a[4 * k + 3]);
    }
    for (q = 0; q < 4; q++) { /* column 4L+q: lane L of b[q], b[4+q], b[8+q], b[12+q] */
        c0 = _mm512_maskz_shuffle_i32x4(0xffff, b[q], b[4 + q], 0x44);
        c1 = _mm512_maskz_shuffle_i32x4(0xffff, b[q], b[4 + q], 0xee);
        c2 = _mm512_maskz_shuffle_i32x4(0xffff, b[8 + q], b[12 + q], 0x44);
        c3 = _mm512_maskz_shuffle_i32x4(0xffff, b[8 + q], b[12 + q], 0xee);
        u[q] = _mm512_maskz_shuffle_i32x4(0xffff, c0, c2, 0x88);
        u[4 + q] = _mm512_maskz_shuffle_i32x4(0xffff, c0, c2, 0xdd);
        u[8 + q] = _mm512_maskz_shuffle_i32x4(0xffff, c1, c3, 0x88);
        u[12 + q] = _mm512_maskz_shuffle_i32x4(0xffff, c1, c3, 0xdd);
    }
}

/* n < 16 rows of k (ks bytes apart), `bytes` of each, copied into z and
   zero padded to 16 rows: an A tile's worth that no tile load reads past */
static const char *mla__pad16(char *z, const char *k, size_t ks, int n, size_t bytes) {
    int i;
    for (i = 0; i < n; i++) memcpy(z + i * bytes, k + i * ks, bytes);
    memset(z + n * bytes, 0, (16 - n) * bytes);
    return z;
}

/* x = hi + lo, two bf16 vectors: |x - hi - lo| <= 2^-16 |x| */
static void mla__split_bf16(__m512 x, __m256i *hi, __m256i *lo) {
    __m512 f;
    *hi = (__m256i)_mm512_cvtneps_pbh(x);
    f = _mm512_castsi512_ps(_mm512_maskz_slli_epi32(0xffff, _mm512_maskz_cvtepu16_epi32(0xffff, *hi), 16));
    *lo = (__m256i)_mm512_cvtneps_pbh(_mm512_sub_ps(x, f));
}

/* The query of the AMX kernels (a->amx set): bf16 hi + lo, zero padded to
   H16 x dk32; as rows [2][H16][dk32] (amx 1), or (amx 2) each 32-value
   chunk as B tiles, hi then lo, of 16 value pairs by 16 heads: those rows
   (made in kt) with each 16 x 16 block of pairs transposed. */
static void mla__query_amx(mla__att *a) {
    int dk32 = a->dk32, j, i, c, part;
    size_t lo = (size_t)a->H16 * dk32;
    uint16_t *hl = a->amx == 2 ? (uint16_t *)a->kt : a->qh;
    for (j = 0; j < a->H16; j++)
        for (i = 0; i < dk32; i += 16) {
            __mmask16 m = j < a->H ? (__mmask16)(mla__mask32(a->dk - i) & 0xffff) : 0;
            __m256i h, l;
            mla__split_bf16(_mm512_maskz_loadu_ps(m, a->q + (size_t)j * a->dk + i), &h, &l);
            _mm256_storeu_si256((__m256i *)(hl + (size_t)j * dk32 + i), h);
            _mm256_storeu_si256((__m256i *)(hl + lo + (size_t)j * dk32 + i), l);
        }
    if (a->amx == 2)
        for (c = 0; c < dk32 / 32; c++)
            for (part = 0; part < 2; part++) {
                __m512i r[16], u[16];
                for (j = 0; j < 16; j++) r[j] = _mm512_loadu_si512(hl + part * lo + (size_t)j * dk32 + 32 * c);
                mla__transpose16(r, u);
                for (i = 0; i < 16; i++) _mm512_storeu_si512(a->qh + ((size_t)(2 * c + part) * 16 + i) * 32, u[i]);
            }
}

/* s[j][t] (rows MLA__PST apart, from column t0) = q_j . k_t for j < H16,
   t < 32 (0 past n <= 32): k bf16 rows ks bytes apart, dk even. */
static void mla__scores_amx(mla__att *a, const char *k, size_t ks, int n, int t0) {
    int dk = a->dk, nc = a->dk32 / 32, c, hf, g;
    size_t lo = (size_t)a->H16 * a->dk32;
    for (c = 0; c < nc; c++) /* kt[c][hf][p][t] = the pair (k_t[2i], k_t[2i+1]), i = 16c + p, t = 16hf + .. */
        for (hf = 0; hf < 2 && 16 * hf < n; hf++) {
            __m512i r[16], u[16];
            int left = dk / 2 - 16 * c, i;
            __mmask16 m = left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1);
            for (i = 0; i < 16; i++) /* 16 rows (zero past n) of 16 pairs */
                r[i] = 16 * hf + i < n ? _mm512_maskz_loadu_epi32(m, k + (size_t)(16 * hf + i) * ks + (size_t)c * 64)
                                       : _mm512_setzero_si512();
            mla__transpose16(r, u);
            for (i = 0; i < 16; i++) _mm512_storeu_si512(a->kt + ((size_t)c * 2 + hf) * 256 + 16 * i, u[i]);
        }
    for (g = 0; g < a->H16; g += 16) { /* four independent sums: rows 0-15 / 16-31 by query hi / lo */
        const uint16_t *qg = a->qh + (size_t)g * a->dk32;
        float *pg = a->p + (size_t)g * MLA__PST + t0;
        int j;
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(6);
        _tile_zero(7);
        for (c = 0; c < nc; c++) {
            _tile_loadd(2, qg + 32 * c, 2 * a->dk32);
            _tile_loadd(3, qg + lo + 32 * c, 2 * a->dk32);
            _tile_loadd(4, a->kt + (size_t)c * 512, 64);
            _tile_dpbf16ps(0, 2, 4);
            _tile_dpbf16ps(6, 3, 4);
            if (n > 16) {
                _tile_loadd(5, a->kt + (size_t)c * 512 + 256, 64);
                _tile_dpbf16ps(1, 2, 5);
                _tile_dpbf16ps(7, 3, 5);
            }
        }
        _tile_stored(0, pg, 4 * MLA__PST);
        _tile_stored(1, pg + 16, 4 * MLA__PST);
        _tile_stored(6, a->ct, 128);
        _tile_stored(7, a->ct + 16, 128);
        for (j = 0; j < 16; j++) {
            float *pj = pg + (size_t)j * MLA__PST;
            _mm512_storeu_ps(pj, _mm512_add_ps(_mm512_loadu_ps(pj), _mm512_loadu_ps(a->ct + 32 * j)));
            _mm512_storeu_ps(pj + 16, _mm512_add_ps(_mm512_loadu_ps(pj + 16), _mm512_loadu_ps(a->ct + 32 * j + 16)));
        }
    }
}

/* The scores of H <= 16 heads for dk % 32 == 0 (amx 2), laid out the other
   way: p[t0 + t][j] (rows of 16 heads) = q_j . k_t for t < n <= 32 (0 past n).
   16 cached rows as stored are an A tile (a part with fewer rows is copied,
   zero padded, into kt: no read past them), the query's chunks B tiles; the
   sums of the query's hi and lo parts are added here. */
static void mla__scores_amx_rows(mla__att *a, const char *k, size_t ks, int n, int t0) {
    int nc = a->dk32 / 32, c, hf, i;
    const char *kb[2];
    size_t st[2];
    for (hf = 0; hf < 2; hf++) {
        int m = n - 16 * hf;
        kb[hf] = k + (size_t)16 * hf * ks;
        st[hf] = ks;
        if (m > 0 && m < 16) {
            st[hf] = 2 * (size_t)a->dk32;
            kb[hf] = mla__pad16((char *)a->kt + (size_t)hf * 32 * a->dk32, kb[hf], ks, m, st[hf]);
        }
    }
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(6);
    _tile_zero(7);
    for (c = 0; c < nc; c++) {
        _tile_loadd(4, a->qh + (size_t)c * 1024, 64);
        _tile_loadd(5, a->qh + (size_t)c * 1024 + 512, 64);
        _tile_loadd(2, kb[0] + 64 * c, st[0]);
        _tile_dpbf16ps(0, 2, 4);
        _tile_dpbf16ps(6, 2, 5);
        if (n > 16) {
            _tile_loadd(3, kb[1] + 64 * c, st[1]);
            _tile_dpbf16ps(1, 3, 4);
            _tile_dpbf16ps(7, 3, 5);
        }
    }
    _tile_stored(0, a->p + (size_t)t0 * 16, 64);
    _tile_stored(6, a->ct, 64);
    if (n > 16) {
        _tile_stored(1, a->p + (size_t)(t0 + 16) * 16, 64);
        _tile_stored(7, a->ct + 256, 64);
    }
    for (i = 0; i < n; i++) {
        float *pt = a->p + (size_t)(t0 + i) * 16;
        _mm512_storeu_ps(pt, _mm512_add_ps(_mm512_loadu_ps(pt), _mm512_loadu_ps(a->ct + 16 * i)));
    }
}

/* The int16 query of int8 rows (amx 3) as int8 B tiles: qi = 256 hi + lo
   (lo in [-128, 127], |hi| <= 64), each 64-value chunk as hi then lo tiles of
   16 value quads x 16 heads (rows of 16 heads' 64 bytes, transposed in 4-byte
   groups). Both products are exact in int32, so the scores are those of the
   vpdpwssd path. */
#ifdef MLA__AMXI8
static void mla__query_amx_i8(mla__att *a) {
    int w = a->rp + a->mp, nc = w / 64, c, j, i, part;
    for (c = 0; c < nc; c++)
        for (part = 0; part < 2; part++) {
            __m512i r[16], u[16];
            for (j = 0; j < 16; j++) {
                __m256i h8[2];
                for (i = 0; i < 2; i++) {
                    __m512i q = j < a->H ? _mm512_loadu_si512(a->qi + (size_t)j * w + 64 * c + 32 * i) : _mm512_setzero_si512();
                    __m512i lo = _mm512_sub_epi16(_mm512_and_si512(_mm512_add_epi16(q, _mm512_set1_epi16(128)), _mm512_set1_epi16(255)),
                                                  _mm512_set1_epi16(128));
                    h8[i] = _mm512_maskz_cvtepi16_epi8(0xffffffffu, part ? lo : _mm512_srai_epi16(_mm512_sub_epi16(q, lo), 8));
                }
                r[j] = _mm512_maskz_inserti64x4(0xff, _mm512_castsi256_si512(h8[0]), h8[1], 1);
            }
            mla__transpose16(r, u);
            for (i = 0; i < 16; i++) _mm512_storeu_si512((char *)a->qh + ((size_t)(2 * c + part) * 16 + i) * 64, u[i]);
        }
}

/* int8 rows (amx 3): p[t0 + t][j] (rows of 16 heads, 0 past H) for t < n <=
   16, the row scales in a->rs (c part) and a->rs + MLA__PST (k_pe part) from
   column t0: 16 rows as stored are an int8 A tile (fewer rows: copied, zero
   padded, into kt); the c and k_pe parts' sums (query hi and lo apart) in
   four int32 tiles, combined as mla__scores_i16 combines its sums. */
static void mla__scores_amx_i8(mla__att *a, const char *k, size_t ks, int n, int t0) {
    int nc = (a->rp + a->mp) / 64, ncc = a->rp / 64, c, i, j;
    const char *kb = k;
    size_t st = ks;
    __m512 qc, qp;
    const int32_t *ct = (const int32_t *)a->ct;
    float qv[2][16];
    if (n < 16) {
        st = (size_t)nc * 64;
        kb = mla__pad16((char *)a->kt, k, ks, n, st);
    }
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (c = 0; c < nc; c++) {
        _tile_loadd(4, kb + 64 * c, st);
        _tile_loadd(5, (const char *)a->qh + (size_t)c * 2048, 64);
        _tile_loadd(6, (const char *)a->qh + (size_t)c * 2048 + 1024, 64);
        if (c < ncc) {
            _tile_dpbssd(0, 4, 5);
            _tile_dpbssd(1, 4, 6);
        } else {
            _tile_dpbssd(2, 4, 5);
            _tile_dpbssd(3, 4, 6);
        }
    }
    _tile_stored(0, a->ct, 64);
    _tile_stored(1, a->ct + 256, 64);
    _tile_stored(2, a->ct + 512, 64);
    _tile_stored(3, a->ct + 768, 64);
    for (j = 0; j < 16; j++) {
        qv[0][j] = j < a->H ? a->qs[j] : 0.0f;
        qv[1][j] = j < a->H ? a->qs[a->H + j] : 0.0f;
    }
    qc = _mm512_loadu_ps(qv[0]);
    qp = _mm512_loadu_ps(qv[1]);
    for (i = 0; i < n; i++) { /* row i: 16 heads' scores, as the vpdpwssd path computes them */
        __m512i dc = _mm512_add_epi32(_mm512_maskz_slli_epi32(0xffff, _mm512_loadu_si512(ct + 16 * i), 8), _mm512_loadu_si512(ct + 256 + 16 * i));
        __m512i dp = _mm512_add_epi32(_mm512_maskz_slli_epi32(0xffff, _mm512_loadu_si512(ct + 512 + 16 * i), 8), _mm512_loadu_si512(ct + 768 + 16 * i));
        __m512 sc = _mm512_mul_ps(_mm512_mul_ps(qc, _mm512_set1_ps(a->rs[t0 + i])), _mm512_maskz_cvtepi32_ps(0xffff, dc));
        if (ncc < nc)
            sc = _mm512_add_ps(sc, _mm512_mul_ps(_mm512_mul_ps(qp, _mm512_set1_ps(a->rs[MLA__PST + t0 + i])), _mm512_maskz_cvtepi32_ps(0xffff, dp)));
        _mm512_storeu_ps(a->p + (size_t)(t0 + i) * 16, sc);
    }
}
#endif

/* o[j][0..dv) += sum_t p[j][t] v_t for j < H16 (p rows of heads >= H and
   columns >= n are taken as 0; n <= 64): v bf16 rows vs bytes apart, dv % 16
   == 0. Each block of o is loaded into a tile once for the n rows. */
static void mla__pv_amx(mla__att *a, const char *v, size_t vs, int n) {
    static const short il[32] = {0, 32, 1, 33, 2, 34, 3, 35, 4, 36, 5, 37, 6, 38, 7, 39,
                                 8, 40, 9, 41, 10, 42, 11, 43, 12, 44, 13, 45, 14, 46, 15, 47};
    const __m512i ilo = _mm512_loadu_si512(il), ihi = _mm512_add_epi16(ilo, _mm512_set1_epi16(16));
    int dv = a->dv, two = n > 32, p, d, g, j, t;
    size_t vsub = (size_t)dv * 32; /* vv: [2 parts of 32 rows][dv/16][16 pairs][32] */
    for (p = 0; p < 16 * (1 + two); p++) /* (v_2p[d], v_2p+1[d]) for 16 d */
        for (d = 0; d < dv; d += 32) {
            __mmask32 m = mla__mask32(dv - d);
            __m512i x = _mm512_setzero_si512(), y = x;
            uint16_t *dst = a->vv + (size_t)(p / 16) * vsub + ((size_t)d + (size_t)(p % 16)) * 32;
            if (2 * p < n) x = _mm512_maskz_loadu_epi16(m, (const uint16_t *)(v + (size_t)(2 * p) * vs) + d);
            if (2 * p + 1 < n) y = _mm512_maskz_loadu_epi16(m, (const uint16_t *)(v + (size_t)(2 * p + 1) * vs) + d);
            _mm512_storeu_si512(dst, _mm512_permutex2var_epi16(x, ilo, y));
            if (d + 16 < dv) _mm512_storeu_si512(dst + 512, _mm512_permutex2var_epi16(x, ihi, y));
        }
    for (g = 0; g < a->H16; g += 16) {
        for (j = 0; j < 16; j++) /* the 16 heads' probabilities as bf16 hi + lo: pa[part][hi/lo][j][32] */
            for (t = 0; t < n; t += 16) {
                const float *pj = a->p + (size_t)(g + j) * MLA__PST + t;
                uint16_t *dst = a->pa + (size_t)(t / 32) * 1024 + 32 * j + t % 32;
                __mmask16 m = g + j >= a->H ? 0 : n - t >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - t)) - 1);
                __m256i h, l;
                mla__split_bf16(_mm512_maskz_loadu_ps(m, pj), &h, &l);
                _mm256_storeu_si256((__m256i *)dst, h);
                _mm256_storeu_si256((__m256i *)(dst + 512), l);
            }
        if (n % 32 && n % 32 <= 16) /* the unwritten half of the last part */
            for (j = 0; j < 16; j++) {
                uint16_t *dst = a->pa + (size_t)(n / 32) * 1024 + 32 * j + 16;
                memset(dst, 0, 32);
                memset(dst + 512, 0, 32);
            }
        _tile_loadd(2, a->pa, 64);
        _tile_loadd(3, a->pa + 512, 64);
        if (two) {
            _tile_loadd(6, a->pa + 1024, 64);
            _tile_loadd(7, a->pa + 1536, 64);
        }
        for (d = 0; d < dv; d += 32) { /* two blocks of 16 values at a time: two chains */
            float *od = a->o + (size_t)g * dv + d;
            const uint16_t *vd = a->vv + (size_t)d * 32;
            int pair = d + 16 < dv;
            _tile_loadd(0, od, 4 * (size_t)dv);
            if (pair) _tile_loadd(1, od + 16, 4 * (size_t)dv);
            _tile_loadd(4, vd, 64);
            if (pair) _tile_loadd(5, vd + 512, 64);
            _tile_dpbf16ps(0, 2, 4);
            if (pair) _tile_dpbf16ps(1, 2, 5);
            _tile_dpbf16ps(0, 3, 4);
            if (pair) _tile_dpbf16ps(1, 3, 5);
            if (two) {
                _tile_loadd(4, vd + vsub, 64);
                if (pair) _tile_loadd(5, vd + vsub + 512, 64);
                _tile_dpbf16ps(0, 6, 4);
                if (pair) _tile_dpbf16ps(1, 6, 5);
                _tile_dpbf16ps(0, 7, 4);
                if (pair) _tile_dpbf16ps(1, 7, 5);
            }
            _tile_stored(0, od, 4 * (size_t)dv);
            if (pair) _tile_stored(1, od + 16, 4 * (size_t)dv);
        }
    }
}
#endif
#endif

/* ---- row conversions into the tile buffers ---- */
static void mla__half_to_f32(float *dst, const uint16_t *src, int n, mla_dtype t) {
    int i = 0;
#ifdef MLA__AVX2
    if (t == MLA_BF16)
        for (; i + 8 <= n; i += 8)
            _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(_mm256_slli_epi32(
                                          _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(src + i))), 16)));
#ifdef __F16C__
    if (t == MLA_F16)
        for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
#endif
#endif
    for (; i < n; i++) dst[i] = t == MLA_BF16 ? mla_bf16_to_f32(src[i]) : mla_f16_to_f32(src[i]);
}

/* the two scales of an int8 row [c (r) | k_pe (m) | pad | scale_c | scale_pe] */
static void mla__i8_scales(const int8_t *row, int r, int m, float *rs_c, float *rs_pe) {
    memcpy(rs_c, row + mla__i8_scales_at(r, m), 4);
    memcpy(rs_pe, row + mla__i8_scales_at(r, m) + 4, 4);
}

/* int8 row [c (r) | k_pe (m) | pad | scale_c | scale_pe] -> int16 [rp | mp] (zero
   padded), scales, and (cf not NULL) f32 c values (unscaled) */
static void mla__i8_row(const int8_t *row, int r, int m, int rp, int mp, int16_t *ki, float *rs_c, float *rs_pe, float *cf) {
    int i = 0, j = 0;
    mla__i8_scales(row, r, m, rs_c, rs_pe);
#ifdef MLA__AVX2
    for (; i + 16 <= r; i += 16) {
        __m256i w = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(row + i)));
        _mm256_storeu_si256((__m256i *)(ki + i), w);
        if (!cf) continue;
        _mm256_storeu_ps(cf + i, _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(_mm256_castsi256_si128(w))));
        _mm256_storeu_ps(cf + i + 8, _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(_mm256_extracti128_si256(w, 1))));
    }
    for (; j + 16 <= m; j += 16)
        _mm256_storeu_si256((__m256i *)(ki + rp + j), _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(row + r + j))));
#endif
    for (; i < r; i++) {
        ki[i] = row[i];
        if (cf) cf[i] = row[i];
    }
    for (; i < rp; i++) ki[i] = 0;
    for (; j < m; j++) ki[rp + j] = row[r + j];
    for (; j < mp; j++) ki[rp + j] = 0;
}

#ifdef MLA__AMX
/* The online softmax of mla__att_tile (below) for scores laid out [t][16
   heads] (amx 2, 3): all heads' lanes at once; lanes past H become 0. */
static void mla__softmax_t16(mla__att *a, mla_dtype type, int n) {
    float mt[16], sum[16];
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), h = _mm256_set1_epi32(a->H);
    const __m256 keep0 = _mm256_castsi256_ps(_mm256_cmpgt_epi32(h, lane)),
                 keep1 = _mm256_castsi256_ps(_mm256_cmpgt_epi32(h, _mm256_add_epi32(lane, _mm256_set1_epi32(8))));
    __m256 m0, m1, s0 = _mm256_setzero_ps(), s1 = s0;
    __m512 mx = _mm512_loadu_ps(a->p);
    int j, t, u;
    for (t = 1; t < n; t++) mx = _mm512_maskz_max_ps(0xffff, mx, _mm512_loadu_ps(a->p + (size_t)t * 16));
    _mm512_storeu_ps(mt, mx);
    for (j = 0; j < 16; j++) {
        if (j < a->H && mt[j] > a->mx[j]) { /* rescale what came before */
            float alpha = expf(a->mx[j] - mt[j]), *oj = a->o + (size_t)j * a->dv;
            for (u = 0; u < a->dv; u++) oj[u] *= alpha;
            a->l[j] *= alpha;
            a->mx[j] = mt[j];
        }
        mt[j] = j < a->H ? a->mx[j] : 0.0f;
    }
    m0 = _mm256_loadu_ps(mt);
    m1 = _mm256_loadu_ps(mt + 8);
    for (t = 0; t < n; t++) {
        float *pt = a->p + (size_t)t * 16;
        __m256 y0 = _mm256_and_ps(mla__exp8(_mm256_sub_ps(_mm256_loadu_ps(pt), m0)), keep0);
        __m256 y1 = _mm256_and_ps(mla__exp8(_mm256_sub_ps(_mm256_loadu_ps(pt + 8), m1)), keep1);
        s0 = _mm256_add_ps(s0, y0);
        s1 = _mm256_add_ps(s1, y1);
        if (type == MLA_I8) { /* the value rows are int8: fold each row's scale into p */
            __m256 r = _mm256_set1_ps(a->rs[t]);
            y0 = _mm256_mul_ps(y0, r);
            y1 = _mm256_mul_ps(y1, r);
        }
        _mm256_storeu_ps(pt, y0);
        _mm256_storeu_ps(pt + 8, y1);
    }
    _mm256_storeu_ps(sum, s0);
    _mm256_storeu_ps(sum + 8, s1);
    for (j = 0; j < a->H; j++) a->l[j] += sum[j];
}
#endif

/* ---- one tile of n rows: scores, online softmax, P.V ---- */
static void mla__att_tile(mla__att *a, mla_dtype type, const char *k, size_t ks, const char *v, size_t vs, int n) {
    int H = a->H, dk = a->dk, dv = a->dv, j, t;
    const float *vf = NULL; /* f32 value rows for mla__pv_f32, vst floats apart */
    size_t vst = 0;
#if defined(MLA__AVX512)
    const int wide = type != MLA_F16; /* P.V by mla__pv_512 from the rows as stored */
#elif defined(MLA__AVX2) && defined(__F16C__)
    const int wide = 1; /* both GEMMs by mla__scores_256 (mla__scores_i8_256) and mla__pv_256 */
#elif defined(MLA__AVX2)
    const int wide = type != MLA_F16;
#else
    const int wide = 0;
#endif
#ifdef MLA__AMX
    if (a->amx >= 2) { /* AMX with the rows as M: scores [t][16 heads], read so by the softmax and P.V */
        if (a->amx == 2) {
            mla__scores_amx_rows(a, k, ks, mla__imin(n, 32), 0);
            if (n > 32) mla__scores_amx_rows(a, k + 32 * ks, ks, n - 32, 32);
        }
#ifdef MLA__AMXI8
        else {
            for (t = 0; t < n; t++) /* int8 rows: only their scales are read here */
                mla__i8_scales((const int8_t *)(k + (size_t)t * ks), dv, dk - dv, a->rs + t, a->rs + MLA__PST + t);
            for (t = 0; t < n; t += 16) mla__scores_amx_i8(a, k + (size_t)t * ks, ks, mla__imin(n - t, 16), t);
        }
#endif
        mla__softmax_t16(a, type, n);
        mla__pv_512(a->o, a->Hp, dv, a->p, 1, 16, type, v, vs, n);
        return;
    }
#endif
    if (type == MLA_I8) {
        int w = a->rp + a->mp;
#if defined(MLA__AVX2) && !defined(MLA__AVX512)
        if (dv % 16 == 0 && (dk - dv) % 16 == 0) { /* the rows as stored, widened in registers */
            for (t = 0; t < n; t++)
                mla__i8_scales((const int8_t *)(k + (size_t)t * ks), dv, dk - dv, a->rs + t, a->rs + MLA__PST + t);
            mla__scores_i8_256(a->qi, (size_t)w, a->rp, H, k, ks, n, dv, dk - dv, a->qs, a->rs, a->p);
        } else
#endif
        {
            for (t = 0; t < n; t++)
                mla__i8_row((const int8_t *)(k + (size_t)t * ks), dv, dk - dv, a->rp, a->mp, a->ki + (size_t)t * w,
                            a->rs + t, a->rs + MLA__PST + t, wide ? NULL : a->vb + (size_t)t * dv);
            mla__scores_i16(a->qi, (size_t)w, H, a->ki, (size_t)w, n, 0, a->rp, a->qs, a->rs, 0, a->p);
            if (a->mp)
                mla__scores_i16(a->qi, (size_t)w, H, a->ki, (size_t)w, n, a->rp, a->mp, a->qs + H, a->rs + MLA__PST, 1, a->p);
        }
        vf = a->vb; vst = (size_t)dv;
#ifdef MLA__AMX
    } else if (a->amx) {
        mla__scores_amx(a, k, ks, mla__imin(n, 32), 0);
        if (n > 32) mla__scores_amx(a, k + 32 * ks, ks, n - 32, 32);
#endif
#if defined(MLA__AVX512)
    } else if (type == MLA_F32 || type == MLA_BF16) {
        mla__scores_512(a, type, k, ks, n, a->p);
#elif defined(MLA__AVX2)
    } else if (wide) {
        mla__scores_256(a, type, k, ks, n, a->p);
#endif
    } else if (type == MLA_F32) {
        mla__scores_f32(a->q, H, dk, (const float *)k, ks / 4, n, a->p);
        vf = (const float *)v; vst = vs / 4;
    } else {
        for (t = 0; t < n; t++) mla__half_to_f32(a->kb + (size_t)t * dk, (const uint16_t *)(k + (size_t)t * ks), dk, type);
        mla__scores_f32(a->q, H, dk, a->kb, (size_t)dk, n, a->p);
        if (v == k) {
            vf = a->kb; vst = (size_t)dk;
        } else {
            for (t = 0; t < n; t++) mla__half_to_f32(a->vb + (size_t)t * dv, (const uint16_t *)(v + (size_t)t * vs), dv, type);
            vf = a->vb; vst = (size_t)dv;
        }
    }
    for (j = H; j < a->Hp; j++) memset(a->p + (size_t)j * MLA__PST, 0, sizeof(float) * (size_t)n); /* pad heads */
    for (j = 0; j < H; j++) { /* online softmax: rescale what came before when the max grows */
        float *pj = a->p + (size_t)j * MLA__PST, mt = pj[0];
        t = 1;
#ifdef MLA__AVX2
        if (n >= 8) {
            __m256 vm = _mm256_loadu_ps(pj);
            float part[8];
            int u;
            for (t = 8; t + 8 <= n; t += 8) vm = _mm256_max_ps(vm, _mm256_loadu_ps(pj + t));
            _mm256_storeu_ps(part, vm);
            for (u = 0; u < 8; u++) mt = part[u] > mt ? part[u] : mt;
        }
#endif
        for (; t < n; t++) mt = pj[t] > mt ? pj[t] : mt;
        if (mt > a->mx[j]) {
            float alpha = expf(a->mx[j] - mt), *oj = a->o + (size_t)j * dv;
            int u;
            for (u = 0; u < dv; u++) oj[u] *= alpha;
            a->l[j] *= alpha;
            a->mx[j] = mt;
        }
        a->l[j] += mla__exp_sum(pj, n, a->mx[j]);
        if (type == MLA_I8) /* the value rows are int8: fold each row's scale into p */
            for (t = 0; t < n; t++) pj[t] *= a->rs[t];
    }
#ifdef MLA__AMX
    if (a->amx) { /* (rows as M, above: the heads fill too little of a tile to pay for the value pairs' interleave) */
        mla__pv_amx(a, v, vs, n);
        return;
    }
#endif
#if defined(MLA__AVX512)
    if (wide) {
        mla__pv_512(a->o, a->Hp, dv, a->p, MLA__PST, 1, type, v, vs, n);
        return;
    }
#elif defined(MLA__AVX2)
    if (wide) {
        mla__pv_256(a->o, a->Hp, dv, a->p, type, v, vs, n);
        return;
    }
#endif
    (void)wide;
    mla__pv_f32(a->o, a->Hp, dv, a->p, vf, vst, n);
}

#ifdef MLA__AVX512
/* Whether a state runs rows of this type on AMX tiles: 0 no; bf16 rows: 1
   heads as the tiles' M, 2 cached rows as M; 3 int8 rows, rows as M */
static int mla__att_amx(const mla__att *a, mla_dtype type) {
#ifdef MLA__AMX
    if (MLA__AMX_I8(type, a->H, a->dv, a->dk)) return mla__amx_ok() ? 3 : 0;
    if (!MLA__AMX_FOR(type, a->H, a->dv, a->dk) || !mla__amx_ok()) return 0;
    return MLA__AMX_ROWS(a->H, a->dk) ? 2 : 1;
#else
    (void)a; (void)type;
    return 0;
#endif
}
#endif

/* Sets the query of a state: q [H][dk] = scale * [qa (dv) | qb (dk-dv)]
   (row strides lda, ldb); the int16 copy too for int8 rows. */
static void mla__att_query(mla__att *a, mla_dtype type, const float *qa, size_t lda, const float *qb, size_t ldb,
                           float scale) {
    int H = a->H, dk = a->dk, dv = a->dv, j, i;
    for (j = 0; j < H; j++) {
        float *q = a->q + (size_t)j * dk;
        for (i = 0; i < dv; i++) q[i] = scale * qa[(size_t)j * lda + i];
        for (i = dv; i < dk; i++) q[i] = scale * qb[(size_t)j * ldb + i - dv];
    }
#ifdef MLA__AVX512
    a->amx = mla__att_amx(a, type);
#ifdef MLA__AMX
    if (a->amx == 1 || a->amx == 2) mla__query_amx(a);
    else
#endif
    if (type == MLA_F32 || type == MLA_BF16)
        mla__query_w(a->qw, a->dk32, a->q, H, dk, type, 32, a->dk32);
#elif defined(MLA__AVX2)
    if (type != MLA_I8) mla__query_w(a->qw, a->dk32, a->q, H, dk, type, 16, dk & ~15);
#endif
    if (type != MLA_I8) return;
    for (j = 0; j < H; j++) { /* int16 query, one scale per part; |sum| < 2^31 for any row */
        int part, w = a->rp + a->mp;
        for (part = 0; part < 2; part++) {
            int b = part ? dv : 0, e = part ? dk : dv, o = part ? a->rp : 0, len = part ? a->mp : a->rp;
            const float *q = a->q + (size_t)j * dk;
            int16_t *qi = a->qi + (size_t)j * w + o;
            float amax = 0.0f, lim = len > 0 ? (float)mla__imin(16383, (int)(2147483647.0 / (127.0 * len))) : 1.0f, sc;
            for (i = b; i < e; i++) amax = fabsf(q[i]) > amax ? fabsf(q[i]) : amax;
            sc = amax > 0 ? amax / lim : 0.0f;
            i = 0;
#ifdef MLA__AVX512
            if (sc > 0) /* (rounded as lrintf rounds: to nearest even) */
                for (; i + 16 <= e - b; i += 16)
                    _mm256_storeu_si256((__m256i *)(qi + i),
                                        _mm512_maskz_cvtsepi32_epi16(0xffff, _mm512_maskz_cvtps_epi32(
                                                                                 0xffff, _mm512_div_ps(_mm512_loadu_ps(q + b + i),
                                                                                                       _mm512_set1_ps(sc)))));
#elif defined(MLA__AVX2)
            if (sc > 0)
                for (; i + 8 <= e - b; i += 8) {
                    __m256i v = _mm256_cvtps_epi32(_mm256_div_ps(_mm256_loadu_ps(q + b + i), _mm256_set1_ps(sc)));
                    _mm_storeu_si128((__m128i *)(qi + i), _mm_packs_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1)));
                }
#endif
            for (; i < len; i++) qi[i] = (int16_t)(b + i < e && sc > 0 ? lrintf(q[b + i] / sc) : 0);
            a->qs[part * H + j] = sc;
        }
    }
#ifdef MLA__AMXI8
    if (a->amx == 3) mla__query_amx_i8(a);
#endif
}

/* Runs ns states (a[i], its log-sum-exp to lse[i]) over rows [t0, t1) of src
   from empty, in one pass, and leaves each o normalised: state i reads its
   key and value rows i*coff bytes into each cached row. GQA: the KV groups
   of a token, so each tile of rows is read from memory once for all groups
   (group after group, each pass over the whole cache, measured 1.2-1.6x
   slower on Zen 3); MLA: one state. */
static void mla__att_runs(mla__att *const *a, float *const *lse, int ns, size_t coff, const mla__rows *src, int t0,
                          int t1) {
    int H = a[0]->H, dv = a[0]->dv, i, j, t, n, u;
#ifdef MLA__AMX
    for (i = 0; i < ns; i++) a[i]->amx = mla__att_amx(a[i], src->type);
    if (a[0]->amx) mla__amx_config();
#endif
    for (i = 0; i < ns; i++) {
        memset(a[i]->o, 0, sizeof(float) * (size_t)a[i]->Hr * dv);
        memset(a[i]->p, 0, sizeof(float) * (size_t)a[i]->Hr * MLA__PST);
        memset(a[i]->rs, 0, sizeof(float) * 2 * MLA__PST);
        for (j = 0; j < H; j++) { a[i]->mx[j] = -INFINITY; a[i]->l[j] = 0.0f; }
    }
    for (t = t0; t < t1; t += n) {
        const char *k, *v;
        size_t ks, vs;
        n = mla__rows_at(src, t, mla__imin(MLA__TILE, t1 - t), &k, &v, &ks, &vs);
        for (i = 0; i < ns; i++) a[i]->pf = NULL;
#ifdef MLA__AVX2
        if (t + n < t1) { /* the next tile's rows travel while this one is computed */
            const char *k2, *v2;
            size_t ks2, vs2, b, el = src->type == MLA_F32 ? 4 : 2;
            size_t kb = src->pool ? mla_pool_row_bytes(src->pool) : (size_t)a[0]->dk * el, vb = src->pool ? 0 : (size_t)dv * el;
            int n2 = mla__rows_at(src, t + n, mla__imin(MLA__TILE, t1 - t - n), &k2, &v2, &ks2, &vs2), w;
#ifdef MLA__AVX512
            if (!a[0]->amx && (src->type == MLA_F32 || src->type == MLA_BF16)) { /* keys: by mla__scores_512 */
                for (i = 0; i < ns; i++) {
                    a[i]->pf = k2 + i * coff; a[i]->pfs = ks2; a[i]->pfb = kb; a[i]->pfn = n2;
                }
                kb = 0;
            }
#else /* AVX2, measured on Zen 3 (A/B in one process, both orders): helps int8 rows (~10 %), slows bf16 (5-15 %) */
            if (src->type != MLA_I8) kb = vb = 0;
#endif
            if (a[0]->amx >= 2) kb = 0; /* rows read by tile loads: the hardware's prefetch measured best */
            for (i = 0; i < ns; i++)
                for (w = 0; w < n2; w++) {
                    for (b = 0; b < kb; b += 64) _mm_prefetch(k2 + i * coff + w * ks2 + b, _MM_HINT_T0);
                    for (b = 0; b < vb; b += 64) _mm_prefetch(v2 + i * coff + w * vs2 + b, _MM_HINT_T0);
                }
        }
#endif
        for (i = 0; i < ns; i++) mla__att_tile(a[i], src->type, k + i * coff, ks, v + i * coff, vs, n);
    }
    for (i = 0; i < ns; i++)
        for (j = 0; j < H; j++) {
            float inv = a[i]->l[j] > 0 ? 1.0f / a[i]->l[j] : 0.0f, *oj = a[i]->o + (size_t)j * dv;
            for (u = 0; u < dv; u++) oj[u] *= inv;
            lse[i][j] = a[i]->l[j] > 0 ? a[i]->mx[j] + logf(a[i]->l[j]) : -INFINITY;
        }
#ifdef MLA__AMX
    if (a[0]->amx) _tile_release();
#endif
}

static void mla__att_run(mla__att *a, const mla__rows *src, int t0, int t1, float *lse) {
    mla__att_runs(&a, &lse, 1, 0, src, t0, t1);
}

/* o [H][d], lse [H] from n parts (o parts os floats apart, lse parts ls apart) */
static void mla__merge(int H, int d, int n, const float *op, size_t os, const float *lp, size_t ls, float *o, float *lse) {
    int j, i, u;
    for (j = 0; j < H; j++) {
        float mx = -INFINITY, sum = 0.0f, *oj = o + (size_t)j * d;
        for (i = 0; i < n; i++) mx = lp[i * ls + j] > mx ? lp[i * ls + j] : mx;
        memset(oj, 0, sizeof(float) * (size_t)d);
        if (mx == -INFINITY) {
            if (lse) lse[j] = -INFINITY;
            continue;
        }
        for (i = 0; i < n; i++) {
            float wgt = expf(lp[i * ls + j] - mx);
            const float *oi = op + i * os + (size_t)j * d;
            sum += wgt;
            for (u = 0; u < d; u++) oj[u] += wgt * oi[u];
        }
        for (u = 0; u < d; u++) oj[u] /= sum;
        if (lse) lse[j] = mx + logf(sum);
    }
}

MLADEF void mla_attend_merge(int H, int d, int n, const float *o_parts, const float *lse_parts, float *o, float *lse) {
    if (H <= 0 || d <= 0 || n <= 0 || !o_parts || !lse_parts || !o) return;
    mla__merge(H, d, n, o_parts, (size_t)H * d, lse_parts, (size_t)H, o, lse);
}

static int mla__threads(void) {
#ifdef _OPENMP
    return mla__imin(omp_get_max_threads(), MLA_MAX_THREADS);
#else
    return 1;
#endif
}

/* this thread's number in the current team (its scratch slot) */
static int mla__tid(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

/* One query set (H heads) against rows 0..n-1 of src -> out [H][dv]; with
   ng > 1, ng such sets sharing the rows in one pass (GQA's KV groups): set g
   has its query at qa + g*gq, its key and value rows g*gkv bytes into each
   cached row, its output at out + g*go. */
typedef struct {
    const float *qa, *qb; /* query parts and row strides (mla__att_query) */
    size_t lda, ldb;
    mla__rows src;
    int n, ng;            /* rows; query sets (0 reads as 1) */
    size_t gq, gkv, go;
    float *out;
} mla__job;

static int mla__gcd(int a, int b) { return b ? mla__gcd(b, a % b) : a; }

/* Runs nj jobs (same H, dk, dv, type; ng of the first the largest) on up to `threads` threads in one
   parallel region. With fewer jobs than threads each job's rows are split
   into parts (so that jobs x parts spreads evenly), merged by their LSE.
   Slots (each sstride floats, from base): ng per job or part; at most
   MLA_MAX_THREADS in all, so ng * threads <= MLA_MAX_THREADS. Deterministic
   for a given thread count. */
static void mla__attend_jobs(const mla__job *jobs, int nj, int H, int dk, int dv, float scale, float *base,
                             size_t sstride, int threads) {
    int parts = 1, minn = jobs[0].n, ng = jobs[0].ng > 1 ? jobs[0].ng : 1, u, j;
    for (j = 1; j < nj; j++) minn = mla__imin(minn, jobs[j].n);
    if (threads > 1 && nj < 2 * threads)
        parts = mla__imin(mla__imin(threads / mla__gcd(nj, threads), MLA_MAX_THREADS / (nj * ng)), minn / MLA__SPLIT_ROWS);
    if (parts < 1) parts = 1;
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && nj * parts > 1)
#endif
    for (u = 0; u < nj * parts; u++) {
        const mla__job *jb = &jobs[u / parts];
        int part = u % parts, slot = u, jng = jb->ng > 1 ? jb->ng : 1, g;
        mla__slot s[MLA_MAX_THREADS];
        mla__att *as[MLA_MAX_THREADS];
        float *ls[MLA_MAX_THREADS];
#ifdef _OPENMP
        if (parts == 1) slot = threads > 1 && nj > 1 ? omp_get_thread_num() : 0;
#else
        if (parts == 1) slot = 0;
#endif
        for (g = 0; g < jng; g++) {
            mla__slot_layout(H, dk, dv, base + ((size_t)slot * ng + g) * sstride, &s[g]);
            mla__att_query(&s[g].a, jb->src.type, jb->qa + g * jb->gq, jb->lda, jb->qb ? jb->qb + g * jb->gq : NULL,
                           jb->ldb, scale);
            as[g] = &s[g].a; ls[g] = s[g].lse;
        }
        mla__att_runs(as, ls, jng, jb->gkv, &jb->src, (int)((long)jb->n * part / parts),
                      (int)((long)jb->n * (part + 1) / parts));
        if (parts == 1)
            for (g = 0; g < jng; g++) memcpy(jb->out + g * jb->go, s[g].a.o, sizeof(float) * (size_t)H * dv);
    }
    if (parts > 1)
        for (j = 0; j < nj; j++) {
            int g;
            for (g = 0; g < (jobs[j].ng > 1 ? jobs[j].ng : 1); g++) {
                mla__slot s;
                mla__slot_layout(H, dk, dv, base + ((size_t)j * parts * ng + g) * sstride, &s);
                mla__merge(H, dv, parts, s.a.o, ng * sstride, s.lse, ng * sstride, jobs[j].out + g * jobs[j].go, NULL);
            }
        }
}

/* Tokens per group of the absorbed prefill (1: no grouping). */
static int mla__group(const mla_config *c, int chunk) {
    int g = MLA__GROUP_HEADS / c->n_heads;
    return mla__imin(chunk, g > 1 ? g : 1);
}

/* Extra floats per thread slot for a group: the group's state (G*H heads)
   and two parts of one token (o and lse) to merge; 0 without grouping. */
static size_t mla__group_floats(const mla_config *c, int chunk) {
    int G = mla__group(c, chunk), H = c->n_heads, r = c->kv_lora_rank;
    if (G < 2) return 0;
    return mla__slot_layout(G * H, r + c->qk_rope_head_dim, r, NULL, NULL) + 2 * (size_t)H * (r + 1);
}

/* Scratch layout: one list of regions, used both to size and to carve. */
typedef struct {
    float *q;     /* [T][h*(d_nope+m)] queries (RoPE applied to the pe part)    */
    float *qa;    /* [T][r_q]                                                   */
    float *kv;    /* [T][r+m] new latent rows (c normalised, k_pe roped)        */
    float *o;     /* [T][h*d_v] attention output before W_o                     */
    float *freq;  /* [m/2]                                                      */
    float *slots; /* MLA_MAX_THREADS attention slots (mla__slot_layout), sstride */
    size_t sstride; /* floats apart (absorbed attention)                        */
    float *ckv;   /* [ctx][r]          naive: latent c of every cached token    */
    float *kpe;   /* [ctx][m]          naive: k_pe of every cached token        */
    float *kvd;   /* [ctx][h*(d_nope+d_v)] naive: decompressed k_nope, v        */
    float *kf;    /* [ctx][h*(d_nope+m)]   naive: full keys                     */
    float *vf;    /* [ctx][h*d_v]          naive: values                        */
    float *p;     /* [h][ctx]              naive: probabilities                 */
    float *row;   /* [r+m]                 naive: converted cache row           */
} mla__scratch;

/* returns the number of floats; with base != NULL also sets the pointers */
static size_t mla__scratch_layout(const mla_config *c, int T, int ctx, mla_mode mode,
                                  float *base, mla__scratch *s) {
    size_t H = (size_t)c->n_heads, r = (size_t)c->kv_lora_rank, m = (size_t)c->qk_rope_head_dim;
    size_t qd = (size_t)mla__qk_dim(c), dv = (size_t)c->v_head_dim, off = 0;
    mla__scratch tmp;
    if (!s) s = &tmp;
    memset(s, 0, sizeof *s);
    s->q = mla__carve(base, &off, (size_t)T * H * qd);
    s->qa = mla__carve(base, &off, (size_t)T * (size_t)c->q_lora_rank);
    s->kv = mla__carve(base, &off, (size_t)T * (r + m));
    s->o = mla__carve(base, &off, (size_t)T * H * dv);
    s->freq = mla__carve(base, &off, m / 2 + 1);
    s->sstride = mla__slot_layout((int)H, (int)(r + m), (int)r, NULL, NULL) /* both modes: a naive- */
               + mla__group_floats(c, T);                                   /* sized one serves both */
    s->slots = mla__carve(base, &off, MLA_MAX_THREADS * s->sstride);
    if (mode == MLA_NAIVE) {
        s->ckv = mla__carve(base, &off, (size_t)ctx * r);
        s->kpe = mla__carve(base, &off, (size_t)ctx * m + 1);
        s->kvd = mla__carve(base, &off, (size_t)ctx * H * ((size_t)c->qk_nope_head_dim + dv));
        s->kf = mla__carve(base, &off, (size_t)ctx * H * qd);
        s->vf = mla__carve(base, &off, (size_t)ctx * H * dv);
        s->p = mla__carve(base, &off, H * (size_t)ctx);
        s->row = mla__carve(base, &off, r + m);
    }
    return off;
}

MLADEF size_t mla_workspace_bytes(const mla_config *c, int max_tokens, int max_ctx, mla_mode mode) {
    size_t n;
    if (!c || mla_config_validate(c, NULL) != MLA_OK || max_tokens <= 0 || max_ctx <= 0) return 0;
    n = mla__scratch_layout(c, max_tokens, max_ctx, mode, NULL, NULL);
    return n >= MLA__HUGE / sizeof(float) ? 0 : sizeof(float) * n;
}

/* Checks of mla_attend_latent(_partial); the job for rows 0..t1-1. */
static mla_result mla__latent_setup(const mla_pool *pool, const mla_seq *seq, int layer, int H, int t1,
                                    const float *q_lat, const float *q_pe, float *o_lat, void *scratch,
                                    size_t scratch_bytes, mla__job *jb) {
    int r, m;
    if (!pool || !seq || !q_lat || !o_lat || !scratch || H <= 0 || t1 < 0) return MLA_ERR_INVALID_ARG;
    r = pool->kv_lora_rank; m = pool->qk_rope_head_dim;
    if (m > 0 && !q_pe) return MLA_ERR_INVALID_ARG;
    if (layer < 0 || layer >= pool->n_layers) return MLA_ERR_INVALID_ARG;
    if ((long)t1 > (long)seq->n_blocks * pool->block_size) return MLA_ERR_INVALID_ARG;
    if (!mla_attend_scratch_bytes(H, r, m)) return MLA_ERR_SHAPE;
    if (scratch_bytes < mla_attend_scratch_bytes(H, r, m)) return MLA_ERR_WORKSPACE;
    memset(jb, 0, sizeof *jb);
    jb->qa = q_lat; jb->lda = (size_t)r; jb->qb = q_pe; jb->ldb = (size_t)m;
    jb->src.type = pool->type; jb->src.pool = pool; jb->src.seq = seq; jb->src.layer = layer;
    jb->n = t1; jb->out = o_lat;
    return MLA_OK;
}

MLADEF mla_result mla_attend_latent(const mla_pool *pool, const mla_seq *seq, int layer,
                                    int H, int n_ctx, const float *q_lat, const float *q_pe,
                                    float scale, float *o_lat, void *scratch, size_t scratch_bytes) {
    mla__job jb;
    int r, m;
    mla_result rc = mla__latent_setup(pool, seq, layer, H, n_ctx, q_lat, q_pe, o_lat, scratch, scratch_bytes, &jb);
    if (rc != MLA_OK) return rc;
    if (n_ctx <= 0) return MLA_ERR_INVALID_ARG;
    r = pool->kv_lora_rank; m = pool->qk_rope_head_dim;
    mla__attend_jobs(&jb, 1, H, r + m, r, scale, (float *)scratch, mla__slot_layout(H, r + m, r, NULL, NULL),
                     mla__threads());
    return MLA_OK;
}

MLADEF mla_result mla_attend_latent_partial(const mla_pool *pool, const mla_seq *seq, int layer,
                                            int H, int t0, int t1, const float *q_lat, const float *q_pe,
                                            float scale, float *o_lat, float *lse, void *scratch,
                                            size_t scratch_bytes) {
    mla__job jb;
    mla__slot s;
    int r, m;
    mla_result rc = mla__latent_setup(pool, seq, layer, H, t1, q_lat, q_pe, o_lat, scratch, scratch_bytes, &jb);
    if (rc != MLA_OK) return rc;
    if (!lse || t0 < 0 || t0 > t1) return MLA_ERR_INVALID_ARG;
    r = pool->kv_lora_rank; m = pool->qk_rope_head_dim;
    mla__slot_layout(H, r + m, r, (float *)scratch, &s);
    mla__att_query(&s.a, pool->type, q_lat, (size_t)r, q_pe, (size_t)m, scale);
    mla__att_run(&s.a, &jb.src, t0, t1, lse);
    memcpy(o_lat, s.a.o, sizeof(float) * (size_t)H * r);
    return MLA_OK;
}

/* Checks shared by mla_forward and mla_decode; all before anything is written. */
static mla_result mla__check_call(const mla_config *c, const mla_layer_weights *w,
                                  const mla_pool *pool, mla_seq *const *seqs, int n_seq,
                                  int chunk, int layer, const float *x, const float *out,
                                  mla_mode mode, size_t ws_bytes, int *max_ctx) {
    mla_result rc = x ? mla_weights_validate(c, w, 0, NULL) : mla_config_validate(c, NULL);
    int i, k, need = 0;
    long ctx = 0;
    if (rc != MLA_OK) return rc;
    if (!x && (!w || !w->w_kvb || (c->kv_norm && !w->kv_norm))) return w ? MLA_ERR_NULL_WEIGHT : MLA_ERR_INVALID_ARG;
    if (!pool || !seqs || !out || n_seq <= 0 || chunk <= 0) return MLA_ERR_INVALID_ARG;
    if (mode != MLA_NAIVE && mode != MLA_ABSORBED) return MLA_ERR_INVALID_ARG;
    if (layer < 0 || layer >= pool->n_layers) return MLA_ERR_INVALID_ARG;
    if (pool->kv_lora_rank != c->kv_lora_rank || pool->qk_rope_head_dim != c->qk_rope_head_dim)
        return MLA_ERR_SHAPE;
    for (i = 0; i < n_seq; i++) {
        if (!seqs[i]->block_table && seqs[i]->max_blocks > 0) return MLA_ERR_INVALID_ARG;
        if (seqs[i]->len < 0) return MLA_ERR_INVALID_ARG;
        for (k = 0; k < i; k++) /* one sequence twice in a batch would race on its rows */
            if (seqs[k] == seqs[i] || (seqs[i]->block_table && seqs[k]->block_table == seqs[i]->block_table))
                return MLA_ERR_INVALID_ARG;
        if ((long)seqs[i]->len + chunk > mla__max_pos(c->max_seq_len)) return MLA_ERR_POSITION;
        if ((long)seqs[i]->len + chunk > ctx) ctx = (long)seqs[i]->len + chunk;
    }
    *max_ctx = (int)ctx;
    {
        size_t wb = mla_workspace_bytes(c, n_seq * chunk, (int)ctx, mode);
        if (!wb) return MLA_ERR_SHAPE; /* sizes past what can exist */
        if (ws_bytes < wb) return MLA_ERR_WORKSPACE;
    }
    if (x && !mla__all_finite(x, (size_t)n_seq * chunk * (size_t)c->dim)) return MLA_ERR_NONFINITE;
    for (i = 0; i < n_seq; i++) {
        int nb = mla__blocks_needed(pool, seqs[i], chunk);
        if (seqs[i]->n_blocks + nb > seqs[i]->max_blocks) return MLA_ERR_CACHE_FULL;
        need += nb;
    }
    if (need > pool->n_free) return MLA_ERR_CACHE_FULL;
    return MLA_OK;
}

/* Projections of T tokens: s->q (queries) and s->kv (latent rows, before
   the latent norm and RoPE, which mla__prepare applies). */
static void mla__project(const mla_config *c, const mla_layer_weights *w, const float *x,
                         int T, mla__scratch *s) {
    int H = c->n_heads, r = c->kv_lora_rank, m = c->qk_rope_head_dim, qd = mla__qk_dim(c), i;
    const float *bias_q = c->attn_bias ? w->b_q : NULL;
    if (c->q_lora_rank > 0) {
        mla_matmul(s->qa, x, w->w_qa, c->attn_bias ? w->b_qa : NULL, T, c->q_lora_rank, c->dim);
        if (c->q_norm)
            for (i = 0; i < T; i++)
                mla_rmsnorm(s->qa + (size_t)i * c->q_lora_rank, s->qa + (size_t)i * c->q_lora_rank,
                            w->q_norm, c->q_lora_rank, mla__eps(c));
        mla_matmul(s->q, s->qa, w->w_qb, NULL, T, H * qd, c->q_lora_rank);
    } else {
        mla_matmul(s->q, x, w->w_q, bias_q, T, H * qd, c->dim);
    }
    mla_matmul(s->kv, x, w->w_kva, c->attn_bias ? w->b_kva : NULL, T, r + m, c->dim);
}

/* s->kv: c normalised when kv_norm, k_pe roped; s->q: pe parts roped. Token
   i is at position seqs[i / chunk]->len + i % chunk. */
static void mla__prepare(const mla_config *c, const mla_layer_weights *w, int T, mla_seq *const *seqs,
                         int chunk, mla__scratch *s) {
    int H = c->n_heads, r = c->kv_lora_rank, m = c->qk_rope_head_dim;
    int dn = c->qk_nope_head_dim, qd = mla__qk_dim(c), i;
    float cos_scale;
    mla_rope_freqs(c, s->freq, &cos_scale);
    for (i = 0; i < T; i++) {
        int pos = seqs[i / chunk]->len + i % chunk;
        float *kv = s->kv + (size_t)i * (r + m);
        if (c->kv_norm) mla_rmsnorm(kv, kv, w->kv_norm, r, mla__eps(c));
        mla_rope_apply(kv + r, m, pos, s->freq, cos_scale, c->rope_layout);
        mla__rope_n(s->q + (size_t)i * H * qd + dn, (size_t)qd, H, m, pos, s->freq, cos_scale, c->rope_layout);
    }
}

#ifdef MLA__AVX2
static float mla__sum8(__m256 v) { /* the 8 lanes of v added */
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    return _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
}
#endif

/* y += a x and x . y for x in bf16 (w_kvb_bf16's rows) */
static void mla__axpy_bf16(float *y, float a, const uint16_t *x, int n) {
    int i = 0;
#ifdef MLA__AVX2
    __m256 va = _mm256_set1_ps(a);
    for (; i + 8 <= n; i += 8) {
        __m256i h = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(x + i)));
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_castsi256_ps(_mm256_slli_epi32(h, 16)),
                                                _mm256_loadu_ps(y + i)));
    }
#endif
    for (; i < n; i++) y[i] += a * mla_bf16_to_f32(x[i]);
}

static float mla__dot_bf16(const uint16_t *x, const float *y, int n) {
    float t = 0.0f;
    int i = 0;
#ifdef MLA__AVX2
    __m256 s0 = _mm256_setzero_ps(), s1 = s0;
    for (; i + 16 <= n; i += 16) {
        __m256i a = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(x + i)));
        __m256i b = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(x + i + 8)));
        s0 = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_slli_epi32(a, 16)), _mm256_loadu_ps(y + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_slli_epi32(b, 16)), _mm256_loadu_ps(y + i + 8), s1);
    }
    t = mla__sum8(_mm256_add_ps(s0, s1));
#endif
    for (; i < n; i++) t += mla_bf16_to_f32(x[i]) * y[i];
    return t;
}

/* y += a x and x . y for x as w_kvb_q8's rows: int8 codes, one scale per 32 */
static void mla__axpy_q8(float *y, float a, const int8_t *x, const float *sc, int n) {
    int b, i;
    for (b = 0; b < n; b += 32) {
        int e = n - b < 32 ? n : b + 32;
        float as = a * sc[b / 32];
        i = b;
#ifdef MLA__AVX2
        {
            __m256 va = _mm256_set1_ps(as);
            for (; i + 8 <= e; i += 8) {
                __m256 v = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(x + i))));
                _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, v, _mm256_loadu_ps(y + i)));
            }
        }
#endif
        for (; i < e; i++) y[i] += as * (float)x[i];
    }
}

static float mla__dot_q8(const int8_t *x, const float *sc, const float *y, int n) {
    float t = 0.0f;
    int b, i;
    for (b = 0; b < n; b += 32) {
        int e = n - b < 32 ? n : b + 32;
        float s = 0.0f;
        i = b;
#ifdef MLA__AVX2
        {
            __m256 acc = _mm256_setzero_ps();
            for (; i + 8 <= e; i += 8)
                acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(x + i)))),
                                      _mm256_loadu_ps(y + i), acc);
            s = mla__sum8(acc);
        }
#endif
        for (; i < e; i++) s += (float)x[i] * y[i];
        t += sc[b / 32] * s;
    }
    return t;
}

#ifdef MLA__AVX512
/* The same for a whole head at once (AVX-512): y [n] = sum_i a[i] X_i over
   `rows` rows of w_kvb_q8 (n values, scales nb apart), 64 values of y in
   registers across all rows; and y[i] = X_i . v for `rows` rows, one
   16-lane sum per row (the per-32 scales applied as vectors, reduced once).
   (maskz forms with a full mask: GCC 12's plain ones warn in C++.) */
static void mla__axpys_q8(float *y, const float *a, int rows, const int8_t *X, const float *sc, size_t nb, int n) {
    int c, i;
    for (c = 0; c < n; c += 64) {
        __mmask32 lo = mla__mask32(n - c), hi = mla__mask32(n - c - 32);
        __mmask16 m0 = (__mmask16)(lo & 0xffff), m1 = (__mmask16)(lo >> 16);
        __mmask16 m2 = (__mmask16)(hi & 0xffff), m3 = (__mmask16)(hi >> 16);
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0; /* (no array: registers) */
        for (i = 0; i < rows; i++) {
            const int8_t *x = X + (size_t)i * n + c;
            const float *si = sc + (size_t)i * nb + c / 32;
            __m512 s0 = _mm512_set1_ps(a[i] * si[0]), s1 = _mm512_set1_ps(a[i] * si[m2 ? 1 : 0]);
#define MLA__AX(acc, u, mk, sv)                                                                          \
    acc = _mm512_fmadd_ps(_mm512_maskz_cvtepi32_ps(0xffff, _mm512_maskz_cvtepi8_epi32(0xffff, _mm_maskz_loadu_epi8(mk, x + 16 * u))), sv, acc);
            MLA__AX(a0, 0, m0, s0) MLA__AX(a1, 1, m1, s0) MLA__AX(a2, 2, m2, s1) MLA__AX(a3, 3, m3, s1)
#undef MLA__AX
        }
        _mm512_mask_storeu_ps(y + c, m0, a0); _mm512_mask_storeu_ps(y + c + 16, m1, a1);
        _mm512_mask_storeu_ps(y + c + 32, m2, a2); _mm512_mask_storeu_ps(y + c + 48, m3, a3);
    }
}

static void mla__dots_q8(float *y, int rows, const int8_t *X, const float *sc, size_t nb, const float *v, int n) {
    int i, c;
    for (i = 0; i < rows; i++) {
        const int8_t *x = X + (size_t)i * n;
        __m512 acc = _mm512_setzero_ps();
        for (c = 0; c < n; c += 32) {
            int left = n - c;
            __mmask32 mk = mla__mask32(left);
            __mmask16 m0 = (__mmask16)(mk & 0xffff), m1 = (__mmask16)(mk >> 16);
            __m512 x0 = _mm512_maskz_cvtepi32_ps(0xffff, _mm512_maskz_cvtepi8_epi32(0xffff, _mm_maskz_loadu_epi8(m0, x + c)));
            __m512 x1 = _mm512_maskz_cvtepi32_ps(0xffff, _mm512_maskz_cvtepi8_epi32(0xffff, _mm_maskz_loadu_epi8(m1, x + c + 16)));
            __m512 t = _mm512_mul_ps(x0, _mm512_maskz_loadu_ps(m0, v + c));
            t = _mm512_fmadd_ps(x1, _mm512_maskz_loadu_ps(m1, v + c + 16), t);
            acc = _mm512_fmadd_ps(t, _mm512_set1_ps(sc[(size_t)i * nb + c / 32]), acc);
        }
        y[i] = mla__sum8(mla__half512(acc));
    }
}
#elif defined(MLA__AVX2)
/* The same at 256 bits (AVX2): 64 values of y in 8 registers across all
   rows (the rest of y, n % 64, row by row); and the dots of 4 rows at once,
   their 4 sums reduced together (rows to a multiple of 4 and n to one of 32;
   the rest by mla__dot_q8). On Zen 3, SmolLM2's shapes, 64 cached rows:
   MLA's whole fixed cost per layer 31.8 -> 21.6 us against one axpy or dot
   per W_kvb row (A/B medians). */
static void mla__axpys_q8(float *y, const float *a, int rows, const int8_t *X, const float *sc, size_t nb, int n) {
    int c, i;
    for (c = 0; c + 64 <= n; c += 64) {
        __m256 y0 = _mm256_setzero_ps(), y1 = y0, y2 = y0, y3 = y0, y4 = y0, y5 = y0, y6 = y0, y7 = y0;
        for (i = 0; i < rows; i++) {
            const int8_t *x = X + (size_t)i * n + c;
            const float *si = sc + (size_t)i * nb + c / 32;
            __m256 s0 = _mm256_set1_ps(a[i] * si[0]), s1 = _mm256_set1_ps(a[i] * si[1]);
#define MLA__AX(acc, u, sv) \
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(x + 8 * (u))))), sv, acc);
            MLA__AX(y0, 0, s0) MLA__AX(y1, 1, s0) MLA__AX(y2, 2, s0) MLA__AX(y3, 3, s0)
            MLA__AX(y4, 4, s1) MLA__AX(y5, 5, s1) MLA__AX(y6, 6, s1) MLA__AX(y7, 7, s1)
#undef MLA__AX
        }
        _mm256_storeu_ps(y + c, y0); _mm256_storeu_ps(y + c + 8, y1); _mm256_storeu_ps(y + c + 16, y2);
        _mm256_storeu_ps(y + c + 24, y3); _mm256_storeu_ps(y + c + 32, y4); _mm256_storeu_ps(y + c + 40, y5);
        _mm256_storeu_ps(y + c + 48, y6); _mm256_storeu_ps(y + c + 56, y7);
    }
    if (c < n) {
        memset(y + c, 0, sizeof(float) * (size_t)(n - c));
        for (i = 0; i < rows; i++) mla__axpy_q8(y + c, a[i], X + (size_t)i * n + c, sc + (size_t)i * nb + c / 32, n - c);
    }
}

static void mla__dots_q8(float *y, int rows, const int8_t *X, const float *sc, size_t nb, const float *v, int n) {
    int i = 0, c;
    if (n % 32 == 0)
        for (; i + 4 <= rows; i += 4) {
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            __m128 h;
            for (c = 0; c < n; c += 32) {
                __m256 v0 = _mm256_loadu_ps(v + c), v1 = _mm256_loadu_ps(v + c + 8);
                __m256 v2 = _mm256_loadu_ps(v + c + 16), v3 = _mm256_loadu_ps(v + c + 24), t;
#define MLA__X(row, u) _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(X + (size_t)(row) * n + c + 8 * (u)))))
#define MLA__DOT(acc, row)                                                                                 \
    t = _mm256_mul_ps(MLA__X(row, 0), v0); t = _mm256_fmadd_ps(MLA__X(row, 1), v1, t);                    \
    t = _mm256_fmadd_ps(MLA__X(row, 2), v2, t); t = _mm256_fmadd_ps(MLA__X(row, 3), v3, t);               \
    acc = _mm256_fmadd_ps(t, _mm256_set1_ps(sc[(size_t)(row) * nb + c / 32]), acc);
                MLA__DOT(a0, i) MLA__DOT(a1, i + 1) MLA__DOT(a2, i + 2) MLA__DOT(a3, i + 3)
#undef MLA__DOT
#undef MLA__X
            }
            a0 = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3)); /* lanes: rows 0-3, twice */
            h = _mm_add_ps(_mm256_castps256_ps128(a0), _mm256_extractf128_ps(a0, 1));
            _mm_storeu_ps(y + i, h);
        }
    for (; i < rows; i++) y[i] = mla__dot_q8(X + (size_t)i * n, sc + (size_t)i * nb, v, n);
}
#endif

/* q_lat [h][r] = W_uk^T q_nope per head (q [h][qd]); heads split over
   `threads` (a decode step's W_uk and W_uv are as many bytes as its latent
   rows up to a few hundred tokens: one thread alone would leave the others
   waiting) */
static void mla__absorb_q(const mla_config *c, const mla_layer_weights *w, const float *q, float *qlat,
                          int threads) {
    int H = c->n_heads, r = c->kv_lora_rank, dn = c->qk_nope_head_dim, dv = c->v_head_dim, qd = mla__qk_dim(c), j, i;
    size_t nb = (size_t)(r + 31) / 32; /* w_kvb_q8 scales per row */
    (void)threads; /* without OpenMP */
#ifdef _OPENMP
#pragma omp parallel for private(i) num_threads(threads) schedule(static) if (threads > 1)
#endif
    for (j = 0; j < H; j++) {
        const float *qn = q + (size_t)j * qd;
        size_t k0 = (size_t)j * (dn + dv) * r; /* head j's first W_uk row */
        float *ql = qlat + (size_t)j * r;
#ifdef MLA__AVX2
        if (w->w_kvb_q8) {
            size_t b, vb = (size_t)dv * r;
            mla__axpys_q8(ql, qn, dn, w->w_kvb_q8 + k0, w->w_kvb_q8_scale + k0 / r * nb, nb, r);
            /* head j's W_uv rows and scales, read by mla__absorb_o after the
               attention, start toward L2 now (2-4 % of the 1K layer, A/B) */
            for (b = 0; b < vb; b += 64) _mm_prefetch((const char *)(w->w_kvb_q8 + k0 + (size_t)dn * r) + b, _MM_HINT_T1);
            for (b = 0; b < 4 * dv * nb; b += 64) _mm_prefetch((const char *)(w->w_kvb_q8_scale + (k0 / r + dn) * nb) + b, _MM_HINT_T1);
            continue;
        }
#endif
        memset(ql, 0, sizeof(float) * (size_t)r);
        for (i = 0; i < dn; i++)
            if (w->w_kvb_q8)
                mla__axpy_q8(ql, qn[i], w->w_kvb_q8 + k0 + (size_t)i * r, w->w_kvb_q8_scale + (k0 / r + i) * nb, r);
            else if (w->w_kvb_bf16) mla__axpy_bf16(ql, qn[i], w->w_kvb_bf16 + k0 + (size_t)i * r, r);
            else mla__axpy(ql, qn[i], w->w_kvb + k0 + (size_t)i * r, r);
    }
}

/* o [h][d_v] = W_uv o_lat per head (o_lat [h][r]), heads over `threads` */
static void mla__absorb_o(const mla_config *c, const mla_layer_weights *w, const float *olat, float *o,
                          int threads) {
    int H = c->n_heads, r = c->kv_lora_rank, dn = c->qk_nope_head_dim, dv = c->v_head_dim, j, i;
    size_t nb = (size_t)(r + 31) / 32; /* w_kvb_q8 scales per row */
    (void)threads; /* without OpenMP */
#ifdef _OPENMP
#pragma omp parallel for private(i) num_threads(threads) schedule(static) if (threads > 1)
#endif
    for (j = 0; j < H; j++) {
        size_t v0 = ((size_t)j * (dn + dv) + dn) * r; /* head j's first W_uv row */
#ifdef MLA__AVX2
        if (w->w_kvb_q8) {
            mla__dots_q8(o + (size_t)j * dv, dv, w->w_kvb_q8 + v0, w->w_kvb_q8_scale + v0 / r * nb, nb, olat + (size_t)j * r, r);
            continue;
        }
#endif
        for (i = 0; i < dv; i++) {
            const float *ol = olat + (size_t)j * r;
            size_t row = v0 / r + i;
            o[(size_t)j * dv + i] = w->w_kvb_q8     ? mla__dot_q8(w->w_kvb_q8 + row * r, w->w_kvb_q8_scale + row * nb, ol, r)
                                  : w->w_kvb_bf16 ? mla__dot_bf16(w->w_kvb_bf16 + row * r, ol, r)
                                                  : mla__dot(w->w_kvb + row * r, ol, r);
        }
    }
}

/* Absorbed attention of one token: q [h][qd] -> o [h][d_v], in the slot at
   base (slot i at base + i*sstride helps when threads > 1). */
static void mla__attend_absorbed(const mla_config *c, const mla_layer_weights *w,
                                 const mla_pool *pool, const mla_seq *seq, int layer,
                                 int n_ctx, const float *q, float *o, float *base, size_t sstride,
                                 int threads) {
    int H = c->n_heads, r = c->kv_lora_rank, m = c->qk_rope_head_dim, dn = c->qk_nope_head_dim;
    int qd = mla__qk_dim(c);
    mla__slot s;
    mla__job jb;
    mla__slot_layout(H, r + m, r, base, &s);
    mla__absorb_q(c, w, q, s.qlat, threads);
    memset(&jb, 0, sizeof jb);
    jb.qa = s.qlat; jb.lda = (size_t)r; jb.qb = q + dn; jb.ldb = (size_t)qd; /* q_pe: in place */
    jb.src.type = pool->type; jb.src.pool = pool; jb.src.seq = seq; jb.src.layer = layer;
    jb.n = n_ctx; jb.out = s.olat;
    mla__attend_jobs(&jb, 1, H, r + m, r, mla_softmax_scale(c), base, sstride, threads);
    mla__absorb_o(c, w, s.olat, o, threads);
}

/* Absorbed attention of G consecutive tokens of one sequence at positions
   p0 .. p0+G-1 (queries q [G][h][qd] -> o [G][h][d_v]): the rows before p0,
   which all of them see, in one pass as G*h heads; each token's own rows
   p0 .. its position as a second part; the two merged by their log-sum-exp.
   Scratch: one thread slot (mla__group_floats past an h-head slot). */
static void mla__attend_group(const mla_config *c, const mla_layer_weights *w, const mla_pool *pool,
                              const mla_seq *seq, int layer, int p0, int G, const float *q, float *o,
                              float *base) {
    int H = c->n_heads, r = c->kv_lora_rank, m = c->qk_rope_head_dim, dn = c->qk_nope_head_dim;
    int qd = mla__qk_dim(c), g, j;
    float scale = mla_softmax_scale(c), *parts, *lse2;
    size_t small = mla__slot_layout(H, r + m, r, NULL, NULL);
    mla__slot one, all;
    mla__rows src;
    memset(&src, 0, sizeof src);
    src.type = pool->type; src.pool = pool; src.seq = seq; src.layer = layer;
    mla__slot_layout(H, r + m, r, base, &one);
    mla__slot_layout(G * H, r + m, r, base + small, &all);
    parts = base + small + mla__slot_layout(G * H, r + m, r, NULL, NULL); /* [2][H][r] */
    lse2 = parts + 2 * (size_t)H * r;                                      /* [2][H]    */
    for (g = 0; g < G; g++) mla__absorb_q(c, w, q + (size_t)g * H * qd, all.qlat + (size_t)g * H * r, 1);
    mla__att_query(&all.a, pool->type, all.qlat, (size_t)r, q + dn, (size_t)qd, scale); /* q_pe in place */
    mla__att_run(&all.a, &src, 0, p0, all.lse);
    for (g = 0; g < G; g++) {
        const float *qg = q + (size_t)g * H * qd;
        mla__att_query(&one.a, pool->type, all.qlat + (size_t)g * H * r, (size_t)r, qg + dn, (size_t)qd, scale);
        mla__att_run(&one.a, &src, p0, p0 + g + 1, lse2 + H);
        memcpy(parts, all.a.o + (size_t)g * H * r, sizeof(float) * (size_t)H * r);
        memcpy(parts + (size_t)H * r, one.a.o, sizeof(float) * (size_t)H * r);
        for (j = 0; j < H; j++) lse2[j] = all.lse[g * H + j];
        mla__merge(H, r, 2, parts, (size_t)H * r, lse2, (size_t)H, one.olat, NULL);
        mla__absorb_o(c, w, one.olat, o + (size_t)g * H * c->v_head_dim, 1);
    }
}

/* Naive attention of `chunk` tokens of one sequence: decompress keys and
   values of the whole context once, then ordinary multi-head attention. */
static void mla__attend_naive(const mla_config *c, const mla_layer_weights *w,
                              const mla_pool *pool, const mla_seq *seq, int layer, int chunk,
                              const float *q, float *o, mla__scratch *s) {
    int H = c->n_heads, r = c->kv_lora_rank, m = c->qk_rope_head_dim, dn = c->qk_nope_head_dim;
    int dv = c->v_head_dim, qd = mla__qk_dim(c), ctx = seq->len + chunk, t, j, i;
    float scale = mla_softmax_scale(c);
    for (t = 0; t < ctx; t++) {
        const float *row = mla__load_row(mla_seq_row(pool, seq, layer, t), pool->type, s->row, r, m);
        memcpy(s->ckv + (size_t)t * r, row, sizeof(float) * (size_t)r);
        memcpy(s->kpe + (size_t)t * m, row + r, sizeof(float) * (size_t)m);
    }
    mla_matmul(s->kvd, s->ckv, w->w_kvb, NULL, ctx, H * (dn + dv), r);
    for (t = 0; t < ctx; t++)
        for (j = 0; j < H; j++) {
            const float *kv = s->kvd + ((size_t)t * H + j) * (dn + dv);
            float *kf = s->kf + ((size_t)t * H + j) * qd;
            memcpy(kf, kv, sizeof(float) * (size_t)dn);
            memcpy(kf + dn, s->kpe + (size_t)t * m, sizeof(float) * (size_t)m);
            memcpy(s->vf + ((size_t)t * H + j) * dv, kv + dn, sizeof(float) * (size_t)dv);
        }
#ifdef _OPENMP
#pragma omp parallel for private(i) schedule(static) if ((long)chunk * ctx * H > 16384)
#endif
    for (j = 0; j < H; j++) /* heads are independent: each has its own row of p */
        for (i = 0; i < chunk; i++)
            mla__attend_one(q + ((size_t)i * H + j) * qd, s->kf + (size_t)j * qd, (size_t)H * qd, qd,
                            s->vf + (size_t)j * dv, (size_t)H * dv, dv, seq->len + i + 1, scale,
                            s->p + (size_t)j * ctx, o + ((size_t)i * H + j) * dv);
}

/* n_seq sequences, `chunk` new tokens each (token i belongs to seqs[i/chunk]).
   x given: the whole block, x -> out. x NULL: the attention core, the
   caller's projections q, kv (non-NULL) -> out = the heads' outputs (before W_o). */
static mla_result mla__run(const mla_config *c, const mla_layer_weights *w, mla_pool *pool,
                           mla_seq *const *seqs, int n_seq, int chunk, int layer, const float *x,
                           float *q, float *kv, float *out, mla_mode mode, void *ws, size_t ws_bytes) {
    mla__scratch s;
    int T = n_seq * chunk, H, r, m, qd, dv, i, b, max_ctx = 0;
    mla_result rc;
    if (!ws) return MLA_ERR_INVALID_ARG;
    rc = mla__check_call(c, w, pool, seqs, n_seq, chunk, layer, x, out, mode, ws_bytes, &max_ctx);
    if (rc != MLA_OK) return rc;
    for (b = 0; b < n_seq; b++) { /* cannot fail: checked above */
        rc = mla_seq_reserve(pool, seqs[b], chunk);
        MLA_ASSERT(rc == MLA_OK);
    }
    H = c->n_heads; r = c->kv_lora_rank; m = c->qk_rope_head_dim; qd = mla__qk_dim(c); dv = c->v_head_dim;
    mla__scratch_layout(c, T, max_ctx, mode, (float *)ws, &s);
    if (x) {
        mla__project(c, w, x, T, &s);
    } else {
        s.q = q; s.kv = kv; s.o = out;
    }
    mla__prepare(c, w, T, seqs, chunk, &s);
    for (i = 0; i < T; i++) {
        const mla_seq *sq = seqs[i / chunk];
        mla__store_row(mla_seq_row(pool, sq, layer, sq->len + i % chunk), pool->type,
                       s.kv + (size_t)i * (r + m), r, m);
    }
    for (b = 0; b < n_seq; b++) {
        const float *q = s.q + (size_t)b * chunk * H * qd;
        float *o = s.o + (size_t)b * chunk * H * dv;
        if (mode == MLA_NAIVE) mla__attend_naive(c, w, pool, seqs[b], layer, chunk, q, o, &s);
    }
    if (mode == MLA_ABSORBED && mla__group(c, chunk) > 1) {
        /* prefill: groups of G consecutive tokens of a sequence, one thread each */
        int G = mla__group(c, chunk), per = (chunk + G - 1) / G, n = n_seq * per;
#ifdef _OPENMP
#pragma omp parallel for num_threads(mla__threads()) schedule(dynamic, 1) if (n > 1)
#endif
        for (i = 0; i < n; i++) {
            const mla_seq *sq = seqs[i / per];
            int g0 = i % per * G, ng = mla__imin(G, chunk - g0);
            size_t t0 = (size_t)(i / per) * chunk + g0;
            mla__attend_group(c, w, pool, sq, layer, sq->len + g0, ng, s.q + t0 * H * qd, s.o + t0 * H * dv,
                              s.slots + mla__tid() * s.sstride);
        }
    } else if (mode == MLA_ABSORBED) {
        /* many tokens: one thread each; few: each token's context split over
           threads (from outside any parallel region: a split-KV team nested in
           an inactive region is a new team per call, measured 6x slower) */
        int threads = mla__threads();
        if (T >= 4 * threads && threads > 1) {
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
#endif
            for (i = 0; i < T; i++) {
                const mla_seq *sq = seqs[i / chunk];
                mla__attend_absorbed(c, w, pool, sq, layer, sq->len + i % chunk + 1, s.q + (size_t)i * H * qd,
                                     s.o + (size_t)i * H * dv, s.slots + mla__tid() * s.sstride, s.sstride, 1);
            }
        } else {
            for (i = 0; i < T; i++) {
                const mla_seq *sq = seqs[i / chunk];
                mla__attend_absorbed(c, w, pool, sq, layer, sq->len + i % chunk + 1, s.q + (size_t)i * H * qd,
                                     s.o + (size_t)i * H * dv, s.slots, s.sstride, threads);
            }
        }
    }
    if (x) mla_matmul(out, s.o, w->w_o, w->b_o, T, c->dim, H * dv);
    return MLA_OK;
}

MLADEF mla_result mla_forward(const mla_config *c, const mla_layer_weights *w, mla_pool *pool,
                              mla_seq *seq, int layer, const float *x, int T, float *out,
                              mla_mode mode, void *ws, size_t ws_bytes) {
    if (!seq || T <= 0) return MLA_ERR_INVALID_ARG;
    if (!x) return MLA_ERR_INVALID_ARG;
    return mla__run(c, w, pool, &seq, 1, T, layer, x, NULL, NULL, out, mode, ws, ws_bytes);
}

MLADEF mla_result mla_decode(const mla_config *c, const mla_layer_weights *w, mla_pool *pool,
                             mla_seq *const *seqs, int B, int layer, const float *x, float *out,
                             void *ws, size_t ws_bytes) {
    int i;
    if (!seqs || B <= 0) return MLA_ERR_INVALID_ARG;
    for (i = 0; i < B; i++)
        if (!seqs[i]) return MLA_ERR_INVALID_ARG;
    if (!x) return MLA_ERR_INVALID_ARG;
    return mla__run(c, w, pool, seqs, B, 1, layer, x, NULL, NULL, out, MLA_ABSORBED, ws, ws_bytes);
}

MLADEF mla_result mla_attend_projected(const mla_config *c, const mla_layer_weights *w, mla_pool *pool,
                                       mla_seq *const *seqs, int n_seq, int chunk, int layer, float *q,
                                       float *kv, float *o, mla_mode mode, void *ws, size_t ws_bytes) {
    int i;
    if (!seqs || !q || !kv || n_seq <= 0 || chunk <= 0) return MLA_ERR_INVALID_ARG;
    for (i = 0; i < n_seq; i++)
        if (!seqs[i]) return MLA_ERR_INVALID_ARG;
    if (c && mla_config_validate(c, NULL) == MLA_OK &&
        (!mla__all_finite(q, (size_t)n_seq * chunk * c->n_heads * mla__qk_dim(c)) ||
         !mla__all_finite(kv, (size_t)n_seq * chunk * (c->kv_lora_rank + c->qk_rope_head_dim))))
        return MLA_ERR_NONFINITE;
    return mla__run(c, w, pool, seqs, n_seq, chunk, layer, NULL, q, kv, o, mode, ws, ws_bytes);
}

/* ---------------------------------------------------------------------- */
/* plain GQA / MHA attention (the source of a conversion, and a reference) */
/* ---------------------------------------------------------------------- */
MLADEF mla_result mla_gqa_config_validate(const mla_gqa_config *c, const char **bad_field) {
    if (bad_field) *bad_field = NULL;
    if (!c) return MLA_ERR_INVALID_ARG;
    if (c->dim <= 0) MLA__BAD("dim");
    if (c->n_heads <= 0) MLA__BAD("n_heads");
    if (c->n_kv_heads <= 0 || c->n_heads % c->n_kv_heads) MLA__BAD("n_kv_heads");
    if (c->head_dim <= 0 || c->head_dim % 2) MLA__BAD("head_dim");
    if (c->dim > MLA__MAX_DIM) MLA__BAD("dim");
    if ((double)c->n_heads * c->head_dim > MLA__MAX_DIM) MLA__BAD("n_heads");
    if (c->rope_theta < 0 || c->rope_theta == 1.0f || !mla__finite(c->rope_theta)) MLA__BAD("rope_theta");
    if (c->rope_layout != MLA_ROPE_INTERLEAVED && c->rope_layout != MLA_ROPE_HALF_SPLIT) MLA__BAD("rope_layout");
    if (c->softmax_scale < 0 || c->softmax_scale > 1e4f || !mla__finite(c->softmax_scale))
        MLA__BAD("softmax_scale"); /* real ones are ~1/sqrt(head dim); 3e38 overflowed every score */
    if (c->attn_bias != 0 && c->attn_bias != 1) MLA__BAD("attn_bias");
    if (c->max_seq_len < 0) MLA__BAD("max_seq_len");
    return MLA_OK;
}

MLADEF mla_result mla_gqa_cache_init(mla_gqa_cache *c, int n_layers, int capacity, int kv_dim) {
    size_t n;
    if (!c) return MLA_ERR_INVALID_ARG;
    memset(c, 0, sizeof *c);
    if (n_layers <= 0 || capacity <= 0 || kv_dim <= 0) return MLA_ERR_INVALID_ARG;
    n = mla__mul(mla__mul(mla__mul((size_t)n_layers, (size_t)capacity), (size_t)kv_dim), sizeof(float));
    if (n >= MLA__HUGE) return MLA_ERR_INVALID_ARG;
    n /= sizeof(float);
    c->k = (float *)MLA_MALLOC(sizeof(float) * n);
    c->v = (float *)MLA_MALLOC(sizeof(float) * n);
    if (!c->k || !c->v) {
        mla_gqa_cache_free(c);
        return MLA_ERR_OUT_OF_MEMORY;
    }
    c->n_layers = n_layers; c->capacity = capacity; c->kv_dim = kv_dim;
    return MLA_OK;
}

MLADEF void mla_gqa_cache_free(mla_gqa_cache *c) {
    if (!c) return;
    if (c->k) MLA_FREE(c->k);
    if (c->v) MLA_FREE(c->v);
    memset(c, 0, sizeof *c);
}

/* q [T][h*d], k, v [T][g*d], o [T][h*d], freq [d/2], p: attention slots */
static size_t mla__gqa_layout(const mla_gqa_config *c, int T, int ctx, float *base, float **q,
                              float **k, float **v, float **o, float **freq, float **p) {
    size_t hd = (size_t)c->n_heads * c->head_dim, L = (size_t)c->n_kv_heads * c->head_dim, off = 0;
    *q = mla__carve(base, &off, (size_t)T * hd);
    *k = mla__carve(base, &off, (size_t)T * L);
    *v = mla__carve(base, &off, (size_t)T * L);
    *o = mla__carve(base, &off, (size_t)T * hd);
    *freq = mla__carve(base, &off, (size_t)c->head_dim / 2);
    *p = mla__carve(base, &off, MLA_MAX_THREADS * mla__slot_layout(c->n_heads / c->n_kv_heads, c->head_dim,
                                                                   c->head_dim, NULL, NULL));
    (void)ctx;
    return off;
}

/* GQA attention of T tokens (positions len0..) over cached k and v rows
   (group g's rows gs bytes after group 0's, each row rs bytes after the one
   before: token-major [pos][G][d] has gs = d values, rs = G d; head-major
   [G][pos][d], gs = capacity d, rs = d): q [T][H][d] -> o [T][H][d], the
   same kernel as MLA's, the groups of a token in one pass over the rows (up
   to MLA_MAX_THREADS / threads of them per pass). slots: MLA_MAX_THREADS
   slots. */
static void mla__gqa_attend(int H, int G, int d, const float *q, int T, int len0, mla_dtype type,
                            const char *k, const char *v, size_t rs, size_t gs, float scale, float *slots, float *o) {
    int grp = H / G, threads = mla__threads(), ng = mla__imin(G, MLA_MAX_THREADS / threads);
    int nb = (G + ng - 1) / ng, items = T * nb >= 4 * threads, i, b; /* nb passes per token */
    size_t ss = mla__slot_layout(grp, d, d, NULL, NULL);
    mla__job jb;
    memset(&jb, 0, sizeof jb);
    jb.lda = (size_t)d; jb.src.type = type; jb.src.ks = jb.src.vs = rs;
    jb.gq = jb.go = (size_t)grp * d; jb.gkv = gs;
    /* job of token t, pass b: groups b*ng .. */
#define MLA__GQA_JOB(jj, t, b)                                                                          \
    (jj) = jb; (jj).ng = mla__imin(ng, G - (b) * ng);                                                   \
    (jj).qa = q + ((size_t)(t) * H + (size_t)(b) * ng * grp) * d; (jj).out = o + ((jj).qa - q);           \
    (jj).src.k = k + (size_t)(b) * ng * jb.gkv; (jj).src.v = v + (size_t)(b) * ng * jb.gkv;             \
    (jj).n = len0 + (t) + 1;
    if (items) { /* many (token, pass) pairs: one thread each */
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1) if (threads > 1)
#endif
        for (i = 0; i < T * nb; i++) {
            mla__job one;
            MLA__GQA_JOB(one, i / nb, i % nb)
            mla__attend_jobs(&one, 1, grp, d, d, scale, slots + (size_t)mla__tid() * ng * ss, ss, 1);
        }
        return;
    }
    for (i = 0; i < T; i++) /* few: the passes of a token together, rows split over threads */
        for (b = 0; b < nb; b += MLA_MAX_THREADS) {
            mla__job jobs[MLA_MAX_THREADS];
            int nj = mla__imin(MLA_MAX_THREADS, nb - b), u;
            for (u = 0; u < nj; u++) { MLA__GQA_JOB(jobs[u], i, b + u) }
            mla__attend_jobs(jobs, nj, grp, d, d, scale, slots, ss, threads);
        }
#undef MLA__GQA_JOB
}

MLADEF size_t mla_gqa_workspace_bytes(const mla_gqa_config *c, int max_tokens, int max_ctx) {
    float *q, *k, *v, *o, *f, *p;
    size_t n;
    if (!c || mla_gqa_config_validate(c, NULL) != MLA_OK || max_tokens <= 0 || max_ctx <= 0) return 0;
    n = mla__gqa_layout(c, max_tokens, max_ctx, NULL, &q, &k, &v, &o, &f, &p);
    return n >= MLA__HUGE / sizeof(float) ? 0 : sizeof(float) * n;
}

/* a GQA layer's RoPE inverse frequencies [d/2]: its table, or theta */
static void mla__gqa_freqs(const mla_gqa_config *c, float *freq) {
    int i, d = c->head_dim;
    double theta = c->rope_theta > 0 ? c->rope_theta : 10000.0;
    for (i = 0; i < d / 2; i++) freq[i] = c->rope_freqs ? c->rope_freqs[i] : (float)pow(theta, -2.0 * i / d);
}

/* Checks of mla_gqa_forward / mla_gqa_attend_projected, before anything is written */
static mla_result mla__gqa_check(const mla_gqa_config *c, const mla_gqa_cache *kc, int layer, int T,
                                 size_t ws_bytes) {
    mla_result rc = mla_gqa_config_validate(c, NULL);
    size_t wb;
    if (rc != MLA_OK) return rc;
    if (!kc || T <= 0) return MLA_ERR_INVALID_ARG;
    if (layer < 0 || layer >= kc->n_layers) return MLA_ERR_INVALID_ARG;
    if (kc->kv_dim != c->n_kv_heads * c->head_dim) return MLA_ERR_SHAPE;
    if (kc->len < 0) return MLA_ERR_INVALID_ARG;
    if ((long)kc->len + T > mla__max_pos(c->max_seq_len)) return MLA_ERR_POSITION;
    if ((long)kc->len + T > kc->capacity) return MLA_ERR_CACHE_FULL;
    if (!(wb = mla_gqa_workspace_bytes(c, T, kc->len + T))) return MLA_ERR_SHAPE;
    if (ws_bytes < wb) return MLA_ERR_WORKSPACE;
    return MLA_OK;
}

/* RoPE on q [T][h*d] and k [T][g*d] (in place), rows appended, attention -> o */
static void mla__gqa_core(const mla_gqa_config *c, mla_gqa_cache *kc, int layer, float *q, float *k,
                          const float *v, int T, float *o, float *ws) {
    float *q0, *k0, *v0, *o0, *freq, *p;
    int H = c->n_heads, G = c->n_kv_heads, d = c->head_dim, L = G * d, i;
    size_t base = (size_t)layer * kc->capacity * L;
    float scale = c->softmax_scale > 0 ? c->softmax_scale : (float)(1.0 / sqrt((double)d));
    mla__gqa_layout(c, T, kc->len + T, ws, &q0, &k0, &v0, &o0, &freq, &p);
    mla__gqa_freqs(c, freq);
    for (i = 0; i < T; i++) {
        int pos = kc->len + i;
        mla__rope_n(q + (size_t)i * H * d, (size_t)d, H, d, pos, freq, 1.0f, c->rope_layout);
        mla__rope_n(k + (size_t)i * G * d, (size_t)d, G, d, pos, freq, 1.0f, c->rope_layout);
        memcpy(kc->k + base + (size_t)pos * L, k + (size_t)i * L, sizeof(float) * (size_t)L);
        memcpy(kc->v + base + (size_t)pos * L, v + (size_t)i * L, sizeof(float) * (size_t)L);
    }
    mla__gqa_attend(H, G, d, q, T, kc->len, MLA_F32, (const char *)(kc->k + base), (const char *)(kc->v + base),
                    sizeof(float) * (size_t)L, sizeof(float) * (size_t)d, scale, p, o);
}

MLADEF mla_result mla_gqa_forward(const mla_gqa_config *c, const mla_gqa_weights *w,
                                  mla_gqa_cache *kc, int layer, const float *x, int T,
                                  float *out, void *ws, size_t ws_bytes) {
    float *q, *k, *v, *o, *freq, *p;
    int H, L;
    mla_result rc = mla__gqa_check(c, kc, layer, T, ws_bytes);
    if (rc != MLA_OK) return rc;
    if (!w || !x || !out || !ws) return MLA_ERR_INVALID_ARG;
    if (!w->w_q || !w->w_k || !w->w_v || !w->w_o) return MLA_ERR_NULL_WEIGHT;
    if (c->attn_bias && (!w->b_q || !w->b_k || !w->b_v)) return MLA_ERR_NULL_WEIGHT;
    if (!mla__all_finite(x, (size_t)T * c->dim)) return MLA_ERR_NONFINITE;
    H = c->n_heads; L = c->n_kv_heads * c->head_dim;
    mla__gqa_layout(c, T, kc->len + T, (float *)ws, &q, &k, &v, &o, &freq, &p);
    mla_matmul(q, x, w->w_q, c->attn_bias ? w->b_q : NULL, T, H * c->head_dim, c->dim);
    mla_matmul(k, x, w->w_k, c->attn_bias ? w->b_k : NULL, T, L, c->dim);
    mla_matmul(v, x, w->w_v, c->attn_bias ? w->b_v : NULL, T, L, c->dim);
    mla__gqa_core(c, kc, layer, q, k, v, T, o, (float *)ws);
    mla_matmul(out, o, w->w_o, w->b_o, T, c->dim, H * c->head_dim);
    return MLA_OK;
}

MLADEF mla_result mla_gqa_attend_projected(const mla_gqa_config *c, mla_gqa_cache *kc, int layer,
                                           float *q, float *k, float *v, int T, float *o,
                                           void *ws, size_t ws_bytes) {
    size_t L;
    mla_result rc = mla__gqa_check(c, kc, layer, T, ws_bytes);
    if (rc != MLA_OK) return rc;
    if (!q || !k || !v || !o || !ws) return MLA_ERR_INVALID_ARG;
    L = (size_t)c->n_kv_heads * c->head_dim;
    if (!mla__all_finite(q, (size_t)T * c->n_heads * c->head_dim) || !mla__all_finite(k, (size_t)T * L) ||
        !mla__all_finite(v, (size_t)T * L))
        return MLA_ERR_NONFINITE;
    mla__gqa_core(c, kc, layer, q, k, v, T, o, (float *)ws);
    return MLA_OK;
}

/* ====================================================================== */
/* 5. conversion                                                            */
/* ====================================================================== */
#ifndef MLA_NO_CONVERT
/* ---- symmetric eigendecomposition: Householder to tridiagonal, then
   implicit QL with Wilkinson-style shifts (the EISPACK tred2/tql2 scheme) ---- */
static void mla__tridiag(int n, double *V, double *d, double *e) {
    int i, j, k;
    for (j = 0; j < n; j++) d[j] = V[(size_t)(n - 1) * n + j];
    for (i = n - 1; i > 0; i--) { /* reduce row i */
        double scale = 0.0, h = 0.0;
        for (k = 0; k < i; k++) scale += fabs(d[k]);
        if (scale == 0.0) {
            e[i] = d[i - 1];
            for (j = 0; j < i; j++) {
                d[j] = V[(size_t)(i - 1) * n + j];
                V[(size_t)i * n + j] = 0.0;
                V[(size_t)j * n + i] = 0.0;
            }
        } else {
            double f, g, hh;
            for (k = 0; k < i; k++) { d[k] /= scale; h += d[k] * d[k]; }
            f = d[i - 1];
            g = f > 0 ? -sqrt(h) : sqrt(h);
            e[i] = scale * g;
            h -= f * g;
            d[i - 1] = f - g;
            for (j = 0; j < i; j++) e[j] = 0.0;
            for (j = 0; j < i; j++) {
                f = d[j];
                V[(size_t)j * n + i] = f;
                g = e[j] + V[(size_t)j * n + j] * f;
                for (k = j + 1; k <= i - 1; k++) {
                    g += V[(size_t)k * n + j] * d[k];
                    e[k] += V[(size_t)k * n + j] * f;
                }
                e[j] = g;
            }
            f = 0.0;
            for (j = 0; j < i; j++) { e[j] /= h; f += e[j] * d[j]; }
            hh = f / (h + h);
            for (j = 0; j < i; j++) e[j] -= hh * d[j];
            for (j = 0; j < i; j++) {
                f = d[j]; g = e[j];
                for (k = j; k <= i - 1; k++) V[(size_t)k * n + j] -= f * e[k] + g * d[k];
                d[j] = V[(size_t)(i - 1) * n + j];
                V[(size_t)i * n + j] = 0.0;
            }
        }
        d[i] = h;
    }
    for (i = 0; i < n - 1; i++) { /* accumulate the transformations */
        double h = d[i + 1];
        V[(size_t)(n - 1) * n + i] = V[(size_t)i * n + i];
        V[(size_t)i * n + i] = 1.0;
        if (h != 0.0) {
            for (k = 0; k <= i; k++) d[k] = V[(size_t)k * n + i + 1] / h;
            for (j = 0; j <= i; j++) {
                double g = 0.0;
                for (k = 0; k <= i; k++) g += V[(size_t)k * n + i + 1] * V[(size_t)k * n + j];
                for (k = 0; k <= i; k++) V[(size_t)k * n + j] -= g * d[k];
            }
        }
        for (k = 0; k <= i; k++) V[(size_t)k * n + i + 1] = 0.0;
    }
    for (j = 0; j < n; j++) {
        d[j] = V[(size_t)(n - 1) * n + j];
        V[(size_t)(n - 1) * n + j] = 0.0;
    }
    V[(size_t)(n - 1) * n + n - 1] = 1.0;
    e[0] = 0.0;
}

static int mla__tridiag_ql(int n, double *V, double *d, double *e) {
    int i, k, l, m, iter;
    double f = 0.0, tst1 = 0.0, eps = 2.220446049250313e-16;
    for (i = 1; i < n; i++) e[i - 1] = e[i];
    e[n - 1] = 0.0;
    for (l = 0; l < n; l++) {
        tst1 = fmax(tst1, fabs(d[l]) + fabs(e[l]));
        m = l;
        while (m < n - 1 && fabs(e[m]) > eps * tst1) m++;
        if (m > l) {
            iter = 0;
            do {
                double g = d[l], p = (d[l + 1] - g) / (2.0 * e[l]), r = hypot(p, 1.0), dl1, h;
                double c = 1.0, c2 = 1.0, c3 = 1.0, el1 = e[l + 1], s = 0.0, s2 = 0.0;
                if (++iter > 60) return -1;
                if (p < 0) r = -r;
                d[l] = e[l] / (p + r);
                d[l + 1] = e[l] * (p + r);
                dl1 = d[l + 1];
                h = g - d[l];
                for (i = l + 2; i < n; i++) d[i] -= h;
                f += h;
                p = d[m];
                for (i = m - 1; i >= l; i--) {
                    c3 = c2; c2 = c; s2 = s;
                    g = c * e[i];
                    h = c * p;
                    r = hypot(p, e[i]);
                    e[i + 1] = s * r;
                    s = e[i] / r;
                    c = p / r;
                    p = c * d[i] - s * g;
                    d[i + 1] = h + s * (c * g + s * d[i]);
                    for (k = 0; k < n; k++) {
                        double vk = V[(size_t)k * n + i + 1];
                        V[(size_t)k * n + i + 1] = s * V[(size_t)k * n + i] + c * vk;
                        V[(size_t)k * n + i] = c * V[(size_t)k * n + i] - s * vk;
                    }
                }
                p = -s * s2 * c3 * el1 * e[l] / dl1;
                e[l] = s * p;
                d[l] = c * p;
            } while (fabs(e[l]) > eps * tst1);
        }
        d[l] += f;
        e[l] = 0.0;
    }
    return 0;
}

MLADEF mla_result mla_eigh(int n, double *a, double *w) {
    double *e;
    int i, j, k;
    if (!a || !w || n <= 0) return MLA_ERR_INVALID_ARG;
    for (i = 0; i < n * n; i++)
        if (!(a[i] - a[i] == 0.0)) return MLA_ERR_NONFINITE;
    if (n == 1) { w[0] = a[0]; a[0] = 1.0; return MLA_OK; }
    e = (double *)MLA_MALLOC(sizeof(double) * (size_t)n);
    if (!e) return MLA_ERR_OUT_OF_MEMORY;
    for (i = 0; i < n; i++) /* use the lower triangle, symmetrised */
        for (j = 0; j < i; j++) a[(size_t)j * n + i] = a[(size_t)i * n + j];
    mla__tridiag(n, a, w, e);
    k = mla__tridiag_ql(n, a, w, e);
    MLA_FREE(e);
    if (k) return MLA_ERR_NO_CONVERGENCE;
    for (i = 0; i < n - 1; i++) { /* selection sort, descending, columns follow */
        int best = i;
        for (j = i + 1; j < n; j++) if (w[j] > w[best]) best = j;
        if (best != i) {
            double t = w[i];
            w[i] = w[best]; w[best] = t;
            for (k = 0; k < n; k++) {
                t = a[(size_t)k * n + i];
                a[(size_t)k * n + i] = a[(size_t)k * n + best];
                a[(size_t)k * n + best] = t;
            }
        }
    }
    return MLA_OK;
}

/* C = A B for row-major double matrices with leading dimensions: C [n][p],
   A [n][k], B [k][p]. The conversion's small dense products. */
static void mla__dmul(double *C, int ldc, const double *A, int lda, const double *B, int ldb, int n, int k, int p) {
    int i, j, l;
    for (i = 0; i < n; i++)
        for (j = 0; j < p; j++) {
            double acc = 0.0;
            for (l = 0; l < k; l++) acc += A[(size_t)i * lda + l] * B[(size_t)l * ldb + j];
            C[(size_t)i * ldc + j] = acc;
        }
}

/* A += damp * mean(diag A) * I: the damping every second moment gets before
   an eigendecomposition. An all-zero block (no signal: a dead head, no
   calibration tokens) becomes I, so its inverse square root stays finite. */
static void mla__damp(double *A, int n, double damp) {
    double mean = 0.0;
    int i;
    for (i = 0; i < n; i++) mean += A[(size_t)i * n + i] / n;
    for (i = 0; i < n; i++) A[(size_t)i * n + i] += mean > 0 ? damp * mean : 1.0;
}

/* ---- calibration ---- */
MLADEF mla_result mla_calib_init(mla_calib *c, int dim) {
    if (!c || dim <= 0) return MLA_ERR_INVALID_ARG;
    memset(c, 0, sizeof *c);
    c->dim = dim;
    c->xx = (double *)MLA_MALLOC(sizeof(double) * (size_t)dim * dim);
    c->sx = (double *)MLA_MALLOC(sizeof(double) * (size_t)dim);
    if (!c->xx || !c->sx) { mla_calib_free(c); return MLA_ERR_OUT_OF_MEMORY; }
    memset(c->xx, 0, sizeof(double) * (size_t)dim * dim);
    memset(c->sx, 0, sizeof(double) * (size_t)dim);
    return MLA_OK;
}

MLADEF void mla_calib_free(mla_calib *c) {
    if (!c) return;
    if (c->xx) MLA_FREE(c->xx);
    if (c->sx) MLA_FREE(c->sx);
    if (c->att) MLA_FREE(c->att);
    c->xx = c->sx = c->att = NULL;
}

MLADEF mla_result mla_calib_attention(mla_calib *c, const mla_gqa_config *g, const mla_gqa_weights *w,
                                      const float *x, int T) {
    int H, G, d, L, grp, j, t, u, i;
    float *q, *k, *freq, scale;
    double *p, *hist;
    mla_result rc = mla_gqa_config_validate(g, NULL);
    if (rc != MLA_OK) return rc;
    if (!c || !w || !x || T <= 0 || c->dim != g->dim) return MLA_ERR_INVALID_ARG;
    if (!w->w_q || !w->w_k || (g->attn_bias && (!w->b_q || !w->b_k))) return MLA_ERR_NULL_WEIGHT;
    if (!mla__all_finite(x, (size_t)T * g->dim)) return MLA_ERR_NONFINITE;
    H = g->n_heads; G = g->n_kv_heads; d = g->head_dim; L = G * d; grp = H / G;
    if (c->att && (c->att_heads != H || c->att_pairs != d / 2)) return MLA_ERR_SHAPE;
    if (!c->att) {
        c->att = (double *)MLA_MALLOC(sizeof(double) * (size_t)H * d);
        if (!c->att) return MLA_ERR_OUT_OF_MEMORY;
        memset(c->att, 0, sizeof(double) * (size_t)H * d);
        c->att_heads = H; c->att_pairs = d / 2; c->n_att = 0;
    }
    q = (float *)MLA_MALLOC(sizeof(float) * ((size_t)T * (H * d + L) + (size_t)d / 2));
    p = (double *)MLA_MALLOC(sizeof(double) * (size_t)2 * T);
    if (!q || !p) {
        if (q) MLA_FREE(q);
        if (p) MLA_FREE(p);
        return MLA_ERR_OUT_OF_MEMORY;
    }
    k = q + (size_t)T * H * d;
    freq = k + (size_t)T * L;
    hist = p + T;
    mla_matmul(q, x, w->w_q, g->attn_bias ? w->b_q : NULL, T, H * d, g->dim);
    mla_matmul(k, x, w->w_k, g->attn_bias ? w->b_k : NULL, T, L, g->dim);
    mla__gqa_freqs(g, freq);
    scale = g->softmax_scale > 0 ? g->softmax_scale : (float)(1.0 / sqrt((double)d));
    for (t = 0; t < T; t++) {
        mla__rope_n(q + (size_t)t * H * d, (size_t)d, H, d, t, freq, 1.0f, g->rope_layout);
        mla__rope_n(k + (size_t)t * G * d, (size_t)d, G, d, t, freq, 1.0f, g->rope_layout);
    }
    for (j = 0; j < H; j++) {
        const int gj = j / grp;
        memset(hist, 0, sizeof(double) * (size_t)T);
        for (t = 0; t < T; t++) { /* the causal softmax of query t; hist[dt] += p */
            double mx = -1e300, sum = 0.0;
            for (u = 0; u <= t; u++) {
                p[u] = scale * mla__dot(q + ((size_t)t * H + j) * d, k + ((size_t)u * G + gj) * d, d);
                if (p[u] > mx) mx = p[u];
            }
            for (u = 0; u <= t; u++) sum += p[u] = exp(p[u] - mx);
            for (u = 0; u <= t; u++) hist[t - u] += p[u] / sum;
        }
        for (i = 0; i < d / 2; i++) {
            double cs = 0.0, sn = 0.0;
            for (t = 0; t < T; t++) {
                cs += hist[t] * cos((double)t * freq[i]);
                sn += hist[t] * sin((double)t * freq[i]);
            }
            c->att[((size_t)j * (d / 2) + i) * 2] += cs;
            c->att[((size_t)j * (d / 2) + i) * 2 + 1] += sn;
        }
    }
    c->n_att += T;
    MLA_FREE(q);
    MLA_FREE(p);
    return MLA_OK;
}

/* acc [a][b] += sum_t A_t B_t^T over T rows A_t = A + t*sa (a values) and
   B_t = B + t*sb (b values): blocks of 64 tokens in f32 with the matrix
   kernel, summed in double; without memory for that, plain double loops. */
static void mla__cross_add(double *acc, const float *A, size_t sa, int a, const float *B, size_t sb, int b, int T) {
    enum { BLK = 64 };
    float *at = (float *)MLA_MALLOC(sizeof(float) * ((size_t)(a + b) * BLK + (size_t)a * b)), *bt, *g;
    int t0, t, i, j;
    if (!at) {
        for (t = 0; t < T; t++)
            for (i = 0; i < a; i++)
                for (j = 0; j < b; j++) acc[(size_t)i * b + j] += (double)A[(size_t)t * sa + i] * B[(size_t)t * sb + j];
        return;
    }
    bt = at + (size_t)a * BLK;
    g = bt + (size_t)b * BLK;
    for (t0 = 0; t0 < T; t0 += BLK) {
        int nb = T - t0 < BLK ? T - t0 : BLK;
        for (i = 0; i < a; i++)
            for (t = 0; t < BLK; t++) at[(size_t)i * BLK + t] = t < nb ? A[(size_t)(t0 + t) * sa + i] : 0.0f;
        for (i = 0; i < b; i++)
            for (t = 0; t < BLK; t++) bt[(size_t)i * BLK + t] = t < nb ? B[(size_t)(t0 + t) * sb + i] : 0.0f;
        mla_matmul(g, at, bt, NULL, a, b, BLK);
        for (i = 0; i < a * b; i++) acc[i] += g[i];
    }
    MLA_FREE(at);
}

MLADEF mla_result mla_calib_add(mla_calib *c, const float *x, int T) {
    int D, t, i;
    if (!c || !c->xx || !c->sx || T < 0 || (T > 0 && !x)) return MLA_ERR_INVALID_ARG;
    D = c->dim;
    if (!mla__all_finite(x, (size_t)T * D)) return MLA_ERR_NONFINITE; /* one NaN would spoil every moment */
    mla__cross_add(c->xx, x, (size_t)D, D, x, (size_t)D, D, T);
    for (t = 0; t < T; t++)
        for (i = 0; i < D; i++) c->sx[i] += x[(size_t)t * D + i];
    c->n += T;
    return MLA_OK;
}

/* C [n][n] = second moment of y = W x + b (W [n][D] f32, rows given by a list
   of row blocks). calib NULL: x white (E[xx^T] = I, mean 0, one token). */
static mla_result mla__proj_cov(const mla_calib *cal, int D, int n, const float *const *rows,
                                const float *const *bias, double *C) {
    double *M = (double *)MLA_MALLOC(sizeof(double) * (size_t)n * D), *ws = NULL;
    int i, j, k;
    if (!M) return MLA_ERR_OUT_OF_MEMORY;
    for (i = 0; i < n; i++) /* M = W XX */
        for (j = 0; j < D; j++) {
            double acc = 0.0;
            if (cal) for (k = 0; k < D; k++) acc += (double)rows[i][k] * cal->xx[(size_t)k * D + j];
            else acc = rows[i][j];
            M[(size_t)i * D + j] = acc;
        }
    for (i = 0; i < n; i++)
        for (j = 0; j <= i; j++) {
            double acc = 0.0;
            for (k = 0; k < D; k++) acc += M[(size_t)i * D + k] * rows[j][k];
            C[(size_t)i * n + j] = C[(size_t)j * n + i] = acc;
        }
    if (bias) {
        ws = (double *)MLA_MALLOC(sizeof(double) * (size_t)n);
        if (!ws) { MLA_FREE(M); return MLA_ERR_OUT_OF_MEMORY; }
        for (i = 0; i < n; i++) { /* ws = W sx */
            double acc = 0.0;
            if (cal) for (k = 0; k < D; k++) acc += (double)rows[i][k] * cal->sx[k];
            ws[i] = acc;
        }
        for (i = 0; i < n; i++)
            for (j = 0; j < n; j++) {
                double bi = bias[i] ? *bias[i] : 0.0, bj = bias[j] ? *bias[j] : 0.0;
                C[(size_t)i * n + j] += ws[i] * bj + bi * ws[j] + (cal ? cal->n : 1.0) * bi * bj;
            }
        MLA_FREE(ws);
    }
    MLA_FREE(M);
    return MLA_OK;
}

MLADEF void mla_converted_free(mla_converted *c) {
    if (!c) return;
    if (c->mem) MLA_FREE(c->mem);
    if (c->mem_q) MLA_FREE(c->mem_q);
    if (c->rope_freqs) MLA_FREE(c->rope_freqs);
    memset(c, 0, sizeof *c);
}

/* parameters of the conversion that every stage checks the same way */
/* ---- stage 1: the exact rewrite (a permutation of the key dims, no PCA) ---- */
MLADEF mla_result mla_convert_lossless(const mla_gqa_config *g, const mla_gqa_weights *w,
                                       mla_converted *out) {
    int G, d, L, q, h;
    double *U;
    mla_result rc = mla_gqa_config_validate(g, NULL);
    if (rc != MLA_OK) return rc;
    G = g->n_kv_heads; d = g->head_dim; L = G * d;
    U = (double *)MLA_MALLOC(sizeof(double) * (size_t)L * L);
    if (!U) return MLA_ERR_OUT_OF_MEMORY;
    memset(U, 0, sizeof(double) * (size_t)L * L);
    for (q = 0; q < d / 2; q++) /* rope pair q*G + h = head h's pair q: a permutation */
        for (h = 0; h < G; h++) {
            U[(size_t)(h * d + 2 * q) * L + 2 * (q * G + h)] = 1.0;
            U[(size_t)(h * d + 2 * q + 1) * L + 2 * (q * G + h) + 1] = 1.0;
        }
    rc = mla_convert_assemble(g, w, U, U, L, 1, L, NULL, NULL, NULL, out); /* a permutation: Kd = Ku */
    MLA_FREE(U);
    return rc;
}

/* ---- stage 2: RoRoPE ---- */
static mla_result mla__check_rorope(const mla_gqa_config *g, int m, int f) {
    int d = g->head_dim, L = g->n_kv_heads * d, keep;
    if (f <= 0 || (d / 2) % f) return MLA_ERR_BAD_CONFIG;          /* f must divide d/2            */
    if (m <= 0 || m % 2 || m > L) return MLA_ERR_BAD_CONFIG;       /* 0 < m <= L, even            */
    if (m <= d && (d % m || f % (d / m))) return MLA_ERR_BAD_CONFIG; /* m | d, f a multiple of c = d/m */
    if (((long)m * f) % d) return MLA_ERR_BAD_CONFIG;              /* whole components per group   */
    keep = m * f / d;
    if (keep > g->n_kv_heads * f) return MLA_ERR_BAD_CONFIG;
    return MLA_OK;
}

/* FreqFold: the d/2 frequencies form d/(2f) groups of f neighbours; in each
   group the g*f complex components (every head, every frequency of the group)
   are rotated together and the best `keep` = m*f/d of them keep RoPE. They
   then rotate at one frequency per component: kept component k of group q
   takes frequency q*f + floor(k*f/keep), spreading the kept ones evenly over
   the group (for keep = f, each keeps its own; for keep = 1, the group's
   first, fastest one). Neighbouring frequencies differ by theta^(-2/d), a few
   percent, which is the error FreqFold trades for sharing across heads. */
MLADEF void mla_rorope_freqs(const mla_gqa_config *g, int m, int f, float *inv_freq) {
    int d = g->head_dim, keep = m * f / d, p;
    double theta = g->rope_theta > 0 ? g->rope_theta : 10000.0;
    for (p = 0; p < m / 2; p++) {
        int q = p / keep, k = p % keep, idx = q * f + (int)((long)k * f / keep);
        inv_freq[p] = g->rope_freqs ? g->rope_freqs[idx] : (float)pow(theta, -2.0 * idx / d);
    }
}

/* the per-group matrix of a key-space moment: component a = (head h, frequency
   q*f + i), real part at key dim h*d + 2(q f + i), imaginary part at +1; real
   and imaginary halves summed (they rotate together) */
static void mla__group_moment(const double *c, int L, int d, int f, int q, int comps, double damp, double *C) {
    int a, b;
#define MLA__RE(a) (((a) / f) * d + 2 * (q * f + (a) % f))
    for (a = 0; a < comps; a++)
        for (b = 0; b < comps; b++)
            C[(size_t)a * comps + b] = c[(size_t)MLA__RE(a) * L + MLA__RE(b)] + c[(size_t)(MLA__RE(a) + 1) * L + MLA__RE(b) + 1];
#undef MLA__RE
    mla__damp(C, comps, damp);
}

static mla_result mla__sqrtm(int n, const double *M, double damp, double *sq, double *isq);

MLADEF mla_result mla_rorope_basis(const mla_gqa_config *g, const double *ck, const double *cq, int m, int f,
                                   double damp, double *Kd, double *Ku) {
    int G = g->n_kv_heads, d = g->head_dim, L = G * d, keep, nq, q, a, k, n_nope = m;
    int comps = G * f;
    double *C, *w, *B = NULL, *S = NULL, *Si = NULL, *T = NULL;
    mla_result rc = mla_gqa_config_validate(g, NULL);
    if (rc != MLA_OK) return rc;
    if (!ck || !Kd || !Ku) return MLA_ERR_INVALID_ARG;
    if ((rc = mla__check_rorope(g, m, f)) != MLA_OK) return rc;
    keep = m * f / d;
    nq = d / 2 / f;
    C = (double *)MLA_MALLOC(sizeof(double) * (size_t)comps * comps * 5);
    w = (double *)MLA_MALLOC(sizeof(double) * (size_t)comps);
    if (!C || !w) {
        if (C) MLA_FREE(C);
        if (w) MLA_FREE(w);
        return MLA_ERR_OUT_OF_MEMORY;
    }
    B = C + (size_t)comps * comps; S = B + (size_t)comps * comps; Si = S + (size_t)comps * comps;
    T = Si + (size_t)comps * comps;
    memset(Kd, 0, sizeof(double) * (size_t)L * L);
    memset(Ku, 0, sizeof(double) * (size_t)L * L);
    for (q = 0; q < nq && rc == MLA_OK; q++) {
        mla__group_moment(ck, L, d, f, q, comps, damp, C);
        if (!cq) { /* TransMLA: principal axes of the keys, an orthogonal rotation */
            if ((rc = mla_eigh(comps, C, w)) != MLA_OK) break;
            memcpy(T, C, sizeof(double) * (size_t)comps * comps); /* down = up = E */
            memcpy(S, C, sizeof(double) * (size_t)comps * comps);
        } else { /* query-aware: diagonalise key and query energies together.
                    A = Ck^(1/2); V Lam V^T = A Cq A: k' = V^T A^-1 k (unit key energy),
                    q' = V^T A q (energy Lam = the score energy of each component) */
            mla__group_moment(cq, L, d, f, q, comps, damp, B);
            if ((rc = mla__sqrtm(comps, C, 0.0, S, Si)) != MLA_OK) break;
            mla__dmul(T, comps, S, comps, B, comps, comps, comps, comps); /* C := A Cq A */
            mla__dmul(C, comps, T, comps, S, comps, comps, comps, comps);
            if ((rc = mla_eigh(comps, C, w)) != MLA_OK) break;
            mla__dmul(T, comps, Si, comps, C, comps, comps, comps, comps); /* down = A^-1 V */
            mla__dmul(B, comps, S, comps, C, comps, comps, comps, comps);  /* up = A V */
            memcpy(S, B, sizeof(double) * (size_t)comps * comps);
        }
        for (k = 0; k < comps; k++) { /* kept components become rope pairs, the rest nope dims */
            int col = k < keep ? 2 * (q * keep + k) : n_nope;
            if (k >= keep) n_nope += 2;
            for (a = 0; a < comps; a++) {
                int re = (a / f) * d + 2 * (q * f + a % f);
                Kd[(size_t)re * L + col] = Kd[(size_t)(re + 1) * L + col + 1] = T[(size_t)a * comps + k];
                Ku[(size_t)re * L + col] = Ku[(size_t)(re + 1) * L + col + 1] = S[(size_t)a * comps + k];
            }
        }
    }
    MLA_FREE(C);
    MLA_FREE(w);
    return rc;
}

/* (x0, x1) <- [a -b; b a] (x0, x1) */
MLADEF mla_result mla_convert_assemble(const mla_gqa_config *g, const mla_gqa_weights *w,
                                       const double *Kd, const double *Ku, int m, int f, int r,
                                       const double *down, const double *up, const double *rope_expect,
                                       mla_converted *out) {
    int H = g->n_heads, G = g->n_kv_heads, d = g->head_dim, L = G * d, D = g->dim, grp;
    int dn, zd, qd, i, j, k, p, e, bias;
    size_t nq, nkva, nkvb, no, nmap, total;
    double sq, *Z = NULL, *zb = NULL;
    float *mem, *qmap;
    mla_config *c;
    mla_result rc = mla_gqa_config_validate(g, NULL);
    if (rc != MLA_OK) return rc;
    if (!w || !Kd || !Ku || !out) return MLA_ERR_INVALID_ARG;
    if (!w->w_q || !w->w_k || !w->w_v || !w->w_o) return MLA_ERR_NULL_WEIGHT;
    bias = g->attn_bias;
    if (bias && (!w->b_q || !w->b_k || !w->b_v)) return MLA_ERR_NULL_WEIGHT;
    if ((rc = mla__check_rorope(g, m, f)) != MLA_OK) return rc;
    zd = 2 * L - m;
    if (r <= 0 || r > zd || ((!down || !up) && r != zd)) return MLA_ERR_BAD_CONFIG;
    memset(out, 0, sizeof *out);
    grp = H / G;
    dn = m < L ? d : 0; /* every key dim kept RoPE: no nope part */
    qd = dn + m;
    sq = sqrt((double)qd / d); /* default scale 1/sqrt(qd) then equals the original 1/sqrt(d) */
    nq = (size_t)H * qd * D;
    nkva = (size_t)(r + m) * D;
    nkvb = (size_t)H * (dn + d) * r;
    no = (size_t)D * H * d;
    nmap = (size_t)H * m * d;
    total = nq + (bias ? (size_t)H * qd + (size_t)(r + m) : 0) + nkva + nkvb + no + (w->b_o ? (size_t)D : 0) + nmap;
    mem = (float *)MLA_MALLOC(sizeof(float) * total);
    qmap = mem + total - nmap;
    out->rope_freqs = (float *)MLA_MALLOC(sizeof(float) * (size_t)(m / 2));
    Z = (double *)MLA_MALLOC(sizeof(double) * (size_t)zd * (D + 1));
    if (!mem || !out->rope_freqs || !Z) {
        if (mem) MLA_FREE(mem);
        if (Z) MLA_FREE(Z);
        mla_converted_free(out);
        return MLA_ERR_OUT_OF_MEMORY;
    }
    out->mem = mem;
    zb = Z + (size_t)zd * D; /* bias column of z */
    /* ---- config ---- */
    c = &out->cfg;
    c->dim = D; c->n_heads = H; c->q_lora_rank = 0; c->kv_lora_rank = r;
    c->qk_nope_head_dim = dn; c->qk_rope_head_dim = m; c->v_head_dim = d;
    c->kv_norm = 0; c->attn_bias = bias; c->max_seq_len = g->max_seq_len;
    c->rope_theta = g->rope_theta; c->rope_layout = MLA_ROPE_INTERLEAVED;
    mla_rorope_freqs(g, m, f, out->rope_freqs);
    c->rope_freqs = out->rope_freqs;
    /* ---- query: head j's nope part is the source's head-j query itself (its scale
            and expected rotation go to W_uk below), its rope part q_map_j times it,
            q_map_j = sq Ku_rope(g)^T [m][d]: W_q rows [W_q[j] ; q_map_j W_q[j]], biases alike ---- */
    out->w.w_q = mem;
    out->q_map = qmap;
    if (bias) out->w.b_q = mem + nq;
    for (j = 0; j < H; j++) {
        int gj = j / grp;
        const float *wq = w->w_q + (size_t)j * d * D;
        float *A = qmap + (size_t)j * m * d, *dst = mem + (size_t)j * qd * D;
        memcpy(dst, wq, sizeof(float) * (size_t)dn * D);
        if (bias) memcpy(mem + nq + (size_t)j * qd, w->b_q + (size_t)j * d, sizeof(float) * (size_t)dn);
        for (p = 0; p < m; p++) {
            for (e = 0; e < d; e++) A[(size_t)p * d + e] = (float)(sq * Ku[(size_t)(gj * d + e) * L + p]);
            memset(Z, 0, sizeof(double) * (size_t)(D + 1)); /* row p of q_map_j [W_q[j] | b_q[j]]; Z as scratch */
            for (e = 0; e < d; e++) {
                double a = A[(size_t)p * d + e];
                for (k = 0; k < D; k++) Z[k] += a * wq[(size_t)e * D + k];
                if (bias) Z[D] += a * w->b_q[(size_t)j * d + e];
            }
            for (k = 0; k < D; k++) dst[(size_t)(dn + p) * D + k] = (float)Z[k];
            if (bias) mem[nq + (size_t)j * qd + dn + p] = (float)Z[D];
        }
    }
    mem += nq + (bias ? (size_t)H * qd : 0);
    /* ---- z = [Kd_nope^T W_k ; W_v] (and its bias), then W_kva = [down z ; Kd_rope^T W_k] ---- */
    for (i = 0; i < zd; i++) {
        for (k = 0; k <= D; k++) {
            double acc = 0.0;
            if (i < L - m) {
                for (e = 0; e < L; e++)
                    acc += Kd[(size_t)e * L + m + i] * (k < D ? w->w_k[(size_t)e * D + k] : (bias ? w->b_k[e] : 0.0f));
            } else {
                acc = k < D ? w->w_v[(size_t)(i - (L - m)) * D + k] : (bias ? w->b_v[i - (L - m)] : 0.0f);
            }
            if (k < D) Z[(size_t)i * D + k] = acc;
            else zb[i] = acc;
        }
    }
    out->w.w_kva = mem;
    if (bias) out->w.b_kva = mem + nkva;
    for (i = 0; i < r; i++)
        for (k = 0; k <= D; k++) {
            double acc = 0.0;
            if (down) for (e = 0; e < zd; e++) acc += down[(size_t)i * zd + e] * (k < D ? Z[(size_t)e * D + k] : zb[e]);
            else acc = k < D ? Z[(size_t)i * D + k] : zb[i];
            if (k < D) mem[(size_t)i * D + k] = (float)acc;
            else if (bias) mem[nkva + i] = (float)acc;
        }
    for (p = 0; p < m; p++)
        for (k = 0; k <= D; k++) {
            double acc = 0.0;
            for (e = 0; e < L; e++)
                acc += Kd[(size_t)e * L + p] * (k < D ? w->w_k[(size_t)e * D + k] : (bias ? w->b_k[e] : 0.0f));
            if (k < D) mem[(size_t)(r + p) * D + k] = (float)acc;
            else if (bias) mem[nkva + r + p] = (float)acc;
        }
    mem += nkva + (bias ? (size_t)(r + m) : 0);
    /* ---- W_kvb: head j = [sq E_j^T Ku_nope(g) up_k ; select_g up_v], E_j the identity or,
            with rope_expect, per RoPE pair (i0, i1) the 2x2 [a -b; b a] = E[R(-dt theta)]^T
            (a = E cos, b = E sin) that the head's nope query would carry ---- */
    out->w.w_kvb = mem;
    for (j = 0; j < H; j++) {
        int gj = j / grp;
        float *dst = mem + (size_t)j * (dn + d) * r;
        for (i = 0; i < dn / 2; i++) {
            double a = 1.0, b = 0.0;
            int i0 = g->rope_layout == MLA_ROPE_INTERLEAVED ? 2 * i : i;
            int i1 = g->rope_layout == MLA_ROPE_INTERLEAVED ? 2 * i + 1 : i + d / 2;
            if (rope_expect) {
                a = rope_expect[((size_t)j * (d / 2) + i) * 2];
                b = rope_expect[((size_t)j * (d / 2) + i) * 2 + 1];
            }
            for (k = 0; k < r; k++) {
                double k0 = 0.0, k1 = 0.0; /* rows i0, i1 of Ku_nope(g) up_k */
                for (e = 0; e < L - m; e++) {
                    double u = up ? up[(size_t)e * r + k] : (e == k ? 1.0 : 0.0);
                    k0 += Ku[(size_t)(gj * d + i0) * L + m + e] * u;
                    k1 += Ku[(size_t)(gj * d + i1) * L + m + e] * u;
                }
                dst[(size_t)i0 * r + k] = (float)(sq * (a * k0 + b * k1));
                dst[(size_t)i1 * r + k] = (float)(sq * (a * k1 - b * k0));
            }
        }
        for (i = 0; i < d; i++) {
            int zi = L - m + gj * d + i;
            for (k = 0; k < r; k++)
                dst[(size_t)(dn + i) * r + k] = (float)(up ? up[(size_t)zi * r + k] : (zi == k ? 1.0 : 0.0));
        }
    }
    mem += nkvb;
    out->w.w_o = mem;
    memcpy(mem, w->w_o, sizeof(float) * no);
    mem += no;
    if (w->b_o) {
        out->w.b_o = mem;
        memcpy(mem, w->b_o, sizeof(float) * (size_t)D);
    }
    MLA_FREE(Z);
    return MLA_OK;
}

MLADEF mla_result mla_convert_lowrank_q(mla_converted *cv, const mla_calib *cal, int rq, double damp) {
    mla_config *c;
    int n, D, i, j, k, bias;
    double *C = NULL, *w = NULL;
    const float **rows = NULL, **bs = NULL;
    float *mem = NULL;
    mla_result rc;
    if (!cv || !cv->mem) return MLA_ERR_INVALID_ARG;
    c = &cv->cfg;
    if (c->q_lora_rank) return MLA_ERR_BAD_CONFIG; /* already low-rank */
    n = c->n_heads * (c->qk_nope_head_dim + c->qk_rope_head_dim);
    D = c->dim;
    if (rq <= 0 || rq > n || rq > D) return MLA_ERR_BAD_CONFIG;
    if (cal && cal->dim != D) return MLA_ERR_SHAPE;
    if (damp <= 0) damp = 0.01;
    bias = c->attn_bias && cv->w.b_q;
    C = (double *)MLA_MALLOC(sizeof(double) * (size_t)n * n);
    w = (double *)MLA_MALLOC(sizeof(double) * (size_t)n);
    rows = (const float **)MLA_MALLOC(sizeof(float *) * (size_t)n);
    bs = (const float **)MLA_MALLOC(sizeof(float *) * (size_t)n);
    mem = (float *)MLA_MALLOC(sizeof(float) * ((size_t)rq * D + (size_t)rq + (size_t)n * rq));
    if (!C || !w || !rows || !bs || !mem) { rc = MLA_ERR_OUT_OF_MEMORY; goto out; }
    for (i = 0; i < n; i++) {
        rows[i] = cv->w.w_q + (size_t)i * D;
        bs[i] = bias ? cv->w.b_q + i : NULL;
    }
    if ((rc = mla__proj_cov(cal, D, n, rows, bias ? bs : NULL, C)) != MLA_OK) goto out;
    mla__damp(C, n, damp);
    if ((rc = mla_eigh(n, C, w)) != MLA_OK) goto out;
    for (i = 0; i < rq; i++) { /* W_qa = R^T W_q, b_qa = R^T b_q */
        double bacc = 0.0;
        for (k = 0; k < D; k++) {
            double acc = 0.0;
            for (j = 0; j < n; j++) acc += C[(size_t)j * n + i] * cv->w.w_q[(size_t)j * D + k];
            mem[(size_t)i * D + k] = (float)acc;
        }
        if (bias) for (j = 0; j < n; j++) bacc += C[(size_t)j * n + i] * cv->w.b_q[j];
        mem[(size_t)rq * D + i] = (float)bacc;
    }
    for (j = 0; j < n; j++) /* W_qb = R */
        for (i = 0; i < rq; i++) mem[(size_t)rq * D + rq + (size_t)j * rq + i] = (float)C[(size_t)j * n + i];
    cv->mem_q = mem;
    mem = NULL;
    cv->w.w_qa = cv->mem_q;
    cv->w.b_qa = c->attn_bias ? cv->mem_q + (size_t)rq * D : NULL;
    cv->w.w_qb = cv->mem_q + (size_t)rq * D + rq;
    cv->w.w_q = NULL;
    cv->w.b_q = NULL;
    cv->q_map = NULL; /* the query is no longer a per-head map of the source's */
    cv->w.q_norm = NULL;
    c->q_lora_rank = rq;
    c->q_norm = 0;
out:
    if (C) MLA_FREE(C);
    if (w) MLA_FREE(w);
    if (rows) MLA_FREE((void *)rows);
    if (bs) MLA_FREE((void *)bs);
    if (mem) MLA_FREE(mem);
    return rc;
}

/* S = M^(1/2) (sq != NULL) and M^(-1/2) (isq) of a symmetric PSD block, damped */
static mla_result mla__sqrtm(int n, const double *M, double damp, double *sq, double *isq) {
    double *V = (double *)MLA_MALLOC(sizeof(double) * (size_t)n * n), *w = (double *)MLA_MALLOC(sizeof(double) * (size_t)n);
    int i, j, k;
    mla_result rc;
    if (!V || !w) {
        if (V) MLA_FREE(V);
        if (w) MLA_FREE(w);
        return MLA_ERR_OUT_OF_MEMORY;
    }
    memcpy(V, M, sizeof(double) * (size_t)n * n);
    mla__damp(V, n, damp);
    rc = mla_eigh(n, V, w);
    if (rc == MLA_OK)
        for (i = 0; i < n; i++)
            for (j = 0; j < n; j++) {
                double a = 0.0, b = 0.0, floor = w[0] > 0 ? w[0] * 1e-12 : 1.0; /* rounding below the damping */
                for (k = 0; k < n; k++) {
                    double ev = w[k] > floor ? w[k] : floor, vv = V[(size_t)i * n + k] * V[(size_t)j * n + k];
                    a += vv * sqrt(ev);
                    b += vv / sqrt(ev);
                }
                sq[(size_t)i * n + j] = a;
                isq[(size_t)i * n + j] = b;
            }
    MLA_FREE(V);
    MLA_FREE(w);
    return rc;
}

/* Second moments of every head's query (pre-RoPE, bias included): Cqh [h][d][d] */
static mla_result mla__head_qcov(const mla_gqa_config *g, const mla_gqa_weights *w, const mla_calib *cal, double *Cqh) {
    int H = g->n_heads, d = g->head_dim, D = g->dim, j, i;
    const float **rows = (const float **)MLA_MALLOC(sizeof(float *) * (size_t)d);
    const float **bias = (const float **)MLA_MALLOC(sizeof(float *) * (size_t)d);
    mla_result rc = MLA_OK;
    if (!rows || !bias) rc = MLA_ERR_OUT_OF_MEMORY;
    for (j = 0; j < H && rc == MLA_OK; j++) {
        for (i = 0; i < d; i++) {
            rows[i] = w->w_q + ((size_t)j * d + i) * D;
            bias[i] = g->attn_bias ? w->b_q + (size_t)j * d + i : NULL;
        }
        rc = mla__proj_cov(cal, D, d, rows, g->attn_bias ? bias : NULL, Cqh + (size_t)j * d * d);
    }
    if (rows) MLA_FREE((void *)rows);
    if (bias) MLA_FREE((void *)bias);
    return rc;
}

/* QAWARE metric on z = [k_nope (L-m) ; v (L)]: a key error dk costs, for every
   head j reading it, E[(q_j . K_j dk)^2] = dk^T K_j^T E[q_j q_j^T] K_j dk
   (K_j: head j's rows of Ku_nope); a value error dv costs |W_o[:, j] dv_g|^2.
   Each block is normalised to unit weighted energy tr(M C) (the analogue of
   TransMLA's norm balancing), then S = M^(1/2), Si = M^(-1/2). */
static mla_result mla__qaware_metric(const mla_gqa_config *g, const mla_gqa_weights *w, const double *Cqh,
                                     const double *Ku, int m, const double *Cz, double damp, double key_weight,
                                     double *S, double *Si) {
    int H = g->n_heads, G = g->n_kv_heads, d = g->head_dim, L = G * d, D = g->dim, grp = H / G;
    int nk = L - m, zd = 2 * L - m, j, a, b, k, i;
    double *MK = (double *)MLA_MALLOC(sizeof(double) * ((size_t)nk * nk + 1));
    double *MV = (double *)MLA_MALLOC(sizeof(double) * (size_t)d * d);
    double *T1 = (double *)MLA_MALLOC(sizeof(double) * ((size_t)d * nk + 1));
    double *bs_ = (double *)MLA_MALLOC(sizeof(double) * (size_t)L * L * 2);
    double *isq = (double *)MLA_MALLOC(sizeof(double) * (size_t)L * L);
    double eK = 0.0, eV = 0.0, *sq;
    mla_result rc = MLA_OK;
    if (!MK || !MV || !T1 || !bs_ || !isq) { rc = MLA_ERR_OUT_OF_MEMORY; goto out; }
    sq = bs_ + (size_t)L * L;
    memset(MK, 0, sizeof(double) * (size_t)nk * nk);
    for (j = 0; j < H && nk > 0; j++) {
        int gj = j / grp;
        const double *Cq = Cqh + (size_t)j * d * d;
        mla__dmul(T1, nk, Cq, d, Ku + (size_t)gj * d * L + m, L, d, d, nk); /* T1 = Cq K_j (d x nk) */
        for (a = 0; a < nk; a++) /* MK += K_j^T T1 */
            for (b = 0; b < nk; b++) {
                double acc = 0.0;
                for (k = 0; k < d; k++) acc += Ku[(size_t)(gj * d + k) * L + m + a] * T1[(size_t)k * nk + b];
                MK[(size_t)a * nk + b] += acc;
            }
    }
    for (a = 0; a < nk; a++)
        for (b = 0; b < nk; b++) eK += MK[(size_t)a * nk + b] * Cz[(size_t)b * zd + a];
    /* V blocks: one d x d block per group, sum over its heads of W_oj^T W_oj */
    memset(bs_, 0, sizeof(double) * (size_t)L * L);
    for (j = 0; j < G; j++) {
        int h;
        memset(MV, 0, sizeof(double) * (size_t)d * d);
        for (h = j * grp; h < (j + 1) * grp; h++)
            for (a = 0; a < d; a++)
                for (b = 0; b <= a; b++) {
                    double acc = 0.0;
                    for (k = 0; k < D; k++)
                        acc += (double)w->w_o[(size_t)k * H * d + h * d + a] * w->w_o[(size_t)k * H * d + h * d + b];
                    MV[(size_t)a * d + b] += acc;
                    if (b != a) MV[(size_t)b * d + a] += acc;
                }
        for (a = 0; a < d; a++)
            for (b = 0; b < d; b++) {
                bs_[(size_t)(j * d + a) * L + j * d + b] = MV[(size_t)a * d + b];
                eV += MV[(size_t)a * d + b] * Cz[(size_t)(nk + j * d + b) * zd + nk + j * d + a];
            }
    }
    if (!(eK > 0)) eK = 1.0;
    if (!(eV > 0)) eV = 1.0;
    for (i = 0; i < nk * nk; i++) MK[i] *= key_weight / eK;
    for (i = 0; i < L * L; i++) bs_[i] /= eV;
    if (nk > 0) { /* square roots per block, placed into S and Si (zd x zd, zeroed by the caller) */
        if ((rc = mla__sqrtm(nk, MK, damp, sq, isq)) != MLA_OK) goto out;
        for (a = 0; a < nk; a++)
            for (b = 0; b < nk; b++) {
                S[(size_t)a * zd + b] = sq[(size_t)a * nk + b];
                Si[(size_t)a * zd + b] = isq[(size_t)a * nk + b];
            }
    }
    for (j = 0; j < G; j++) { /* V: block-diagonal by group */
        for (a = 0; a < d; a++)
            for (b = 0; b < d; b++) MV[(size_t)a * d + b] = bs_[(size_t)(j * d + a) * L + j * d + b];
        if ((rc = mla__sqrtm(d, MV, damp, sq, isq)) != MLA_OK) goto out;
        for (a = 0; a < d; a++)
            for (b = 0; b < d; b++) {
                S[(size_t)(nk + j * d + a) * zd + nk + j * d + b] = sq[(size_t)a * d + b];
                Si[(size_t)(nk + j * d + a) * zd + nk + j * d + b] = isq[(size_t)a * d + b];
            }
    }
out:
    if (MK) MLA_FREE(MK);
    if (MV) MLA_FREE(MV);
    if (T1) MLA_FREE(T1);
    if (bs_) MLA_FREE(bs_);
    if (isq) MLA_FREE(isq);
    return rc;
}

MLADEF mla_result mla_convert_layer(const mla_gqa_config *g, const mla_gqa_weights *w,
                                    const mla_calib *cal, const mla_convert_options *opt,
                                    mla_converted *out) {
    int G, d, L, D, m, f, r, zd, nk, i, j, k, e, bias;
    double damp, *ckv = NULL, *Kd = NULL, *Ku = NULL, *Cz = NULL, *S = NULL, *Si = NULL, *down = NULL, *up = NULL;
    double *wv = NULL, *tk = NULL, *Cqh = NULL, *cq = NULL, *ex = NULL;
    int qaware;
    const float **rows = NULL, **bs = NULL;
    mla_result rc = mla_gqa_config_validate(g, NULL);
    if (rc != MLA_OK) return rc;
    if (!w || !opt || !out) return MLA_ERR_INVALID_ARG;
    if (!w->w_q || !w->w_k || !w->w_v || !w->w_o) return MLA_ERR_NULL_WEIGHT;
    G = g->n_kv_heads; d = g->head_dim; L = G * d; D = g->dim;
    bias = g->attn_bias;
    if (bias && (!w->b_q || !w->b_k || !w->b_v)) return MLA_ERR_NULL_WEIGHT;
    if (cal && cal->dim != D) return MLA_ERR_SHAPE;
    m = opt->qk_rope_head_dim ? opt->qk_rope_head_dim : L;
    f = opt->freqfold ? opt->freqfold : 1;
    damp = opt->damp > 0 ? opt->damp : 0.01;
    if ((rc = mla__check_rorope(g, m, f)) != MLA_OK) return rc;
    zd = 2 * L - m;
    r = opt->kv_lora_rank ? opt->kv_lora_rank : zd;
    if (r < 0 || r > zd) return MLA_ERR_BAD_CONFIG;
    if (opt->method != MLA_CONVERT_TRANSMLA && opt->method != MLA_CONVERT_QAWARE) return MLA_ERR_BAD_CONFIG;
    if (opt->expected_rope && (!cal || !cal->att || cal->n_att <= 0 || cal->att_heads != g->n_heads ||
                               cal->att_pairs != g->head_dim / 2))
        return MLA_ERR_INVALID_ARG; /* no attention statistics (mla_calib_attention) */
    qaware = opt->method == MLA_CONVERT_QAWARE;
#define MLA__PROGRESS(stage, frac) \
    do { if (opt->progress) opt->progress(opt->progress_user, stage, frac); } while (0)
    MLA__PROGRESS("statistics", 0.0);
    if (opt->expected_rope) { /* the heads' mean (cos, sin) per RoPE pair */
        size_t n = (size_t)g->n_heads * g->head_dim;
        if (!(ex = (double *)MLA_MALLOC(sizeof(double) * n))) { rc = MLA_ERR_OUT_OF_MEMORY; goto done; }
        for (i = 0; i < (int)n; i++) ex[i] = cal->att[i] / cal->n_att;
    }
    /* second moments of [k ; v] (pre-RoPE, bias included) */
    ckv = (double *)MLA_MALLOC(sizeof(double) * (size_t)4 * L * L);
    Kd = (double *)MLA_MALLOC(sizeof(double) * (size_t)L * L);
    Ku = (double *)MLA_MALLOC(sizeof(double) * (size_t)L * L);
    rows = (const float **)MLA_MALLOC(sizeof(float *) * (size_t)(2 * L));
    bs = (const float **)MLA_MALLOC(sizeof(float *) * (size_t)(2 * L));
    if (!ckv || !Kd || !Ku || !rows || !bs) { rc = MLA_ERR_OUT_OF_MEMORY; goto done; }
    if (qaware) { /* the queries: per head, and summed per key dim they read */
        int grp = g->n_heads / G, h, a, b;
        Cqh = (double *)MLA_MALLOC(sizeof(double) * (size_t)g->n_heads * d * d);
        cq = (double *)MLA_MALLOC(sizeof(double) * (size_t)L * L);
        if (!Cqh || !cq) { rc = MLA_ERR_OUT_OF_MEMORY; goto done; }
        if ((rc = mla__head_qcov(g, w, cal, Cqh)) != MLA_OK) goto done;
        memset(cq, 0, sizeof(double) * (size_t)L * L);
        for (h = 0; h < g->n_heads; h++)
            for (a = 0; a < d; a++)
                for (b = 0; b < d; b++)
                    cq[(size_t)((h / grp) * d + a) * L + (h / grp) * d + b] += Cqh[((size_t)h * d + a) * d + b];
    }
    for (i = 0; i < L; i++) {
        rows[i] = w->w_k + (size_t)i * D; bs[i] = bias ? w->b_k + i : NULL;
        rows[L + i] = w->w_v + (size_t)i * D; bs[L + i] = bias ? w->b_v + i : NULL;
    }
    if ((rc = mla__proj_cov(cal, D, 2 * L, rows, bias ? bs : NULL, ckv)) != MLA_OK) goto done;
    MLA__PROGRESS("RoRoPE", 0.3);
    { /* stage 2: RoRoPE on the key block */
        double *ck = (double *)MLA_MALLOC(sizeof(double) * (size_t)L * L);
        if (!ck) { rc = MLA_ERR_OUT_OF_MEMORY; goto done; }
        for (i = 0; i < L; i++)
            for (j = 0; j < L; j++) ck[(size_t)i * L + j] = ckv[(size_t)i * 2 * L + j];
        rc = mla_rorope_basis(g, ck, qaware && !opt->key_only_rorope ? cq : NULL, m, f, damp, Kd, Ku);
        MLA_FREE(ck);
        if (rc != MLA_OK) goto done;
    }
    MLA__PROGRESS("joint K/V PCA", 0.5);
    /* Cz = T ckv T^T with T = blockdiag(Kd_nope^T, I): second moment of z = [k_nope ; v] */
    nk = L - m;
    Cz = (double *)MLA_MALLOC(sizeof(double) * (size_t)zd * zd);
    tk = (double *)MLA_MALLOC(sizeof(double) * (size_t)zd * 2 * L);
    S = (double *)MLA_MALLOC(sizeof(double) * (size_t)zd * zd);
    Si = (double *)MLA_MALLOC(sizeof(double) * (size_t)zd * zd);
    down = (double *)MLA_MALLOC(sizeof(double) * (size_t)r * zd);
    up = (double *)MLA_MALLOC(sizeof(double) * (size_t)zd * r);
    wv = (double *)MLA_MALLOC(sizeof(double) * (size_t)zd);
    if (!Cz || !tk || !S || !Si || !down || !up || !wv) { rc = MLA_ERR_OUT_OF_MEMORY; goto done; }
    for (i = 0; i < zd; i++)
        for (j = 0; j < 2 * L; j++) {
            double acc = 0.0;
            if (i < nk) for (e = 0; e < L; e++) acc += Kd[(size_t)e * L + m + i] * ckv[(size_t)e * 2 * L + j];
            else acc = ckv[(size_t)(L + i - nk) * 2 * L + j];
            tk[(size_t)i * 2 * L + j] = acc;
        }
    for (i = 0; i < zd; i++)
        for (j = 0; j <= i; j++) {
            double acc = 0.0;
            if (j < nk) for (e = 0; e < L; e++) acc += tk[(size_t)i * 2 * L + e] * Kd[(size_t)e * L + m + j];
            else acc = tk[(size_t)i * 2 * L + L + j - nk];
            Cz[(size_t)i * zd + j] = Cz[(size_t)j * zd + i] = acc;
        }
    /* the metric S (z is compared as |S z|): TransMLA balances the K and V
       norms with one scalar; QAWARE whitens K by the queries that read it and
       V by the output projection that reads it */
    memset(S, 0, sizeof(double) * (size_t)zd * zd);
    memset(Si, 0, sizeof(double) * (size_t)zd * zd);
    if (opt->method == MLA_CONVERT_TRANSMLA) {
        double nK = 0.0, nV = 0.0, ratio;
        for (i = 0; i < nk; i++) nK += sqrt(fmax(Cz[(size_t)i * zd + i], 0.0)) / nk;
        for (i = nk; i < zd; i++) nV += sqrt(fmax(Cz[(size_t)i * zd + i], 0.0)) / L;
        ratio = nk > 0 && nK > 0 && nV > 0 ? nK / nV : 1.0;
        for (i = 0; i < zd; i++) {
            S[(size_t)i * zd + i] = i < nk ? 1.0 / ratio : 1.0;
            Si[(size_t)i * zd + i] = i < nk ? ratio : 1.0;
        }
    } else {
        rc = mla__qaware_metric(g, w, Cqh, Ku, m, Cz, damp, opt->key_weight > 0 ? opt->key_weight : 1.0, S, Si);
        if (rc != MLA_OK) goto done;
    }
    { /* A = S Cz S (+ damping) -> top r eigenvectors R; down = R^T S, up = S^-1 R */
        double *A = tk; /* tk is free now and large enough (zd*2L >= zd*zd) */
        mla__dmul(A, zd, S, zd, Cz, zd, zd, zd, zd);
        mla__dmul(Cz, zd, A, zd, S, zd, zd, zd, zd); /* Cz now holds S Cz S */
        mla__damp(Cz, zd, damp);
        if ((rc = mla_eigh(zd, Cz, wv)) != MLA_OK) goto done;
        for (i = 0; i < r; i++)
            for (e = 0; e < zd; e++) {
                double acc = 0.0;
                for (k = 0; k < zd; k++) acc += Cz[(size_t)k * zd + i] * S[(size_t)k * zd + e];
                down[(size_t)i * zd + e] = acc;
            }
        mla__dmul(up, r, Si, zd, Cz, zd, zd, zd, r); /* up = S^-1 R */
    }
    MLA__PROGRESS("assemble", 0.8);
    rc = mla_convert_assemble(g, w, Kd, Ku, m, f, r, down, up, ex, out);
    if (rc == MLA_OK) MLA__PROGRESS("done", 1.0);
done:
    if (ex) MLA_FREE(ex);
    if (ckv) MLA_FREE(ckv);
    if (Kd) MLA_FREE(Kd);
    if (Ku) MLA_FREE(Ku);
    if (Cqh) MLA_FREE(Cqh);
    if (cq) MLA_FREE(cq);
    if (rows) MLA_FREE((void *)rows);
    if (bs) MLA_FREE((void *)bs);
    if (Cz) MLA_FREE(Cz);
    if (S) MLA_FREE(S);
    if (Si) MLA_FREE(Si);
    if (down) MLA_FREE(down);
    if (up) MLA_FREE(up);
    if (wv) MLA_FREE(wv);
    if (tk) MLA_FREE(tk);
    return rc;
#undef MLA__PROGRESS
}

/* ---- output-aware refit ---- */
/* B [rows][n] <- (B + lambda W0) (A + lambda I)^-1, lambda = damp * mean(diag A),
   for symmetric PSD A [n][n] (overwritten by its Cholesky factor) and W0
   [rows][n] (row stride ldw): the least squares W B-sums / A-sums, ridge
   pulling toward the current weights W0 (directions the calibration text
   does not excite keep W0's behaviour instead of shrinking to zero) */
static mla_result mla__solve_right(int n, double *A, double damp, double *B, int rows, const float *W0, size_t ldw) {
    int i, j, k;
    double lambda = 0.0;
    for (i = 0; i < n; i++) lambda += A[(size_t)i * n + i] / n;
    lambda = lambda > 0 ? damp * lambda : 1.0;
    for (i = 0; i < n; i++) A[(size_t)i * n + i] += lambda;
    for (i = 0; i < rows; i++)
        for (j = 0; j < n; j++) B[(size_t)i * n + j] += lambda * W0[(size_t)i * ldw + j];
    for (j = 0; j < n; j++) { /* A = L L^T, L in the lower triangle */
        double s = A[(size_t)j * n + j];
        for (k = 0; k < j; k++) s -= A[(size_t)j * n + k] * A[(size_t)j * n + k];
        if (!(s > 0)) return MLA_ERR_NONFINITE; /* not positive definite: NaN or Inf in the sums */
        A[(size_t)j * n + j] = s = sqrt(s);
        for (i = j + 1; i < n; i++) {
            double t = A[(size_t)i * n + j];
            for (k = 0; k < j; k++) t -= A[(size_t)i * n + k] * A[(size_t)j * n + k];
            A[(size_t)i * n + j] = t / s;
        }
    }
    for (i = 0; i < rows; i++) { /* row b: solve L L^T x = b (A symmetric) */
        double *b = B + (size_t)i * n;
        for (j = 0; j < n; j++) {
            double t = b[j];
            for (k = 0; k < j; k++) t -= A[(size_t)j * n + k] * b[k];
            b[j] = t / A[(size_t)j * n + j];
        }
        for (j = n - 1; j >= 0; j--) {
            double t = b[j];
            for (k = j + 1; k < n; k++) t -= A[(size_t)k * n + j] * b[k];
            b[j] = t / A[(size_t)j * n + j];
        }
    }
    return MLA_OK;
}

MLADEF void mla_refit_free(mla_refit *rf) {
    if (!rf) return;
    if (rf->zz) MLA_FREE(rf->zz);
    memset(rf, 0, sizeof *rf);
}

static size_t mla__refit_doubles(const mla_refit *rf) {
    size_t h = (size_t)rf->n_heads, r = (size_t)rf->kv_lora_rank, dv = (size_t)rf->v_head_dim;
    return h * r * r + h * dv * r + h * dv * h * dv + (size_t)rf->dim * h * dv;
}

MLADEF void mla_refit_reset(mla_refit *rf) {
    if (!rf || !rf->zz) return;
    memset(rf->zz, 0, sizeof(double) * mla__refit_doubles(rf));
    rf->n = 0.0;
    rf->gathered = 0;
}

MLADEF mla_result mla_refit_init(mla_refit *rf, const mla_converted *cv) {
    const mla_config *c;
    if (!rf || !cv || !cv->mem) return MLA_ERR_INVALID_ARG;
    memset(rf, 0, sizeof *rf);
    c = &cv->cfg;
    rf->n_heads = c->n_heads; rf->kv_lora_rank = c->kv_lora_rank; rf->v_head_dim = c->v_head_dim; rf->dim = c->dim;
    rf->zz = (double *)MLA_MALLOC(sizeof(double) * mla__refit_doubles(rf));
    if (!rf->zz) { memset(rf, 0, sizeof *rf); return MLA_ERR_OUT_OF_MEMORY; }
    rf->oz = rf->zz + (size_t)rf->n_heads * rf->kv_lora_rank * rf->kv_lora_rank;
    rf->uu = rf->oz + (size_t)rf->n_heads * rf->v_head_dim * rf->kv_lora_rank;
    rf->yu = rf->uu + (size_t)rf->n_heads * rf->v_head_dim * rf->n_heads * rf->v_head_dim;
    mla_refit_reset(rf);
    return MLA_OK;
}

MLADEF mla_result mla_refit_add(mla_refit *rf, int targets, const mla_gqa_config *g, const mla_gqa_weights *w,
                                const mla_converted *cv, const float *x, int T) {
    const mla_config *c;
    mla_config cz;
    mla_layer_weights wz;
    mla_gqa_cache kc;
    mla_cache lc;
    mla_seq *seq;
    int H, G, d, L, D, r, m, dn, qd, dv, j, i, k;
    size_t n_gws, n_zws, n_f;
    float *buf, *q, *kk, *v, *o, *y, *q2, *kv2, *z, *u, *kvb, *ws;
    mla_result rc = mla_gqa_config_validate(g, NULL);
    if (rc != MLA_OK) return rc;
    if (!rf || !rf->zz || !w || !cv || !cv->mem || !x || T <= 0) return MLA_ERR_INVALID_ARG;
    if (!targets || (targets & ~(MLA_REFIT_VALUES | MLA_REFIT_OUTPUT))) return MLA_ERR_INVALID_ARG;
    c = &cv->cfg;
    if ((rc = mla_config_validate(c, NULL)) != MLA_OK) return rc;
    if (c->q_lora_rank) return MLA_ERR_BAD_CONFIG; /* refit before mla_convert_lowrank_q */
    if (!w->w_q || !w->w_k || !w->w_v || !w->w_o) return MLA_ERR_NULL_WEIGHT;
    if (g->attn_bias && (!w->b_q || !w->b_k || !w->b_v)) return MLA_ERR_NULL_WEIGHT;
    H = g->n_heads; G = g->n_kv_heads; d = g->head_dim; L = G * d; D = g->dim;
    r = c->kv_lora_rank; m = c->qk_rope_head_dim; dn = c->qk_nope_head_dim; qd = dn + m; dv = c->v_head_dim;
    if (c->dim != D || c->n_heads != H || dv != d || rf->n_heads != H || rf->kv_lora_rank != r ||
        rf->v_head_dim != dv || rf->dim != D)
        return MLA_ERR_SHAPE;
    if (!mla__all_finite(x, (size_t)T * D)) return MLA_ERR_NONFINITE;
    /* the converted layer with W_uv = I (d_v = r): its heads' outputs are z_j */
    cz = *c;
    cz.v_head_dim = r;
    wz = cv->w;
    n_gws = (mla_gqa_workspace_bytes(g, T, T) + sizeof(float) - 1) / sizeof(float);
    n_zws = (mla_workspace_bytes(&cz, T, T, MLA_NAIVE) + sizeof(float) - 1) / sizeof(float);
    if (!n_gws || !n_zws) return MLA_ERR_SHAPE;
    n_f = (size_t)T * ((size_t)2 * H * d + 2 * (size_t)L + D + (size_t)H * qd + (size_t)(r + m) + (size_t)H * r + (size_t)H * dv) +
          (size_t)H * (dn + r) * r + (n_gws > n_zws ? n_gws : n_zws);
    buf = (float *)MLA_MALLOC(sizeof(float) * n_f);
    if (!buf) return MLA_ERR_OUT_OF_MEMORY;
    q = buf; kk = q + (size_t)T * H * d; v = kk + (size_t)T * L; o = v + (size_t)T * L; y = o + (size_t)T * H * d;
    q2 = y + (size_t)T * D; kv2 = q2 + (size_t)T * H * qd; z = kv2 + (size_t)T * (r + m); u = z + (size_t)T * H * r;
    kvb = u + (size_t)T * H * dv; ws = kvb + (size_t)H * (dn + r) * r;
    for (j = 0; j < H; j++) { /* head j: [W_uk_j ; I_r] */
        float *dst = kvb + (size_t)j * (dn + r) * r;
        memcpy(dst, cv->w.w_kvb + (size_t)j * (dn + dv) * r, sizeof(float) * (size_t)dn * r);
        for (i = 0; i < r; i++)
            for (k = 0; k < r; k++) dst[(size_t)(dn + i) * r + k] = i == k ? 1.0f : 0.0f;
    }
    wz.w_kvb = kvb;
    /* the original layer: heads' outputs o, layer output y = W_o o (no bias) */
    if ((rc = mla_gqa_cache_init(&kc, 1, T, L)) != MLA_OK) { MLA_FREE(buf); return rc; }
    mla_matmul(q, x, w->w_q, g->attn_bias ? w->b_q : NULL, T, H * d, D);
    mla_matmul(kk, x, w->w_k, g->attn_bias ? w->b_k : NULL, T, L, D);
    mla_matmul(v, x, w->w_v, g->attn_bias ? w->b_v : NULL, T, L, D);
    rc = mla_gqa_attend_projected(g, &kc, 0, q, kk, v, T, o, ws, n_gws * sizeof(float));
    mla_gqa_cache_free(&kc);
    if (rc != MLA_OK) { MLA_FREE(buf); return rc; }
    if (targets & MLA_REFIT_OUTPUT) mla_matmul(y, o, w->w_o, NULL, T, D, H * d);
    /* the converted layer: z, then u_j = W_uv_j z_j */
    if ((rc = mla_cache_init(&lc, MLA_F32, 1, r, m, T, NULL)) != MLA_OK) { MLA_FREE(buf); return rc; }
    mla_matmul(q2, x, cv->w.w_q, c->attn_bias ? cv->w.b_q : NULL, T, H * qd, D);
    mla_matmul(kv2, x, cv->w.w_kva, c->attn_bias ? cv->w.b_kva : NULL, T, r + m, D);
    seq = &lc.seq;
    rc = mla_attend_projected(&cz, &wz, &lc.pool, &seq, 1, T, 0, q2, kv2, z, MLA_NAIVE, ws, n_zws * sizeof(float));
    mla_cache_free(&lc);
    if (rc != MLA_OK) { MLA_FREE(buf); return rc; }
    if (targets & MLA_REFIT_VALUES)
        for (j = 0; j < H; j++) {
            mla__cross_add(rf->zz + (size_t)j * r * r, z + (size_t)j * r, (size_t)H * r, r, z + (size_t)j * r, (size_t)H * r, r, T);
            mla__cross_add(rf->oz + (size_t)j * dv * r, o + (size_t)j * d, (size_t)H * d, dv, z + (size_t)j * r, (size_t)H * r, r, T);
        }
    if (targets & MLA_REFIT_OUTPUT) {
        for (j = 0; j < H; j++) /* u_j = W_uv_j z_j: tokens' rows of head j at once */
            mla__gemm_nt(u + (size_t)j * dv, (size_t)H * dv, z + (size_t)j * r, (size_t)H * r,
                         cv->w.w_kvb + ((size_t)j * (dn + dv) + dn) * r, (size_t)r, T, dv, r);
        mla__cross_add(rf->uu, u, (size_t)H * dv, H * dv, u, (size_t)H * dv, H * dv, T);
        mla__cross_add(rf->yu, y, (size_t)D, D, u, (size_t)H * dv, H * dv, T);
    }
    rf->n += T;
    rf->gathered |= targets;
    MLA_FREE(buf);
    return MLA_OK;
}

MLADEF mla_result mla_refit_apply(mla_refit *rf, mla_converted *cv, int targets, double damp) {
    int H, r, dv, dn, D, n, j, i, k;
    double *A = NULL, *B = NULL;
    float *wkvb, *wo;
    mla_result rc = MLA_OK;
    if (!rf || !rf->zz || !cv || !cv->mem || rf->n <= 0 || (targets & ~(MLA_REFIT_VALUES | MLA_REFIT_OUTPUT)) ||
        (targets & ~rf->gathered))
        return MLA_ERR_INVALID_ARG;
    H = rf->n_heads; r = rf->kv_lora_rank; dv = rf->v_head_dim; D = rf->dim; n = H * dv;
    dn = cv->cfg.qk_nope_head_dim;
    if (cv->cfg.n_heads != H || cv->cfg.kv_lora_rank != r || cv->cfg.v_head_dim != dv || cv->cfg.dim != D)
        return MLA_ERR_SHAPE;
    if (damp <= 0) damp = 1e-3;
    A = (double *)MLA_MALLOC(sizeof(double) * (size_t)(r > n ? r : n) * (r > n ? r : n));
    B = (double *)MLA_MALLOC(sizeof(double) * (size_t)(D > dv ? D : dv) * (r > n ? r : n));
    if (!A || !B) { rc = MLA_ERR_OUT_OF_MEMORY; goto out; }
    wkvb = (float *)cv->w.w_kvb; /* the converted layer owns its weights (cv->mem) */
    wo = (float *)cv->w.w_o;
    if (targets & MLA_REFIT_VALUES)
        for (j = 0; j < H && rc == MLA_OK; j++) {
            memcpy(A, rf->zz + (size_t)j * r * r, sizeof(double) * (size_t)r * r);
            memcpy(B, rf->oz + (size_t)j * dv * r, sizeof(double) * (size_t)dv * r);
            if ((rc = mla__solve_right(r, A, damp, B, dv, wkvb + ((size_t)j * (dn + dv) + dn) * r, (size_t)r)) == MLA_OK)
                for (i = 0; i < dv; i++)
                    for (k = 0; k < r; k++) wkvb[((size_t)j * (dn + dv) + dn + i) * r + k] = (float)B[(size_t)i * r + k];
        }
    if (rc == MLA_OK && (targets & MLA_REFIT_OUTPUT)) {
        memcpy(A, rf->uu, sizeof(double) * (size_t)n * n);
        memcpy(B, rf->yu, sizeof(double) * (size_t)D * n);
        if ((rc = mla__solve_right(n, A, damp, B, D, wo, (size_t)n)) == MLA_OK)
            for (i = 0; i < D * n; i++) wo[i] = (float)B[i];
    }
out:
    if (A) MLA_FREE(A);
    if (B) MLA_FREE(B);
    return rc;
}

#endif /* MLA_NO_CONVERT */

#endif /* MLA_IMPLEMENTATION_DONE */
#endif /* MLA_IMPLEMENTATION */
