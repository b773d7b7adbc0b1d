#!/usr/bin/env bash
# Install what the tests need, then run them. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
POSTTRAIN_EXTRAS=test,bench bash scripts/setup.sh
# Headless Chromium (Debian's package) renders `posttrain report`'s page in tests/test_report.py, which
# skips that check, saying why, where Chromium is missing and cannot be installed here.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  as_root=""; [ "$(id -u)" = 0 ] || as_root="sudo -n"
  echo "scripts/test.sh: installing chromium (apt-get) for the report rendering test" >&2
  if ! { $as_root apt-get update -qq && $as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
      >/dev/null 2>&1; then
    echo "scripts/test.sh: could not install chromium; tests/test_report.py will skip its rendering check" >&2
  fi
fi
. .venv/bin/activate
python -m pytest "$@"
