#!/usr/bin/env bash
# Runs every test of the workspace: unit tests of the sans-IO core with
# simulated time, codec and config tests, end-to-end tests over loopback,
# CLI and load-driver tests, and (as root) the XDP filter, the AF_XDP and
# DPDK dataplanes on the veth harness — and the whole end-to-end suite a
# second time, unchanged, against the AF_XDP backend.
set -euo pipefail
cd "$(dirname "$0")/.."
# The AF_XDP and DPDK backends are cargo features (one builds libxdp from C,
# the other links the system's DPDK); the tests cover them too. Every run
# (clippy in .ci/run included) uses these, so they share one build.
features=portcullis-dataplane/afxdp,portcullis-dataplane/dpdk,portcullis-tests/afxdp
if [ "${1:-}" = "--features" ]; then
    echo "$features"
    exit 0
fi
./scripts/setup.sh
cargo test --workspace --locked --features "$features"
if [ "$(id -u)" -eq 0 ]; then
    echo "== the end-to-end suite again, on the AF_XDP backend (veth harness, TCP in userspace)"
    PORTCULLIS_E2E_IO=afxdp cargo test --workspace --locked --features "$features" \
        --test loopback --test bad_input --test resilience
else
    echo "== skipping the end-to-end suite on AF_XDP: it needs root (network namespaces, XDP)"
fi
