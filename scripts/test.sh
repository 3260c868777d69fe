#!/usr/bin/env bash
# Runs every test of the workspace: unit tests of the sans-IO core with
# simulated time, codec and config tests, end-to-end tests over loopback,
# CLI and load-driver tests, and (as root) the XDP filter, the AF_XDP and
# DPDK dataplanes on the veth harness — and the whole end-to-end suite a
# second time, unchanged, against the AF_XDP backend. The end-to-end suite
# (loopback, bad input, resilience) runs again over each other transport
# (TRANSPORTS, default "quic kcp websocket"), on kernel sockets and as root
# on AF_XDP.
set -euo pipefail
cd "$(dirname "$0")/.."
# The AF_XDP and DPDK backends are cargo features (one builds libxdp from C,
# the other links the system's DPDK). clippy in .ci/run uses the same list.
features=portcullis-dataplane/afxdp,portcullis-dataplane/dpdk,portcullis-tests/afxdp
if [ "${1:-}" = "--features" ]; then
    echo "$features"
    exit 0
fi
TRANSPORTS="${TRANSPORTS:-quic kcp websocket}"
suite=(--test loopback --test bad_input --test resilience)
./scripts/setup.sh
echo "== the workspace with default features (what a plain \`cargo test\` runs)"
cargo test --workspace --locked
for t in $TRANSPORTS; do
    echo "== the end-to-end suite over $t (kernel sockets)"
    PORTCULLIS_E2E_TRANSPORT=$t cargo test --locked -p portcullis-tests "${suite[@]}"
done
if [ "$(id -u)" -eq 0 ]; then
    echo "== the AF_XDP and DPDK backends (features $features), and the end-to-end suite again on AF_XDP (veth harness, TCP in userspace)"
    PORTCULLIS_E2E_IO=afxdp cargo test --locked --features "$features" -p portcullis-dataplane -p portcullis-tests
    for t in $TRANSPORTS; do
        echo "== the end-to-end suite over $t on AF_XDP (veth harness)"
        PORTCULLIS_E2E_IO=afxdp PORTCULLIS_E2E_TRANSPORT=$t cargo test --locked --features "$features" -p portcullis-tests "${suite[@]}"
    done
    echo "== the control plane against a gateway on AF_XDP (veth harness)"
    PORTCULLIS_E2E_IO=afxdp cargo test --locked --features "$features" -p portcullis-control --test control_api
else
    echo "== the AF_XDP and DPDK backends (features $features); their tests on the veth harness skip: they need root"
    cargo test --locked --features "$features" -p portcullis-dataplane
fi
