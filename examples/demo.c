/* make demo: the whole story on SmolLM2-135M-Instruct (GQA, from PyPI):
   its KV cache, a chat reply and held-out perplexity; then the conversion to
   MLA with half the KV cache (mla.h, mla-convert's default: query-aware PCA,
   expected RoPE, output-aware refit), the same reply and perplexity from the
   converted model, and the perplexity / cache-size trade-off of TransMLA vs
   ours written to demo-out/tradeoff.svg. */
#include "common/tradeoff.h"
#include "common/run.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHAT_PROMPT "Explain in two sentences why a smaller KV cache makes a language model cheaper to run."

static void banner(const char *s) { printf("\n== %s ==\n", s); fflush(stdout); }

static void chat(const model *m, const tokenizer *tk) {
    int toks[512], n = chat_tokens(tk, CHAT_PROMPT, toks, 512);
    model_state st;
    sampler sp = {0.0f, 1.0f, 1};
    double pf = 0, dc = 0;
    printf("user: %s\nassistant: ", CHAT_PROMPT);
    if (n <= 0 || model_state_init(&st, m, n + 121, 64, MLA_BF16)) { printf("(failed)\n"); return; }
    if (generate(m, &st, tk, toks, n, 120, &sp, stdout, NULL, 0, &pf, &dc) < 0) printf("(failed)");
    printf("\n[%s: prefill %.1f tok/s, decode %.1f tok/s]\n",
           m->is_mla ? "MLA absorbed decode, bf16 latent cache" : "GQA, f32 cache", pf, dc);
    fflush(stdout);
    model_state_free(&st);
}

int main(int argc, char **argv) {
    const char *path = argc > 1 ? argv[1] : "models/SmolLM2-135M-Instruct.Q4_1.gguf";
    static const int ranks[] = {256, 192, 128, 64};
    gguf_file f;
    model m, mla;
    tokenizer *tk;
    int n_eval, n_calib;
    int *eval, *calib;
    mla_calib *pre;
    convert_opts co;
    tradeoff_opts to;
    char err[256];
    double t_start = now_s(), t0, ppl_gqa, ppl_mla;
    FILE *tsv;
    set_threads(0);
    banner("1. the model (GQA)");
    if (gguf_read(&f, path) || model_load(&m, &f) || !(tk = tok_load(&f))) {
        fprintf(stderr, "demo: %s: %s\n", path, f.err);
        return 1;
    }
    printf("%s: %d layers, D=%d, %d query heads, %d KV heads of %d dims, FFN %d, vocab %d\n", path, m.n_layers, m.dim,
           m.n_heads, m.n_kv_heads, m.head_dim, m.ffn_dim, m.vocab);
    printf("KV cache: %ld values per token (2 x %d KV heads x %d dims x %d layers) = %ld bytes per token in f16\n",
           model_kv_values_per_token(&m), m.n_kv_heads, m.head_dim, m.n_layers, 2 * model_kv_values_per_token(&m));
    chat(&m, tk);
    eval = tokenize_file(tk, EVAL_TEXT, &n_eval);
    calib = tokenize_files(tk, CALIB_TEXTS, &n_calib);
    if (!eval || !calib) { fprintf(stderr, "demo: cannot read %s or the calibration texts\n", EVAL_TEXT); return 1; }
    printf("\nheld-out perplexity on %s (%d tokens, windows of 512):\n", EVAL_TEXT, n_eval);
    t0 = now_s();
    ppl_gqa = perplexity(&m, eval, n_eval, 512, 1, NULL);
    printf("GQA perplexity %.3f (%.1f s)\n", ppl_gqa, now_s() - t0);

    banner("2. convert to MLA with half the KV cache");
    printf("calibration text (disjoint from the evaluation text): %d tokens of %s\n", n_calib, CALIB_TEXTS);
    fflush(stdout);
    t0 = now_s();
    pre = calib_collect(&m, calib, n_calib, 0, 1, err, sizeof err);
    if (!pre) { fprintf(stderr, "demo: %s\n", err); return 1; }
    memset(&co, 0, sizeof co);
    co.method = MLA_CONVERT_QAWARE;
    co.expected_rope = 1;                                   /* mla-convert's default,    */
    co.refit = MLA_REFIT_VALUES | MLA_REFIT_OUTPUT;         /* both                      */
    co.rope_dim = m.head_dim;                               /* m = 64 dims keep RoPE     */
    co.rank = m.n_kv_heads * m.head_dim - m.head_dim;       /* r + m = L: half of 2L     */
    co.freqfold = 2;                                        /* best measured (README)    */
    co.progress = 1;
    if (convert_model(&m, calib, n_calib, pre, &co, &mla, err, sizeof err)) { fprintf(stderr, "demo: %s\n", err); return 1; }
    printf("converted in %.1f s (calibration + conversion): latent r=%d, rope m=%d, d_nope=%d, d_v=%d, FreqFold 2\n",
           now_s() - t0, mla.mla.kv_lora_rank, mla.mla.qk_rope_head_dim, mla.mla.qk_nope_head_dim, mla.mla.v_head_dim);
    printf("KV cache per token: GQA %ld bytes -> MLA %ld bytes (f16), %.0f%% smaller\n", 2 * model_kv_values_per_token(&m),
           2 * model_kv_values_per_token(&mla),
           100.0 * (1.0 - (double)model_kv_values_per_token(&mla) / model_kv_values_per_token(&m)));
    chat(&mla, tk);
    t0 = now_s();
    ppl_mla = perplexity(&mla, eval, n_eval, 512, 1, NULL);
    printf("MLA perplexity %.3f (GQA %.3f) (%.1f s)\n", ppl_mla, ppl_gqa, now_s() - t0);
    model_free(&mla);

    banner("3. trade-off: perplexity vs KV cache, TransMLA vs query-aware + expected RoPE + refit (first 2048 eval tokens)");
    memset(&to, 0, sizeof to);
    to.ranks = ranks; to.n_ranks = 4; to.rope_dim = m.head_dim; to.freqfold = 2;
    to.methods = "transmla,qaware-er-refit";
    to.calib = calib; to.n_calib = n_calib;
    if (ensure_dir("demo-out") || !(tsv = fopen("demo-out/tradeoff.tsv", "w"))) {
        fprintf(stderr, "demo: cannot write demo-out/tradeoff.tsv\n");
        return 1;
    }
    if (run_tradeoff(&m, pre, eval, n_eval < 2048 ? n_eval : 2048, 512, &to, tsv, "demo-out/tradeoff.svg")) return 1;
    if (fclose(tsv)) { fprintf(stderr, "demo: write error on demo-out/tradeoff.tsv\n"); return 1; }
    printf("\ndone in %.1f s\n", now_s() - t_start);
    calib_free_all(pre, m.n_layers);
    free(eval); free(calib);
    tok_free(tk);
    model_free(&m);
    gguf_close(&f);
    return 0;
}
