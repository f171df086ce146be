#!/usr/bin/env bash
# wafer's benchmark in one command: build release, then run the harness (see BENCHMARKS.md).
# Options are passed through, e.g. `bench/run.sh --secs 10 --conns 32 --large 1000000`.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin wafer --example bench
exec target/release/examples/bench "$@"
