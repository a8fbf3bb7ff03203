# luahost: a thin wrapper over CMake, in the spirit of Neovim's Makefile.
# make run | make test | make test-sanitize | make lint; CI passes WERROR=ON (.ci/run).
WERROR ?= OFF
C_FILES := $(wildcard src/*.[ch] tests/unit/*.c tests/bench/*.c)
# Configure build dir $(1) once, again only for another WERROR. A failed configure drops
# its cache, so the next make configures anew instead of building a half-made tree.
configure = grep -qx 'LUAHOST_WERROR:[A-Z]*=$(WERROR)' $(1)/CMakeCache.txt 2>/dev/null \
	|| cmake -S . -B $(1) -DLUAHOST_WERROR=$(WERROR) $(2) \
	|| { rm -f $(1)/CMakeCache.txt; exit 1; }

.PHONY: all deps build run test test-sanitize lint clean
all: build

deps:
	vendor/install

build: deps
	@$(call configure,build)
	cmake --build build -j2

run: build
	build/luahost scripts/echo.lua 127.0.0.1:7342

test: build
	ctest --test-dir build --output-on-failure $(CTEST_FLAGS)

test-sanitize: deps
	@$(call configure,build-sanitize,-DLUAHOST_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug)
	cmake --build build-sanitize -j2
	ctest --test-dir build-sanitize --output-on-failure $(CTEST_FLAGS)

lint:
	$(if $(C_FILES),clang-format --dry-run --Werror $(C_FILES))
	luacheck scripts tests examples

clean:
	rm -rf build build-sanitize
