/* mla_cuda.cu - the CUDA backend declared in mla_cuda.h.
   nvcc: GPU kernels. cc -x c: the same split-KV algorithm on the CPU.

   Decode algorithm (both builds):
     for every (sequence b, split s of its context, group of HG heads):
        read the split's cache rows tile by tile (each tile once for the whole
        head group), scores for all heads of the group, online softmax,
        accumulate the unnormalised latent output; write (o, max, sum).
     combine: for every (b, h): M = max_s m_s,
        o = sum_s e^(m_s - M) o_s / sum_s e^(m_s - M) l_s.
   Tiles are 32 tokens (16 when r + m > 640, to fit shared memory); heads go
   in groups of 8; every block of 256 threads
   reads a tile into shared memory in f32. No tensor cores yet (SIMT fp32):
   see README, "CUDA backend". */
#include "mla_cuda.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MC_TILE 32
#define MC_HG 8
#define MC_THREADS 256

struct mla_cuda_pool {
    mla_dtype type;
    int n_layers, r, m, block_size, n_blocks;
    void *data;
    size_t bytes;
    char err[256];
};

static size_t mc_elsize(mla_dtype t) { return t == MLA_F32 ? 4 : 2; }

void mla_cuda_plan(int B, int n_heads, int max_len, int *split_len, int *n_splits) {
    /* enough blocks to fill a large GPU (~2 waves of 132 SMs) without
       splitting below 256 tokens per split */
    int groups = (n_heads + MC_HG - 1) / MC_HG, want = 264 / (B * groups > 0 ? B * groups : 1), sl;
    if (want < 1) want = 1;
    sl = (max_len + want - 1) / want;
    if (sl < 256) sl = 256;
    sl = (sl + MC_TILE - 1) / MC_TILE * MC_TILE;
    *split_len = sl;
    *n_splits = max_len > 0 ? (max_len + sl - 1) / sl : 1;
}

size_t mla_cuda_decode_workspace_bytes(const mla_cuda_pool *p, int B, int n_heads, int max_len) {
    int sl, ns;
    if (!p || B <= 0 || n_heads <= 0 || max_len < 0) return 0;
    mla_cuda_plan(B, n_heads, max_len, &sl, &ns);
    return sizeof(float) * (size_t)B * n_heads * ns * (size_t)(p->r + 2);
}

static mla_result mc_check_decode(const mla_cuda_pool *p, int layer, int B, int H, const float *q_lat, const float *q_pe,
                                  const int *bt, int max_blocks, const int *lens, int max_len, float *o,
                                  void *ws, size_t ws_bytes) {
    if (!p || !q_lat || !bt || !lens || !o || !ws) return MLA_ERR_INVALID_ARG;
    if (p->m > 0 && !q_pe) return MLA_ERR_INVALID_ARG;
    if (layer < 0 || layer >= p->n_layers || B <= 0 || H <= 0 || max_blocks <= 0 || max_len < 0) return MLA_ERR_INVALID_ARG;
    if ((long)max_len > (long)max_blocks * p->block_size) return MLA_ERR_SHAPE;
    if (ws_bytes < mla_cuda_decode_workspace_bytes(p, B, H, max_len)) return MLA_ERR_WORKSPACE;
    return MLA_OK;
}

mla_result mla_cuda_pool_create(mla_cuda_pool **out, mla_dtype type, int n_layers, int r, int m, int bs, int nb) {
    mla_cuda_pool *p;
    if (!out) return MLA_ERR_INVALID_ARG;
    *out = NULL;
    if (type != MLA_F32 && type != MLA_F16 && type != MLA_BF16) return MLA_ERR_INVALID_ARG;
    if (n_layers <= 0 || bs <= 0 || nb <= 0) return MLA_ERR_INVALID_ARG;
    if (r <= 0 || r > MLA_CUDA_MAX_RANK || m < 0 || m > MLA_CUDA_MAX_ROPE || m % 2) return MLA_ERR_SHAPE;
    p = (mla_cuda_pool *)calloc(1, sizeof *p);
    if (!p) return MLA_ERR_OUT_OF_MEMORY;
    p->type = type; p->n_layers = n_layers; p->r = r; p->m = m; p->block_size = bs; p->n_blocks = nb;
    p->bytes = (size_t)nb * n_layers * bs * (size_t)(r + m) * mc_elsize(type);
    p->data = mla_cuda_malloc(p->bytes);
    if (!p->data) {
        free(p);
        return MLA_ERR_OUT_OF_MEMORY;
    }
    *out = p;
    return MLA_OK;
}

void mla_cuda_pool_destroy(mla_cuda_pool *p) {
    if (!p) return;
    mla_cuda_free(p->data);
    free(p);
}

const char *mla_cuda_error(const mla_cuda_pool *p) { return p ? p->err : "no pool"; }

void *mla_cuda_pool_data(mla_cuda_pool *p, size_t *bytes) {
    if (bytes) *bytes = p ? p->bytes : 0;
    return p ? p->data : NULL;
}

#ifdef __CUDACC__
/* ============================================================== GPU === */
#include <cuda_fp16.h>
#include <cuda_runtime.h>

static mla_result mc_cuda(mla_cuda_pool *p, cudaError_t e) {
    if (e == cudaSuccess) return MLA_OK;
    if (p) snprintf(p->err, sizeof p->err, "%s", cudaGetErrorString(e));
    return e == cudaErrorMemoryAllocation ? MLA_ERR_OUT_OF_MEMORY : MLA_ERR_INVALID_ARG;
}

void *mla_cuda_malloc(size_t bytes) {
    void *p = NULL;
    return cudaMalloc(&p, bytes ? bytes : 1) == cudaSuccess ? p : NULL;
}
void mla_cuda_free(void *p) { if (p) cudaFree(p); }
int mla_cuda_to_device(void *d, const void *s, size_t n) { return cudaMemcpy(d, s, n, cudaMemcpyHostToDevice) == cudaSuccess ? 0 : -1; }
int mla_cuda_to_host(void *d, const void *s, size_t n) { return cudaMemcpy(d, s, n, cudaMemcpyDeviceToHost) == cudaSuccess ? 0 : -1; }
int mla_cuda_copy(void *d, const void *s, size_t n) { return cudaMemcpy(d, s, n, cudaMemcpyDeviceToDevice) == cudaSuccess ? 0 : -1; }
int mla_cuda_sync(void) { return cudaDeviceSynchronize() == cudaSuccess ? 0 : -1; }
int mla_cuda_is_gpu(void) { return 1; }

__device__ __forceinline__ float mc_load(const float *p) { return *p; }
__device__ __forceinline__ float mc_load(const __half *p) { return __half2float(*p); }
__device__ __forceinline__ float mc_load(const unsigned short *p) { return __uint_as_float((unsigned)*p << 16); } /* bf16 */
__device__ __forceinline__ void mc_store(float *p, float v) { *p = v; }
__device__ __forceinline__ void mc_store(__half *p, float v) { *p = __float2half_rn(v); }
__device__ __forceinline__ void mc_store(unsigned short *p, float v) {
    unsigned x = __float_as_uint(v);
    if ((x & 0x7fffffffu) > 0x7f800000u) { *p = (unsigned short)((x >> 16) | 0x40u); return; }
    x += 0x7fffu + ((x >> 16) & 1u);
    *p = (unsigned short)(x >> 16);
}

template <typename T>
__global__ void mc_append_kernel(T *pool, int n_layers, int layer, int bs, int D, int n, const float *rows, const int *slots) {
    int i = blockIdx.x, c;
    int slot = slots[i], blk = slot / bs, off = slot % bs;
    T *dst = pool + (((size_t)blk * n_layers + layer) * bs + off) * D;
    for (c = threadIdx.x; c < D; c += blockDim.x) mc_store(dst + c, rows[(size_t)i * D + c]);
    (void)n;
}

/* grid (n_splits, B, head groups), MC_THREADS threads; dynamic shared memory:
   q [HG][D] + tile [TILE][D] + scores [HG][TILE] + max/sum/alpha [3][HG] */
template <typename T>
__global__ void __launch_bounds__(MC_THREADS) mc_decode_kernel(
    const T *pool, int n_layers, int layer, int bs, int r, int m, int H, const float *q_lat, const float *q_pe,
    const int *block_tables, int max_blocks, const int *seq_lens, float scale, int split_len, int n_splits,
    int tile, float *part_o, float *part_ml) {
    extern __shared__ float sm[];
    const int D = r + m, s = blockIdx.x, b = blockIdx.y, h0 = blockIdx.z * MC_HG, tid = threadIdx.x;
    const int lane = tid & 31, warp = tid >> 5, n_warps = MC_THREADS / 32;
    const int nh = min(MC_HG, H - h0), len = seq_lens[b];
    const int t_begin = s * split_len, t_end = min(len, t_begin + split_len);
    float *q = sm, *kv = q + MC_HG * D, *sc = kv + tile * D, *mx = sc + MC_HG * MC_TILE, *sum = mx + MC_HG,
          *alpha = sum + MC_HG;
    float acc[MC_HG * MLA_CUDA_MAX_RANK / MC_THREADS]; /* element e = tid + k*THREADS of [nh][r] */
    const int n_acc = (nh * r + MC_THREADS - 1) / MC_THREADS;
    int i, k, t0;
#pragma unroll
    for (k = 0; k < MC_HG * MLA_CUDA_MAX_RANK / MC_THREADS; k++) acc[k] = 0.0f;
    for (i = tid; i < nh * D; i += MC_THREADS) {
        int h = i / D, c = i % D;
        size_t bh = (size_t)b * H + h0 + h;
        q[i] = c < r ? q_lat[bh * r + c] : q_pe[bh * m + c - r];
    }
    if (tid < MC_HG) { mx[tid] = -INFINITY; sum[tid] = 0.0f; }
    __syncthreads();
    for (t0 = t_begin; t0 < t_end; t0 += tile) {
        const int nt = min(tile, t_end - t0);
        for (i = tid; i < nt * D; i += MC_THREADS) { /* the tile, once for all heads of the group */
            int tt = i / D, c = i % D, pos = t0 + tt;
            int blk = block_tables[(size_t)b * max_blocks + pos / bs];
            kv[i] = mc_load(pool + (((size_t)blk * n_layers + layer) * bs + pos % bs) * D + c);
        }
        __syncthreads();
        for (i = warp; i < nh * nt; i += n_warps) { /* one warp per (head, token) score */
            int h = i / nt, tt = i % nt, c;
            float d = 0.0f;
            for (c = lane; c < D; c += 32) d += q[h * D + c] * kv[tt * D + c];
            for (c = 16; c > 0; c >>= 1) d += __shfl_xor_sync(0xffffffffu, d, c);
            if (lane == 0) sc[h * MC_TILE + tt] = d * scale;
        }
        __syncthreads();
        if (tid < nh) { /* online softmax per head */
            float mnew = mx[tid], l = 0.0f;
            int tt;
            for (tt = 0; tt < nt; tt++) mnew = fmaxf(mnew, sc[tid * MC_TILE + tt]);
            for (tt = 0; tt < nt; tt++) {
                float pr = __expf(sc[tid * MC_TILE + tt] - mnew);
                sc[tid * MC_TILE + tt] = pr;
                l += pr;
            }
            alpha[tid] = __expf(mx[tid] - mnew); /* 0 on the first tile (-inf) */
            sum[tid] = sum[tid] * alpha[tid] + l;
            mx[tid] = mnew;
        }
        __syncthreads();
#pragma unroll
        for (k = 0; k < MC_HG * MLA_CUDA_MAX_RANK / MC_THREADS; k++) {
            if (k < n_acc) {
                int e = tid + k * MC_THREADS, h = e / r, c = e % r, tt;
                if (h < nh) {
                    float a = acc[k] * alpha[h];
                    for (tt = 0; tt < nt; tt++) a += sc[h * MC_TILE + tt] * kv[tt * D + c];
                    acc[k] = a;
                }
            }
        }
        __syncthreads();
    }
#pragma unroll
    for (k = 0; k < MC_HG * MLA_CUDA_MAX_RANK / MC_THREADS; k++) {
        if (k < n_acc) {
            int e = tid + k * MC_THREADS, h = e / r, c = e % r;
            if (h < nh) part_o[(((size_t)b * H + h0 + h) * n_splits + s) * r + c] = acc[k];
        }
    }
    if (tid < nh) {
        size_t at = (((size_t)b * H + h0 + tid) * n_splits + s) * 2;
        part_ml[at] = mx[tid];
        part_ml[at + 1] = sum[tid];
    }
}

/* grid (H, B), r threads (<= 1024) */
__global__ void mc_combine_kernel(int H, int r, int n_splits, const float *part_o, const float *part_ml, float *o_lat) {
    const int h = blockIdx.x, b = blockIdx.y, c = threadIdx.x;
    const size_t bh = (size_t)b * H + h;
    float M = -INFINITY, den = 0.0f, num = 0.0f;
    int s;
    if (c >= r) return;
    for (s = 0; s < n_splits; s++) M = fmaxf(M, part_ml[(bh * n_splits + s) * 2]);
    for (s = 0; s < n_splits; s++) {
        float ms = part_ml[(bh * n_splits + s) * 2], w = ms == -INFINITY ? 0.0f : __expf(ms - M);
        den += w * part_ml[(bh * n_splits + s) * 2 + 1];
        num += w * part_o[(bh * n_splits + s) * r + c];
    }
    o_lat[bh * r + c] = den > 0.0f ? num / den : 0.0f;
}

mla_result mla_cuda_append(mla_cuda_pool *p, int layer, int n, const float *rows, const int *slots, void *stream) {
    int D;
    cudaStream_t st = (cudaStream_t)stream;
    if (!p || !rows || !slots || n < 0 || layer < 0 || layer >= p->n_layers) return MLA_ERR_INVALID_ARG;
    if (n == 0) return MLA_OK;
    D = p->r + p->m;
    if (p->type == MLA_F32) mc_append_kernel<float><<<n, 128, 0, st>>>((float *)p->data, p->n_layers, layer, p->block_size, D, n, rows, slots);
    else if (p->type == MLA_F16) mc_append_kernel<__half><<<n, 128, 0, st>>>((__half *)p->data, p->n_layers, layer, p->block_size, D, n, rows, slots);
    else mc_append_kernel<unsigned short><<<n, 128, 0, st>>>((unsigned short *)p->data, p->n_layers, layer, p->block_size, D, n, rows, slots);
    return mc_cuda(p, cudaGetLastError());
}

mla_result mla_cuda_decode(mla_cuda_pool *p, int layer, int B, int H, const float *q_lat, const float *q_pe,
                           const int *bt, int max_blocks, const int *lens, int max_len, float scale, float *o_lat,
                           void *ws, size_t ws_bytes, void *stream) {
    int sl, ns, D, tile;
    size_t smem;
    float *part_o, *part_ml;
    dim3 grid;
    cudaStream_t st = (cudaStream_t)stream;
    mla_result rc = mc_check_decode(p, layer, B, H, q_lat, q_pe, bt, max_blocks, lens, max_len, o_lat, ws, ws_bytes);
    if (rc != MLA_OK) return rc;
    mla_cuda_plan(B, H, max_len, &sl, &ns);
    D = p->r + p->m;
    tile = D > 640 ? MC_TILE / 2 : MC_TILE; /* split_len stays a multiple of either */
    smem = sizeof(float) * ((size_t)MC_HG * D + (size_t)tile * D + MC_HG * MC_TILE + 3 * MC_HG);
    part_o = (float *)ws;
    part_ml = part_o + (size_t)B * H * ns * p->r;
    grid = dim3(ns, B, (H + MC_HG - 1) / MC_HG);
#define MC_LAUNCH(T)                                                                                              \
    do {                                                                                                          \
        rc = mc_cuda(p, cudaFuncSetAttribute(mc_decode_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem)); \
        if (rc != MLA_OK) return rc;                                                                              \
        mc_decode_kernel<T><<<grid, MC_THREADS, smem, st>>>((const T *)p->data, p->n_layers, layer, p->block_size, p->r, \
                                                            p->m, H, q_lat, q_pe, bt, max_blocks, lens, scale, sl, ns,   \
                                                            tile, part_o, part_ml);                                \
    } while (0)
    if (p->type == MLA_F32) MC_LAUNCH(float);
    else if (p->type == MLA_F16) MC_LAUNCH(__half);
    else MC_LAUNCH(unsigned short);
#undef MC_LAUNCH
    if ((rc = mc_cuda(p, cudaGetLastError())) != MLA_OK) return rc;
    mc_combine_kernel<<<dim3(H, B), p->r, 0, st>>>(H, p->r, ns, part_o, part_ml, o_lat);
    return mc_cuda(p, cudaGetLastError());
}

#else
/* ====================================================== CPU build === */
void *mla_cuda_malloc(size_t bytes) { return malloc(bytes ? bytes : 1); }
void mla_cuda_free(void *p) { free(p); }
int mla_cuda_to_device(void *d, const void *s, size_t n) { memcpy(d, s, n); return 0; }
int mla_cuda_to_host(void *d, const void *s, size_t n) { memcpy(d, s, n); return 0; }
int mla_cuda_copy(void *d, const void *s, size_t n) { memcpy(d, s, n); return 0; }
int mla_cuda_sync(void) { return 0; }
int mla_cuda_is_gpu(void) { return 0; }

static float mc_load(const mla_cuda_pool *p, size_t idx) {
    if (p->type == MLA_F32) return ((const float *)p->data)[idx];
    if (p->type == MLA_F16) return mla_f16_to_f32(((const uint16_t *)p->data)[idx]);
    return mla_bf16_to_f32(((const uint16_t *)p->data)[idx]);
}

mla_result mla_cuda_append(mla_cuda_pool *p, int layer, int n, const float *rows, const int *slots, void *stream) {
    int i, c, D;
    (void)stream;
    if (!p || !rows || !slots || n < 0 || layer < 0 || layer >= p->n_layers) return MLA_ERR_INVALID_ARG;
    D = p->r + p->m;
    for (i = 0; i < n; i++) {
        int blk = slots[i] / p->block_size, off = slots[i] % p->block_size;
        size_t at = (((size_t)blk * p->n_layers + layer) * p->block_size + off) * D;
        if (slots[i] < 0 || blk >= p->n_blocks) return MLA_ERR_INVALID_ARG;
        for (c = 0; c < D; c++) {
            float v = rows[(size_t)i * D + c];
            if (p->type == MLA_F32) ((float *)p->data)[at + c] = v;
            else if (p->type == MLA_F16) ((uint16_t *)p->data)[at + c] = mla_f32_to_f16(v);
            else ((uint16_t *)p->data)[at + c] = mla_f32_to_bf16(v);
        }
    }
    return MLA_OK;
}

mla_result mla_cuda_decode(mla_cuda_pool *p, int layer, int B, int H, const float *q_lat, const float *q_pe,
                           const int *bt, int max_blocks, const int *lens, int max_len, float scale, float *o_lat,
                           void *ws, size_t ws_bytes, void *stream) {
    int sl, ns, b, h, s, c, t, D;
    float *part_o, *part_ml, *row;
    mla_result rc = mc_check_decode(p, layer, B, H, q_lat, q_pe, bt, max_blocks, lens, max_len, o_lat, ws, ws_bytes);
    (void)stream;
    if (rc != MLA_OK) return rc;
    mla_cuda_plan(B, H, max_len, &sl, &ns);
    D = p->r + p->m;
    part_o = (float *)ws;
    part_ml = part_o + (size_t)B * H * ns * p->r;
    row = (float *)malloc(sizeof(float) * (size_t)D);
    if (!row) return MLA_ERR_OUT_OF_MEMORY;
    for (b = 0; b < B; b++) {
        if (lens[b] < 0 || lens[b] > max_len) { free(row); return MLA_ERR_INVALID_ARG; }
        for (s = 0; s < ns; s++)
            for (h = 0; h < H; h++) { /* one split of one head: online softmax, as the kernel */
                size_t bh = (size_t)b * H + h;
                float mx = -INFINITY, sum = 0.0f, *o = part_o + (bh * ns + s) * p->r;
                const float *ql = q_lat + bh * p->r, *qp = q_pe ? q_pe + bh * p->m : NULL;
                int t_end = lens[b] < (s + 1) * sl ? lens[b] : (s + 1) * sl;
                memset(o, 0, sizeof(float) * (size_t)p->r);
                for (t = s * sl; t < t_end; t++) {
                    int blk = bt[(size_t)b * max_blocks + t / p->block_size];
                    size_t at = (((size_t)blk * p->n_layers + layer) * p->block_size + t % p->block_size) * D;
                    float d = 0.0f, mnew, a, pr;
                    for (c = 0; c < D; c++) row[c] = mc_load(p, at + c);
                    for (c = 0; c < p->r; c++) d += ql[c] * row[c];
                    for (c = 0; c < p->m; c++) d += qp[c] * row[p->r + c];
                    d *= scale;
                    mnew = d > mx ? d : mx;
                    a = expf(mx - mnew);
                    pr = expf(d - mnew);
                    for (c = 0; c < p->r; c++) o[c] = o[c] * a + pr * row[c];
                    sum = sum * a + pr;
                    mx = mnew;
                }
                part_ml[(bh * ns + s) * 2] = mx;
                part_ml[(bh * ns + s) * 2 + 1] = sum;
            }
        for (h = 0; h < H; h++) { /* log-sum-exp combine of the splits */
            size_t bh = (size_t)b * H + h;
            float M = -INFINITY, den = 0.0f;
            for (s = 0; s < ns; s++) if (part_ml[(bh * ns + s) * 2] > M) M = part_ml[(bh * ns + s) * 2];
            for (c = 0; c < p->r; c++) o_lat[bh * p->r + c] = 0.0f;
            for (s = 0; s < ns; s++) {
                float ms = part_ml[(bh * ns + s) * 2], w = ms == -INFINITY ? 0.0f : expf(ms - M);
                den += w * part_ml[(bh * ns + s) * 2 + 1];
                for (c = 0; c < p->r; c++) o_lat[bh * p->r + c] += w * part_o[(bh * ns + s) * p->r + c];
            }
            for (c = 0; c < p->r; c++) o_lat[bh * p->r + c] = den > 0.0f ? o_lat[bh * p->r + c] / den : 0.0f;
        }
    }
    free(row);
    return MLA_OK;
}
#endif
