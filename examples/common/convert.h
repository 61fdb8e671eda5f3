/* Model-level GQA -> MLA conversion for the examples: runs the calibration
   text through the model layer by layer, feeds mla.h's calibration moments,
   converts each layer with mla.h, and writes a llama-mla GGUF. */
#ifndef CONVERT_H
#define CONVERT_H
#include "model.h"
#include "safetensors.h"

#define CALIB_WINDOW 256 /* default calibration window in tokens (and the fewest tokens calibration takes) */

typedef struct {
    int rank;                  /* r; 0 = 2L - m (no compression)                      */
    int rope_dim;              /* m; 0 = L                                             */
    int freqfold;              /* f; 0 -> 1                                            */
    int lossless;              /* stage 1 only (exact; ignores the rest)               */
    int q_rank;                /* low-rank query r_q (0 = full-rank W_q)               */
    double key_weight;         /* QAWARE key vs value error weight (0 -> 1)            */
    mla_convert_method method; /* MLA_CONVERT_TRANSMLA or MLA_CONVERT_QAWARE           */
    int sequential;            /* layer l calibrated on the converted layers' outputs  */
    int expected_rope;         /* dims that lose RoPE keep its expected rotation       */
    int refit;                 /* mla_refit_target bits: output-aware refit (needs calib tokens) */
    int refit_tokens;          /* refit on the first windows covering this many tokens; 0 = all */
    double refit_damp;         /* ridge of the refit (fraction of the mean diagonal); 0 -> 1e-3 */
    int window;                /* calibration window in tokens; 0 -> CALIB_WINDOW      */
    int progress;              /* print progress to stderr                             */
} convert_opts;

/* A refit needs many more calibration tokens than the unknowns of one row:
   with 2048 tokens the W_o refit of SmolLM2 (576 inputs per row) fit the
   calibration text and broke chat replies; with 9,143 it helps. */
#define REFIT_MIN_RATIO 8
/* The refit targets a conversion with n_tokens calibration tokens runs: o->refit
   less W_o below REFIT_MIN_RATIO * h * d tokens, less the values below
   REFIT_MIN_RATIO * r. */
int refit_targets(const convert_opts *o, const model *src, int n_tokens);

/* Calibration moments of every layer's attention input, from the original
   model over n tokens in windows of `window` (0 -> 256): [n_layers]. */
mla_calib *calib_collect(model *src, const int *toks, int n, int window, int progress, char *err, size_t errlen);
void calib_free_all(mla_calib *cal, int n_layers);

/* dst borrows src's embeddings, norms and FFN (free dst before src).
   Statistics: `pre` (from calib_collect, reused across conversions), else
   computed from calib tokens (sequentially if o->sequential), else none
   (weight-only: calib NULL). Fewer calibration tokens than one window is an
   error, not a silent weight-only conversion. Returns 0, or -1 with err set. */
int convert_model(model *src, const int *calib, int n_calib, const mla_calib *pre, const convert_opts *o,
                  model *dst, char *err, size_t errlen);
/* Writes dst as a llama-mla GGUF: metadata and tokenizer copied from the
   source file, non-attention tensors copied unchanged (same quantization),
   attention matrices in `type` (GGML_F32 exact; F16, BF16, Q8_0, Q4_0, Q4_1;
   rows that do not fit the blocks stay F32), vectors in F32. */
int save_converted(const model *dst, const gguf_file *src_file, const char *path, uint32_t type, char *err,
                   size_t errlen);
/* Writes dst as a GGUF of architecture deepseek2 that stock llama.cpp runs
   with its absorbed MLA path (latent-only cache): the attention tensors in
   `type` (GGML_F32, F16, BF16, Q8_0, Q4_0, Q4_1; a tensor whose rows do not
   fit the blocks stays F32), attn_kv_a_mqa in F32 (BF16 when type is BF16),
   everything else copied as stored. What deepseek2 cannot express (biases, a
   non-standard RoPE table) is refused with the reason in err, unless lossy. */
int save_deepseek2(const model *dst, const gguf_file *src_file, const char *path, uint32_t type, int lossy,
                   char *err, size_t errlen);
/* Writes dst in DeepSeek-V3's Hugging Face form: dir/model.safetensors
   (DeepSeek-V3 tensor names, every tensor in dt) and dir/config.json
   (model_type deepseek_v3, dense layers, interleaved RoPE) and the tokenizer
   files (write_hf_tokenizer) when it can, with the same
   constructions and refusals as save_deepseek2. dir is created if missing. */
int save_deepseek_safetensors(const model *dst, const gguf_file *src_file, const char *dir, st_dtype dt, int lossy,
                              char *err, size_t errlen);
/* dir/tokenizer.json + dir/tokenizer_config.json (Hugging Face `tokenizers`
   BPE, chat template, BOS/EOS) from a GGUF's byte-level BPE tokenizer keys.
   0 written; 1 not enough to write them exactly (the reason in why); -1 error. */
int write_hf_tokenizer(const gguf_file *src_file, const char *dir, char *why, size_t whylen);
/* NULL if the converted model fits deepseek2 exactly; else why not (may use buf) */
const char *deepseek2_lossy_reason(const model *m, char *buf, size_t n);
#endif
