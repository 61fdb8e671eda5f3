#include "mlav.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int rd(FILE *f, void *p, size_t n) { return fread(p, 1, n, f) == n; }

int mlav_load(mlav *v, const char *path) {
    FILE *f = fopen(path, "rb");
    char magic[4];
    unsigned ver, n, i;
    memset(v, 0, sizeof *v);
    if (!f) return -1;
    if (!rd(f, magic, 4) || memcmp(magic, "MLAV", 4) || !rd(f, &ver, 4) || !rd(f, &n, 4) || n > 100000) {
        fclose(f);
        return -1;
    }
    v->names = (char **)calloc(n, sizeof(char *));
    v->data = (float **)calloc(n, sizeof(float *));
    v->count = (unsigned *)calloc(n, sizeof(unsigned));
    for (i = 0; i < n; i++) {
        unsigned len, cnt;
        if (!rd(f, &len, 4) || len > 4096) break;
        v->names[i] = (char *)calloc(len + 1, 1);
        if (!rd(f, v->names[i], len) || !rd(f, &cnt, 4) || cnt > (1u << 28)) { free(v->names[i]); v->names[i] = NULL; break; }
        v->data[i] = (float *)malloc(sizeof(float) * (cnt ? cnt : 1));
        v->count[i] = cnt;
        v->n = (int)i + 1;
        if (!rd(f, v->data[i], sizeof(float) * cnt)) break;
    }
    fclose(f);
    if (v->n != (int)n) {
        mlav_free(v);
        return -1;
    }
    return 0;
}

const float *mlav_get(const mlav *v, const char *name, unsigned *count) {
    int i;
    for (i = 0; i < v->n; i++)
        if (!strcmp(v->names[i], name)) {
            if (count) *count = v->count[i];
            return v->data[i];
        }
    return NULL;
}

float mlav_num(const mlav *v, const char *name, float dflt) {
    const float *p = mlav_get(v, name, NULL);
    return p ? p[0] : dflt;
}

void mlav_free(mlav *v) {
    int i;
    for (i = 0; i < v->n; i++) {
        free(v->names[i]);
        free(v->data[i]);
    }
    free(v->names);
    free(v->data);
    free(v->count);
    memset(v, 0, sizeof *v);
}
