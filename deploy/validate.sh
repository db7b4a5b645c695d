#!/usr/bin/env bash
# Validates deploy/ offline: installs the checking tools when they are missing, then runs
# deploy/validate.py (what it checks is described at its top). Idempotent; after the first
# install a run takes well under a minute. Fails when a tool cannot be installed: no check
# is ever skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

# Pinned: kubernetes-validate ships the Kubernetes OpenAPI schemas the manifests are checked
# against, so its version decides what "valid" means. Keep in step with validate.py.
KUBERNETES_VALIDATE_VERSION=1.37.0
PYYAML_VERSION=6.0.3

python_has() {
  python3 - "$@" <<'PY' 2>/dev/null
import importlib.metadata, sys
for spec in sys.argv[1:]:
    name, version = spec.split("==")
    if importlib.metadata.version(name) != version:
        sys.exit(1)
PY
}

if ! python_has "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" "PyYAML==$PYYAML_VERSION"; then
  echo "== installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION and PyYAML $PYYAML_VERSION (PyPI)"
  python3 -m pip install --quiet --disable-pip-version-check \
    "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" "PyYAML==$PYYAML_VERSION"
fi

if ! command -v haproxy >/dev/null 2>&1; then
  echo "== installing haproxy (Debian)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy >/dev/null
fi

exec python3 deploy/validate.py
