/* GGUF reader/writer, see gguf.h and shared notes in README. */
#if defined(__linux__) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE /* posix_memalign, madvise(MADV_HUGEPAGE) */
#endif
#include "gguf.h"
#include "../../mla.h" /* f16/bf16 conversions */
#include "outfile.h"
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#if defined(__linux__)
#include <sys/mman.h>
#endif

/* ------------------------------------------------------------ reading -- */
typedef struct {
    const uint8_t *p, *end;
    gguf_file *f;
} cursor;

static int fail(gguf_file *f, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(f->err, sizeof f->err, fmt, ap);
    va_end(ap);
    return -1;
}

static int need(cursor *c, uint64_t n, const char *what) {
    if ((uint64_t)(c->end - c->p) < n) return fail(c->f, "truncated file while reading %s", what);
    return 0;
}
static int rd_u32(cursor *c, uint32_t *v, const char *what) {
    if (need(c, 4, what)) return -1;
    memcpy(v, c->p, 4);
    c->p += 4;
    return 0;
}
static int rd_u64(cursor *c, uint64_t *v, const char *what) {
    if (need(c, 8, what)) return -1;
    memcpy(v, c->p, 8);
    c->p += 8;
    return 0;
}
static int rd_str(cursor *c, gguf_str *s, const char *what) {
    uint64_t n;
    if (rd_u64(c, &n, what)) return -1;
    if (n > (1u << 30)) return fail(c->f, "absurd string length %llu in %s", (unsigned long long)n, what);
    if (need(c, n, what)) return -1;
    s->p = (const char *)c->p;
    s->n = n;
    c->p += n;
    return 0;
}

static const int k_scalar_size[GGUF_T_COUNT] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};

/* skips over one value of type t, checking every length */
static int skip_value(cursor *c, uint32_t t, int depth) {
    if (t >= GGUF_T_COUNT) return fail(c->f, "unknown metadata value type %u", t);
    if (t == GGUF_T_STRING) {
        gguf_str s;
        return rd_str(c, &s, "string value");
    }
    if (t == GGUF_T_ARRAY) {
        uint32_t et;
        uint64_t n, i;
        if (depth > 2) return fail(c->f, "arrays nested too deeply");
        if (rd_u32(c, &et, "array type") || rd_u64(c, &n, "array length")) return -1;
        if (et >= GGUF_T_COUNT) return fail(c->f, "unknown array element type %u", et);
        if (n > (uint64_t)(c->end - c->p)) return fail(c->f, "absurd array length %llu", (unsigned long long)n);
        if (et != GGUF_T_STRING && et != GGUF_T_ARRAY) {
            if (need(c, n * (uint64_t)k_scalar_size[et], "array data")) return -1;
            c->p += n * (uint64_t)k_scalar_size[et];
            return 0;
        }
        for (i = 0; i < n; i++)
            if (skip_value(c, et, depth + 1)) return -1;
        return 0;
    }
    if (need(c, (uint64_t)k_scalar_size[t], "value")) return -1;
    c->p += k_scalar_size[t];
    return 0;
}

int ggml_type_info(uint32_t type, int *block, int *bytes) {
    int b = 0, s = 0;
    switch (type) {
    case GGML_F32: b = 1; s = 4; break;
    case GGML_F16: b = 1; s = 2; break;
    case GGML_BF16: b = 1; s = 2; break;
    case GGML_Q4_0: b = 32; s = 18; break;
    case GGML_Q4_1: b = 32; s = 20; break;
    case GGML_Q8_0: b = 32; s = 34; break;
    default: break;
    }
    if (block) *block = b;
    if (bytes) *bytes = s;
    return b ? 0 : -1;
}

const char *ggml_type_name(uint32_t type) {
    switch (type) {
    case GGML_F32: return "F32";
    case GGML_F16: return "F16";
    case GGML_BF16: return "BF16";
    case GGML_Q4_0: return "Q4_0";
    case GGML_Q4_1: return "Q4_1";
    case GGML_Q8_0: return "Q8_0";
    case 12: return "Q4_K";
    case 14: return "Q6_K";
    default: return "unknown";
    }
}

static int parse(gguf_file *f, const uint8_t *buf, size_t size) {
    cursor c;
    uint64_t i, data_off, run = 0;
    uint32_t magic;
    memset(f, 0, sizeof *f);
    f->buf = (uint8_t *)buf;
    f->size = size;
    c.p = buf; c.end = buf + size; c.f = f;
    if (rd_u32(&c, &magic, "magic")) return -1;
    if (memcmp(&magic, "GGUF", 4)) return fail(f, "bad magic: not a GGUF file");
    if (rd_u32(&c, &f->version, "version")) return -1;
    if (f->version != 2 && f->version != 3) return fail(f, "unsupported GGUF version %u", f->version);
    if (rd_u64(&c, &f->n_tensors, "tensor count") || rd_u64(&c, &f->n_kv, "metadata count")) return -1;
    /* each kv needs >= 12 bytes and each tensor info >= 24: bound counts by size */
    if (f->n_kv > size / 12 || f->n_tensors > size / 24)
        return fail(f, "absurd counts: %llu metadata entries, %llu tensors for a %zu-byte file",
                    (unsigned long long)f->n_kv, (unsigned long long)f->n_tensors, size);
    f->kv = (gguf_kv *)calloc(f->n_kv ? f->n_kv : 1, sizeof(gguf_kv));
    f->tensors = (gguf_tensor *)calloc(f->n_tensors ? f->n_tensors : 1, sizeof(gguf_tensor));
    if (!f->kv || !f->tensors) return fail(f, "out of memory");
    f->alignment = 32;
    for (i = 0; i < f->n_kv; i++) {
        gguf_kv *kv = &f->kv[i];
        uint64_t j;
        if (rd_str(&c, &kv->key, "metadata key") || rd_u32(&c, &kv->type, "metadata type")) return -1;
        for (j = 0; j < i; j++)
            if (f->kv[j].key.n == kv->key.n && !memcmp(f->kv[j].key.p, kv->key.p, kv->key.n))
                return fail(f, "duplicate metadata key %.*s", (int)kv->key.n, kv->key.p);
        kv->val = c.p;
        if (kv->type == GGUF_T_ARRAY) {
            cursor peek = c;
            if (rd_u32(&peek, &kv->arr_type, "array type") || rd_u64(&peek, &kv->arr_n, "array length")) return -1;
        }
        if (skip_value(&c, kv->type, 0)) return -1;
        kv->val_n = (uint64_t)(c.p - kv->val);
        if (kv->key.n == 17 && !memcmp(kv->key.p, "general.alignment", 17)) {
            if (kv->type != GGUF_T_U32) return fail(f, "general.alignment is not u32");
            memcpy(&f->alignment, kv->val, 4);
            if (f->alignment == 0 || (f->alignment & (f->alignment - 1)) || f->alignment > 65536)
                return fail(f, "bad alignment %u", f->alignment);
        }
    }
    for (i = 0; i < f->n_tensors; i++) {
        gguf_tensor *t = &f->tensors[i];
        gguf_str name;
        uint32_t d;
        int blk, bb;
        uint64_t j;
        if (rd_str(&c, &name, "tensor name")) return -1;
        if (name.n >= sizeof t->name) return fail(f, "tensor name too long (%llu bytes)", (unsigned long long)name.n);
        memcpy(t->name, name.p, name.n);
        t->name[name.n] = 0;
        if (rd_u32(&c, &t->n_dims, "tensor dims")) return -1;
        if (t->n_dims == 0 || t->n_dims > 4) return fail(f, "tensor %s has %u dims (1..4 allowed)", t->name, t->n_dims);
        t->n_elem = 1;
        for (d = 0; d < 4; d++) t->ne[d] = 1;
        for (d = 0; d < t->n_dims; d++) {
            if (rd_u64(&c, &t->ne[d], "tensor shape")) return -1;
            if (t->ne[d] == 0 || t->ne[d] > ((uint64_t)1 << 40) || t->n_elem > (((uint64_t)1 << 50) / t->ne[d]))
                return fail(f, "tensor %s has an absurd dimension %llu", t->name, (unsigned long long)t->ne[d]);
            t->n_elem *= t->ne[d];
        }
        if (rd_u32(&c, &t->type, "tensor type") || rd_u64(&c, &t->offset, "tensor offset")) return -1;
        if (ggml_type_info(t->type, &blk, &bb))
            return fail(f, "tensor %s has unsupported type %u (%s)", t->name, t->type, ggml_type_name(t->type));
        if (t->ne[0] % (uint64_t)blk)
            return fail(f, "tensor %s: ne[0]=%llu is not a multiple of the %s block (%d)", t->name,
                        (unsigned long long)t->ne[0], ggml_type_name(t->type), blk);
        t->n_bytes = t->n_elem / (uint64_t)blk * (uint64_t)bb;
        for (j = 0; j < i; j++)
            if (!strcmp(f->tensors[j].name, t->name)) return fail(f, "duplicate tensor name %s", t->name);
    }
    data_off = (uint64_t)(c.p - buf);
    data_off = (data_off + f->alignment - 1) / f->alignment * f->alignment;
    if (data_off > size) return fail(f, "truncated file: data section starts past the end");
    for (i = 0; i < f->n_tensors; i++) {
        gguf_tensor *t = &f->tensors[i];
        if (t->offset % f->alignment) return fail(f, "tensor %s offset %llu is not aligned", t->name, (unsigned long long)t->offset);
        if (t->offset > size - data_off || t->n_bytes > size - data_off - t->offset)
            return fail(f, "tensor %s data (offset %llu, %llu bytes) runs past the end of the file", t->name,
                        (unsigned long long)t->offset, (unsigned long long)t->n_bytes);
        if (t->offset < run) return fail(f, "tensor %s overlaps the previous tensor", t->name);
        run = t->offset + t->n_bytes;
        t->data = buf + data_off + t->offset;
    }
    return 0;
}

int gguf_parse(gguf_file *f, const uint8_t *buf, size_t size) {
    if (parse(f, buf, size) == 0) return 0;
    free(f->kv); /* a failed parse holds nothing; the message stays in f->err */
    free(f->tensors);
    f->kv = NULL; f->tensors = NULL; f->n_kv = f->n_tensors = 0;
    return -1;
}

/* the buffer a whole file is read into: on Linux 2 MiB aligned and marked
   for transparent huge pages, so the weights streamed at every decode step
   do not each cost a page walk (+20 % decode speed on one thread measured
   with SmolLM2 Q4_1); freed with free() */
static uint8_t *file_alloc(size_t n) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    void *p = NULL;
    size_t huge = (size_t)1 << 21;
    if (n >= huge && posix_memalign(&p, huge, n) == 0) {
        (void)madvise(p, n - n % huge, MADV_HUGEPAGE); /* a hint: failure changes nothing */
        return (uint8_t *)p;
    }
#endif
    return (uint8_t *)malloc(n);
}

int gguf_read(gguf_file *f, const char *path) {
    FILE *fp = fopen(path, "rb");
    long n;
    uint8_t *buf;
    memset(f, 0, sizeof *f);
    if (!fp) return fail(f, "cannot open %s", path);
    if (fseek(fp, 0, SEEK_END) || (n = ftell(fp)) < 0 || fseek(fp, 0, SEEK_SET)) {
        fclose(fp);
        return fail(f, "cannot size %s", path);
    }
    buf = file_alloc(n ? (size_t)n : 1);
    if (!buf || fread(buf, 1, (size_t)n, fp) != (size_t)n) {
        free(buf);
        fclose(fp);
        return fail(f, "cannot read %s", path);
    }
    fclose(fp);
    if (gguf_parse(f, buf, (size_t)n)) {
        free(buf);
        f->buf = NULL;
        return -1;
    }
    f->owns = 1;
    return 0;
}

void gguf_close(gguf_file *f) {
    if (f->owns) free(f->buf);
    free(f->kv);
    free(f->tensors);
    f->kv = NULL; f->tensors = NULL; f->buf = NULL; f->owns = 0;
}

const gguf_kv *gguf_find(const gguf_file *f, const char *key) {
    uint64_t i, n = strlen(key);
    for (i = 0; i < f->n_kv; i++)
        if (f->kv[i].key.n == n && !memcmp(f->kv[i].key.p, key, n)) return &f->kv[i];
    return NULL;
}

int gguf_get_int(gguf_file *f, const char *key, int64_t *out) {
    const gguf_kv *kv = gguf_find(f, key);
    if (!kv) return fail(f, "missing metadata %s", key);
    switch (kv->type) {
    case GGUF_T_U8: *out = kv->val[0]; return 0;
    case GGUF_T_I8: *out = (int8_t)kv->val[0]; return 0;
    case GGUF_T_U16: { uint16_t v; memcpy(&v, kv->val, 2); *out = v; return 0; }
    case GGUF_T_I16: { int16_t v; memcpy(&v, kv->val, 2); *out = v; return 0; }
    case GGUF_T_U32: { uint32_t v; memcpy(&v, kv->val, 4); *out = v; return 0; }
    case GGUF_T_I32: { int32_t v; memcpy(&v, kv->val, 4); *out = v; return 0; }
    case GGUF_T_U64: { uint64_t v; memcpy(&v, kv->val, 8); if (v > INT64_MAX) break; *out = (int64_t)v; return 0; }
    case GGUF_T_I64: { int64_t v; memcpy(&v, kv->val, 8); *out = v; return 0; }
    case GGUF_T_BOOL: *out = kv->val[0] != 0; return 0;
    default: break;
    }
    return fail(f, "metadata %s is not an integer", key);
}

int gguf_get_float(gguf_file *f, const char *key, double *out) {
    const gguf_kv *kv = gguf_find(f, key);
    int64_t iv;
    if (!kv) return fail(f, "missing metadata %s", key);
    if (kv->type == GGUF_T_F32) { float v; memcpy(&v, kv->val, 4); *out = v; return 0; }
    if (kv->type == GGUF_T_F64) { double v; memcpy(&v, kv->val, 8); *out = v; return 0; }
    if (gguf_get_int(f, key, &iv)) return fail(f, "metadata %s is not a number", key);
    *out = (double)iv;
    return 0;
}

int gguf_get_str(gguf_file *f, const char *key, gguf_str *out) {
    const gguf_kv *kv = gguf_find(f, key);
    if (!kv) return fail(f, "missing metadata %s", key);
    if (kv->type != GGUF_T_STRING) return fail(f, "metadata %s is not a string", key);
    memcpy(&out->n, kv->val, 8);
    out->p = (const char *)kv->val + 8;
    return 0;
}

gguf_str *gguf_get_str_array(gguf_file *f, const char *key, uint64_t *n) {
    const gguf_kv *kv = gguf_find(f, key);
    gguf_str *a;
    cursor c;
    uint64_t i;
    if (!kv || kv->type != GGUF_T_ARRAY || kv->arr_type != GGUF_T_STRING) {
        fail(f, "metadata %s is missing or not an array of strings", key);
        return NULL;
    }
    a = (gguf_str *)malloc(sizeof(gguf_str) * (kv->arr_n ? kv->arr_n : 1));
    if (!a) return NULL;
    c.p = kv->val + 12; c.end = f->buf + f->size; c.f = f;
    for (i = 0; i < kv->arr_n; i++)
        if (rd_str(&c, &a[i], key)) { free(a); return NULL; } /* cannot fail: checked by parse */
    *n = kv->arr_n;
    return a;
}

int32_t *gguf_get_i32_array(gguf_file *f, const char *key, uint64_t *n) {
    const gguf_kv *kv = gguf_find(f, key);
    int32_t *a;
    if (!kv || kv->type != GGUF_T_ARRAY || (kv->arr_type != GGUF_T_I32 && kv->arr_type != GGUF_T_U32)) {
        fail(f, "metadata %s is missing or not an array of 32-bit integers", key);
        return NULL;
    }
    a = (int32_t *)malloc(sizeof(int32_t) * (kv->arr_n ? kv->arr_n : 1));
    if (!a) return NULL;
    memcpy(a, kv->val + 12, sizeof(int32_t) * kv->arr_n);
    *n = kv->arr_n;
    return a;
}

const gguf_tensor *gguf_tensor_find(const gguf_file *f, const char *name) {
    uint64_t i;
    for (i = 0; i < f->n_tensors; i++)
        if (!strcmp(f->tensors[i].name, name)) return &f->tensors[i];
    return NULL;
}

static float h2f(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return mla_f16_to_f32(h);
}

int gguf_dequant(uint32_t type, const void *src, float *dst, uint64_t n) {
    const uint8_t *s = (const uint8_t *)src;
    uint64_t i, b;
    int j, blk, bb;
    if (ggml_type_info(type, &blk, &bb) || n % (uint64_t)blk) return -1;
    switch (type) {
    case GGML_F32: memcpy(dst, s, 4 * n); break;
    case GGML_F16: for (i = 0; i < n; i++) dst[i] = h2f(s + 2 * i); break;
    case GGML_BF16:
        for (i = 0; i < n; i++) { uint16_t h; memcpy(&h, s + 2 * i, 2); dst[i] = mla_bf16_to_f32(h); }
        break;
    case GGML_Q4_0: /* d; 16 bytes: low nibble = element j, high nibble = element j+16 */
        for (b = 0; b < n / 32; b++, s += 18, dst += 32) {
            float d = h2f(s);
            for (j = 0; j < 16; j++) {
                dst[j] = (float)((s[2 + j] & 15) - 8) * d;
                dst[j + 16] = (float)((s[2 + j] >> 4) - 8) * d;
            }
        }
        break;
    case GGML_Q4_1: /* d, m; 16 bytes */
        for (b = 0; b < n / 32; b++, s += 20, dst += 32) {
            float d = h2f(s), m = h2f(s + 2);
            for (j = 0; j < 16; j++) {
                dst[j] = (float)(s[4 + j] & 15) * d + m;
                dst[j + 16] = (float)(s[4 + j] >> 4) * d + m;
            }
        }
        break;
    case GGML_Q8_0: /* d; 32 x i8 */
        for (b = 0; b < n / 32; b++, s += 34, dst += 32) {
            float d = h2f(s);
            for (j = 0; j < 32; j++) dst[j] = (float)(int8_t)s[2 + j] * d;
        }
        break;
    default: return -1;
    }
    return 0;
}

static void f2h(uint8_t *p, float v) {
    uint16_t h = mla_f32_to_f16(v);
    memcpy(p, &h, 2);
}

/* The inverse of gguf_dequant, with the rounding of llama.cpp's reference
   quantizers: Q8_0 d = absmax/127; Q4_0 d = (the value of largest magnitude,
   sign kept)/-8, so that value lands exactly on code 0; Q4_1 d = (max-min)/15
   from m = min. Codes round to nearest. */
int gguf_quant(uint32_t type, const float *src, void *dst, uint64_t n) {
    uint8_t *s = (uint8_t *)dst;
    uint64_t i, b;
    int j, blk, bb;
    if (ggml_type_info(type, &blk, &bb) || n % (uint64_t)blk) return -1;
    switch (type) {
    case GGML_F32: memcpy(s, src, 4 * n); break;
    case GGML_F16: for (i = 0; i < n; i++) f2h(s + 2 * i, src[i]); break;
    case GGML_BF16:
        for (i = 0; i < n; i++) { uint16_t h = mla_f32_to_bf16(src[i]); memcpy(s + 2 * i, &h, 2); }
        break;
    case GGML_Q8_0:
        for (b = 0; b < n / 32; b++, s += 34, src += 32) {
            float amax = 0, d, id;
            for (j = 0; j < 32; j++) amax = fabsf(src[j]) > amax ? fabsf(src[j]) : amax;
            d = amax / 127.0f;
            id = d > 0 ? 1.0f / d : 0.0f;
            f2h(s, d);
            for (j = 0; j < 32; j++) s[2 + j] = (uint8_t)(int8_t)lrintf(src[j] * id);
        }
        break;
    case GGML_Q4_0:
        for (b = 0; b < n / 32; b++, s += 18, src += 32) {
            float amax = 0, vmax = 0, d, id;
            for (j = 0; j < 32; j++)
                if (fabsf(src[j]) > amax) { amax = fabsf(src[j]); vmax = src[j]; }
            d = vmax / -8.0f;
            id = d != 0 ? 1.0f / d : 0.0f;
            f2h(s, d);
            for (j = 0; j < 16; j++) {
                int lo = (int)(src[j] * id + 8.5f), hi = (int)(src[j + 16] * id + 8.5f);
                lo = lo < 0 ? 0 : lo > 15 ? 15 : lo;
                hi = hi < 0 ? 0 : hi > 15 ? 15 : hi;
                s[2 + j] = (uint8_t)(lo | hi << 4);
            }
        }
        break;
    case GGML_Q4_1:
        for (b = 0; b < n / 32; b++, s += 20, src += 32) {
            float lo = src[0], hi = src[0], d, id;
            for (j = 1; j < 32; j++) { lo = src[j] < lo ? src[j] : lo; hi = src[j] > hi ? src[j] : hi; }
            d = (hi - lo) / 15.0f;
            id = d > 0 ? 1.0f / d : 0.0f;
            f2h(s, d);
            f2h(s + 2, lo);
            for (j = 0; j < 16; j++) {
                int a = (int)((src[j] - lo) * id + 0.5f), c = (int)((src[j + 16] - lo) * id + 0.5f);
                a = a > 15 ? 15 : a;
                c = c > 15 ? 15 : c;
                s[4 + j] = (uint8_t)(a | c << 4);
            }
        }
        break;
    default: return -1;
    }
    return 0;
}

const gguf_tensor *gguf_tensor_matrix(gguf_file *f, const char *name, int64_t rows, int64_t cols) {
    const gguf_tensor *t = gguf_tensor_find(f, name);
    if (!t) { fail(f, "missing tensor %s", name); return NULL; }
    if (rows > 0 && cols > 0) {
        int ok = t->n_dims <= 2 && t->ne[0] == (uint64_t)cols && t->ne[1] == (uint64_t)rows;
        if (rows == 1) ok = t->n_elem == (uint64_t)cols && t->ne[0] == (uint64_t)cols;
        if (!ok) {
            fail(f, "tensor %s has shape {%llu, %llu}, expected {%lld, %lld}", name, (unsigned long long)t->ne[0],
                 (unsigned long long)t->ne[1], (long long)cols, (long long)rows);
            return NULL;
        }
    }
    return t;
}

float *gguf_tensor_f32(gguf_file *f, const char *name, int64_t rows, int64_t cols) {
    const gguf_tensor *t = gguf_tensor_matrix(f, name, rows, cols);
    float *out;
    if (!t) return NULL;
    out = (float *)malloc(sizeof(float) * t->n_elem);
    if (!out) { fail(f, "out of memory for tensor %s", name); return NULL; }
    if (gguf_dequant(t->type, t->data, out, t->n_elem)) {
        free(out);
        fail(f, "cannot dequantize tensor %s of type %s", name, ggml_type_name(t->type));
        return NULL;
    }
    return out;
}

/* ------------------------------------------------------------ writing -- */
typedef struct { char *key; uint32_t type; uint8_t *val; size_t n; } wkv;
typedef struct { char *name; int n_dims; uint64_t ne[4]; uint32_t type; uint8_t *data; uint64_t nbytes; } wtensor;
struct gguf_writer {
    wkv *kv; size_t n_kv, cap_kv;
    wtensor *t; size_t n_t, cap_t;
    int oom; /* an allocation failed: save refuses (nothing half-built is written) */
};

gguf_writer *gguf_writer_new(void) { return (gguf_writer *)calloc(1, sizeof(gguf_writer)); }

void gguf_writer_free(gguf_writer *w) {
    size_t i;
    if (!w) return;
    for (i = 0; i < w->n_kv; i++) { free(w->kv[i].key); free(w->kv[i].val); }
    for (i = 0; i < w->n_t; i++) { free(w->t[i].name); free(w->t[i].data); }
    free(w->kv); free(w->t); free(w);
}

/* copy of n bytes plus a NUL (so names come out as C strings) */
static void *copy_bytes(const void *p, size_t n) {
    uint8_t *d = (uint8_t *)malloc(n + 1);
    if (!d) return NULL;
    memcpy(d, p, n);
    d[n] = 0;
    return d;
}

/* room for one more element in a growing array; 0 or -1 (w->oom set) */
static int grow(gguf_writer *w, void **arr, size_t n, size_t *cap, size_t elem, size_t first) {
    void *p;
    if (w->oom) return -1;
    if (n < *cap) return 0;
    p = realloc(*arr, elem * (*cap ? 2 * *cap : first));
    if (!p) { w->oom = 1; return -1; }
    *arr = p;
    *cap = *cap ? 2 * *cap : first;
    return 0;
}

static void add_kv(gguf_writer *w, const char *key, size_t keyn, uint32_t type, const void *val, size_t n) {
    wkv *k;
    if (grow(w, (void **)&w->kv, w->n_kv, &w->cap_kv, sizeof(wkv), 32)) return;
    k = &w->kv[w->n_kv++];
    k->key = (char *)copy_bytes(key, keyn);
    k->type = type;
    k->val = (uint8_t *)copy_bytes(val, n);
    k->n = n;
    if (!k->key || !k->val) w->oom = 1;
}

void gguf_w_u32(gguf_writer *w, const char *key, uint32_t v) { add_kv(w, key, strlen(key), GGUF_T_U32, &v, 4); }
void gguf_w_f32(gguf_writer *w, const char *key, float v) { add_kv(w, key, strlen(key), GGUF_T_F32, &v, 4); }
void gguf_w_bool(gguf_writer *w, const char *key, int v) { uint8_t b = (uint8_t)(v != 0); add_kv(w, key, strlen(key), GGUF_T_BOOL, &b, 1); }
void gguf_w_str(gguf_writer *w, const char *key, const char *v) {
    uint64_t n = strlen(v);
    uint8_t *buf = (uint8_t *)malloc(8 + n);
    if (!buf) { w->oom = 1; return; }
    memcpy(buf, &n, 8);
    memcpy(buf + 8, v, n);
    add_kv(w, key, strlen(key), GGUF_T_STRING, buf, 8 + n);
    free(buf);
}

void gguf_w_copy(gguf_writer *w, const gguf_kv *kv) {
    add_kv(w, kv->key.p, (size_t)kv->key.n, kv->type, kv->val, (size_t)kv->val_n);
}

void gguf_w_copy_as(gguf_writer *w, const char *key, const gguf_kv *kv) {
    add_kv(w, key, strlen(key), kv->type, kv->val, (size_t)kv->val_n);
}

void gguf_w_tensor_raw(gguf_writer *w, const char *name, uint32_t type, const void *data, int n_dims,
                       const uint64_t *ne) {
    wtensor *t;
    int d, blk = 1, bb = 4;
    uint64_t n = 1;
    ggml_type_info(type, &blk, &bb);
    if (grow(w, (void **)&w->t, w->n_t, &w->cap_t, sizeof(wtensor), 64)) return;
    t = &w->t[w->n_t++];
    t->name = (char *)copy_bytes(name, strlen(name));
    t->n_dims = n_dims;
    t->type = type;
    for (d = 0; d < 4; d++) t->ne[d] = d < n_dims ? ne[d] : 1;
    for (d = 0; d < n_dims; d++) n *= ne[d];
    t->nbytes = n / (uint64_t)blk * (uint64_t)bb;
    t->data = (uint8_t *)copy_bytes(data, (size_t)t->nbytes);
    if (!t->name || !t->data) w->oom = 1;
}

void gguf_w_tensor_f32(gguf_writer *w, const char *name, const float *data, int n_dims, const uint64_t *ne) {
    gguf_w_tensor_raw(w, name, GGML_F32, data, n_dims, ne);
}

int gguf_w_tensor_as(gguf_writer *w, const char *name, uint32_t type, const float *data, int n_dims,
                     const uint64_t *ne) {
    int d, blk, bb;
    uint64_t n = 1;
    void *q;
    if (ggml_type_info(type, &blk, &bb) || n_dims < 1 || ne[0] % (uint64_t)blk) return -1;
    for (d = 0; d < n_dims; d++) n *= ne[d];
    if (!(q = malloc((size_t)(n / (uint64_t)blk * (uint64_t)bb)))) { w->oom = 1; return 0; }
    gguf_quant(type, data, q, n);
    gguf_w_tensor_raw(w, name, type, q, n_dims, ne);
    free(q);
    return 0;
}

static int wr(FILE *fp, const void *p, size_t n) { return fwrite(p, 1, n, fp) == n ? 0 : -1; }
static int pad(FILE *fp, long *pos, int align) {
    static const uint8_t z[64] = {0};
    long p = (*pos + align - 1) / align * align;
    int rc = wr(fp, z, (size_t)(p - *pos));
    *pos = p;
    return rc;
}

int gguf_writer_save(gguf_writer *w, const char *path, char *err, size_t errlen) {
    outfile out;
    FILE *fp;
    uint32_t u;
    uint64_t q, off = 0;
    size_t i;
    long pos = 0;
    int rc = 0, d;
    if (w->oom) { snprintf(err, errlen, "out of memory while building %s", path); return -1; }
    if (outfile_open(&out, path, err, errlen)) return -1;
    fp = out.fp;
    rc |= wr(fp, "GGUF", 4); u = 3; rc |= wr(fp, &u, 4);
    q = w->n_t; rc |= wr(fp, &q, 8);
    q = w->n_kv; rc |= wr(fp, &q, 8);
    pos = 24;
    for (i = 0; i < w->n_kv; i++) {
        q = strlen(w->kv[i].key);
        rc |= wr(fp, &q, 8); rc |= wr(fp, w->kv[i].key, q);
        rc |= wr(fp, &w->kv[i].type, 4); rc |= wr(fp, w->kv[i].val, w->kv[i].n);
        pos += (long)(8 + q + 4 + w->kv[i].n);
    }
    for (i = 0; i < w->n_t; i++) {
        q = strlen(w->t[i].name);
        rc |= wr(fp, &q, 8); rc |= wr(fp, w->t[i].name, q);
        u = (uint32_t)w->t[i].n_dims; rc |= wr(fp, &u, 4);
        for (d = 0; d < w->t[i].n_dims; d++) rc |= wr(fp, &w->t[i].ne[d], 8);
        u = w->t[i].type; rc |= wr(fp, &u, 4);
        rc |= wr(fp, &off, 8);
        pos += (long)(8 + q + 4 + 8 * w->t[i].n_dims + 4 + 8);
        off += (w->t[i].nbytes + 31) / 32 * 32;
    }
    rc |= pad(fp, &pos, 32);
    for (i = 0; i < w->n_t; i++) {
        rc |= wr(fp, w->t[i].data, w->t[i].nbytes);
        pos += (long)w->t[i].nbytes;
        rc |= pad(fp, &pos, 32);
    }
    if (rc) {
        outfile_abort(&out);
        snprintf(err, errlen, "write error on %s (nothing written)", path);
        return -1;
    }
    return outfile_commit(&out, err, errlen);
}
