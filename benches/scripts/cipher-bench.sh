#!/usr/bin/env bash
# Session encryption's cost on one core, beside OpenSSL on the same core:
# `cargo bench --bench cipher` (ring through the gateway's FrameCipher:
# seal, and seal+open, of one message with the envelope header as AD) and
# `openssl speed -evp aes-128-gcm` / `aes-256-gcm` (encryption only), both
# pinned with taskset to CPU (default: the last one), at 64 B, 1 KiB and
# 16 KiB. Prints a table in MB/s (10^6 bytes/s) and the server side of a
# LOGIN handshake (X25519 + HKDF) in µs and handshakes/s per core.
#
#   benches/scripts/cipher-bench.sh            # CPU=1 SECONDS_PER=2
set -euo pipefail
cd "$(dirname "$0")/../.."
CPU="${CPU:-$(($(nproc) - 1))}"
SECONDS_PER="${SECONDS_PER:-2}"
command -v openssl >/dev/null || { echo "openssl is not installed" >&2; exit 1; }
cargo bench -p portcullis-benches --bench cipher --no-run >/dev/null 2>&1
# The figures come from the bench's own timed loops (criterion's runs
# follow only if asked: CRITERION=1).
args=(--list)
[ -n "${CRITERION:-}" ] && args=()
figures=$(taskset -c "$CPU" cargo bench -q -p portcullis-benches --bench cipher -- "${args[@]}" 2>/dev/null |
    grep '^figure:')
ossl() { # CIPHER SIZE → MB/s
    taskset -c "$CPU" openssl speed -seconds "$SECONDS_PER" -bytes "$2" -evp "$1" 2>/dev/null |
        awk -v c="$1" 'tolower($1) == c { v = $NF; sub(/k$/, "", v); printf "%.0f", v / 1000 }'
}
echo "one core (CPU $CPU): $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "flags: $(grep -m1 -o -w -E 'aes|vaes|pclmulqdq|vpclmulqdq|avx512f' /proc/cpuinfo | sort -u | tr '\n' ' ')"
printf '%-12s %7s | %12s %12s | %12s %8s\n' cipher size "ring seal" "seal+open" "openssl enc" "ring/ossl"
for cipher in aes-128-gcm aes-256-gcm; do
    for size in 64 1024 16384; do
        seal=$(echo "$figures" | awk -v c="$cipher" -v s="$size" '$2 == c && $3 == "seal" && $4 == s { print $6 }')
        both=$(echo "$figures" | awk -v c="$cipher" -v s="$size" '$2 == c && $3 == "seal+open" && $4 == s { print $6 }')
        o=$(ossl "$cipher" "$size")
        ratio=$(awk -v a="$seal" -v b="$o" 'BEGIN { if (b > 0) printf "%.2f×", a / b; else print "?" }')
        printf '%-12s %6s B | %7s MB/s %7s MB/s | %7s MB/s %8s\n' "$cipher" "$size" "$seal" "$both" "$o" "$ratio"
    done
done
echo "$figures" | grep handshake | sed 's/^figure: //'
