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
    w->rp8 = 0;
}

/* ---- the repacked layout (wmat_repack): per 32-block of a group of 8 rows,
   the f16 scalars of the 8 rows (d, then Q4_1's m: 16 bytes each), then the
   codes in chunks of 32 bytes, chunk k = bytes 4k..4k+3 of each row's codes
   in turn (Q4: 4 chunks, low nibbles columns 4k.., high ones 16+4k..; Q8_0:
   8 chunks, columns 4k..). Where byte j of row `lane`'s stored block goes: */
static size_t rp_off(uint32_t type, int lane, int j) {
    int nscal = type == GGML_Q4_1 ? 2 : 1, jj = j - 2 * nscal;
    if (jj < 0) return (size_t)(j / 2 * 16 + 2 * lane + j % 2);
    return (size_t)(16 * nscal + 32 * (jj / 4) + 4 * lane + jj % 4);
}

void wmat_row(const wmat *w, int i, float *out) {
    if (w->rp8) { /* rebuild the row's blocks as stored, then the one dequantizer */
        int blk, bb, b, j, lane = i % 8;
        const uint8_t *g = w->q + (size_t)(i - lane) * w->row_bytes;
        uint8_t one[34];
        ggml_type_info(w->type, &blk, &bb);
        for (b = 0; b < w->cols / 32; b++) {
            for (j = 0; j < bb; j++) one[j] = g[(size_t)b * 8 * bb + rp_off(w->type, lane, j)];
            gguf_dequant(w->type, one, out + (size_t)b * 32, 32);
        }
        return;
    }
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

#ifdef WMAT_AVX2
/* ---- 8-bit activations (what llama.cpp does for these types): each token's
   activations quantized per 32-block to int8 with scale d = max|x|/127, so a
   block's product is d_w d_x sum(q_w q_x) in exact int32 arithmetic
   (vpdpbusd with AVX512-VNNI, else vpmaddubsw + vpmaddwd), plus the offset
   term m_w d_x sum(q_x) for Q4_1 (-8 d_w d_x sum(q_x) for Q4_0). The error is
   that of rounding x to 8 bits per block (<= d_x/2 per value). */
typedef struct { float d, s; } act_scale; /* d_x and d_x * sum(q_x) of one block */
#define WMAT_QCOLS 4096                    /* widest activation quantized on the stack */
static int g_act8 = 1;
void wmat_set_act8(int on) { g_act8 = on; }
int wmat_act8(void) { return g_act8; }

/* per 32-block: amax by vector max, q = nearest(x / d) with the rounding of
   the default MXCSR mode (to nearest even, as lrintf), d x sum(q) */
static void quant_act(const float *x, int n, int8_t *q, act_scale *sc) {
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    int b, j;
    for (b = 0; b < n / 32; b++) {
        const float *xb = x + b * 32;
        __m256 v[4], mx;
        __m256i i[4], s16, s32;
        __m128 m4;
        float amax, d, id;
        for (j = 0; j < 4; j++) v[j] = _mm256_loadu_ps(xb + 8 * j);
        mx = _mm256_max_ps(_mm256_max_ps(_mm256_and_ps(v[0], absmask), _mm256_and_ps(v[1], absmask)),
                           _mm256_max_ps(_mm256_and_ps(v[2], absmask), _mm256_and_ps(v[3], absmask)));
        m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        amax = _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4)));
        d = amax / 127.0f;
        id = d > 0 ? 1.0f / d : 0.0f;
        for (j = 0; j < 4; j++) i[j] = _mm256_cvtps_epi32(_mm256_mul_ps(v[j], _mm256_set1_ps(id)));
        /* |q| <= 127: the packs saturate nothing; their lane order is undone by the permute */
        s16 = _mm256_packs_epi16(_mm256_packs_epi32(i[0], i[1]), _mm256_packs_epi32(i[2], i[3]));
        _mm256_storeu_si256((__m256i *)(q + b * 32),
                            _mm256_permutevar8x32_epi32(s16, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
        s32 = _mm256_add_epi32(_mm256_add_epi32(i[0], i[1]), _mm256_add_epi32(i[2], i[3]));
        sc[b].d = d;
        sc[b].s = d * (float)hsum8(_mm256_cvtepi32_ps(s32));
    }
}

/* int32[8] partial sums of u8 u times s8 s (32 products) */
static __m256i dot_u8s8(__m256i u, __m256i s) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
#else
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
#endif
}

/* one token's block: int dot, scaled by [d_w d_x, m_w d_x sum q_x] = dm * its act_scale,
   into named accumulators a<t> (8 lanes) and m<t> (lane 1: the offset terms) */
#define Q8_TOKEN(t, sgn)                                                                              \
    if (T > t) {                                                                                      \
        __m256i x_ = _mm256_loadu_si256((const __m256i *)(q + (size_t)(t) * C + (size_t)b * 32));    \
        __m128 ds_ = _mm_mul_ps(dm, _mm_castpd_ps(_mm_load_sd((const double *)(const void *)(sc + (size_t)(t) * nb + b)))); \
        __m256i p_ = dot_u8s8(u, sgn(x_));                                                            \
        a##t = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p_), _mm256_broadcastss_ps(ds_), a##t);              \
        m##t = _mm_add_ps(m##t, ds_);                                                                 \
    }
#define Q8_TOKENS(sgn) Q8_TOKEN(0, sgn) Q8_TOKEN(1, sgn) Q8_TOKEN(2, sgn) Q8_TOKEN(3, sgn)
#define NO_SIGN(x) (x)
#define W_SIGN(x) _mm256_sign_epi8((x), sg)

/* a Q4 block's 16 bytes -> its 32 codes in order (low nibbles, then high) */
static __m256i q4_codes(const uint8_t *qs) {
    __m128i v = _mm_loadu_si128((const __m128i *)qs), mask = _mm_set1_epi8(15);
    return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), mask), _mm_and_si128(v, mask));
}

/* out[t] = row r . activations of token t (quantized: q + t*C, sc + t*C/32), t < T <= 4 */
static void row_dot_q8(const wmat *w, const uint8_t *r, const int8_t *q, const act_scale *sc, int C, int T,
                       float *out) {
    int nb = C / 32, b;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    __m128 m0 = _mm_setzero_ps(), m1 = m0, m2 = m0, m3 = m0;
    if (w->type == GGML_Q8_0) {
        const __m128 lane0 = _mm_castsi128_ps(_mm_setr_epi32(-1, 0, 0, 0));
        for (b = 0; b < nb; b++) {
            const uint8_t *s = r + (size_t)b * 34;
            uint16_t h;
            __m256i sg = _mm256_loadu_si256((const __m256i *)(s + 2)), u = _mm256_abs_epi8(sg);
            __m128 dm;
            memcpy(&h, s, 2);
            dm = _mm_and_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(h)), lane0); /* [d, 0] */
            Q8_TOKENS(W_SIGN)
        }
    } else { /* Q4_1: f16 d, m then 16 bytes of codes; Q4_0: f16 d, codes 0..15 stand for -8..7 */
        const int q41 = w->type == GGML_Q4_1;
        const size_t bs = q41 ? 20 : 18;
        const __m128 k = _mm_setr_ps(1.0f, -8.0f, 0.0f, 0.0f);
        for (b = 0; b < nb; b++) {
            const uint8_t *s = r + (size_t)b * bs;
            uint32_t h2; /* the block's first 4 bytes: d, m (Q4_1) or d and two code bytes (Q4_0) */
            __m256i u = q4_codes(s + bs - 16);
            __m128 dm;
            memcpy(&h2, s, 4);
            dm = q41 ? _mm_cvtph_ps(_mm_cvtsi32_si128((int)h2))                          /* [d, m]   */
                     : _mm_mul_ps(_mm_cvtph_ps(_mm_set1_epi16((short)(h2 & 0xffff))), k); /* [d, -8d] */
            Q8_TOKENS(NO_SIGN)
        }
    }
#define Q8_OUT(t) if (T > t) out[t] = hsum8(a##t) + _mm_cvtss_f32(_mm_shuffle_ps(m##t, m##t, 1));
    Q8_OUT(0) Q8_OUT(1) Q8_OUT(2) Q8_OUT(3)
#undef Q8_OUT
}

/* a += the int32[8] partial sums of u8 u times s8 s */
static __m256i dot_u8s8_acc(__m256i a, __m256i u, __m256i s) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(a, u, s);
#else
    return _mm256_add_epi32(a, dot_u8s8(u, s));
#endif
}

/* out[t][0..8) = rows 0..7 of the repacked group g . activations of token t
   (t < T <= 4): per block, each lane of the integer sums is one row, so one
   conversion and one scaling serve 8 rows; 4 of a token's 8-bit activations
   are broadcast to every lane. Same exact block sums as row_dot_q8. */
static void group_dot_q8(const wmat *w, const uint8_t *g, const int8_t *q, const act_scale *sc, int C, int T,
                         float *out) {
    const int nb = C / 32, q8 = w->type == GGML_Q8_0, q41 = w->type == GGML_Q4_1;
    const size_t gbs = q8 ? 8 * 34 : q41 ? 8 * 20 : 8 * 18, hdr = q41 ? 32 : 16;
    const __m256i mask = _mm256_set1_epi8(15);
    __m256 f0 = _mm256_setzero_ps(), f1 = f0, f2 = f0, f3 = f0;
    int b, k;
    for (b = 0; b < nb; b++) {
        const uint8_t *o = g + (size_t)b * gbs;
        const int8_t *xb = q + (size_t)b * 32;
        __m256 d8 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)o)), m8;
        __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
        int32_t xv;
#define BX(t, off) (memcpy(&xv, xb + (size_t)(t) * C + (off), 4), _mm256_set1_epi32(xv))
        if (q8) {
            m8 = _mm256_setzero_ps();
            for (k = 0; k < 8; k++) {
                __m256i c = _mm256_loadu_si256((const __m256i *)(o + hdr + 32 * (size_t)k)), u = _mm256_abs_epi8(c);
#define GT8(t) if (T > t) a##t = dot_u8s8_acc(a##t, u, _mm256_sign_epi8(BX(t, 4 * k), c));
                GT8(0) GT8(1) GT8(2) GT8(3)
#undef GT8
            }
        } else {
            m8 = q41 ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(o + 16))) : _mm256_mul_ps(d8, _mm256_set1_ps(-8.0f));
            for (k = 0; k < 4; k++) {
                __m256i v = _mm256_loadu_si256((const __m256i *)(o + hdr + 32 * (size_t)k));
                __m256i lo = _mm256_and_si256(v, mask), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), mask);
#define GT4(t) if (T > t) { a##t = dot_u8s8_acc(a##t, lo, BX(t, 4 * k)); a##t = dot_u8s8_acc(a##t, hi, BX(t, 16 + 4 * k)); }
                GT4(0) GT4(1) GT4(2) GT4(3)
#undef GT4
            }
        }
#undef BX
#define GSC(t)                                                                                                  \
    if (T > t) {                                                                                                \
        const act_scale *s_ = sc + (size_t)(t) * nb + b;                                                        \
        f##t = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a##t), _mm256_mul_ps(d8, _mm256_set1_ps(s_->d)), f##t);       \
        f##t = _mm256_fmadd_ps(m8, _mm256_set1_ps(s_->s), f##t);                                                \
    }
        GSC(0) GSC(1) GSC(2) GSC(3)
#undef GSC
    }
    _mm256_storeu_ps(out, f0);
    if (T > 1) _mm256_storeu_ps(out + 8, f1);
    if (T > 2) _mm256_storeu_ps(out + 16, f2);
    if (T > 3) _mm256_storeu_ps(out + 24, f3);
}
#else
void wmat_set_act8(int on) { (void)on; }
int wmat_act8(void) { return 0; }
#endif

const char *wmat_kernel(void) {
#if defined(WMAT_AVX2) && defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return g_act8 ? "avx512-vnni+int8-act" : "avx2+fma+f32-act";
#elif defined(WMAT_AVX2)
    return g_act8 ? "avx2+int8-act" : "avx2+fma+f32-act";
#else
    return "portable";
#endif
}

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

#ifdef WMAT_AVX2
static int act8_ok(const wmat *w, int C) {
    return g_act8 && (w->type == GGML_Q4_0 || w->type == GGML_Q4_1 || w->type == GGML_Q8_0) && C % 32 == 0;
}

/* the parallel loop's work items of a matrix: its rows, or groups of 8 (repacked) */
static int units(const wmat *w) { return w->rp8 ? w->rows / 8 : w->rows; }

/* y[k] [T][rows_k] = x [T][C] W_k^T for n matrices of 8-bit-activation types
   sharing x: x quantized once (on the stack up to 16 tokens of 4096, else one
   malloc), one parallel loop over all their rows; each row's bytes stay in L1
   while it meets every token, 4 at a time. 0, or -1 (out of memory: nothing done) */
static int mul_q8(float *const *y, const float *x, const wmat *const *w, int n, int T) {
    int8_t stack_q[WMAT_FUSED_T * WMAT_QCOLS], *qx = stack_q;
    act_scale stack_s[WMAT_FUSED_T * WMAT_QCOLS / 32], *sc = stack_s;
    int C = w[0]->cols, total = 0, g, t;
    if ((size_t)T * C > sizeof stack_q) {
        qx = (int8_t *)malloc((size_t)T * C);
        sc = (act_scale *)malloc(sizeof(act_scale) * (size_t)T * (C / 32));
        if (!qx || !sc) { free(qx); free(sc); return -1; }
    }
    for (t = 0; t < T; t++) quant_act(x + (size_t)t * C, C, qx + (size_t)t * C, sc + (size_t)t * (C / 32));
    for (g = 0; g < n; g++) total += units(w[g]);
#ifdef _OPENMP
#pragma omp parallel for schedule(static)
#endif
    for (g = 0; g < total; g++) {
        int k = 0, i = g, t0, tt;
        float o[4];
        while (i >= units(w[k])) i -= units(w[k++]);
        if (w[k]->rp8) {
            float o8[32];
            for (t0 = 0; t0 < T; t0 += 4) {
                int nt = T - t0 < 4 ? T - t0 : 4;
                group_dot_q8(w[k], w[k]->q + (size_t)i * 8 * w[k]->row_bytes, qx + (size_t)t0 * C,
                             sc + (size_t)t0 * (C / 32), C, nt, o8);
                for (tt = 0; tt < nt; tt++) memcpy(y[k] + (size_t)(t0 + tt) * w[k]->rows + 8 * (size_t)i, o8 + 8 * tt, sizeof(float) * 8);
            }
            continue;
        }
        for (t0 = 0; t0 < T; t0 += 4) {
            int nt = T - t0 < 4 ? T - t0 : 4;
            row_dot_q8(w[k], w[k]->q + (size_t)i * w[k]->row_bytes, qx + (size_t)t0 * C, sc + (size_t)t0 * (C / 32),
                       C, nt, o);
            for (tt = 0; tt < nt; tt++) y[k][(size_t)(t0 + tt) * w[k]->rows + i] = o[tt];
        }
    }
    if (qx != stack_q) { free(qx); free(sc); }
    return 0;
}
#endif

int wmat_repack(wmat *w) {
#ifdef WMAT_AVX2
    int blk, bb, i, b, j, lane;
    uint8_t *tmp;
    if (w->rp8 || (w->type != GGML_Q4_0 && w->type != GGML_Q4_1 && w->type != GGML_Q8_0) || w->rows % 8 ||
        w->cols % 32 || !(tmp = (uint8_t *)malloc(8 * w->row_bytes)))
        return 0;
    ggml_type_info(w->type, &blk, &bb);
    for (i = 0; i < w->rows; i += 8) {
        uint8_t *g = (uint8_t *)(uintptr_t)(w->q + (size_t)i * w->row_bytes); /* the caller's writable buffer */
        memcpy(tmp, g, 8 * w->row_bytes);
        for (lane = 0; lane < 8; lane++)
            for (b = 0; b < w->cols / 32; b++)
                for (j = 0; j < bb; j++)
                    g[(size_t)b * 8 * bb + rp_off(w->type, lane, j)] = tmp[lane * w->row_bytes + (size_t)b * bb + j];
    }
    free(tmp);
    w->rp8 = 1;
    return 1;
#else
    (void)w;
    return 0;
#endif
}

void wmat_mul_n(float *const *y, const float *x, const wmat *const *w, int n, int T) {
    int k;
#ifdef WMAT_AVX2
    int all = 1;
    for (k = 0; k < n; k++) all = all && act8_ok(w[k], w[0]->cols) && w[k]->cols == w[0]->cols;
    if (all && mul_q8(y, x, w, n, T) == 0) return;
#endif
    for (k = 0; k < n; k++) wmat_mul(y[k], x, w[k], T);
}

void wmat_mul(float *y, const float *x, const wmat *w, int T) {
    int R = w->rows, C = w->cols, i0;
    if (w->type == GGML_F32 && (uintptr_t)w->q % sizeof(float) == 0) { /* stored f32: mla.h's product on the
                                                                          rows as they are (aligned: a file read
                                                                          whole is; a borrowed buffer may not be) */
        mla_matmul(y, x, (const float *)(const void *)w->q, NULL, T, R, C);
        return;
    }
#ifdef WMAT_AVX2
    if (act8_ok(w, C) && mul_q8(&y, x, &w, 1, T) == 0) return;
#endif
    if (T <= WMAT_FUSED_T && !w->rp8) { /* decode and short prompts: blocks dequantized per 4 tokens */
        wmat_mul_heads(y, x, w, 1, T);
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

/* each stored row meets every token, 4 at a time (row_dot); row i reads
   the (i / (rows/heads))-th cols-slice of a token (heads 1: wmat_mul's
   decode path) */
void wmat_mul_heads(float *y, const float *x, const wmat *w, int heads, int T) {
    int R = w->rows, rh = R / heads, C = heads * w->cols, i;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if ((long)R * w->cols * T > 32768)
#endif
    for (i = 0; i < R; i++) {
        float o[4];
        int t0, t;
        for (t0 = 0; t0 < T; t0 += 4) {
            int n = T - t0 < 4 ? T - t0 : 4;
            row_dot(w, w->q + (size_t)i * w->row_bytes, x + (size_t)t0 * C + (size_t)(i / rh) * w->cols, C, n, o);
            for (t = 0; t < n; t++) y[(size_t)(t0 + t) * R + i] = o[t];
        }
    }
}
