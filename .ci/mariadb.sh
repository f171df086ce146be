# A private MariaDB for wafer's MySQL tests: source this file, then `mariadb_start` and
# `mariadb_stop`. It never touches a system MariaDB service: the server runs from a temp dir on a
# free loopback port with its own socket, under the caller's user. `mariadb_start` exports
# WAFER_TEST_MYSQL_URL (a user with a random password, created through the socket), which
# tests/it/mysql.rs reads. When mariadbd is missing and we are root (CI), it installs
# mariadb-server with apt-get first.
#
#   . .ci/mariadb.sh && mariadb_start && cargo test; mariadb_stop

mariadb_start() {
    local daemon
    daemon=$(command -v mariadbd || command -v mysqld || true)
    if [ -z "$daemon" ]; then
        if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
            echo "mariadb.sh: mariadbd not found; install mariadb-server" >&2
            return 1
        fi
        echo "mariadb.sh: installing mariadb-server" >&2
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
                mariadb-server >/dev/null || return 1
        daemon=$(command -v mariadbd || command -v mysqld)
    fi
    # mariadbd refuses to run as root unless told to; the data dir is ours either way.
    local as_user=()
    [ "$(id -u)" = 0 ] && as_user=(--user=root)
    MARIADB_DIR=$(mktemp -d "${TMPDIR:-/tmp}/wafer-mariadb.XXXXXX")
    export MARIADB_DIR
    mariadb-install-db --no-defaults "${as_user[@]}" --datadir="$MARIADB_DIR/data" \
        --auth-root-authentication-method=normal --skip-test-db \
        >"$MARIADB_DIR/install.log" 2>&1 || {
        echo "mariadb.sh: mariadb-install-db failed (log: $MARIADB_DIR/install.log)" >&2
        return 1
    }
    local port tries
    for tries in 1 2 3 4 5; do
        port=$((20000 + RANDOM % 40000))
        # A port something already answers on is taken; try another.
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && continue
        "$daemon" --no-defaults "${as_user[@]}" --datadir="$MARIADB_DIR/data" \
            --socket="$MARIADB_DIR/sock" --pid-file="$MARIADB_DIR/pid" \
            --port="$port" --bind-address=127.0.0.1 --skip-name-resolve \
            --log-error="$MARIADB_DIR/error.log" --innodb-buffer-pool-size=64M \
            --max-connections=500 &
        MARIADB_PID=$!
        export MARIADB_PID
        local i
        for i in $(seq 1 60); do
            if mariadb-admin --no-defaults --socket="$MARIADB_DIR/sock" -uroot ping \
                >/dev/null 2>&1; then
                break
            fi
            kill -0 "$MARIADB_PID" 2>/dev/null || break
            sleep 0.5
        done
        if kill -0 "$MARIADB_PID" 2>/dev/null &&
            mariadb-admin --no-defaults --socket="$MARIADB_DIR/sock" -uroot ping >/dev/null 2>&1; then
            local pass
            pass=$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
            mariadb --no-defaults --socket="$MARIADB_DIR/sock" -uroot -e "
                CREATE USER 'wafer_test'@'127.0.0.1' IDENTIFIED BY '$pass';
                GRANT ALL ON *.* TO 'wafer_test'@'127.0.0.1';" || return 1
            export WAFER_TEST_MYSQL_URL="mysql://wafer_test:$pass@127.0.0.1:$port/"
            echo "mariadb.sh: private MariaDB on 127.0.0.1:$port (data in $MARIADB_DIR)" >&2
            return 0
        fi
        # Lost the port to someone else, or it did not come up: stop it and try again.
        kill "$MARIADB_PID" 2>/dev/null
        wait "$MARIADB_PID" 2>/dev/null
    done
    echo "mariadb.sh: mariadbd did not start (log: $MARIADB_DIR/error.log)" >&2
    tail -5 "$MARIADB_DIR/error.log" >&2
    return 1
}

mariadb_stop() {
    if [ -n "${MARIADB_PID:-}" ] && kill -0 "$MARIADB_PID" 2>/dev/null; then
        kill "$MARIADB_PID" 2>/dev/null
        wait "$MARIADB_PID" 2>/dev/null
    fi
    [ -n "${MARIADB_DIR:-}" ] && rm -rf "$MARIADB_DIR"
    unset MARIADB_PID MARIADB_DIR WAFER_TEST_MYSQL_URL
    return 0
}
