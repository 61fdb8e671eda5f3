# mla.h — plain Makefile. The library itself is just mla.h.
#   make demo       the main demo (see README)
#   make test       build and run every test; prints "N passed, N failed"
#   make sanitize   the test suite under AddressSanitizer + UBSan
#   make valgrind   the examples under valgrind (portable build)
#   make fuzz       every libFuzzer target (FUZZ_SECONDS=N each, or FUZZ_RUNS=N)
#   make bench      decode speed: MLA (absorbed) vs GQA in one process
#   make cuda       the CUDA backend, its test and bench (needs nvcc)
CC      ?= cc
ARCH    ?= -march=native
OPT     ?= -O2
WARN     = -std=c99 -Wall -Wextra -pedantic
CFLAGS  += $(WARN) $(OPT) $(ARCH)
LDLIBS  += -lm
OMP     ?= -fopenmp
BIN      = build

# CBLAS for the test that compares MLA_USE_CBLAS with the plain path
CBLAS_LIB := $(shell sh tools/find_cblas.sh $(CC))
ifneq ($(CBLAS_LIB),)
CBLAS_FLAGS = -DHAVE_CBLAS
endif

COMMON_SRC = examples/common/gguf.c examples/common/outfile.c examples/common/tokenizer.c examples/common/model.c examples/common/run.c \
             examples/common/convert.c examples/common/safetensors.c examples/common/wmat.c examples/common/svg.c examples/common/tradeoff.c
COMMON_HDR = mla.h examples/common/gguf.h examples/common/outfile.h examples/common/tokenizer.h examples/common/model.h \
             examples/common/run.h examples/common/unicode_tab.h examples/common/convert.h \
             examples/common/svg.h examples/common/tradeoff.h examples/common/safetensors.h examples/common/wmat.h
TEST_SRC = tests/run_tests.c tests/harness.c tests/test_core.c tests/test_kernel.c tests/test_gguf.c tests/test_model.c tests/test_convert.c tests/test_cuda.c tests/test_cli.c tests/mlav.c \
           tests/impl.c $(COMMON_SRC)
TEST_HDR = $(COMMON_HDR) tests/harness.h tests/mlav.h mla_cuda.h
MODEL    = models/SmolLM2-135M-Instruct.Q4_1.gguf

.PHONY: all demo hello bench verify-llamacpp peer test cuda cuda-build sanitize valgrind headercheck fuzz fuzz-seeds clean

all: $(BIN)/hello_mla $(BIN)/mla-run $(BIN)/mla-convert $(BIN)/mla-tradeoff $(BIN)/demo $(BIN)/run_tests

$(BIN):
	mkdir -p $(BIN)

$(BIN)/hello_mla: examples/hello_mla.c mla.h | $(BIN)
	$(CC) $(CFLAGS) -I. -o $@ $< $(LDLIBS)

$(BIN)/mla_impl.o: examples/common/mla_impl.c mla.h | $(BIN)
	$(CC) $(CFLAGS) $(OMP) -c -o $@ $<

$(BIN)/mla-run: examples/mla_run.c $(COMMON_SRC) $(COMMON_HDR) $(BIN)/mla_impl.o
	$(CC) $(CFLAGS) $(OMP) -o $@ examples/mla_run.c $(COMMON_SRC) $(BIN)/mla_impl.o $(LDLIBS)

$(BIN)/mla-convert: examples/mla_convert.c $(COMMON_SRC) $(COMMON_HDR) $(BIN)/mla_impl.o
	$(CC) $(CFLAGS) $(OMP) -o $@ examples/mla_convert.c $(COMMON_SRC) $(BIN)/mla_impl.o $(LDLIBS)

$(BIN)/mla-tradeoff: examples/mla_tradeoff.c $(COMMON_SRC) $(COMMON_HDR) $(BIN)/mla_impl.o
	$(CC) $(CFLAGS) $(OMP) -o $@ examples/mla_tradeoff.c $(COMMON_SRC) $(BIN)/mla_impl.o $(LDLIBS)

$(BIN)/demo: examples/demo.c $(COMMON_SRC) $(COMMON_HDR) $(BIN)/mla_impl.o
	$(CC) $(CFLAGS) $(OMP) -o $@ examples/demo.c $(COMMON_SRC) $(BIN)/mla_impl.o $(LDLIBS)

$(MODEL):
	tools/fetch_model.sh

$(BIN)/cblas_impl.o: tests/cblas_impl.c mla.h | $(BIN)
	$(CC) $(CFLAGS) $(CBLAS_FLAGS) -c -o $@ $<

# the CUDA backend's CPU build (same API and algorithm) for the host-side tests
$(BIN)/mla_cuda_cpu.o: mla_cuda.cu mla_cuda.h mla.h | $(BIN)
	$(CC) $(CFLAGS) -x c -c -o $@ mla_cuda.cu

# the library again, built plain (MLA_NO_SIMD) and with OpenMP, so the tests compare the builds
$(BIN)/variant_plain.o: tests/variant.c mla.h | $(BIN)
	$(CC) $(CFLAGS) -DMLA_NO_SIMD -DVARIANT_PREFIX=plain_ -c -o $@ $<
$(BIN)/variant_omp.o: tests/variant.c mla.h | $(BIN)
	$(CC) $(CFLAGS) $(OMP) -DVARIANT_PREFIX=omp_ -c -o $@ $<
# and without AMX and AVX-512 VNNI: the vector kernels for every shape (the
# AVX-512 build's int8 rows on vpmaddwd; on a CPU without them, this build again)
NOVNNI = $(shell $(CC) -mno-avx512vnni -E -x c /dev/null >/dev/null 2>&1 && echo -mno-avx512vnni)
$(BIN)/variant_vec.o: tests/variant.c mla.h | $(BIN)
	$(CC) $(CFLAGS) -DMLA_NO_AMX $(NOVNNI) -DVARIANT_PREFIX=vec_ -c -o $@ $<
# and with AVX2 at most (MLA_NO_AVX512): the AVX2 kernels, also on an AVX-512 machine
$(BIN)/variant_avx2.o: tests/variant.c mla.h | $(BIN)
	$(CC) $(CFLAGS) -DMLA_NO_AVX512 -DVARIANT_PREFIX=avx2_ -c -o $@ $<
VARIANTS = $(BIN)/cblas_impl.o $(BIN)/mla_cuda_cpu.o $(BIN)/variant_plain.o $(BIN)/variant_omp.o $(BIN)/variant_vec.o \
           $(BIN)/variant_avx2.o

$(BIN)/run_tests: $(TEST_SRC) $(TEST_HDR) $(VARIANTS)
	$(CC) $(CFLAGS) $(OMP) -g -I. -o $@ $(TEST_SRC) $(VARIANTS) $(CBLAS_LIB) $(LDLIBS)

demo: $(BIN)/demo $(MODEL)
	./$(BIN)/demo $(MODEL)

$(BIN)/bench: examples/bench.c mla.h | $(BIN)
	$(CC) $(CFLAGS) $(OMP) -o $@ examples/bench.c $(LDLIBS)

# stock llama.cpp (built from the llama-cpp-python sdist) runs mla-convert --format gguf
# output; perplexities and replies side by side with mla-run (not part of make test)
verify-llamacpp:
	tools/verify_llamacpp.sh

# mla-run vs llama.cpp's llama-bench on this machine: prefill, decode at depth,
# peak RSS, original and converted model (about an hour; not part of make test)
peer:
	tools/peer.sh

bench: $(BIN)/bench
	./$(BIN)/bench

hello: $(BIN)/hello_mla
	./$(BIN)/hello_mla

# the header must compile warning-free as C99 (gcc, clang if present) and as C++,
# with each instruction set it has kernels for (compiled here whatever this CPU has)
AVX512 = -mavx2 -mfma -mf16c -mavx512f -mavx512bw -mavx512vl -mavx512bf16 -mavx512vnni -mamx-tile -mamx-bf16 -mamx-int8
AVX512_BASE = -mavx2 -mfma -mf16c -mavx512f -mavx512bw -mavx512vl  # Skylake-X: the AVX-512 path without BF16, VNNI, AMX
headercheck: | $(BIN)
	@printf '#define MLA_IMPLEMENTATION\n#include "mla.h"\nint main(void){return 0;}\n' > $(BIN)/hc.c
	$(CC) -std=c99 -Wall -Wextra -pedantic -Werror -O2 -I. -c -o $(BIN)/hc_c.o $(BIN)/hc.c
	g++ -x c++ -Wall -Wextra -pedantic -Werror -O2 -I. -c -o $(BIN)/hc_cpp.o $(BIN)/hc.c
	@if command -v clang >/dev/null 2>&1; then \
	  echo clang -std=c99 -Wall -Wextra -pedantic -Werror; \
	  clang -std=c99 -Wall -Wextra -pedantic -Werror -O2 -I. -c -o $(BIN)/hc_clang.o $(BIN)/hc.c; \
	else echo "clang not installed: skipped"; fi
	$(CC) -std=c99 -Wall -Wextra -pedantic -Werror -O2 -fopenmp -I. -c -o $(BIN)/hc_omp.o $(BIN)/hc.c
	$(CC) -std=c99 -Wall -Wextra -pedantic -Werror -O2 -DMLA_STATIC -I. -c -o $(BIN)/hc_static.o $(BIN)/hc.c
	$(CC) -std=c99 -Wall -Wextra -pedantic -Werror -O2 -DMLA_NO_CONVERT '-DMLAPI=extern __attribute__((visibility("default")))' -I. -c -o $(BIN)/hc_noconv.o $(BIN)/hc.c
	@if nm $(BIN)/hc_noconv.o | grep -q mla_convert_layer; then echo "MLA_NO_CONVERT left conversion in"; exit 1; fi
	$(CC) -std=c99 -Wall -Wextra -pedantic -Werror -O2 -mavx2 -mfma -mf16c -fopenmp -I. -c -o $(BIN)/hc_avx2.o $(BIN)/hc.c
	g++ -x c++ -Wall -Wextra -pedantic -Werror -O2 -mavx2 -mfma -mf16c -fopenmp -I. -c -o $(BIN)/hc_cpp_avx2.o $(BIN)/hc.c
	$(CC) -std=c99 -Wall -Wextra -pedantic -Werror -O2 -mavx2 -mfma -DMLA_NO_SIMD -I. -c -o $(BIN)/hc_nosimd.o $(BIN)/hc.c
	@if command -v clang >/dev/null 2>&1; then \
	  echo clang -std=c99 -Wall -Wextra -pedantic -Werror -mavx2 -mfma -mf16c; \
	  clang -std=c99 -Wall -Wextra -pedantic -Werror -O2 -mavx2 -mfma -mf16c -I. -c -o $(BIN)/hc_clang_avx2.o $(BIN)/hc.c; \
	  echo clang -std=c99 -Wall -Wextra -pedantic -Werror $(AVX512); \
	  clang -std=c99 -Wall -Wextra -pedantic -Werror -O2 $(AVX512) -I. -c -o $(BIN)/hc_clang_avx512.o $(BIN)/hc.c; \
	fi
	$(CC) -std=c99 -Wall -Wextra -pedantic -Werror -O2 $(AVX512) -fopenmp -I. -c -o $(BIN)/hc_avx512.o $(BIN)/hc.c
	$(CC) -std=c99 -Wall -Wextra -pedantic -Werror -O2 $(AVX512_BASE) -fopenmp -I. -c -o $(BIN)/hc_avx512_base.o $(BIN)/hc.c
	g++ -x c++ -Wall -Wextra -pedantic -Werror -O2 $(AVX512_BASE) -I. -c -o $(BIN)/hc_cpp_avx512_base.o $(BIN)/hc.c
	g++ -x c++ -Wall -Wextra -pedantic -Werror -O2 $(AVX512) -I. -c -o $(BIN)/hc_cpp_avx512.o $(BIN)/hc.c
	@printf '#define MLA_IMPLEMENTATION\n#include "mla.h"\n#if !defined(MLA__VNNI) || !defined(MLA__AMX)\n#error no AVX-512 or AMX kernels\n#endif\n' > $(BIN)/hc512.c
	@$(CC) -std=c99 -O0 $(AVX512) -I. -c -o $(BIN)/hc512.o $(BIN)/hc512.c
	@printf '#define MLA_IMPLEMENTATION\n#include "mla.h"\n#if !defined(MLA__AVX512) || defined(MLA__VNNI)\n#error no AVX-512 kernels without BF16/VNNI\n#endif\n' > $(BIN)/hc512b.c
	@$(CC) -std=c99 -O0 $(AVX512_BASE) -I. -c -o $(BIN)/hc512b.o $(BIN)/hc512b.c

CLI_BIN = $(BIN)/mla-run $(BIN)/mla-convert $(BIN)/mla-tradeoff
REPLAY_BIN = $(BIN)/replay_gguf $(BIN)/replay_tokenizer $(BIN)/replay_api $(BIN)/replay_convert
# the core, conversion and GGUF/weight-matrix suites again with the portable kernels (MLA_NO_SIMD; OpenMP on)
$(BIN)/run_tests_nosimd: $(TEST_SRC) $(TEST_HDR) $(VARIANTS)
	$(CC) $(WARN) $(OPT) $(ARCH) -DMLA_NO_SIMD -g -I. -o $@ $(TEST_SRC) $(VARIANTS) $(CBLAS_LIB) $(LDLIBS) $(OMP)
# the README's Usage snippet, cut out of README.md and run (tests/readme_usage.c)
$(BIN)/readme_usage: README.md tests/readme_usage.c mla.h | $(BIN)
	awk '/^## Usage/{u=1} u && /^```c/{c=1; next} c && /^```/{exit} c' README.md > $(BIN)/readme_usage.c.txt
	grep '^#' $(BIN)/readme_usage.c.txt > $(BIN)/readme_usage_head.inc
	grep -v '^#' $(BIN)/readme_usage.c.txt > $(BIN)/readme_usage_body.inc
	$(CC) $(WARN) $(OPT) $(ARCH) -I. -o $@ tests/readme_usage.c $(LDLIBS)
# offline, the model tests are skipped and say why (CI sets MLA_REQUIRE_MODEL=1: there they must run)
test: headercheck cuda-build $(BIN)/run_tests $(BIN)/run_tests_nosimd $(BIN)/readme_usage $(CLI_BIN) $(REPLAY_BIN)
	@tools/fetch_model.sh >/dev/null || echo "note: the model could not be fetched; the tests that need it are skipped"
	./$(BIN)/run_tests_nosimd core convert gguf
	./$(BIN)/run_tests

# ---- CUDA: sm_80 and sm_90 code, PTX for newer GPUs ----
NVCC      ?= nvcc
NVCCFLAGS  = -O3 -std=c++17 -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
             -gencode arch=compute_90,code=compute_90 -Xcompiler -Wall
HAVE_NVCC := $(shell command -v $(NVCC) 2>/dev/null)

$(BIN)/mla_cuda.o: mla_cuda.cu mla_cuda.h mla.h | $(BIN)
	$(NVCC) $(NVCCFLAGS) -c -o $@ mla_cuda.cu

$(BIN)/mla_impl_plain.o: examples/common/mla_impl.c mla.h | $(BIN)
	$(CC) $(WARN) $(OPT) -c -o $@ $<

CUDA_TEST_OBJ = $(BIN)/cu_run_cuda_tests.o $(BIN)/cu_harness.o $(BIN)/cu_test_cuda.o
$(BIN)/cu_%.o: tests/%.c tests/harness.h mla_cuda.h mla.h | $(BIN)
	$(CC) $(WARN) $(OPT) -c -o $@ $<

$(BIN)/test_cuda_gpu: $(CUDA_TEST_OBJ) $(BIN)/mla_cuda.o $(BIN)/mla_impl_plain.o $(BIN)/variant_plain.o
	$(NVCC) -o $@ $^ -lm

$(BIN)/bench_cuda: $(BIN)/cu_bench_cuda.o $(BIN)/mla_cuda.o $(BIN)/mla_impl_plain.o
	$(NVCC) -o $@ $^ -lm

# make test on a machine with nvcc (and maybe no GPU): compile and link only
cuda-build:
ifneq ($(HAVE_NVCC),)
	$(MAKE) $(BIN)/test_cuda_gpu $(BIN)/bench_cuda
else
	@echo "nvcc not found: CUDA backend not built (its CPU build is tested)"
endif

# build the CUDA backend, its test and bench (run them on a GPU: tools/gpu_check.sh)
cuda: $(BIN)/test_cuda_gpu $(BIN)/bench_cuda

SAN = -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
sanitize: $(CLI_BIN) $(MODEL) | $(BIN)
	$(MAKE) -B REPLAY_SAN="$(SAN)" $(REPLAY_BIN)
	$(CC) $(WARN) -O1 -g $(SAN) $(CBLAS_FLAGS) -c -o $(BIN)/cblas_impl_san.o tests/cblas_impl.c
	$(CC) $(WARN) -O1 -g $(SAN) -x c -c -o $(BIN)/mla_cuda_cpu_san.o mla_cuda.cu
	$(CC) $(WARN) -O1 -g $(ARCH) $(SAN) -DMLA_NO_SIMD -DVARIANT_PREFIX=plain_ -c -o $(BIN)/variant_plain_san.o tests/variant.c
	$(CC) $(WARN) -O1 -g $(ARCH) $(SAN) $(OMP) -DVARIANT_PREFIX=omp_ -c -o $(BIN)/variant_omp_san.o tests/variant.c
	$(CC) $(WARN) -O1 -g $(ARCH) $(SAN) -DMLA_NO_AMX $(NOVNNI) -DVARIANT_PREFIX=vec_ -c -o $(BIN)/variant_vec_san.o tests/variant.c
	$(CC) $(WARN) -O1 -g $(ARCH) $(SAN) -DMLA_NO_AVX512 -DVARIANT_PREFIX=avx2_ -c -o $(BIN)/variant_avx2_san.o tests/variant.c
	$(CC) $(WARN) -O1 -g $(ARCH) $(SAN) $(OMP) -I. -o $(BIN)/run_tests_san $(TEST_SRC) $(BIN)/cblas_impl_san.o $(BIN)/mla_cuda_cpu_san.o \
	  $(BIN)/variant_plain_san.o $(BIN)/variant_omp_san.o $(BIN)/variant_vec_san.o $(BIN)/variant_avx2_san.o \
	  $(CBLAS_LIB) $(LDLIBS)
	ASAN_OPTIONS=detect_leaks=1 ./$(BIN)/run_tests_san

# ---- valgrind on a portable build (no -march=native: valgrind does not know
#      every AVX-512 instruction; no OpenMP: its runtime's pools look like leaks) ----
PORTABLE = $(BIN)/portable
valgrind: $(MODEL) | $(BIN)
	mkdir -p $(PORTABLE)
	$(CC) $(WARN) -O2 -g -I. -o $(PORTABLE)/hello_mla examples/hello_mla.c $(LDLIBS)
	$(CC) $(WARN) -O2 -g -o $(PORTABLE)/mla-run examples/mla_run.c $(COMMON_SRC) examples/common/mla_impl.c $(LDLIBS)
	valgrind --error-exitcode=9 --leak-check=full -q ./$(PORTABLE)/hello_mla > /dev/null
	valgrind --error-exitcode=9 --leak-check=full -q ./$(PORTABLE)/mla-run --model $(MODEL) --chat "Hi" -n 3 > /dev/null
	@echo "valgrind: hello_mla and mla-run (portable build): no errors, no leaks"

# ---- fuzzing (clang's libFuzzer + ASan/UBSan): make fuzz FUZZ_SECONDS=N ----
FUZZ_CC    ?= clang
FUZZ_FLAGS  = -g -O1 $(ARCH) -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -I.
FUZZ_LIB    = examples/common/gguf.c examples/common/outfile.c examples/common/tokenizer.c examples/common/model.c examples/common/wmat.c \
              examples/common/mla_impl.c
FUZZ_BIN    = $(BIN)/fuzz_gguf $(BIN)/fuzz_tokenizer $(BIN)/fuzz_api $(BIN)/fuzz_convert
FUZZ_SECONDS ?= 60
FUZZ_RUNS ?=
$(BIN)/fuzz_gguf $(BIN)/fuzz_tokenizer: $(BIN)/fuzz_%: tests/fuzz/fuzz_%.c tests/fuzz/fuzz.h $(FUZZ_LIB) $(COMMON_HDR) | $(BIN)
	$(FUZZ_CC) $(FUZZ_FLAGS) -o $@ $< $(FUZZ_LIB) -lm
$(BIN)/fuzz_api $(BIN)/fuzz_convert: $(BIN)/fuzz_%: tests/fuzz/fuzz_%.c tests/fuzz/fuzz.h mla.h | $(BIN)
	$(FUZZ_CC) $(FUZZ_FLAGS) -o $@ $< -lm
# the same targets without libFuzzer, replaying tests/corpus/ (make test runs them)
$(BIN)/replay_gguf $(BIN)/replay_tokenizer: $(BIN)/replay_%: tests/fuzz/fuzz_%.c tests/fuzz/replay.c tests/fuzz/fuzz.h $(FUZZ_LIB) $(COMMON_HDR) | $(BIN)
	$(CC) $(WARN) -g $(OPT) $(ARCH) $(REPLAY_SAN) -I. -o $@ $< tests/fuzz/replay.c $(FUZZ_LIB) -lm
$(BIN)/replay_api $(BIN)/replay_convert: $(BIN)/replay_%: tests/fuzz/fuzz_%.c tests/fuzz/replay.c tests/fuzz/fuzz.h mla.h | $(BIN)
	$(CC) $(WARN) -g $(OPT) $(ARCH) $(REPLAY_SAN) -I. -o $@ $< tests/fuzz/replay.c -lm
fuzz: $(FUZZ_BIN)
	FUZZ_SECONDS=$(FUZZ_SECONDS) FUZZ_RUNS=$(FUZZ_RUNS) tools/fuzz.sh $(BIN)
# the committed seed corpora (tests/corpus/) from the project's own writer
fuzz-seeds: | $(BIN)
	$(CC) $(WARN) -O1 -I. -o $(BIN)/make_seeds tests/fuzz/make_seeds.c $(COMMON_SRC) examples/common/mla_impl.c -lm
	./$(BIN)/make_seeds

clean:
	rm -rf $(BIN)
