/* GGUF container and dequantization: hand-built blocks, a written-and-read
   round trip, and malformed files (every truncation, bit flips, bad fields). */
#include "harness.h"
#include "../examples/common/gguf.h"
#include "../examples/common/wmat.h"
#include "../mla.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

static void put_f16(unsigned char *p, float v) {
    uint16_t h = mla_f32_to_f16(v);
    memcpy(p, &h, 2);
}

static void test_dequant_blocks(void) {
    unsigned char q40[18], q41[20], q80[34], f16[4], bf[4];
    float out[32], x;
    int j, ok = 1;
    /* Q4_0: d = 0.5; byte j = (low = j%16, high = 15 - j%16) */
    put_f16(q40, 0.5f);
    for (j = 0; j < 16; j++) q40[2 + j] = (unsigned char)((j & 15) | ((15 - j) << 4));
    CHECK(gguf_dequant(GGML_Q4_0, q40, out, 32) == 0);
    for (j = 0; j < 16; j++) {
        ok &= out[j] == ((j & 15) - 8) * 0.5f;          /* low nibble -> element j      */
        ok &= out[j + 16] == ((15 - j) - 8) * 0.5f;     /* high nibble -> element j + 16 */
    }
    CHECK(ok);
    /* Q4_1: d = 0.25, m = -1 */
    put_f16(q41, 0.25f);
    put_f16(q41 + 2, -1.0f);
    for (j = 0; j < 16; j++) q41[4 + j] = (unsigned char)(j | ((j ^ 5) << 4));
    CHECK(gguf_dequant(GGML_Q4_1, q41, out, 32) == 0);
    for (ok = 1, j = 0; j < 16; j++) {
        ok &= out[j] == j * 0.25f - 1.0f;
        ok &= out[j + 16] == (j ^ 5) * 0.25f - 1.0f;
    }
    CHECK(ok);
    /* Q8_0: d = 2, signed bytes */
    put_f16(q80, 2.0f);
    for (j = 0; j < 32; j++) q80[2 + j] = (unsigned char)(signed char)(j - 16);
    CHECK(gguf_dequant(GGML_Q8_0, q80, out, 32) == 0);
    for (ok = 1, j = 0; j < 32; j++) ok &= out[j] == (j - 16) * 2.0f;
    CHECK(ok);
    put_f16(f16, 1.5f);
    put_f16(f16 + 2, -0.125f);
    CHECK(gguf_dequant(GGML_F16, f16, out, 2) == 0 && out[0] == 1.5f && out[1] == -0.125f);
    x = 3.0f;
    {
        uint16_t b = mla_f32_to_bf16(x);
        memcpy(bf, &b, 2);
        b = mla_f32_to_bf16(-0.5f);
        memcpy(bf + 2, &b, 2);
    }
    CHECK(gguf_dequant(GGML_BF16, bf, out, 2) == 0 && out[0] == 3.0f && out[1] == -0.5f);
    CHECK(gguf_dequant(GGML_Q4_0, q40, out, 31) != 0); /* not a whole block */
    CHECK(gguf_dequant(12, q40, out, 32) != 0);         /* Q4_K: unsupported */
}

/* a small valid file written by the project's writer */
static unsigned char *small_file(size_t *n) {
    gguf_writer *w = gguf_writer_new();
    float a[64], b[3] = {1, 2, 3};
    uint64_t ne_a[2] = {32, 2}, ne_b[1] = {3};
    char err[128];
    unsigned char *buf;
    FILE *fp;
    long len;
    int i;
    for (i = 0; i < 64; i++) a[i] = (float)i * 0.5f;
    gguf_w_str(w, "general.architecture", "llama");
    gguf_w_u32(w, "llama.block_count", 7);
    gguf_w_f32(w, "llama.rope.freq_base", 10000.0f);
    gguf_w_bool(w, "flag", 1);
    gguf_w_tensor_f32(w, "a", a, 2, ne_a);
    gguf_w_tensor_f32(w, "b", b, 1, ne_b);
    if (gguf_writer_save(w, "build/test_small.gguf", err, sizeof err)) { gguf_writer_free(w); return NULL; }
    gguf_writer_free(w);
    fp = fopen("build/test_small.gguf", "rb");
    if (!fp) return NULL;
    fseek(fp, 0, SEEK_END);
    len = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    buf = (unsigned char *)malloc((size_t)len);
    if (fread(buf, 1, (size_t)len, fp) != (size_t)len) len = 0;
    fclose(fp);
    *n = (size_t)len;
    return buf;
}

static void test_roundtrip(void) {
    size_t n = 0;
    unsigned char *buf = small_file(&n);
    gguf_file f;
    int64_t v;
    double d;
    gguf_str s;
    float *a;
    CHECK(buf != NULL);
    if (!buf) return;
    CHECK(gguf_parse(&f, buf, n) == 0);
    CHECK(f.version == 3 && f.n_kv == 4 && f.n_tensors == 2);
    CHECK(gguf_get_int(&f, "llama.block_count", &v) == 0 && v == 7);
    CHECK(gguf_get_float(&f, "llama.rope.freq_base", &d) == 0 && d == 10000.0);
    CHECK(gguf_get_str(&f, "general.architecture", &s) == 0 && s.n == 5 && !memcmp(s.p, "llama", 5));
    CHECK(gguf_get_int(&f, "flag", &v) == 0 && v == 1);
    CHECK(gguf_get_int(&f, "general.architecture", &v) != 0 && strstr(f.err, "not an integer"));
    CHECK(gguf_get_int(&f, "nope", &v) != 0 && strstr(f.err, "missing"));
    a = gguf_tensor_f32(&f, "a", 2, 32);
    CHECK(a && a[0] == 0.0f && a[63] == 31.5f);
    free(a);
    CHECK(gguf_tensor_f32(&f, "a", 32, 2) == NULL && strstr(f.err, "shape"));
    CHECK(gguf_tensor_f32(&f, "zz", 0, 0) == NULL && strstr(f.err, "missing tensor"));
    gguf_close(&f);
    free(buf);
}

/* every prefix of a valid file that cuts into tensor data or headers must
   fail cleanly (never crash or read past); only the trailing padding may go */
static void test_truncations(void) {
    size_t n = 0, k, data_end;
    unsigned char *buf = small_file(&n);
    gguf_file whole;
    int all_fail = 1;
    if (!buf) { CHECK(0); return; }
    CHECK(gguf_parse(&whole, buf, n) == 0);
    data_end = (size_t)(whole.tensors[1].data + whole.tensors[1].n_bytes - buf);
    gguf_close(&whole);
    CHECK(data_end <= n);
    for (k = 0; k < data_end; k++) {
        gguf_file f;
        unsigned char *cut = (unsigned char *)malloc(k ? k : 1); /* exact size: ASan sees overreads */
        memcpy(cut, buf, k);
        if (gguf_parse(&f, cut, k) == 0) all_fail = 0;
        else if (!f.err[0]) all_fail = 0;
        gguf_close(&f);
        free(cut);
    }
    CHECK(all_fail);
    free(buf);
}

/* random bit flips: must parse or fail with a message, never crash */
static void test_bitflips(void) {
    size_t n = 0;
    unsigned char *buf = small_file(&n);
    unsigned long long s = 12345;
    int i, parsed = 0, failed = 0;
    if (!buf) { CHECK(0); return; }
    for (i = 0; i < 4000; i++) {
        unsigned char *cp = (unsigned char *)malloc(n);
        gguf_file f;
        int j;
        memcpy(cp, buf, n);
        for (j = 0; j < 1 + i % 4; j++) {
            s ^= s << 13; s ^= s >> 7; s ^= s << 17;
            cp[s % n] ^= (unsigned char)(1u << (s >> 32) % 8);
        }
        if (gguf_parse(&f, cp, n) == 0) {
            uint64_t t;
            parsed++;
            for (t = 0; t < f.n_tensors; t++) { /* tensors must lie inside the buffer */
                float *x = gguf_tensor_f32(&f, f.tensors[t].name, 0, 0);
                free(x);
            }
        } else {
            failed += f.err[0] != 0;
        }
        gguf_close(&f);
        free(cp);
    }
    th_note("4000 mutated files: %d parsed, %d rejected with a message", parsed, failed);
    CHECK(parsed + failed == 4000);
    free(buf);
}

static void patch_u64(unsigned char *b, size_t off, uint64_t v) { memcpy(b + off, &v, 8); }

static void test_malformed(void) {
    size_t n = 0;
    unsigned char *buf = small_file(&n), *cp;
    gguf_file f;
    size_t ti;
    if (!buf) { CHECK(0); return; }
    cp = (unsigned char *)malloc(n);
#define RESET() memcpy(cp, buf, n)
    RESET(); cp[0] = 'X';
    CHECK(gguf_parse(&f, cp, n) != 0 && strstr(f.err, "magic")); gguf_close(&f);
    RESET(); cp[4] = 9;
    CHECK(gguf_parse(&f, cp, n) != 0 && strstr(f.err, "version")); gguf_close(&f);
    RESET(); patch_u64(cp, 8, (uint64_t)1 << 40);
    CHECK(gguf_parse(&f, cp, n) != 0 && strstr(f.err, "absurd counts")); gguf_close(&f);
    RESET(); patch_u64(cp, 16, 0xFFFFFFFFFFFFull);
    CHECK(gguf_parse(&f, cp, n) != 0 && strstr(f.err, "absurd counts")); gguf_close(&f);
    RESET(); patch_u64(cp, 24, (uint64_t)1 << 35); /* first key length */
    CHECK(gguf_parse(&f, cp, n) != 0 && strstr(f.err, "absurd string length")); gguf_close(&f);
    /* locate tensor "a": name length 1, 'a', n_dims 2 */
    for (ti = 24; ti + 9 < n; ti++)
        if (cp[ti] == 1 && !memcmp(cp + ti + 1, "\0\0\0\0\0\0\0a\2\0\0\0", 12)) break;
    CHECK(ti + 9 < n);
    if (ti + 9 < n) {
        size_t dims = ti + 13, type = dims + 16, off = type + 4;
        RESET(); memcpy(cp + ti + 9, "\7\0\0\0", 4);
        CHECK(gguf_parse(&f, cp, n) != 0 && strstr(f.err, "dims")); gguf_close(&f);
        RESET(); { uint32_t t = 77; memcpy(cp + type, &t, 4); }
        CHECK(gguf_parse(&f, cp, n) != 0 && strstr(f.err, "unsupported type")); gguf_close(&f);
        RESET(); { uint32_t t = GGML_Q4_0; uint64_t ne0 = 33; memcpy(cp + type, &t, 4); memcpy(cp + dims, &ne0, 8); }
        CHECK(gguf_parse(&f, cp, n) != 0 && strstr(f.err, "not a multiple")); gguf_close(&f);
        RESET(); patch_u64(cp, off, (uint64_t)1 << 20);
        CHECK(gguf_parse(&f, cp, n) != 0 && strstr(f.err, "past the end")); gguf_close(&f);
        RESET(); patch_u64(cp, off, 3);
        CHECK(gguf_parse(&f, cp, n) != 0 && strstr(f.err, "aligned")); gguf_close(&f);
        RESET(); patch_u64(cp, dims, (uint64_t)1 << 45);
        CHECK(gguf_parse(&f, cp, n) != 0 && strstr(f.err, "absurd dimension")); gguf_close(&f);
        RESET(); cp[ti + 8] = 'b'; /* duplicate tensor name */
        CHECK(gguf_parse(&f, cp, n) != 0 && strstr(f.err, "duplicate tensor")); gguf_close(&f);
    }
    CHECK(gguf_read(&f, "build/does-not-exist.gguf") != 0 && strstr(f.err, "cannot open"));
    gguf_close(&f);
#undef RESET
    free(cp);
    free(buf);
}

/* W [nw] uniform in [-0.5, 0.5) with every `every`-th value scaled by `big`
   (block outliers), then x [nx] uniform in [-0.5, 0.5); one LCG */
static void weights_and_inputs(uint32_t *seed, float *W, int nw, int every, float big, float *x, int nx) {
    int r;
    for (r = 0; r < nw; r++) {
        *seed = *seed * 1664525u + 1013904223u;
        W[r] = ((float)(*seed >> 8) / 16777216.0f - 0.5f) * (r % every == 0 ? big : 1.0f);
    }
    for (r = 0; r < nx; r++) {
        *seed = *seed * 1664525u + 1013904223u;
        x[r] = (float)(*seed >> 8) / 16777216.0f - 0.5f;
    }
}

/* gguf_quant is the inverse of gguf_dequant within each type's rounding, and
   wmat_mul on the stored bytes == the f32 product of the dequantized matrix
   (double reference), for every type, the fused kernel (T <= 16, token
   groups of 4 with a remainder) and the tiled one (T > 16)
   sizes, row counts that are not a multiple of the 64-row tile, and F16/BF16
   rows whose length is not a multiple of the 8-lane vector. */
static void test_quant_and_wmat(void) {
    static const uint32_t types[] = {GGML_F32, GGML_F16, GGML_BF16, GGML_Q8_0, GGML_Q4_0, GGML_Q4_1};
    static const int Ts[] = {1, 3, 9, 20};
    uint32_t seed = 99u;
    size_t i;
    for (i = 0; i < sizeof types / sizeof types[0]; i++) {
        int blk, bb, R = 70, C = types[i] == GGML_F16 || types[i] == GGML_BF16 ? 100 : 96, ti, r, c, t;
        float *W = (float *)malloc(sizeof(float) * R * C), *D = (float *)malloc(sizeof(float) * R * C);
        float *x = (float *)malloc(sizeof(float) * 20 * C), *y = (float *)malloc(sizeof(float) * 20 * R);
        uint8_t *q;
        double qerr = 0, merr[2] = {0, 0}, berr = 0;
        int act8;
        wmat w;
        ggml_type_info(types[i], &blk, &bb);
        q = (uint8_t *)malloc((size_t)R * C / blk * bb);
        weights_and_inputs(&seed, W, R * C, 7, 8.0f, x, 20 * C);
        CHECK(gguf_quant(types[i], W, q, (uint64_t)R * C) == 0);
        CHECK(gguf_dequant(types[i], q, D, (uint64_t)R * C) == 0);
        for (r = 0; r < R * C; r += blk > 1 ? 32 : 1) { /* error per value against the block's step */
            int n = blk > 1 ? 32 : 1, k;
            float lo = W[r], hi = W[r], amax = 0, step;
            for (k = 0; k < n; k++) {
                lo = W[r + k] < lo ? W[r + k] : lo;
                hi = W[r + k] > hi ? W[r + k] : hi;
                amax = fabsf(W[r + k]) > amax ? fabsf(W[r + k]) : amax;
            }
            /* half a step (Q4_0: a whole one, the side opposite the extreme clamps at code 15) plus
               the f16 rounding (2^-11) of the stored scale times the largest code, and of Q4_1's min */
            step = types[i] == GGML_Q8_0 ? amax / 127 * (0.5f + 127 * 0x1p-11f)
                 : types[i] == GGML_Q4_0 ? amax / 8 * (1.0f + 8 * 0x1p-11f)
                 : types[i] == GGML_Q4_1 ? (hi - lo) / 15 * (0.5f + 15 * 0x1p-11f) + fabsf(lo) * 0x1p-11f : 0;
            for (k = 0; k < n; k++) {
                double e = fabs((double)D[r + k] - W[r + k]);
                double b = types[i] == GGML_F16 ? fabs(W[r + k]) * 0x1p-11 + 1e-7
                         : types[i] == GGML_BF16 ? fabs(W[r + k]) * 0x1p-8 : step;
                if (e / (b > 0 ? b : 1e-30) > qerr) qerr = e / (b > 0 ? b : 1e-30);
            }
        }
        memset(&w, 0, sizeof w);
        w.type = types[i]; w.rows = R; w.cols = C; w.q = q; w.row_bytes = (size_t)C / blk * bb;
        for (act8 = 0; act8 < 2; act8++) {
            wmat_set_act8(act8);
            for (ti = 0; ti < 4; ti++) {
                int T = Ts[ti];
                /* 8-bit activations where wmat_mul uses them (block types, AVX2 builds): the
                   reference rounds x as documented, d = max|x|/127 per 32 values, q = nearest */
                int q8 = act8 && blk > 1 && strcmp(wmat_kernel(), "portable") != 0;
                double ymax = 0, emax = 0, bmax = 0;
                wmat_mul(y, x, &w, T);
                for (t = 0; t < T; t++)
                    for (r = 0; r < R; r++) {
                        double ref = 0, exact = 0, bound = 0;
                        for (c = 0; c < C; c += 32) {
                            float amax = 0, d, id;
                            int k;
                            for (k = 0; k < 32 && c + k < C; k++) amax = fmaxf(amax, fabsf(x[t * C + c + k]));
                            d = amax / 127.0f;
                            id = d > 0 ? 1.0f / d : 0.0f;
                            for (k = 0; k < 32 && c + k < C; k++) {
                                double wv = D[(size_t)r * C + c + k], xv = x[t * C + c + k];
                                exact += xv * wv;
                                ref += (q8 ? (double)d * nearbyint((double)(float)(x[t * C + c + k] * id)) : xv) * wv;
                                bound += 0.5 * d * fabs(wv);
                            }
                        }
                        ymax = fabs(ref) > ymax ? fabs(ref) : ymax;
                        emax = fabs(ref - y[t * R + r]) > emax ? fabs(ref - y[t * R + r]) : emax;
                        if (q8 && fabs(exact - ref) / bound > bmax) bmax = fabs(exact - ref) / bound;
                    }
                if (emax / ymax > merr[act8]) merr[act8] = emax / ymax;
                if (bmax > berr) berr = bmax;
            }
        }
        wmat_set_act8(1);
        th_note("%-4s: stored value error <= %.3f of its rounding bound; wmat_mul vs double product of the "
                "dequantized matrix %.1e f32 activations, %.1e 8-bit activations vs the same rounding "
                "(rounding itself <= %.2f of its bound) (T = 1, 3, 9, 20)",
                ggml_type_name(types[i]), qerr, merr[0], merr[1], berr);
        CHECK_LE(qerr, 1.0);
        CHECK_LE(merr[0], 1e-5);
        CHECK_LE(merr[1], 1e-5);
        CHECK_LE(berr, 1.0);
        free(W); free(D); free(x); free(y); free(q);
    }
}

/* wmat_repack: the interleaved rows give every row back exactly (wmat_row)
   and the same products as the stored layout (the same exact block sums in
   another f32 order: 1e-6) with 8-bit activations, f32 activations, one or
   two matrices per call; rows not a multiple of 8 are left as they are */
static void test_wmat_repack(void) {
    static const uint32_t types[] = {GGML_Q8_0, GGML_Q4_0, GGML_Q4_1};
    static const int Ts[] = {1, 3, 9, 20};
    uint32_t seed = 7u;
    size_t i;
    for (i = 0; i < sizeof types / sizeof types[0]; i++) {
        int blk, bb, R = 72, C = 96, r, ti, act8, rowdiff = 0, packed;
        size_t nq;
        float *W = (float *)malloc(sizeof(float) * R * C), *x = (float *)malloc(sizeof(float) * 20 * C);
        float *y = (float *)malloc(sizeof(float) * 20 * R), *yr = (float *)malloc(sizeof(float) * 20 * R);
        float *y2[2], *a = (float *)malloc(sizeof(float) * C), *b = (float *)malloc(sizeof(float) * C);
        const wmat *pair[2];
        uint8_t *q, *qr;
        double err = 0;
        wmat w, wr, odd;
        ggml_type_info(types[i], &blk, &bb);
        nq = (size_t)R * C / blk * bb;
        q = (uint8_t *)malloc(nq);
        qr = (uint8_t *)malloc(nq);
        y2[0] = (float *)malloc(sizeof(float) * 20 * R);
        y2[1] = (float *)malloc(sizeof(float) * 20 * R);
        weights_and_inputs(&seed, W, R * C, 5, 6.0f, x, 20 * C);
        CHECK(gguf_quant(types[i], W, q, (uint64_t)R * C) == 0);
        memcpy(qr, q, nq);
        memset(&w, 0, sizeof w);
        w.type = types[i]; w.rows = R; w.cols = C; w.q = q; w.row_bytes = (size_t)C / blk * bb;
        wr = w; wr.q = qr;
        odd = w; odd.rows = 70;
        CHECK(wmat_repack(&odd) == 0 && !odd.rp8); /* 70 rows: not a multiple of 8 */
        packed = wmat_repack(&wr);
        CHECK(packed == (strcmp(wmat_kernel(), "portable") != 0));
        if (!packed) { th_note("%s: no 8-bit kernels in this build: not repacked", ggml_type_name(types[i])); }
        CHECK(!packed || memcmp(q, qr, nq) != 0); /* the bytes really moved */
        for (r = 0; r < R; r++) {
            wmat_row(&w, r, a);
            wmat_row(&wr, r, b);
            rowdiff += memcmp(a, b, sizeof(float) * C) != 0;
        }
        CHECK(rowdiff == 0);
        for (act8 = 0; act8 < 2; act8++) {
            wmat_set_act8(act8);
            for (ti = 0; ti < 4; ti++) {
                int T = Ts[ti];
                double ymax = 0, emax = 0;
                wmat_mul(y, x, &w, T);
                wmat_mul(yr, x, &wr, T);
                pair[0] = &wr; pair[1] = &wr;
                wmat_mul_n(y2, x, pair, 2, T);
                for (r = 0; r < T * R; r++) {
                    double e = fabs((double)yr[r] - y[r]);
                    e = fmax(e, fmax(fabs((double)y2[0][r] - y[r]), fabs((double)y2[1][r] - y[r])));
                    ymax = fmax(ymax, fabs(y[r]));
                    emax = fmax(emax, e);
                }
                err = fmax(err, emax / ymax);
            }
        }
        wmat_set_act8(1);
        th_note("%-4s: repacked rows exact; products vs the stored layout %.1e (8-bit and f32 activations, "
                "T = 1, 3, 9, 20, one and two matrices per call)", ggml_type_name(types[i]), err);
        CHECK_LE(err, 1e-6);
        free(W); free(x); free(y); free(yr); free(y2[0]); free(y2[1]); free(a); free(b); free(q); free(qr);
    }
}

/* wmat_mul_heads (the per-head query map): head j's rows meet the j-th slice
   of each token's input; against a double product of the dequantized rows,
   for F32/F16/BF16 (slices of 20 and 64: vector tails) and Q8_0, T = 1, 3, 9 */
static void test_wmat_mul_heads(void) {
    static const uint32_t types[] = {GGML_F32, GGML_F16, GGML_BF16, GGML_Q8_0};
    static const int Ts[] = {1, 3, 9};
    uint32_t seed = 5u;
    size_t i;
    double worst = 0;
    for (i = 0; i < 2 * sizeof types / sizeof types[0]; i++) {
        int Hh = 3, rh = 5, C = i % 2 || types[i / 2] == GGML_Q8_0 ? 64 : 20, R = Hh * rh, blk, bb, ti, t, r, c;
        float W[15 * 64], D[15 * 64], x[9 * 3 * 64], y[9 * 15];
        uint8_t q[15 * 64 * 4];
        wmat w;
        ggml_type_info(types[i / 2], &blk, &bb);
        weights_and_inputs(&seed, W, R * C, 9, 4.0f, x, 9 * Hh * C);
        CHECK(gguf_quant(types[i / 2], W, q, (uint64_t)R * C) == 0 && gguf_dequant(types[i / 2], q, D, (uint64_t)R * C) == 0);
        memset(&w, 0, sizeof w);
        w.type = types[i / 2]; w.rows = R; w.cols = C; w.q = q; w.row_bytes = (size_t)C / blk * bb;
        for (ti = 0; ti < 3; ti++) {
            double ymax = 0, emax = 0;
            wmat_mul_heads(y, x, &w, Hh, Ts[ti]);
            for (t = 0; t < Ts[ti]; t++)
                for (r = 0; r < R; r++) {
                    double ref = 0;
                    for (c = 0; c < C; c++) ref += (double)D[r * C + c] * x[(t * Hh + r / rh) * C + c];
                    ymax = fmax(ymax, fabs(ref));
                    emax = fmax(emax, fabs(ref - y[t * R + r]));
                }
            worst = fmax(worst, emax / ymax);
        }
    }
    th_note("wmat_mul_heads vs double product of the dequantized blocks: max rel err %.1e (F32, F16, BF16, Q8_0)", worst);
    CHECK_LE(worst, 1e-6);
}

void suite_gguf(void) {
    RUN(test_dequant_blocks);
    RUN(test_roundtrip);
    RUN(test_quant_and_wmat);
    RUN(test_wmat_repack);
    RUN(test_wmat_mul_heads);
    RUN(test_truncations);
    RUN(test_bitflips);
    RUN(test_malformed);
}
