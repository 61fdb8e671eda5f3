/* libFuzzer: the GGUF reader and the model loader on arbitrary bytes. Every
   tensor is dequantized, the file is loaded as a llama or llama-mla model and
   its tokenizer built; whatever the bytes, the result is a clean error or a
   consistent model, never a crash, a leak or an out-of-bounds access. */
#include "../../examples/common/model.h"
#include "../../examples/common/tokenizer.h"
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    gguf_file f;
    model m;
    tokenizer *tk;
    uint64_t i;
    if (gguf_parse(&f, data, size)) return 0;
    for (i = 0; i < f.n_tensors; i++) { /* every tensor dequantizes within its bytes, or fails cleanly */
        float *x = gguf_tensor_f32(&f, f.tensors[i].name, 0, 0);
        if (x) FZ_CHECK(f.tensors[i].n_elem > 0);
        free(x);
    }
    if (model_load(&m, &f) == 0) {
        FZ_CHECK(m.n_layers > 0 && m.dim > 0 && m.vocab > 0);
        if (m.is_mla) FZ_CHECK(model_kv_values_per_token(&m) > 0);
        model_free(&m);
    }
    if ((tk = tok_load(&f))) {
        static const char text[] = "Hello, world! 1234 <|im_start|>\xc3\xa9\xe2\x82\xac\x01";
        int ids[128], n = tok_encode(tk, text, sizeof text - 1, 1, ids, 128), k;
        char buf[256];
        for (k = 0; k < n; k++) {
            FZ_CHECK(ids[k] >= 0 && ids[k] < tok_n_vocab(tk));
            FZ_CHECK(tok_decode(tk, ids[k], buf, sizeof buf) >= -1);
        }
        tok_free(tk);
    }
    gguf_close(&f);
    return 0;
}
