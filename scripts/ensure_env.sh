#!/usr/bin/env bash
# Prints the path of the project's virtualenv (.venv of this checkout), creating it first if
# needed. Normally used through `source scripts/env.sh`, which also activates it.
#
# Installing torch/kserve/feast from nothing takes minutes, so the dependencies are cached
# outside the work tree, keyed by a hash of the dependency specification (the
# [project] dependencies and optional-dependencies of pyproject.toml, the chosen extras and
# the Python version). A change of any dependency gives a new key and a fresh install;
# anything else (code, tool settings) reuses the cache. Deleting the cache folder is always
# safe: the next run installs from nothing. Each checkout's .venv is a small environment
# on top of that cache (seconds to make) holding the checkout's own editable install.
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
_deps="$ANOMALY_CACHE/venvs/$_key"

if [[ ! -f "$_deps/.complete" ]]; then
  echo "[env] installing dependencies into $_deps (extras: $ANOMALY_EXTRAS); first run takes a few minutes" >&2
  rm -rf "$_deps"
  mkdir -p "$(dirname "$_deps")"
  "$PYTHON" -m venv "$_deps"
  "$_deps/bin/python" -m pip install -q --upgrade pip >&2
  "$_deps/bin/python" -m pip install -q -e "$ANOMALY_ROOT[$ANOMALY_EXTRAS]" >&2
  "$_deps/bin/python" -m pip check >&2
  touch "$_deps/.complete"
fi
# The shared environment holds the dependencies only: an editable install of the project
# there points at one checkout, and another checkout's tests re-pointing it would pull the
# code from under the first one's running `anomaly` (seen: ModuleNotFoundError after a CI
# clone had used the cache). Caches made before this still carry one; it goes once.
if compgen -G "$_deps/lib/python*/site-packages/__editable__.anomaly_platform-*.pth" >/dev/null; then
  "$_deps/bin/python" -m pip uninstall -q -y anomaly-platform >&2
fi

# Each checkout gets its own small environment in .venv: the shared site-packages through a
# .pth file, the checkout itself as an editable install, and the dependencies' commands
# (pytest, ruff, mypy, locust, ...) rewritten to run on this environment's interpreter.
# Rebuilt when the dependencies or the project's commands ([project.scripts]) change.
_venv="$ANOMALY_ROOT/.venv"
_overlay="$_deps $("$PYTHON" - "$ANOMALY_ROOT/pyproject.toml" <<'PY'
import hashlib, json, sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
scripts = {"scripts": project.get("scripts", {}), "entry-points": project.get("entry-points", {})}
print(hashlib.sha256(json.dumps(scripts, sort_keys=True).encode()).hexdigest()[:16])
PY
)"
if [[ "$(cat "$_venv/.overlay" 2>/dev/null)" != "$_overlay" ]]; then
  rm -rf "$_venv"  # a symlink into the cache (the old layout) or an overlay of other deps
  "$PYTHON" -m venv --without-pip "$_venv"
  _deps_site="$("$_deps/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  _site="$("$_venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  echo "import site; site.addsitedir('$_deps_site')" > "$_site/_anomaly_deps.pth"
  for _cmd in "$_deps"/bin/*; do
    _name="$(basename "$_cmd")"
    [[ -e "$_venv/bin/$_name" || "$_name" == activate* || "$_name" == Activate* ]] && continue
    if head -c 2 "$_cmd" | grep -q '^#!' && head -n 1 "$_cmd" | grep -q "^#!$_deps/bin/python"; then
      { echo "#!$_venv/bin/python"; tail -n +2 "$_cmd"; } > "$_venv/bin/$_name"
      chmod +x "$_venv/bin/$_name"
    else
      ln -s "$_cmd" "$_venv/bin/$_name"
    fi
  done
  "$_venv/bin/python" -m pip install -q --no-deps -e "$ANOMALY_ROOT" >&2
  echo "$_overlay" > "$_venv/.overlay"
fi

echo "$_venv"
