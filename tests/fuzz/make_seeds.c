/* Writes the fuzzers' seed corpora (tests/corpus/, committed): tiny GGUF
   files the loader accepts -- a llama model with a byte-level tokenizer, the
   same with biases and quantized tensors, its lossless llama-mla conversion --
   and a few inputs for the other targets. Rerun after a format change:
   make fuzz-seeds */
#include "../../examples/common/convert.h"
#include "../../examples/common/model.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* a string-array value in GGUF's encoding, as a gguf_kv the writer can copy */
static void put_str_array(gguf_writer *w, const char *key, const char **s, int n) {
    uint8_t buf[4096];
    size_t o = 0;
    uint32_t t = GGUF_T_STRING;
    uint64_t cnt = (uint64_t)n, len;
    gguf_kv kv;
    int i;
    memcpy(buf + o, &t, 4); o += 4;
    memcpy(buf + o, &cnt, 8); o += 8;
    for (i = 0; i < n; i++) {
        len = strlen(s[i]);
        memcpy(buf + o, &len, 8); o += 8;
        memcpy(buf + o, s[i], len); o += len;
    }
    memset(&kv, 0, sizeof kv);
    kv.type = GGUF_T_ARRAY;
    kv.val = buf;
    kv.val_n = o;
    gguf_w_copy_as(w, key, &kv);
}

static const char *k_tokens[] = {"<|endoftext|>", "a", "b", "c", "\xc4\xa0", "ab", "\xc4\xa0" "a", "1", "<|im_start|>", "<|im_end|>",
                                 "2", "h", "e", "l", "o", "he"};
static const char *k_merges[] = {"a b", "\xc4\xa0 a", "h e"};

static void tiny(const char *path, int bias, int quant, int tokenizer) {
    enum { D = 32, H = 2, G = 1, HD = 16, F = 32, V = 16 };
    static float buf[64 * 64];
    static const struct { const char *name; int rows, cols; } t[] = {
        {"token_embd.weight", V, D}, {"output_norm.weight", 1, D}, {"blk.0.attn_norm.weight", 1, D},
        {"blk.0.ffn_norm.weight", 1, D}, {"blk.0.ffn_gate.weight", F, D}, {"blk.0.ffn_up.weight", F, D},
        {"blk.0.ffn_down.weight", D, F}, {"blk.0.attn_q.weight", H * HD, D}, {"blk.0.attn_k.weight", G * HD, D},
        {"blk.0.attn_v.weight", G * HD, D}, {"blk.0.attn_output.weight", D, H * HD},
        {"blk.0.attn_q.bias", 1, H * HD}, {"blk.0.attn_k.bias", 1, G * HD}, {"blk.0.attn_v.bias", 1, G * HD}};
    gguf_writer *w = gguf_writer_new();
    char err[256];
    size_t i, k;
    unsigned s = 1;
    gguf_w_str(w, "general.architecture", "llama");
    gguf_w_u32(w, "llama.block_count", 1);
    gguf_w_u32(w, "llama.embedding_length", D);
    gguf_w_u32(w, "llama.feed_forward_length", F);
    gguf_w_u32(w, "llama.attention.head_count", H);
    gguf_w_u32(w, "llama.attention.head_count_kv", G);
    gguf_w_f32(w, "llama.attention.layer_norm_rms_epsilon", 1e-5f);
    if (tokenizer) {
        gguf_w_str(w, "tokenizer.ggml.model", "gpt2");
        gguf_w_str(w, "tokenizer.ggml.pre", "smollm");
        put_str_array(w, "tokenizer.ggml.tokens", k_tokens, V);
        put_str_array(w, "tokenizer.ggml.merges", k_merges, 3);
        gguf_w_u32(w, "tokenizer.ggml.bos_token_id", 0);
        gguf_w_u32(w, "tokenizer.ggml.eos_token_id", 0);
    }
    for (i = 0; i < sizeof t / sizeof t[0]; i++) {
        uint64_t ne[2];
        int n = t[i].rows * t[i].cols;
        if (i >= 11 && !bias) break;
        ne[0] = (uint64_t)t[i].cols; ne[1] = (uint64_t)t[i].rows;
        for (k = 0; k < (size_t)n; k++) {
            s = s * 1103515245u + 12345u;
            buf[k] = (float)((s >> 16) & 1023) / 4096.0f - 0.125f + (t[i].rows == 1 ? 1.0f : 0.0f);
        }
        if (quant && t[i].rows > 1 && i % 2) { /* Q8_0: blocks of 32 = f16 scale + 32 int8 */
            uint8_t q[64 * 64 / 32 * 34];
            int b;
            for (b = 0; b < n / 32; b++) {
                uint16_t sc = mla_f32_to_f16(0.125f / 127.0f);
                memcpy(q + b * 34, &sc, 2);
                for (k = 0; k < 32; k++) q[b * 34 + 2 + k] = (uint8_t)(int8_t)(buf[b * 32 + k] * 1016.0f);
            }
            gguf_w_tensor_raw(w, t[i].name, GGML_Q8_0, q, 2, ne);
        } else {
            gguf_w_tensor_f32(w, t[i].name, buf, t[i].rows == 1 ? 1 : 2, ne);
        }
    }
    if (gguf_writer_save(w, path, err, sizeof err)) fprintf(stderr, "%s\n", err);
    gguf_writer_free(w);
}

static void put(const char *path, const void *p, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(p, 1, n, f) != n) fprintf(stderr, "cannot write %s\n", path);
    if (f) fclose(f);
}

int main(void) {
    gguf_file f;
    model src, dst;
    convert_opts o;
    char err[256];
    tiny("tests/corpus/gguf/llama_tok.gguf", 0, 0, 1);
    tiny("tests/corpus/gguf/llama_bias_q8.gguf", 1, 1, 0);
    /* the lossless llama-mla conversion of the first */
    if (gguf_read(&f, "tests/corpus/gguf/llama_tok.gguf") || model_load(&src, &f)) { fprintf(stderr, "%s\n", f.err); return 1; }
    memset(&o, 0, sizeof o);
    o.lossless = 1;
    if (convert_model(&src, NULL, 0, NULL, &o, &dst, err, sizeof err) ||
        save_converted(&dst, &f, "tests/corpus/gguf/llama_mla.gguf", GGML_F32, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    model_free(&dst);
    model_free(&src);
    gguf_close(&f);
    { /* tokenizer: mode byte + text */
        static const char *texts[] = {"\x00Hello, world! 1234", "\x01<|im_start|>user\nhi<|im_end|>", "\x00\xc3\xa9t\xc3\xa9 \xe2\x82\xac 12\t\r\n  x",
                                      "\x02\x01\x00\x00\x00\xff\xff\xff\x7f\x00\x00\x01\x00"};
        static const size_t len[] = {19, 31, 19, 13};
        int i;
        char path[128];
        for (i = 0; i < 4; i++) {
            snprintf(path, sizeof path, "tests/corpus/tokenizer/seed%d", i);
            put(path, texts[i], len[i]);
        }
    }
    { /* api and convert: a few byte patterns (the targets read zeros past the end) */
        static const uint8_t a0[] = {8, 0, 0, 0, 2, 0, 0, 0, 0, 4, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 4, 0, 0, 0, 1, 1};
        static const uint8_t a1[] = {16, 0, 0, 0, 2, 0, 0, 0, 1, 4, 0, 0, 0, 8, 0, 0, 0, 2, 0, 0, 0, 4, 0, 0, 0, 1, 0, 1};
        static const uint8_t c0[] = {1, 1, 2, 8, 0, 1, 0};
        put("tests/corpus/api/seed0", a0, sizeof a0);
        put("tests/corpus/api/seed1", a1, sizeof a1);
        put("tests/corpus/convert/seed0", c0, sizeof c0);
    }
    return 0;
}
