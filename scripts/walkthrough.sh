#!/usr/bin/env bash
# A single-node walkthrough (plus a bundle carried by hand to a second node): what a field unit does, on
# 127.0.0.1 only: two nodes, a channel, urgent and routine traffic, threads, reactions,
# edits, a redaction, an Automerge export, a bundle carried by hand between the nodes,
# then the daemon with its HTTP API and live event stream.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --locked -q -p fieldmesh
FM="$PWD/target/debug/fieldmesh"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/fieldmesh-demo.XXXXXX")"
trap 'kill "${DAEMON:-}" 2>/dev/null || true; rm -rf "$WORK"' EXIT
export FIELDMESH_PROFILE=ci-loopback
alpha() { "$FM" --home "$WORK/alpha" "$@"; }
bravo() { "$FM" --home "$WORK/bravo" "$@"; }
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "Two field units get identities"
alpha init --name "ALPHA-1"
bravo init --name "BRAVO-2"
alpha id

say "ALPHA creates the company net and reports"
alpha channel create company-net
C1=$(alpha post company-net "Contact front, 3 vehicles moving north on MSR TAMPA, grid 38S MB 1234 5678" --precedence flash)
alpha post company-net "Fuel 70%, water 2 days, all personnel accounted for" --precedence routine >/dev/null
alpha react company-net "$C1" "👀" >/dev/null
alpha edit company-net "$C1" "Contact front, 4 vehicles moving north on MSR TAMPA, grid 38S MB 1240 5690" >/dev/null
WRONG=$(alpha post company-net "test test, ignore")
alpha redact company-net "$WRONG" >/dev/null
alpha read company-net

say "No network between them: ALPHA's traffic leaves on a USB stick (a bundle)"
alpha bundle export --out "$WORK/usb.fmb"
bravo bundle import "$WORK/usb.fmb"
bravo post company-net "Copy contact, BRAVO moving to support" --reply-to "$C1" --precedence immediate >/dev/null
bravo bundle export --out "$WORK/back.fmb" --channel company-net
alpha bundle import "$WORK/back.fmb"
say "Both replicas are identical"
diff <(alpha read company-net --json) <(bravo read company-net --json) && echo "ALPHA and BRAVO agree on $(alpha read company-net --json | grep -c '"id"') messages"
alpha channel export company-net --out "$WORK/company-net.automerge"

say "ALPHA runs its daemon; the CLI now goes through the localhost API"
alpha run --http 127.0.0.1:0 >/dev/null &
DAEMON=$!
for _ in $(seq 100); do [ -f "$WORK/alpha/daemon.json" ] && break; sleep 0.05; done
HTTP=$(sed -n 's/.*"http": "\(.*\)".*/\1/p' "$WORK/alpha/daemon.json")
echo "API at http://$HTTP/api/v1"
( curl -sN --max-time 3 "http://$HTTP/api/v1/events" | grep -m1 '^data:' | cut -c1-160 > "$WORK/event.txt" ) &
sleep 0.5
alpha post company-net "MEDEVAC request: 1 urgent casualty at grid 38S MB 1250 5700" --precedence flash >/dev/null
wait $! 2>/dev/null || true
echo "live event: $(cat "$WORK/event.txt")"
curl -s "http://$HTTP/api/v1/channels" | head -c 300; echo
kill "$DAEMON"; wait "$DAEMON" 2>/dev/null || true; DAEMON=""
say "Demo complete"
