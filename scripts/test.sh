#!/usr/bin/env bash
# Runs every test of the workspace: unit tests of the sans-IO core with
# simulated time, codec and config tests, end-to-end tests over loopback,
# CLI and load-driver tests, and (as root) the XDP filter and the AF_XDP and
# DPDK dataplanes on the veth harness.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
# The AF_XDP and DPDK backends are cargo features (one builds libxdp from C,
# the other links the system's DPDK); the tests cover them too.
cargo test --workspace --locked --features portcullis-control/afxdp,portcullis-control/dpdk
