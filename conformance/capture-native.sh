#!/usr/bin/env bash
# Rewrites conformance/captures/native-sdk-*.jsonl: what Microsoft's native Speech SDK (the
# Python package azure-cognitiveservices-speech, pinned below) sends for the same work as
# capture.mjs. Not run in CI (a 40 MB native wheel); run it by hand when moving to a new SDK
# version, then `cargo test -p speech-azure --test wire` and commit both.
#
# Usage: bash conformance/capture-native.sh
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
sdk_version="1.53.0"
venv="${NATIVE_SDK_VENV:-$root/target/native-sdk-venv}"

if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q "azure-cognitiveservices-speech==$sdk_version"

(cd "$root" && cargo build --quiet -p speech-emulator --bin speech-emulator)
exe="$root/target/debug/speech-emulator"

work="$(mktemp -d)"
emu_pid=""
cleanup() {
  if [ -n "$emu_pid" ] && kill -0 "$emu_pid" 2>/dev/null; then
    kill -TERM "$emu_pid" 2>/dev/null || true
    wait "$emu_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

RUST_LOG="${RUST_LOG:-warn}" "$exe" --plain --port 0 --key conformance-key --capture \
  >"$work/stdout" 2>"$work/stderr" &
emu_pid=$!
url=""
for _ in $(seq 300); do
  if line="$(head -n 1 "$work/stdout" 2>/dev/null)" && [[ "$line" == "speech-emulator listening on "* ]]; then
    url="${line#speech-emulator listening on }"
    break
  fi
  sleep 0.1
done
[ -n "$url" ] || { echo "capture-native: the emulator printed no address" >&2; cat "$work/stderr" >&2; exit 1; }

EMULATOR_URL="ws://${url#http://}" EMULATOR_KEY=conformance-key \
  "$venv/bin/python" "$here/capture_native.py" "$here/captures"
echo "captures/native-sdk-*.jsonl rewritten; run cargo test -p speech-azure --test wire, then commit"
