#!/usr/bin/env bash
# Generate the certificates for mutual TLS between Falcosidekick and falco-responder:
# a private CA, the responder's server certificate and Falcosidekick's client certificate.
#
# Usage: scripts/gen-certs.sh [-o OUT_DIR] [-n NAMESPACE] [-s SERVICE] [-k SIDEKICK_NAMESPACE]
#
# Options override the environment variables of the same meaning:
#   OUT_DIR             where the files go                 (default: ./certs)
#   NAMESPACE           the responder's namespace          (default: falco-responder)
#   SERVICE             the responder's Service name       (default: falco-responder)
#   SIDEKICK_NAMESPACE  Falcosidekick's namespace          (default: falco)
#   CLUSTER_DOMAIN      the cluster's DNS domain           (default: cluster.local)
#   DAYS                validity of the two leaf certs     (default: 365)
#   CA_DAYS             validity of a newly created CA     (default: 3650)
#
# Writes ca.crt ca.key tls.crt tls.key client.crt client.key, then prints the kubectl commands
# that create the two Secrets. If OUT_DIR already holds ca.crt and ca.key, that CA is reused,
# so re-running renews the leaf certificates without Falcosidekick having to trust a new CA.
set -euo pipefail

OUT_DIR="${OUT_DIR:-certs}"
NAMESPACE="${NAMESPACE:-falco-responder}"
SERVICE="${SERVICE:-falco-responder}"
SIDEKICK_NAMESPACE="${SIDEKICK_NAMESPACE:-falco}"
CLUSTER_DOMAIN="${CLUSTER_DOMAIN:-cluster.local}"
DAYS="${DAYS:-365}"
CA_DAYS="${CA_DAYS:-3650}"
CLIENT_CN="falcosidekick"

usage() {
    echo "usage: $0 [-o OUT_DIR] [-n NAMESPACE] [-s SERVICE] [-k SIDEKICK_NAMESPACE]" >&2
    exit 2
}

while getopts "o:n:s:k:h" opt; do
    case "$opt" in
        o) OUT_DIR="$OPTARG" ;;
        n) NAMESPACE="$OPTARG" ;;
        s) SERVICE="$OPTARG" ;;
        k) SIDEKICK_NAMESPACE="$OPTARG" ;;
        *) usage ;;
    esac
done
shift $((OPTIND - 1))
[ "$#" -eq 0 ] || usage

command -v openssl >/dev/null || { echo "error: openssl not found" >&2; exit 1; }
mkdir -p "$OUT_DIR"
# Every file is created readable by its owner only; certificates are opened up at the end.
umask 077
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# Run a command silently; show what it printed only if it fails.
quiet() {
    local out
    if ! out="$("$@" 2>&1)"; then
        printf '%s\n' "$out" >&2
        echo "error: $* failed" >&2
        exit 1
    fi
}

new_key() {
    quiet openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"
}

# Our own request config, so the result does not depend on the system's openssl.cnf.
cat >"$WORK/req.cnf" <<'CNF'
[req]
distinguished_name = dn
[dn]
[v3_ca]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
CNF

make_ca() {
    new_key "$OUT_DIR/ca.key"
    quiet openssl req -new -x509 -config "$WORK/req.cnf" -extensions v3_ca \
        -key "$OUT_DIR/ca.key" -subj "/O=falco-responder/CN=falco-responder CA" \
        -days "$CA_DAYS" -sha256 -out "$OUT_DIR/ca.crt"
}

# sign NAME CN EXTFILE: a new NAME.key and NAME.crt, signed by the CA with EXTFILE's extensions.
sign() {
    local name="$1" cn="$2" ext="$3"
    new_key "$OUT_DIR/$name.key"
    quiet openssl req -new -config "$WORK/req.cnf" -key "$OUT_DIR/$name.key" \
        -subj "/O=falco-responder/CN=$cn" -out "$WORK/$name.csr"
    quiet openssl x509 -req -in "$WORK/$name.csr" \
        -CA "$OUT_DIR/ca.crt" -CAkey "$OUT_DIR/ca.key" \
        -set_serial "0x$(openssl rand -hex 16)" -days "$DAYS" -sha256 \
        -extfile "$ext" -out "$OUT_DIR/$name.crt"
}

if [ -s "$OUT_DIR/ca.crt" ] && [ -s "$OUT_DIR/ca.key" ]; then
    echo "Reusing the CA in $OUT_DIR (delete ca.crt and ca.key to start a new one)." >&2
else
    make_ca
fi

svc="$SERVICE.$NAMESPACE.svc"
# clientAuth as well: the pod's exec probes present this certificate to its own mTLS port.
cat >"$WORK/server.ext" <<EXT
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth, clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = DNS:$SERVICE, DNS:$SERVICE.$NAMESPACE, DNS:$svc, DNS:$svc.$CLUSTER_DOMAIN, DNS:localhost, IP:127.0.0.1
EXT
sign tls "$svc" "$WORK/server.ext"

cat >"$WORK/client.ext" <<EXT
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EXT
sign client "$CLIENT_CN" "$WORK/client.ext"

chmod 600 "$OUT_DIR"/ca.key "$OUT_DIR"/tls.key "$OUT_DIR"/client.key
chmod 644 "$OUT_DIR"/ca.crt "$OUT_DIR"/tls.crt "$OUT_DIR"/client.crt
quiet openssl verify -CAfile "$OUT_DIR/ca.crt" "$OUT_DIR/tls.crt" "$OUT_DIR/client.crt"

cat <<EOF
Wrote $OUT_DIR/{ca.crt,ca.key,tls.crt,tls.key,client.crt,client.key}.
Keep ca.key out of the cluster: neither side needs it.

# falco-responder: its server certificate, and the CA client certificates must chain to
kubectl -n $NAMESPACE create secret generic falco-responder-tls \\
  --from-file=tls.crt=$OUT_DIR/tls.crt --from-file=tls.key=$OUT_DIR/tls.key \\
  --from-file=ca.crt=$OUT_DIR/ca.crt

# Falcosidekick: its client certificate, and the CA that verifies the responder's certificate
kubectl -n $SIDEKICK_NAMESPACE create secret generic falcosidekick-mtls \\
  --from-file=client.crt=$OUT_DIR/client.crt --from-file=client.key=$OUT_DIR/client.key \\
  --from-file=ca.crt=$OUT_DIR/ca.crt

# To replace Secrets that already exist, append to each command:
#   --dry-run=client -o yaml | kubectl apply -f -
EOF
