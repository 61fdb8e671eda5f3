/* mla-run: run a LLaMA GGUF (GQA), a converted llama-mla GGUF or a dense
   deepseek2 GGUF (MLA, e.g. from mla-convert --format gguf):
   generate text, chat, or measure perplexity. */
#define _XOPEN_SOURCE 600 /* getrusage */
#include "common/run.h"
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

static void usage(void) {
    fprintf(stderr,
            "usage: mla-run --model F [--prompt TEXT | --chat TEXT] [-n N] [--ppl FILE --ctx N]\n"
            "               [--threads N] [--temp T] [--top-p P] [--seed S] [--cache f32|f16|bf16|i8]\n"
            "               [--naive] [--absorbed] [--ppl-half] [--f32-act] [--bench --depth D]\n"
            "  --prompt  raw text continuation      --chat  one user turn in the model's chat template\n"
            "  --ppl     perplexity of a text file in non-overlapping windows of --ctx tokens (default 512)\n"
            "  --ppl-half  score only the second half of each window, BOS first when the vocabulary adds it:\n"
            "              what llama.cpp's llama-perplexity computes (same windows, same numbers)\n"
            "  --naive     MLA models: decompressed K/V (the reference path) instead of the latent, for\n"
            "              prompts and decode (default: absorbed everywhere except --ppl)\n"
            "  --absorbed  --ppl of MLA models: windows through the absorbed path (default there: naive)\n"
            "  --cache     KV cache storage (default f32; i8: MLA models only, int8 latent rows)\n"
            "  --f32-act   Q4_0/Q4_1/Q8_0 weights times f32 activations, MLA's W_kvb in f32 (default:\n"
            "              activations rounded to 8 bits per 32-block and integer dot products, as\n"
            "              llama.cpp does; W_kvb read as a bf16 copy)\n"
            "  --bench     timing only: prefill D tokens (--depth, default 0) in chunks of 512, then decode -n\n"
            "              tokens (default 32) one at a time; prints one key=value line for scripts\n");
}

int main(int argc, char **argv) {
    const char *path = NULL, *prompt = NULL, *chat = NULL, *ppl_file = NULL, *cache = "f32";
    static const char *P = "mla-run";
    int n_new = -1, ctx = 512, threads = 0, i, naive = 0, absorbed = 0, bad = 0, half = 0, bench = 0, depth = 0;
    long long seed = 0;
    double x = 0;
    sampler sp = {0.0f, 0.95f, 42};
    gguf_file f;
    model m;
    tokenizer *tk;
    double t0;
    mla_dtype ct;
    for (i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--naive")) { naive = 1; continue; }
        if (!strcmp(a, "--absorbed")) { absorbed = 1; continue; }
        if (!strcmp(a, "--ppl-half")) { half = 1; continue; }
        if (!strcmp(a, "--bench")) { bench = 1; continue; }
        if (!strcmp(a, "--f32-act")) { wmat_set_act8(0); continue; }
        if (!v) { usage(); return 2; }
        if (!strcmp(a, "--model")) path = v;
        else if (!strcmp(a, "--prompt")) prompt = v;
        else if (!strcmp(a, "--chat")) chat = v;
        else if (!strcmp(a, "-n")) bad = arg_int(P, a, v, 0, 1 << 20, &n_new);
        else if (!strcmp(a, "--ppl")) ppl_file = v;
        else if (!strcmp(a, "--ctx")) bad = arg_int(P, a, v, 2, 1 << 20, &ctx);
        else if (!strcmp(a, "--depth")) bad = arg_int(P, a, v, 0, 1 << 24, &depth);
        else if (!strcmp(a, "--threads")) bad = arg_int(P, a, v, 0, 1024, &threads);
        else if (!strcmp(a, "--temp")) { bad = arg_num(P, a, v, 0, 100, &x); sp.temp = (float)x; }
        else if (!strcmp(a, "--top-p")) { bad = arg_num(P, a, v, 1e-6, 1, &x); sp.top_p = (float)x; }
        else if (!strcmp(a, "--seed")) { bad = arg_ll(P, a, v, 0, LLONG_MAX, &seed); sp.rng = (unsigned long long)seed * 2654435761ULL + 1; }
        else if (!strcmp(a, "--cache")) cache = v;
        else { usage(); return 2; }
        if (bad) return 2;
        i++;
    }
    if (!path || (!prompt && !chat && !ppl_file && !bench)) { usage(); return 2; }
    if (n_new < 0) n_new = bench ? 32 : 128;
    if (strcmp(cache, "f32") && strcmp(cache, "f16") && strcmp(cache, "bf16") && strcmp(cache, "i8")) {
        fprintf(stderr, "mla-run: --cache %s: expected f32, f16, bf16 or i8\n", cache);
        return 2;
    }
    ct = !strcmp(cache, "bf16") ? MLA_BF16 : !strcmp(cache, "f16") ? MLA_F16 : !strcmp(cache, "i8") ? MLA_I8 : MLA_F32;
    set_threads(threads);
    t0 = now_s();
    if (gguf_read(&f, path) || model_load(&m, &f)) {
        fprintf(stderr, "mla-run: %s: %s\n", path, f.err);
        gguf_close(&f);
        return 1;
    }
    if (!(tk = tok_load(&f))) {
        fprintf(stderr, "mla-run: %s: %s\n", path, f.err);
        return 1;
    }
    if (wmat_act8()) model_repack(&m); /* the 8-bit kernels' layout; the f32 path reads the file's */
    fprintf(stderr, "loaded %s (%s, %d layers, D=%d, %d heads, %d kv heads) in %.1f s; KV cache %ld values/token\n", path,
            m.arch, m.n_layers, m.dim, m.n_heads, m.n_kv_heads, now_s() - t0, model_kv_values_per_token(&m));
    if (ct != MLA_F32 && !m.is_mla) {
        fprintf(stderr, "mla-run: --cache %s: the GQA runner's cache is f32 (convert the model to MLA first)\n", cache);
        return 2;
    }
    if (bench) { /* fixed pseudo-random ids: timing does not depend on the text */
        model_state st;
        int *toks = (int *)malloc(sizeof(int) * (size_t)(depth + n_new + 1)), k, rc = 0;
        float *hidden = (float *)malloc(sizeof(float) * 512 * (size_t)m.dim), *logits = (float *)malloc(sizeof(float) * m.vocab);
        unsigned s = 1u;
        double t1, tp = 0, td;
        if (!toks || !hidden || !logits || model_state_init(&st, &m, depth + n_new + 1, 512, ct)) {
            fprintf(stderr, "mla-run: out of memory for --depth %d\n", depth);
            return 1;
        }
        for (k = 0; k < depth + n_new + 1; k++) { s = s * 1664525u + 1013904223u; toks[k] = (int)((s >> 8) % (unsigned)m.vocab); }
        if (naive && model_state_modes(&st, &m, MLA_NAIVE, MLA_NAIVE)) { fprintf(stderr, "mla-run: out of memory\n"); return 1; }
        t1 = now_s();
        for (k = 0; k < depth && !rc; k += 512) rc = model_forward(&m, &st, toks + k, depth - k < 512 ? depth - k : 512, hidden);
        tp = now_s() - t1;
        t1 = now_s();
        for (k = 0; k < n_new && !rc; k++) {
            rc = model_forward(&m, &st, toks + depth + k, 1, hidden);
            if (!rc) model_logits(&m, hidden, 1, logits); /* a decode step includes its logits */
        }
        td = now_s() - t1;
        if (rc) { fprintf(stderr, "mla-run: --bench: %s\n", mla_result_string((mla_result)rc)); return 1; }
        {
            struct rusage ru;
            getrusage(RUSAGE_SELF, &ru);
            printf("bench model=%s arch=%s threads=%d cache=%s kernel=%s attn_kernel=%s prefill_tokens=%d prefill_tps=%.1f "
                   "depth=%d decode_tokens=%d decode_tps=%.2f peak_rss_mb=%.1f\n", path, m.arch, threads, cache,
                   wmat_kernel(), mla_kernel_name(),
                   depth, depth ? depth / tp : 0.0, depth, n_new, n_new / td, ru.ru_maxrss / 1024.0);
        }
        model_state_free(&st);
        free(toks); free(hidden); free(logits);
    }
    if (prompt || chat) {
        int *toks = (int *)malloc(sizeof(int) * 8192), n;
        model_state st;
        double pf = 0, dc = 0;
        if (!toks) { fprintf(stderr, "mla-run: out of memory\n"); return 1; }
        n = chat ? chat_tokens(tk, chat, toks, 8192) : tok_encode(tk, prompt, strlen(prompt), 1, toks, 8192);
        if (n <= 0) { fprintf(stderr, "mla-run: empty or too long prompt\n"); return 1; }
        if (model_state_init(&st, &m, n + n_new + 1, 64, ct)) { fprintf(stderr, "mla-run: out of memory\n"); return 1; }
        if (naive && model_state_modes(&st, &m, MLA_NAIVE, MLA_NAIVE)) { fprintf(stderr, "mla-run: out of memory\n"); return 1; }
        if (prompt) fputs(prompt, stdout);
        if (generate(&m, &st, tk, toks, n, n_new, &sp, stdout, NULL, 0, &pf, &dc) < 0) {
            fprintf(stderr, "\nmla-run: generation failed\n");
            return 1;
        }
        printf("\n");
        fprintf(stderr, "prompt %d tokens: prefill %.1f tok/s, decode %.1f tok/s\n", n, pf, dc);
        model_state_free(&st);
        free(toks);
    }
    if (ppl_file) {
        int n, bos = -1;
        long scored = 0;
        int *toks = tokenize_file(tk, ppl_file, &n);
        double ppl, t1;
        if (!toks) { fprintf(stderr, "mla-run: cannot read %s\n", ppl_file); return 1; }
        if (n < ctx) { fprintf(stderr, "mla-run: %s has %d tokens, fewer than --ctx %d\n", ppl_file, n, ctx); return 1; }
        t1 = now_s();
        if (half) { /* llama-perplexity: BOS over the first token when the vocabulary adds one */
            const gguf_kv *ab = gguf_find(&f, "tokenizer.ggml.add_bos_token");
            bos = ab && ab->type == GGUF_T_BOOL && ab->val[0] ? tok_bos(tk) : -1;
        }
        ppl = perplexity_with(&m, toks, n, ctx, 1, &scored, ct, absorbed, half ? ctx / 2 : 0, bos);
        printf("perplexity %.4f over %ld tokens (%d windows of %d%s) of %s; %s cache, %s prefill; %.1f tok/s\n", ppl,
               scored, n / ctx, ctx, half ? ", second halves scored" : "", ppl_file, cache,
               m.is_mla && absorbed ? "absorbed" : "naive", (n / ctx) * ctx / (now_s() - t1));
        free(toks);
        if (!(ppl == ppl) || ppl <= 0) { /* nan: the evaluation failed, say so in the exit code */
            fprintf(stderr, "mla-run: perplexity evaluation failed\n");
            return 1;
        }
    }
    tok_free(tk);
    model_free(&m);
    gguf_close(&f);
    return 0;
}
