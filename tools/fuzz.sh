#!/bin/sh
# Runs every libFuzzer target for FUZZ_SECONDS each (default 60) -- or, with
# FUZZ_RUNS=N, exactly N inputs from seed 1 (repeatable: what CI runs) -- on a copy of
# its committed seed corpus (tests/corpus/<target>), one after another, and
# prints one line per target: executions, coverage, crashes. Exit 1 if any
# target crashed (the input is saved as build/fuzz/<target>/crash-*: make it a
# regression test in make test). Usage: tools/fuzz.sh BIN_DIR [TARGET...]
set -u
bin=$1; shift
secs=${FUZZ_SECONDS:-60}
targets=${*:-"gguf tokenizer api convert"}
fail=0
for t in $targets; do
  dir=build/fuzz/$t
  mkdir -p "$dir/corpus"
  cp tests/corpus/$t/* "$dir/corpus/" 2>/dev/null
  extra=""
  [ "$t" = gguf ] && extra="-dict=tests/corpus/gguf.dict"
  if [ "$t" = tokenizer ] && [ ! -f models/SmolLM2-135M-Instruct.Q4_1.gguf ]; then
    echo "fuzz $t: skipped (needs models/SmolLM2-135M-Instruct.Q4_1.gguf: make test fetches it)"; continue
  fi
  if [ -n "${FUZZ_RUNS:-}" ]; then limit="-runs=$FUZZ_RUNS -seed=1"; else limit="-max_total_time=$secs"; fi
  start=$(date +%s)
  "$bin/fuzz_$t" $limit -rss_limit_mb=2048 -timeout=20 -print_final_stats=1 \
      -artifact_prefix="$dir/" $extra "$dir/corpus" >"$dir/log.txt" 2>&1
  rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$dir/log.txt" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$dir/log.txt" | tail -1)
  crashes=$(ls "$dir"/crash-* "$dir"/leak-* "$dir"/timeout-* "$dir"/oom-* 2>/dev/null | wc -l)
  echo "fuzz $t: ${execs:-0} executions in $(( $(date +%s) - start )) s, ${cov:-cov: ?}, $crashes crashes (exit $rc; log $dir/log.txt)"
  if [ $rc -ne 0 ] || [ "$crashes" -ne 0 ]; then fail=1; tail -30 "$dir/log.txt"; fi
done
exit $fail
