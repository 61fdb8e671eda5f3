#include "tokenizer.h"
#include "unicode_tab.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- a string -> int hash map over borrowed keys ---- */
typedef struct { const char *k; int n; int v; } slot;
typedef struct { slot *s; size_t cap; } smap;

static uint64_t fnv(const char *p, int n) {
    uint64_t h = 1469598103934665603ULL;
    int i;
    for (i = 0; i < n; i++) h = (h ^ (uint8_t)p[i]) * 1099511628211ULL;
    return h;
}
static int smap_init(smap *m, size_t n) {
    m->cap = 16;
    while (m->cap < 2 * n) m->cap *= 2;
    m->s = (slot *)calloc(m->cap, sizeof(slot));
    return m->s ? 0 : -1;
}
static void smap_put(smap *m, const char *k, int n, int v) {
    size_t i = fnv(k, n) & (m->cap - 1);
    while (m->s[i].k && !(m->s[i].n == n && !memcmp(m->s[i].k, k, (size_t)n))) i = (i + 1) & (m->cap - 1);
    if (!m->s[i].k) { m->s[i].k = k; m->s[i].n = n; m->s[i].v = v; } /* first wins */
}
static int smap_get(const smap *m, const char *k, int n) {
    size_t i = fnv(k, n) & (m->cap - 1);
    while (m->s[i].k) {
        if (m->s[i].n == n && !memcmp(m->s[i].k, k, (size_t)n)) return m->s[i].v;
        i = (i + 1) & (m->cap - 1);
    }
    return -1;
}

struct tokenizer {
    gguf_str *tok;
    int n_vocab;
    int32_t *type;
    gguf_str *merges;
    uint64_t n_merges;
    smap vocab, ranks;
    int bos, eos, digits_alone;
    int *special; int n_special;   /* control / user-defined tokens, matched in text */
    int byte2cp[256];              /* GPT-2 bytes_to_unicode                          */
    int cp2byte[512];
};

int tok_n_vocab(const tokenizer *t) { return t->n_vocab; }
int tok_bos(const tokenizer *t) { return t->bos; }
int tok_eos(const tokenizer *t) { return t->eos; }
int tok_find(const tokenizer *t, const char *s) { return smap_get(&t->vocab, s, (int)strlen(s)); }

void tok_free(tokenizer *t) {
    if (!t) return;
    free(t->tok); free(t->type); free(t->merges); free(t->vocab.s); free(t->ranks.s); free(t->special);
    free(t);
}

tokenizer *tok_load(gguf_file *f) {
    tokenizer *t = (tokenizer *)calloc(1, sizeof *t);
    uint64_t n = 0, nt = 0, i;
    gguf_str model, pre;
    int64_t v;
    int b, k = 0;
    if (!t) return NULL;
    if (gguf_get_str(f, "tokenizer.ggml.model", &model)) goto bad;
    if (model.n != 4 || memcmp(model.p, "gpt2", 4)) {
        snprintf(f->err, sizeof f->err, "tokenizer model '%.*s' is not supported (only byte-level BPE 'gpt2')",
                 (int)model.n, model.p);
        goto bad;
    }
    t->digits_alone = 0;
    if (!gguf_get_str(f, "tokenizer.ggml.pre", &pre)) {
        if (pre.n == 6 && !memcmp(pre.p, "smollm", 6)) t->digits_alone = 1;
    }
    t->tok = gguf_get_str_array(f, "tokenizer.ggml.tokens", &n);
    if (!t->tok) goto bad;
    if (n == 0 || n > (1u << 24)) { snprintf(f->err, sizeof f->err, "bad vocabulary size %llu", (unsigned long long)n); goto bad; }
    t->n_vocab = (int)n;
    t->type = gguf_get_i32_array(f, "tokenizer.ggml.token_type", &nt);
    if (!t->type || nt != n) { snprintf(f->err, sizeof f->err, "token_type missing or of wrong length"); goto bad; }
    t->merges = gguf_get_str_array(f, "tokenizer.ggml.merges", &t->n_merges);
    if (!t->merges) goto bad;
    if (smap_init(&t->vocab, n) || smap_init(&t->ranks, t->n_merges)) goto bad;
    for (i = 0; i < n; i++) smap_put(&t->vocab, t->tok[i].p, (int)t->tok[i].n, (int)i);
    for (i = 0; i < t->n_merges; i++) smap_put(&t->ranks, t->merges[i].p, (int)t->merges[i].n, (int)i);
    t->bos = gguf_get_int(f, "tokenizer.ggml.bos_token_id", &v) ? -1 : (int)v;
    t->eos = gguf_get_int(f, "tokenizer.ggml.eos_token_id", &v) ? -1 : (int)v;
    if (t->bos >= t->n_vocab || t->eos >= t->n_vocab) { snprintf(f->err, sizeof f->err, "bos/eos id out of range"); goto bad; }
    f->err[0] = 0;
    t->special = (int *)malloc(sizeof(int) * n);
    for (i = 0; i < n; i++)
        if ((t->type[i] == 3 || t->type[i] == 4) && t->tok[i].n > 0) t->special[t->n_special++] = (int)i;
    /* bytes_to_unicode: printable Latin-1 bytes map to themselves, the rest to 256.. */
    for (b = 0; b < 512; b++) t->cp2byte[b] = -1;
    for (b = 0; b < 256; b++) {
        int keep = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        t->byte2cp[b] = keep ? b : 256 + k++;
        t->cp2byte[t->byte2cp[b]] = b;
    }
    return t;
bad:
    tok_free(t);
    return NULL;
}

/* ---- UTF-8 and character classes ---- */
static int utf8_next(const unsigned char *s, size_t n, size_t i, int *cp) {
    unsigned c = s[i];
    int len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    int k;
    unsigned v;
    if (!len || i + (size_t)len > n) { *cp = -1; return 1; } /* invalid byte: a class of its own */
    v = len == 1 ? c : c & (0x3Fu >> (len - 1));
    for (k = 1; k < len; k++) {
        if ((s[i + k] & 0xC0) != 0x80) { *cp = -1; return 1; }
        v = (v << 6) | (s[i + k] & 0x3F);
    }
    *cp = (int)v;
    return len;
}
static int utf8_put(char *o, int cp) {
    if (cp < 0x80) { o[0] = (char)cp; return 1; }
    if (cp < 0x800) { o[0] = (char)(0xC0 | (cp >> 6)); o[1] = (char)(0x80 | (cp & 63)); return 2; }
    o[0] = (char)(0xE0 | (cp >> 12)); o[1] = (char)(0x80 | ((cp >> 6) & 63)); o[2] = (char)(0x80 | (cp & 63));
    return 3;
}
static int in_ranges(const unsigned (*r)[2], int n, int cp) {
    int lo = 0, hi = n - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if ((unsigned)cp < r[mid][0]) hi = mid - 1;
        else if ((unsigned)cp > r[mid][1]) lo = mid + 1;
        else return 1;
    }
    return 0;
}
static int is_L(int cp) { return cp >= 0 && in_ranges(uni_letter, (int)(sizeof uni_letter / sizeof uni_letter[0]), cp); }
static int is_N(int cp) { return cp >= 0 && in_ranges(uni_number, (int)(sizeof uni_number / sizeof uni_number[0]), cp); }
static int is_S(int cp) { /* Unicode White_Space */
    return (cp >= 9 && cp <= 13) || cp == 32 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
           (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F ||
           cp == 0x3000;
}

/* ---- BPE of one pre-tokenized piece ---- */
static int bpe_piece(const tokenizer *t, const unsigned char *s, size_t n, int *out, int max_out) {
    /* symbols: byte ranges into a UTF-8 string of mapped code points */
    char stackbuf[1024], pair[2048];
    char *buf = n * 2 <= sizeof stackbuf ? stackbuf : (char *)malloc(n * 2);
    int sym_start[512], sym_len[512], ns = 0, i, len = 0, cnt = 0;
    size_t k;
    if (!buf || n > 512) { /* very long piece: emit bytes one by one */
        if (buf != stackbuf) free(buf);
        for (k = 0; k < n; k++) {
            char c[3];
            int l = utf8_put(c, t->byte2cp[s[k]]), id = smap_get(&t->vocab, c, l);
            if (id < 0) continue; /* a byte without a token is dropped, as HF tokenizers and llama.cpp do */
            if (cnt >= max_out) return -1;
            out[cnt++] = id;
        }
        return cnt;
    }
    for (k = 0; k < n; k++) {
        sym_start[ns] = len;
        sym_len[ns] = utf8_put(buf + len, t->byte2cp[s[k]]);
        len += sym_len[ns++];
    }
    for (;;) { /* merge the adjacent pair of lowest rank */
        int best = -1, best_rank = 0x7fffffff;
        for (i = 0; i + 1 < ns; i++) {
            int pl = sym_len[i] + 1 + sym_len[i + 1], r;
            if (pl > (int)sizeof pair) continue;
            memcpy(pair, buf + sym_start[i], (size_t)sym_len[i]);
            pair[sym_len[i]] = ' ';
            memcpy(pair + sym_len[i] + 1, buf + sym_start[i + 1], (size_t)sym_len[i + 1]);
            r = smap_get(&t->ranks, pair, pl);
            if (r >= 0 && r < best_rank) { best_rank = r; best = i; }
        }
        if (best < 0) break;
        sym_len[best] += sym_len[best + 1]; /* symbols are contiguous in buf */
        for (i = best + 1; i + 1 < ns; i++) { sym_start[i] = sym_start[i + 1]; sym_len[i] = sym_len[i + 1]; }
        ns--;
    }
    for (i = 0; i < ns; i++) {
        int id = smap_get(&t->vocab, buf + sym_start[i], sym_len[i]);
        if (id < 0) { /* not in vocab: fall back to its bytes */
            int j = sym_start[i];
            while (j < sym_start[i] + sym_len[i]) {
                int cp, l = utf8_next((const unsigned char *)buf, (size_t)len, (size_t)j, &cp);
                char c[3];
                int cl = utf8_put(c, cp), bid = smap_get(&t->vocab, c, cl);
                j += l;
                if (bid < 0) continue; /* a byte without a token is dropped (HF tokenizers, llama.cpp) */
                if (cnt >= max_out) { cnt = -1; goto done; }
                out[cnt++] = bid;
            }
            continue;
        }
        if (cnt >= max_out) { cnt = -1; goto done; }
        out[cnt++] = id;
    }
done:
    if (buf != stackbuf) free(buf);
    return cnt;
}

/* length in bytes of the next GPT-2 regex match at s[i..n):
   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ */
static size_t gpt2_match(const unsigned char *s, size_t n, size_t i) {
    size_t j = i;
    int cp, l, cls;
    if (s[i] == '\'' && i + 1 < n) {
        unsigned char c = s[i + 1];
        if (c == 's' || c == 't' || c == 'm' || c == 'd') return 2;
        if (i + 2 < n && ((c == 'r' && s[i + 2] == 'e') || (c == 'v' && s[i + 2] == 'e') || (c == 'l' && s[i + 2] == 'l')))
            return 3;
    }
    if (s[j] == ' ') j++;
    if (j < n) {
        utf8_next(s, n, j, &cp);
        cls = is_L(cp) ? 1 : is_N(cp) ? 2 : is_S(cp) ? 0 : 3;
        if (cls) {
            while (j < n) {
                int c2;
                l = utf8_next(s, n, j, &cp);
                c2 = is_L(cp) ? 1 : is_N(cp) ? 2 : is_S(cp) ? 0 : 3;
                if (c2 != cls) break;
                j += (size_t)l;
            }
            return j - i;
        }
    }
    { /* whitespace run */
        size_t k = i, last = i;
        while (k < n) {
            l = utf8_next(s, n, k, &cp);
            if (!is_S(cp)) break;
            last = k;
            k += (size_t)l;
        }
        if (k == n || last == i) return k - i; /* to the end, or a single char (\s+) */
        return last - i;                      /* leave the last one for the next word */
    }
}

static int encode_text(const tokenizer *t, const unsigned char *s, size_t n, int *out, int max_out) {
    size_t i = 0;
    int cnt = 0;
    while (i < n) {
        size_t end = n, k, len;
        int r, cp;
        if (t->digits_alone) { /* split before and after every \p{N} code point */
            int l = utf8_next(s, n, i, &cp);
            if (is_N(cp)) end = i + (size_t)l;
            else
                for (k = i; k < n; k += (size_t)l) {
                    l = utf8_next(s, n, k, &cp);
                    if (is_N(cp)) { end = k; break; }
                }
        }
        while (i < end) {
            len = gpt2_match(s, end, i);
            r = bpe_piece(t, s + i, len, out + cnt, max_out - cnt);
            if (r < 0) return -1;
            cnt += r;
            i += len;
        }
    }
    return cnt;
}

int tok_encode(const tokenizer *t, const char *text, size_t n, int parse_special, int *out, int max_out) {
    const unsigned char *s = (const unsigned char *)text;
    size_t i = 0, start = 0;
    int cnt = 0, r, k;
    while (i < n) {
        int best = -1;
        size_t best_len = 0;
        if (parse_special)
            for (k = 0; k < t->n_special; k++) {
                const gguf_str *sp = &t->tok[t->special[k]];
                if (sp->n > best_len && sp->n <= n - i && !memcmp(s + i, sp->p, sp->n)) {
                    best = t->special[k];
                    best_len = sp->n;
                }
            }
        if (best < 0) { i++; continue; }
        r = encode_text(t, s + start, i - start, out + cnt, max_out - cnt);
        if (r < 0 || cnt + r >= max_out) return -1;
        cnt += r;
        out[cnt++] = best;
        i += best_len;
        start = i;
    }
    r = encode_text(t, s + start, n - start, out + cnt, max_out - cnt);
    return r < 0 ? -1 : cnt + r;
}

int tok_decode(const tokenizer *t, int id, char *buf, int bufsz) {
    const gguf_str *s;
    size_t i = 0;
    int n = 0;
    if (id < 0 || id >= t->n_vocab) return -1;
    s = &t->tok[id];
    if (t->type[id] == 3 || t->type[id] == 4) { /* control text as written */
        if ((int)s->n > bufsz) return -1;
        memcpy(buf, s->p, s->n);
        return (int)s->n;
    }
    while (i < s->n) {
        int cp, l = utf8_next((const unsigned char *)s->p, s->n, i, &cp);
        if (n >= bufsz) return -1;
        buf[n++] = (char)(cp >= 0 && cp < 512 && t->cp2byte[cp] >= 0 ? t->cp2byte[cp] : '?');
        i += (size_t)l;
    }
    return n;
}
