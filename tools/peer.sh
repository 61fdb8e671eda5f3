#!/bin/bash
# make peer: mla-run against llama.cpp on this machine, one table, one run.
#
#   llama.cpp  llama-bench on the original SmolLM2-135M Q4_1 GGUF (its f16 KV
#              cache), built by tools/llamacpp.sh with the best x86 flags here;
#   mla-run    --bench on the same original file (GQA, f32 cache: the GQA
#              runner has no other) and on the converted model: mla-convert
#              defaults (r = 128, m = 64, half the KV cache, llama-mla GGUF
#              with Q8_0 attention), bf16 latent cache.
# For 1 and 2 threads: prefill of 247 and 4096 tokens (tok/s), decode at depth
# 0, 4096 and 16384 (tok/s, 32 tokens after a prefill of that depth), and the
# peak RSS of the decode run at depth 4096 (weights + cache + buffers).
# THREADS, PROMPTS, DEPTHS (the last thread count), DEPTHS_1 (the others)
# override the lists. Each number is one run, the three engines one after the
# other per row (the machine is a noisy 2-vCPU VM: read ratios within a row).
# Takes about 50 minutes with the default lists. Not part of make test.
set -euo pipefail
cd "$(dirname "$0")/.."
B=build/llamacpp
THREADS=${THREADS-"1 2"}
PROMPTS=${PROMPTS-"247 4096"}
DEPTHS=${DEPTHS-"0 4096 16384"}   # with 2 threads (or the last of THREADS)
DEPTHS_1=${DEPTHS_1-"0 4096"}      # with fewer threads: 16K prefills take ~10 min each
RSS_DEPTH=${RSS_DEPTH:-4096}
MODEL=$(tools/fetch_model.sh | tail -1)
LB=$(tools/llamacpp.sh llama-bench | tail -1)/llama-bench
make -s build/mla-convert build/mla-run >&2
CONV=$B/smollm2-mla.gguf
# converted again when mla-convert changed since (its defaults may have)
[ "$CONV" -nt build/mla-convert ] || ./build/mla-convert --model "$MODEL" --out "$CONV" >&2

# peak RSS in MB of a command (its children's maxrss), its stdout to stderr
peak_rss() {
  python3 -c 'import resource, subprocess, sys
subprocess.run(sys.argv[1:], stdout=sys.stderr, check=True)
print("%.0f" % (resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024))' "$@"
}
# llama-bench: one test -> tok/s (CSV: avg_ts is the last numeric field)
llama() { # threads prompt gen depth
  "$LB" -m "$MODEL" -t "$1" -p "$2" -n "$3" -d "$4" -r 1 -o csv 2>/dev/null |
    tail -1 | awk -F, '{gsub(/"/, ""); printf "%.1f\n", $(NF-1)}'
}
mla() { # model threads key depth n cache
  ./build/mla-run --model "$1" --threads "$2" --bench --depth "$4" -n "$5" --cache "$6" 2>/dev/null |
    grep -o "$3=[0-9.]*" | cut -d= -f2
}

printf '| threads | test | llama.cpp, original | mla-run, original | mla-run, converted (r=128, half cache) | converted / llama.cpp |\n'
printf '|---:|---|---:|---:|---:|---:|\n'
row() { printf '| %s | %s | %s | %s | %s | %s |\n' "$1" "$2" "$3" "$4" "$5" \
  "$(python3 -c "print('%.2fx' % (float('$5') / float('$3')))" 2>/dev/null || echo '?')"; }
for t in $THREADS; do
  for p in $PROMPTS; do
    row "$t" "prefill $p (tok/s)" "$(llama "$t" "$p" 0 0)" "$(mla "$MODEL" "$t" prefill_tps "$p" 1 f32)" \
        "$(mla "$CONV" "$t" prefill_tps "$p" 1 bf16)"
  done
  ds=$DEPTHS
  [ "$t" = "${THREADS##* }" ] || ds=$DEPTHS_1
  for d in $ds; do
    row "$t" "decode at depth $d (tok/s)" "$(llama "$t" 0 32 "$d")" "$(mla "$MODEL" "$t" decode_tps "$d" 32 f32)" \
        "$(mla "$CONV" "$t" decode_tps "$d" 32 bf16)"
  done
  row "$t" "peak RSS, decode at depth $RSS_DEPTH (MB)" \
      "$(peak_rss "$LB" -m "$MODEL" -t "$t" -p 0 -n 32 -d "$RSS_DEPTH" -r 1 2>/dev/null)" \
      "$(peak_rss ./build/mla-run --model "$MODEL" --threads "$t" --bench --depth "$RSS_DEPTH" -n 32 2>/dev/null)" \
      "$(peak_rss ./build/mla-run --model "$CONV" --threads "$t" --bench --depth "$RSS_DEPTH" -n 32 --cache bf16 2>/dev/null)"
done
echo
K=$(./build/mla-run --model "$CONV" --bench -n 1 2>/dev/null)
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) vCPUs; mla-run kernels:" \
  "$(echo "$K" | grep -o ' kernel=[^ ]*' | cut -d= -f2) (weights), $(echo "$K" | grep -o 'attn_kernel=[^ ]*' | cut -d= -f2) (attention)"
echo "$(cat "$B/VERSION" 2>/dev/null || echo 'llama.cpp: ?'), built $(basename "$(dirname "$(dirname "$LB")")")"
