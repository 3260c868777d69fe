#!/usr/bin/env bash
# XDP against nftables on the same drops, and threat-feed load times (root).
#
# Builds a network namespace with a veth pair bgen–bgw, generates a feed of
# FEED_ENTRIES (default 100 000) non-overlapping IPv4 ranges, then runs
# portcullis-feed-bench (benches/src/bin/portcullis-feed-bench.rs, which
# documents the method):
#   1. feed load: parse, first sync, resync unchanged, 1 % changed, memory
#      per entry;
#   2. CPU per frame with traffic generated inside the kernel
#      (BPF_PROG_TEST_RUN + BPF_F_TEST_XDP_LIVE_FRAMES, an XDP_TX program on
#      bgen): the generator alone, a bare XDP_DROP on bgw, the Portcullis
#      program dropping by blocklist and by the feed, XDP_PASS followed by
#      an nftables drop (a plain rule and an interval set of the same
#      ranges, at prerouting and at netdev ingress), and what the Portcullis
#      program costs passed frames with and without the feed.
# The namespace (and with it the veth pair and its nft tables), the pins
# and the temporary files go on exit, failure included.
#
# Environment: FRAMES (per run, default 1000000), RUNS (per case, default 5),
# FEED_ENTRIES, CPU (the sender's CPU, default 1).
set -euo pipefail
cd "$(dirname "$0")/../.."
if [[ $EUID -ne 0 ]]; then
    echo "needs root (network namespaces, XDP, nftables)" >&2
    exit 1
fi
for tool in ip nft; do
    command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 1; }
done
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
cargo build --release --quiet -p portcullis-benches --bin portcullis-feed-bench
bench=$PWD/target/release/portcullis-feed-bench

ns=pcbench-$$
pins=/sys/fs/bpf/portcullis-feedbench-$$
tmp=$(mktemp -d)
cleanup() {
    ip netns del "$ns" 2>/dev/null || true
    rm -rf "$pins" "$pins-load" "$tmp"
}
trap cleanup EXIT INT TERM

ip netns add "$ns"
ip -n "$ns" link add bgen address 02:00:00:00:00:01 type veth peer name bgw address 02:00:00:00:00:02
ip -n "$ns" addr add 10.99.0.2/24 dev bgen
ip -n "$ns" addr add 10.99.0.1/24 dev bgw
ip -n "$ns" link set lo up
ip -n "$ns" link set bgen up
ip -n "$ns" link set bgw up

feed=$tmp/feed.netset
"$bench" gen-feed --out "$feed" --count "${FEED_ENTRIES:-100000}"
echo "== feed load ($(grep -vc '^#' "$feed") ranges) =="
"$bench" load --feed "$feed" --pin-dir "$pins-load" --runs "${RUNS:-5}"
echo
echo "== XDP against nftables =="
"$bench" live --netns "$ns" --pin-dir "$pins" --feed "$feed" \
    --frames "${FRAMES:-1000000}" --runs "${RUNS:-5}" --cpu "${CPU:-1}"
