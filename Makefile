# Makefile - thin wrapper over Meson: `make`, `make install`, `make run`, `make test`, `make bench`, `make fuzz`, `make soak`.
BUILD ?= build
MESON_OPTS ?=
BIND ?= tcp://127.0.0.1:5555
DEVICE ?= auto

.PHONY: all deps install run test test-asan bench bench-gpu fuzz soak clean format check-legacy-cuda

# configure.sh sets the build directory up, or configures it afresh when packages changed since.
all:
	@scripts/deps.sh build
	@scripts/configure.sh $(BUILD) $(MESON_OPTS)
	ninja -C $(BUILD)

deps:
	@scripts/deps.sh build

# meson install: titan-worker and titan, libtitan.so.0 (and its libtitan.so link), include/titan/*.h and titan.pc
# under the prefix (/usr/local unless MESON_OPTS=-Dprefix=DIR), where pkg-config, the linker and the Python
# client's Router find them; then the linker's cache is refreshed. DESTDIR=DIR stages the tree there instead.
install: all
	meson install -C $(BUILD) --no-rebuild
	@if [ -z "$(DESTDIR)" ] && [ "$$(id -u)" = 0 ] && command -v ldconfig >/dev/null; then ldconfig; fi

run:
	@scripts/deps.sh run
	@$(MAKE) --no-print-directory all
	@echo "titan: try it from another shell with: build/titan ping"
	exec $(BUILD)/titan-worker --bind $(BIND) --device $(DEVICE)

# The suite runs twice: the normal build, and one under AddressSanitizer and UBSan.
# In the normal build it includes 60 s of each fuzz target (30 s for the BERT model readers') when clang
# is installed (suite 'fuzz')
# and a short soak (suite 'soak').
test:
	@scripts/deps.sh test
	@# configure.sh configures afresh when packages changed (a build set up by `make run` before
	@# deps.sh installed libtorch-dev and cmocka must find them now, not Meson's cached "NO")
	@scripts/configure.sh $(BUILD) -Dwerror=true $(MESON_OPTS) >/dev/null
	ninja -C $(BUILD)
	@scripts/configure.sh $(BUILD)-asan -Dbuildtype=debug -Db_sanitize=address,undefined -Db_lundef=false -Dwerror=true >/dev/null
	ninja -C $(BUILD)-asan
	@ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 tests/run.sh $(BUILD) $(BUILD)-asan

# The suite under AddressSanitizer and UBSan only (the second half of `make test`).
test-asan:
	@scripts/deps.sh test
	@scripts/configure.sh $(BUILD)-asan -Dbuildtype=debug -Db_sanitize=address,undefined -Db_lundef=false -Dwerror=true >/dev/null
	ninja -C $(BUILD)-asan
	@ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 tests/run.sh $(BUILD)-asan

bench:
	@scripts/deps.sh bench
	@scripts/configure.sh $(BUILD) $(MESON_OPTS)
	ninja -C $(BUILD)
	bench/run.sh $(BUILD)

# On a machine with an NVIDIA GPU (a few minutes on an H100): matmul through a CUDA titan-worker against
# in-process cuBLAS, resident and with transfer; results in $(BUILD)/bench-gpu (OUT=DIR to change).
bench-gpu:
	@scripts/deps.sh build
	@scripts/configure.sh $(BUILD) $(MESON_OPTS)
	ninja -C $(BUILD)
	bench/gpu.sh $(BUILD)

# Builds the CUDA backend for Maxwell (sm_52) with Debian's non-free nvidia-cuda-toolkit 11.8 (installed
# on first use through a throwaway apt configuration) and shows the sm_52 code with cuobjdump. Not part
# of `make test`: it downloads ~1.6 GB. docs/OPERATIONS.md, "Building the CUDA backend".
check-legacy-cuda:
	@scripts/deps.sh build
	scripts/check-legacy-cuda.sh $(BUILD)-legacy-cuda

# libFuzzer, FUZZ_SECONDS per target, under ASan and UBSan (needs clang and libclang-rt-14-dev).
# Each target keeps a scratch corpus in $(BUILD)/fuzz-corpus/NAME (libFuzzer adds to it) and
# reads its seeds from fuzz/corpus/NAME; every target runs, and the target fails if any crashed.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS = request reply tokenizer safetensors bertconfig http_body
FUZZ_CFLAGS = -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all -std=gnu11 -D_GNU_SOURCE \
  -Wall -Wextra -Wno-unused-parameter -Iinclude -Isrc/core
fuzz:
	@command -v clang >/dev/null || { echo "make fuzz needs clang: apt-get install clang libclang-rt-14-dev" >&2; exit 2; }
	mkdir -p $(BUILD)/fuzz
	clang $(FUZZ_CFLAGS) fuzz/fuzz_request.c src/core/jsonscan.c src/core/numfmt.c src/core/tensor.c \
	  -ljansson -lm -o $(BUILD)/fuzz/fuzz_request
	clang $(FUZZ_CFLAGS) fuzz/fuzz_reply.c src/core/request.c src/core/error.c src/core/jsonscan.c src/core/numfmt.c src/core/tensor.c \
	  src/core/hostpool.c src/core/devpool.c \
	  -lzmq -ljansson -lm -lpthread -o $(BUILD)/fuzz/fuzz_reply
	clang $(FUZZ_CFLAGS) fuzz/fuzz_tokenizer.c src/core/encoder/wordpiece.c src/core/encoder/wordpiece_load.c \
	  -lutf8proc -ljansson -o $(BUILD)/fuzz/fuzz_tokenizer
	clang $(FUZZ_CFLAGS) fuzz/fuzz_safetensors.c src/core/encoder/safetensors.c src/core/error.c -ljansson -lm -o $(BUILD)/fuzz/fuzz_safetensors
	clang $(FUZZ_CFLAGS) fuzz/fuzz_bertconfig.c src/core/encoder/bert_config.c src/core/error.c -ljansson -lm -o $(BUILD)/fuzz/fuzz_bertconfig
	clang $(FUZZ_CFLAGS) -Isrc/worker fuzz/fuzz_http_body.c src/worker/http_api.c src/core/numfmt.c src/core/tensor.c \
	  -ljansson -lm -o $(BUILD)/fuzz/fuzz_http_body
	@rc=0; for t in $(FUZZ_TARGETS); do \
	  fuzz/run.sh $(BUILD)/fuzz/fuzz_$$t $(FUZZ_SECONDS) $(BUILD)/fuzz-corpus/$$t fuzz/corpus/$$t || rc=1; \
	done; exit $$rc

# The long soak: 200k requests from 64 clients, two worker restarts, RSS watched (tests/soak/soak.py).
SOAK_REQUESTS ?= 200000
soak: all
	@scripts/deps.sh test
	/usr/bin/python3 tests/soak/soak.py $(BUILD)/titan-worker --requests $(SOAK_REQUESTS)

format:
	clang-format -i $$(git ls-files '*.c' '*.h')

clean:
	rm -rf $(BUILD) $(BUILD)-asan
