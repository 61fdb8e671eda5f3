#include "tradeoff.h"
#include "run.h"
#include "svg.h"
#include <stdlib.h>
#include <string.h>

static void row(FILE *tsv, const char *name, const model *m, int r, int mm, double ppl, double secs) {
    long v = model_kv_values_per_token(m);
    printf("%-26s r=%-4d m=%-4d KV %6ld values = %6ld bytes/token (f16)   perplexity %8.3f", name, r, mm, v, 2 * v, ppl);
    if (secs > 0) printf("   (converted in %.1f s)", secs);
    printf("\n");
    fflush(stdout);
    if (tsv) {
        fprintf(tsv, "%s\t%d\t%d\t%ld\t%ld\t%.4f\t%.1f\n", name, r, mm, v, 2 * v, ppl, secs);
        fflush(tsv);
    }
}

int run_tradeoff(const model *src, const mla_calib *pre, const int *eval, int n_eval, int ctx, const tradeoff_opts *o,
                 FILE *tsv, const char *svg_path) {
    enum { MAXR = 16 };
    const char *names[3] = {"TransMLA", "query-aware (ours)", "query-aware + sequential"};
    double xs[3][MAXR], ys[3][MAXR], ref, t0, secs;
    char name[64];
    int n_methods = o->sequential ? 3 : 2, mi, ri, L = src->n_kv_heads * src->head_dim;
    svg_series ser[3];
    char err[256];
    model dst;
    convert_opts co;
    if (o->n_ranks > MAXR) return -1;
    if (tsv) fprintf(tsv, "model\tr\tm\tkv_values_per_token\tkv_bytes_f16\tperplexity\tconvert_seconds\n");
    ref = perplexity(src, eval, n_eval, ctx, 0, NULL);
    row(tsv, "original (GQA)", src, 0, 0, ref, 0.0);
    memset(&co, 0, sizeof co);
    if (o->rorope_rows) {
        int k, ms[3] = {0, src->head_dim, src->head_dim / 2};
        for (k = 0; k < 3; k++) {
            co.lossless = k == 0;
            co.rope_dim = ms[k];
            co.rank = 0; /* full rank: no PCA loss */
            /* FreqFold must be a multiple of the collapse c = d/m */
            co.freqfold = ms[k] && o->freqfold < src->head_dim / ms[k] ? src->head_dim / ms[k] : o->freqfold;
            t0 = now_s();
            if (convert_model(src, NULL, 0, pre, &co, &dst, err, sizeof err)) { fprintf(stderr, "%s\n", err); return -1; }
            secs = now_s() - t0;
            snprintf(name, sizeof name, k == 0 ? "lossless MLA" : "RoRoPE only (f=%d)", co.freqfold);
            row(tsv, name, &dst, dst.mla.kv_lora_rank, dst.mla.qk_rope_head_dim,
                perplexity(&dst, eval, n_eval, ctx, 0, NULL), secs);
            model_free(&dst);
        }
    }
    for (mi = 0; mi < n_methods; mi++) {
        for (ri = 0; ri < o->n_ranks; ri++) {
            memset(&co, 0, sizeof co);
            co.method = mi == 0 ? MLA_CONVERT_TRANSMLA : MLA_CONVERT_QAWARE;
            co.rank = o->ranks[ri];
            co.rope_dim = o->rope_dim;
            co.freqfold = o->freqfold;
            co.sequential = mi == 2;
            co.key_weight = o->key_weight;
            if (co.rank > 2 * L - co.rope_dim) { fprintf(stderr, "rank %d > 2L - m\n", co.rank); return -1; }
            t0 = now_s();
            if (convert_model(src, o->calib, o->n_calib, mi == 2 ? NULL : pre, &co, &dst, err, sizeof err)) {
                fprintf(stderr, "%s\n", err);
                return -1;
            }
            secs = now_s() - t0;
            ys[mi][ri] = perplexity(&dst, eval, n_eval, ctx, 0, NULL);
            xs[mi][ri] = 2.0 * model_kv_values_per_token(&dst);
            row(tsv, names[mi], &dst, co.rank, co.rope_dim, ys[mi][ri], secs);
            model_free(&dst);
        }
        ser[mi].name = names[mi];
        ser[mi].n = o->n_ranks;
        ser[mi].x = xs[mi];
        ser[mi].y = ys[mi];
    }
    if (svg_path) {
        char title[160], lab[64];
        snprintf(title, sizeof title, "SmolLM2-135M -> MLA: perplexity vs KV cache (m=%d, f=%d)", o->rope_dim, o->freqfold);
        snprintf(lab, sizeof lab, "GQA %.2f", ref);
        if (svg_chart(svg_path, title, "KV cache bytes per token (f16, all layers)", "perplexity (log scale)", ser,
                      n_methods, ref, lab)) {
            fprintf(stderr, "cannot write %s\n", svg_path);
            return -1;
        }
        printf("wrote %s\n", svg_path);
    }
    return 0;
}

int tradeoff_svg_from_tsv(const char *tsv_path, const char *svg_path, const char *title) {
    enum { MAXS = 4, MAXP = 32 };
    static char names[MAXS][64];
    double xs[MAXS][MAXP], ys[MAXS][MAXP], ref = 0;
    svg_series ser[MAXS];
    int n_ser = 0, i;
    char line[512];
    FILE *f = fopen(tsv_path, "r");
    if (!f) return -1;
    if (!fgets(line, sizeof line, f)) { fclose(f); return -1; } /* header */
    while (fgets(line, sizeof line, f)) {
        char name[64];
        int r, m;
        long v, b;
        double ppl, secs;
        if (sscanf(line, "%63[^\t]\t%d\t%d\t%ld\t%ld\t%lf\t%lf", name, &r, &m, &v, &b, &ppl, &secs) != 7) continue;
        if (!strncmp(name, "original", 8)) { ref = ppl; continue; }
        if (!strncmp(name, "lossless", 8) || !strncmp(name, "RoRoPE", 6)) continue;
        for (i = 0; i < n_ser && strcmp(names[i], name); i++) {}
        if (i == n_ser) {
            if (n_ser == MAXS) continue;
            snprintf(names[n_ser], sizeof names[n_ser], "%s", name);
            ser[n_ser].name = names[n_ser];
            ser[n_ser].n = 0;
            ser[n_ser].x = xs[n_ser];
            ser[n_ser].y = ys[n_ser];
            n_ser++;
        }
        if (ser[i].n < MAXP) {
            xs[i][ser[i].n] = (double)b;
            ys[i][ser[i].n] = ppl;
            ser[i].n++;
        }
    }
    fclose(f);
    {
        char lab[64];
        snprintf(lab, sizeof lab, "GQA %.2f", ref);
        return svg_chart(svg_path, title, "KV cache bytes per token (f16, all layers)", "perplexity (log scale)", ser, n_ser,
                         ref, lab);
    }
}
