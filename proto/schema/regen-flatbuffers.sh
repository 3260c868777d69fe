#!/usr/bin/env bash
# Regenerates proto/src/codec/envelope_generated.rs from envelope.fbs.
set -euo pipefail
cd "$(dirname "$0")"
flatc --rust -o ../src/codec envelope.fbs
