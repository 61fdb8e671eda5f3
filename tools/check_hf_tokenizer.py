#!/usr/bin/env python3
"""Checks the tokenizer.json that mla-convert --format safetensors writes: loads
it with Hugging Face `tokenizers` (PyPI) and encodes every case of
tests/data/tok_cases.txt (a line of hex UTF-8, then a line of the expected
ids, made by tools/ref_tokenizer.py from HF tokenizers built in Python from the
GGUF), and decodes the ids back. Exit 1 on any difference.

usage: check_hf_tokenizer.py DIR [CASES]"""
import json
import sys

from tokenizers import Tokenizer


def main(argv):
    if not argv:
        print(__doc__)
        return 2
    tk = Tokenizer.from_file(argv[0] + "/tokenizer.json")
    cfg = json.load(open(argv[0] + "/tokenizer_config.json"))
    lines = open(argv[1] if len(argv) > 1 else "tests/data/tok_cases.txt").read().split("\n")
    bad = n = 0
    for i in range(0, len(lines) - 1, 2):
        text = bytes.fromhex(lines[i]).decode("utf-8", "replace")
        want = [int(x) for x in lines[i + 1].split()]
        got = tk.encode(text, add_special_tokens=False).ids
        n += 1
        if got != want:
            bad += 1
            if bad <= 5:
                print("  case %d: %r -> %s, expected %s" % (n, text[:60], got[:12], want[:12]))
    print("%s/tokenizer.json: %d/%d cases give the expected ids; vocab %d, bos %r, eos %r, chat template %s: %s"
          % (argv[0], n - bad, n, tk.get_vocab_size(), cfg.get("bos_token"), cfg.get("eos_token"),
             "yes" if cfg.get("chat_template") else "no", "ok" if not bad else "FAILED"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
