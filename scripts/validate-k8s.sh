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

# shellcheck source=scripts/lib/venv.sh
source "$ROOT/scripts/lib/venv.sh"
venv_tool "$VENV" kubernetes-validate "$VALIDATOR_VERSION" kubernetes-validate
KV="$VENV/bin/kubernetes-validate"

cd "$ROOT"
# kustomization.yaml is kustomize's own config, not a Kubernetes resource.
mapfile -t MANIFESTS < <(find k8s -name '*.yaml' ! -name 'kustomization.yaml' | sort)
# k8s-secure/ is an overlay of k8s/: a patch (not a whole object) and cert-manager resources (custom kinds
# the Kubernetes schemas do not have). Its StatefulSet: the overlay's StatefulSet: k8s/statefulset.yaml with k8s-secure/statefulset-tls.yaml merged the way
# kustomize's strategic merge does for these fields (maps merged, containers/env/volumes/volumeMounts merged
# by name), so a wrong field name or type in the patch fails like one in the base.
SECURE="$(mktemp "${TMPDIR:-/tmp}/dmutex-k8s-secure.XXXXXX.yaml")"
"$VENV/bin/python" - k8s/statefulset.yaml k8s-secure/statefulset-tls.yaml > "$SECURE" <<'PY'
import sys, yaml
base = yaml.safe_load(open(sys.argv[1]))
patch = yaml.safe_load(open(sys.argv[2]))
def merge(a, b):
    if isinstance(a, dict) and isinstance(b, dict):
        for k, v in b.items():
            a[k] = merge(a[k], v) if k in a else v
        return a
    if isinstance(a, list) and isinstance(b, list) and all(isinstance(x, dict) and "name" in x for x in a + b):
        by = {x["name"]: x for x in a}
        for x in b:
            if x["name"] in by:
                merge(by[x["name"]], x)
            else:
                a.append(x)
        return a
    return b
assert (base["kind"], base["metadata"]["name"]) == (patch["kind"], patch["metadata"]["name"]), "patch target"
print(yaml.safe_dump(merge(base, patch)))
PY
MANIFESTS+=("$SECURE")
RENDERED=""
RENDERED_SECURE=""
trap 'rm -f "$RENDERED" "$RENDERED_SECURE" "${SECURE:-}"' EXIT
if command -v kubectl >/dev/null; then
    RENDERED="$(mktemp "${TMPDIR:-/tmp}/dmutex-k8s.XXXXXX.yaml")"
    kubectl kustomize k8s > "$RENDERED"
    # The secure overlay as kustomize renders it, without the cert-manager resources (custom kinds).
    RENDERED_SECURE="$(mktemp "${TMPDIR:-/tmp}/dmutex-k8s-secure-rendered.XXXXXX.yaml")"
    kubectl kustomize k8s-secure | "$VENV/bin/python" -c '
import sys, yaml
docs = [d for d in yaml.safe_load_all(sys.stdin) if d and not d["apiVersion"].startswith("cert-manager.io/")]
print(yaml.safe_dump_all(docs))' > "$RENDERED_SECURE"
fi
for version in $K8S_VERSIONS; do
    echo "==> Kubernetes $version: ${MANIFESTS[*]}"
    "$KV" --quiet --strict --kubernetes-version "$version" "${MANIFESTS[@]}"
    if [[ -n "$RENDERED" ]]; then
        echo "==> Kubernetes $version: kubectl kustomize k8s/"
        "$KV" --quiet --strict --kubernetes-version "$version" "$RENDERED"
        echo "==> Kubernetes $version: kubectl kustomize k8s-secure/ (cert-manager resources left out)"
        "$KV" --quiet --strict --kubernetes-version "$version" "$RENDERED_SECURE"
    fi
done
echo "==> all manifests valid for Kubernetes $K8S_VERSIONS"
