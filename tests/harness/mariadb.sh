#!/usr/bin/env bash
# A throwaway MariaDB server for the MySQL tests, in a temp dir.
#   mariadb.sh start DIR   -> starts it, prints KEY=VALUE lines for the environment
#   mariadb.sh stop DIR    -> stops it and removes DIR
# On a unix socket under DIR and on 127.0.0.1:PORT; --log-warnings=2, so an
# abrupt client end is logged ("Aborted connection"), in an error log the tests
# read. As root the server runs as $LASTCALL_TEST_USER (default nobody).
# The tests connect as user lastcall with a password (KILL QUERY reuses it).
set -euo pipefail

cmd=${1:?usage: mariadb.sh start|stop DIR}
dir=${2:?usage: mariadb.sh start|stop DIR}

as_server_user() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u "${LASTCALL_TEST_USER:-nobody}" -- "$@"
    else
        "$@"
    fi
}

need() {
    command -v "$1" >/dev/null || { echo "mariadb.sh: $1 not found (apt-get install mariadb-server)" >&2; exit 1; }
}

server_args() {
    echo --no-defaults --datadir="$dir/data" --socket="$dir/mysqld.sock" \
        --pid-file="$dir/mysqld.pid" --log-error="$dir/error.log" --log-warnings=2 \
        --bind-address=127.0.0.1 --port="$1" --skip-log-bin --max-connections=300 \
        --innodb-buffer-pool-size=16M --innodb-log-file-size=8M \
        --innodb-flush-log-at-trx-commit=0 --skip-name-resolve --tmpdir="$dir"
}

start() {
    local port i
    need mariadb-install-db
    need mariadbd
    mkdir -p "$dir/data"
    chmod 755 "$dir"
    [ "$(id -u)" = 0 ] && chown -R "${LASTCALL_TEST_USER:-nobody}" "$dir"
    as_server_user mariadb-install-db --no-defaults --datadir="$dir/data" \
        --auth-root-authentication-method=normal --skip-test-db >"$dir/install.log" 2>&1 \
        || { cat "$dir/install.log" >&2; exit 1; }
    for i in 1 2 3 4 5 6 7 8; do
        port=$((20000 + RANDOM % 20000))
        # As root, mariadbd drops to the user itself (--user): a runuser in the
        # background would be stopped by the terminal and never reap it.
        # shellcheck disable=SC2046
        setsid mariadbd $(server_args "$port") $([ "$(id -u)" = 0 ] && echo --user="${LASTCALL_TEST_USER:-nobody}") \
            </dev/null >/dev/null 2>&1 &
        for _ in $(seq 300); do
            [ -S "$dir/mysqld.sock" ] && break
            kill -0 $! 2>/dev/null || break
            sleep 0.05
        done
        [ -S "$dir/mysqld.sock" ] && break
        port=""
    done
    [ -n "$port" ] || { echo "mariadb.sh: mariadbd did not start" >&2; cat "$dir/error.log" >&2; exit 1; }
    mariadb --no-defaults -S "$dir/mysqld.sock" -u root <<'SQL'
CREATE USER 'lastcall'@'localhost' IDENTIFIED BY 'lc-secret-pw';
CREATE USER 'lastcall'@'127.0.0.1' IDENTIFIED BY 'lc-secret-pw';
GRANT ALL ON *.* TO 'lastcall'@'localhost';
GRANT ALL ON *.* TO 'lastcall'@'127.0.0.1';
CREATE DATABASE lctest;
CREATE TABLE lctest.t (id INT PRIMARY KEY, v INT) ENGINE=InnoDB;
INSERT INTO lctest.t VALUES (1, 0);
SQL
    cat <<ENV | tee "$dir/env"
LC_TEST_MY_DIR=$dir
LC_TEST_MY_SOCK=$dir/mysqld.sock
LC_TEST_MY_PORT=$port
LC_TEST_MY_USER=lastcall
LC_TEST_MY_PASSWORD=lc-secret-pw
LC_TEST_MY_DB=lctest
LC_TEST_MY_LOG=$dir/error.log
LC_TEST_MY_PIDFILE=$dir/mysqld.pid
ENV
}

stop() {
    local pid
    pid=$(cat "$dir/mysqld.pid" 2>/dev/null || true)
    if [ -n "$pid" ]; then
        kill -CONT "$pid" 2>/dev/null || true
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 200); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.05
        done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    case "$dir" in
        /tmp/*) rm -rf "$dir" ;;
    esac
}

case "$cmd" in
    start) start ;;
    stop) stop ;;
    *) echo "usage: mariadb.sh start|stop DIR" >&2; exit 2 ;;
esac
