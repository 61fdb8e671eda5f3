/* Reader for the .mlav reference-vector files written by the tools/ scripts:
   "MLAV" u32 version u32 n, then n x (u32 name_len, name, u32 count, f32[count]). */
#ifndef MLAV_H
#define MLAV_H
typedef struct {
    int n;
    char **names;
    float **data;
    unsigned *count;
} mlav;

int mlav_load(mlav *v, const char *path);          /* 0 on success */
const float *mlav_get(const mlav *v, const char *name, unsigned *count); /* NULL if absent */
float mlav_num(const mlav *v, const char *name, float dflt);
void mlav_free(mlav *v);
#endif
