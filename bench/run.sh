#!/usr/bin/env bash
# wafer's benchmark in one command: build release, then run the harness (see BENCHMARKS.md).
# Options are passed through, e.g. `bench/run.sh --secs 10 --conns 32 --large 1000000`.
# `--driver wrk` drives the load with wrk (bench/wrk.lua) and installs it with apt-get if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
prev=""
for a in "$@"; do
    if [[ "$prev" == "--driver" && "$a" == "wrk" ]] && ! command -v wrk >/dev/null; then
        echo "bench: installing wrk (apt-get install wrk)" >&2
        apt-get install -y wrk >/dev/null || { apt-get update >/dev/null && apt-get install -y wrk >/dev/null; }
    fi
    prev="$a"
done
cargo build --release --bin wafer --example bench
exec target/release/examples/bench "$@"
