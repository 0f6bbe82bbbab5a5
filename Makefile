# Makefile - thin wrapper over Meson: `make`, `make run`, `make test`, `make bench`.
BUILD ?= build
MESON_OPTS ?=
BIND ?= tcp://127.0.0.1:5555
DEVICE ?= auto

.PHONY: all deps run test bench clean format

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

test:
	@scripts/deps.sh test
	@[ -f $(BUILD)/build.ninja ] || meson setup $(BUILD) $(MESON_OPTS)
	meson configure $(BUILD) -Dwerror=true >/dev/null
	ninja -C $(BUILD)
	@tests/run.sh $(BUILD)

bench:
	@scripts/deps.sh bench
	@[ -f $(BUILD)/build.ninja ] || meson setup $(BUILD) $(MESON_OPTS)
	ninja -C $(BUILD)
	bench/run.sh $(BUILD)

format:
	clang-format -i $$(git ls-files '*.c' '*.h')

clean:
	rm -rf $(BUILD)
