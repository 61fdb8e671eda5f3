/* A private (MLA_STATIC) copy of the library built with other options (see
   the Makefile: MLA_NO_SIMD, -fopenmp, or without AMX and AVX-512 VNNI), its
   entry points exported under VARIANT_PREFIX, so one test binary compares
   the builds with each other. */
#define MLA_STATIC
#define MLA_IMPLEMENTATION
#include "../mla.h"
#ifdef _OPENMP
#include <omp.h>
#endif
#define V_CAT2(a, b) a##b
#define V_CAT(a, b) V_CAT2(a, b)
#define V(name) V_CAT(VARIANT_PREFIX, name)

const char *V(kernel_name)(void);
int V(set_threads)(int n);
size_t V(attend_scratch_bytes)(int H, int r, int m);
mla_result V(attend_latent)(const mla_pool *pool, const mla_seq *seq, int layer, int H, int n_ctx, const float *q_lat,
                            const float *q_pe, float scale, float *o_lat, void *scratch, size_t scratch_bytes);
mla_result V(decode)(const mla_config *c, const mla_layer_weights *w, mla_pool *pool, mla_seq *const *seqs, int B, int layer,
                     const float *x, float *out, void *ws, size_t ws_bytes);
mla_result V(gqa_forward)(const mla_gqa_config *c, const mla_gqa_weights *w, mla_gqa_cache *kc, int layer,
                          const float *x, int T, float *out, void *ws, size_t ws_bytes);

const char *V(kernel_name)(void) { return mla_kernel_name(); }
/* sets the OpenMP thread count; returns the threads an attention call may use */
int V(set_threads)(int n) {
#ifdef _OPENMP
    omp_set_num_threads(n);
    return mla__threads();
#else
    (void)n;
    return 1;
#endif
}
size_t V(attend_scratch_bytes)(int H, int r, int m) { return mla_attend_scratch_bytes(H, r, m); }
mla_result V(attend_latent)(const mla_pool *pool, const mla_seq *seq, int layer, int H, int n_ctx, const float *q_lat,
                            const float *q_pe, float scale, float *o_lat, void *scratch, size_t scratch_bytes) {
    return mla_attend_latent(pool, seq, layer, H, n_ctx, q_lat, q_pe, scale, o_lat, scratch, scratch_bytes);
}
mla_result V(decode)(const mla_config *c, const mla_layer_weights *w, mla_pool *pool, mla_seq *const *seqs, int B, int layer,
                     const float *x, float *out, void *ws, size_t ws_bytes) {
    return mla_decode(c, w, pool, seqs, B, layer, x, out, ws, ws_bytes);
}
mla_result V(gqa_forward)(const mla_gqa_config *c, const mla_gqa_weights *w, mla_gqa_cache *kc, int layer,
                          const float *x, int T, float *out, void *ws, size_t ws_bytes) {
    return mla_gqa_forward(c, w, kc, layer, x, T, out, ws, ws_bytes);
}
