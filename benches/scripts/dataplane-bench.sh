#!/usr/bin/env bash
# The dataplanes side by side on the veth harness (root; ./scripts/setup.sh
# first), players behind the harness's router from 2 000 addresses. Same
# players (the load driver in the players' namespace: for each count in
# CLIENTS, that many connections, closed loop, 64-byte payloads), same
# machine, one run each:
#
#   tcp afxdp    gateway on AF_XDP, TCP in userspace → sample game server (ECHO)
#   tcp kernel   gateway on kernel sockets (epoll)   → sample game server (ECHO)
#   tcp dpdk     gateway on DPDK (net_af_xdp vdev), TCP in userspace → ECHO
#   tcp haproxy  HAProxy (Debian) in TCP mode        → byte-echo server
#   udp …        the gateway's UDP echo service on each of its backends
#
# For each: messages/s, p50/p99, the dataplane process's CPU seconds (user +
# system, /proc/PID/stat) and the whole machine's busy CPU seconds
# (/proc/stat: includes the softirq work the kernel charges to whichever task
# runs, and the load driver, which is the same for every TCP row), over the
# measured seconds only, with messages per CPU second of both.
#
# TRANSPORTS (default "kcp quic") adds rows "kcp IO" and "quic IO" per
# gateway backend: the same players over KCP and QUIC listeners (UDP taken
# straight from the rings on the bypass backends).
#
# Everything it starts is removed on exit. DURATION (s, default 6),
# CLIENTS (default "50 1000 10000") and BACKENDS (default "afxdp kernel dpdk
# haproxy") can be set from the environment; ENCRYPT=1 adds a row "tcp IO
# enc" per gateway backend with encrypted sessions (portcullis-load
# --encrypt: X25519 at login, AES-128-GCM on every frame both ways).
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION="${DURATION:-6}"
ENCRYPT="${ENCRYPT:-0}"
CLIENTS="${CLIENTS:-50 1000 10000}"
BACKENDS="${BACKENDS:-afxdp kernel dpdk haproxy}"
TRANSPORTS="${TRANSPORTS:-kcp quic}"
command -v haproxy >/dev/null ||
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends haproxy >/dev/null
FEATURES=portcullis-dataplane/afxdp,portcullis-dataplane/dpdk
. benches/scripts/routed-harness.sh
ip netns exec "$gw" "$bin/portcullis-sample-game-server" --listen 127.0.0.1:9000 >/dev/null 2>&1 &
ip netns exec "$gw" "$bin/portcullis-load" --scenario serve-echo --listen 127.0.0.1:9100 >/dev/null 2>&1 &
sleep 0.5
# One worker; no rate limit in the way of a closed loop.
gateway_config "${NO_PLAYER_RATES[@]}"
. scripts/udp-listeners.sh
udp_listeners "$tmp" >> "$tmp/gateway.toml"
cat > "$tmp/haproxy.cfg" <<CFG
global
    nbthread 1
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend players
    bind 10.77.0.1:7000
    default_backend echo
backend echo
    server echo 127.0.0.1:9100
CFG

# measure NAME PID LOAD-ARGS…: the load driver in the players' namespace;
# it reads the dataplane's and the machine's CPU time over the measured
# seconds only (not while its players connect).
measure() {
    local name=$1 pid=$2; shift 2
    local out
    out=$(ip netns exec "$players" "$bin/portcullis-load" --clients "$clients" --duration "$DURATION" --warmup 1 \
        --harness-sources "$SOURCES" --cpu-pid "$pid" "$@" 2>/dev/null) ||
        { echo "$name: the load driver failed: $out" >&2; return 1; }
    echo "$out" | awk -v n="$name" '{
            for (i = 1; i <= NF; i++) {
                if ($i == "msg/s") rate = $(i - 1)
                if ($i == "p50") p50 = $(i + 1)
                if ($i == "p99") p99 = $(i + 1)
                if ($i == "trips,") msgs = substr($(i - 2), 2)
                if ($i == "cpu") c = $(i + 1)
                if ($i == "machine") m = $(i + 1)
            }
            printf "%-12s %7.0f msg/s  p50 %6d µs  p99 %7d µs | dataplane %5.2f CPU-s %7.0f msg/CPU-s | machine %5.2f CPU-s %7.0f msg/CPU-s\n",
                n, rate, p50, p99, c, msgs / c, m, msgs / m }'
}

for clients in $CLIENTS; do
echo "== $clients players from $SOURCES addresses behind a router, closed loop, 64-byte messages, $DURATION s each, one dataplane worker"
for io in $BACKENDS; do
    [ "$io" = haproxy ] && continue
    # DPDK's net_af_xdp driver attaches an XDP program of its own.
    if [ "$io" = dpdk ]; then
        "$bin/portcullisctl" filter --pin-dir "$pin" detach --iface veth-g --netns "$gw" >/dev/null
    else
        "$bin/portcullisctl" filter --pin-dir "$pin" attach --iface veth-g --netns "$gw" >/dev/null
    fi
    "$bin/portcullis-dataplane" --netns "$gw" --config "$tmp/gateway.toml" --io "$io" --status-every 0 >/dev/null 2>&1 &
    gateway=$!
    sleep 1
    measure "tcp $io" "$gateway" --gateway 10.77.0.1:7000 --secret portcullis-demo-secret-change-me
    [ "$ENCRYPT" = 1 ] &&
        measure "tcp $io enc" "$gateway" --gateway 10.77.0.1:7000 --secret portcullis-demo-secret-change-me --encrypt
    for t in $TRANSPORTS; do
        port=$([ "$t" = kcp ] && echo 7010 || echo 7011)
        measure "$t $io" "$gateway" --gateway "10.77.0.1:$port" --transport "$t" --ca "$tmp/cert.pem" \
            --secret portcullis-demo-secret-change-me
    done
    [ "$clients" -le 1000 ] && measure "udp $io" "$gateway" --scenario udp-echo --gateway 10.77.0.1:7100
    kill -TERM "$gateway"
    wait "$gateway" 2>/dev/null || true
done
case " $BACKENDS " in *" haproxy "*)
    ip netns exec "$gw" haproxy -f "$tmp/haproxy.cfg" -db >/dev/null 2>&1 &
    proxy=$!
    sleep 1
    measure "tcp haproxy" "$proxy" --scenario raw-echo --gateway 10.77.0.1:7000
    kill "$proxy"
    wait "$proxy" 2>/dev/null || true
esac
done
