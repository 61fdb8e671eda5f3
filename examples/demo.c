/* make demo: SmolLM2-135M (GQA) from PyPI -> shape, KV bytes per token,
   a chat reply, and perplexity on held-out real English text. */
#include "common/run.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>


#define CHAT_PROMPT "Explain in two sentences why a smaller KV cache makes a language model cheaper to run."

static void banner(const char *s) { printf("\n== %s ==\n", s); fflush(stdout); }

int main(int argc, char **argv) {
    const char *path = argc > 1 ? argv[1] : "models/SmolLM2-135M-Instruct.Q4_1.gguf";
    gguf_file f;
    model m;
    tokenizer *tk;
    model_state st;
    sampler sp = {0.0f, 1.0f, 1};
    int toks[512], n, n_eval;
    int *eval;
    long scored;
    double t0 = now_s(), pf, dc, ppl;
    set_threads(0);
    banner("model");
    if (gguf_read(&f, path) || model_load(&m, &f) || !(tk = tok_load(&f))) {
        fprintf(stderr, "demo: %s: %s\n", path, f.err);
        return 1;
    }
    printf("%s: %s, %d layers, D=%d, %d query heads, %d KV heads of %d dims, FFN %d, vocab %d (loaded in %.1f s)\n", path,
           m.arch, m.n_layers, m.dim, m.n_heads, m.n_kv_heads, m.head_dim, m.ffn_dim, m.vocab, now_s() - t0);
    printf("KV cache: %ld values per token (all layers) = %ld bytes in f16/bf16\n", model_kv_values_per_token(&m),
           2 * model_kv_values_per_token(&m));

    banner("chat (greedy)");
    printf("user: %s\nassistant: ", CHAT_PROMPT);
    n = chat_tokens(tk, CHAT_PROMPT, toks, 512);
    if (n <= 0 || model_state_init(&st, &m, n + 101, 64, MLA_F32)) return 1;
    if (generate(&m, &st, tk, toks, n, 100, &sp, stdout, NULL, 0, &pf, &dc) < 0) return 1;
    printf("\n[prefill %.1f tok/s, decode %.1f tok/s]\n", pf, dc);
    model_state_free(&st);

    banner("perplexity on held-out text");
    eval = tokenize_file(tk, EVAL_TEXT, &n_eval);
    if (!eval) { fprintf(stderr, "demo: cannot read %s\n", EVAL_TEXT); return 1; }
    t0 = now_s();
    ppl = perplexity(&m, eval, n_eval, 512, 1, &scored);
    printf("%s: %d tokens, perplexity %.3f (%ld tokens scored in windows of 512; %.1f s)\n", EVAL_TEXT, n_eval, ppl,
           scored, now_s() - t0);
    free(eval);
    tok_free(tk);
    model_free(&m);
    gguf_close(&f);
    return 0;
}
