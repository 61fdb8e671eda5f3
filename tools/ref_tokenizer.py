#!/usr/bin/env python3
"""Expected token ids for the C tokenizer test, from an independent
implementation: HF `tokenizers` (Rust) built from the same GGUF's vocab and
merges, with SmolLM2's pre-tokenizer (Digits(individual) + ByteLevel) and its
control tokens as special tokens.
Writes tests/data/tok_cases.txt: per case a line of hex UTF-8, then a line of ids.
Run: pip install gguf tokenizers && python3 tools/ref_tokenizer.py models/SmolLM2-135M-Instruct.Q4_1.gguf"""
import os, sys
import gguf
from tokenizers import Tokenizer, AddedToken, models, pre_tokenizers

def build(path):
    """HF tokenizers BPE from the GGUF's vocab and merges, SmolLM2 pre-tokenizer."""
    r = gguf.GGUFReader(path)

    def field_strs(name):
        f = r.fields[name]
        return [bytes(f.parts[i]).decode('utf-8') for i in f.data]

    toks = field_strs('tokenizer.ggml.tokens')
    merges = field_strs('tokenizer.ggml.merges')
    tt = r.fields['tokenizer.ggml.token_type']
    types = [int(tt.parts[i][0]) for i in tt.data]
    tk = Tokenizer(models.BPE({t: i for i, t in enumerate(toks)}, [tuple(m.split(' ', 1)) for m in merges]))
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tk.add_special_tokens([AddedToken(toks[i], special=True, normalized=False)
                           for i in range(len(toks)) if types[i] == 3])
    return tk


def main():
    tk = build(sys.argv[1])
    cases = []
    for lic in ('GFDL-1.3', 'MPL-1.1'):
        with open('/usr/share/common-licenses/' + lic, encoding='utf-8') as f:
            cases += [l.rstrip('\n') for l in f if l.strip()][:150]
    cases += [
        # bytes whose byte-level symbol is not in SmolLM2's vocabulary (0x04 0x06 0x13 0x14 0x16 0x1d,
        # and the lead byte 0xf1 of U+40000..): HF drops them (no unk token)
        "a\x04b\x06c\x13d\x14e\x16f\x1dg", "\x04\x06\x13", "x \x1d y", "\U00040000 and \U00080001z",
        "Hello, world! It's 2026; we'll see what you've done.",
        "Numbers: 3.14159, 1,000,000 and 007 -- also ½ and ² and ٣٤٥.",
        "Unicode: café naïve Zürich Ελληνικά русский 日本語 한국어 emoji 😀👍🏽 done",
        "   leading spaces\tand\ttabs   and trailing   ",
        "line one\nline two\n\n\nafter blank lines\r\nwindows",
        "<|im_start|>user\nWhat is MLA?<|im_end|>\n<|im_start|>assistant\n",
        "special <|endoftext|>inside text<|im_end|>x",
        "CamelCaseWords and snake_case_words and kebab-case-words",
        "I'M SHOUTING, DON'T YOU SEE? 'quoted' \"double\" `back`",
        "x=1+2*3/4-5%6; if (a<b && c>=d) { return; }",
        "",
        " ",
        "\n",
        "a\u00a0b\u2003c\u3000d",
    ]
    out = os.path.join(os.path.dirname(__file__), '..', 'tests', 'data', 'tok_cases.txt')
    with open(out, 'w') as f:
        for c in cases:
            ids = tk.encode(c).ids
            f.write(c.encode('utf-8').hex() + '\n' + ' '.join(map(str, ids)) + '\n')
    print('wrote', len(cases), 'cases to', out)


if __name__ == '__main__':
    main()
