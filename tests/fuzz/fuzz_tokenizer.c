/* libFuzzer: SmolLM2's byte-level BPE tokenizer (from the model file, which
   `make test` fetches). Text -> ids -> text gives the text back (less the
   bytes that have no token, which the reference tokenizers drop too); every
   id is inside the vocabulary; any id decodes or is refused. */
#include "../../examples/common/tokenizer.h"
#include "fuzz.h"

#define MODEL_PATH "models/SmolLM2-135M-Instruct.Q4_1.gguf"
static gguf_file g_f;
static tokenizer *g_tk;
static unsigned char g_dropped[256]; /* bytes without a token */

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    int b, ids[8];
    (void)argc; (void)argv;
    if (gguf_read(&g_f, MODEL_PATH) || !(g_tk = tok_load(&g_f))) {
        fprintf(stderr, "fuzz_tokenizer: cannot load the tokenizer from %s (make test fetches it): %s\n", MODEL_PATH,
                g_f.err);
        exit(1);
    }
    for (b = 0; b < 256; b++) {
        char c = (char)b;
        g_dropped[b] = tok_encode(g_tk, &c, 1, 0, ids, 8) == 0;
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static int ids[1 << 16];
    static char out[1 << 17], want[1 << 16];
    int n, k, len = 0, nw = 0, mode;
    size_t i;
    if (size < 1 || size > 4096) return 0;
    mode = data[0] % 3;
    data++, size--;
    if (mode == 2) { /* arbitrary ids */
        for (i = 0; i + 4 <= size; i += 4) {
            int32_t id;
            char buf[64];
            memcpy(&id, data + i, 4);
            n = tok_decode(g_tk, id, buf, sizeof buf);
            FZ_CHECK(n >= -1 && n <= (int)sizeof buf);
            FZ_CHECK((n >= 0) == (id >= 0 && id < tok_n_vocab(g_tk)) || n == -1);
        }
        return 0;
    }
    n = tok_encode(g_tk, (const char *)data, size, mode, ids, (int)(sizeof ids / sizeof ids[0]));
    FZ_CHECK(n >= 0);
    for (k = 0; k < n; k++) {
        int got;
        FZ_CHECK(ids[k] >= 0 && ids[k] < tok_n_vocab(g_tk));
        got = tok_decode(g_tk, ids[k], out + len, (int)sizeof out - len);
        FZ_CHECK(got >= 0);
        len += got;
    }
    if (mode == 0) { /* plain text round trip */
        for (i = 0; i < size; i++)
            if (!g_dropped[data[i]]) want[nw++] = (char)data[i];
        if (len != nw || memcmp(out, want, (size_t)nw)) {
            fprintf(stderr, "round trip: %d bytes in (%d with a token), %d out\n", (int)size, nw, len);
            abort();
        }
    }
    return 0;
}
