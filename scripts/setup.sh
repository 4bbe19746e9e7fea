#!/usr/bin/env bash
# One-shot set-up of a fresh machine (idempotent: reruns reuse what is there).
#   system packages (apt-get): offline TTS voices for the embedded default corpus
#   .venv in the repo: torch==2.13.0 (CPU build), duplexgym (editable) + test extras,
#   moshi==0.2.13 with --no-deps (it pins torch<2.10, see shared FACTS.md).
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES="flite festival festvox-us-slt-hts festvox-kallpc16k espeak-ng sox libsndfile1"
missing=""
for p in $APT_PACKAGES; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "setup: apt-get install$missing" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >&2
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv" >&2
  $PY -m venv .venv
fi
VPIP=".venv/bin/python -m pip"
stamp=.venv/.duplexgym-setup
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: installing Python packages into .venv (about 2 minutes the first time)" >&2
  $VPIP install -q --upgrade pip >&2
  $VPIP install -q torch==2.13.0 >&2
  $VPIP install -q -e ".[test]" >&2
  $VPIP install -q --no-deps moshi==0.2.13 >&2
  echo "$want" > "$stamp"
fi
