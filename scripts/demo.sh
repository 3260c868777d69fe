#!/usr/bin/env bash
# The main job: Portcullis end to end, with what flows shown live.
#
# As root (with network namespaces): on the veth harness — the XDP flood
# filter attached to the gateway side, the AF_XDP dataplane (TCP terminated
# in userspace) and the sample game server there, simulated players in the
# players' namespace on the real Linux TCP stack, and floods that the filter
# cuts down while the players keep playing.
# Otherwise: the same gateway, game server and players on loopback.
#
# Stops by itself after DURATION seconds of play (default 20); everything it
# started is stopped and removed on exit, Ctrl-C included.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${DURATION:-20}"
PLAYERS="${PLAYERS:-9}"

./scripts/setup.sh
say() { printf '\033[1m[demo]\033[0m %s\n' "$*"; }

say "building (release)…"
cargo build --release --quiet --features portcullis-dataplane/afxdp -p portcullis-dataplane \
    -p portcullis-sample-game-server -p portcullis-benches -p portcullis-control -p portcullis-harness
bin=$PWD/target/release
pids=()
harness=""
pin=/sys/fs/bpf/portcullis-demo
cleanup() {
    # The gateway first (it tells its clients, then exits), then the game server.
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        kill -TERM "${pids[$i]}" 2>/dev/null || continue
        for _ in $(seq 60); do kill -0 "${pids[$i]}" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "${pids[$i]}" 2>/dev/null || true
    done
    if [ -n "$harness" ]; then
        "$bin/portcullisctl" filter --pin-dir "$pin" purge >/dev/null 2>&1 || true
        "$bin/portcullis-harness" down --owner-pid $$ 2>/dev/null || true
    fi
}
trap cleanup EXIT

wait_port() { # ns host port
    for _ in $(seq 50); do
        if [ -n "$1" ]; then ip netns exec "$1" bash -c "echo > /dev/tcp/$2/$3" 2>/dev/null && return 0
        else (echo > "/dev/tcp/$2/$3") 2>/dev/null && return 0; fi
        sleep 0.1
    done
    echo "[demo] nothing listens on $2:$3" >&2
    return 1
}

if "$bin/portcullis-harness" status >/dev/null 2>&1; then
    harness=$("$bin/portcullis-harness" up --owner-pid $$)
    gw="$harness-g"; players="$harness-p"
    say "veth harness $harness: players in $players (10.77.0.2, .10-.59), gateway side $gw (10.77.0.1)"
    "$bin/portcullisctl" filter --pin-dir "$pin" attach --iface veth-g --netns "$gw"
    "$bin/portcullisctl" filter --pin-dir "$pin" port add udp:7000 tcp:7000 tcp:7001 tcp:7002 tcp:7003 >/dev/null
    "$bin/portcullisctl" filter --pin-dir "$pin" rate --udp 2000/4000 --syn 50/100
    "$bin/portcullisctl" check-config config/harness.toml
    say "starting the sample game server (gateway side, 127.0.0.1:9000)"
    ip netns exec "$gw" "$bin/portcullis-sample-game-server" --listen 127.0.0.1:9000 > >(sed -u 's/^/  [game] /') 2>&1 &
    pids+=($!)
    say "starting the gateway: AF_XDP on veth-g queue 0, TCP in userspace, 10.77.0.1:7000-7003"
    "$bin/portcullis-dataplane" --netns "$gw" --config config/harness.toml --io afxdp --status-every 5 \
        > >(sed -u 's/^/  [gateway] /') 2>&1 &
    pids+=($!)
    wait_port "$players" 10.77.0.1 7000
    say "$PLAYERS simulated players (players' namespace) for $DURATION s; floods start after 5 s"
    ip netns exec "$players" "$bin/portcullis-load" --scenario demo --gateway 10.77.0.1:7000 \
        --clients "$PLAYERS" --duration "$DURATION" &
    play=$!
    sleep 5
    say "a UDP flood from 10.77.0.40 and a SYN flood from 64 spoofed sources hit the gateway ports"
    "$bin/portcullis-harness" flood --name "$harness" --source 10.77.0.40 --count 300000 --rate 100000
    "$bin/portcullis-harness" flood --name "$harness" --kind syn --source 198.51.100.1 --sources 64 --count 100000 --rate 50000
    say "the filter, after the floods (the players above kept playing):"
    "$bin/portcullisctl" filter --pin-dir "$pin" status --top 5 | sed 's/^/  [xdp] /'
    say "blocklisting 10.77.0.40 and flooding again:"
    "$bin/portcullisctl" filter --pin-dir "$pin" block add 10.77.0.40/32
    "$bin/portcullis-harness" flood --name "$harness" --source 10.77.0.40 --count 100000 --rate 100000
    "$bin/portcullisctl" filter --pin-dir "$pin" status --top 0 | grep -E "drop_|pass_" | sed 's/^/  [xdp] /'
    wait "$play"
else
    say "no root or network namespaces here: running on loopback without the XDP filter"
    "$bin/portcullisctl" check-config config/portcullis.toml
    say "starting the sample game server on 127.0.0.1:9000"
    "$bin/portcullis-sample-game-server" --listen 127.0.0.1:9000 > >(sed -u 's/^/  [game] /') 2>&1 &
    pids+=($!)
    say "starting the gateway (kernel sockets, 2 workers) with config/portcullis.toml"
    "$bin/portcullis-dataplane" --config config/portcullis.toml --io kernel --status-every 5 > >(sed -u 's/^/  [gateway] /') 2>&1 &
    pids+=($!)
    wait_port "" 127.0.0.1 7000
    say "$PLAYERS simulated players for $DURATION s"
    "$bin/portcullis-load" --scenario demo --gateway 127.0.0.1:7000 --clients "$PLAYERS" --duration "$DURATION"
    say "a short load run through the same gateway:"
    "$bin/portcullis-load" --gateway 127.0.0.1:7000 --clients 100 --duration 3 --warmup 1
fi
say "stopping (the gateway kicks every client with a reconnect notice on SIGTERM)"
