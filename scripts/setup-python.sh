#!/usr/bin/env bash
# Installs what the tests drive suanli with from Python: the official `openai` client, pinned, into
# a directory outside the repository (through pip only; no virtual environment needed).
#
#   scripts/setup-python.sh [DIR]    # DIR: $SUANLI_PYTHON_PATH, else ~/.cache/suanli/python
#
# Prints DIR: run `PYTHONPATH=DIR python3 …`. A DIR holding the pinned version already is kept.
set -euo pipefail

readonly OPENAI_VERSION="3.57.0"

fail() {
  echo "setup-python: $*" >&2
  exit 1
}

has_openai() {
  PYTHONPATH="$1" python3 -c "import openai, sys; sys.exit(openai.__version__ != '$OPENAI_VERSION')" \
    2>/dev/null
}

dir="${1:-${SUANLI_PYTHON_PATH:-$HOME/.cache/suanli/python}}"
command -v python3 >/dev/null || fail "python3 is needed"
if has_openai "$dir"; then
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
  "openai==$OPENAI_VERSION" >&2 || fail "pip install openai==$OPENAI_VERSION failed"
has_openai "$work/lib" || fail "openai does not import from $work/lib"
rm -rf "$dir"
mv "$work/lib" "$dir"
echo "$dir"
