#!/usr/bin/env bash
# A throwaway private CA and the credentials a secured dmutex cluster uses, made with the Debian package
# `openssl` (apt-get install openssl). For tests and demos; production certificates come from your PKI or
# cert-manager (k8s-secure/).
#
#   scripts/dev-certs.sh DIR [PEER_HOST...]
#
# writes into DIR (created; existing files are kept, so re-running adds peers without a new CA):
#   ca.crt ca.key          the CA (clients: --cacert DIR/ca.crt or DMUTEX_CACERT; peers: DMUTEX_PEER_TLS_CA)
#   api.crt api.key        the API certificate: DNS node, localhost, IP 127.0.0.1 (DMUTEX_TLS_CERT/_KEY)
#   peer-HOST.crt/.key     one per PEER_HOST: a certificate naming exactly that host (a DNS name or an IP
#                          address, as written in DMUTEX_PEERS), for client and server auth (DMUTEX_PEER_TLS_*)
#   tokens                 DMUTEX_API_TOKENS_FILE: three random tokens, one per scope (lock, read, admin)
#   cluster-secret         DMUTEX_CLUSTER_SECRET_FILE: the HMAC secret for peer handshakes
# Keys are ECDSA P-256 in PKCS#8, readable only by the owner.
set -euo pipefail

if [[ $# -lt 1 ]]; then
    sed -n '2,16p' "$0" >&2
    exit 64
fi
dir="$1"
shift
command -v openssl >/dev/null || { echo "error: openssl is not installed (apt-get install openssl)" >&2; exit 69; }
mkdir -p "$dir"
umask 077

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

# leaf NAME SAN USAGE: a certificate for NAME signed by the CA.
leaf() {
    local name="$1" san="$2" usage="$3"
    [[ -s "$dir/$name.crt" ]] && return 0
    key "$dir/$name.key"
    openssl req -new -key "$dir/$name.key" -subj "/CN=$name" -out "$dir/$name.csr" 2>/dev/null
    printf 'subjectAltName=%s\nextendedKeyUsage=%s\nkeyUsage=critical,digitalSignature\nbasicConstraints=critical,CA:FALSE\n' \
        "$san" "$usage" > "$dir/$name.ext"
    openssl x509 -req -in "$dir/$name.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial \
        -days 365 -sha256 -extfile "$dir/$name.ext" -out "$dir/$name.crt" 2>/dev/null
    rm -f "$dir/$name.csr" "$dir/$name.ext"
    echo "  $dir/$name.crt ($san)"
}

if [[ ! -s "$dir/ca.crt" ]]; then
    key "$dir/ca.key"
    openssl req -x509 -new -key "$dir/ca.key" -subj "/CN=dmutex dev CA" -days 3650 -sha256 \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -out "$dir/ca.crt" 2>/dev/null
    echo "  $dir/ca.crt (new CA)"
fi
leaf api "DNS:node,DNS:localhost,IP:127.0.0.1" serverAuth
for host in "$@"; do
    if [[ "$host" =~ ^[0-9.]+$ || "$host" == *:* ]]; then san="IP:$host"; else san="DNS:$host"; fi
    leaf "peer-$host" "$san" "serverAuth,clientAuth"
done
if [[ ! -s "$dir/tokens" ]]; then
    {
        echo "# <token> <scope>[,<scope>...]   scopes: lock, read, admin"
        echo "$(openssl rand -hex 32) lock,read"
        echo "$(openssl rand -hex 32) read"
        echo "$(openssl rand -hex 32) admin,lock,read"
    } > "$dir/tokens"
    echo "  $dir/tokens"
fi
if [[ ! -s "$dir/cluster-secret" ]]; then
    openssl rand -hex 32 > "$dir/cluster-secret"
    echo "  $dir/cluster-secret"
fi
# Dev only: the node runs as uid 10001 in the image and reads these through a bind mount, so the files
# (keys included) are made readable by every user of this machine. Never do this with real keys.
chmod 0644 "$dir"/*.crt "$dir/tokens" "$dir/cluster-secret"
chmod 0644 "$dir"/api.key "$dir"/peer-*.key 2>/dev/null || true   # not ca.key: the nodes never need it
