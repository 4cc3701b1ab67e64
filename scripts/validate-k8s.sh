#!/usr/bin/env bash
# Validates every manifest under k8s/ against the Kubernetes OpenAPI schemas with kubernetes-validate (PyPI),
# strictly (unknown fields are errors). The tool lives in a venv under target/ (created on first use).
#
#   scripts/validate-k8s.sh                          # the newest version the pinned validator knows, and 1.31
#   K8S_VERSIONS="1.33.0" scripts/validate-k8s.sh
#
# Exit status: 0 valid, 75 the validator could not be installed (PyPI unreachable), anything else invalid.
#
# Also validates the kustomize output when kubectl is installed (namespace and image rewriting applied).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The validator's version is the newest Kubernetes version it has schemas for; 1.31 is the oldest we support.
VALIDATOR_VERSION="${KUBERNETES_VALIDATE_VERSION:-1.37.0}"
K8S_VERSIONS="${K8S_VERSIONS:-$VALIDATOR_VERSION 1.31.0}"
VENV="${K8S_VALIDATE_VENV:-$ROOT/target/k8s-validate-venv}"

if [[ ! -x "$VENV/bin/kubernetes-validate" ]]; then
    echo "==> installing kubernetes-validate $VALIDATOR_VERSION into $VENV"
    # Exit 75 (EX_TEMPFAIL) when the tool cannot be installed (no PyPI): callers tell that from a bad manifest.
    if ! python3 -m venv "$VENV" \
        || ! "$VENV/bin/pip" install --quiet --disable-pip-version-check --timeout 30 \
            "kubernetes-validate==$VALIDATOR_VERSION"; then
        rm -rf "$VENV"
        echo "error: cannot install kubernetes-validate $VALIDATOR_VERSION (is PyPI reachable?)" >&2
        exit 75
    fi
fi
KV="$VENV/bin/kubernetes-validate"

cd "$ROOT"
# kustomization.yaml is kustomize's own config, not a Kubernetes resource.
mapfile -t MANIFESTS < <(find k8s -name '*.yaml' ! -name 'kustomization.yaml' | sort)
RENDERED=""
if command -v kubectl >/dev/null; then
    RENDERED="$(mktemp "${TMPDIR:-/tmp}/dmutex-k8s.XXXXXX.yaml")"
    trap 'rm -f "$RENDERED"' EXIT
    kubectl kustomize k8s > "$RENDERED"
fi
for version in $K8S_VERSIONS; do
    echo "==> Kubernetes $version: ${MANIFESTS[*]}"
    "$KV" --quiet --strict --kubernetes-version "$version" "${MANIFESTS[@]}"
    if [[ -n "$RENDERED" ]]; then
        echo "==> Kubernetes $version: kubectl kustomize k8s/"
        "$KV" --quiet --strict --kubernetes-version "$version" "$RENDERED"
    fi
done
echo "==> all manifests valid for Kubernetes $K8S_VERSIONS"
