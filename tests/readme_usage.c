/* The README's "Usage" snippet, compiled and run as it is written, so it
   cannot drift from the API: make cuts it out of README.md into
   build/readme_usage_head.inc (its #define/#include lines) and
   build/readme_usage_body.inc (the rest), and this program supplies the
   variables the snippet leaves to the reader (random weights, inputs). It then
   checks what the snippet promises: the cache holds T + 1 tokens and the
   decoded token's output equals a naive prefill of the same T + 1 tokens
   (max relative error <= 1e-4; both read the same bf16 cache rows). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "../build/readme_usage_head.inc"

static float *rnd(size_t n, unsigned *s, float scale) {
    float *p = (float *)malloc(sizeof(float) * n);
    size_t i;
    for (i = 0; i < n; i++) {
        *s = *s * 1664525u + 1013904223u;
        p[i] = ((float)(*s >> 8) / 8388608.0f - 1.0f) * scale;
    }
    return p;
}

int main(void) {
    enum { D = 2048, H = 16, R = 512, DN = 128, M = 64, DV = 128 };
    unsigned seed = 7;
    int n_layers = 1, layer = 0, max_tokens = 8, T = 5;
    float *wq = rnd((size_t)H * (DN + M) * D, &seed, 0.03f), *wkva = rnd((size_t)(R + M) * D, &seed, 0.03f);
    float *kvn = rnd(R, &seed, 1.0f), *wkvb = rnd((size_t)H * (DN + DV) * R, &seed, 0.06f);
    float *wo = rnd((size_t)D * H * DV, &seed, 0.03f);
    float *x = rnd((size_t)T * D, &seed, 1.0f), *x1 = rnd(D, &seed, 1.0f);
    float *out = (float *)malloc(sizeof(float) * T * D), *out1 = (float *)malloc(sizeof(float) * D);
    float *all = (float *)malloc(sizeof(float) * (T + 1) * D), *ref = (float *)malloc(sizeof(float) * (T + 1) * D);
    int ok = 1;
    {
#include "../build/readme_usage_body.inc"
        {
            mla_cache fresh;
            double num = 0, den = 0, lim = 1e-4;
            int i;
            memcpy(all, x, sizeof(float) * T * D);
            memcpy(all + (size_t)T * D, x1, sizeof(float) * D);
            ok &= mla_cache_init(&fresh, MLA_BF16, n_layers, 512, 64, 4096, NULL) == MLA_OK;
            ok &= mla_forward(&cfg, &w, &fresh.pool, &fresh.seq, layer, all, T + 1, ref, MLA_NAIVE, ws, n) == MLA_OK;
            for (i = 0; i < D; i++) {
                double e = fabs((double)out1[i] - ref[(size_t)T * D + i]), r = fabs(ref[(size_t)T * D + i]);
                num = e > num ? e : num;
                den = r > den ? r : den;
            }
            printf("README snippet: cache holds %d tokens (want %d); decoded token vs naive prefill: rel err %.2e (bound %g, %s)\n",
                   cache.seq.len, T + 1, num / den, lim, mla_kernel_name());
            ok &= cache.seq.len == T + 1 && num / den <= lim && fabs(out[0]) > 0;
            mla_cache_free(&fresh);
        }
        mla_cache_free(&cache);
        free(ws);
    }
    free(wq); free(wkva); free(kvn); free(wkvb); free(wo); free(x); free(x1); free(out); free(out1); free(all); free(ref);
    return ok ? 0 : 1;
}
