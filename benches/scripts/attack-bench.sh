#!/usr/bin/env bash
# Attacks on loopback, no root needed: the sample game server
# (127.0.0.1:9000) and `portcullis-dataplane --io kernel` with
# config/portcullis.toml (127.0.0.1:7000-7003), then portcullis-attack: an
# idle baseline and six attacks (pre-login junk that is never read, trickle,
# partial frames, descriptor exhaustion, ACK junk from the players' own
# address, recipient spam), 20 legitimate players playing through all of
# them. One row per phase: the gateway's RSS and open descriptors, the
# players' messages lost and p99 latency against the baseline, and the
# targets met (see benches/src/bin/portcullis-attack.rs). Then the gateway's
# last status lines (its refusal counters).
#
# Everything it starts is stopped on exit. PHASE_SECS (default 12) and
# QUICK=1 (3-s phases, a tenth of the connections) can be set from the
# environment; further arguments go to the driver (e.g. --phases nat-junk).
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --quiet -p portcullis-dataplane -p portcullis-sample-game-server -p portcullis-benches
bin=$PWD/target/release
tmp=$(mktemp -d)
pids=()
cleanup() {
    # The gateway first (it tells its clients, then exits), then the game server.
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        kill -TERM "${pids[$i]}" 2>/dev/null || continue
        for _ in $(seq 70); do kill -0 "${pids[$i]}" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "${pids[$i]}" 2>/dev/null || true
        wait "${pids[$i]}" 2>/dev/null || true
    done
    rm -rf "$tmp"
}
trap cleanup EXIT

listening() { (echo > "/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for port in 9000 7000 7001 7002 7003; do
    if listening "$port"; then
        echo "something already listens on 127.0.0.1:$port: stop it first" >&2
        exit 1
    fi
done
# wait_port PORT PID LOG: until PORT listens (10 s at most), while PID runs.
wait_port() {
    for _ in $(seq 100); do
        listening "$1" && return 0
        kill -0 "$2" 2>/dev/null || break
        sleep 0.1
    done
    echo "nothing listens on 127.0.0.1:$1; its log:" >&2
    cat "$3" >&2
    return 1
}

# Two CPUs or more: the gateway, the game server and the players on the
# last CPU, the attackers (and the kernel work of their system calls) on
# the first, so that what the attack costs this machine is not charged to
# the gateway; PIN=0 turns that off.
last_cpu=$(($(nproc) - 1))
pin=()
if [ "${PIN:-1}" = 1 ] && [ "$last_cpu" -ge 1 ]; then
    pin=(taskset -c "$last_cpu")
fi
"${pin[@]}" "$bin/portcullis-sample-game-server" --listen 127.0.0.1:9000 >"$tmp/game.log" 2>&1 &
pids+=($!)
wait_port 9000 $! "$tmp/game.log"
"${pin[@]}" "$bin/portcullis-dataplane" --config config/portcullis.toml --io kernel --status-every 1 >"$tmp/gateway.log" 2>&1 &
gateway=$!
pids+=("$gateway")
wait_port 7000 "$gateway" "$tmp/gateway.log"

args=(--gateway 127.0.0.1:7000 --gateway-pid "$gateway")
[ "${QUICK:-0}" = 1 ] && args+=(--quick)
[ -n "${PHASE_SECS:-}" ] && args+=(--phase-secs "$PHASE_SECS")
[ ${#pin[@]} -gt 0 ] && args+=(--players-cpu "$last_cpu" --attack-cpu 0)
if ! "$bin/portcullis-attack" "${args[@]}" "$@"; then
    echo "the attack driver failed; the gateway's log ends with:" >&2
    tail -n 20 "$tmp/gateway.log" >&2
    exit 1
fi
echo "the gateway's counters at the end (totals; rates over its last second):"
sed 's/\x1b\[[0-9;]*m//g' "$tmp/gateway.log" | grep -E "connections .* sessions|before login:" | tail -n 2 | sed 's/^/  /'
