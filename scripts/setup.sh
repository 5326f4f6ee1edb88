#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian machine: system packages and Rust components.
# Everything is cached outside the checkout (apt's cache, ~/.cargo, ~/.rustup).
set -euo pipefail

# Debian packages: the build (cmake, clang's libclang for whisper-rs's bindgen), the
# speech tests (espeak-ng speaks, sox resamples to 16 kHz mono) and the rule-based
# translation fallback (apertium with English<->Spanish).
DEB_PACKAGES=(pkg-config gcc g++ cmake libclang-dev espeak-ng sox apertium apertium-eng-spa)

missing=()
for p in "${DEB_PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found; install Rust with rustup first" >&2
  exit 1
fi
for c in rustfmt clippy; do
  if ! cargo "${c/rustfmt/fmt}" --version >/dev/null 2>&1; then
    echo "setup: adding rustup component $c"
    rustup component add "$c"
  fi
done
