/* What the example programs share: timing, files, perplexity, sampling,
   generation and the chat prompt. */
#ifndef RUN_H
#define RUN_H
#include "model.h"
#include "tokenizer.h"
#include <stdio.h>

/* Real English text from an installed Debian package (base-files), in two
   disjoint sets: evaluation (held out) and calibration. */
#define EVAL_TEXT "/usr/share/common-licenses/GPL-3"
#define CALIB_TEXTS                                                                              \
    "/usr/share/common-licenses/Apache-2.0,/usr/share/common-licenses/MPL-2.0,"                  \
    "/usr/share/common-licenses/Artistic,/usr/share/common-licenses/CC0-1.0,/usr/share/common-licenses/BSD"

double now_s(void);
/* whole file, NUL-terminated; NULL on error */
char *read_text(const char *path, size_t *n);
/* tokens of a text file (no BOS); caller frees; NULL on error */
int *tokenize_file(const tokenizer *tk, const char *path, int *n);
/* tokens of several comma-separated files, concatenated; caller frees */
int *tokenize_files(const tokenizer *tk, const char *paths, int *n);
void set_threads(int n);

/* Command-line values: the whole string must be a number in [lo, hi] (a
   finite one for arg_num); otherwise "<prog>: <opt> <v>: expected ..." on
   stderr and -1. Callers exit 2 on -1. */
int arg_ll(const char *prog, const char *opt, const char *v, long long lo, long long hi, long long *out);
int arg_int(const char *prog, const char *opt, const char *v, int lo, int hi, int *out);
int arg_num(const char *prog, const char *opt, const char *v, double lo, double hi, double *out);
int ensure_dir(const char *path); /* mkdir unless it exists; 0 on success */

/* Perplexity over non-overlapping windows of ctx tokens: each window starts
   from an empty cache; every token after the first of a window is scored.
   Returns exp(mean NLL); *scored gets the number of scored tokens.
   perplexity() measures models exactly (f32 activations, f32 cache, naive
   prefill: the conversion tables); perplexity_with() runs as configured
   (wmat_set_act8, the cache type, the path). */
/* cache: the KV cache's storage; absorbed: MLA models prefill with the
   absorbed kernel (every token through the decode path) instead of naive;
   first: tokens at the start of each window that are context only (the
   predictions of positions first .. ctx-2 are scored; llama.cpp's
   llama-perplexity uses ctx/2); bos >= 0: each window's first token is
   replaced by it (llama-perplexity does so when the vocabulary adds BOS). */
double perplexity(const model *m, const int *toks, int n, int ctx, int progress, long *scored);
double perplexity_with(const model *m, const int *toks, int n, int ctx, int progress, long *scored, mla_dtype cache,
                       int absorbed, int first, int bos);

typedef struct {
    float temp;   /* 0 = greedy */
    float top_p;  /* 1 = off    */
    unsigned long long rng;
} sampler;
int sample(sampler *s, float *logits, int n);

/* SmolLM2 / ChatML prompt with the default system message */
int chat_tokens(const tokenizer *tk, const char *user, int *out, int max_out);
/* Prefill prompt, then sample up to n_new tokens (stops at eos or
   <|im_end|>), writing text to out (NULL = silent) and into text (if non-NULL). */
int generate(const model *m, model_state *st, const tokenizer *tk, const int *prompt, int n_prompt, int n_new,
             sampler *sp, FILE *out, char *text, size_t text_cap, double *prefill_tps, double *decode_tps);
#endif
