# luahost: a thin wrapper over CMake, in the spirit of Neovim's Makefile.
# make run | make test | make test-sanitize | make lint | make install (PREFIX, DESTDIR);
# CI passes WERROR=ON (.ci/run).
WERROR ?= OFF
PREFIX ?= /usr/local
C_FILES := $(wildcard src/*.[ch] tests/unit/*.[ch] tests/bench/*.c tests/fuzz/*.c tests/oom/*.c)
# Configure build dir $(1) once, again only for another WERROR. A failed configure drops
# its cache, so the next make configures anew instead of building a half-made tree.
configure = grep -qx 'LUAHOST_WERROR:[A-Z]*=$(WERROR)' $(1)/CMakeCache.txt 2>/dev/null \
	|| cmake -S . -B $(1) -DLUAHOST_WERROR=$(WERROR) $(2) \
	|| { rm -f $(1)/CMakeCache.txt; exit 1; }

.PHONY: all deps build run test test-sanitize lint clean bench bench-ir install
all: build

deps:
	vendor/install

build: deps
	@$(call configure,build)
	cmake --build build -j2

# The executable, luahost.so, the test kit and the scripts under $(DESTDIR)$(PREFIX).
install: build
	DESTDIR="$(DESTDIR)" cmake --install build --prefix "$(PREFIX)"

run: build
	build/luahost scripts/echo.lua 127.0.0.1:7342

test: build
	ctest --test-dir build --output-on-failure $(CTEST_FLAGS)

test-sanitize: deps
	@$(call configure,build-sanitize,-DLUAHOST_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug)
	cmake --build build-sanitize -j2
	ctest --test-dir build-sanitize --output-on-failure $(CTEST_FLAGS)

# Benchmarks against the C limit and the peers (tests/bench/run.lua): several minutes.
bench: build
	lua5.4 tests/bench/run.lua

# Only the instructions and allocator calls per message under callgrind, every server:
# under two minutes; the report goes to build/bench/benchmarks.md.
bench-ir: build
	BENCH_ONLY=ir-echo,ir-chat,ir-tls,ir-tls-handshake lua5.4 tests/bench/run.lua

# Its tools have a list of their own: lua-check pulls in lua5.1, which Debian makes `lua`.
lint:
	vendor/install vendor/lint-packages.txt
	$(if $(C_FILES),clang-format --dry-run --Werror $(C_FILES))
	luacheck scripts tests examples lua

clean:
	rm -rf build build-sanitize build-fuzz

# libFuzzer targets in tests/fuzz, built into build-fuzz/: FUZZ_SECONDS each (default 30).
.PHONY: fuzz valgrind
fuzz:
	tests/fuzz/run.sh

# The end-to-end echo and chat specs with build/luahost under valgrind (tests/valgrind).
valgrind: build
	tests/valgrind/run.sh
