#!/usr/bin/env bash
# Latency Portcullis adds at a realistic load (root; ./scripts/setup.sh
# first): PLAYERS (default 1 000) players behind the veth harness's router
# from 2 000 addresses, open loop at half the closed-loop maximum, one
# dataplane worker on AF_XDP and on kernel sockets.
#
# For each backend: the closed-loop maximum through the gateway (echo via
# the sample game server), then an open loop at half of it — latency counted
# from when each message was due if the previous round trip held it up, else
# from when it was sent (the driver's timer wakes up to 1 ms late) — and the
# same clients at the same rate
# straight to a byte-echo server on the gateway side (kernel sockets), so
# the difference is the latency the gateway path adds (gateway and game
# server hop).
#
# Everything it starts is removed on exit. DURATION (s, default 8).
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION="${DURATION:-8}"
PLAYERS="${PLAYERS:-1000}"
. benches/scripts/routed-harness.sh
ip netns exec "$gw" "$bin/portcullis-sample-game-server" --listen 127.0.0.1:9000 >/dev/null 2>&1 &
# The direct path: a byte-echo server the players reach through the router.
ip netns exec "$gw" "$bin/portcullis-load" --scenario serve-echo --listen 10.77.0.1:9100 >/dev/null 2>&1 &
sleep 0.5
gateway_config "${NO_PLAYER_RATES[@]}"

load() {
    ip netns exec "$players" "$bin/portcullis-load" --clients "$PLAYERS" --duration "$DURATION" --warmup 1 \
        --harness-sources "$SOURCES" "$@" 2>/dev/null
}
field() { awk -v k="$1" '{for (i = 1; i <= NF; i++) if ($i == k) print $(i + 1)}'; }

echo "== $PLAYERS players from $SOURCES addresses behind a router, 64-byte messages, one dataplane worker"
for io in afxdp kernel; do
    "$bin/portcullis-dataplane" --netns "$gw" --config "$tmp/gateway.toml" --io "$io" --status-every 0 >/dev/null 2>&1 &
    gateway=$!
    sleep 1
    closed=$(load --gateway 10.77.0.1:7000)
    max=$(echo "$closed" | awk '{for (i = 1; i <= NF; i++) if ($i == "msg/s") {print int($(i - 1)); exit}}')
    rate=$((max / 2))
    via=$(load --gateway 10.77.0.1:7000 --rate "$rate")
    direct=$(load --scenario raw-echo --gateway 10.77.0.1:9100 --rate "$rate")
    printf '%-7s closed-loop max %6d msg/s; open loop at %6d msg/s:\n' "$io" "$max" "$rate"
    for what in via direct; do
        line=${!what}
        printf '        %-16s p50 %6d µs  p99 %6d µs  p999 %6d µs\n' \
            "$([ $what = via ] && echo 'via the gateway' || echo 'straight to echo')" \
            "$(echo "$line" | field p50)" "$(echo "$line" | field p99)" "$(echo "$line" | field p999)"
    done
    printf '        %-16s p50 %6d µs  p99 %6d µs  p999 %6d µs\n' "added" \
        $(($(echo "$via" | field p50) - $(echo "$direct" | field p50))) \
        $(($(echo "$via" | field p99) - $(echo "$direct" | field p99))) \
        $(($(echo "$via" | field p999) - $(echo "$direct" | field p999)))
    kill -TERM "$gateway"
    wait "$gateway" 2>/dev/null || true
done
