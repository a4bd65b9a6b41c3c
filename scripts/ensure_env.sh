#!/usr/bin/env bash
# Prints the path of the project's virtualenv, creating it first if needed.
# Normally used through `source scripts/env.sh`, which also activates it.
#
# Installing torch/kserve/feast from nothing takes minutes, so the environment is cached
# outside the work tree, keyed by a hash of the dependency specification (the
# [project] dependencies and optional-dependencies of pyproject.toml, the chosen extras and
# the Python version). A change of any dependency gives a new key and a fresh install;
# anything else (code, tool settings) reuses the cache. Deleting the cache folder is always
# safe: the next run installs from nothing.
#
#   ANOMALY_EXTRAS   extras to install (default: dev,train,ray,loadtest: one environment
#                    serves both README commands, so a user installs it once)
#   ANOMALY_CACHE    cache root (default: ${XDG_CACHE_HOME:-$HOME/.cache}/anomaly-platform)
#   PYTHON           interpreter to build the venv from (default: python3.11, else python3)
set -euo pipefail

ANOMALY_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

ANOMALY_EXTRAS="${ANOMALY_EXTRAS:-dev,train,ray,loadtest}"
ANOMALY_CACHE="${ANOMALY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/anomaly-platform}"
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"

_key="$("$PYTHON" - "$ANOMALY_ROOT/pyproject.toml" "$ANOMALY_EXTRAS" <<'PY'
import hashlib, json, sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
spec = {
    "deps": project.get("dependencies", []),
    "extras": project.get("optional-dependencies", {}),
    "chosen": sorted(sys.argv[2].split(",")),
    "python": sys.version.split()[0],
}
print(hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16])
PY
)"
_venv="$ANOMALY_CACHE/venvs/$_key"

if [[ ! -f "$_venv/.complete" ]]; then
  echo "[env] installing dependencies into $_venv (extras: $ANOMALY_EXTRAS); first run takes a few minutes" >&2
  rm -rf "$_venv"
  mkdir -p "$(dirname "$_venv")"
  "$PYTHON" -m venv "$_venv"
  "$_venv/bin/python" -m pip install -q --upgrade pip >&2
  "$_venv/bin/python" -m pip install -q -e "$ANOMALY_ROOT[$ANOMALY_EXTRAS]" >&2
  "$_venv/bin/python" -m pip check >&2
  echo "$ANOMALY_ROOT" > "$_venv/.project-root"
  touch "$_venv/.complete"
elif [[ "$(cat "$_venv/.project-root" 2>/dev/null)" != "$ANOMALY_ROOT" ]]; then
  # Same dependencies, other checkout (a fresh CI clone): re-point the editable install only.
  "$_venv/bin/python" -m pip install -q --no-deps -e "$ANOMALY_ROOT" >&2
  echo "$ANOMALY_ROOT" > "$_venv/.project-root"
fi

ln -sfn "$_venv" "$ANOMALY_ROOT/.venv"
echo "$_venv"
