#!/usr/bin/env bash
# Memory per idle player (root; ./scripts/setup.sh first): logged-in players
# that send nothing, behind the veth harness's router from 2 000 addresses,
# against one dataplane worker on AF_XDP and on kernel sockets, for each
# count in PLAYERS (default "10000 50000").
#
# The players are split over load-driver processes of at most 15 000
# connections each (the open-files limit is 20 000 per process). Reported:
# the dataplane process's RSS before and with the players, per player; and
# the kernel's socket memory (/proc/slabinfo: TCP, TCPv6 and socket inode
# objects; machine-wide: the players' own kernel sockets count on both rows,
# the gateway's only on the kernel row, so the difference between the rows
# is what kernel sockets cost the gateway).
#
# Everything it starts is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
PLAYERS="${PLAYERS:-10000 50000}"
PER_PROCESS=15000
. benches/scripts/routed-harness.sh
# One worker; idle players are not timed out while measured.
gateway_config 's/^heartbeat_timeout_ms = .*/heartbeat_timeout_ms = 600000/'

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
socket_slab_kib() { awk '$1 == "TCP" || $1 == "TCPv6" || $1 == "sock_inode_cache" {kib += $2 * $4 / 1024} END {printf "%d\n", kib}' /proc/slabinfo; }

for n in $PLAYERS; do
    echo "== $n idle logged-in players from $SOURCES addresses behind a router, one dataplane worker"
    for io in afxdp kernel; do
        if [ "$io" = kernel ] && [ $((n + 1000)) -gt "$(ulimit -Hn)" ]; then
            echo "kernel  skipped: one socket per player, and $n is beyond this machine's open-files limit ($(ulimit -Hn) per process)"
            continue
        fi
        "$bin/portcullis-dataplane" --netns "$gw" --config "$tmp/gateway.toml" --io "$io" --status-every 0 \
            >"$tmp/gateway.log" 2>&1 &
        gateway=$!
        sleep 1
        rss0=$(rss_kib "$gateway"); mem0=$(socket_slab_kib)
        started=$(date +%s)
        procs=$(( (n + PER_PROCESS - 1) / PER_PROCESS ))
        for ((k = 0; k < procs; k++)); do
            first=$((k * n / procs)); count=$(((k + 1) * n / procs - first))
            ip netns exec "$players" "$bin/portcullis-load" --scenario idle --clients "$count" --first "$first" \
                --harness-sources "$SOURCES" --hold 600 --gateway 10.77.0.1:7000 --gateway-pid "$gateway" \
                >"$tmp/load-$k.out" 2>"$tmp/load-$k.err" &
        done
        # Wait (bounded) until every driver has its sessions logged in.
        for ((k = 0; k < procs; k++)); do
            until grep -q '^ready' "$tmp/load-$k.out"; do
                if [ $(($(date +%s) - started)) -gt 600 ] || ! kill -0 "$gateway" 2>/dev/null; then
                    echo "$io: players not logged in within 600 s:" >&2
                    cat "$tmp"/load-*.err "$tmp/gateway.log" >&2
                    exit 1
                fi
                grep -q . "$tmp/load-$k.err" && grep -q "Error" "$tmp/load-$k.err" && { cat "$tmp/load-$k.err" >&2; exit 1; }
                sleep 1
            done
        done
        # Idle sockets give their buffer pages back after 2 s (RELEASE_AFTER).
        sleep 5
        rss1=$(rss_kib "$gateway"); mem1=$(socket_slab_kib)
        awk -v io="$io" -v n="$n" -v r0="$rss0" -v r1="$rss1" -v m0="$mem0" -v m1="$mem1" -v t=$(($(date +%s) - started)) 'BEGIN {
            printf "%-7s RSS %7.1f MiB -> %7.1f MiB: %6.0f bytes per player | kernel socket memory +%7.1f MiB (%5.0f bytes per player) | logged in within %d s\n",
                io, r0 / 1024, r1 / 1024, (r1 - r0) * 1024 / n, (m1 - m0) / 1024, (m1 - m0) * 1024 / n, t }'
        kill $(jobs -p | grep -v "^$gateway$") 2>/dev/null || true
        kill -TERM "$gateway"
        wait 2>/dev/null || true
    done
done
