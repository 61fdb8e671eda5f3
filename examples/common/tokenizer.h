/* Byte-level BPE tokenizer (GPT-2 style) built from a GGUF's tokenizer.ggml.*
   keys, with the pre-tokenizer named by tokenizer.ggml.pre ("smollm": every
   digit alone, then the GPT-2 regex; "gpt2"/default: the GPT-2 regex). */
#ifndef TOKENIZER_H
#define TOKENIZER_H
#include "gguf.h"

typedef struct tokenizer tokenizer;
/* NULL on error (message in f->err) */
tokenizer *tok_load(gguf_file *f);
void tok_free(tokenizer *t);
int tok_n_vocab(const tokenizer *t);
int tok_bos(const tokenizer *t);
int tok_eos(const tokenizer *t);
/* id of a token's exact text (e.g. "<|im_end|>"), -1 if none */
int tok_find(const tokenizer *t, const char *text);
/* Encodes n bytes of UTF-8 text. With parse_special, control tokens written
   in the text (e.g. <|im_start|>) become their ids. Returns the count, or -1
   if max_out is too small. */
int tok_encode(const tokenizer *t, const char *text, size_t n, int parse_special, int *out, int max_out);
/* The bytes of one token; returns their count (<= bufsz) or -1 for a bad id. */
int tok_decode(const tokenizer *t, int id, char *buf, int bufsz);
#endif
