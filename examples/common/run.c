#define _POSIX_C_SOURCE 199309L
#include "run.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <errno.h>
#include <sys/stat.h>
#ifdef _OPENMP
#include <omp.h>
#endif

double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int ensure_dir(const char *path) { return mkdir(path, 0755) == 0 || errno == EEXIST ? 0 : -1; }

void set_threads(int n) {
#ifdef _OPENMP
    if (n > 0) omp_set_num_threads(n);
#else
    (void)n;
#endif
}

int arg_ll(const char *prog, const char *opt, const char *v, long long lo, long long hi, long long *out) {
    char *end;
    long long x;
    errno = 0;
    x = strtoll(v, &end, 10);
    if (end == v || *end || errno || x < lo || x > hi) {
        fprintf(stderr, "%s: %s %s: expected an integer from %lld to %lld\n", prog, opt, v, lo, hi);
        return -1;
    }
    *out = x;
    return 0;
}

int arg_int(const char *prog, const char *opt, const char *v, int lo, int hi, int *out) {
    long long x;
    if (arg_ll(prog, opt, v, lo, hi, &x)) return -1;
    *out = (int)x;
    return 0;
}

int arg_num(const char *prog, const char *opt, const char *v, double lo, double hi, double *out) {
    char *end;
    double x = strtod(v, &end);
    if (end == v || *end || !(x >= lo && x <= hi)) { /* !(..) also rejects nan */
        fprintf(stderr, "%s: %s %s: expected a number from %g to %g\n", prog, opt, v, lo, hi);
        return -1;
    }
    *out = x;
    return 0;
}

char *read_text(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    long len;
    char *buf;
    if (!f) return NULL;
    if (fseek(f, 0, SEEK_END) || (len = ftell(f)) < 0 || fseek(f, 0, SEEK_SET)) { fclose(f); return NULL; }
    buf = (char *)malloc((size_t)len + 1);
    if (!buf || fread(buf, 1, (size_t)len, f) != (size_t)len) { free(buf); fclose(f); return NULL; }
    fclose(f);
    buf[len] = 0;
    if (n) *n = (size_t)len;
    return buf;
}

int *tokenize_file(const tokenizer *tk, const char *path, int *n) {
    size_t len;
    char *text = read_text(path, &len);
    int *toks, cnt;
    if (!text) return NULL;
    toks = (int *)malloc(sizeof(int) * (len + 16));
    cnt = toks ? tok_encode(tk, text, len, 0, toks, (int)len + 16) : -1;
    free(text);
    if (cnt < 0) { free(toks); return NULL; }
    *n = cnt;
    return toks;
}

int *tokenize_files(const tokenizer *tk, const char *paths, int *n) {
    int *all = NULL, total = 0;
    const char *p = paths;
    while (*p) {
        char path[1024];
        size_t len = strcspn(p, ",");
        int cnt, *t, *grown;
        if (len >= sizeof path) { free(all); return NULL; }
        memcpy(path, p, len);
        path[len] = 0;
        p += len + (p[len] == ',');
        if (!len) continue;
        if (!(t = tokenize_file(tk, path, &cnt))) { free(all); return NULL; }
        grown = (int *)realloc(all, sizeof(int) * (size_t)(total + cnt + 1));
        if (!grown) { free(t); free(all); return NULL; }
        all = grown;
        memcpy(all + total, t, sizeof(int) * (size_t)cnt);
        total += cnt;
        free(t);
    }
    *n = total;
    return all;
}

double perplexity(const model *m, const int *toks, int n, int ctx, int progress, long *scored) {
    int act8 = wmat_act8();
    double p;
    wmat_set_act8(0); /* f32 activations: the conversion measured, not the runner's rounding */
    p = perplexity_with(m, toks, n, ctx, progress, scored, MLA_F32, 0, 0, -1);
    wmat_set_act8(act8);
    return p;
}

double perplexity_with(const model *m, const int *toks, int n, int ctx, int progress, long *scored, mla_dtype cache,
                       int absorbed, int first, int bos) {
    model_state st;
    int chunk = ctx < 512 ? ctx : 512, w, n_win = n / ctx;
    float *hidden = (float *)malloc(sizeof(float) * (size_t)chunk * m->dim);
    float *logits = (float *)malloc(sizeof(float) * (size_t)chunk * m->vocab);
    int *wt = (int *)malloc(sizeof(int) * (size_t)(ctx > 0 ? ctx : 1));
    double nll = 0;
    long cnt = 0;
    double t0 = now_s();
    fflush(stdout); /* progress goes to stderr: keep the order on a shared terminal */
    if (!hidden || !logits || !wt || model_state_init(&st, m, ctx, chunk, cache)) {
        free(hidden); free(logits); free(wt);
        return NAN;
    }
    if (model_state_modes(&st, m, MLA_ABSORBED, absorbed ? MLA_ABSORBED : MLA_NAIVE)) {
        model_state_free(&st);
        free(hidden); free(logits); free(wt);
        return NAN;
    }
    for (w = 0; w < n_win; w++) {
        int off;
        memcpy(wt, toks + (size_t)w * ctx, sizeof(int) * (size_t)ctx);
        if (bos >= 0) wt[0] = bos;
        model_state_reset(&st);
        for (off = 0; off < ctx; off += chunk) {
            int T = ctx - off < chunk ? ctx - off : chunk, t;
            if (model_forward(m, &st, wt + off, T, hidden)) { nll = NAN; goto done; }
            model_logits(m, hidden, T, logits);
            {
                int last = off + T < ctx ? T : T - 1;         /* the window's last token predicts nothing */
                int from = first - off > 0 ? first - off : 0; /* positions before `first`: context only */
                double part = 0;
#ifdef _OPENMP
#pragma omp parallel for reduction(+ : part) schedule(static)
#endif
                for (t = from; t < last; t++) {
                    const float *lg = logits + (size_t)t * m->vocab;
                    double mx = lg[0], se = 0;
                    int v;
                    for (v = 1; v < m->vocab; v++) if (lg[v] > mx) mx = lg[v];
                    for (v = 0; v < m->vocab; v++) se += exp(lg[v] - mx);
                    part += mx + log(se) - lg[wt[off + t + 1]];
                }
                nll += part;
                cnt += last > from ? last - from : 0;
            }
        }
        if (progress) {
            fprintf(stderr, "\r  perplexity: window %d/%d, ppl so far %.3f (%.1f s)", w + 1, n_win, exp(nll / cnt), now_s() - t0);
            fflush(stderr);
        }
    }
done:
    if (progress) fprintf(stderr, "\n");
    model_state_free(&st);
    free(hidden); free(logits); free(wt);
    if (scored) *scored = cnt;
    return cnt ? exp(nll / cnt) : NAN;
}

static double rng_unif(sampler *s) {
    s->rng ^= s->rng << 13; s->rng ^= s->rng >> 7; s->rng ^= s->rng << 17;
    return (double)(s->rng >> 11) * (1.0 / 9007199254740992.0);
}

typedef struct { float p; int i; } pi_pair;
static int cmp_desc(const void *a, const void *b) {
    float x = ((const pi_pair *)a)->p, y = ((const pi_pair *)b)->p;
    return x < y ? 1 : x > y ? -1 : 0;
}

int sample(sampler *s, float *logits, int n) {
    int i, best = 0;
    double mx, sum = 0, r, acc = 0;
    pi_pair *pp;
    int k = 0;
    for (i = 1; i < n; i++) if (logits[i] > logits[best]) best = i;
    if (s->temp <= 0) return best;
    mx = logits[best];
    pp = (pi_pair *)malloc(sizeof(pi_pair) * (size_t)n);
    if (!pp) return best;
    for (i = 0; i < n; i++) { pp[i].p = (float)exp((logits[i] - mx) / s->temp); pp[i].i = i; sum += pp[i].p; }
    qsort(pp, (size_t)n, sizeof *pp, cmp_desc);
    for (k = 0, acc = 0; k < n; k++) { /* nucleus */
        acc += pp[k].p / sum;
        if (acc >= s->top_p) { k++; break; }
    }
    if (k > n) k = n;
    for (i = 0, sum = 0; i < k; i++) sum += pp[i].p;
    r = rng_unif(s) * sum;
    for (i = 0, acc = 0; i < k; i++) {
        acc += pp[i].p;
        if (r < acc) break;
    }
    best = pp[i < k ? i : k - 1].i;
    free(pp);
    return best;
}

int chat_tokens(const tokenizer *tk, const char *user, int *out, int max_out) {
    static const char *fmt = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                             "<|im_end|>\n<|im_start|>user\n%s<|im_end|>\n<|im_start|>assistant\n";
    size_t len = strlen(fmt) + strlen(user) + 1;
    char *buf = (char *)malloc(len);
    int n;
    if (!buf) return -1;
    snprintf(buf, len, fmt, user);
    n = tok_encode(tk, buf, strlen(buf), 1, out, max_out);
    free(buf);
    return n;
}

int generate(const model *m, model_state *st, const tokenizer *tk, const int *prompt, int n_prompt, int n_new,
             sampler *sp, FILE *out, char *text, size_t text_cap, double *prefill_tps, double *decode_tps) {
    float *hidden = (float *)malloc(sizeof(float) * (size_t)st->max_tokens * m->dim);
    float *logits = (float *)malloc(sizeof(float) * (size_t)m->vocab);
    int im_end = tok_find(tk, "<|im_end|>"), off = 0, made = 0, tok, rc = 0;
    size_t tl = 0;
    double t0, t1;
    if (text && text_cap) text[0] = 0;
    if (!hidden || !logits) { free(hidden); free(logits); return -1; }
    t0 = now_s();
    while (off < n_prompt) { /* prefill in chunks of max_tokens */
        int T = n_prompt - off < st->max_tokens ? n_prompt - off : st->max_tokens;
        if ((rc = model_forward(m, st, prompt + off, T, hidden))) goto done;
        off += T;
        if (off == n_prompt) model_logits(m, hidden + (size_t)(T - 1) * m->dim, 1, logits);
    }
    t1 = now_s();
    if (prefill_tps) *prefill_tps = n_prompt / (t1 - t0);
    while (made < n_new) {
        char piece[256];
        int len;
        tok = sample(sp, logits, m->vocab);
        if (tok == tok_eos(tk) || tok == im_end) break;
        len = tok_decode(tk, tok, piece, sizeof piece);
        if (len > 0) {
            if (out) { fwrite(piece, 1, (size_t)len, out); fflush(out); }
            if (text && tl + (size_t)len + 1 < text_cap) { memcpy(text + tl, piece, (size_t)len); tl += (size_t)len; text[tl] = 0; }
        }
        made++;
        if (made == n_new || model_pos(m, st) >= st->max_ctx) break;
        if ((rc = model_forward(m, st, &tok, 1, hidden))) goto done;
        model_logits(m, hidden, 1, logits);
    }
    if (decode_tps) *decode_tps = made > 1 ? (made - 1) / (now_s() - t1) : 0;
done:
    free(hidden); free(logits);
    return rc ? -1 : made;
}
