# Makefile - thin wrapper over Meson: `make`, `make run`, `make test`, `make bench`.
BUILD ?= build
MESON_OPTS ?=
BIND ?= tcp://127.0.0.1:5555
DEVICE ?= auto

.PHONY: all deps run test bench fuzz clean format

all: $(BUILD)/build.ninja
	ninja -C $(BUILD)

$(BUILD)/build.ninja:
	@scripts/deps.sh build
	meson setup $(BUILD) $(MESON_OPTS)

deps:
	@scripts/deps.sh build

run:
	@scripts/deps.sh run
	@$(MAKE) --no-print-directory all
	@echo "titan: try it from another shell with: build/titan ping"
	exec $(BUILD)/titan-worker --bind $(BIND) --device $(DEVICE)

# The suite runs twice: the normal build, and one under AddressSanitizer and UBSan.
test:
	@scripts/deps.sh test
	@# --reconfigure: a build set up before cmocka was installed must pick the tests up now
	@if [ -f $(BUILD)/build.ninja ]; then meson setup --reconfigure $(BUILD) -Dwerror=true >/dev/null; \
	 else meson setup $(BUILD) -Dwerror=true $(MESON_OPTS) >/dev/null; fi
	ninja -C $(BUILD)
	@if [ -f $(BUILD)-asan/build.ninja ]; then meson setup --reconfigure $(BUILD)-asan >/dev/null; \
	 else meson setup $(BUILD)-asan -Dbuildtype=debug -Db_sanitize=address,undefined -Db_lundef=false -Dwerror=true >/dev/null; fi
	ninja -C $(BUILD)-asan
	@ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 tests/run.sh $(BUILD) $(BUILD)-asan

bench:
	@scripts/deps.sh bench
	@[ -f $(BUILD)/build.ninja ] || meson setup $(BUILD) $(MESON_OPTS)
	ninja -C $(BUILD)
	bench/run.sh $(BUILD)

# libFuzzer on the request codec for FUZZ_SECONDS (needs clang; not part of `make test`).
FUZZ_SECONDS ?= 60
fuzz:
	@command -v clang >/dev/null || { echo "make fuzz needs clang: apt-get install clang" >&2; exit 2; }
	mkdir -p $(BUILD)/fuzz-corpus
	clang -g -O1 -fsanitize=fuzzer,address,undefined -Iinclude -Isrc/lib fuzz/fuzz_request.c \
	  src/lib/jsonscan.c src/lib/numfmt.c src/lib/tensor.c -ljansson -lm -o $(BUILD)/fuzz_request
	$(BUILD)/fuzz_request -max_total_time=$(FUZZ_SECONDS) -max_len=4096 $(BUILD)/fuzz-corpus fuzz/corpus

format:
	clang-format -i $$(git ls-files '*.c' '*.h')

clean:
	rm -rf $(BUILD) $(BUILD)-asan
