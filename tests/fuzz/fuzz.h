/* Shared by the libFuzzer targets: read typed values off the fuzzer's bytes
   (zeros once they run out, so every input is a complete case), and a check
   that aborts (a crash libFuzzer reports) when an invariant breaks. */
#ifndef FUZZ_H
#define FUZZ_H
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const uint8_t *p;
    size_t n;
} fz;

static inline uint8_t fz_u8(fz *z) {
    uint8_t v = 0;
    if (z->n) { v = *z->p++; z->n--; }
    return v;
}
static inline uint32_t fz_u32(fz *z) {
    uint32_t v = fz_u8(z);
    v |= (uint32_t)fz_u8(z) << 8;
    v |= (uint32_t)fz_u8(z) << 16;
    return v | (uint32_t)fz_u8(z) << 24;
}
/* an int in [lo, hi] */
static inline int fz_int(fz *z, int lo, int hi) { return lo + (int)(fz_u32(z) % (uint32_t)(hi - lo + 1)); }
/* a small float in [-s, s], or (1 in 64) a special value: 0, huge, NaN, Inf */
static inline float fz_float(fz *z, float s) {
    uint8_t k = fz_u8(z);
    if (k == 255) {
        static const float sp[4] = {0.0f, 3e38f, NAN, INFINITY};
        return sp[fz_u8(z) & 3];
    }
    return s * ((float)(int16_t)(fz_u8(z) | fz_u8(z) << 8) / 32768.0f);
}

/* fz_float that clears *sane on a value a computation may overflow with
   (NaN, Inf, or larger than limit in size) */
static inline float fz_float_sane(fz *z, float s, float limit, int *sane) {
    float v = fz_float(z, s);
    if (!(fabsf(v) <= limit)) *sane = 0;
    return v;
}

/* a float in [-s, s], never special */
static inline float fz_bounded(fz *z, float s) { return s * ((float)(int16_t)(fz_u8(z) | fz_u8(z) << 8) / 32768.0f); }

#define FZ_CHECK(cond)                                                              \
    do {                                                                            \
        if (!(cond)) {                                                              \
            fprintf(stderr, "%s:%d: invariant broken: %s\n", __FILE__, __LINE__, #cond); \
            abort();                                                                \
        }                                                                           \
    } while (0)

static inline int fz_finite(const float *x, size_t n) {
    size_t i;
    for (i = 0; i < n; i++)
        if (!isfinite(x[i])) return 0;
    return 1;
}
#endif
