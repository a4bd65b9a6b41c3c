#!/usr/bin/env bash
# Source me: creates (or reuses) the project's cached virtualenv and activates it.
# See scripts/ensure_env.sh for how the cache is keyed. Leaves the caller's shell options alone.
ANOMALY_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export ANOMALY_ROOT
_anomaly_venv="$(bash "$ANOMALY_ROOT/scripts/ensure_env.sh")" || return 1
export VIRTUAL_ENV="$_anomaly_venv"
export PATH="$_anomaly_venv/bin:$PATH"
unset _anomaly_venv
