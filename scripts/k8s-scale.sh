#!/usr/bin/env bash
# Changes the size of the Kubernetes cluster to N nodes.
#
#   scripts/k8s-scale.sh 5              # rewrite k8s/ for 5 nodes, then restart the cluster with them
#   scripts/k8s-scale.sh 5 --no-apply   # only rewrite k8s/ (commit it, apply later)
#
# Why not `kubectl scale`: membership is fixed when a node starts (DMUTEX_PEERS, one entry per node id), so a
# new pod would not be known to the running ones, and nodes with different peer lists must never run together
# (they could both grant the same lock). Scaling is therefore a cluster restart: the peer list in
# k8s/configmap.yaml and `replicas` in k8s/statefulset.yaml are rewritten together, the StatefulSet is scaled to
# zero and every pod gone, then `kubectl apply -k k8s/` starts all N pods at once with the new list. Locks held
# at that moment are lost (their leases end). CLUSTER_DOMAIN overrides cluster.local.
set -euo pipefail

usage() { echo "usage: $0 N [--no-apply]   (N = 1..1000)" >&2; exit 2; }
[[ $# -ge 1 ]] || usage
N="$1"
APPLY=1
[[ "${2:-}" == "--no-apply" ]] && APPLY=0
[[ "$N" =~ ^[1-9][0-9]*$ && "$N" -le 1000 ]] || usage

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
K8S="$ROOT/k8s"
DOMAIN="${CLUSTER_DOMAIN:-cluster.local}"

field() { sed -n "s/^$1 *\"\{0,1\}\([^\"]*\)\"\{0,1\} *$/\1/p" "$2" | head -n1; }
NAMESPACE="$(field 'namespace:' "$K8S/kustomization.yaml")"
STS="$(sed -n '/^metadata:/,/^spec:/s/^  name: *\(.*\)$/\1/p' "$K8S/statefulset.yaml" | head -n1)"
SVC="$(field '  serviceName:' "$K8S/statefulset.yaml")"
PORT="$(sed -n 's/^ *DMUTEX_PEERS: *"[^:]*:\([0-9]*\)[,"].*/\1/p' "$K8S/configmap.yaml")"
[[ -n "$NAMESPACE" && -n "$STS" && -n "$SVC" && -n "$PORT" ]] || {
    echo "error: could not read namespace/statefulset/service/port from k8s/" >&2
    exit 1
}

PEERS=""
for ((i = 0; i < N; i++)); do
    PEERS+="${PEERS:+,}$STS-$i.$SVC.$NAMESPACE.svc.$DOMAIN:$PORT"
done
# DMUTEX_CLUSTER_SIZE is the old name of DMUTEX_BOOTSTRAP_EXPECT: rewritten too where a copy still uses it.
sed -i -e "s|^\( *DMUTEX_PEERS: *\).*|\1\"$PEERS\"|" \
    -e "s|^\( *DMUTEX_BOOTSTRAP_EXPECT: *\).*|\1\"$N\"|" \
    -e "s|^\( *DMUTEX_CLUSTER_SIZE: *\).*|\1\"$N\"|" "$K8S/configmap.yaml"
sed -i "s|^\(  replicas: *\).*|\1$N|" "$K8S/statefulset.yaml"
echo "==> k8s/ now describes $N nodes: $PEERS"

[[ "$APPLY" == 1 ]] || exit 0
if kubectl -n "$NAMESPACE" get statefulset "$STS" >/dev/null 2>&1; then
    echo "==> stopping the cluster (membership changes need a full restart)"
    kubectl -n "$NAMESPACE" scale statefulset "$STS" --replicas=0
    kubectl -n "$NAMESPACE" wait --for=delete pod -l app.kubernetes.io/name=dmutex --timeout=180s 2>/dev/null || true
fi
kubectl apply -k "$K8S"
kubectl -n "$NAMESPACE" rollout status statefulset "$STS" --timeout=300s
