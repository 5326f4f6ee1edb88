#!/usr/bin/env bash
# The main job: a local mesh on 127.0.0.1 (three squads and a command post, one squad
# relayed and intermittent) with scripted field traffic, converging as you watch.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --locked -q -p fieldmesh
exec ./target/debug/fieldmesh --profile ci-loopback demo "$@"
