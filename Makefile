# dbatch -- convenience targets around CMake. `make test` and `make demo` work on a fresh Debian machine.
BUILD ?= build
SANBUILD ?= build-sanitize
PREFIX ?= /usr/local
JOBS ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: all deps build test test-sanitize demo install bench clean fuzz mutate examples

all: build

deps:
	@scripts/install-deps.sh build

build: deps
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	@cmake --build $(BUILD) -j $(JOBS)

test:
	@scripts/install-deps.sh test
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DBUILD_TESTING=ON >/dev/null
	@cmake --build $(BUILD) -j $(JOBS)
	@cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

test-sanitize:
	@scripts/install-deps.sh test
	@cmake -S . -B $(SANBUILD) -DCMAKE_BUILD_TYPE=Debug -DDBX_SANITIZE=ON -DBUILD_TESTING=ON >/dev/null
	@cmake --build $(SANBUILD) -j $(JOBS)
	@cd $(SANBUILD) && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
		ctest --output-on-failure -j $(JOBS)

demo:
	@scripts/install-deps.sh demo
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	@cmake --build $(BUILD) -j $(JOBS)
	@scripts/demo.sh $(BUILD)/dbatch

install: build
	@cmake -S . -B $(BUILD) -DCMAKE_INSTALL_PREFIX=$(PREFIX) >/dev/null
	@cmake --build $(BUILD) -j $(JOBS)
	@cmake --install $(BUILD)

# The example plugins (examples/plugins/), built the way a user builds one: against dbatch
# installed into $(BUILD)/stage, found only through pkg-config. Output: $(BUILD)/examples/.
examples: build
	@cmake --install $(BUILD) --prefix $(CURDIR)/$(BUILD)/stage >/dev/null
	@$(MAKE) --no-print-directory -C examples/plugins OUT=$(CURDIR)/$(BUILD)/examples \
		PKG_CONFIG_PATH=$$(dirname $$(find $(CURDIR)/$(BUILD)/stage -name dbatch.pc | head -1))

bench:
	@scripts/install-deps.sh bench
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	@cmake --build $(BUILD) -j $(JOBS)
	@for b in bench/*/run; do echo "== $$b"; $$b $(BUILD)/dbatch || exit 1; done

# The mutation score: each mutant in tests/mutation/ applied alone, rebuilt in build-mutate/,
# tested; prints caught/survived and the score (goal >= 90%). MUTANTS=REGEX picks some.
mutate:
	@scripts/install-deps.sh test
	@BUILD=build-mutate JOBS=$(JOBS) scripts/mutate.sh $(MUTANTS)

# libFuzzer targets (tests/fuzz/, built with clang into build-fuzz/): replay the saved crash
# inputs, then FUZZ_SECONDS of fuzzing per target; fails on any finding. FUZZ_REPLAY=0 skips
# the replay. See scripts/fuzz.sh.
fuzz:
	@scripts/install-deps.sh fuzz
	@FUZZ_SECONDS=$(or $(FUZZ_SECONDS),60) scripts/fuzz.sh

clean:
	rm -rf $(BUILD) $(SANBUILD)
