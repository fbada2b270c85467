#!/usr/bin/env bash
# Runs the README's set-up commands, or installs the Debian package, on a clean Debian 12: a
# minimal root made by debootstrap (no compiler, no Python, no curl), entered with chroot and an
# empty environment. It shows that the scripts install everything they use and that the package
# pulls in everything it needs, which a machine that has been built on before cannot show.
#
#   scripts/clean-machine.sh demo        a copy of HEAD, `bash scripts/demo.sh`, then `demo.sh stop`
#   scripts/clean-machine.sh test        a copy of HEAD, `bash scripts/test.sh` (35-60 minutes)
#   scripts/clean-machine.sh bench       a copy of HEAD, `bash scripts/bench.sh --quick`
#   scripts/clean-machine.sh package DEB `apt-get install ./DEB`, then the installed ckptfs publishes
#                                        a sample directory to an nginx node in the root, an fstab
#                                        line mounts it with `mount`, and its files are compared
#
# Run as root from a git checkout; the root is made in ${CKPTFS_CLEAN_DIR:-/var/tmp} and removed
# at the end (CKPTFS_CLEAN_KEEP=1 keeps it). Needs debootstrap, /dev/fuse and Debian's mirror
# (CKPTFS_DEBIAN_MIRROR, default http://deb.debian.org/debian). The extra CA certificates of this
# machine (/usr/local/share/ca-certificates) and its /etc/pip.conf are copied into the root, so that
# behind a TLS-inspecting proxy the root reaches PyPI as this machine does.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MIRROR="${CKPTFS_DEBIAN_MIRROR:-http://deb.debian.org/debian}"

usage() {
  echo "usage: clean-machine.sh demo | test | bench | package DEB" >&2
  exit 2
}

MODE="${1:-}"
case "$MODE" in
  demo | test | bench) [[ $# -eq 1 ]] || usage ;;
  package) [[ $# -eq 2 && -f "$2" ]] || usage ;;
  *) usage ;;
esac
if [[ $(id -u) -ne 0 ]]; then
  echo "clean-machine.sh: run as root (debootstrap, chroot and mounts need it)" >&2
  exit 1
fi
command -v debootstrap >/dev/null || {
  echo "clean-machine.sh: debootstrap is missing (apt-get install debootstrap)" >&2
  exit 1
}

ROOT="$(mktemp -d "${CKPTFS_CLEAN_DIR:-/var/tmp}/ckptfs-clean.XXXXXX")"
chmod 755 "$ROOT" # It becomes /, which every user must be able to reach.

# Every process whose root is ROOT (nginx nodes, mount daemons), then every mount under ROOT,
# deepest first: FUSE mounts a test left behind sit inside the bind mounts.
cleanup() {
  local rc=$? proc
  for proc in /proc/[0-9]*; do
    if [[ "$(readlink "$proc/root" 2>/dev/null)" == "$ROOT" ]]; then
      kill -KILL "${proc#/proc/}" 2>/dev/null || true
    fi
  done
  awk -v root="$ROOT" '$2 == root || index($2, root "/") == 1 { print $2 }' /proc/self/mounts |
    sort -r | while read -r mnt; do umount -l "$mnt" 2>/dev/null || true; done
  rm -f "$ROOT.debootstrap.log"
  if [[ "${CKPTFS_CLEAN_KEEP:-0}" == 1 ]]; then
    echo "clean-machine: kept $ROOT"
  else
    rm -rf --one-file-system "$ROOT"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# in_root COMMAND: runs COMMAND with bash in ROOT, with the environment of a fresh root login.
in_root() {
  chroot "$ROOT" /usr/bin/env -i HOME=/root TERM="${TERM:-dumb}" LANG=C.UTF-8 \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin /bin/bash -c "$1"
}

echo "== debootstrap bookworm (minbase) into $ROOT"
debootstrap --variant=minbase bookworm "$ROOT" "$MIRROR" >"$ROOT.debootstrap.log" 2>&1 || {
  cat "$ROOT.debootstrap.log" >&2
  exit 1
}
cat >"$ROOT/etc/apt/sources.list" <<EOF
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb ${MIRROR%/debian}/debian-security bookworm-security main
EOF
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
ln -sf ../proc/self/mounts "$ROOT/etc/mtab"
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  mkdir -p "$ROOT/usr/local/share/ca-certificates"
  cp /usr/local/share/ca-certificates/*.crt "$ROOT/usr/local/share/ca-certificates/"
fi
[[ -f /etc/pip.conf ]] && cp /etc/pip.conf "$ROOT/etc/pip.conf"
# The root is a mount point of its own, as / is on a machine: `unshare --propagation private`,
# which the tests use, fails in a chroot whose / is not one.
mount --bind "$ROOT" "$ROOT"
for fs in proc sys dev; do
  mount --rbind "/$fs" "$ROOT/$fs"
  mount --make-rslave "$ROOT/$fs"
done

# run_checkout COMMAND: a clone of HEAD in the root's /root/ckptfs, and COMMAND run there.
run_checkout() {
  git clone -q "$REPO" "$ROOT/root/ckptfs"
  echo "== $(git -C "$ROOT/root/ckptfs" log --oneline -1) in a clean root"
  in_root "cd /root/ckptfs && $1"
}

# run_package DEB: installs DEB with apt, then publishes, mounts from fstab and compares.
run_package() {
  # In /tmp, where apt's own user can read it, as a user would download it.
  cp "$1" "$ROOT/tmp/"
  local deb
  deb="/tmp/$(basename "$1")"
  echo "== apt-get install $deb"
  in_root "apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -q --no-install-recommends $deb"
  # A node to publish to (a test fixture, not something the package needs), then the
  # package's own commands, as a user of the package would run them.
  in_root "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    nginx-light >/dev/null"
  in_root "$(cat <<'SCRIPT'
set -euo pipefail
ckptfs --version
ls /usr/share/man/man1/ckptfs.1.gz /usr/share/man/man8/mount.ckptfs.8.gz
mkdir -p /srv/src/sub /srv/www /srv/nginx /mnt/ckpt /var/cache/ckptfs
head -c 20000000 /dev/urandom >/srv/src/weights.bin
echo '{"layers": 2}' >/srv/src/sub/config.json
cat >/srv/nginx/nginx.conf <<CONF
daemon on;
pid /srv/nginx/nginx.pid;
error_log /srv/nginx/error.log;
events {}
http {
  access_log off;
  server { listen 127.0.0.1:18181; root /srv/www; }
}
CONF
nginx -c /srv/nginx/nginx.conf
ckptfs publish /srv/src -o /srv/ckpt.ckptfs --node a=http://127.0.0.1:18181 --store a=/srv/www \
  --replicas 1 --chunk-size 4M
echo "/srv/ckpt.ckptfs /mnt/ckpt ckptfs ro,_netdev,cache_dir=/var/cache/ckptfs 0 0" >>/etc/fstab
mount /mnt/ckpt
(cd /srv/src && sha256sum weights.bin sub/config.json) >/srv/sums
(cd /mnt/ckpt && sha256sum -c /srv/sums)
umount /mnt/ckpt
echo "package: installed, published, mounted from /etc/fstab, files identical"
SCRIPT
)"
}

case "$MODE" in
  demo) run_checkout "bash scripts/demo.sh && bash scripts/demo.sh stop" ;;
  test) run_checkout "bash scripts/test.sh" ;;
  bench) run_checkout "bash scripts/bench.sh --quick" ;;
  package) run_package "$2" ;;
esac
