#!/usr/bin/env bash
# A against B: two meshca binaries (e.g. before and after a change) on the headline row of
# perf-compare.sh (`meshca server --dev` on SQLite, RS256 dev token, 64 in flight), run
# alternately so the VM's drift over minutes hits both alike. Each run starts a fresh server
# and data directory; the first 3 s of load are a warm-up. Prints every run and the mean
# throughput and server CPU per certificate of each binary, and B's ratio to A.
#
#   scripts/ab-issuance.sh BIN_A BIN_B [ROUNDS]      # default 3 rounds; DURATION=10s CONCURRENCY=64
set -euo pipefail

[[ $# -ge 2 ]] || { echo "usage: $0 BIN_A BIN_B [ROUNDS]" >&2; exit 2; }
a=$(realpath "$1")
b=$(realpath "$2")
rounds=${3:-3}
DURATION=${DURATION:-10s}
CONCURRENCY=${CONCURRENCY:-64}
work=$(mktemp -d)
server_pid=
cleanup() {
  [[ -n $server_pid ]] && kill "$server_pid" 2>/dev/null
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

one_run() { # binary, label → prints "label ok/s cpu_ms"
  local bin=$1 label=$2 data
  data=$(mktemp -d -p "$work")
  MESHCA_DATA_DIR=$data MESHCA_LOG=warn MESHCA_GRPC_MAX_IN_FLIGHT_ISSUANCES=1024 \
    MESHCA_GRPC_RATE_LIMIT_PER_IDENTITY_RATE=0 MESHCA_GRPC_RATE_LIMIT_PER_ADDRESS_RATE=0 \
    "$bin" server --dev >"$data.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 1 300); do
    curl -sf http://127.0.0.1:15014/readyz >/dev/null 2>&1 && break
    sleep 0.1
  done
  local common=(--addr 127.0.0.1:15012 --ca-cert "$data/root-cert.pem" --token-file "$data/dev/token"
    --keys-per-identity 64 --concurrency "$CONCURRENCY" --connections 8)
  "$a" bench "${common[@]}" --duration 3s >/dev/null
  "$a" bench --json "${common[@]}" --duration "$DURATION" --server-pid "$server_pid" |
    jq -r --arg l "$label" '"\($l) \(.ok / .seconds) \(.server_cpu_ms_per_issuance) \(.errors | length)"'
  kill "$server_pid"
  wait "$server_pid" 2>/dev/null || true
  server_pid=
}

results=$work/results
for round in $(seq 1 "$rounds"); do
  # Alternate which goes first, so neither always follows a warm machine.
  if ((round % 2)); then order=(A B); else order=(B A); fi
  for label in "${order[@]}"; do
    if [[ $label == A ]]; then bin=$a; else bin=$b; fi
    line=$(one_run "$bin" "$label")
    echo "round $round: $line" >&2
    echo "$line" >>"$results"
  done
done
awk '
  $4 != 0 { errors = 1 }
  { n[$1]++; rate[$1] += $2; cpu[$1] += $3 }
  END {
    for (l in n) { rate[l] /= n[l]; cpu[l] /= n[l] }
    printf "A: %.0f/s, %.3f ms CPU per certificate (mean of %d)\n", rate["A"], cpu["A"], n["A"]
    printf "B: %.0f/s, %.3f ms CPU per certificate (mean of %d)\n", rate["B"], cpu["B"], n["B"]
    printf "B/A: throughput %.3f, CPU per certificate %.3f\n", rate["B"] / rate["A"], cpu["B"] / cpu["A"]
    if (errors) print "some runs had errors: see the lines above" > "/dev/stderr"
  }' "$results"
