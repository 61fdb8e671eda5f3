#!/bin/bash
# make verify-llamacpp: does stock llama.cpp run what mla-convert --format gguf
# writes, and compute what mla-run computes?
#
# 1. builds llama.cpp's llama-perplexity and llama-completion from the source
#    distribution of the PyPI package llama-cpp-python (tools/llamacpp.sh);
# 2. converts SmolLM2-135M to MLA (mla-convert defaults: r = 128, m = 64, half
#    the KV cache) as deepseek2 GGUFs, attention in F32 and in Q8_0;
# 3. perplexity of GPL-3 (windows of 512, second halves scored, as
#    llama-perplexity does) in llama.cpp for the original and both exports, and
#    in mla-run --ppl-half for the same files; the KV cache llama.cpp allocates;
# 4. a greedy reply from each runtime to the same prompt.
# Fails (exit 1) when llama.cpp and mla-run differ by more than 0.5 % on a file.
# Takes about 25 minutes on 2 cores the first time (the llama.cpp build), then
# about 12. Not part of make test.
set -euo pipefail
cd "$(dirname "$0")/.."
B=build/llamacpp
TEXT=${TEXT:-/usr/share/common-licenses/GPL-3}
MODEL=$(tools/fetch_model.sh | tail -1)
THREADS=${THREADS:-2}
mkdir -p "$B"

BIN=$(tools/llamacpp.sh llama-perplexity llama-completion | tail -1)
LP=$BIN/llama-perplexity
LC=$BIN/llama-completion
make -s build/mla-convert build/mla-run >&2

for t in f32 q8_0; do
  out=$B/smollm2-mla-$t.gguf
  [ -f "$out" ] || ./build/mla-convert --model "$MODEL" --out "$out" --format gguf --type $t >&2
done

ppl_llama() { # file -> "ppl kv_MiB"
  local log=$B/ppl-$(basename "$1").log
  "$LP" -m "$1" -f "$TEXT" -c 512 -b 512 -t "$THREADS" -lv 4 > "$log" 2>&1 || { tail -5 "$log" >&2; echo "nan nan"; return; }
  local p kv
  p=$(grep -o 'Final estimate: PPL = [0-9.]*' "$log" | grep -o '[0-9.]*$' || echo nan)
  # "llama_kv_cache: size = 11.25 MiB (512 cells, 30 layers, ...), K (f16): ..., V (f16): ..."
  kv=$(grep -o 'llama_kv_cache: size = *[0-9.]* MiB.*' "$log" | head -1 | sed 's/llama_kv_cache: size = *//' || true)
  echo "$p ${kv:-?}"
}
ppl_mla() {
  ./build/mla-run --model "$1" --ppl "$TEXT" --ctx 512 --ppl-half --threads "$THREADS" 2>/dev/null |
    grep -o '^perplexity [0-9.]*' | grep -o '[0-9.]*$'
}
reply_llama() {
  "$LC" -m "$1" -p "$PROMPT" -n 24 --temp 0 -t "$THREADS" -no-cnv 2>/dev/null | tr '\n' ' ' || true
}
reply_mla() {
  ./build/mla-run --model "$1" --prompt "$PROMPT" -n 24 --threads "$THREADS" 2>/dev/null | tr '\n' ' ' || true
}
PROMPT="The capital of France is"

fail=0
printf '%-28s %14s %12s %8s  %s\n' "model (GPL-3, ctx 512)" "llama.cpp ppl" "mla-run ppl" "diff" "KV cache llama.cpp allocates"
for f in "$MODEL" $B/smollm2-mla-f32.gguf $B/smollm2-mla-q8_0.gguf; do
  read -r pl kv < <(ppl_llama "$f") || true
  pm=$(ppl_mla "$f" || echo nan)
  d=$(python3 -c "a,b=float('$pl'),float('$pm'); print('%.3f%%'%(100*abs(a-b)/b))" 2>/dev/null || echo "nan")
  printf '%-28s %14s %12s %8s  %s\n' "$(basename "$f")" "$pl" "$pm" "$d" "$kv"
  python3 -c "import sys; a,b=float('$pl'),float('$pm'); sys.exit(0 if abs(a-b)<=0.005*b else 1)" 2>/dev/null || fail=1
done
echo
echo "greedy, prompt \"$PROMPT\":"
for f in "$MODEL" $B/smollm2-mla-f32.gguf; do
  echo "  llama.cpp $(basename "$f"): $(reply_llama "$f")"
  echo "  mla-run   $(basename "$f"): $(reply_mla "$f")"
done
cat "$B/VERSION" 2>/dev/null || true
[ $fail = 0 ] && echo "verify-llamacpp: OK (llama.cpp and mla-run agree within 0.5 %)" ||
  { echo "verify-llamacpp: FAILED (a perplexity differs by more than 0.5 %)"; exit 1; }
