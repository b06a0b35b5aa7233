#!/usr/bin/env bash
# A PgBouncer (session pooling, trust auth) in front of the test PostgreSQL
# that servers.sh started, listening on 127.0.0.1 and a unix socket in DIR.
#   pgbouncer.sh start DIR  -> prints KEY=VALUE lines for the environment
#   pgbouncer.sh stop DIR   -> stops it (DIR stays: its log is the evidence)
# Needs PGHOST/PGPORT (the PostgreSQL socket dir and port) and, for client
# TLS, LC_TEST_PG_DATA (its self-signed certificate). As root it runs as the
# unprivileged user $LASTCALL_TEST_USER (default nobody), as servers.sh does.
set -euo pipefail

cmd=${1:?usage: pgbouncer.sh start|stop DIR}
dir=${2:?usage: pgbouncer.sh start|stop DIR}
user=${LASTCALL_TEST_USER:-nobody}

as_server_user() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u "$user" -- "$@"
    else
        "$@"
    fi
}

start() {
    local bin port i
    bin=$(command -v pgbouncer || echo /usr/sbin/pgbouncer)
    [ -x "$bin" ] || { echo "pgbouncer.sh: no pgbouncer (apt-get install pgbouncer)" >&2; exit 1; }
    mkdir -p "$dir"
    chmod 755 "$dir"
    echo '"lastcall" ""' >"$dir/userlist.txt"
    [ "$(id -u)" = 0 ] && chown -R "$user" "$dir"
    for i in 1 2 3 4 5 6 7 8; do
        port=$((20000 + RANDOM % 20000))
        cat >"$dir/pgbouncer.ini" <<CONF
[databases]
* = host=$PGHOST port=$PGPORT

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir = $dir
auth_type = trust
auth_file = $dir/userlist.txt
pool_mode = session
max_client_conn = 400
default_pool_size = 100
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
admin_users = lastcall
ignore_startup_parameters = extra_float_digits
client_tls_sslmode = allow
client_tls_key_file = $LC_TEST_PG_DATA/server.key
client_tls_cert_file = $LC_TEST_PG_DATA/server.crt
CONF
        [ "$(id -u)" = 0 ] && chown "$user" "$dir/pgbouncer.ini"
        if as_server_user "$bin" -d -q "$dir/pgbouncer.ini" >/dev/null 2>&1; then
            for _ in $(seq 100); do
                [ -S "$dir/.s.PGSQL.$port" ] && break
                sleep 0.02
            done
            [ -S "$dir/.s.PGSQL.$port" ] && break
        fi
        port=""
    done
    [ -n "$port" ] || { echo "pgbouncer.sh: pgbouncer did not start" >&2; cat "$dir/pgbouncer.log" >&2 || true; exit 1; }
    cat <<ENV
LC_TEST_PGB_DIR=$dir
LC_TEST_PGB_PORT=$port
LC_TEST_PGB_LOG=$dir/pgbouncer.log
LC_TEST_PGB_PIDFILE=$dir/pgbouncer.pid
ENV
}

stop() {
    local pid
    pid=$(cat "$dir/pgbouncer.pid" 2>/dev/null || true)
    [ -n "$pid" ] || return 0
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.02
    done
    kill -9 "$pid" 2>/dev/null || true
}

case "$cmd" in
start) start ;;
stop) stop ;;
*) echo "usage: pgbouncer.sh start|stop DIR" >&2; exit 2 ;;
esac
