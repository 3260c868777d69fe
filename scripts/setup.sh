#!/usr/bin/env bash
# Installs what building and testing Portcullis needs on a fresh Debian 12
# machine, and says what it does. Idempotent: what is already there is kept.
#
# - a C toolchain and pkg-config for crates with build scripts;
# - iproute2 and nftables for the veth harness and the flood benchmarks;
# - the BPF toolchain of the XDP program (../shared/TOOLCHAIN.md): Debian's
#   rustc with a prebuilt BPF core, LLVM 22, bpftool, and bpf-linker built
#   for that LLVM into .tools/ (about a minute, once);
# - clang, m4, make, libelf-dev and zlib1g-dev, with which xsk-rs builds its
#   bundled libxdp/libbpf for the AF_XDP backend;
# - DPDK 22.11 (dpdk-dev, libdpdk-dev: headers, libraries found through
#   pkg-config, and the net_af_xdp driver) and libclang-dev, with which
#   bindgen generates its bindings, for the DPDK backend;
# - cargo-fuzz built into .tools/ (and g++, with which libfuzzer-sys builds
#   libFuzzer) for scripts/fuzz.sh;
# - prometheus, for promtool, with which control/tests/dashboard_check.rs
#   checks the Grafana dashboard's PromQL (skipped when absent);
# - bpffs mounted on /sys/fs/bpf (as root).
# protoc comes vendored through a crate; flatc is only needed to regenerate
# committed code (proto/schema/regen-flatbuffers.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

if ! command -v cargo >/dev/null 2>&1; then
    if [ -x "$HOME/.cargo/bin/cargo" ]; then
        export PATH="$HOME/.cargo/bin:$PATH"
    else
        echo "[setup] cargo is missing: install Rust (https://rustup.rs) first" >&2
        exit 1
    fi
fi

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

apt_install() {
    local missing=()
    for pkg in "$@"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    say "installing Debian packages: ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

apt_install gcc pkg-config iproute2 nftables \
    rustc-web cargo-web libstd-rust-web-dev-bpf llvm-22-dev bpftool \
    clang m4 make libelf-dev zlib1g-dev \
    dpdk-dev libdpdk-dev libclang-dev \
    g++ \
    prometheus \
    chromium

tools="$PWD/.tools"
if [ ! -x "$tools/bin/bpf-linker" ]; then
    say "building bpf-linker 0.13.0 for LLVM 22 into .tools/ (about a minute)"
    LLVM_PREFIX=/usr/lib/llvm-22 cargo install bpf-linker@0.13.0 --locked --quiet \
        --no-default-features --features llvm-22 --root "$tools"
fi

if [ ! -x "$tools/bin/cargo-fuzz" ]; then
    say "building cargo-fuzz 0.13.2 into .tools/ for scripts/fuzz.sh (about a minute)"
    cargo install cargo-fuzz@0.13.2 --locked --quiet --root "$tools"
fi

if [ "$(id -u)" -eq 0 ] && ! mountpoint -q /sys/fs/bpf; then
    say "mounting bpffs on /sys/fs/bpf"
    mount -t bpf bpf /sys/fs/bpf
fi
say "toolchain: $(cargo --version); BPF: $(/usr/bin/rustc --version), $("$tools/bin/bpf-linker" --version)"
