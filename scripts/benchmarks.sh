#!/usr/bin/env bash
# Rerunnable benchmarks: builds release, runs every `privgw bench` shape this build has
# (group and register when `privgw bench --help` lists them, then front, handshakes, proxy,
# soak),
# each bounded by `timeout`, draws the plots with `privgw bench plot` and writes BENCHMARKS.md
# at the repository root: machine facts, the exact commands, the tables and the figures
# (SVG under docs/bench/).
#
# Usage: scripts/benchmarks.sh [--quick]
#   --quick   tiny loads (a smoke run: minutes → seconds); the numbers are not worth quoting
# Environment: OUT (results folder, default target/bench-results: not committed), IMAGES (default docs/bench),
#   SHAPE_TIMEOUT (seconds per shape, default 900), GROUP_ARGS / REGISTER_ARGS (extra
#   arguments for those shapes), CARGO_TARGET_DIR (where the release binary is).
set -uo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT=${OUT:-target/bench-results}
IMAGES=${IMAGES:-docs/bench}
SHAPE_TIMEOUT=${SHAPE_TIMEOUT:-900}
QUICK=0
[ "${1:-}" = "--quick" ] && QUICK=1

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
cargo build --release --quiet || exit 1
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/privgw
[ -x "$BIN" ] || { echo "no release binary at $BIN" >&2; exit 1; }
command -v coap-server-openssl >/dev/null || { echo "coap-server-openssl missing (apt-get install libcoap3-bin)" >&2; exit 1; }

rm -rf "$OUT"
mkdir -p "$OUT" "$IMAGES"
COMMANDS=$(mktemp)
STATUS=$(mktemp)
trap 'rm -f "$COMMANDS" "$STATUS"' EXIT

if [ $QUICK = 1 ]; then
  GROUP_ARGS=${GROUP_ARGS:---devices 1,10,100 --rounds 3 --max-seconds 120}
  REGISTER_ARGS=${REGISTER_ARGS:---devices 100 --rounds 3 --max-seconds 120}
  FRONT=(front --shapes 1x1,16x1,64x4 --runs 1 --requests 2000 --run-seconds 2)
  HANDSHAKES=(handshakes --clients 4 --seconds 1 --runs 1)
  PROXY=(proxy --runs 1 --requests 2000 --run-seconds 2)
  PROXY16=(proxy --runs 1 --requests 2000 --run-seconds 2 --nstart 16 --table proxy_nstart16)
  SOAK=(soak --seconds 2 --sample-seconds 0.5 --shape 16x2 --handshakers 2)
else
  GROUP_ARGS=${GROUP_ARGS:---devices 1,10,100,1000,3000,10000 --rounds 10 --max-seconds 800}
  REGISTER_ARGS=${REGISTER_ARGS:---devices 10000 --rounds 10 --max-seconds 300}
  FRONT=(front --shapes 1x1,16x1,64x4 --runs 3 --requests 50000 --run-seconds 3)
  HANDSHAKES=(handshakes --clients 8 --seconds 5 --runs 3)
  PROXY=(proxy --runs 3 --requests 50000 --run-seconds 5)
  PROXY16=(proxy --runs 3 --requests 50000 --run-seconds 5 --nstart 16 --table proxy_nstart16)
  SOAK=(soak --seconds 60 --sample-seconds 5 --shape 64x4 --handshakers 4)
fi

shapes=$("$BIN" bench --help)
has() { grep -qE "^  $1 " <<<"$shapes"; }

# One shape: the command as run goes into BENCHMARKS.md, its outcome too; a failing shape
# does not stop the others.
bench() {
  local name=$1; shift
  local shown="privgw bench --out $OUT $*"
  echo "== $shown" >&2
  echo "$shown" >>"$COMMANDS"
  local t0=$SECONDS
  timeout "$SHAPE_TIMEOUT" "$BIN" bench --out "$OUT" "$@"
  local rc=$?
  echo "| \`$name\` | $([ $rc = 0 ] && echo ok || echo "failed (exit $rc)") | $((SECONDS - t0)) s |" >>"$STATUS"
}

# shellcheck disable=SC2086
has group && bench group group ${GROUP_ARGS:-}
# shellcheck disable=SC2086
has register && bench register register ${REGISTER_ARGS:-}
bench front "${FRONT[@]}"
bench handshakes "${HANDSHAKES[@]}"
bench proxy "${PROXY[@]}"
bench proxy_nstart16 "${PROXY16[@]}"
bench soak "${SOAK[@]}"
for s in group register; do
  has $s || echo "| \`$s\` | not in this build (\`privgw bench --help\`) | – |" >>"$STATUS"
done

TABLES=$("$BIN" bench --out "$OUT" plot --images "$IMAGES" --markdown --link-prefix "$IMAGES")
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

{
  echo "# Benchmarks"
  echo
  echo "Produced by \`scripts/benchmarks.sh$([ $QUICK = 1 ] && echo ' --quick')\` on $(date -u '+%Y-%m-%d %H:%M UTC'), commit \`$(git rev-parse --short HEAD)\`$(git diff --quiet HEAD -- src Cargo.toml || echo ' (with uncommitted changes)'). Rerun it to replace this file; the raw tables (CSV and JSON) were in \`$OUT/\`, which is not committed."
  echo
  echo "Every figure is a same-run comparison: the same client (\`privgw bench\`'s closed-loop engine, \`src/cli/bench/closed_loop.rs\`) against privgw (\`privgw serve\`, release build, a child process) and against libcoap's \`coap-server-openssl\`, alternating run by run; ratio = privgw / libcoap (> 1: privgw faster). Rates are medians over the runs; CPU per request is the server process's user + system time (\`/proc/<pid>/stat\`) over the answered requests. Client and servers share the machine's cores."
  echo
  echo "## Machine"
  echo
  echo "| | |"
  echo "|---|---|"
  echo "| cores (\`nproc\`) | $(nproc) |"
  echo "| CPU | $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//') |"
  echo "| kernel | $(uname -sr) |"
  echo "| memory | $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo) |"
  echo "| load average before / after | $LOAD_BEFORE / $LOAD_AFTER |"
  echo "| libcoap | $(coap-server-openssl -h 2>&1 | grep -m1 -o 'v[0-9][0-9.]*') (\`coap-server-openssl\`) |"
  echo "| rustc | $(rustc --version) |"
  echo
  echo "## Commands"
  echo
  echo '```sh'
  echo "cargo build --release"
  cat "$COMMANDS"
  echo "privgw bench --out $OUT plot --images $IMAGES --markdown --link-prefix $IMAGES"
  echo '```'
  echo
  echo "| shape | outcome | took |"
  echo "|---|---|---|"
  cat "$STATUS"
  echo
  echo "## Results"
  echo
  echo "$TABLES"
} >BENCHMARKS.md
echo "wrote BENCHMARKS.md and $IMAGES/*.svg" >&2
