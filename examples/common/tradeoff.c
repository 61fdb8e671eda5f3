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

/* the curves run_tradeoff can draw */
static const struct {
    const char *key, *name;
    mla_convert_method method;
    int sequential, expected_rope, refit;
} k_curves[] = {{"transmla", "TransMLA", MLA_CONVERT_TRANSMLA, 0, 0, 0},
                {"qaware", "query-aware (ours)", MLA_CONVERT_QAWARE, 0, 0, 0},
                {"qaware-er", "query-aware + expected RoPE", MLA_CONVERT_QAWARE, 0, 1, 0},
                {"qaware-er-refit", "qaware + exp. RoPE + refit", MLA_CONVERT_QAWARE, 0, 1,
                 MLA_REFIT_VALUES | MLA_REFIT_OUTPUT},
                {"sequential", "query-aware + sequential", MLA_CONVERT_QAWARE, 1, 0, 0}};
enum { N_CURVES = sizeof k_curves / sizeof k_curves[0] };

static int has_curve(const char *list, const char *key) {
    size_t n = strlen(key);
    const char *p = list;
    while ((p = strstr(p, key))) {
        if ((p == list || p[-1] == ',') && (p[n] == ',' || !p[n])) return 1;
        p += n;
    }
    return 0;
}

int tradeoff_methods_valid(const char *list) {
    const char *p = list;
    while (*p) {
        size_t n = strcspn(p, ",");
        int ci, ok = 0;
        for (ci = 0; ci < N_CURVES; ci++) ok |= strlen(k_curves[ci].key) == n && !strncmp(p, k_curves[ci].key, n);
        if (!ok) return 0;
        p += n + (p[n] == ',');
    }
    return 1;
}

int run_tradeoff(model *src, const mla_calib *pre, const int *eval, int n_eval, int ctx, const tradeoff_opts *o,
                 FILE *tsv, const char *svg_path) {
    enum { MAXR = 16 };
    const char *list = o->methods ? o->methods : "transmla,qaware,qaware-er";
    double xs[N_CURVES][MAXR], ys[N_CURVES][MAXR], ref, t0, secs;
    char name[64];
    int n_ser = 0, ci, ri, L = src->n_kv_heads * src->head_dim, want_er = has_curve(list, "qaware-er");
    svg_series ser[N_CURVES];
    char err[256];
    model dst;
    convert_opts co;
    if (o->n_ranks > MAXR) return -1;
    if (tsv) fprintf(tsv, "model\tr\tm\tkv_values_per_token\tkv_bytes_f16\tperplexity\tconvert_seconds\n");
    ref = perplexity(src, eval, n_eval, ctx, 0, NULL);
    row(tsv, "original (GQA)", src, 0, 0, ref, 0.0);
    memset(&co, 0, sizeof co);
    if (o->rorope_rows) {
        int k, ms[4] = {0, src->head_dim, src->head_dim / 2, src->head_dim};
        for (k = 0; k < (want_er ? 4 : 3); k++) {
            co.lossless = k == 0;
            co.rope_dim = ms[k];
            co.rank = 0; /* full rank: no PCA loss */
            co.expected_rope = k == 3;
            /* FreqFold must be a multiple of the collapse c = d/m */
            co.freqfold = ms[k] && o->freqfold < src->head_dim / ms[k] ? src->head_dim / ms[k] : o->freqfold;
            t0 = now_s();
            if (convert_model(src, NULL, 0, pre, &co, &dst, err, sizeof err)) { fprintf(stderr, "%s\n", err); return -1; }
            secs = now_s() - t0;
            snprintf(name, sizeof name, k == 0 ? "lossless MLA" : k == 3 ? "RoRoPE + expected RoPE (f=%d)" : "RoRoPE only (f=%d)",
                     co.freqfold);
            row(tsv, name, &dst, dst.mla.kv_lora_rank, dst.mla.qk_rope_head_dim,
                perplexity(&dst, eval, n_eval, ctx, 0, NULL), secs);
            model_free(&dst);
        }
    }
    for (ci = 0; ci < N_CURVES; ci++) {
        if (!has_curve(list, k_curves[ci].key)) continue;
        for (ri = 0; ri < o->n_ranks; ri++) {
            memset(&co, 0, sizeof co);
            co.method = k_curves[ci].method;
            co.rank = o->ranks[ri];
            co.rope_dim = o->rope_dim;
            co.freqfold = o->freqfold;
            co.sequential = k_curves[ci].sequential;
            co.expected_rope = k_curves[ci].expected_rope;
            co.refit = k_curves[ci].refit;
            co.key_weight = o->key_weight;
            if (co.rank > 2 * L - co.rope_dim) { fprintf(stderr, "rank %d > 2L - m\n", co.rank); return -1; }
            t0 = now_s();
            if (convert_model(src, o->calib, o->n_calib, co.sequential ? NULL : pre, &co, &dst, err, sizeof err)) {
                fprintf(stderr, "%s\n", err);
                return -1;
            }
            secs = now_s() - t0;
            ys[n_ser][ri] = perplexity(&dst, eval, n_eval, ctx, 0, NULL);
            xs[n_ser][ri] = 2.0 * model_kv_values_per_token(&dst);
            row(tsv, k_curves[ci].name, &dst, co.rank, co.rope_dim, ys[n_ser][ri], secs);
            model_free(&dst);
        }
        ser[n_ser].name = k_curves[ci].name;
        ser[n_ser].n = o->n_ranks;
        ser[n_ser].x = xs[n_ser];
        ser[n_ser].y = ys[n_ser];
        n_ser++;
    }
    if (svg_path) {
        char title[160], lab[64];
        snprintf(title, sizeof title, "SmolLM2-135M -> MLA: perplexity vs KV cache (m=%d, f=%d)", o->rope_dim, o->freqfold);
        snprintf(lab, sizeof lab, "GQA %.2f", ref);
        if (svg_chart(svg_path, title, "KV cache bytes per token (f16, all layers)", "perplexity (log scale)", ser,
                      n_ser, ref, lab)) {
            fprintf(stderr, "cannot write %s\n", svg_path);
            return -1;
        }
        printf("wrote %s\n", svg_path);
    }
    return 0;
}

int tradeoff_svg_from_tsv(const char *tsv_path, const char *svg_path, const char *title) {
    enum { MAXS = 5, MAXP = 32 }; /* five colours in svg.c */
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
