#!/usr/bin/env bash
# Throwaway PostgreSQL and redis-server for the tests, in a temp dir.
#   servers.sh start DIR   -> starts both, prints KEY=VALUE lines for the environment
#   servers.sh stop DIR    -> stops both and removes DIR
# initdb refuses root: as root the servers run as the unprivileged user
# $LASTCALL_TEST_USER (default nobody).
set -euo pipefail

cmd=${1:?usage: servers.sh start|stop DIR}
dir=${2:?usage: servers.sh start|stop DIR}

pg_bindir() {
    local d
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        [ -x "$d/initdb" ] && { echo "$d"; return; }
    done
    if command -v pg_config >/dev/null && [ -x "$(pg_config --bindir)/initdb" ]; then
        pg_config --bindir; return
    fi
    command -v initdb >/dev/null && { dirname "$(command -v initdb)"; return; }
    echo "servers.sh: no initdb found (apt-get install postgresql)" >&2
    exit 1
}

as_server_user() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u "${LASTCALL_TEST_USER:-nobody}" -- "$@"
    else
        "$@"
    fi
}

# redis-server on a unix socket, on 127.0.0.1:PORT and, with TLS (clients
# need no certificate), on 127.0.0.1:TLS_PORT.
redis_start() {
    as_server_user redis-server --port "$1" --bind 127.0.0.1 \
        --tls-port "$2" --tls-cert-file "$dir/redis-tls.crt" --tls-key-file "$dir/redis-tls.key" \
        --tls-ca-cert-file "$dir/redis-tls.crt" --tls-auth-clients no \
        --unixsocket "$dir/sock/redis.sock" --unixsocketperm 777 \
        --daemonize yes --pidfile "$dir/redis.pid" --dir "$dir" \
        --logfile "$dir/redis.log" --save '' --appendonly no >/dev/null 2>&1
}

start() {
    local bindir port rport tport i
    bindir=$(pg_bindir)
    mkdir -p "$dir/pg" "$dir/sock"
    chmod 755 "$dir" "$dir/sock"
    if [ "$(id -u)" = 0 ]; then
        chown -R "${LASTCALL_TEST_USER:-nobody}" "$dir"
    fi
    as_server_user "$bindir/initdb" -D "$dir/pg" -U lastcall -A trust -E UTF8 --no-sync \
        >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }
    # A self-signed certificate, so tests can use sslmode=require over TCP.
    openssl req -new -x509 -days 2 -nodes -subj "/CN=127.0.0.1" \
        -keyout "$dir/pg/server.key" -out "$dir/pg/server.crt" >/dev/null 2>&1
    chmod 600 "$dir/pg/server.key"
    [ "$(id -u)" = 0 ] && chown "${LASTCALL_TEST_USER:-nobody}" "$dir/pg/server.key" "$dir/pg/server.crt"
    for i in 1 2 3 4 5 6 7 8; do
        port=$((20000 + RANDOM % 20000))
        cat >>"$dir/pg/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir/sock'
ssl = on
max_connections = 300
fsync = off
synchronous_commit = off
full_page_writes = off
log_line_prefix = '%m [%p] app=%a '
log_min_messages = warning
CONF
        if as_server_user "$bindir/pg_ctl" -D "$dir/pg" -l "$dir/pg.log" -w -t 30 start \
            >"$dir/pg_ctl.log" 2>&1; then
            break
        fi
        port=""
    done
    [ -n "$port" ] || { cat "$dir/pg.log" >&2; exit 1; }
    # redis-server gets the same certificate on its TLS port (hiredis_ssl tests).
    cp "$dir/pg/server.crt" "$dir/redis-tls.crt"
    cp "$dir/pg/server.key" "$dir/redis-tls.key"
    [ "$(id -u)" = 0 ] && chown "${LASTCALL_TEST_USER:-nobody}" "$dir/redis-tls.crt" "$dir/redis-tls.key"
    for i in 1 2 3 4 5 6 7 8; do
        rport=$((20000 + RANDOM % 20000))
        tport=$((20000 + RANDOM % 20000))
        [ "$rport" = "$port" ] || [ "$tport" = "$port" ] || [ "$tport" = "$rport" ] && continue
        if redis_start "$rport" "$tport"; then
            for _ in $(seq 100); do
                [ -S "$dir/sock/redis.sock" ] && break
                sleep 0.05
            done
            [ -S "$dir/sock/redis.sock" ] && break
        fi
        rport=""
    done
    [ -n "$rport" ] || { echo "servers.sh: redis-server did not start" >&2; cat "$dir/redis.log" >&2; exit 1; }
    cat <<ENV | tee "$dir/env"
LC_TEST_DIR=$dir
PGHOST=$dir/sock
PGPORT=$port
PGUSER=lastcall
PGDATABASE=postgres
LC_TEST_PG_PORT=$port
LC_TEST_PG_DATA=$dir/pg
LC_TEST_PG_LOG=$dir/pg.log
LC_TEST_PG_BINDIR=$bindir
LC_TEST_REDIS_SOCK=$dir/sock/redis.sock
LC_TEST_REDIS_PORT=$rport
LC_TEST_REDIS_PIDFILE=$dir/redis.pid
LC_TEST_REDIS_TLS_PORT=$tport
LC_TEST_REDIS_TLS_CA=$dir/redis-tls.crt
ENV
}

# Starts redis-server again after a test killed it (same socket, same port).
restart_redis() {
    local port tport
    port=$(sed -n 's/^LC_TEST_REDIS_PORT=//p' "$dir/env" 2>/dev/null)
    tport=$(sed -n 's/^LC_TEST_REDIS_TLS_PORT=//p' "$dir/env" 2>/dev/null)
    [ -n "$port" ] && [ -n "$tport" ] || { echo "servers.sh: no recorded redis port" >&2; exit 1; }
    # The killed server may still be on its way out, holding the port.
    local old
    old=$(cat "$dir/redis.pid" 2>/dev/null || true)
    for _ in $(seq 200); do
        [ -n "$old" ] && kill -0 "$old" 2>/dev/null || break
        sleep 0.02
    done
    rm -f "$dir/sock/redis.sock" "$dir/redis.pid"
    redis_start "$port" "$tport"
    for _ in $(seq 100); do
        [ -S "$dir/sock/redis.sock" ] && return 0
        sleep 0.05
    done
    echo "servers.sh: redis-server did not restart" >&2
    exit 1
}

stop() {
    local bindir
    bindir=$(pg_bindir)
    if [ -f "$dir/redis.pid" ]; then
        kill -CONT "$(cat "$dir/redis.pid")" 2>/dev/null || true
        kill "$(cat "$dir/redis.pid")" 2>/dev/null || true
    fi
    if [ -f "$dir/pg/postmaster.pid" ]; then
        pkill -CONT -u "${LASTCALL_TEST_USER:-nobody}" postgres 2>/dev/null || true
        as_server_user "$bindir/pg_ctl" -D "$dir/pg" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$dir"
}

case "$cmd" in
start) start ;;
stop) stop ;;
restart-redis) restart_redis ;;
*) echo "usage: servers.sh start|stop|restart-redis DIR" >&2; exit 2 ;;
esac
