#!/usr/bin/env bash
# Installs what the console's browser test (tests/browser/console.cjs) needs: Debian's `chromium`
# (apt-get, as root, only when /usr/bin/chromium is missing) and `playwright-core`, pinned by
# tests/browser/package-lock.json, into a directory outside the repository (npm ci).
#
#   scripts/setup-browser.sh [DIR]   # DIR: $SUANLI_BROWSER_PATH, else ~/.cache/suanli/browser
#
# Prints DIR, which holds node_modules: run `NODE_PATH=DIR/node_modules node console.cjs …`.
# A DIR installed from the same lock file is kept. Progress goes to stderr.
set -euo pipefail

readonly CHROMIUM=/usr/bin/chromium

fail() {
  echo "setup-browser: $*" >&2
  exit 1
}

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
package_dir="$here/tests/browser"
dir="${1:-${SUANLI_BROWSER_PATH:-$HOME/.cache/suanli/browser}}"

if [[ ! -x "$CHROMIUM" ]]; then
  [[ "$(id -u)" -eq 0 ]] || fail "$CHROMIUM is missing and installing it needs root (apt-get install chromium)"
  command -v apt-get >/dev/null || fail "$CHROMIUM is missing and there is no apt-get to install it"
  echo "setup-browser: installing Debian's chromium" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2 || fail "apt-get update failed"
  apt-get install -y --no-install-recommends chromium >&2 || fail "apt-get install chromium failed"
fi
"$CHROMIUM" --version >&2 || fail "$CHROMIUM does not run"

installed() { # dir: the pinned playwright-core, from this very lock file
  cmp -s "$package_dir/package-lock.json" "$1/package-lock.json" &&
    [[ -f "$1/node_modules/playwright-core/package.json" ]] &&
    (cd "$1" && node -e "require('playwright-core')") 2>/dev/null
}

if ! installed "$dir"; then
  command -v node >/dev/null || fail "node is needed"
  command -v npm >/dev/null || fail "npm is needed"
  mkdir -p "$(dirname "$dir")" || fail "cannot create $(dirname "$dir")"
  # Installed beside the target and moved into place: a crash never leaves a half-made directory.
  work="$(mktemp -d "$(dirname "$dir")/.browser.XXXXXX")" || fail "cannot create a temporary directory"
  trap 'rm -rf "$work"' EXIT
  cp "$package_dir/package.json" "$package_dir/package-lock.json" "$work/"
  echo "setup-browser: npm ci (playwright-core) into $dir" >&2
  (cd "$work" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >&2) ||
    fail "npm ci failed in $work"
  installed "$work" || fail "playwright-core does not load from $work"
  rm -rf "$dir"
  mv "$work" "$dir"
fi
echo "$dir"
