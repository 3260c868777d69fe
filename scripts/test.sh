#!/usr/bin/env bash
# Runs every test of the workspace: unit tests of the sans-IO core with
# simulated time, codec and config tests, end-to-end tests over loopback,
# CLI and load-driver tests, and (as root) the XDP filter and the AF_XDP
# dataplane on the veth harness — including the whole end-to-end suite a
# second time, unchanged, against the AF_XDP backend.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
# The AF_XDP backend is a cargo feature (it builds libxdp from C); the tests
# cover it too. Both runs share one build.
features=portcullis-control/afxdp,portcullis-tests/afxdp
cargo test --workspace --locked --features "$features"
if [ "$(id -u)" -eq 0 ]; then
    echo "== the end-to-end suite again, on the AF_XDP backend (veth harness, TCP in userspace)"
    PORTCULLIS_E2E_IO=afxdp cargo test --workspace --locked --features "$features" \
        --test loopback --test bad_input --test resilience
else
    echo "== skipping the end-to-end suite on AF_XDP: it needs root (network namespaces, XDP)"
fi
