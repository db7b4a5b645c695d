#!/usr/bin/env bash
# Conformance: Microsoft's JavaScript Speech SDK against the speech-emulator crate.
#
# Builds and starts `speech-emulator --plain --port 0 --capture`, reads the address it prints,
# installs the SDK (npm ci) if needed, runs `node --test` here, then records what the SDK sends
# for one synthesis and two recognitions (capture.mjs) and compares that with the committed
# reference in conformance/captures/, and stops the emulator. Exits non-zero if anything fails,
# including a capture that differs from the committed one (the SDK's wire traffic changed).
#
# Usage: bash conformance/run.sh [--update-captures]
#   --update-captures   rewrite conformance/captures/ from this run instead of comparing
#                       (then run `cargo test -p speech-azure --test wire` and commit both).
set -euo pipefail

update_captures=0
for arg in "$@"; do
  case "$arg" in
    --update-captures) update_captures=1 ;;
    *) echo "usage: bash conformance/run.sh [--update-captures]" >&2; exit 2 ;;
  esac
done

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
RUST_LOG="${RUST_LOG:-warn}" "$exe" --plain --port 0 --key "$key" --transcript "$transcript" --capture \
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
  exit "$status"
fi

echo "== capture: what the JS SDK sends (conformance/captures/)"
(cd "$here" && EMULATOR_URL="$ws_url" EMULATOR_KEY="$key" node capture.mjs "$work/captures") || {
  echo "conformance: the capture run FAILED (emulator log follows)" >&2
  tail -n 50 "$work/stderr" >&2
  exit 1
}
if [ "$update_captures" = 1 ]; then
  mkdir -p "$here/captures"
  cp "$work/captures/"*.jsonl "$here/captures/"
  echo "conformance: captures/ rewritten; run cargo test -p speech-azure --test wire, then commit"
elif ! diff -ru --exclude='native-sdk-*' "$here/captures" "$work/captures"; then
  echo "conformance: FAILED: the JS SDK's wire traffic differs from conformance/captures/ (diff above)." >&2
  echo "If the change is expected (e.g. a new SDK version), run: bash conformance/run.sh --update-captures" >&2
  echo "and then cargo test -p speech-azure --test wire, which compares speech-azure with it." >&2
  exit 1
else
  echo "captures match conformance/captures/"
fi
