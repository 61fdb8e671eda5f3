/* A LLaMA-architecture transformer for the examples, with its attention in
   mla.h: the original GQA (mla_gqa_forward) or a converted MLA
   (mla_forward / mla_decode over a latent cache). The embeddings, the FFN and
   the output matrix, and the attention's input and output projections, are
   used as the file stores them (wmat.h: borrowed from the gguf_file, which
   must stay open while the model is used), around mla.h's attention core
   (mla_attend_projected / mla_gqa_attend_projected). Norms, biases and
   MLA's W_kvb (small) are f32. f32 copies of the projections for mla.h's
   whole-block API and the conversion: model_attn_f32. */
#ifndef MODEL_H
#define MODEL_H
#include "gguf.h"
#include "wmat.h"
#include "../../mla.h"

typedef struct {
    float *attn_norm, *ffn_norm;
    wmat gate, up, down;                            /* ffn: [F][D], [F][D], [D][F] */
    wmat q, k, v, o;      /* attention projections as stored; MLA: q (or q_a, q_b), kv_a, o */
    wmat q_a, q_b, kv_a;
    wmat q_map;           /* MLA, optional: [h*m][d] per-head rope map of the source's query
                             (mla_converted.q_map); q then holds the source's h*d rows */
    mla_gqa_weights gqa;  /* when !is_mla: biases; w_q..w_o after model_attn_f32 */
    mla_layer_weights mla; /* when is_mla: norms, biases, w_kvb; projections after model_attn_f32 */
} model_layer;

typedef struct {
    int n_layers, dim, n_heads, n_kv_heads, head_dim, ffn_dim, vocab, ctx_len;
    float eps, rope_theta;
    int is_mla;
    mla_gqa_config gqa;
    mla_config mla;
    float *mla_rope_freqs;  /* [m/2] when the converted model carries its own table */
    wmat tok_embd;          /* [vocab][D]                                         */
    float *out_norm;        /* [D]                                                */
    wmat output;            /* [vocab][D], == tok_embd when tied                  */
    model_layer *layers;
    mla_converted *conv;    /* [n_layers] when converted in memory: owns the attention,
                               every other weight is borrowed from the source model */
    char arch[32];
} model;

typedef struct {
    int max_ctx, max_tokens;
    mla_gqa_cache gqa;
    mla_cache mla;
    mla_mode mode;         /* MLA models, one-token steps (model_state_modes)   */
    mla_mode prefill_mode; /* MLA models, multi-token calls                     */
    void *ws;
    size_t ws_bytes;
    float *x, *xb, *xc, *hb, *hb2; /* [max_tokens][D or F]                        */
    float *q, *k, *v, *o, *qa;     /* attention projections [max_tokens][...]
                                      (MLA: k holds W_kva x, qa W_qa x or the
                                      source's query before a per-head map, v
                                      the map's q_pe)                            */
} model_state;

/* 0 on success; -1 with the reason in f->err */
int model_load(model *m, gguf_file *f);
void model_free(model *m);
/* The runner's fast layout: every Q4_0/Q4_1/Q8_0 matrix repacked in place
   (wmat_repack), in the file buffer m was loaded from. Only for running: the
   buffer no longer holds GGUF tensors (do not convert or save from it). */
void model_repack(model *m);
/* f32 copies of the attention projections into layers[].gqa / .mla (the
   conversion's input, mla_forward's weights); idempotent. 0, or -1 out of memory */
int model_attn_f32(model *m);
/* layer l's projection views (wmat F32) on its f32 mla weights (a model
   converted in memory) */
void model_attn_views(model *m, int l);
/* KV cache values per token (all layers): 2*g*d*L for GQA, (r+m)*L for MLA */
long model_kv_values_per_token(const model *m);
int model_state_init(model_state *s, const model *m, int max_ctx, int max_tokens, mla_dtype cache_type);
/* MLA paths for one-token steps and multi-token calls (init: both absorbed,
   the workspace sized for that); MLA_NAIVE grows the workspace to the
   decompressed context (max_ctx rows). 0 or MLA_ERR_OUT_OF_MEMORY */
int model_state_modes(model_state *s, const model *m, mla_mode decode, mla_mode prefill);
void model_state_free(model_state *s);
void model_state_reset(model_state *s);
int model_pos(const model *m, const model_state *s);
/* Runs T tokens (T <= max_tokens) at the next positions; hidden [T][D] after
   the final norm. Returns an mla_result. */
int model_forward(const model *m, model_state *s, const int *tokens, int T, float *hidden);
/* one block on the residual stream x [T][D], in place (positions advance in
   model_forward or with model_advance) */
int model_layer_forward(const model *m, model_state *s, int l, float *x, int T);
void model_advance(const model *m, model_state *s, int T);
/* logits [T][vocab] from final hidden states */
void model_logits(const model *m, const float *hidden, int T, float *logits);
#endif
