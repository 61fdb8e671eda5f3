/* mla-convert: a LLaMA-architecture GQA GGUF in, an MLA (llama-mla) GGUF out
   that mla-run runs with mla.h's absorbed path and latent cache. */
#include "common/convert.h"
#include "common/run.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(void) {
    fprintf(stderr,
            "usage: mla-convert --model IN.gguf --out OUT.gguf [options]\n"
            "  --rank R            latent size r (default: about half the GQA cache: r + m = L)\n"
            "  --rope-dim M        dims that keep RoPE, m (default: head dim d)\n"
            "  --freqfold N|auto   frequencies rotated together (default 2c, c = d/m, when it divides d/2,\n"
            "                      else c; auto: double while the perplexity of a held-out quarter of\n"
            "                      the calibration text improves)\n"
            "  --method transmla|qaware   (default qaware: query/output-aware PCA, see README)\n"
            "  --sequential        calibrate each layer on the outputs of the converted layers before it\n"
            "  --key-weight W      qaware: weight of key (score) errors vs value errors (default 1)\n"
            "  --calib FILES       comma-separated calibration texts (default: Debian licenses, not GPL-3)\n"
            "  --calib-tokens N    use at most N calibration tokens (default all)\n"
            "  --weight-only       no calibration text: weight-based statistics (a fallback)\n"
            "  --lossless          exact GQA->MLA rewrite only (same cache size)\n"
            "  --q-rank N          low-rank query: W_q = W_qb W_qa of rank N (PCA of the queries)\n"
            "  --eval FILE         perplexity of original and converted on FILE (windows of --ctx, 512)\n"
            "  --threads N\n");
}

int main(int argc, char **argv) {
    const char *in = NULL, *out = NULL, *calib_files = CALIB_TEXTS, *eval_file = NULL, *ff = NULL;
    int i, calib_max = 0, weight_only = 0, ctx = 512, threads = 0, n_calib = 0;
    convert_opts o;
    gguf_file f;
    model src, dst;
    tokenizer *tk;
    int *calib = NULL;
    char err[256];
    double t0;
    memset(&o, 0, sizeof o);
    o.method = MLA_CONVERT_QAWARE;
    o.progress = 1;
    o.rank = -1;
    for (i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--sequential")) { o.sequential = 1; continue; }
        if (!strcmp(a, "--weight-only")) { weight_only = 1; continue; }
        if (!strcmp(a, "--lossless")) { o.lossless = 1; continue; }
        if (!v) { usage(); return 2; }
        if (!strcmp(a, "--model")) in = v;
        else if (!strcmp(a, "--out")) out = v;
        else if (!strcmp(a, "--rank")) o.rank = atoi(v);
        else if (!strcmp(a, "--rope-dim")) o.rope_dim = atoi(v);
        else if (!strcmp(a, "--freqfold")) ff = v;
        else if (!strcmp(a, "--method")) {
            if (!strcmp(v, "transmla")) o.method = MLA_CONVERT_TRANSMLA;
            else if (!strcmp(v, "qaware")) o.method = MLA_CONVERT_QAWARE;
            else { fprintf(stderr, "mla-convert: unknown method %s (transmla or qaware)\n", v); return 2; }
        } else if (!strcmp(a, "--calib")) calib_files = v;
        else if (!strcmp(a, "--calib-tokens")) calib_max = atoi(v);
        else if (!strcmp(a, "--eval")) eval_file = v;
        else if (!strcmp(a, "--ctx")) ctx = atoi(v);
        else if (!strcmp(a, "--threads")) threads = atoi(v);
        else if (!strcmp(a, "--q-rank")) o.q_rank = atoi(v);
        else if (!strcmp(a, "--key-weight")) o.key_weight = atof(v);
        else { usage(); return 2; }
        i++;
    }
    if (!in || !out) { usage(); return 2; }
    set_threads(threads);
    t0 = now_s();
    if (gguf_read(&f, in) || model_load(&src, &f) || !(tk = tok_load(&f))) {
        fprintf(stderr, "mla-convert: %s: %s\n", in, f.err);
        return 1;
    }
    if (src.is_mla) { fprintf(stderr, "mla-convert: %s is already an MLA model\n", in); return 1; }
    {
        int L = src.n_kv_heads * src.head_dim;
        if (!o.rope_dim) o.rope_dim = o.lossless ? L : src.head_dim;
        if (o.rank < 0) o.rank = o.lossless ? 0 : L - o.rope_dim; /* r + m = L: half the GQA cache */
        if (o.rank <= 0 && !o.lossless) o.rank = 0;
        if (!ff) { /* 2c measured best on SmolLM2 (README); c = d/m is the smallest valid */
            static char buf[16];
            int c = o.rope_dim <= src.head_dim ? src.head_dim / o.rope_dim : 1;
            snprintf(buf, sizeof buf, "%d", (src.head_dim / 2) % (2 * c) == 0 ? 2 * c : c);
            ff = buf;
        }
    }
    if (!weight_only && !o.lossless) {
        calib = tokenize_files(tk, calib_files, &n_calib);
        if (!calib) { fprintf(stderr, "mla-convert: cannot read calibration text %s\n", calib_files); return 1; }
        if (calib_max > 0 && n_calib > calib_max) n_calib = calib_max;
        fprintf(stderr, "calibration: %d tokens from %s\n", n_calib, calib_files);
    } else if (!o.lossless) {
        fprintf(stderr, "calibration: NONE (--weight-only): statistics from the weights alone, expect worse quality\n");
    }
    {
        int is_auto = !strcmp(ff, "auto"), n_hold = is_auto ? n_calib / 4 : 0;
        mla_calib *pre = NULL;
        if (is_auto && (!calib || n_hold < 256)) { fprintf(stderr, "mla-convert: --freqfold auto needs calibration text\n"); return 2; }
        if (calib && !o.sequential) { /* one pass of the original model serves every trial */
            pre = calib_collect(&src, calib, n_calib - n_hold, 0, 1, err, sizeof err);
            if (!pre) { fprintf(stderr, "mla-convert: %s\n", err); return 1; }
        }
        if (is_auto) { /* double f while held-out perplexity improves (TransMLA's rule) */
            int f, best_f = 1;
            double best = 1e30;
            for (f = 1; f <= src.head_dim / 2; f *= 2) {
                model trial;
                double ppl;
                o.freqfold = f;
                if ((src.head_dim / 2) % f || (o.rope_dim <= src.head_dim && f % (src.head_dim / o.rope_dim))) continue;
                if (convert_model(&src, calib, n_calib - n_hold, pre, &o, &trial, err, sizeof err)) break;
                ppl = perplexity(&trial, calib + n_calib - n_hold, n_hold, 256, 0, NULL);
                model_free(&trial);
                fprintf(stderr, "  freqfold %d: held-out calibration perplexity %.3f\n", f, ppl);
                if (!(ppl < best)) break;
                best = ppl;
                best_f = f;
            }
            o.freqfold = best_f;
            fprintf(stderr, "freqfold auto: %d\n", best_f);
        } else {
            o.freqfold = atoi(ff);
        }
        if (convert_model(&src, calib, n_calib - n_hold, pre, &o, &dst, err, sizeof err)) {
            fprintf(stderr, "mla-convert: %s\n", err);
            return 1;
        }
        calib_free_all(pre, src.n_layers);
    }
    printf("converted %s in %.1f s: %s, r=%d, m=%d, d_nope=%d, freqfold %d, q rank %d%s\n", in, now_s() - t0,
           o.lossless ? "lossless" : o.method == MLA_CONVERT_QAWARE ? "qaware" : "transmla", dst.mla.kv_lora_rank,
           dst.mla.qk_rope_head_dim, dst.mla.qk_nope_head_dim, o.freqfold, dst.mla.q_lora_rank,
           o.sequential ? ", sequential" : "");
    printf("KV cache per token: GQA %ld values (%ld bytes f16) -> MLA %ld values (%ld bytes f16), %.1f%% saved\n",
           model_kv_values_per_token(&src), 2 * model_kv_values_per_token(&src), model_kv_values_per_token(&dst),
           2 * model_kv_values_per_token(&dst),
           100.0 * (1.0 - (double)model_kv_values_per_token(&dst) / model_kv_values_per_token(&src)));
    if (save_converted(&dst, &f, out, err, sizeof err)) { fprintf(stderr, "mla-convert: %s\n", err); return 1; }
    printf("wrote %s\n", out);
    if (eval_file) {
        int n;
        int *toks = tokenize_file(tk, eval_file, &n);
        if (!toks) { fprintf(stderr, "mla-convert: cannot read %s\n", eval_file); return 1; }
        printf("perplexity on %s (windows of %d): original %.4f, converted %.4f\n", eval_file, ctx,
               perplexity(&src, toks, n, ctx, 1, NULL), perplexity(&dst, toks, n, ctx, 1, NULL));
        free(toks);
    }
    free(calib);
    model_free(&dst);
    tok_free(tk);
    model_free(&src);
    gguf_close(&f);
    return 0;
}
