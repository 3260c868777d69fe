#!/usr/bin/env bash
# Runs every test of the workspace: unit tests of the sans-IO core with
# simulated time, codec and config tests, end-to-end tests over loopback,
# CLI and load-driver tests.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo test --workspace --locked
