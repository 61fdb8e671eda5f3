/* A second, private (MLA_STATIC) copy of the library built with
   MLA_USE_CBLAS when a CBLAS is available, so one test binary can compare
   the two paths. Without CBLAS this copy is the plain path and the test skips. */
#define MLA_STATIC
#ifdef HAVE_CBLAS
#define MLA_USE_CBLAS
#endif
#define MLA_IMPLEMENTATION
#include "../mla.h"

int cblas_variant_enabled(void) {
#ifdef HAVE_CBLAS
    return 1;
#else
    return 0;
#endif
}

mla_result cblas_variant_forward(const mla_config *c, const mla_layer_weights *w, mla_pool *pool,
                                 mla_seq *seq, int layer, const float *x, int T, float *out,
                                 mla_mode mode, void *ws, size_t ws_bytes) {
    return mla_forward(c, w, pool, seq, layer, x, T, out, mode, ws, ws_bytes);
}
