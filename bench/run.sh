#!/usr/bin/env bash
# wafer's benchmark in one command: build release, then run the harness (see BENCHMARKS.md).
# Options are passed through, e.g. `bench/run.sh --secs 10 --conns 32 --large 1000000`.
# `--driver wrk` drives the load with wrk (bench/wrk.lua) and installs it with apt-get if missing.
# `--mysql URL` also runs the session check on that MySQL-compatible server; `--mysql` alone
# starts a private MariaDB for the run (.ci/mariadb.sh) and stops it at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
args=()
private_mariadb=0
prev=""
while (($#)); do
    a="$1"
    shift
    if [[ "$prev" == "--driver" && "$a" == "wrk" ]] && ! command -v wrk >/dev/null; then
        echo "bench: installing wrk (apt-get install wrk)" >&2
        apt-get install -y wrk >/dev/null || { apt-get update >/dev/null && apt-get install -y wrk >/dev/null; }
    fi
    if [[ "$a" == "--mysql" ]]; then
        if [[ "${1:-}" == mysql://* ]]; then
            # Handed over in the environment, not on the command line other users can read.
            export WAFER_BENCH_MYSQL_URL="$1"
            shift
        else
            private_mariadb=1
        fi
        prev="$a"
        continue
    fi
    args+=("$a")
    prev="$a"
done
cargo build --release --bin wafer --example bench
if ((private_mariadb)); then
    # shellcheck source=../.ci/mariadb.sh
    . .ci/mariadb.sh
    mariadb_start
    trap mariadb_stop EXIT
    # The database server's process, for its CPU per request.
    WAFER_BENCH_MYSQL_URL="$WAFER_TEST_MYSQL_URL" WAFER_BENCH_MYSQL_PID="$MARIADB_PID" \
        target/release/examples/bench "${args[@]}"
else
    exec target/release/examples/bench "${args[@]}"
fi
