#!/usr/bin/env bash
# Installs what building and testing Portcullis needs on a fresh Debian 12
# machine. Idempotent: does nothing that is already done.
# (protoc comes vendored through the protoc-bin-vendored crate; flatc is only
# needed to regenerate committed code, see proto/schema/regen-flatbuffers.sh.)
set -euo pipefail

say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

if ! command -v cargo >/dev/null 2>&1; then
    if [ -x "$HOME/.cargo/bin/cargo" ]; then
        export PATH="$HOME/.cargo/bin:$PATH"
    else
        echo "[setup] cargo is missing: install Rust (https://rustup.rs) first" >&2
        exit 1
    fi
fi

apt_install() {
    local missing=()
    for pkg in "$@"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    say "installing Debian packages: ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# A C toolchain for crates with build scripts.
apt_install gcc pkg-config
say "toolchain: $(cargo --version)"
