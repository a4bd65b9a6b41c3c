#!/usr/bin/env bash
# Installs the Kubernetes delivery tools (helm, kubeconform) into .cache/go-bin with
# `go install` from the Go module proxy, and prints that folder. Idempotent: a binary whose
# embedded module version (`go version -m`) and recorded build flags match the pins is kept.
#
#   scripts/k8s_tools.sh          install if needed, print the bin folder
#   K8S_TOOLS_BIN=/somewhere      install elsewhere (default: <repo>/.cache/go-bin)
#
# A cold install (empty Go caches: download + compile) took about 3 minutes on 2 cores, almost
# all of it helm; a warm run takes well under a second. The pinned versions are the ones the tests and k8s/ were made with.
set -euo pipefail

HELM_VERSION="v3.22.0"
KUBECONFORM_VERSION="v0.8.0"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${K8S_TOOLS_BIN:-$ROOT/.cache/go-bin}"
mkdir -p "$BIN"

if ! command -v go >/dev/null 2>&1; then
  echo "[k8s_tools] 'go' is not on PATH; install Go >= 1.24 (https://go.dev/dl/)" >&2
  exit 1
fi

# install <binary> <module path> <package path> <version> [ldflags]
install_tool() {
  local name="$1" module="$2" pkg="$3" version="$4" ldflags="${5:-}"
  if [[ -x "$BIN/$name" ]] && [[ "$(stamp "$BIN/$name")" == "$module $version $ldflags" ]]; then
    return 0
  fi
  echo "[k8s_tools] go install $pkg@$version -> $BIN" >&2
  local start=$SECONDS
  # CGO off: static binaries, and no C toolchain needed.
  GOBIN="$BIN" CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -trimpath" \
    go install ${ldflags:+-ldflags="$ldflags"} "$pkg@$version" >&2
  echo "[k8s_tools] $name $version installed in $((SECONDS - start))s" >&2
  echo "$module $version $ldflags" >"$BIN/.$name.stamp"
}

# What the binary was built from: its embedded module version (so a binary replaced by hand
# is noticed) and the flags recorded by the last install.
stamp() {
  local module version
  read -r _ module version _ < <(go version -m "$1" 2>/dev/null | grep -E "^[[:space:]]+mod[[:space:]]")
  local name="${1##*/}"
  local recorded
  recorded="$(cat "$(dirname "$1")/.$name.stamp" 2>/dev/null || true)"
  [[ "$recorded" == "$module $version "* ]] && echo "$recorded"
}

# A release build of helm stamps its version and the Kubernetes version of its client-go
# (the default of `helm template`/`helm lint` capabilities) through -ldflags; a bare
# `go install` would leave Kubernetes v1.20, which fails the chart's kubeVersion constraint.
helm_ldflags() {
  local gomod client_go minor
  gomod="$(go mod download -json "helm.sh/helm/v3@$HELM_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
  client_go="$(awk '$1 == "k8s.io/client-go" {print $2}' "$gomod")"   # e.g. v0.37.0
  minor="$(cut -d. -f2 <<<"$client_go")"
  printf '%s' "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
    " -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1" \
    " -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$minor" \
    " -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1" \
    " -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$minor"
}

install_tool helm helm.sh/helm/v3 helm.sh/helm/v3/cmd/helm "$HELM_VERSION" "$(helm_ldflags)"
install_tool kubeconform github.com/yannh/kubeconform \
  github.com/yannh/kubeconform/cmd/kubeconform "$KUBECONFORM_VERSION"

echo "$BIN"
