#!/usr/bin/env bash
# Conformance: Microsoft's JavaScript Speech SDK against the speech-emulator crate, and
# through the speech-pool service (service.test.mjs) twice: with that emulator, over TLS,
# upstream (turns relayed), and on the service's mock backend (turns translated). Each
# service run also drives Microsoft's native Python SDK through it (python_sdk.py).
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
(cd "$root" && cargo build --quiet -p speech-emulator --bin speech-emulator -p service --bin speech-pool)
target_dir="$(cd "$root" && cargo metadata --format-version 1 --no-deps \
  | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).target_directory))')"
exe="$target_dir/debug/speech-emulator"
service_exe="$target_dir/debug/speech-pool"
[ -x "$exe" ] || { echo "conformance: $exe not built" >&2; exit 1; }

if [ ! -d "$here/node_modules/microsoft-cognitiveservices-speech-sdk" ]; then
  echo "== npm ci"
  (cd "$here" && npm ci --no-audit --no-fund --loglevel=error)
fi

# Microsoft's native Speech SDK for Python (python_sdk.py runs it through the service),
# pinned like the JS SDK, in a venv under the target directory. PyPI is one of CI's
# registries; a failed install fails the run.
py_sdk_version="1.53.0"
py_venv="$target_dir/python-sdk-venv"
if ! "$py_venv/bin/python" -c "import azure.cognitiveservices.speech as s; assert s.__version__ == '$py_sdk_version'" 2>/dev/null; then
  echo "== pip install azure-cognitiveservices-speech==$py_sdk_version"
  python3 -m venv "$py_venv"
  "$py_venv/bin/pip" install -q --disable-pip-version-check "azure-cognitiveservices-speech==$py_sdk_version"
fi

# Runs python_sdk.py against the running service; $1 says which run it is.
python_sdk() {
  echo "== python_sdk.py (Microsoft's native Python SDK through the service, $1)"
  local status=0
  (cd "$here" && SERVICE_URL="ws://127.0.0.1:$svc_port" SERVICE_KEY="$service_key" \
    EMULATOR_TRANSCRIPT="$transcript" timeout 300 "$py_venv/bin/python" python_sdk.py) || status=$?
  if [ "$status" -ne 0 ]; then
    echo "conformance: the Python SDK run ($1) FAILED (service log follows)" >&2
    tail -n 50 "$work/svc-stderr" >&2
    exit "$status"
  fi
}

work="$(mktemp -d)"
emu_pid=""
tls_pid=""
svc_pid=""
stop_pid() {
  local pid="$1"
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
}
cleanup() {
  stop_pid "$svc_pid"
  stop_pid "$tls_pid"
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

# Every test is bounded (--test-timeout, 2 min): an SDK that waits for ever fails the run
# with the test named, instead of holding CI until its limit.
echo "== node --test (microsoft-cognitiveservices-speech-sdk)"
status=0
(cd "$here" && EMULATOR_URL="$ws_url" EMULATOR_KEY="$key" EMULATOR_TRANSCRIPT="$transcript" node --test --test-timeout=120000 emulator.test.mjs) || status=$?
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

# The same SDK against the speech-pool service (its Azure-protocol endpoints), whose upstream
# is a second emulator over TLS: the SDK holds only the service's key.
echo "== starting speech-emulator (TLS) and speech-pool in front of it"
service_key="conformance-service-key"
RUST_LOG="${RUST_LOG:-warn}" "$exe" --port 0 --key "$key" --transcript "$transcript" \
  --cert-out "$work/ca.pem" >"$work/tls-stdout" 2>"$work/tls-stderr" &
tls_pid=$!
tls_url=""
for _ in $(seq 300); do
  if line="$(head -n 1 "$work/tls-stdout" 2>/dev/null)" && [[ "$line" == "speech-emulator listening on "* ]]; then
    tls_url="${line#speech-emulator listening on }"
    break
  fi
  kill -0 "$tls_pid" 2>/dev/null || { echo "conformance: the TLS emulator exited early" >&2; cat "$work/tls-stderr" >&2; exit 1; }
  sleep 0.1
done
[ -n "$tls_url" ] || { echo "conformance: the TLS emulator printed no address" >&2; exit 1; }
for _ in $(seq 50); do [ -s "$work/ca.pem" ] && break; sleep 0.1; done
# Starts speech-pool on a free port with the environment given as arguments (NAME=value ...),
# waits until /readyz answers 200, and sets svc_pid and svc_port.
start_service() {
  svc_port="$(node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})')"
  env "$@" SERVICE_API_KEY="$service_key" LISTEN_ADDR="127.0.0.1:$svc_port" \
    WARM_POOL_TTS_SIZE=2 WARM_POOL_STT_SIZE=1 RUST_LOG="${RUST_LOG:-warn}" \
    "$service_exe" >"$work/svc-stdout" 2>"$work/svc-stderr" &
  svc_pid=$!
  local ready=0
  for _ in $(seq 300); do
    if node -e 'fetch(process.argv[1]).then(r=>process.exit(r.status===200?0:1),()=>process.exit(1))' \
      "http://127.0.0.1:$svc_port/readyz"; then ready=1; break; fi
    kill -0 "$svc_pid" 2>/dev/null || { echo "conformance: speech-pool exited early" >&2; cat "$work/svc-stderr" >&2; exit 1; }
    sleep 0.1
  done
  [ "$ready" = 1 ] || { echo "conformance: speech-pool never became ready" >&2; tail -n 50 "$work/svc-stderr" >&2; exit 1; }
}

start_service SPEECH_BACKEND=azure AZURE_SPEECH_KEY="$key" AZURE_SPEECH_ENDPOINT="$tls_url" \
  AZURE_SPEECH_CA_CERT="$work/ca.pem"
echo "service at ws://127.0.0.1:$svc_port (upstream $tls_url)"

echo "== node --test service.test.mjs (the SDK through the service, relayed to the emulator)"
status=0
(cd "$here" && SERVICE_URL="ws://127.0.0.1:$svc_port" SERVICE_KEY="$service_key" SERVICE_BACKEND=azure \
  EMULATOR_HTTP="$tls_url" EMULATOR_TRANSCRIPT="$transcript" NODE_EXTRA_CA_CERTS="$work/ca.pem" \
  node --test --test-timeout=120000 service.test.mjs) || status=$?
if [ "$status" -ne 0 ]; then
  echo "conformance: the service run FAILED (service log follows)" >&2
  tail -n 50 "$work/svc-stderr" >&2
  exit "$status"
fi
python_sdk "relayed to the emulator"
stop_pid "$svc_pid"
svc_pid=""

# The same suite against the service on its in-process mock backend, which cannot relay
# Azure's protocol: the service speaks it to the SDK itself (translation). The mock
# recognises "hello world", the transcript used above.
echo "== starting speech-pool on the mock backend"
start_service SPEECH_BACKEND=mock
echo "service at ws://127.0.0.1:$svc_port (mock backend)"

echo "== node --test service.test.mjs (the SDK through the service, translated onto the mock)"
status=0
(cd "$here" && SERVICE_URL="ws://127.0.0.1:$svc_port" SERVICE_KEY="$service_key" SERVICE_BACKEND=mock \
  EMULATOR_TRANSCRIPT="$transcript" node --test --test-timeout=120000 service.test.mjs) || status=$?
if [ "$status" -ne 0 ]; then
  echo "conformance: the mock service run FAILED (service log follows)" >&2
  tail -n 50 "$work/svc-stderr" >&2
  exit "$status"
fi
python_sdk "translated onto the mock"
