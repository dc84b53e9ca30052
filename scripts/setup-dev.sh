#!/usr/bin/env bash
# `make setup-dev`: system packages that only the tests need (Debian/Ubuntu): redis-server, and
# chromium (headless, renders reports/eval.html in tests/test_report.py).
# Idempotent: returns at once when they are there.
set -euo pipefail
missing=()
command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] || missing+=(redis-server)
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || missing+=(chromium)
if [ ${#missing[@]} -eq 0 ]; then
  echo "setup-dev: test packages present"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "setup-dev: please install ${missing[*]} with your package manager" >&2
  exit 1
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "setup-dev: installing ${missing[*]} (apt-get)"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "setup-dev: done"
