#!/usr/bin/env bash
# Long steady load on one machine: does anything leak or fail? Runs `meshca server --dev`
# (SQLite), 20 node agents renewing 60 s certificates, and `meshca bench` in open loop at half
# the throughput measured at the start, for N minutes. Every minute it samples each process's
# RSS and open file descriptors and fetches an SVID from every agent's Workload API (a
# connection opened and closed, as a workload starting does). Fails on any error, or if a
# meshca process grows by 10 % or more (RSS or FDs) from minutes 5–9 to the last 5 minutes.
# Writes samples.tsv, summary.md and soak.png (gnuplot) into the output directory. Not run by
# CI; the last run's table is in docs/reliability.md.
#
#   scripts/soak.sh [--minutes N] [--out DIR]      # defaults: 30 minutes, target/soak/<time>
#   SAMPLE_SECS=10 scripts/soak.sh --minutes 2     # a quick check of the script itself
set -euo pipefail

minutes=30
out=
while (($#)); do
  case $1 in
    --minutes) minutes=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "usage: $0 [--minutes N] [--out DIR]" >&2; exit 2 ;;
  esac
done
SAMPLE_SECS=${SAMPLE_SECS:-60}
AGENTS=${AGENTS:-20}
WARMUP_SAMPLES=${WARMUP_SAMPLES:-5} # growth is measured from this sample on
cd "$(dirname "$0")/.."
out=${out:-target/soak/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$out"
out=$(cd "$out" && pwd)

for tool in jq curl; do
  command -v "$tool" >/dev/null || { echo "soak: $tool is missing" >&2; exit 1; }
done
# shellcheck source=scripts/lib/debian.sh
source scripts/lib/debian.sh
ensure_command gnuplot gnuplot-nox soak   # for the plot

script_name=soak
# shellcheck source=scripts/lib/release.sh
source scripts/lib/release.sh

# One load generator on one address stands for a whole fleet, so the per-address limit is off;
# the per-identity limit stays on (the load spreads over 64 identities, well under it).
data=$work/server
MESHCA_DATA_DIR=$data MESHCA_LOG=warn MESHCA_GRPC_RATE_LIMIT_PER_ADDRESS_RATE=0 \
  "$bin" server --dev >"$out/server.log" 2>&1 &
server_pid=$!
pids+=("$server_pid")
wait_ready http://127.0.0.1:15014/readyz 300

declare -A label_of=([$server_pid]=server)
agent_sockets=()
for i in $(seq 1 "$AGENTS"); do
  dir=$work/agent-$i
  mkdir -p "$dir"
  MESHCA_AGENT_CA_ADDR=127.0.0.1:15012 MESHCA_AGENT_CA_ROOT_CERT=$data/root-cert.pem \
    MESHCA_AGENT_TOKEN_FILE=$data/dev/token MESHCA_AGENT_NAMESPACE=default \
    MESHCA_AGENT_SERVICE_ACCOUNT=default MESHCA_AGENT_CERT_TTL=60s \
    MESHCA_AGENT_SDS_SOCKET=$dir/sds.sock MESHCA_AGENT_WORKLOAD_API_SOCKET=$dir/spiffe.sock \
    MESHCA_AGENT_METRICS_LISTEN=127.0.0.1:$((16000 + i)) MESHCA_LOG=warn \
    "$bin" agent --data-dir "$dir/data" >"$out/agent-$i.log" 2>&1 &
  pids+=("$!")
  label_of[$!]=agent-$i
  agent_sockets+=("$dir/spiffe.sock")
done
for i in $(seq 1 "$AGENTS"); do wait_ready "http://127.0.0.1:$((16000 + i))/readyz" 300; done

common=(--addr 127.0.0.1:15012 --ca-cert "$data/root-cert.pem"
  --jwt-key "$data/dev/issuer-key.pem" --jwt-kid "$(jq -r '.keys[0].kid' "$data/dev/jwks.json")"
  --jwt-issuer https://kubernetes.default.svc.cluster.local --identities 64 --keys-per-identity 4
  --connections 8)
echo "soak: measuring saturation (10 s, 64 in flight)…" >&2
saturation=$("$bin" bench --json --duration 10s --concurrency 64 "${common[@]}" |
  jq '.throughput_per_sec | floor')
rate=$((saturation / 2))
echo "soak: saturation ${saturation}/s → open loop at ${rate}/s for ${minutes} min" >&2

"$bin" bench --json --duration "$((minutes * 60))s" --rate "$rate" --concurrency 256 \
  --server-pid "$server_pid" "${common[@]}" >"$out/bench.json" 2>"$out/bench.log" &
bench_pid=$!
pids+=("$bench_pid")
label_of[$bench_pid]=bench

printf 'sample\tseconds\tprocess\trss_kib\tfds\n' >"$out/samples.tsv"
fetch_errors=0
start=$(date +%s)
samples=$((minutes * 60 / SAMPLE_SECS))
for n in $(seq 0 "$samples"); do
  wait_secs=$((start + n * SAMPLE_SECS - $(date +%s)))
  ((wait_secs <= 0)) || sleep "$wait_secs"
  elapsed=$(($(date +%s) - start))
  for pid in "${!label_of[@]}"; do
    [[ -r /proc/$pid/status ]] || continue
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")
    fds=$(find "/proc/$pid/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
    printf '%s\t%s\t%s\t%s\t%s\n' "$n" "$elapsed" "${label_of[$pid]}" "$rss" "$fds" >>"$out/samples.tsv"
  done
  for socket in "${agent_sockets[@]}"; do
    "$bin" workload fetch --socket "$socket" --timeout 5s >/dev/null 2>>"$out/fetch-errors.log" ||
      fetch_errors=$((fetch_errors + 1))
  done
  echo "soak: sample $n/$samples at ${elapsed}s, server RSS $(awk -v p=server '$3==p {r=$4} END {print r}' "$out/samples.tsv") KiB" >&2
done
wait "$bench_pid"

# --- verdict ------------------------------------------------------------------------------------
bench_errors=$(jq '[.errors[]] | add // 0' "$out/bench.json")
# A renewal the server shed (RESOURCE_EXHAUSTED: its in-flight cap) and the agent retried is
# counted apart, as the bench counts its own shed-and-retried calls: the workload saw nothing.
# Any other failed attempt is a failure.
csr_failures=0
csr_shed=0
csrs=0
for i in $(seq 1 "$AGENTS"); do
  metrics=$(curl -sf "http://127.0.0.1:$((16000 + i))/metrics" || true)
  f=$(awk '/^meshca_agent_csr_failure_count/ {print $2}' <<<"$metrics")
  c=$(awk '/^meshca_agent_csr_count/ {print $2}' <<<"$metrics")
  shed=$(grep -c 'certificate request failed.*ResourceExhausted' "$out/agent-$i.log" || true)
  # An agent that cannot answer counts as a failure.
  csr_failures=$((csr_failures + ${f:-1} - shed))
  csr_shed=$((csr_shed + shed))
  csrs=$((csrs + ${c:-0}))
done
# Growth of each process (the bench too: it keeps latencies in a bounded histogram): the mean
# of its last 5 samples against the mean of the 5 from
# the warm-up on (one sample is too noisy: the server's RSS swings a few MiB with the load).
growth=$(awk -F'\t' -v w="$WARMUP_SAMPLES" -v last="$samples" 'NR > 1 {
    if ($1 >= w && $1 < w + 5) { rb[$3] += $4; fb[$3] += $5; nb[$3]++ }
    if ($1 > last - 5) { re[$3] += $4; fe[$3] += $5; ne[$3]++ }
  } END {
    worst_rss = 0; worst_fd = 0
    for (p in nb) {
      if (!ne[p]) continue
      g = (re[p] / ne[p]) / (rb[p] / nb[p]) - 1; if (g > worst_rss) { worst_rss = g; wr = p }
      g = (fe[p] / ne[p]) / (fb[p] / nb[p]) - 1; if (g > worst_fd) { worst_fd = g; wf = p }
    }
    printf "%.1f %s %.1f %s\n", worst_rss * 100, (wr ? wr : "-"), worst_fd * 100, (wf ? wf : "-")
  }' "$out/samples.tsv")
read -r rss_growth rss_worst fd_growth fd_worst <<<"$growth"

table() { # process label
  awk -F'\t' -v p="$1" -v w="$WARMUP_SAMPLES" 'NR > 1 && $3 == p {
      if (!first) { first = 1; r0 = $4; f0 = $5 }
      if ($1 == w) { rw = $4; fw = $5 }
      r = $4; f = $5; if ($4 > rmax) rmax = $4
    } END { printf "| %s | %.1f | %.1f | %.1f | %.1f | %d | %d | %d |\n", p, r0/1024, rw/1024, r/1024, rmax/1024, f0, fw, f }' \
    "$out/samples.tsv"
}
{
  echo "Soak of $(date -u +%Y-%m-%d): ${minutes} min, ${AGENTS} agents (60 s certificates), bench open loop at ${rate}/s"
  echo "(half of the ${saturation}/s measured at the start, 64 identities, RS256 tokens), SQLite store."
  echo
  jq -r '"Bench: \(.ok) certificates, \(.throughput_per_sec|floor)/s, p50 \(.latency_ms.p50*100|round/100) ms, p99 \(.latency_ms.p99*100|round/100) ms, max \(.latency_ms.max|round) ms, errors \([.errors[]] | add // 0), server CPU \(.server_cpu_ms_per_issuance*1000|round/1000) ms per certificate."' "$out/bench.json"
  echo "Agents: ${csrs} CSRs (renewals), ${csr_failures} failed, ${csr_shed} shed by the server and retried; Workload API fetches: $((AGENTS * (samples + 1))), ${fetch_errors} failed."
  echo "Largest growth, mean of the last 5 samples over the mean of samples ${WARMUP_SAMPLES}–$((WARMUP_SAMPLES + 4)): RSS ${rss_growth} % (${rss_worst}), FDs ${fd_growth} % (${fd_worst})."
  echo
  echo "| process | RSS start MiB | RSS at sample ${WARMUP_SAMPLES} | RSS end | RSS max | FDs start | FDs at ${WARMUP_SAMPLES} | FDs end |"
  echo "|---|---|---|---|---|---|---|---|"
  table server
  for i in $(printf "%s\n" 1 2 "$AGENTS" | sort -nu); do table "agent-$i"; done
  table bench
} >"$out/summary.md"

mkdir -p "$work/series"
awk -F'\t' -v d="$work/series" 'NR > 1 { print > (d "/" $3) }' "$out/samples.tsv"
gnuplot <<EOF
set terminal png size 900,520 font ",10"
set output "$out/soak.png"
set title "meshca soak: ${minutes} min at ${rate}/s, ${AGENTS} agents"
set xlabel "minutes"
set ylabel "RSS (MiB)"
set y2label "open FDs (server)"
set yrange [0:*]
set y2range [0:*]
set ytics nomirror
set y2tics
set key outside right
set datafile separator "\t"
plot "$work/series/server" using (\$2/60):(\$4/1024) with lines lw 2 title "server RSS", \
     "$work/series/agent-1" using (\$2/60):(\$4/1024) with lines title "agent-1 RSS", \
     "$work/series/agent-${AGENTS}" using (\$2/60):(\$4/1024) with lines title "agent-${AGENTS} RSS", \
     "$work/series/server" using (\$2/60):5 axes x1y2 with lines dt 2 title "server FDs"
EOF

cat "$out/summary.md"
echo "soak: samples, summary and plot in $out" >&2
fail=0
((bench_errors == 0)) || { echo "soak: FAILED: the bench saw $bench_errors errors" >&2; fail=1; }
((fetch_errors == 0)) || { echo "soak: FAILED: $fetch_errors Workload API fetches failed" >&2; fail=1; }
((csr_failures == 0)) || { echo "soak: FAILED: agents counted $csr_failures CSR failures" >&2; fail=1; }
awk -v r="$rss_growth" -v f="$fd_growth" 'BEGIN { exit !(r < 10 && f < 10) }' ||
  { echo "soak: FAILED: growth after the warm-up is 10 % or more" >&2; fail=1; }
exit "$fail"
