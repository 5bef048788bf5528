#!/usr/bin/env bash
# The comparison behind docs/performance.md, in one go on this machine:
#   1. the raw crypto bound from `openssl speed` (one CSR verify + one sign per certificate);
#   2. meshca (release build, SQLite, synchronous=FULL) with a plugged-in P-256 CA at several
#      concurrencies (service-account tokens signed RS256, as most API servers sign them), the
#      JWKS, ES256-token and renewal (mTLS) profiles, an RSA-2048 CA with RSA-2048 CSRs, and an
#      open-loop run at a fixed rate for the latency target;
#   3. cfssl `serve` (Debian's golang-cfssl) with the same P-256 CA and the same kind of CSRs,
#      at the same concurrencies;
# and prints one table with the ratios. Load generator and server share the machine's cores.
#
#   scripts/perf-compare.sh                 # defaults: 10 s per run, concurrencies 1 8 64 256
#   DURATION=5s CONCURRENCIES="8 64" scripts/perf-compare.sh
#   PERF_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/meshca_perf scripts/perf-compare.sh
#                                           # adds PostgreSQL-store runs (a disposable database;
#                                           # the server CPU column then leaves out PostgreSQL's)
set -euo pipefail

DURATION=${DURATION:-10s}
CONCURRENCIES=${CONCURRENCIES:-"1 8 64 256"}
RATE=${RATE:-1000}
cd "$(dirname "$0")/.."

for tool in openssl jq curl cfssl; do
  if ! command -v "$tool" >/dev/null; then
    echo "perf-compare: $tool is missing (cfssl: apt-get install golang-cfssl)" >&2
    exit 1
  fi
done

script_name=perf-compare
# shellcheck source=scripts/lib/release.sh
source scripts/lib/release.sh

# --- 1. crypto bound --------------------------------------------------------------------------
echo "openssl speed (3 s each)…" >&2
speed=$(openssl speed -seconds 3 ecdsap256 rsa2048 2>/dev/null)
# Lines end "... <sign/s> <verify/s>" (OpenSSL 3.0).
read -r rsa_sign rsa_verify < <(awk '/^rsa 2048 bits/ {print $(NF-1), $NF}' <<<"$speed")
read -r p256_sign p256_verify < <(awk '/nistp256\)/ {print $(NF-1), $NF}' <<<"$speed")
bound_p256=$(jq -n "1000/$p256_sign + 1000/$p256_verify")   # ms per certificate
bound_rsa=$(jq -n "1000/$rsa_sign + 1000/$rsa_verify")

# --- CA material: root → intermediate, as an Istio cacerts directory ------------------------
make_cacerts() { # dir, key algorithm args...
  local dir=$1; shift
  mkdir -p "$dir"
  openssl req -x509 -new -nodes "$@" -keyout "$dir/root-key.pem" -out "$dir/root-cert.pem" \
    -days 30 -subj "/O=meshca bench/CN=Bench Root CA" \
    -addext "basicConstraints=critical,CA:true" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    2>/dev/null
  openssl req -new -nodes "$@" -keyout "$dir/ca-key.pem" -out "$dir/ca.csr" \
    -subj "/O=meshca bench/CN=Bench Intermediate CA" 2>/dev/null
  openssl x509 -req -in "$dir/ca.csr" -CA "$dir/root-cert.pem" -CAkey "$dir/root-key.pem" \
    -CAcreateserial -days 20 -out "$dir/ca-cert.pem" \
    -extfile <(printf 'basicConstraints=critical,CA:true,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n') \
    2>/dev/null
  cp "$dir/ca-cert.pem" "$dir/cert-chain.pem"
  rm -f "$dir/root-key.pem" "$dir/ca.csr" "$dir/root-cert.srl"
  chmod 600 "$dir/ca-key.pem"
}
make_cacerts "$work/cacerts-p256" -newkey ec -pkeyopt ec_paramgen_curve:P-256
make_cacerts "$work/cacerts-rsa" -newkey rsa:2048

start_meshca() { # cacerts dir, data dir
  MESHCA_DATA_DIR=$2 MESHCA_CA_CACERTS_DIR=$1 MESHCA_LOG=warn \
    MESHCA_GRPC_MAX_IN_FLIGHT_ISSUANCES=1024 \
    MESHCA_GRPC_RATE_LIMIT_PER_IDENTITY_RATE=0 MESHCA_GRPC_RATE_LIMIT_PER_ADDRESS_RATE=0 \
    "$bin" server --dev >"$2.log" 2>&1 &
  server_pid=$!
  pids+=("$server_pid")
  wait_ready http://127.0.0.1:15014/readyz
}

stop() { kill "$1"; wait "$1" 2>/dev/null || true; }

rows=()
run() { # label, server pid, bench args...
  local label=$1 pid=$2; shift 2
  local report
  report=$("$bin" bench --json --duration "$DURATION" --server-pid "$pid" "$@")
  if [[ $(jq '.errors | length' <<<"$report") != 0 ]]; then
    echo "perf-compare: $label had errors: $(jq -c .errors <<<"$report")" >&2
  fi
  rows+=("$(jq -c --arg name "$label" '{"label": $name} + .' <<<"$report")")
  echo "  $label: $(jq -r '"\(.throughput_per_sec|floor)/s, p99 \(.latency_ms.p99|floor) ms"' <<<"$report")" >&2
}

connections() { (( $1 < 8 )) && echo "$1" || echo 8; }

# --- 2. meshca ----------------------------------------------------------------------------------
echo "meshca, P-256 CA…" >&2
data=$work/meshca-p256
start_meshca "$work/cacerts-p256" "$data"
common=(--addr 127.0.0.1:15012 --ca-cert "$data/root-cert.pem")
for c in $CONCURRENCIES; do
  run "meshca P-256 c=$c" "$server_pid" "${common[@]}" --token-file "$data/dev/token" \
    --keys-per-identity 64 --concurrency "$c" --connections "$(connections "$c")"
done
kid=$(jq -r '.keys[0].kid' "$data/dev/jwks.json")
run "meshca P-256 JWKS 64 ids c=64" "$server_pid" "${common[@]}" \
  --jwt-key "$data/dev/issuer-key.pem" --jwt-kid "$kid" \
  --jwt-issuer https://kubernetes.default.svc.cluster.local --identities 64 \
  --keys-per-identity 4 --concurrency 64 --connections 8
"$bin" bench "${common[@]}" --token-file "$data/dev/token" --ttl-secs 3600 \
  --write-credential "$work/workload" >/dev/null
run "meshca P-256 renewal (mTLS) c=64" "$server_pid" "${common[@]}" \
  --client-cert "$work/workload/cert-chain.pem" --client-key "$work/workload/key.pem" \
  --keys-per-identity 64 --concurrency 64 --connections 8
run "meshca P-256 open loop ${RATE}/s" "$server_pid" "${common[@]}" \
  --token-file "$data/dev/token" --keys-per-identity 64 --rate "$RATE" --concurrency 256 --connections 8
stop "$server_pid"

echo "meshca, P-256 CA, ES256 service-account tokens…" >&2
data=$work/meshca-es256
mkdir -p "$data/dev"
# The dev issuer keeps a key it finds: a P-256 one makes its tokens ES256.
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$data/dev/issuer-key.pem"
chmod 600 "$data/dev/issuer-key.pem"
start_meshca "$work/cacerts-p256" "$data"
common=(--addr 127.0.0.1:15012 --ca-cert "$data/root-cert.pem")
run "meshca P-256 ES256 tokens c=64" "$server_pid" "${common[@]}" \
  --token-file "$data/dev/token" --keys-per-identity 64 --concurrency 64 --connections 8
stop "$server_pid"

if [[ -n ${PERF_POSTGRES_URL:-} ]]; then
  echo "meshca, P-256 CA, PostgreSQL store…" >&2
  data=$work/meshca-pg
  MESHCA_STORE_URL=$PERF_POSTGRES_URL start_meshca "$work/cacerts-p256" "$data"
  common=(--addr 127.0.0.1:15012 --ca-cert "$data/root-cert.pem")
  run "meshca P-256 PostgreSQL c=64" "$server_pid" "${common[@]}" \
    --token-file "$data/dev/token" --keys-per-identity 64 --concurrency 64 --connections 8
  run "meshca P-256 PostgreSQL open loop ${RATE}/s" "$server_pid" "${common[@]}" \
    --token-file "$data/dev/token" --keys-per-identity 64 --rate "$RATE" --concurrency 256 \
    --connections 8
  stop "$server_pid"
fi

echo "meshca, RSA-2048 CA…" >&2
data=$work/meshca-rsa
start_meshca "$work/cacerts-rsa" "$data"
common=(--addr 127.0.0.1:15012 --ca-cert "$data/root-cert.pem")
run "meshca RSA-2048 c=64" "$server_pid" "${common[@]}" --token-file "$data/dev/token" \
  --keys-per-identity 64 --key-type rsa-2048 --concurrency 64 --connections 8
stop "$server_pid"

# --- 3. cfssl -----------------------------------------------------------------------------------
echo "cfssl serve, same P-256 CA…" >&2
cfssl serve -address 127.0.0.1 -port 18888 -ca "$work/cacerts-p256/ca-cert.pem" \
  -ca-key "$work/cacerts-p256/ca-key.pem" -loglevel 5 >"$work/cfssl.log" 2>&1 &
cfssl_pid=$!
pids+=("$cfssl_pid")
for _ in $(seq 1 100); do
  curl -s -o /dev/null http://127.0.0.1:18888/api/v1/cfssl/sign && break
  sleep 0.1
done
for c in $CONCURRENCIES; do
  run "cfssl P-256 c=$c" "$cfssl_pid" --cfssl 127.0.0.1:18888 --keys-per-identity 64 \
    --concurrency "$c"
done
stop "$cfssl_pid"

# --- table --------------------------------------------------------------------------------------
printf '\ncrypto bound (openssl speed): P-256 sign %.0f/s verify %.0f/s -> %.3f ms per certificate; ' \
  "$p256_sign" "$p256_verify" "$bound_p256"
printf 'RSA-2048 sign %.0f/s verify %.0f/s -> %.3f ms\n\n' "$rsa_sign" "$rsa_verify" "$bound_rsa"
printf '%s\n' "${rows[@]}" | jq -rs --argjson bp "$bound_p256" --argjson br "$bound_rsa" '
  (map(select(.label | startswith("cfssl")) | {key: (.label | sub("cfssl P-256 "; "")), value: .throughput_per_sec}) | from_entries) as $cf
  | ["run", "ok/s", "p50 ms", "p90 ms", "p99 ms", "CPU ms/cert", "CPU / crypto", "disk KiB/cert", "x cfssl"],
    (.[] | . as $r
      | ([$r.label | capture("(?<c>c=[0-9]+)$") | .c] | first) as $c
      | [ $r.label,
          ($r.throughput_per_sec | floor | tostring),
          ($r.latency_ms.p50 * 100 | round / 100 | tostring),
          ($r.latency_ms.p90 * 100 | round / 100 | tostring),
          ($r.latency_ms.p99 * 100 | round / 100 | tostring),
          (if $r.server_cpu_ms_per_issuance then ($r.server_cpu_ms_per_issuance * 1000 | round / 1000 | tostring) else "-" end),
          (if ($r.server_cpu_ms_per_issuance and ($r.label | startswith("meshca")))
             then (($r.server_cpu_ms_per_issuance / (if ($r.label | test("RSA")) then $br else $bp end)) * 100 | round / 100 | tostring)
             else "-" end),
          (if $r.server_disk_kib_per_issuance then ($r.server_disk_kib_per_issuance * 10 | round / 10 | tostring) else "-" end),
          (if ($r.label | startswith("meshca P-256 c=")) and $c and $cf[$c]
             then (($r.throughput_per_sec / $cf[$c]) * 100 | round / 100 | tostring)
             else "-" end)
        ])
  | @tsv' | column -t -s $'\t'
