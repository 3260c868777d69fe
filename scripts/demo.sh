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
# Both ways, the control plane (portcullis-control) manages the gateway while
# the players play: portcullisctl shows the status, kicks a player, pushes a
# maintenance notice, drains and undrains the game server and (on the
# harness) blocks a flooding source at the NIC for 30 s, while `portcullisctl
# watch` prints the events.
#
# Stops by itself after DURATION seconds of play (default 25); everything it
# started is stopped and removed on exit, Ctrl-C included.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${DURATION:-25}"
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
    rm -rf "$ctl_dir"
}
trap cleanup EXIT

# The control plane for the dataplane whose agent socket is $1 (name $2),
# with a fresh operator token; portcullisctl finds both in the environment.
ctl_dir=$(mktemp -d /tmp/portcullis-demo.XXXXXX)
start_control() { # agent-socket node-name pin-dir
    PORTCULLIS_ADMIN_TOKEN=$("$bin/portcullisctl" secret)
    export PORTCULLIS_ADMIN_TOKEN PORTCULLIS_TOKEN=$PORTCULLIS_ADMIN_TOKEN PORTCULLIS_CONTROL=http://127.0.0.1:7400
    cat > "$ctl_dir/control.toml" <<EOT
[api]
listen = "127.0.0.1:7400"
[[api.tokens]]
name = "demo"
token_env = "PORTCULLIS_ADMIN_TOKEN"
role = "admin"
[metrics]
listen = "127.0.0.1:9464"
[[dataplanes]]
name = "$2"
socket = "$1"
[filter]
pin_dir = "$3"
EOT
    say "starting the control plane: admin API on 127.0.0.1:7400, metrics on http://127.0.0.1:9464/metrics"
    "$bin/portcullis-control" --config "$ctl_dir/control.toml" > >(sed -u 's/^/  [control] /') 2>&1 &
    pids+=($!)
    wait_port "" 127.0.0.1 7400
}

# Prometheus' view (bash's /dev/tcp: no curl needed).
scrape() {
    exec 3<>/dev/tcp/127.0.0.1/9464
    printf 'GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3
    cat <&3
    exec 3<&-
}

# What an operator does while the players play.
operate() { # game-server-addr second-game-server-addr
    ctl() { "$bin/portcullisctl" "$@" | sed -u 's/^/  [ctl] /'; }
    "$bin/portcullisctl" watch --kind kick --kind backend_drain --kind backend_undrain --kind filter_block \
        | sed -u 's/^/  [watch] /' &
    pids+=($!) # until the end: it shows the block below too
    say "portcullisctl status"
    ctl status
    say "portcullisctl sessions list --page-size 4"
    ctl sessions list --page-size 4
    say "portcullisctl kick --user player-8 --reason 'cheating (demo)'"
    ctl kick --user player-8 --reason "cheating (demo)"
    say "portcullisctl push --all --cmd 1500 --payload 'maintenance in 10 minutes'"
    ctl push --all --cmd 1500 --payload "maintenance in 10 minutes"
    say "portcullisctl backends add game $2 (a second game server, live)"
    ctl backends add game "$2"
    sleep 1
    say "portcullisctl backends drain game $1 (players who used it stay; the others go to $2)"
    ctl backends drain game "$1"
    sleep 2
    ctl backends undrain game "$1"
    say "metrics: $(scrape | grep -c '^portcullis_') samples on http://127.0.0.1:9464/metrics, e.g."
    scrape | grep -E '^portcullis_(sessions|users|logins_total)' | sed 's/^/  [metrics] /'
}

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
    "$bin/portcullisctl" filter --pin-dir "$pin" port add udp:7000 tcp:7000 tcp:7001 tcp:7002 tcp:7003 udp:7010 udp:7011 >/dev/null
    "$bin/portcullisctl" filter --pin-dir "$pin" rate --udp 2000/4000 --syn 50/100
    # The harness config, plus a KCP and a QUIC listener (self-signed certificate).
    . scripts/udp-listeners.sh
    { cat config/harness.toml; udp_listeners "$ctl_dir"; } > "$ctl_dir/harness.toml"
    "$bin/portcullisctl" check-config "$ctl_dir/harness.toml"
    say "starting the sample game server (gateway side, 127.0.0.1:9000)"
    ip netns exec "$gw" "$bin/portcullis-sample-game-server" --listen 127.0.0.1:9000 > >(sed -u 's/^/  [game] /') 2>&1 &
    pids+=($!)
    say "starting the gateway: AF_XDP on veth-g queue 0, TCP in userspace on 10.77.0.1:7000-7003, KCP on :7010, QUIC on :7011"
    "$bin/portcullis-dataplane" --netns "$gw" --config "$ctl_dir/harness.toml" --io afxdp --status-every 5 \
        > >(sed -u 's/^/  [gateway] /') 2>&1 &
    pids+=($!)
    wait_port "$players" 10.77.0.1 7000
    say "$PLAYERS simulated players (players' namespace) for $DURATION s; floods start after 5 s"
    ip netns exec "$players" "$bin/portcullis-load" --scenario demo --gateway 10.77.0.1:7000 \
        --clients "$PLAYERS" --duration "$DURATION" &
    play=$!
    start_control /run/portcullis/portcullis-harness.sock portcullis-harness "$pin"
    ip netns exec "$gw" "$bin/portcullis-sample-game-server" --listen 127.0.0.1:9001 >/dev/null 2>&1 &
    pids+=($!)
    sleep 2
    operate 127.0.0.1:9000 127.0.0.1:9001
    say "a UDP flood from 10.77.0.40 and a SYN flood from 64 spoofed sources hit the gateway ports"
    "$bin/portcullis-harness" flood --name "$harness" --source 10.77.0.40 --count 300000 --rate 100000
    "$bin/portcullis-harness" flood --name "$harness" --kind syn --source 198.51.100.1 --sources 64 --count 100000 --rate 50000
    say "the filter, after the floods (the players above kept playing):"
    "$bin/portcullisctl" filter --pin-dir "$pin" status --top 5 | sed 's/^/  [xdp] /'
    say "portcullisctl filter block add 10.77.0.40/32 --ttl 30s (through control), then the same flood again:"
    "$bin/portcullisctl" filter block add 10.77.0.40/32 --ttl 30s | sed 's/^/  [ctl] /'
    "$bin/portcullis-harness" flood --name "$harness" --source 10.77.0.40 --count 100000 --rate 100000
    "$bin/portcullisctl" filter status --top 0 | grep -E "verdicts|blocked" | sed 's/^/  [xdp] /'
    for t in kcp quic; do
        port=$([ "$t" = kcp ] && echo 7010 || echo 7011)
        say "50 more players over $t (UDP, straight from the AF_XDP rings), echo for 3 s:"
        ip netns exec "$players" "$bin/portcullis-load" --gateway "10.77.0.1:$port" --transport "$t" \
            --ca "$ctl_dir/cert.pem" --clients 50 --duration 3 --warmup 1 2>/dev/null | sed "s/^/  [$t] /"
    done
    wait "$play"
else
    say "no root or network namespaces here: running on loopback without the XDP filter"
    "$bin/portcullisctl" check-config config/portcullis.toml
    say "starting the sample game server on 127.0.0.1:9000"
    "$bin/portcullis-sample-game-server" --listen 127.0.0.1:9000 > >(sed -u 's/^/  [game] /') 2>&1 &
    pids+=($!)
    # The shipped config, with its agent socket where any user may create it.
    sed "s|/run/portcullis/portcullis-1.sock|$ctl_dir/agent.sock|" config/portcullis.toml > "$ctl_dir/portcullis.toml"
    say "starting the gateway (kernel sockets, 2 workers) with config/portcullis.toml"
    "$bin/portcullis-dataplane" --config "$ctl_dir/portcullis.toml" --io kernel --status-every 5 > >(sed -u 's/^/  [gateway] /') 2>&1 &
    pids+=($!)
    wait_port "" 127.0.0.1 7000
    say "$PLAYERS simulated players for $DURATION s"
    "$bin/portcullis-load" --scenario demo --gateway 127.0.0.1:7000 --clients "$PLAYERS" --duration "$DURATION" &
    play=$!
    start_control "$ctl_dir/agent.sock" portcullis-1 /sys/fs/bpf/portcullis-demo-none
    "$bin/portcullis-sample-game-server" --listen 127.0.0.1:9001 >/dev/null 2>&1 &
    pids+=($!)
    sleep 2
    operate 127.0.0.1:9000 127.0.0.1:9001
    wait "$play"
    say "a short load run through the same gateway:"
    "$bin/portcullis-load" --gateway 127.0.0.1:7000 --clients 100 --duration 3 --warmup 1
fi
say "stopping (the gateway kicks every client with a reconnect notice on SIGTERM)"
