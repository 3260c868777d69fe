#!/usr/bin/env bash
# Echo through the gateway on the veth harness, DPDK backend (net_af_xdp
# vdev on veth-g, `[dpdk]` of config/harness.toml) against the kernel
# backend: the same players (50, closed loop, 64-byte payloads), the same
# game server; prints messages/s, latency, and the gateway process's CPU
# time for each. Root; run ./scripts/setup.sh first. Everything it starts is
# removed on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --quiet --features portcullis-dataplane/dpdk -p portcullis-dataplane -p portcullis-benches \
    -p portcullis-harness -p portcullis-sample-game-server
bin=$PWD/target/release
cfg=$(mktemp)
h=$("$bin/portcullis-harness" up --owner-pid $$)
gw="$h-g"; players="$h-p"
cleanup() {
    kill $(jobs -p) 2>/dev/null || true
    sleep 0.5
    "$bin/portcullis-harness" down --owner-pid $$ 2>/dev/null || true
    rmdir /var/run/dpdk/portcullis 2>/dev/null || true
    rm -f "$cfg"
}
trap cleanup EXIT
ip netns exec "$gw" "$bin/portcullis-sample-game-server" --listen 127.0.0.1:9000 >/dev/null 2>&1 &
sleep 0.5
# One worker each; no per-session rate limit in the way of a closed loop.
sed -e 's/^workers = 2/workers = 1/' -e 's/^session_rate = .*/session_rate = 1000000/' \
    -e 's/^session_burst = .*/session_burst = 1000000/' config/harness.toml > "$cfg"
for io in dpdk kernel; do
    "$bin/portcullis-dataplane" --netns "$gw" --config "$cfg" --io "$io" --status-every 0 >/dev/null 2>&1 &
    gateway=$!
    sleep 1
    before=$(awk '{print $14 + $15}' "/proc/$gateway/stat")
    started=$(date +%s%N)
    result=$(ip netns exec "$players" "$bin/portcullis-load" --gateway 10.77.0.1:7000 \
        --secret portcullis-demo-secret-change-me --clients 50 --duration 5 --warmup 1 2>/dev/null)
    after=$(awk '{print $14 + $15}' "/proc/$gateway/stat")
    ended=$(date +%s%N)
    echo "$io: $result"
    awk -v io="$io" -v c="$((after - before))" -v ns="$((ended - started))" \
        'BEGIN { printf "%s: gateway CPU %.2f s over %.1f s\n", io, c / 100, ns / 1e9 }'
    kill -TERM "$gateway"
    wait "$gateway" 2>/dev/null || true
done
