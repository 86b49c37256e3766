#!/bin/sh
# Issue 10's benchmarks in one command: the portserver endpoint (against portserver.py and the
# connect-per-request echo, raw and through the Python portpicker client), scale (1,000
# clients: memory, paced p99) and re-claim after a restart — each pinned (client, daemon and
# peer servers all on CPU 0, `taskset -c 0`) and unpinned. Prints the machine, then every
# table. Figures and their reading: BENCHMARKS.md.
#
#   crates/berth-bench/issue10.sh                 # build (release), then run everything
#   NO_BUILD=1 crates/berth-bench/issue10.sh      # run the binaries already built
#   MODES="scale reclaim" crates/berth-bench/issue10.sh
#
# Needs Python 3 with `pip install portpicker` for the portserver.py and Python-client rows
# (they are skipped, with a note, otherwise). Writes nothing outside a temporary directory.
set -eu
cd "$(dirname "$0")/../.."
TARGET=${CARGO_TARGET_DIR:-target}
BIN=${BERTH_BENCH_BIN_DIR:-/tmp/berth-bench-bin}
MODES=${MODES:-portserver scale reclaim}
if [ -z "${NO_BUILD:-}" ]; then
    cargo build --release -p berth-cli -p berth-bench
fi
# Copies, so that a concurrent build cannot replace the binaries mid-run.
mkdir -p "$BIN"
cp "$TARGET/release/berth" "$TARGET/release/berth-bench" "$BIN/"
bench() {
    mode=$1
    shift
    "$BIN/berth-bench" "$mode" --berth-bin "$BIN/berth" "$@"
}

echo "# berth-bench, issue 10 — $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
echo "CPUs $(nproc), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), kernel $(uname -r), load average $(cut -d' ' -f1-3 /proc/loadavg)"
for pin in pinned unpinned; do
    if [ "$pin" = pinned ]; then P="--client-cpu 0 --server-cpu 0"; else P=""; fi
    for mode in $MODES; do
        echo
        echo "## $mode, $pin ($(cut -d' ' -f1-3 /proc/loadavg))"
        echo
        case "$mode" in
            portserver) bench portserver $P ;;
            scale) bench scale $P ;;
            reclaim) bench reclaim $P; echo; bench reclaim --crash --restarts 1 $P ;;
            *) echo "unknown mode $mode" >&2; exit 2 ;;
        esac
    done
done
