#!/usr/bin/env bash
# A walk-through of ckptfs on one machine: three nginx nodes on 127.0.0.1:18081-18083, a sample
# checkpoint published to them, mounted at /tmp/ckptfs-demo/mnt and checked byte for byte.
#
#   scripts/demo.sh          install deps, build, run the demo; the mount and nodes stay up
#   scripts/demo.sh stop     unmount and stop the nodes
#
# Environment: CKPTFS_BUILD (default <repo>/build), CKPTFS_SKIP_DEPS=1, CKPTFS_SKIP_BUILD=1.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${CKPTFS_BUILD:-$REPO/build}"
CKPTFS="$BUILD/cli/ckptfs"
DEMO=/tmp/ckptfs-demo
MNT="$DEMO/mnt"
PORTS=(18081 18082 18083)

say() {
  if [[ -t 1 ]]; then printf '\n\033[1m== %s\033[0m\n' "$*"; else printf '\n== %s\n' "$*"; fi
}

stop_demo() {
  if grep -qs " $MNT " /proc/self/mounts; then
    fusermount3 -u "$MNT" 2>/dev/null || fusermount3 -uz "$MNT" || true
  fi
  local pids
  pids="$(pgrep -f "ckptfs mount .*$MNT" || true)"
  if [[ -n "$pids" ]]; then
    # shellcheck disable=SC2086
    kill $pids 2>/dev/null || true
  fi
  local i pid
  for i in 1 2 3; do
    [[ -f "$DEMO/node-$i/nginx.pid" ]] || continue
    pid="$(cat "$DEMO/node-$i/nginx.pid")"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$DEMO/node-$i/nginx.pid"
  done
}

write_node_config() {
  local i="$1" port="$2" dir="$DEMO/node-$1"
  mkdir -p "$dir/www" "$dir/tmp"
  cat >"$dir/nginx.conf" <<CONF
daemon on;
master_process off;
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log;
events { worker_connections 1024; }
http {
    log_format ckptfs '\$request_method \$uri \$status \$body_bytes_sent';
    access_log $dir/access.log ckptfs;
    default_type application/octet-stream;
    client_body_temp_path $dir/tmp/client_body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    server {
        listen 127.0.0.1:$port;
        root $dir/www;
        client_max_body_size 0;
        location / {
            dav_methods PUT DELETE;
            create_full_put_path on;
        }
    }
}
CONF
}

start_node() {
  local i="$1" port="$2" dir="$DEMO/node-$1"
  write_node_config "$i" "$port"
  /usr/sbin/nginx -p "$dir/" -c "$dir/nginx.conf" -e "$dir/error.log"
  for _ in $(seq 100); do
    curl -s -o /dev/null "http://127.0.0.1:$port/" && return 0
    sleep 0.05
  done
  echo "demo: node $i did not come up on port $port; see $dir/error.log" >&2
  exit 1
}

make_source() {
  local src="$DEMO/src"
  mkdir -p "$src/assets/tokenizer"
  printf 'model_checkpoint_path: "model.ckpt"\n' >"$src/checkpoint"
  head -c 20000 /dev/urandom >"$src/model.ckpt.index"
  head -c 48M /dev/urandom >"$src/model.ckpt.data-00000-of-00002"
  head -c 48M /dev/urandom >"$src/model.ckpt.data-00001-of-00002"
  printf '{"vocab_size": 32000}\n' >"$src/assets/tokenizer/config.json"
  head -c 300000 /dev/urandom >"$src/assets/tokenizer/vocab.bin"
  ln -s model.ckpt.index "$src/latest.index"
}

if [[ "${1:-}" == stop ]]; then
  stop_demo
  echo "demo stopped (files remain in $DEMO)"
  exit 0
fi
if [[ $# -gt 0 ]]; then
  echo "usage: $0 [stop]" >&2
  exit 2
fi

stop_demo
if [[ "${CKPTFS_SKIP_DEPS:-0}" != 1 ]]; then
  say "Installing dependencies"
  bash "$REPO/scripts/install-deps.sh"
fi
if [[ "${CKPTFS_SKIP_BUILD:-0}" != 1 ]]; then
  say "Building"
  bash "$REPO/scripts/build.sh"
fi

if [[ ! -x "$CKPTFS" ]]; then
  echo "demo: $CKPTFS not found; build it with scripts/build.sh" >&2
  exit 1
fi
# A failure half-way leaves nothing running.
trap 'echo "demo: failed; stopping the nodes and the mount" >&2; stop_demo' ERR

rm -rf "$DEMO"
mkdir -p "$DEMO" "$MNT"
say "Sample checkpoint in $DEMO/src"
make_source
ls -l "$DEMO/src"

say "Starting nodes on 127.0.0.1:${PORTS[*]}"
node_args=()
for i in 1 2 3; do
  port="${PORTS[$((i - 1))]}"
  start_node "$i" "$port"
  node_args+=(--node "node$i=http://127.0.0.1:$port" --store "node$i=$DEMO/node-$i/www")
  echo "node$i: http://127.0.0.1:$port serving $DEMO/node-$i/www"
done

say "Publishing"
"$CKPTFS" publish "$DEMO/src" -o "$DEMO/ckpt.index" "${node_args[@]}" | tee "$DEMO/publish.txt"
index_sha256="$(sed -n 's/^  index SHA-256: \([0-9a-f]\{64\}\) .*/\1/p' "$DEMO/publish.txt")"

say "Mounting at $MNT, pinned to the index version just published"
"$CKPTFS" mount "$DEMO/ckpt.index" "$MNT" -o "cache_dir=$DEMO/cache,index_sha256=$index_sha256"
ls -lR "$MNT"

say "Checking every file against the source (sha256)"
(cd "$DEMO/src" && find . -type f -print0 | sort -z | xargs -0 sha256sum) >"$DEMO/SHA256SUMS"
(cd "$MNT" && sha256sum --quiet -c "$DEMO/SHA256SUMS")
echo "all $(wc -l <"$DEMO/SHA256SUMS") files identical"

say "Bytes fetched from each node (chunk GETs in its access log)"
for i in 1 2 3; do
  awk -v node="node$i" '$1 == "GET" && $2 ~ "^/chunks/" && $3 == 200 { n++; b += $4 }
       END { printf "%s: %d GETs, %d bytes\n", node, n, b }' "$DEMO/node-$i/access.log"
done

trap - ERR
say "The mount stays up"
echo "Browse $MNT; stop the demo with: $0 stop"
