#!/usr/bin/env bash
# Two replicas behind nginx on loopback, sharing one PostgreSQL store: the scale-out layout.
#   scripts/replicas.sh start DIR [BASE_PORT]   # default BASE_PORT 18400
#   scripts/replicas.sh stop DIR
# Ports: BASE+1 and BASE+2 the two servers, BASE+0 nginx routing by the body's prompt_cache_key
# (njs reads it; requests without one are spread at random), BASE+3 nginx round robin (to compare),
# BASE+9 PostgreSQL. DIR/ports.env lists them. CONFIG (default models.yaml) is the models file,
# without a `server:` section (the script adds the shared store). Needs Debian's nginx and
# libnginx-mod-http-js, and PostgreSQL (scripts/postgres.sh).
set -euo pipefail
cmd=$1 dir=$(realpath -m "$2") base=${3:-18400}
repo=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$repo/.venv/bin/python}

start() {
  mkdir -p "$dir/tmp"
  chmod 777 "$dir/tmp"
  local pg=$((base + 9)) url
  url="postgresql://openweights@127.0.0.1:$pg/openweights"
  # Its own temporary folder: PostgreSQL runs as the postgres user, who may not enter DIR.
  mktemp -d >"$dir/pg.dir"
  bash "$repo/scripts/postgres.sh" start "$(cat "$dir/pg.dir")" "$pg" >/dev/null
  local config=${CONFIG:-$repo/models.yaml}
  if grep -q '^server:' "$config"; then
    echo "replicas: $config has a server: section; give one without it" >&2
    exit 2
  fi
  { cat "$config"; printf '\nserver:\n  store_url: %s\n' "$url"; } > "$dir/models.yaml"
  for n in 1 2; do
    (cd "$repo" && exec "$python" -m server serve --config "$dir/models.yaml" --host 127.0.0.1 \
      --port $((base + n)) >"$dir/replica-$n.log" 2>&1) &
    echo $! >"$dir/replica-$n.pid"
  done
  write_nginx_config
  nginx -p "$dir" -c "$dir/nginx.conf"
  cat >"$dir/ports.env" <<EOF
NGINX_BY_KEY=$((base + 0))
REPLICA_1=$((base + 1))
REPLICA_2=$((base + 2))
NGINX_ROUND_ROBIN=$((base + 3))
POSTGRES_URL=$url
EOF
  for n in 1 2; do
    for _ in $(seq 600); do
      curl -sf "http://127.0.0.1:$((base + n))/health" >/dev/null && break
      kill -0 "$(cat "$dir/replica-$n.pid")" 2>/dev/null || { tail -20 "$dir/replica-$n.log" >&2; exit 1; }
      sleep 0.5
    done
  done
  echo "replicas: nginx on 127.0.0.1:$base (by prompt_cache_key) and :$((base + 3)) (round robin)," \
    "servers on :$((base + 1)) and :$((base + 2)), PostgreSQL on :$pg"
}

write_nginx_config() {
  local user=""
  [ "$(id -u)" = 0 ] && user="user root;"
  cat >"$dir/prompt_cache_key.js" <<'EOF'
// The request body's prompt_cache_key (the body is read into memory before the upstream is
// chosen); none: the request id, so keyless requests spread over the replicas.
function key(r) {
  try {
    const found = JSON.parse(r.requestText || "{}").prompt_cache_key;
    if (typeof found === "string" && found) return found;
  } catch (e) { /* not JSON: no key */ }
  return r.variables.request_id;
}
export default { key };
EOF
  cat >"$dir/nginx.conf" <<EOF
load_module /usr/lib/nginx/modules/ngx_http_js_module.so;
$user
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/nginx-error.log;
events { worker_connections 1024; }
http {
  access_log $dir/nginx-access.log;
  client_body_temp_path $dir/tmp/body;
  proxy_temp_path $dir/tmp/proxy;
  fastcgi_temp_path $dir/tmp/fastcgi;
  uwsgi_temp_path $dir/tmp/uwsgi;
  scgi_temp_path $dir/tmp/scgi;
  js_import keys from $dir/prompt_cache_key.js;
  js_set \$prompt_cache_key keys.key;
  upstream by_key {
    hash \$prompt_cache_key consistent;
    server 127.0.0.1:$((base + 1));
    server 127.0.0.1:$((base + 2));
    keepalive 16;
  }
  upstream round_robin {
    server 127.0.0.1:$((base + 1));
    server 127.0.0.1:$((base + 2));
    keepalive 16;
  }
  # The body stays in memory (njs reads it); as large as the server's max_body_bytes.
  client_max_body_size 32m;
  client_body_buffer_size 32m;
  proxy_http_version 1.1;
  proxy_set_header Connection "";
  proxy_set_header Host \$host;
  proxy_set_header X-Request-Id \$request_id;
  proxy_buffering off;          # stream chunks as they come (the server also says X-Accel-Buffering: no)
  proxy_read_timeout 600s;
  server {
    listen 127.0.0.1:$((base + 0));
    location / { proxy_pass http://by_key; }
  }
  server {
    listen 127.0.0.1:$((base + 3));
    location / { proxy_pass http://round_robin; }
  }
}
EOF
}

stop() {
  [ -f "$dir/nginx.pid" ] && nginx -p "$dir" -c "$dir/nginx.conf" -s quit 2>/dev/null || true
  for n in 1 2; do
    if [ -f "$dir/replica-$n.pid" ]; then
      kill "$(cat "$dir/replica-$n.pid")" 2>/dev/null || true
    fi
  done
  for n in 1 2; do
    [ -f "$dir/replica-$n.pid" ] || continue
    for _ in $(seq 80); do kill -0 "$(cat "$dir/replica-$n.pid")" 2>/dev/null || break; sleep 0.5; done
  done
  if [ -f "$dir/pg.dir" ]; then
    bash "$repo/scripts/postgres.sh" stop "$(cat "$dir/pg.dir")" || true
    rm -rf "$(cat "$dir/pg.dir")"
  fi
}

case $cmd in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop DIR [BASE_PORT]" >&2; exit 2 ;;
esac
