#!/usr/bin/env bash
# A PostgreSQL 15 primary with a streaming standby on this machine, behind one stable address
# (haproxy), for the database-failover run of the fault suite (docs/faults.md). Never touches
# the machine's own cluster on 5432: its own data folders under DIR, its own loopback ports.
#
#   pg-pair.sh start DIR [sync|async]   initdb + start the primary, pg_basebackup + start the
#                                       standby, start haproxy; prints the address
#   pg-pair.sh failover DIR [SECS]      kill -9 of the primary, the address moved to the standby,
#                                       pg_ctl promote; with SECS, the address moves SECS seconds
#                                       before the promotion (writes meet a read-only server)
#   pg-pair.sh rebuild DIR              after a failover: the dead node as the new standby
#   pg-pair.sh stop DIR                 stops haproxy and both servers, removes DIR
#
# Ports: PG_PAIR_PRIMARY_PORT (55432), PG_PAIR_STANDBY_PORT (55433), PG_PAIR_PROXY_PORT (55400).
# `sync` (the default) sets synchronous_standby_names to the standby and synchronous_commit = on:
# a commit is acknowledged only once the standby has it. `async` leaves the standby behind.
set -euo pipefail

BIN=${PG_PAIR_BIN:-/usr/lib/postgresql/15/bin}
PRIMARY_PORT=${PG_PAIR_PRIMARY_PORT:-55432}
STANDBY_PORT=${PG_PAIR_STANDBY_PORT:-55433}
PROXY_PORT=${PG_PAIR_PROXY_PORT:-55400}

die() { echo "pg-pair: $*" >&2; exit 1; }

# initdb refuses root: the servers run as the postgres OS user when this runs as root.
as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

ensure_haproxy() {
  command -v haproxy >/dev/null 2>&1 && return
  [ "$(id -u)" = 0 ] || die "haproxy is not installed (apt-get install haproxy)"
  echo "pg-pair: installing haproxy"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy >/dev/null
}

port_free() {
  ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# The runtime API of haproxy, over its stats socket.
proxy_cmd() {
  python3 - "$DIR/haproxy.sock" "$1" <<'EOF'
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
s.sendall((sys.argv[2] + "\n").encode())
out = b""
while True:
    chunk = s.recv(4096)
    if not chunk:
        break
    out += chunk
sys.stdout.write(out.decode())
EOF
}

server_conf() { # port, extra settings
  cat <<EOF
port = $1
listen_addresses = '127.0.0.1'
unix_socket_directories = '$DIR'
wal_level = replica
max_wal_senders = 5
hot_standby = on
max_connections = 100
shared_buffers = 64MB
fsync = on
log_min_messages = warning
logging_collector = off
EOF
}

# Node a listens on PG_PAIR_PRIMARY_PORT, node b on PG_PAIR_STANDBY_PORT; DIR/primary names the
# node that is the primary now (a at start, the other after each failover).
port_of() { if [ "$1" = a ]; then echo "$PRIMARY_PORT"; else echo "$STANDBY_PORT"; fi; }
other_of() { if [ "$1" = a ]; then echo b; else echo a; fi; }

# Makes node $1 a streaming standby of node $2 (pg_basebackup), starts it and waits until the
# primary sees it streaming (and, in sync mode, as its synchronous standby).
make_standby() {
  local node=$1 primary=$2 mode
  mode=$(cat "$DIR/mode")
  rm -rf "${DIR:?}/${node:?}"
  # A fast checkpoint: the default spread one can take minutes on a busy primary.
  as_pg "$BIN/pg_basebackup" -h 127.0.0.1 -p "$(port_of "$primary")" -U postgres -D "$DIR/$node" -X stream -R -c fast
  sed -i "s/^port = .*/port = $(port_of "$node")/" "$DIR/$node/postgresql.conf"
  # application_name is the name synchronous_standby_names waits for. Once promoted the node
  # is alone: waiting for a synchronous standby of its own (the copied setting) would hang
  # every commit, so it takes writes unprotected until a new standby is attached
  # (docs/operations.md).
  cat >>"$DIR/$node/postgresql.auto.conf" <<EOF
primary_conninfo = 'host=127.0.0.1 port=$(port_of "$primary") user=postgres application_name=standby1'
synchronous_standby_names = ''
EOF
  for _ in $(seq 1 100); do port_free "$(port_of "$node")" && break; sleep 0.1; done
  as_pg "$BIN/pg_ctl" -D "$DIR/$node" -l "$DIR/$node.log" -w -t 60 start >/dev/null ||
    die "the standby $node did not start: $(tail -3 "$DIR/$node.log" | tr '\n' ' ')"
  if [ "$mode" = sync ]; then
    as_pg psql -h 127.0.0.1 -p "$(port_of "$primary")" -U postgres -Atq \
      -c "ALTER SYSTEM SET synchronous_standby_names = 'standby1'" -c "SELECT pg_reload_conf()" >/dev/null
  fi
  local want=async state=
  [ "$mode" = sync ] && want=sync
  for _ in $(seq 1 60); do
    state=$(as_pg psql -h 127.0.0.1 -p "$(port_of "$primary")" -U postgres -Atc \
      "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'standby1' AND state = 'streaming'" 2>/dev/null || true)
    [ "$state" = "$want" ] && return 0
    sleep 0.5
  done
  die "the standby is not streaming ($want) after 30 s"
}

start() {
  local mode=${1:-sync}
  [ "$mode" = sync ] || [ "$mode" = async ] || die "mode must be sync or async"
  [ -x "$BIN/initdb" ] || die "$BIN/initdb not found (PostgreSQL 15 server binaries)"
  for p in "$PRIMARY_PORT" "$STANDBY_PORT" "$PROXY_PORT"; do
    port_free "$p" || die "port $p is in use"
  done
  ensure_haproxy
  mkdir -p "$DIR"
  [ "$(id -u)" = 0 ] && chown postgres "$DIR"
  echo "$mode" >"$DIR/mode"
  echo a >"$DIR/primary"
  # Whatever fails from here on, nothing is left running.
  trap 'if [ $? -ne 0 ]; then stop >/dev/null 2>&1 || true; fi' EXIT
  as_pg "$BIN/initdb" -D "$DIR/a" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >"$DIR/initdb.log"
  server_conf "$PRIMARY_PORT" >>"$DIR/a/postgresql.conf"
  echo "synchronous_commit = on" >>"$DIR/a/postgresql.conf"
  echo "host replication postgres 127.0.0.1/32 trust" >>"$DIR/a/pg_hba.conf"
  as_pg "$BIN/pg_ctl" -D "$DIR/a" -l "$DIR/a.log" -w -t 60 start >/dev/null
  make_standby b a
  cat >"$DIR/haproxy.cfg" <<EOF
global
    stats socket $DIR/haproxy.sock mode 600 level admin
    maxconn 500
defaults
    mode tcp
    timeout connect 2s
    timeout client 1h
    timeout server 1h
listen postgres
    bind 127.0.0.1:$PROXY_PORT
    server a 127.0.0.1:$PRIMARY_PORT
    server b 127.0.0.1:$STANDBY_PORT disabled
EOF
  haproxy -D -f "$DIR/haproxy.cfg" -p "$DIR/haproxy.pid"
  for _ in $(seq 1 20); do
    [ -S "$DIR/haproxy.sock" ] && as_pg psql -h 127.0.0.1 -p "$PROXY_PORT" -U postgres -Atc "SELECT 1" >/dev/null 2>&1 && break
    sleep 0.25
  done
  trap - EXIT
  echo "postgres://postgres@127.0.0.1:$PROXY_PORT"
}

# The address to node $2: new sessions go there, those of node $1 are cut.
move_address() {
  proxy_cmd "enable server postgres/$2" >/dev/null
  proxy_cmd "disable server postgres/$1" >/dev/null
  proxy_cmd "shutdown sessions server postgres/$1" >/dev/null
}

# kill -9 of every process of the server in data folder $1, as a crash of its machine: the
# postmaster and every backend (all of them run in the data folder), again until none is left,
# so that no session of the old primary lives on and its port is free.
kill_server() {
  local pids
  for _ in $(seq 1 50); do
    pids=
    for p in /proc/[0-9]*; do
      [ "$(readlink "$p/cwd" 2>/dev/null)" = "$1" ] && pids="$pids ${p#/proc/}"
    done
    [ -z "$pids" ] && return 0
    # shellcheck disable=SC2086
    kill -9 $pids 2>/dev/null || true
    sleep 0.1
  done
  die "processes of $1 survive kill -9"
}

failover() {
  local early=${1:-} old new pid
  old=$(cat "$DIR/primary")
  new=$(other_of "$old")
  [ -f "$DIR/$old/postmaster.pid" ] || die "no primary running in $DIR/$old"
  [ -f "$DIR/$new/standby.signal" ] && as_pg "$BIN/pg_ctl" -D "$DIR/$new" status >/dev/null ||
    die "no standby running in $DIR/$new (rebuild first)"
  pid=$(head -1 "$DIR/$old/postmaster.pid")
  kill_server "$DIR/$old"
  # Its socket lock names a pid that may live on as a zombie (where nothing reaps orphans, as
  # in a container), which would stop the node from starting again as a standby.
  rm -f "$DIR/.s.PGSQL.$(port_of "$old")" "$DIR/.s.PGSQL.$(port_of "$old").lock"
  echo "pg-pair: kill -9 of the primary $old (postmaster $pid and its processes)"
  if [ -n "$early" ]; then
    move_address "$old" "$new"
    echo "pg-pair: address moved to $new, still in recovery for ${early}s"
    sleep "$early"
  fi
  as_pg "$BIN/pg_ctl" -D "$DIR/$new" -w -t 60 promote >/dev/null
  echo "$new" >"$DIR/primary"
  echo "pg-pair: $new promoted"
  if [ -z "$early" ]; then
    move_address "$old" "$new"
    echo "pg-pair: address moved to $new"
  fi
}

# After a failover: the dead node comes back as a standby of the new primary (a fresh copy).
rebuild() {
  local primary dead
  primary=$(cat "$DIR/primary")
  dead=$(other_of "$primary")
  make_standby "$dead" "$primary"
  echo "pg-pair: $dead is a standby of $primary again"
}

stop() {
  [ -d "$DIR" ] || return 0
  if [ -f "$DIR/haproxy.pid" ]; then
    kill "$(cat "$DIR/haproxy.pid")" 2>/dev/null || true
  fi
  for node in a b; do
    if [ -f "$DIR/$node/postmaster.pid" ]; then
      as_pg "$BIN/pg_ctl" -D "$DIR/$node" -m immediate -w -t 30 stop >/dev/null 2>&1 ||
        kill -9 "$(head -1 "$DIR/$node/postmaster.pid")" 2>/dev/null || true
    fi
  done
  rm -rf "$DIR"
}

cmd=${1:-}
DIR=${2:-}
[ -n "$cmd" ] && [ -n "$DIR" ] || die "usage: pg-pair.sh start|failover|rebuild|stop DIR [...]"
case "$cmd" in
  start) start "${3:-sync}" ;;
  failover) failover "${3:-}" ;;
  rebuild) rebuild ;;
  stop) stop ;;
  *) die "unknown command $cmd" ;;
esac
