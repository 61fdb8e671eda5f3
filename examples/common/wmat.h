/* Weight matrices used as the GGUF stores them (F32, F16, BF16, Q8_0, Q4_0,
   Q4_1), so there is no f32 copy of the model and a decode step reads the
   stored bytes once (a Q4_1 matrix: 5 bits per weight instead of 32).
   Q8_0/Q4_0/Q4_1 by default as llama.cpp computes them: activations rounded
   to 8 bits per 32-block, integer dot products (AVX512-VNNI or AVX2), exact
   int32 sums scaled per block; wmat_set_act8(0) (mla-run --f32-act), the
   other types and builds without AVX2: a block dequantized in registers
   times f32 activations, equal to dequantize-then-multiply up to the order
   of the f32 sums. */
#ifndef WMAT_H
#define WMAT_H
#include "gguf.h"
#include <stddef.h>

typedef struct {
    uint32_t type;      /* GGML_*                                              */
    int rows, cols;     /* [rows][cols], cols a multiple of the type's block   */
    const uint8_t *q;   /* the stored rows (borrowed from the file buffer)     */
    size_t row_bytes;
    int rp8;            /* rows interleaved in groups of 8 (wmat_repack)       */
} wmat;

/* tensor `name` of f as a [rows][cols] matrix, stored bytes borrowed from f
   (keep f open). Checks the shape, the type and that every value is finite.
   0, or -1 with f->err set. */
int wmat_from_gguf(wmat *w, gguf_file *f, const char *name, int rows, int cols);
/* an F32 matrix on memory the caller keeps (p may be NULL: w->q NULL) */
void wmat_view_f32(wmat *w, const float *p, int rows, int cols);
/* row i as f32 (out[cols]) */
void wmat_row(const wmat *w, int i, float *out);
/* y[T][rows] = x[T][cols] W^T. 8-bit activations: each stored row meets
   every token, 4 at a time (allocation-free up to 16 tokens of 4096).
   Otherwise T <= 16 runs allocation-free (each block dequantized once per 4
   tokens); larger T dequantizes tiles of 64 rows into a scratch buffer and
   uses mla_matmul. Rows are split over OpenMP threads when compiled with it. */
void wmat_mul(float *y, const float *x, const wmat *w, int T);
/* y[k] = x W_k^T for n matrices with the same input (q/k/v, gate/up): one
   pass over x and one parallel loop where the types allow, else wmat_mul each */
void wmat_mul_n(float *const *y, const float *x, const wmat *const *w, int n, int T);
/* A block-diagonal product stored as its blocks: W [rows][cols] is `heads`
   blocks of rows/heads rows, block j meets the j-th cols-slice of x [T][heads*cols]:
   y[t][i] = W[i] . x[t][(i / (rows/heads)) * cols ...]. (MLA's per-head query
   map.) Any type but the repacked layout; rows split over threads. */
void wmat_mul_heads(float *y, const float *x, const wmat *w, int heads, int T);
/* Q4_0/Q4_1/Q8_0 products with the activations rounded to 8 bits per
   32-block and integer dot products, as llama.cpp computes them (on by
   default where AVX2 is compiled in; 0: dequantized weights times f32
   activations everywhere) */
void wmat_set_act8(int on);
int wmat_act8(void); /* the current setting */
/* "avx512-vnni+int8-act", "avx2+int8-act", "avx2+fma+f32-act" or "portable" */
const char *wmat_kernel(void);
/* Q4_0/Q4_1/Q8_0 with rows % 8 == 0, in builds with the 8-bit kernels:
   rewrites the rows in place (same bytes, the buffer must be writable and
   must not be written out as GGUF afterwards) so that each 32-block of 8
   consecutive rows is [8 scales (f16)][8 mins (Q4_1)][codes, 4 columns of
   each row in turn]: one integer dot product then serves 8 rows at once and
   one scaling per block serves all 8 (llama.cpp's repacked CPU layout is the
   same idea), about twice the weights per cycle of the row kernel.
   wmat_row and wmat_mul read either layout. 1 if repacked, 0 if left as is. */
int wmat_repack(wmat *w);
/* a malloc'd f32 copy [rows][cols] (NULL on out of memory) */
float *wmat_f32(const wmat *w);
#endif
