# aiserve - the two commands a user needs:
#   make run    install what is missing, build, and serve the bundled model
#               over HTTP on 127.0.0.1:8000 (ARGS="--port 9000" passes flags)
#   make test   install what is missing, build, and run every test
# Others: make build | asan | fuzz | bench | bench-http | clean

BUILD ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=
FUZZ_SECONDS ?= 30

.PHONY: all deps build run test asan fuzz bench bench-http clean

all: build

deps:
	@scripts/install-deps.sh

build: deps
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS) >/dev/null
	@cmake --build $(BUILD) -j $(JOBS)

run: build
	@scripts/serve.sh $(BUILD)/aiserve $(ARGS)

test: build
	@cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

# Unit tests under AddressSanitizer + UndefinedBehaviorSanitizer.
asan: deps
	@cmake -S . -B $(BUILD)-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DAISERVE_SANITIZE=ON $(CMAKE_FLAGS) >/dev/null
	@cmake --build $(BUILD)-asan -j $(JOBS)
	@cd $(BUILD)-asan && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 ctest --output-on-failure -j $(JOBS)

# libFuzzer targets (clang), each run for FUZZ_SECONDS on a copy of its corpus.
fuzz: deps
	@CC=clang cmake -S . -B $(BUILD)-fuzz -DCMAKE_BUILD_TYPE=Debug -DAISERVE_FUZZ=ON $(CMAKE_FLAGS) >/dev/null
	@cmake --build $(BUILD)-fuzz -j $(JOBS)
	@scripts/run-fuzzers.sh $(BUILD)-fuzz $(FUZZ_SECONDS)

bench: build
	@scripts/install-deps.sh --bench
	@bench/engine/run.sh $(BUILD)

# HTTP benchmark: aiserve serve against the FastAPI + PyTorch seed service
# (bench/http/README section in bench/README.md).
bench-http: build
	@scripts/install-deps.sh --bench
	@bench/http/run.sh $(BUILD)

clean:
	rm -rf $(BUILD) $(BUILD)-asan $(BUILD)-fuzz
