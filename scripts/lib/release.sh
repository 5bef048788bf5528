# Shared by the scripts that drive a release build of meshca (perf-compare.sh, soak.sh): source
# it after `cd` to the repository. Builds the binary into $bin (under $CARGO_TARGET_DIR if
# set), makes a scratch directory $work, and on exit kills every pid pushed onto $pids and
# removes $work.
#   script_name: the caller's name, prefixed to its messages.

cargo build --release --locked -p meshca >&2
bin=$(realpath "${CARGO_TARGET_DIR:-target}")/release/meshca
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

wait_ready() { # url [tries of 100 ms, default 100]
  for _ in $(seq 1 "${2:-100}"); do
    curl -sf "$1" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "$script_name: $1 never became ready" >&2
  exit 1
}
