#!/usr/bin/env bash
# The main job: a sample game server, the gateway and simulated players on
# loopback, with what flows shown live. Stops by itself after DURATION
# seconds (default 20); Ctrl-C stops it earlier. Everything it started is
# stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${DURATION:-20}"
PLAYERS="${PLAYERS:-9}"

./scripts/setup.sh
say() { printf '\033[1m[demo]\033[0m %s\n' "$*"; }

say "building (release)…"
cargo build --release --quiet -p portcullis-dataplane -p portcullis-sample-game-server -p portcullis-benches -p portcullis-control
bin=target/release
pids=()
cleanup() {
    # The gateway first (it tells its clients), then the game server.
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill -TERM "${pids[$i]}" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    done
}
trap cleanup EXIT

$bin/portcullisctl check-config config/portcullis.toml
say "starting the sample game server on 127.0.0.1:9000"
$bin/portcullis-sample-game-server --listen 127.0.0.1:9000 > >(sed -u 's/^/  [game] /') 2>&1 &
pids+=($!)
say "starting the gateway (kernel sockets) with config/portcullis.toml"
$bin/portcullis-dataplane --config config/portcullis.toml --io kernel --status-every 5 > >(sed -u 's/^/  [gateway] /') 2>&1 &
pids+=($!)
for _ in $(seq 50); do
    (echo >/dev/tcp/127.0.0.1/7000) 2>/dev/null && break
    sleep 0.1
done
say "$PLAYERS simulated players for $DURATION s"
$bin/portcullis-load --scenario demo --gateway 127.0.0.1:7000 --clients "$PLAYERS" --duration "$DURATION"
say "a short load run through the same gateway:"
$bin/portcullis-load --gateway 127.0.0.1:7000 --clients 100 --duration 3 --warmup 1
say "stopping (the gateway kicks every client with a reconnect notice on SIGTERM)"
