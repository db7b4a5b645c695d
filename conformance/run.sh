#!/usr/bin/env bash
# Conformance: Microsoft's JavaScript Speech SDK against the speech-emulator crate.
#
# Builds and starts `speech-emulator --plain --port 0`, reads the address it prints, installs
# the SDK (npm ci) if needed, runs `node --test` here, and stops the emulator. Exits non-zero
# if anything fails. Usage: bash conformance/run.sh
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
key="conformance-key"
transcript="hello world"

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "conformance: node/npm not found; trying apt-get" >&2
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null
  fi
  command -v node >/dev/null 2>&1 || { echo "conformance: Node.js is required" >&2; exit 1; }
fi

echo "== building speech-emulator"
(cd "$root" && cargo build --quiet -p speech-emulator --bin speech-emulator)
target_dir="$(cd "$root" && cargo metadata --format-version 1 --no-deps \
  | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).target_directory))')"
exe="$target_dir/debug/speech-emulator"
[ -x "$exe" ] || { echo "conformance: $exe not built" >&2; exit 1; }

if [ ! -d "$here/node_modules/microsoft-cognitiveservices-speech-sdk" ]; then
  echo "== npm ci"
  (cd "$here" && npm ci --no-audit --no-fund --loglevel=error)
fi

work="$(mktemp -d)"
emu_pid=""
cleanup() {
  if [ -n "$emu_pid" ] && kill -0 "$emu_pid" 2>/dev/null; then
    kill -TERM "$emu_pid" 2>/dev/null || true
    # Graceful shutdown is bounded inside the emulator; do not wait forever regardless.
    for _ in $(seq 50); do kill -0 "$emu_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$emu_pid" 2>/dev/null || true
    wait "$emu_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

echo "== starting speech-emulator"
RUST_LOG="${RUST_LOG:-warn}" "$exe" --plain --port 0 --key "$key" --transcript "$transcript" \
  >"$work/stdout" 2>"$work/stderr" &
emu_pid=$!

url=""
for _ in $(seq 300); do
  if line="$(head -n 1 "$work/stdout" 2>/dev/null)" && [[ "$line" == "speech-emulator listening on "* ]]; then
    url="${line#speech-emulator listening on }"
    break
  fi
  if ! kill -0 "$emu_pid" 2>/dev/null; then
    echo "conformance: the emulator exited early:" >&2
    cat "$work/stderr" >&2
    exit 1
  fi
  sleep 0.1
done
[ -n "$url" ] || { echo "conformance: the emulator printed no address" >&2; cat "$work/stderr" >&2; exit 1; }
ws_url="ws://${url#http://}"
echo "emulator at $ws_url"

echo "== node --test (microsoft-cognitiveservices-speech-sdk)"
status=0
(cd "$here" && EMULATOR_URL="$ws_url" EMULATOR_KEY="$key" EMULATOR_TRANSCRIPT="$transcript" node --test) || status=$?
if [ "$status" -ne 0 ]; then
  echo "conformance: FAILED (emulator log follows)" >&2
  tail -n 50 "$work/stderr" >&2
fi
exit "$status"
