#!/bin/bash
# tools/llamacpp.sh TARGET...: builds llama.cpp tools (llama-perplexity,
# llama-completion, llama-bench, ...) from the source distribution of the PyPI
# package llama-cpp-python (which vendors upstream llama.cpp) with cmake, into
# build/llamacpp (kept between runs), and prints the directory of the binaries
# on the last line of stdout. Used by make verify-llamacpp and make peer.
#
# Flags: GGML_NATIVE=OFF (ggml's AMX kernels, which -march=native picks on AMX
# machines, die with SIGILL on VMs that do not grant the tile state), AVX2 +
# FMA + F16C everywhere, plus AVX-512 (F/BW/VL/DQ/CD), VNNI, BF16 and VBMI when
# this CPU has them, so llama.cpp runs the fastest x86 kernels it has here.
set -euo pipefail
cd "$(dirname "$0")/.."
B=build/llamacpp
mkdir -p "$B"
if [ ! -d "$B/llama.cpp" ]; then
  echo "fetching the llama-cpp-python source distribution from PyPI..." >&2
  python3 -m pip download --no-deps --no-binary :all: --disable-pip-version-check -d "$B/sdist" llama-cpp-python >&2
  SD=$(ls "$B"/sdist/llama_cpp_python-*.tar.gz | head -1)
  tar -xzf "$SD" -C "$B"
  mv "$B"/llama_cpp_python-*/vendor/llama.cpp "$B/llama.cpp"
  echo "llama.cpp from $(basename "$SD")" > "$B/VERSION"
fi
has() { grep -qw "$1" /proc/cpuinfo; }
FLAGS="-DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
TAG=avx2
if has avx512f && has avx512bw && has avx512vl && has avx512dq && has avx512cd; then
  FLAGS="$FLAGS -DGGML_AVX512=ON"; TAG=avx512
  has avx512_vnni && { FLAGS="$FLAGS -DGGML_AVX512_VNNI=ON"; TAG=$TAG-vnni; }
  has avx512_bf16 && { FLAGS="$FLAGS -DGGML_AVX512_BF16=ON"; TAG=$TAG-bf16; }
  has avx512vbmi && { FLAGS="$FLAGS -DGGML_AVX512_VBMI=ON"; TAG=$TAG-vbmi; }
fi
BD=$B/llama.cpp/build-$TAG
need=0
for t in "$@"; do [ -x "$BD/bin/$t" ] || need=1; done
if [ $need = 1 ]; then
  echo "building llama.cpp ($TAG: $*), about 10-25 minutes on 2 cores..." >&2
  # shellcheck disable=SC2086
  cmake -S "$B/llama.cpp" -B "$BD" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=OFF $FLAGS >&2
  cmake --build "$BD" -j"$(nproc)" --target "$@" >&2
fi
echo "$BD/bin"
