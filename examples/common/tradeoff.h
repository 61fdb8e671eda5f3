/* Perplexity vs KV cache size: original, lossless, RoRoPE alone, and a rank
   sweep per conversion method; a TSV table and an SVG chart. */
#ifndef TRADEOFF_H
#define TRADEOFF_H
#include "convert.h"
#include <stdio.h>

typedef struct {
    const int *ranks;  /* r values of the sweep           */
    int n_ranks;
    int rope_dim;      /* m of the sweep                  */
    int freqfold;      /* f of the sweep                  */
    int rorope_rows;   /* also RoRoPE alone at m = d, d/2 (+ expected RoPE at m = d with qaware-er) */
    const char *methods; /* comma list of curves: transmla, qaware, qaware-er (query-aware +
                            expected RoPE), qaware-er-refit (+ output-aware refit), sequential;
                            NULL = "transmla,qaware,qaware-er" */
    const int *calib;  /* tokens (for the sequential and refit curves) */
    int n_calib;
    double key_weight; /* for the query-aware curves (0 -> 1) */
} tradeoff_opts;

/* pre: calibration moments of src; eval: tokens scored in windows of ctx.
   Prints rows as they finish (to stdout and tsv if non-NULL); writes svg_path
   if non-NULL. Returns 0 on success. */
int run_tradeoff(model *src, const mla_calib *pre, const int *eval, int n_eval, int ctx, const tradeoff_opts *o,
                 FILE *tsv, const char *svg_path);
/* 1 if every name of the comma list is a curve run_tradeoff knows */
int tradeoff_methods_valid(const char *list);
/* The chart again from a TSV written by run_tradeoff (no model needed). */
int tradeoff_svg_from_tsv(const char *tsv_path, const char *svg_path, const char *title);
#endif
