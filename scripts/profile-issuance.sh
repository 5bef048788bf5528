#!/usr/bin/env bash
# Where a certificate's server CPU goes: runs `meshca server --dev` (SQLite, RS256 dev token)
# under `meshca bench` at a fixed concurrency, samples the server with `perf record`
# (cpu-clock, call graphs) for the middle of the run, and splits its samples into the items
# docs/performance.md reports: cryptography, kernel, SQLite, allocator, copies, TLS records,
# HTTP/2, gRPC + protobuf, Tokio, JWT/JSON, DER/X.509, the rest. Each item is shown as a share
# of the samples and as µs per certificate (the share × the bench's server CPU per issuance).
#
#   scripts/profile-issuance.sh [--seconds N] [--concurrency C] [--out DIR]
#                                         # defaults: 8 s sampled, 64 in flight, target/profile/<time>
#   PROFILE_ENV="MESHCA_X=y" scripts/profile-issuance.sh   # extra server environment
#   scripts/profile-issuance.sh --classify target/profile/<time>   # items of an earlier run again
set -euo pipefail

# Splits symbols.txt ("<share>% <dso> [.|k] <symbol>" lines) of profile DIR into items, first
# match wins, into DIR/items.txt.
classify() { # dir
  local cpu_ms
  cpu_ms=$(jq '.server_cpu_ms_per_issuance' "$1/bench.json")
  awk -v cpu_ms="$cpu_ms" '
  function item(dso, sym) {
    sub(/@.*/, "", sym)   # glibc symbol versions
    if (dso ~ /kernel|vdso/) return "kernel (syscalls, TCP, scheduling, page cache, fsync)"
    if (sym ~ /^(malloc|free|realloc|calloc|cfree)$|_int_malloc|_int_free|_int_realloc|malloc_consolidate|tcache|unlink_chunk|__libc_(malloc|free|calloc|realloc)|__rust_(alloc|dealloc|realloc|no_alloc)|__rdl_|OPENSSL_(malloc|free|realloc|zalloc|cleanse)|finish_grow|do_reserve_and_handle|^mi_|^_mi_|^je_|sdallocx|mallocx/) return "allocator (malloc/free)"
    if (sym ~ /ecp_nistz256|beeu_|p256|ecdsa|ECDSA|ec_GFp|ec_point|ec_scalar|bignum|bn_|BN_|RSA_|rsa_|sha256|SHA256|sha512|aes|gcm|GFp_|ghash|^aws_lc_/) return "cryptography (P-256, RSA, SHA-2, AES-GCM)"
    if (sym ~ /__mem(cpy|move|set|cmp)|^mem(cpy|move|set|cmp)$|__strlen|^strlen$/) return "copies (memcpy/memmove/memset)"
    if (sym ~ /pthread_|asynccancel/) return "Tokio, threads and locks"
    if (sym ~ /rustls/) return "TLS records and state (rustls, not its crypto)"
    if (sym ~ /h2::|hyper::|httparse|hpack|huffman|bytes::/) return "HTTP/2 (h2, hyper, buffers)"
    if (sym ~ /tonic::|prost::|tower::/) return "gRPC + protobuf (tonic, prost, tower)"
    if (sym ~ /tokio::|mio::|parking_lot|std::sync|futex|crossbeam|poll_fn/) return "Tokio, threads and locks"
    if (sym ~ /rusqlite|sqlx/) return "SQLite (statements, B-trees, WAL, in user space)"
    if (sym ~ /jsonwebtoken|serde_json|serde_core|serde::/) return "JWT and JSON (jsonwebtoken, serde)"
    if (sym ~ /x509|der::|rcgen|asn1|spki|const_oid|meshca_pki/) return "DER and X.509 (parsing, building)"
    if (sym ~ /pem::|hex::|base64|percent_encoding|core::fmt|alloc::fmt|String|core::str|from_utf8/) return "text (PEM, hex, base64, strings, formatting)"
    # C code in the binary other than AWS-LC (prefixed, or matched above) is SQLite: no prefix.
    if (dso ~ /meshca/ && sym !~ /::|</) return "SQLite (statements, B-trees, WAL, in user space)"
    if (sym ~ /meshca/) return "meshca (other)"
    return "other (Rust std, hashing, tracing, …)"
  }
  {
    share = $1; sub(/%/, "", share)
    dso = $2
    sym = ""
    for (i = 4; i <= NF; i++) sym = sym (i > 4 ? " " : "") $i
    total[item(dso, sym)] += share
    all += share
  }
  END {
    printf "%-58s %7s %9s\n", "item", "share", "µs/cert"
    n = asorti(total, keys, "@val_num_desc")
    for (i = 1; i <= n; i++) {
      k = keys[i]
      printf "%-58s %6.1f%% %9.1f\n", k, total[k], total[k] / all * cpu_ms * 1000
    }
    printf "%-58s %6.1f%% %9.1f\n", "all (server CPU per issuance, from the bench)", all, cpu_ms * 1000
  }' "$1/symbols.txt" | tee "$1/items.txt"
}

seconds=8
concurrency=64
out=
while (($#)); do
  case $1 in
    --seconds) seconds=$2; shift 2 ;;
    --concurrency) concurrency=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --classify) classify "$2"; exit ;;
    *) echo "usage: $0 [--seconds N] [--concurrency C] [--out DIR]" >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.."
out=${out:-target/profile/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$out"
out=$(cd "$out" && pwd)
# shellcheck source=scripts/lib/debian.sh
source scripts/lib/debian.sh
ensure_command perf linux-perf profile

script_name=profile
# shellcheck source=scripts/lib/release.sh
source scripts/lib/release.sh

data=$work/server
# shellcheck disable=SC2086 # PROFILE_ENV is a list of assignments
env MESHCA_DATA_DIR="$data" MESHCA_LOG=warn MESHCA_GRPC_MAX_IN_FLIGHT_ISSUANCES=1024 \
  MESHCA_GRPC_RATE_LIMIT_PER_IDENTITY_RATE=0 MESHCA_GRPC_RATE_LIMIT_PER_ADDRESS_RATE=0 \
  ${PROFILE_ENV:-} "$bin" server --dev >"$out/server.log" 2>&1 &
server_pid=$!
pids+=("$server_pid")
wait_ready http://127.0.0.1:15014/readyz 300

# Warm up (connections, caches, the WAL's size), then sample the middle of a longer run.
"$bin" bench --addr 127.0.0.1:15012 --ca-cert "$data/root-cert.pem" \
  --token-file "$data/dev/token" --keys-per-identity 64 --concurrency "$concurrency" \
  --connections 8 --duration 3s >/dev/null
"$bin" bench --json --addr 127.0.0.1:15012 --ca-cert "$data/root-cert.pem" \
  --token-file "$data/dev/token" --keys-per-identity 64 --concurrency "$concurrency" \
  --connections 8 --duration "$((seconds + 4))s" --server-pid "$server_pid" >"$out/bench.json" &
bench_pid=$!
sleep 2
perf record -q -F 999 -g -p "$server_pid" -o "$out/perf.data" -- sleep "$seconds" 2>/dev/null
wait "$bench_pid"

perf report -i "$out/perf.data" --no-children --sort dso,sym --stdio -g none \
  --percent-limit 0 2>/dev/null | grep -E '^ +[0-9]' >"$out/symbols.txt"

classify "$out"
echo >&2
jq -r '"bench: \(.throughput_per_sec|floor)/s at '"$concurrency"' in flight, server CPU \(.server_cpu_ms_per_issuance*1000|floor) µs per certificate; errors: \(.errors)"' "$out/bench.json" >&2
echo "profile: perf.data, symbols.txt (every symbol's share) and items.txt in $out" >&2
