#!/usr/bin/env bash
# A throwaway PostgreSQL server on loopback, for the tests of the PostgreSQL completion store.
#   scripts/postgres.sh start DIR [PORT]   # initdb in DIR, start on 127.0.0.1:PORT (default 54329)
#   scripts/postgres.sh stop DIR
# The database and user are both "openweights" (trust auth on loopback):
#   postgresql://openweights@127.0.0.1:54329/openweights
set -euo pipefail
cmd=$1 dir=$2 port=${3:-54329}
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
as_owner() {  # PostgreSQL refuses to run as root
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
case $cmd in
  start)
    mkdir -p "$dir"
    if [ "$(id -u)" = 0 ]; then chown postgres "$dir"; fi
    as_owner "$bin/initdb" -D "$dir/data" -U openweights --auth=trust >/dev/null
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
      -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=on" start >/dev/null
    as_owner "$bin/createdb" -h 127.0.0.1 -p "$port" -U openweights openweights
    echo "PostgreSQL on 127.0.0.1:$port (data in $dir)"
    ;;
  stop)
    as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
    ;;
  *)
    echo "usage: $0 start|stop DIR [PORT]" >&2
    exit 2
    ;;
esac
