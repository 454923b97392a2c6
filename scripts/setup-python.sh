#!/usr/bin/env bash
# Installs what the tests drive and check suanli with from Python, pinned, into a directory outside
# the repository (through pip only; no virtual environment needed): the official `openai` client,
# Prometheus's own client (its parser reads `/metrics`) and `openapi-spec-validator` (checks
# `/v1/openapi.json`).
#
#   scripts/setup-python.sh [DIR]    # DIR: $SUANLI_PYTHON_PATH, else ~/.cache/suanli/python
#
# Prints DIR: run `PYTHONPATH=DIR python3 …`. A DIR holding the pinned version already is kept.
set -euo pipefail

readonly PACKAGES=("openai==3.57.0" "prometheus-client==0.26.0" "openapi-spec-validator==0.8.4")

fail() {
  echo "setup-python: $*" >&2
  exit 1
}

# Whether DIR holds every pinned package at its version.
installed() {
  PYTHONPATH="$1" python3 - "${PACKAGES[@]}" 2>/dev/null <<'PY'
import importlib.metadata, sys
for pin in sys.argv[1:]:
    name, version = pin.split("==")
    if importlib.metadata.version(name) != version:
        sys.exit(1)
import openai, prometheus_client, openapi_spec_validator
PY
}

dir="${1:-${SUANLI_PYTHON_PATH:-$HOME/.cache/suanli/python}}"
command -v python3 >/dev/null || fail "python3 is needed"
if installed "$dir"; then
  echo "$dir"
  exit 0
fi
python3 -m pip --version >/dev/null 2>&1 || fail "pip is needed: python3 -m pip is not available"
mkdir -p "$(dirname "$dir")" || fail "cannot create $(dirname "$dir")"
# Installed beside the target and moved into place: a crash never leaves a half-made directory.
work="$(mktemp -d "$(dirname "$dir")/.python.XXXXXX")" || fail "cannot create a temporary directory"
trap 'rm -rf "$work"' EXIT
python3 -m pip install --quiet --disable-pip-version-check --no-warn-conflicts \
  --root-user-action=ignore --target "$work/lib" \
  "${PACKAGES[@]}" >&2 || fail "pip install ${PACKAGES[*]} failed"
installed "$work/lib" || fail "the packages do not import from $work/lib"
rm -rf "$dir"
mv "$work/lib" "$dir"
echo "$dir"
