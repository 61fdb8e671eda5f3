/* GGUF reader (v2/v3) and writer for the examples: bounds-checked
   everywhere, dequantization of F32, F16, BF16, Q4_0, Q4_1, Q8_0 to f32.
   Not part of mla.h: model file formats live with the examples. */
#ifndef GGUF_H
#define GGUF_H
#include <stddef.h>
#include <stdint.h>

enum {
    GGUF_T_U8 = 0, GGUF_T_I8, GGUF_T_U16, GGUF_T_I16, GGUF_T_U32, GGUF_T_I32, GGUF_T_F32,
    GGUF_T_BOOL, GGUF_T_STRING, GGUF_T_ARRAY, GGUF_T_U64, GGUF_T_I64, GGUF_T_F64, GGUF_T_COUNT
};
enum { GGML_F32 = 0, GGML_F16 = 1, GGML_Q4_0 = 2, GGML_Q4_1 = 3, GGML_Q8_0 = 8, GGML_BF16 = 30 };

typedef struct { const char *p; uint64_t n; } gguf_str; /* not NUL-terminated */

typedef struct {
    gguf_str key;
    uint32_t type;       /* GGUF_T_*                                  */
    uint32_t arr_type;   /* element type when type == GGUF_T_ARRAY     */
    uint64_t arr_n;      /* element count when an array                */
    const uint8_t *val;  /* the value's bytes in the file              */
    uint64_t val_n;      /* and their count                            */
} gguf_kv;

typedef struct {
    char name[128];
    uint32_t n_dims;
    uint64_t ne[4];      /* ne[0] fastest: a matrix [rows][cols] has ne = {cols, rows} */
    uint32_t type;       /* GGML_*                                     */
    uint64_t offset;     /* relative to the data section               */
    uint64_t n_elem;
    uint64_t n_bytes;
    const uint8_t *data;
} gguf_tensor;

typedef struct {
    uint8_t *buf;        /* the whole file (owned when read from disk) */
    size_t size;
    int owns;
    uint32_t version;
    uint64_t n_kv, n_tensors;
    gguf_kv *kv;
    gguf_tensor *tensors;
    uint32_t alignment;
    char err[256];
} gguf_file;

/* 0 on success; on failure -1, f->err says what is wrong and nothing is held
   (gguf_close is then optional and harmless). */
int gguf_read(gguf_file *f, const char *path);
int gguf_parse(gguf_file *f, const uint8_t *buf, size_t size); /* borrows buf */
void gguf_close(gguf_file *f);

const gguf_kv *gguf_find(const gguf_file *f, const char *key);
/* typed getters: 0 on success, -1 if absent or of another type (err set) */
int gguf_get_int(gguf_file *f, const char *key, int64_t *out);   /* any integer type */
int gguf_get_float(gguf_file *f, const char *key, double *out);  /* f32/f64 or integer */
int gguf_get_str(gguf_file *f, const char *key, gguf_str *out);
/* array of strings -> caller-freed array of n gguf_str (NULL on error) */
gguf_str *gguf_get_str_array(gguf_file *f, const char *key, uint64_t *n);
/* array of i32 -> caller-freed int array */
int32_t *gguf_get_i32_array(gguf_file *f, const char *key, uint64_t *n);

const gguf_tensor *gguf_tensor_find(const gguf_file *f, const char *name);
const char *ggml_type_name(uint32_t type);
/* block size and bytes per block of a type; 0 if unsupported */
int ggml_type_info(uint32_t type, int *block, int *block_bytes);
/* Dequantize n values (n a multiple of the block) of `type` from src. */
int gguf_dequant(uint32_t type, const void *src, float *dst, uint64_t n);
/* Quantize n f32 values (n a multiple of the block) into `type`: the inverse
   of gguf_dequant, rounding as llama.cpp's reference quantizers do. */
int gguf_quant(uint32_t type, const float *src, void *dst, uint64_t n);
/* The tensor `name`, checked to be the matrix [rows][cols] (ne = {cols, rows};
   rows 1 = a vector of cols; rows or cols <= 0 = any shape); NULL and f->err
   when it is missing or shaped otherwise. */
const gguf_tensor *gguf_tensor_matrix(gguf_file *f, const char *name, int64_t rows, int64_t cols);
/* Whole tensor to a new f32 array [n_elem]; NULL and f->err on failure. If
   rows/cols are > 0 the tensor must be exactly that matrix (ne = {cols, rows}). */
float *gguf_tensor_f32(gguf_file *f, const char *name, int64_t rows, int64_t cols);

/* ---- writer: metadata and tensors are collected, then written at once ---- */
typedef struct gguf_writer gguf_writer;
gguf_writer *gguf_writer_new(void);
void gguf_writer_free(gguf_writer *w);
void gguf_w_u32(gguf_writer *w, const char *key, uint32_t v);
void gguf_w_f32(gguf_writer *w, const char *key, float v);
void gguf_w_bool(gguf_writer *w, const char *key, int v);
void gguf_w_str(gguf_writer *w, const char *key, const char *v);
/* copy a kv (any type, arrays included) from a file being read */
void gguf_w_copy(gguf_writer *w, const gguf_kv *kv);
/* copy a kv under another key */
void gguf_w_copy_as(gguf_writer *w, const char *key, const gguf_kv *kv);
/* tensor of any supported type, its bytes copied (e.g. from a file being read) */
void gguf_w_tensor_raw(gguf_writer *w, const char *name, uint32_t type, const void *data, int n_dims,
                       const uint64_t *ne);
/* f32 tensor; ne = {cols, rows} for a matrix; data copied */
void gguf_w_tensor_f32(gguf_writer *w, const char *name, const float *data, int n_dims, const uint64_t *ne);
/* f32 data stored as `type` (quantized here); -1 if the type is unknown or
   ne[0] is not a multiple of its block (nothing added) */
int gguf_w_tensor_as(gguf_writer *w, const char *name, uint32_t type, const float *data, int n_dims,
                     const uint64_t *ne);
/* writes the file atomically (outfile.h): whole or not at all; 0 or -1 with err */
int gguf_writer_save(gguf_writer *w, const char *path, char *err, size_t errlen);
#endif
