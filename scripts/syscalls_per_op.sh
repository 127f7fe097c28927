#!/usr/bin/env bash
# System calls the daemon makes per create, unlink of a lower file, and
# copy-up (append to a lower file): `strace -c -f` of the daemon while N of
# each run in a merged dir over 3 lowers. Counts, not times: they do not
# depend on a noisy machine, and say where a request's work goes. Run as
# root (the daemon then uses FUSE passthrough for upper files: its ioctls
# and cache notices are counted too). ROOTLESS=1 runs the daemon and the
# workload as uid 1000 through the setuid fusermount3 (no passthrough: the
# daemon serves every byte), inside a private mount namespace that lends a
# 0666 /dev/fuse, so nothing outside changes. Not a benchmark: speed is
# scripts/bench.sh's.
#
#   scripts/syscalls_per_op.sh            # builds the release binary first
#   N=5000 UNIONFS_BIN=path ROOTLESS=1 VERBOSE=1 scripts/syscalls_per_op.sh
#   (VERBOSE=1: strace's whole table per workload)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v strace >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq strace >/dev/null
if [ -z "${UNIONFS_BIN:-}" ]; then
  cargo build --release --quiet
  UNIONFS_BIN=$PWD/target/release/unionfs
fi
export UNIONFS_BIN
ROOTLESS=${ROOTLESS:-0}
USER_ID=1000
if [ "$ROOTLESS" = 1 ] && [ -z "${SYSCALLS_INNER:-}" ]; then
  exec unshare --mount --propagation private -- env SYSCALLS_INNER=1 bash "$0" "$@"
fi
N=${N:-1000}
D=$(mktemp -d /tmp/unionfs-syscalls.XXXXXX)
trap 'mountpoint -q "$D/mnt" && "$UNIONFS_BIN" umount "$D/mnt"; rm -rf "$D"' EXIT
as_user() { "$@"; }
if [ "$ROOTLESS" = 1 ]; then
  mknod "$D/fuse" c 10 229
  chmod 666 "$D/fuse"
  mount --bind "$D/fuse" /dev/fuse
  chown "$USER_ID:$USER_ID" "$D"
  as_user() { setpriv --reuid=$USER_ID --regid=$USER_ID --clear-groups -- "$@"; }
fi
as_user mkdir -p "$D"/l1/d "$D"/l2/d "$D"/l3/d "$D"/mnt
# shellcheck disable=SC2016 # expanded by the inner shell
as_user sh -c 'for i in $(seq 1 "$1"); do echo x >"$2/l3/d/f$i"; done' sh "$N" "$D"

# count NAME WORKLOAD: mounts afresh, lists the dir (lookups done before
# counting), counts the daemon's system calls during WORKLOAD.
count() {
  rm -rf "$D/up" "$D/.up.unionfs-work"
  as_user mkdir "$D/up"
  as_user "$UNIONFS_BIN" mount -l "$D/l1:$D/l2:$D/l3" -u "$D/up" "$D/mnt"
  local pid
  pid=$(pgrep -n -f "^$UNIONFS_BIN mount -l $D/l1")
  as_user ls -l "$D/mnt/d" >/dev/null
  strace -c -f -p "$pid" -o "$D/$1.strace" 2>/dev/null &
  local sp=$!
  sleep 1
  as_user env N="$N" bash -c "cd '$D/mnt/d' && $2"
  sleep 0.5
  kill -INT "$sp"
  wait "$sp" 2>/dev/null || true
  "$UNIONFS_BIN" umount "$D/mnt"
  local total
  total=$(awk '/^100.00/ {print $4}' "$D/$1.strace")
  printf '%-7s %6s per op:' "$1" "$(echo "scale=1; $total / $N" | bc)"
  grep -v -e '^---' -e '^%' -e 'total$' "$D/$1.strace" | sort -k4 -n -r | head -6 |
    awk -v n="$N" '{printf " %s %.1f", $NF, $4 / n}'
  echo
  if [ "${VERBOSE:-0}" = 1 ]; then cat "$D/$1.strace"; fi
}
# shellcheck disable=SC2016 # expanded by eval in count
count create 'for i in $(seq 1 "$N"); do : >"new$i"; done'
count unlink 'rm -f f*'
# shellcheck disable=SC2016
count copyup 'for i in $(seq 1 "$N"); do echo y >>"f$i"; done'
