#!/usr/bin/env bash
# Daemon memory and open fds on a big tree: FILES files (default 1M, empty)
# in DIRS dirs spread over 3 lowers so every dir is merged, walked with
# `find` twice and `ls -lR` once on one mount. Prints the daemon's peak RSS
# (VmHWM), current RSS and open fds after each walk: the second walk must
# not grow them. The tree is cached in /var/tmp/unionfs-walk-data-$FILES.
#
# Needs root. Usage: scripts/walk_memory.sh   (FILES=100000 for a quick run)
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "walk_memory.sh: needs root" >&2; exit 1; }
FILES=${FILES:-1000000}
DIRS=${DIRS:-1000}
cargo build --release --quiet
UNIONFS="$PWD/target/release/unionfs"

data=/var/tmp/unionfs-walk-data-$FILES
if [ ! -e "$data/done" ]; then
  echo "making $FILES files in $DIRS dirs over 3 lowers in $data..."
  rm -rf "$data"
  python3 - "$data" "$FILES" "$DIRS" <<'PY'
import os, sys
root, files, dirs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for l in range(3):
    for d in range(dirs):
        os.makedirs(f"{root}/l{l}/d{d:04}", exist_ok=True)
for i in range(files):
    d, l = i % dirs, (i // dirs) % 3
    os.close(os.open(f"{root}/l{l}/d{d:04}/f{i:07}", os.O_CREAT | os.O_WRONLY, 0o644))
PY
  touch "$data/done"
fi

t=$(mktemp -d /tmp/unionfs-walk.XXXXXX)
mkdir -p "$t/upper" "$t/mnt"
cleanup() {
  "$UNIONFS" umount "$t/mnt" 2>/dev/null || umount -l "$t/mnt" 2>/dev/null || true
  rm -rf "$t"
}
trap cleanup EXIT
"$UNIONFS" mount -l "$data/l0:$data/l1:$data/l2" -u "$t/upper" -w "$t/work" "$t/mnt"
pid=$(pgrep -n -f "^$UNIONFS mount -l $data/l0")
report() {
  local hwm rss fds
  hwm=$(awk '/VmHWM/ { print $2 }' "/proc/$pid/status")
  rss=$(awk '/VmRSS/ { print $2 }' "/proc/$pid/status")
  fds=$(ls "/proc/$pid/fd" | wc -l)
  printf '| %-14s | %8s s | %8d MiB | %8d MiB | %6d |\n' "$1" "$2" $((hwm / 1024)) $((rss / 1024)) "$fds"
}
walk() {
  local s e
  s=$(date +%s.%N)
  "$@" > /dev/null
  e=$(date +%s.%N)
  python3 -c "print(f'{$e - $s:.1f}')"
}
echo "daemon pid $pid; $FILES files, $DIRS dirs merged over 3 lowers"
echo "| after          |     time   |   peak RSS   |   now RSS    |  fds   |"
echo "|----------------|------------|--------------|--------------|--------|"
report "mount" 0
report "find (1st)" "$(walk find "$t/mnt")"
report "find (2nd)" "$(walk find "$t/mnt")"
report "ls -lR" "$(walk ls -lR "$t/mnt")"
