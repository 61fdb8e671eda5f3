/* safetensors writer for the examples: an 8-byte little-endian header size,
   a JSON header {"name": {"dtype", "shape", "data_offsets": [begin, end]}, ...}
   padded with spaces to 8 bytes, then the tensors' bytes in header order.
   Tensors are given as f32 and stored as F32, F16 or BF16. */
#ifndef SAFETENSORS_H
#define SAFETENSORS_H
#include <stddef.h>
#include <stdint.h>

typedef enum { ST_F32 = 0, ST_F16 = 1, ST_BF16 = 2 } st_dtype;

/* "F32", "F16", "BF16": the header's dtype names */
const char *st_dtype_name(st_dtype dtype);

typedef struct st_writer st_writer;
st_writer *st_writer_new(st_dtype dtype);
void st_writer_free(st_writer *w);
/* adds a tensor of shape[0..n_dims) (row-major, shape[0] slowest, as PyTorch
   writes it); `data` (malloc'd f32) becomes the writer's. Names are plain
   ASCII without quotes or backslashes. On out of memory the writer remembers
   and st_save refuses. */
void st_add(st_writer *w, const char *name, float *data, int n_dims, const int64_t *shape);
/* writes the file atomically (outfile.h); 0 or -1 with err */
int st_save(st_writer *w, const char *path, char *err, size_t errlen);
#endif
