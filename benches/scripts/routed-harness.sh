# Sourced by the benchmark scripts: builds the release binaries they need
# (FEATURES, default afxdp), brings up a routed veth harness with SOURCES
# player addresses (default 2 000), attaches the XDP filter with a pin
# directory of its own, and removes everything on exit (including what the
# script started in the background). Sets: bin, pin, tmp, h, gw, players;
# defines gateway_config.
SOURCES="${SOURCES:-2000}"
cargo build --release --quiet --features "${FEATURES:-portcullis-dataplane/afxdp}" -p portcullis-dataplane \
    -p portcullis-benches -p portcullis-control -p portcullis-harness -p portcullis-sample-game-server
bin=$PWD/target/release
pin=/sys/fs/bpf/portcullis-bench-$$
tmp=$(mktemp -d)
h=$("$bin/portcullis-harness" up --owner-pid $$ --routed --sources "$SOURCES" 2>/dev/null)
gw="$h-g"; players="$h-p"
cleanup() {
    kill $(jobs -p) 2>/dev/null || true
    sleep 0.5
    "$bin/portcullisctl" filter --pin-dir "$pin" purge >/dev/null 2>&1 || true
    "$bin/portcullis-harness" down --owner-pid $$ >/dev/null 2>&1 || true
    rmdir /var/run/dpdk/portcullis 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT
"$bin/portcullisctl" filter --pin-dir "$pin" attach --iface veth-g --netns "$gw" >/dev/null

# Edits for gateway_config that lift the per-session and per-user rates, for
# players that echo as fast as they can.
NO_PLAYER_RATES=('s/^session_rate = .*/session_rate = 1000000/' 's/^session_burst = .*/session_burst = 1000000/'
    's/^user_rate = .*/user_rate = 1000000/' 's/^user_burst = .*/user_burst = 1000000/')

# gateway_config [SED-EXPRESSION…]: $tmp/gateway.toml, the harness config
# with one worker and this harness's pin directory, edited further by the
# given sed expressions.
gateway_config() {
    local edits=(-e 's/^workers = 2/workers = 1/' -e "s|^pin_dir = .*|pin_dir = \"$pin\"|")
    for e in "$@"; do edits+=(-e "$e"); done
    sed "${edits[@]}" config/harness.toml > "$tmp/gateway.toml"
}
