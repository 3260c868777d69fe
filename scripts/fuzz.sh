#!/usr/bin/env bash
# Runs the fuzz targets of fuzz/ (cargo-fuzz, libFuzzer), one after the
# other, and reports per target: executions per second, coverage (libFuzzer's
# `cov:` edges and `ft:` features at the end), corpus size, and whether it
# crashed.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# SECONDS per target (default 600); targets default to all of them:
# envelope link_frame tokens config netstack kcp websocket xdp. The xdp target needs root
# (BPF_PROG_TEST_RUN) and is skipped with a message without it.
#
# Each run starts from the committed seeds (fuzz/corpus/<target>/) copied
# into a scratch corpus (fuzz/target/fuzz-runs/<target>/corpus, not in git),
# so long runs do not bloat the repository. Crashes are written to
# fuzz/artifacts/<target>/ and the script exits non-zero, printing their
# paths and how to reproduce them. Logs: fuzz/target/fuzz-runs/<target>.log.
# The targets are built once, first; the runs use those binaries.
#
# Environment: FUZZ_TIMEOUT (seconds before one input counts as a hang,
# default 10), FUZZ_ARGS (more libFuzzer flags), FUZZ_KEEP_CORPUS=1 (keep
# the scratch corpus of an earlier run instead of starting from the seeds).
# One fuzzer at a time, one job (the machine's other core stays free).
set -euo pipefail
cd "$(dirname "$0")/.."

ALL=(envelope link_frame tokens config netstack kcp websocket xdp)
secs=600
if [ $# -gt 0 ] && [[ "$1" =~ ^[0-9]+$ ]]; then
    secs=$1
    shift
fi
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${ALL[@]}")

say() { printf '\033[1m[fuzz]\033[0m %s\n' "$*"; }

for t in "${targets[@]}"; do
    [ -f "fuzz/fuzz_targets/$t.rs" ] || { echo "[fuzz] no target $t (targets: ${ALL[*]})" >&2; exit 2; }
done

cargo_fuzz="$PWD/.tools/bin/cargo-fuzz"
if [ ! -x "$cargo_fuzz" ]; then
    echo "[fuzz] cargo-fuzz is missing from .tools/: run ./scripts/setup.sh first" >&2
    exit 1
fi
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi
# cargo-fuzz needs nightly flags (-Zsanitizer); stable accepts them with this.
export RUSTC_BOOTSTRAP=1
# One job by default (a developer's machine has other work); CI has the
# machine to itself.
[ "${CI:-}" = true ] || export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-1}"

run=()
for t in "${targets[@]}"; do
    if [ "$t" = xdp ] && [ "$(id -u)" -ne 0 ]; then
        say "xdp: skipped, BPF_PROG_TEST_RUN needs root"
        continue
    fi
    run+=("$t")
done
[ ${#run[@]} -gt 0 ] || { say "nothing to run"; exit 0; }

# The committed lock file is used as is.
cargo metadata --locked --format-version 1 --manifest-path fuzz/Cargo.toml >/dev/null

say "building ${run[*]} (cargo-fuzz, ASan, release with debug assertions)"
start=$SECONDS
if [ ${#run[@]} -eq ${#ALL[@]} ]; then
    "$cargo_fuzz" build
else
    for t in "${run[@]}"; do "$cargo_fuzz" build "$t"; done
fi
say "built in $((SECONDS - start)) s"
bin="fuzz/target/$(rustc -vV | sed -n 's/^host: //p')/release"

scratch=fuzz/target/fuzz-runs
mkdir -p "$scratch"
summary=()
crashed=()
for t in "${run[@]}"; do
    corpus="$scratch/$t/corpus"
    if [ "${FUZZ_KEEP_CORPUS:-}" != 1 ] || [ ! -d "$corpus" ]; then
        rm -rf "$corpus"
        mkdir -p "$corpus"
        cp fuzz/corpus/"$t"/* "$corpus"/
    fi
    mkdir -p "fuzz/artifacts/$t"
    log="$scratch/$t.log"
    seeds=$(find "$corpus" -type f | wc -l)
    say "$t: ${secs} s from $seeds inputs (log: $log)"
    set +e
    # The binary built above, run directly: the code under test does not
    # change between targets even if the tree does.
    # shellcheck disable=SC2086
    "$bin/$t" "$corpus" \
        -max_total_time="$secs" -timeout="${FUZZ_TIMEOUT:-10}" -print_final_stats=1 \
        -artifact_prefix="fuzz/artifacts/$t/" ${FUZZ_ARGS:-} >"$log" 2>&1 &
    pid=$!
    set -e
    t0=$SECONDS
    next=30
    while kill -0 "$pid" 2>/dev/null; do
        sleep 1
        if [ $((SECONDS - t0)) -ge "$next" ]; then
            next=$((next + 30))
            last=$(grep -aE '^#[0-9]+' "$log" | tail -n 1 || true)
            say "  $t +$((SECONDS - t0)) s: ${last:-starting}"
        fi
    done
    set +e
    wait "$pid"
    status=$?
    set -e
    final=$(grep -aE '^#[0-9]+' "$log" | tail -n 1 || true)
    field() { sed -nE "s/.* $1: ([0-9]+).*/\\1/p" <<<"$final"; }
    execs=$(sed -nE 's/^stat::average_exec_per_sec: *([0-9]+)/\1/p' "$log" | tail -n 1)
    runs=$(sed -nE 's/^stat::number_of_executed_units: *([0-9]+)/\1/p' "$log" | tail -n 1)
    units=$(find "$corpus" -type f | wc -l)
    corp=$(sed -nE 's/.* corp: ([0-9]+\/[0-9A-Za-z]+).*/\1/p' <<<"$final")
    artifact=$(sed -nE 's/.*Test unit written to (.*)$/\1/p' "$log" | tail -n 1)
    if grep -aq 'skipped, BPF_PROG_TEST_RUN needs root' "$log"; then
        verdict="skipped (not root)"
    elif [ "$status" -ne 0 ] || [ -n "$artifact" ]; then
        verdict="CRASHED: ${artifact:-exit $status, see $log}"
        crashed+=("$t: ${artifact:-$log}")
        grep -aE 'panicked at|ERROR: libFuzzer|ERROR: AddressSanitizer' "$log" | head -n 3 | sed 's/^/[fuzz]     /' || true
    else
        verdict="no crash"
    fi
    line=$(printf '%-11s %9s %11s %6s %7s %12s %6s %6s  %s' "$t" "${execs:-?}" "${runs:-?}" "$(field cov)" "$(field ft)" "${corp:-?}" "$units" "$seeds" "$verdict")
    say "$line"
    summary+=("$line")
done

echo
say "$(printf '%-11s %9s %11s %6s %7s %12s %6s %6s  %s' target exec/s runs cov ft corp files seeds result) (${secs} s each)"
for line in "${summary[@]}"; do say "$line"; done
if [ ${#crashed[@]} -gt 0 ]; then
    echo
    for c in "${crashed[@]}"; do echo "[fuzz] crash in $c" >&2; done
    echo "[fuzz] reproduce: RUSTC_BOOTSTRAP=1 .tools/bin/cargo-fuzz run <target> <artifact>  (or $bin/<target> <artifact>)" >&2
    exit 1
fi
