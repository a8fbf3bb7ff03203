#!/usr/bin/env bash
# run.sh: builds each libFuzzer target in tests/fuzz into build-fuzz/ and runs it for a
# bounded time on a copy of its seed corpus. Exits non-zero if a target crashed (or failed
# to build); the crashing input is kept in build-fuzz/artifacts/.
#
#   FUZZ_SECONDS=30    seconds per target (libFuzzer -max_total_time)
#   FUZZ_TARGETS="..." targets to run (default: every tests/fuzz/fuzz_*.c)
#   FUZZ_MERGE=1       merge new coverage back into tests/fuzz/corpus (off by default, so
#                      that a run never modifies the tree)
#   FUZZ_SRC=dir       the core sources to build against (default src); point it at a
#                      scratch copy with a planted bug to check that it is caught
#   FUZZ_OUT=dir       the build and work directory (default build-fuzz)
#
# Reproduce a crash: build-fuzz/fuzz_NAME build-fuzz/artifacts/fuzz_NAME-crash-...; with
# FUZZ_TRACE=1 the target prints every operation it runs.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

seconds=${FUZZ_SECONDS:-30}
src=${FUZZ_SRC:-src}
out=${FUZZ_OUT:-build-fuzz}
cc=${CC:-clang}
# -fno-sanitize-recover: an UBSan finding must stop the run, not just print.
# shellcheck disable=SC2054 # the commas are -fsanitize's
cflags=(-g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all -D_GNU_SOURCE
    -I"$src" -Wall -Wextra -Werror)
backends="selector.c backends.c net.c backend_epoll.c backend_poll.c backend_select.c backend_sim.c"
declare -A core=(
    [fuzz_selector]="$backends"
    [fuzz_buffer]="buffer.c conn.c $backends"
    [fuzz_tls]="tls.c buffer.c conn.c $backends"
)
declare -A libs=(
    [fuzz_tls]="-lssl -lcrypto"
)

if [[ -n ${FUZZ_TARGETS:-} ]]; then
    read -ra targets <<<"$FUZZ_TARGETS"
else
    targets=()
    for f in tests/fuzz/fuzz_*.c; do
        targets+=("$(basename "$f" .c)")
    done
fi

mkdir -p "$out/artifacts"
failed=()
for t in "${targets[@]}"; do
    if [[ -z ${core[$t]+set} ]]; then
        echo "fuzz: unknown target $t (add its core sources to run.sh)" >&2
        failed+=("$t")
        continue
    fi
    sources=()
    for s in ${core[$t]}; do
        sources+=("$src/$s")
    done
    printf 'fuzz: building %s\n' "$t"
    read -ra extra <<<"${libs[$t]:-}"
    if ! "$cc" "${cflags[@]}" "tests/fuzz/$t.c" "${sources[@]}" "${extra[@]}" -o "$out/$t"; then
        failed+=("$t (build)")
        continue
    fi
    # The work corpus lives in the build dir and keeps what earlier runs found.
    corpus="$out/corpus/$t"
    mkdir -p "$corpus"
    cp tests/fuzz/corpus/"$t"/* "$corpus"/
    log="$out/$t.log"
    printf 'fuzz: running %s for %s s (log %s)\n' "$t" "$seconds" "$log"
    start=$SECONDS
    if "$out/$t" -max_total_time="$seconds" -timeout=20 -detect_leaks=1 -print_final_stats=1 \
        -artifact_prefix="$out/artifacts/$t-" "$corpus" >"$log" 2>&1; then
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
        cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1)
        printf 'fuzz: %s passed: %s inputs in %d s, %s\n' "$t" "${runs:-?}" \
            $((SECONDS - start)) "${cov:-cov: ?}"
    else
        printf 'fuzz: %s FAILED after %d s; the end of its log:\n' "$t" $((SECONDS - start)) >&2
        grep -v '^#[0-9]' "$log" | tail -n 40 >&2
        failed+=("$t")
        continue
    fi
    if [[ ${FUZZ_MERGE:-0} == 1 ]]; then
        "$out/$t" -merge=1 "tests/fuzz/corpus/$t" "$corpus" >>"$log" 2>&1
        printf 'fuzz: merged new inputs of %s into tests/fuzz/corpus/%s\n' "$t" "$t"
    fi
done

if ((${#failed[@]} > 0)); then
    printf 'fuzz: FAILED: %s\n' "${failed[@]}" >&2
    exit 1
fi
printf 'fuzz: all %d targets passed\n' "${#targets[@]}"
