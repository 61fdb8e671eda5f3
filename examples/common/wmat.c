#include "wmat.h"
#include "../../mla.h"
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__) && !defined(MLA_NO_SIMD)
#include <immintrin.h>
#define WMAT_AVX2 1
#endif

int wmat_from_gguf(wmat *w, gguf_file *f, const char *name, int rows, int cols) {
    const gguf_tensor *t = gguf_tensor_matrix(f, name, rows, cols);
    int blk, bb, i, j;
    float *row;
    memset(w, 0, sizeof *w);
    if (!t) return -1;
    if (ggml_type_info(t->type, &blk, &bb) || cols % blk) {
        snprintf(f->err, sizeof f->err, "tensor %s: type %s is not supported", name, ggml_type_name(t->type));
        return -1;
    }
    w->type = t->type; w->rows = rows; w->cols = cols; w->q = t->data;
    w->row_bytes = (size_t)(cols / blk) * (size_t)bb;
    if (!(row = (float *)malloc(sizeof(float) * (size_t)cols))) { snprintf(f->err, sizeof f->err, "out of memory"); return -1; }
    for (i = 0; i < rows; i++) { /* NaN or Inf anywhere is a load error, as for f32 tensors */
        wmat_row(w, i, row);
        for (j = 0; j < cols; j++)
            if (!(row[j] - row[j] == 0.0f)) {
                snprintf(f->err, sizeof f->err, "tensor %s has NaN or Inf values", name);
                free(row);
                return -1;
            }
    }
    free(row);
    return 0;
}

void wmat_view_f32(wmat *w, const float *p, int rows, int cols) {
    w->type = GGML_F32; w->rows = rows; w->cols = cols; w->q = (const uint8_t *)p;
    w->row_bytes = sizeof(float) * (size_t)cols;
}

void wmat_row(const wmat *w, int i, float *out) {
    gguf_dequant(w->type, w->q + (size_t)i * w->row_bytes, out, (uint64_t)w->cols);
}

float *wmat_f32(const wmat *w) {
    float *p = (float *)malloc(sizeof(float) * (size_t)w->rows * (size_t)w->cols);
    int i;
    if (p)
        for (i = 0; i < w->rows; i++) wmat_row(w, i, p + (size_t)i * w->cols);
    return p;
}

#ifdef WMAT_AVX2
static float h2f(const uint8_t *p) { /* F16C, inline: two per block, a call each would cost more */
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}

static float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
/* 8 bytes -> 8 floats */
#define I8F(p) _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(p))))

/* the 32 dequantized weights w0..w3 times 32 activations, as 8 partial sums:
   two independent products and one add per block, so that the accumulator's
   chain has one add per block (four FMAs into it made every block wait on
   FMA latency) */
static __m256 block_dot(__m256 w0, __m256 w1, __m256 w2, __m256 w3, const float *xb) {
    __m256 p0 = _mm256_mul_ps(w0, _mm256_loadu_ps(xb)), p1 = _mm256_mul_ps(w1, _mm256_loadu_ps(xb + 8));
    p0 = _mm256_fmadd_ps(w2, _mm256_loadu_ps(xb + 16), p0);
    p1 = _mm256_fmadd_ps(w3, _mm256_loadu_ps(xb + 24), p1);
    return _mm256_add_ps(p0, p1);
}
/* accumulators a0..a3 (tokens 0..3) named, not indexed, so they stay in registers */
#define BLOCK_FMA(xb)                                                                 \
    do {                                                                              \
        a0 = _mm256_add_ps(a0, block_dot(w0, w1, w2, w3, xb));                        \
        if (T > 1) a1 = _mm256_add_ps(a1, block_dot(w0, w1, w2, w3, (xb) + C));       \
        if (T > 2) a2 = _mm256_add_ps(a2, block_dot(w0, w1, w2, w3, (xb) + 2 * C));   \
        if (T > 3) a3 = _mm256_add_ps(a3, block_dot(w0, w1, w2, w3, (xb) + 3 * (size_t)C)); \
    } while (0)
#endif

/* out[t] = dot of one stored row with x + t*C, t < T (T <= 4): each block is
   dequantized once and used for every token */
static void row_dot(const wmat *w, const uint8_t *r, const float *x, int C, int T, float *out) {
    int n = w->cols, j, t;
    float sum[4] = {0, 0, 0, 0};
#ifdef WMAT_AVX2
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int b, simd = 1;
    switch (w->type) {
    case GGML_Q4_0: case GGML_Q4_1:
        for (b = 0; b < n / 32; b++) {
            int q41 = w->type == GGML_Q4_1;
            const uint8_t *s = r + (size_t)b * (q41 ? 20 : 18);
            const float *xb = x + (size_t)b * 32;
            __m256 d = _mm256_set1_ps(h2f(s)), m = _mm256_set1_ps(q41 ? h2f(s + 2) : -8.0f * h2f(s));
            __m128i v = _mm_loadu_si128((const __m128i *)(s + (q41 ? 4 : 2))), mask = _mm_set1_epi8(15);
            __m128i lo = _mm_and_si128(v, mask), hi = _mm_and_si128(_mm_srli_epi16(v, 4), mask);
            __m256 w0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo)), d, m);
            __m256 w1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8))), d, m);
            __m256 w2 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi)), d, m);
            __m256 w3 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8))), d, m);
            BLOCK_FMA(xb);
        }
        break;
    case GGML_Q8_0:
        for (b = 0; b < n / 32; b++) {
            const uint8_t *s = r + (size_t)b * 34;
            const float *xb = x + (size_t)b * 32;
            __m256 d = _mm256_set1_ps(h2f(s));
            __m256 w0 = _mm256_mul_ps(I8F(s + 2), d), w1 = _mm256_mul_ps(I8F(s + 10), d);
            __m256 w2 = _mm256_mul_ps(I8F(s + 18), d), w3 = _mm256_mul_ps(I8F(s + 26), d);
            BLOCK_FMA(xb);
        }
        break;
    case GGML_F16: case GGML_BF16:
        for (j = 0; j + 8 <= n; j += 8) {
            __m128i h = _mm_loadu_si128((const __m128i *)(r + 2 * j));
            __m256 wv = w->type == GGML_F16 ? _mm256_cvtph_ps(h)
                                            : _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
            a0 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + j), a0);
            if (T > 1) a1 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + C + j), a1);
            if (T > 2) a2 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + 2 * (size_t)C + j), a2);
            if (T > 3) a3 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + 3 * (size_t)C + j), a3);
        }
        simd = 2; /* the tail n % 8 below */
        break;
    default: simd = 0; break;
    }
    sum[0] = hsum8(a0); sum[1] = hsum8(a1); sum[2] = hsum8(a2); sum[3] = hsum8(a3);
    if (simd == 1) {
        for (t = 0; t < T; t++) out[t] = sum[t];
        return;
    }
#endif
    { /* portable path (and the tail SIMD leaves): 32 values at a time */
        float buf[32];
        int blk, bb, c, k, start = 0;
        ggml_type_info(w->type, &blk, &bb); /* F32/F16/BF16: blk 1, bb bytes per value */
#ifdef WMAT_AVX2
        if (simd == 2) start = n - n % 8;
#endif
        for (j = start; j < n; j += c) {
            c = n - j < 32 ? n - j : 32; /* block types: n % 32 == 0, so always 32 */
            gguf_dequant(w->type, r + (blk == 1 ? (size_t)j * bb : (size_t)(j / 32) * bb), buf, (uint64_t)c);
            for (t = 0; t < T; t++)
                for (k = 0; k < c; k++) sum[t] += buf[k] * x[(size_t)t * C + j + k];
        }
    }
    for (t = 0; t < T; t++) out[t] = sum[t];
}

#define WMAT_TILE 64
#define WMAT_FUSED_T 16 /* up to this many tokens: the fused row kernel, no allocation */

void wmat_mul(float *y, const float *x, const wmat *w, int T) {
    int R = w->rows, C = w->cols, i0;
    if (w->type == GGML_F32 && (uintptr_t)w->q % sizeof(float) == 0) { /* stored f32: mla.h's product on the
                                                                          rows as they are (aligned: a file read
                                                                          whole is; a borrowed buffer may not be) */
        mla_matmul(y, x, (const float *)(const void *)w->q, NULL, T, R, C);
        return;
    }
    if (T <= WMAT_FUSED_T) { /* decode and short prompts: blocks dequantized per 4 tokens */
        int i;
#ifdef _OPENMP
#pragma omp parallel for schedule(static)
#endif
        for (i = 0; i < R; i++) {
            float o[4];
            int t0, t;
            for (t0 = 0; t0 < T; t0 += 4) {
                int n = T - t0 < 4 ? T - t0 : 4;
                row_dot(w, w->q + (size_t)i * w->row_bytes, x + (size_t)t0 * C, C, n, o);
                for (t = 0; t < n; t++) y[(size_t)(t0 + t) * R + i] = o[t];
            }
        }
        return;
    }
#ifdef _OPENMP
#pragma omp parallel
#endif
    {
        float *tile = (float *)malloc(sizeof(float) * WMAT_TILE * (size_t)C);
        float *yt = (float *)malloc(sizeof(float) * WMAT_TILE * (size_t)T);
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (i0 = 0; i0 < R; i0 += WMAT_TILE) {
            int n = R - i0 < WMAT_TILE ? R - i0 : WMAT_TILE, i, t;
            if (!tile || !yt) { /* out of memory: the row kernel, slowly */
                for (i = 0; i < n; i++)
                    for (t = 0; t < T; t++)
                        row_dot(w, w->q + (size_t)(i0 + i) * w->row_bytes, x + (size_t)t * C, C, 1, &y[(size_t)t * R + i0 + i]);
                continue;
            }
            for (i = 0; i < n; i++) wmat_row(w, i0 + i, tile + (size_t)i * C);
            mla_matmul(yt, x, tile, NULL, T, n, C);
            for (t = 0; t < T; t++) memcpy(y + (size_t)t * R + i0, yt + (size_t)t * n, sizeof(float) * (size_t)n);
        }
        free(tile);
        free(yt);
    }
}
