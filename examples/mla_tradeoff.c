/* mla-tradeoff: the README's results table and chart. Calibrates once, then
   converts SmolLM2 at many ranks with each method and measures perplexity. */
#include "common/tradeoff.h"
#include "common/run.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
    const char *path = "models/SmolLM2-135M-Instruct.Q4_1.gguf", *svg = "demo-out/tradeoff.svg";
    const char *tsv_path = "demo-out/tradeoff.tsv";
    int ranks[16], n_ranks = 0, i, eval_tokens = 0, n_eval, n_calib, threads = 0;
    const char *rank_list = "320,256,192,128,64";
    tradeoff_opts o;
    gguf_file f;
    model m;
    tokenizer *tk;
    int *eval, *calib;
    mla_calib *pre;
    char err[256];
    FILE *tsv;
    memset(&o, 0, sizeof o);
    o.rope_dim = 64;
    o.freqfold = 1;
    o.rorope_rows = 1;
    for (i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--sequential")) { o.sequential = 1; continue; }
        if (!v) { fprintf(stderr, "usage: mla-tradeoff [--model F] [--ranks LIST] [--rope-dim M] [--freqfold F] "
                                  "[--eval-tokens N] [--sequential] [--svg F] [--tsv F] [--threads N] | --svg F --from-tsv F\n"); return 2; }
        if (!strcmp(a, "--from-tsv")) { /* redraw a chart only */
            if (tradeoff_svg_from_tsv(v, svg, "SmolLM2-135M -> MLA: perplexity vs KV cache (m=64, f=2)")) {
                fprintf(stderr, "mla-tradeoff: cannot read %s or write %s\n", v, svg);
                return 1;
            }
            printf("wrote %s\n", svg);
            return 0;
        }
        if (!strcmp(a, "--model")) path = v;
        else if (!strcmp(a, "--ranks")) rank_list = v;
        else if (!strcmp(a, "--rope-dim")) o.rope_dim = atoi(v);
        else if (!strcmp(a, "--freqfold")) o.freqfold = atoi(v);
        else if (!strcmp(a, "--eval-tokens")) eval_tokens = atoi(v);
        else if (!strcmp(a, "--svg")) svg = v;
        else if (!strcmp(a, "--tsv")) tsv_path = v;
        else if (!strcmp(a, "--threads")) threads = atoi(v);
        else if (!strcmp(a, "--key-weight")) o.key_weight = atof(v);
        else { fprintf(stderr, "mla-tradeoff: unknown option %s\n", a); return 2; }
        i++;
    }
    for (const char *p = rank_list; *p && n_ranks < 16;) {
        ranks[n_ranks++] = atoi(p);
        p += strcspn(p, ",");
        if (*p == ',') p++;
    }
    set_threads(threads);
    if (gguf_read(&f, path) || model_load(&m, &f) || !(tk = tok_load(&f))) { fprintf(stderr, "%s: %s\n", path, f.err); return 1; }
    eval = tokenize_file(tk, EVAL_TEXT, &n_eval);
    calib = tokenize_files(tk, CALIB_TEXTS, &n_calib);
    if (!eval || !calib) { fprintf(stderr, "cannot read the texts\n"); return 1; }
    if (eval_tokens > 0 && eval_tokens < n_eval) n_eval = eval_tokens;
    printf("evaluation: %d tokens of %s (windows of 512); calibration: %d tokens of %s\n", n_eval, EVAL_TEXT, n_calib,
           CALIB_TEXTS);
    pre = calib_collect(&m, calib, n_calib, 0, 1, err, sizeof err);
    if (!pre) { fprintf(stderr, "%s\n", err); return 1; }
    o.ranks = ranks; o.n_ranks = n_ranks; o.calib = calib; o.n_calib = n_calib;
    if (ensure_dir("demo-out")) fprintf(stderr, "mla-tradeoff: cannot create demo-out/\n");
    tsv = fopen(tsv_path, "w");
    if (run_tradeoff(&m, pre, eval, n_eval, 512, &o, tsv, svg)) return 1;
    if (tsv) fclose(tsv);
    calib_free_all(pre, m.n_layers);
    free(eval); free(calib);
    tok_free(tk);
    model_free(&m);
    gguf_close(&f);
    return 0;
}
