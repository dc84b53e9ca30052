#!/usr/bin/env bash
# `make remote`, `make push`, `make pull`: the project's DVC remote.
#   remote  add a local-directory remote as the default, in .dvc/config.local (this clone only):
#           $REMOTE, or ~/.local/share/distillery/dvc-remote when REMOTE is not given
#   push    upload every cached output of dvc.lock (datasets, the synthesis and judge caches,
#           models/base, the adapter, the merged model, the GGUFs) and the run-cache
#   pull    download them and check them out: a fresh clone then has data/ and models/ without
#           running any stage (metrics/ and reports/ come with git)
# push and pull use the default remote (`dvc remote default`; a team's S3 or SSH remote, added
# with `dvc remote add -d`, is committed in .dvc/config); with none set, or with REMOTE given,
# they add the local one first.
set -euo pipefail
cd "$(dirname "$0")/.."
DEFAULT_REMOTE="${XDG_DATA_HOME:-$HOME/.local/share}/distillery/dvc-remote"

add_local() {
  local path
  path=$(realpath -m "${REMOTE:-$DEFAULT_REMOTE}")
  mkdir -p "$path"
  dvc remote add --local --default --force local "$path" >/dev/null
  echo "remote: default remote 'local' -> $path (in .dvc/config.local)"
}

ensure_remote() {
  if [ -n "${REMOTE:-}" ] || ! dvc remote default >/dev/null 2>&1; then
    add_local
  fi
  local name
  name=$(dvc remote default)
  echo "remote: using '$name' ($(dvc config "remote.$name.url"))"
}

case "${1:-}" in
  remote) add_local ;;
  push) ensure_remote; dvc push --run-cache ;;
  pull) ensure_remote; dvc pull --run-cache ;;
  *) echo "usage: scripts/remote.sh remote|push|pull" >&2; exit 2 ;;
esac
