/* mla-convert: a LLaMA-architecture GQA GGUF in, an MLA (llama-mla) GGUF out
   that mla-run runs with mla.h's absorbed path and latent cache. */
#include "common/convert.h"
#include "common/outfile.h"
#include "common/run.h"
#include <limits.h>
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
            "  --method transmla|qaware   (default qaware: query/output-aware PCA + expected RoPE + refit,\n"
            "                      see README)\n"
            "  --sequential        calibrate each layer on the outputs of the converted layers before it\n"
            "  --key-weight W      qaware: weight of key (score) errors vs value errors (default 1)\n"
            "  --refit none|values|output|both   least-squares refit of each head's value up-projection\n"
            "                      and/or W_o against the original layer's attention output on the\n"
            "                      calibration text (default both; needs calibration text)\n"
            "  --refit-tokens N    refit on the first N calibration tokens (default all)\n"
            "  --refit-damp D      ridge of the refit, fraction of the mean diagonal (default 1e-3)\n"
            "  --no-expected-rope  key dims that lose RoPE lose it outright (TransMLA); by default they keep\n"
            "                      its expected rotation over the distances each head attends to\n"
            "  --calib FILES       comma-separated calibration texts (default: Debian licenses, not GPL-3)\n"
            "  --calib-tokens N    use at most N calibration tokens (default all)\n"
            "  --weight-only       no calibration text: weight-based statistics (a fallback)\n"
            "  --lossless          exact GQA->MLA rewrite only (same cache size)\n"
            "  --q-rank N          low-rank query: W_q = W_qb W_qa of rank N (PCA of the queries)\n"
            "  --eval FILE         perplexity of original and converted on FILE (windows of --ctx, 512)\n"
            "  --format F          llama-mla (default: this project's file, runs in mla-run, keeps everything),\n"
            "                      gguf (architecture deepseek2: runs in stock llama.cpp and in mla-run),\n"
            "                      safetensors (--out is a directory: model.safetensors + config.json in\n"
            "                      DeepSeek-V3's Hugging Face form)\n"
            "  --type T            llama-mla, gguf: new attention matrices as q8_0 (default: GPL-3 perplexity\n"
            "                      within noise of f32, 0.6x the file), f32 (exact), f16, bf16, q4_0, q4_1;\n"
            "                      safetensors: every tensor as f32 (default), f16, bf16\n"
            "  --lossy             gguf/safetensors: export even what DeepSeek's format cannot express (biases,\n"
            "                      a non-standard RoPE table), dropping it; --eval then measures the cost\n"
            "  --threads N\n");
}

int main(int argc, char **argv) {
    const char *in = NULL, *out = NULL, *calib_files = CALIB_TEXTS, *eval_file = NULL, *ff = NULL;
    static const char *P = "mla-convert";
    int refit, i, calib_max = 0, weight_only = 0, ctx = 512, threads = 0, n_calib = 0, bad = 0, ds = 0, lossy = 0;
    uint32_t type = (uint32_t)-1; /* per format: Q8_0 for the GGUFs, F32 for safetensors */
    convert_opts o;
    gguf_file f;
    model src, dst;
    tokenizer *tk;
    int *calib = NULL;
    char err[256];
    double t0;
    memset(&o, 0, sizeof o);
    o.method = MLA_CONVERT_QAWARE;
    o.expected_rope = -1; /* default: on for qaware (with calibration text), off for transmla (the paper's method) */
    o.progress = 1;
    o.rank = -1;
    o.refit = MLA_REFIT_VALUES | MLA_REFIT_OUTPUT; /* README: LGPL-2.1 dev text, r = 128: 27.24 -> 22.74 */
    for (i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--sequential")) { o.sequential = 1; continue; }
        if (!strcmp(a, "--weight-only")) { weight_only = 1; continue; }
        if (!strcmp(a, "--lossless")) { o.lossless = 1; continue; }
        if (!strcmp(a, "--no-expected-rope")) { o.expected_rope = 0; continue; }
        if (!strcmp(a, "--lossy")) { lossy = 1; continue; }
        if (!v) { usage(); return 2; }
        if (!strcmp(a, "--model")) in = v;
        else if (!strcmp(a, "--out")) out = v;
        else if (!strcmp(a, "--rank")) bad = arg_int(P, a, v, 1, 1 << 20, &o.rank);
        else if (!strcmp(a, "--rope-dim")) bad = arg_int(P, a, v, 2, 1 << 16, &o.rope_dim);
        else if (!strcmp(a, "--freqfold")) {
            ff = v;
            if (strcmp(v, "auto")) bad = arg_int(P, a, v, 1, 1 << 15, &o.freqfold);
        } else if (!strcmp(a, "--method")) {
            if (!strcmp(v, "transmla")) o.method = MLA_CONVERT_TRANSMLA;
            else if (!strcmp(v, "qaware")) o.method = MLA_CONVERT_QAWARE;
            else { fprintf(stderr, "mla-convert: unknown method %s (transmla or qaware)\n", v); return 2; }
        } else if (!strcmp(a, "--calib")) calib_files = v;
        else if (!strcmp(a, "--calib-tokens")) bad = arg_int(P, a, v, CALIB_WINDOW, INT_MAX, &calib_max);
        else if (!strcmp(a, "--eval")) eval_file = v;
        else if (!strcmp(a, "--ctx")) bad = arg_int(P, a, v, 2, 1 << 20, &ctx);
        else if (!strcmp(a, "--threads")) bad = arg_int(P, a, v, 0, 1024, &threads);
        else if (!strcmp(a, "--q-rank")) bad = arg_int(P, a, v, 0, 1 << 20, &o.q_rank);
        else if (!strcmp(a, "--key-weight")) bad = arg_num(P, a, v, 1e-6, 1e6, &o.key_weight);
        else if (!strcmp(a, "--refit-damp")) bad = arg_num(P, a, v, 1e-12, 1e3, &o.refit_damp);
        else if (!strcmp(a, "--refit-tokens")) bad = arg_int(P, a, v, 0, INT_MAX, &o.refit_tokens);
        else if (!strcmp(a, "--refit")) {
            static const char *names[] = {"none", "values", "output", "both"};
            int t;
            for (t = 0; t < 4 && strcmp(v, names[t]); t++) {}
            if (t == 4) { fprintf(stderr, "mla-convert: unknown --refit %s (none, values, output, both)\n", v); return 2; }
            o.refit = t; /* the mla_refit_target bits */
        } else if (!strcmp(a, "--format")) {
            if (!strcmp(v, "gguf") || !strcmp(v, "deepseek2")) ds = 1;
            else if (!strcmp(v, "safetensors")) ds = 2;
            else if (!strcmp(v, "llama-mla")) ds = 0;
            else { fprintf(stderr, "mla-convert: unknown format %s (llama-mla, gguf or safetensors)\n", v); return 2; }
        } else if (!strcmp(a, "--type")) {
            static const char *names[] = {"f32", "f16", "bf16", "q8_0", "q4_0", "q4_1"};
            static const uint32_t types[] = {GGML_F32, GGML_F16, GGML_BF16, GGML_Q8_0, GGML_Q4_0, GGML_Q4_1};
            int t;
            for (t = 0; t < 6 && strcmp(v, names[t]); t++) {}
            if (t == 6) { fprintf(stderr, "mla-convert: unknown type %s (f32, f16, bf16, q8_0, q4_0, q4_1)\n", v); return 2; }
            type = types[t];
        }
        else { usage(); return 2; }
        if (bad) return 2;
        i++;
    }
    if (!in || !out) { usage(); return 2; }
    if (type == (uint32_t)-1) type = ds == 2 ? GGML_F32 : GGML_Q8_0;
    if (!ds && lossy) {
        fprintf(stderr, "mla-convert: --lossy applies to --format gguf/safetensors (llama-mla stores everything)\n");
        return 2;
    }
    if (ds == 2 && type != GGML_F32 && type != GGML_F16 && type != GGML_BF16) {
        fprintf(stderr, "mla-convert: --format safetensors stores f32, f16 or bf16\n");
        return 2;
    }
    if (o.expected_rope < 0) o.expected_rope = o.method == MLA_CONVERT_QAWARE;
    if (same_file(in, out)) { /* the write is atomic, but replacing the source is never what was meant */
        fprintf(stderr, "mla-convert: --out %s is the source model; choose another path\n", out);
        return 2;
    }
    if (ds != 2 && outfile_check(out, err, sizeof err)) { fprintf(stderr, "mla-convert: %s\n", err); return 1; }
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
        if (o.rope_dim > L) {
            fprintf(stderr, "mla-convert: --rope-dim %d: at most the GQA key width L = %d\n", o.rope_dim, L);
            return 2;
        }
        if (o.rank < 0) o.rank = o.lossless ? 0 : L - o.rope_dim; /* r + m = L: half the GQA cache */
        if (!o.lossless && (o.rank < 1 || o.rank > 2 * L - o.rope_dim)) {
            fprintf(stderr, "mla-convert: --rank %d: expected 1 to 2L - m = %d (the full K and V width)\n", o.rank,
                    2 * L - o.rope_dim);
            return 2;
        }
        if (o.q_rank > src.dim) {
            fprintf(stderr, "mla-convert: --q-rank %d: at most the model width %d\n", o.q_rank, src.dim);
            return 2;
        }
        if (!ff) { /* 2c measured best on SmolLM2 (README); c = d/m is the smallest valid */
            int c = o.rope_dim <= src.head_dim ? src.head_dim / o.rope_dim : 1;
            o.freqfold = (src.head_dim / 2) % (2 * c) == 0 ? 2 * c : c;
            ff = "default";
        }
    }
    if (!weight_only && !o.lossless) {
        calib = tokenize_files(tk, calib_files, &n_calib);
        if (!calib) { fprintf(stderr, "mla-convert: cannot read calibration text %s\n", calib_files); return 1; }
        if (calib_max > 0 && n_calib > calib_max) n_calib = calib_max;
        if (n_calib < CALIB_WINDOW) {
            fprintf(stderr, "mla-convert: %s gives %d tokens; calibration needs at least %d (or --weight-only)\n",
                    calib_files, n_calib, CALIB_WINDOW);
            return 1;
        }
        fprintf(stderr, "calibration: %d tokens from %s\n", n_calib, calib_files);
    } else if (!o.lossless) {
        fprintf(stderr, "calibration: NONE (--weight-only): statistics from the weights alone, expect worse quality\n");
    }
    {
        int is_auto = !strcmp(ff, "auto"), n_hold = is_auto ? n_calib / 4 : 0;
        mla_calib *pre = NULL;
        if (is_auto && (!calib || n_hold < 256)) { fprintf(stderr, "mla-convert: --freqfold auto needs calibration text\n"); return 2; }
        if (calib && !o.sequential && (is_auto || !o.refit)) { /* one pass of the original model serves every trial */
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
        }
        if (convert_model(&src, calib, n_calib - n_hold, pre, &o, &dst, err, sizeof err)) {
            fprintf(stderr, "mla-convert: %s\n", err);
            return 1;
        }
        calib_free_all(pre, src.n_layers);
    }
    refit = refit_targets(&o, &src, n_calib / CALIB_WINDOW * CALIB_WINDOW);
    if (calib && !o.lossless && refit != o.refit)
        fprintf(stderr, "refit: %s skipped: %d calibration tokens, fewer than %d per unknown of a row\n",
                refit ? "W_o" : "everything", n_calib, REFIT_MIN_RATIO);
    printf("converted %s in %.1f s: %s%s%s, r=%d, m=%d, d_nope=%d, freqfold %d, q rank %d%s\n", in, now_s() - t0,
           o.lossless ? "lossless" : o.method == MLA_CONVERT_QAWARE ? "qaware" : "transmla",
           !o.lossless && o.expected_rope && calib ? " + expected RoPE" : "",
           o.lossless || !calib || !refit ? "" : refit == 1 ? " + refit values" : refit == 2 ? " + refit W_o" : " + refit values, W_o",
           dst.mla.kv_lora_rank,
           dst.mla.qk_rope_head_dim, dst.mla.qk_nope_head_dim, o.freqfold, dst.mla.q_lora_rank,
           o.sequential ? ", sequential" : "");
    printf("KV cache per token: GQA %ld values (%ld bytes f16) -> MLA %ld values (%ld bytes f16), %.1f%% saved\n",
           model_kv_values_per_token(&src), 2 * model_kv_values_per_token(&src), model_kv_values_per_token(&dst),
           2 * model_kv_values_per_token(&dst),
           100.0 * (1.0 - (double)model_kv_values_per_token(&dst) / model_kv_values_per_token(&src)));
    if (ds == 2 ? save_deepseek_safetensors(&dst, &f, out, type == GGML_F16 ? ST_F16 : type == GGML_BF16 ? ST_BF16 : ST_F32,
                                            lossy, err, sizeof err)
        : ds     ? save_deepseek2(&dst, &f, out, type, lossy, err, sizeof err)
                 : save_converted(&dst, &f, out, type, err, sizeof err)) {
        fprintf(stderr, "mla-convert: %s\n", err);
        return 1;
    }
    printf("wrote %s (%s)\n", out,
           ds == 2 ? "model.safetensors + config.json, DeepSeek-V3 form"
           : ds    ? "deepseek2 GGUF: llama.cpp and mla-run"
                   : "llama-mla GGUF: mla-run");
    if (eval_file) {
        int n;
        int *toks = tokenize_file(tk, eval_file, &n);
        gguf_file of;
        model om;
        if (!toks) { fprintf(stderr, "mla-convert: cannot read %s\n", eval_file); return 1; }
        printf("perplexity on %s (windows of %d): original %.4f, converted %.4f", eval_file, ctx,
               perplexity(&src, toks, n, ctx, 1, NULL), perplexity(&dst, toks, n, ctx, 1, NULL));
        if (ds == 1 || (ds == 0 && type != GGML_F32)) { /* what the written file gives, read back as a runner reads it */
            if (gguf_read(&of, out) || model_load(&om, &of)) {
                fprintf(stderr, "\nmla-convert: reading back %s: %s\n", out, of.err);
                return 1;
            }
            printf(", %s as written %.4f", out, perplexity(&om, toks, n, ctx, 1, NULL));
            model_free(&om);
            gguf_close(&of);
        }
        printf("\n");
        free(toks);
    }
    free(calib);
    model_free(&dst);
    tok_free(tk);
    model_free(&src);
    gguf_close(&f);
    return 0;
}
