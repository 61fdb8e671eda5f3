/* mla-tradeoff: the README's results table and chart. Calibrates once, then
   converts SmolLM2 at many ranks with each method and measures perplexity. */
#include "common/tradeoff.h"
#include "common/outfile.h"
#include "common/run.h"
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
    const char *path = "models/SmolLM2-135M-Instruct.Q4_1.gguf", *svg = "demo-out/tradeoff.svg";
    const char *tsv_path = "demo-out/tradeoff.tsv", *eval_path = EVAL_TEXT;
    static const char *P = "mla-tradeoff";
    int ranks[16], n_ranks = 0, i, eval_tokens = 0, n_eval, n_calib, threads = 0, bad = 0;
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
        if (!strcmp(a, "--sequential")) { o.methods = "transmla,qaware,qaware-er,sequential"; continue; }
        if (!strcmp(a, "--no-rorope")) { o.rorope_rows = 0; continue; }
        if (!v) { fprintf(stderr, "usage: mla-tradeoff [--model F] [--ranks LIST] [--rope-dim M] [--freqfold F] [--eval FILE]\n"
                                  "       [--eval-tokens N] [--methods transmla,qaware,qaware-er,qaware-er-refit,sequential] [--sequential]\n"
                                  "       [--no-rorope] [--svg F] [--tsv F] [--threads N] | --svg F --from-tsv F\n"); return 2; }
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
        else if (!strcmp(a, "--eval")) eval_path = v;
        else if (!strcmp(a, "--methods")) {
            if (!tradeoff_methods_valid(v)) {
                fprintf(stderr, "mla-tradeoff: --methods %s: expected names from transmla, qaware, qaware-er, "
                                "qaware-er-refit, sequential\n", v);
                return 2;
            }
            o.methods = v;
        }
        else if (!strcmp(a, "--rope-dim")) bad = arg_int(P, a, v, 2, 1 << 16, &o.rope_dim);
        else if (!strcmp(a, "--freqfold")) bad = arg_int(P, a, v, 1, 1 << 15, &o.freqfold);
        else if (!strcmp(a, "--eval-tokens")) bad = arg_int(P, a, v, 2, INT_MAX, &eval_tokens);
        else if (!strcmp(a, "--svg")) svg = v;
        else if (!strcmp(a, "--tsv")) tsv_path = v;
        else if (!strcmp(a, "--threads")) bad = arg_int(P, a, v, 0, 1024, &threads);
        else if (!strcmp(a, "--key-weight")) bad = arg_num(P, a, v, 1e-6, 1e6, &o.key_weight);
        else { fprintf(stderr, "mla-tradeoff: unknown option %s\n", a); return 2; }
        if (bad) return 2;
        i++;
    }
    for (const char *p = rank_list; *p;) { /* comma-separated ranks */
        char one[32];
        size_t len = strcspn(p, ",");
        if (n_ranks == 16) { fprintf(stderr, "mla-tradeoff: --ranks: at most 16\n"); return 2; }
        snprintf(one, sizeof one, "%.*s", (int)(len < sizeof one ? len : sizeof one - 1), p);
        if (arg_int(P, "--ranks", one, 1, 1 << 20, &ranks[n_ranks++])) return 2;
        p += len;
        if (*p == ',') p++;
    }
    if (!n_ranks) { fprintf(stderr, "mla-tradeoff: --ranks: empty list\n"); return 2; }
    /* outputs checked before minutes of work; the default ones go to demo-out/ */
    if ((!strncmp(tsv_path, "demo-out/", 9) || !strncmp(svg, "demo-out/", 9)) && ensure_dir("demo-out")) {
        fprintf(stderr, "mla-tradeoff: cannot create demo-out/\n");
        return 1;
    }
    if (!(tsv = fopen(tsv_path, "w"))) { fprintf(stderr, "mla-tradeoff: cannot write %s\n", tsv_path); return 1; }
    if (outfile_check(svg, err, sizeof err)) { fprintf(stderr, "mla-tradeoff: %s\n", err); return 1; }
    set_threads(threads);
    if (gguf_read(&f, path) || model_load(&m, &f) || !(tk = tok_load(&f))) { fprintf(stderr, "%s: %s\n", path, f.err); return 1; }
    eval = tokenize_file(tk, eval_path, &n_eval);
    calib = tokenize_files(tk, CALIB_TEXTS, &n_calib);
    if (!eval || !calib) { fprintf(stderr, "cannot read the texts\n"); return 1; }
    if (eval_tokens > 0 && eval_tokens < n_eval) n_eval = eval_tokens;
    printf("evaluation: %d tokens of %s (windows of 512); calibration: %d tokens of %s\n", n_eval, eval_path, n_calib,
           CALIB_TEXTS);
    pre = calib_collect(&m, calib, n_calib, 0, 1, err, sizeof err);
    if (!pre) { fprintf(stderr, "%s\n", err); return 1; }
    o.ranks = ranks; o.n_ranks = n_ranks; o.calib = calib; o.n_calib = n_calib;
    if (!eval || n_eval < 513) { fprintf(stderr, "mla-tradeoff: %s: too short (one window of 512 tokens needed)\n", eval_path); return 1; }
    if (run_tradeoff(&m, pre, eval, n_eval, 512, &o, tsv, svg)) return 1;
    if (fclose(tsv)) { fprintf(stderr, "mla-tradeoff: write error on %s\n", tsv_path); return 1; }
    calib_free_all(pre, m.n_layers);
    free(eval); free(calib);
    tok_free(tk);
    model_free(&m);
    gguf_close(&f);
    return 0;
}
