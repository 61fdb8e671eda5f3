/* mla_cuda.h - optional CUDA backend of mla.h: a device-side paged latent
   cache and the absorbed MLA decode step over it (FlashMLA-style: one latent
   "kv head" [c | k_pe] shared by all query heads, split-KV with a
   log-sum-exp combine). C API; the implementation is mla_cuda.cu.

   Built with nvcc it runs on the GPU; compiled as C (cc -x c mla_cuda.cu)
   the same API runs the same split-KV algorithm on the CPU, which is how the
   host logic is tested on machines without a GPU.

   All pointers marked "dev" are device pointers (host pointers in the CPU
   build). Layout of the pool is mla.h's: row (block b, layer l, token i) is
   ((b * n_layers + l) * block_size + i), each row r + m values. */
#ifndef MLA_CUDA_H
#define MLA_CUDA_H
#include "mla.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MLA_CUDA_MAX_RANK 1024 /* r  */
#define MLA_CUDA_MAX_ROPE 128  /* m  */

typedef struct mla_cuda_pool mla_cuda_pool;

/* A device pool of n_blocks blocks (bf16, f16 or f32 storage). */
mla_result mla_cuda_pool_create(mla_cuda_pool **pool, mla_dtype type, int n_layers, int kv_lora_rank,
                                int qk_rope_head_dim, int block_size, int n_blocks);
void mla_cuda_pool_destroy(mla_cuda_pool *pool);
/* The last CUDA error message of this pool ("" if none). */
const char *mla_cuda_error(const mla_cuda_pool *pool);
/* The pool's storage (dev), for copying to and from an mla.h pool of the same shape. */
void *mla_cuda_pool_data(mla_cuda_pool *pool, size_t *bytes);

/* Writes n rows [n][r+m] (f32, dev) to physical rows slots[n] (dev;
   slot = block * block_size + offset in block) of `layer`. */
mla_result mla_cuda_append(mla_cuda_pool *pool, int layer, int n, const float *rows, const int *slots, void *stream);

/* Scratch bytes mla_cuda_decode needs for B sequences of up to max_len tokens. */
size_t mla_cuda_decode_workspace_bytes(const mla_cuda_pool *pool, int B, int n_heads, int max_len);

/* Absorbed decode: for each sequence b and head h,
     s[t] = scale * (q_lat[b][h] . c[t] + q_pe[b][h] . k_pe[t]),  o_lat[b][h] = sum_t softmax(s)[t] c[t]
   over the seq_lens[b] cached tokens of `layer` (block_tables [B][max_blocks]).
   q_lat [B][H][r], q_pe [B][H][m] (RoPE applied), o_lat [B][H][r]: f32, dev.
   max_len >= every seq_lens[b] (host value; sizes the split plan). */
mla_result mla_cuda_decode(mla_cuda_pool *pool, int layer, int B, int n_heads, const float *q_lat, const float *q_pe,
                           const int *block_tables, int max_blocks, const int *seq_lens, int max_len, float scale,
                           float *o_lat, void *workspace, size_t workspace_bytes, void *stream);

/* memory helpers (cudaMalloc / cudaMemcpy, or malloc / memcpy in the CPU build) */
void *mla_cuda_malloc(size_t bytes);
void mla_cuda_free(void *p);
int mla_cuda_to_device(void *dst, const void *src, size_t bytes);
int mla_cuda_to_host(void *dst, const void *src, size_t bytes);
int mla_cuda_copy(void *dst, const void *src, size_t bytes); /* device to device */
int mla_cuda_sync(void);
int mla_cuda_is_gpu(void); /* 1 when built with nvcc */

/* The split-KV plan (shared by both builds): tokens per split, a multiple of
   the tile, and the number of splits. */
void mla_cuda_plan(int B, int n_heads, int max_len, int *split_len, int *n_splits);

#ifdef __cplusplus
}
#endif
#endif
