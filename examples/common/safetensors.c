#include "safetensors.h"
#include "../../mla.h" /* f16/bf16 conversions */
#include "outfile.h"
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct { char *name; float *data; int n_dims; int64_t shape[4]; uint64_t n; } st_tensor;
struct st_writer {
    st_dtype dtype;
    st_tensor *t;
    size_t n_t, cap;
    int oom;
};

static const char *const st_names[] = {"F32", "F16", "BF16"};
static const int st_bytes[] = {4, 2, 2};

const char *st_dtype_name(st_dtype dtype) { return st_names[dtype]; }

st_writer *st_writer_new(st_dtype dtype) {
    st_writer *w = (st_writer *)calloc(1, sizeof(st_writer));
    if (w) w->dtype = dtype;
    return w;
}

void st_writer_free(st_writer *w) {
    size_t i;
    if (!w) return;
    for (i = 0; i < w->n_t; i++) { free(w->t[i].name); free(w->t[i].data); }
    free(w->t);
    free(w);
}

void st_add(st_writer *w, const char *name, float *data, int n_dims, const int64_t *shape) {
    st_tensor *t;
    int d;
    if (!data || w->oom || n_dims < 1 || n_dims > 4) { w->oom = 1; free(data); return; }
    if (w->n_t == w->cap) {
        size_t cap = w->cap ? 2 * w->cap : 64;
        st_tensor *p = (st_tensor *)realloc(w->t, sizeof(st_tensor) * cap);
        if (!p) { w->oom = 1; free(data); return; }
        w->t = p;
        w->cap = cap;
    }
    t = &w->t[w->n_t++];
    t->name = (char *)malloc(strlen(name) + 1);
    if (t->name) strcpy(t->name, name);
    else w->oom = 1;
    t->data = data;
    t->n_dims = n_dims;
    t->n = 1;
    for (d = 0; d < n_dims; d++) { t->shape[d] = shape[d]; t->n *= (uint64_t)shape[d]; }
}

/* appends printf output to a growing string; -1 on out of memory */
static int appendf(char **s, size_t *len, size_t *cap, const char *fmt, ...) {
    va_list ap;
    int n;
    va_start(ap, fmt);
    n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) return -1;
    if (*len + (size_t)n + 1 > *cap) {
        size_t nc = (*cap + (size_t)n + 1) * 2;
        char *p = (char *)realloc(*s, nc);
        if (!p) return -1;
        *s = p;
        *cap = nc;
    }
    va_start(ap, fmt);
    vsnprintf(*s + *len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    *len += (size_t)n;
    return 0;
}

int st_save(st_writer *w, const char *path, char *err, size_t errlen) {
    char *h = NULL;
    size_t len = 0, cap = 0, i;
    uint64_t off = 0, hn, k;
    int rc = 0, d, es = st_bytes[w->dtype];
    outfile out;
    uint16_t *buf = NULL;
    if (w->oom) { snprintf(err, errlen, "out of memory while building %s", path); return -1; }
    rc |= appendf(&h, &len, &cap, "{\"__metadata__\":{\"format\":\"pt\"}");
    for (i = 0; i < w->n_t && !rc; i++) {
        const st_tensor *t = &w->t[i];
        rc |= appendf(&h, &len, &cap, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[", t->name, st_names[w->dtype]);
        for (d = 0; d < t->n_dims; d++) rc |= appendf(&h, &len, &cap, d ? ",%lld" : "%lld", (long long)t->shape[d]);
        rc |= appendf(&h, &len, &cap, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)off,
                      (unsigned long long)(off + t->n * (uint64_t)es));
        off += t->n * (uint64_t)es;
    }
    rc |= appendf(&h, &len, &cap, "}");
    while (!rc && len % 8) rc |= appendf(&h, &len, &cap, " ");
    if (rc) { free(h); snprintf(err, errlen, "out of memory for the safetensors header"); return -1; }
    if (outfile_open(&out, path, err, errlen)) { free(h); return -1; }
    hn = (uint64_t)len;
    rc |= fwrite(&hn, 8, 1, out.fp) != 1;
    rc |= fwrite(h, 1, len, out.fp) != len;
    free(h);
    for (i = 0; i < w->n_t && !rc; i++) {
        const st_tensor *t = &w->t[i];
        if (w->dtype == ST_F32) {
            rc |= fwrite(t->data, 4, (size_t)t->n, out.fp) != (size_t)t->n;
            continue;
        }
        if (!(buf = (uint16_t *)malloc(2 * (size_t)t->n))) { rc = 1; break; }
        for (k = 0; k < t->n; k++) buf[k] = w->dtype == ST_F16 ? mla_f32_to_f16(t->data[k]) : mla_f32_to_bf16(t->data[k]);
        rc |= fwrite(buf, 2, (size_t)t->n, out.fp) != (size_t)t->n;
        free(buf);
    }
    if (rc) {
        outfile_abort(&out);
        snprintf(err, errlen, "write error on %s (nothing written)", path);
        return -1;
    }
    return outfile_commit(&out, err, errlen);
}
