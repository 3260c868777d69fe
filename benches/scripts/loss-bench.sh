#!/usr/bin/env bash
# Transports under loss (root; ./scripts/setup.sh first): players behind the
# veth harness's router, which delays every packet DELAY_MS each way
# (default 30, so a 60 ms round trip) and drops LOSSES percent each way
# (default "0 1 5") — `portcullis-harness lossy`, a userspace netem (this
# kernel has no sch_netem; see tests/harness/src/lossy.rs), a closed-loop request/response game loop
# (PLAYERS players, default 50, each one echo through the sample game server
# at a time, 64-byte payloads) over each transport in TRANSPORTS (default
# "tcp kcp quic quic-dgram": quic-dgram echoes as QUIC datagrams both ways,
# the client resending a request unanswered after RESEND_MS, default 100,
# latency counted from its first send) on each dataplane backend in
# BACKENDS (default "kernel afxdp"). For each: messages/s, p50 / p99 / p999 and failed round trips.
#
# Everything it starts is removed on exit. DURATION (s, default 10).
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION="${DURATION:-10}"
PLAYERS="${PLAYERS:-50}"
DELAY_MS="${DELAY_MS:-30}"
LOSSES="${LOSSES:-0 1 5}"
TRANSPORTS="${TRANSPORTS:-tcp kcp quic quic-dgram}"
RESEND_MS="${RESEND_MS:-100}"
BACKENDS="${BACKENDS:-kernel afxdp}"
SOURCES="${SOURCES:-$PLAYERS}"
. benches/scripts/routed-harness.sh
router="$h-r"
ip netns exec "$gw" "$bin/portcullis-sample-game-server" --listen 127.0.0.1:9000 >/dev/null 2>&1 &
sleep 0.5
gateway_config "${NO_PLAYER_RATES[@]}"
. scripts/udp-listeners.sh
udp_listeners "$tmp" >> "$tmp/gateway.toml"
declare -A PORT=([tcp]=7000 [kcp]=7010 [quic]=7011 [quic-dgram]=7011)

# lossy PERCENT: the router delays and drops from now on (until unlossy).
lossy() {
    "$bin/portcullis-harness" lossy --name "$h" --delay-ms "$DELAY_MS" --loss "$1" --seed 7 >/dev/null 2>&1 &
    lossy_pid=$!
    sleep 0.5
}
unlossy() {
    kill -TERM "$lossy_pid"
    wait "$lossy_pid" 2>/dev/null || true
}

measure() {
    local name=$1 transport=$2 extra=()
    local out
    [ "$transport" = quic-dgram ] && extra=(--unreliable-resend-ms "$RESEND_MS")
    out=$(ip netns exec "$players" "$bin/portcullis-load" --clients "$PLAYERS" --duration "$DURATION" --warmup 2 \
        --harness-sources "$SOURCES" --gateway "10.77.0.1:${PORT[$transport]}" --transport "${transport%-dgram}" "${extra[@]}" \
        --ca "$tmp/cert.pem" --secret portcullis-demo-secret-change-me 2>&1 | tail -1) ||
        { echo "$name: the load driver failed: $out" >&2; return 0; }
    echo "$out" | awk -v n="$name" '{
            for (i = 1; i <= NF; i++) {
                if ($i == "msg/s") rate = $(i - 1)
                if ($i == "p50") p50 = $(i + 1)
                if ($i == "p99") p99 = $(i + 1)
                if ($i == "p999") p999 = $(i + 1)
                if ($i == "failed)") failed = $(i - 1)
            }
            printf "%-22s %7.0f msg/s  p50 %7d µs  p99 %8d µs  p999 %8d µs  failed %s\n", n, rate, p50, p99, p999, failed }'
}

for io in $BACKENDS; do
    "$bin/portcullis-dataplane" --netns "$gw" --config "$tmp/gateway.toml" --io "$io" --status-every 0 >/dev/null 2>&1 &
    gateway=$!
    sleep 1
    for loss in $LOSSES; do
        lossy "$loss"
        echo "== $io: $PLAYERS players behind a router, $DELAY_MS ms each way, $loss % loss each way, closed loop, $DURATION s"
        for t in $TRANSPORTS; do
            measure "$t $io loss $loss%" "$t"
        done
        unlossy
    done
    kill -TERM "$gateway"
    wait "$gateway" 2>/dev/null || true
done
