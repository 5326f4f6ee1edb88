#!/usr/bin/env bash
# The whole test suite: set-up, formatting, lints as errors, then every test with the
# expensive invariant checks turned on. CI runs exactly this (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Real model weights for the AI tests, cached outside the checkout (idempotent).
bash scripts/fetch-models.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
mkdir -p target
FEATURES=(--features fieldmesh-channel/slow-assertions)
cargo test --workspace --exclude fieldmesh-tests --locked "${FEATURES[@]}" 2>&1 | tee target/test-output.txt
# The multi-process durability tests print what they checked (kills, envelopes).
cargo test -p fieldmesh-tests --locked -- --nocapture 2>&1 | tee -a target/test-output.txt
# Print one summary line that counts every test binary's results.
awk '/^test result:/ { p += $4; f += $6; i += $8 } END { printf "%d passed, %d failed\n", p, f }' target/test-output.txt
