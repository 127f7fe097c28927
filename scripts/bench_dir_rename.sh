#!/usr/bin/env bash
# Times `mv` of a directory tree that lives in a lower layer (100 dirs x 100
# files of 4 KiB = 10k files, 40 MiB) on unionfs, kernel overlayfs
# (redirect_dir=on: the rename only records a redirect) and fuse-overlayfs
# (whose rename(2) of a lower dir may fail with EXDEV, so mv falls back to
# copy + delete). Each timing is on a fresh mount and a fresh upper; the
# median of RUNS runs is printed next to the ratios.
#
# Needs root. Usage: scripts/bench_dir_rename.sh
# Environment: RUNS (default 3), DIRS and FILES (default 100 each),
# DROP_CACHES=1 to drop the page cache before each timing (machine-wide).
# Cleans up after itself: unmounts what it mounted (its own paths only) and
# removes its temp dir.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "bench_dir_rename.sh: needs root (mount -t overlay, FUSE)" >&2
  exit 1
fi
cargo build --release --quiet
UNIONFS="$PWD/target/release/unionfs"
RUNS=${RUNS:-3}
DIRS=${DIRS:-100}
FILES=${FILES:-100}
KINDS=(kernel unionfs fuse-overlayfs)
command -v fuse-overlayfs >/dev/null || { echo "fuse-overlayfs not installed" >&2; exit 1; }

base=$(mktemp -d /tmp/unionfs-bench-rename.XXXXXX)
mounts=()
# Mount points under $base (ours), deepest first.
our_mounts() {
  awk -v b="$base/" 'index($2, b) == 1 { print length($2), $2 }' /proc/self/mounts |
    sort -rn | cut -d' ' -f2-
}
cleanup() {
  local m
  for m in "${mounts[@]}"; do
    if mountpoint -q "$m" 2>/dev/null; then
      umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    fi
  done
  # Safety net: anything still mounted inside our own temp dir.
  while read -r m; do
    [ -n "$m" ] && { umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; }
  done < <(our_mounts)
  if awk -v b="$base" 'index($2, b) == 1 { found = 1 } END { exit !found }' /proc/self/mounts; then
    echo "bench_dir_rename.sh: WARNING: mounts remain under $base, not removing it" >&2
  else
    rm -rf "$base"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The lower: $DIRS x $FILES files of exactly 4 KiB, each starting with its name.
L="$base/lower"
blk=$(head -c 4096 /dev/zero | tr '\0' 'x')
echo "creating $((DIRS * FILES)) files of 4 KiB in the lower ($L/tree)..."
for d in $(seq -w 1 "$DIRS"); do
  mkdir -p "$L/tree/d$d"
  for f in $(seq -w 1 "$FILES"); do
    name="d$d/f$f "
    printf '%s%s' "$name" "${blk:${#name}}" > "$L/tree/d$d/f$f"
  done
done
sync

# mount_fs KIND MNT UPPER WORK
mount_fs() {
  case $1 in
    kernel) mount -t overlay overlay -o "lowerdir=$L,upperdir=$3,workdir=$4,redirect_dir=on" "$2" ;;
    unionfs) "$UNIONFS" mount -l "$L" -u "$3" -w "$4" "$2" ;;
    fuse-overlayfs) fuse-overlayfs -o "lowerdir=$L,upperdir=$3,workdir=$4" "$2" ;;
  esac
  mounts+=("$2")
}

# umount_fs KIND MNT
umount_fs() {
  local i
  case $1 in
    unionfs) "$UNIONFS" umount "$2" 2>/dev/null || umount "$2" 2>/dev/null || true ;;
    *) umount "$2" 2>/dev/null || true ;;
  esac
  # A daemon may hold layer fds for a moment after unmounting.
  for i in 1 2 3 4 5 6 7 8 9 10; do
    mountpoint -q "$2" || return 0
    sleep 0.2
    umount "$2" 2>/dev/null || true
  done
  umount -l "$2"
}

# fresh_run KIND: a new upper/work/mount point, mounted, in $RUN.
# (Globals, not $(...): mounts made in a subshell would escape `mounts`.)
fresh_run() {
  RUN=$(mktemp -d "$base/run-$1.XXXXXX")
  mkdir "$RUN/u" "$RUN/w" "$RUN/m"
  mount_fs "$1" "$RUN/m" "$RUN/u" "$RUN/w"
}

# probe_rename KIND: what rename(2) of the lower dir itself returns (no mv
# fallback), in $PROBE.
probe_rename() {
  fresh_run "$1"
  PROBE=$(python3 - "$RUN/m/tree" "$RUN/m/probe" <<'EOF'
import errno, os, sys
try:
    os.rename(sys.argv[1], sys.argv[2])
    print("ok")
except OSError as e:
    print(errno.errorcode.get(e.errno, str(e.errno)))
EOF
)
  umount_fs "$1" "$RUN/m"
  rm -rf "$RUN"
}

# time_one KIND: milliseconds of `mv tree tree2` on a fresh mount, in $MS.
time_one() {
  local kind=$1 run t0 t1 n
  fresh_run "$kind"
  run=$RUN
  sync
  if [ "${DROP_CACHES:-0}" = 1 ]; then echo 3 > /proc/sys/vm/drop_caches; fi
  t0=$(date +%s%N)
  mv "$run/m/tree" "$run/m/tree2"
  t1=$(date +%s%N)
  # Outside the timing: the result is right.
  n=$(find "$run/m/tree2" -type f | wc -l)
  if [ -e "$run/m/tree" ] || [ "$n" != $((DIRS * FILES)) ]; then
    echo "bench_dir_rename.sh: $kind: after mv, tree2 has $n files (want $((DIRS * FILES)))" \
      "and tree $( [ -e "$run/m/tree" ] && echo still exists || echo is gone)" >&2
    exit 1
  fi
  umount_fs "$kind" "$run/m"
  rm -rf "$run"
  MS=$(((t1 - t0) / 1000000))
}

median() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }

declare -A med probe all
for kind in "${KINDS[@]}"; do
  probe_rename "$kind"
  probe[$kind]=$PROBE
  runs=()
  for _ in $(seq "$RUNS"); do
    time_one "$kind"
    runs+=("$MS")
    echo "  $kind: mv took $MS ms"
  done
  all[$kind]="${runs[*]}"
  med[$kind]=$(printf '%s\n' "${runs[@]}" | median)
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "inf" }'; }
echo
echo "mv of a lower dir tree of $((DIRS * FILES)) files x 4 KiB; median of $RUNS runs, each on a fresh mount"
echo "(cache: $([ "${DROP_CACHES:-0}" = 1 ] && echo dropped before each run || echo warm); kernel $(uname -r))"
printf '%-16s %12s %-22s %s\n' filesystem "median ms" "rename(2) of the dir" "runs (ms)"
for kind in "${KINDS[@]}"; do
  printf '%-16s %12s %-22s %s\n' "$kind" "${med[$kind]}" "${probe[$kind]}" "${all[$kind]}"
done
echo
echo "unionfs / kernel overlayfs:  $(ratio "${med[unionfs]}" "${med[kernel]}")"
echo "unionfs / fuse-overlayfs:    $(ratio "${med[unionfs]}" "${med[fuse-overlayfs]}")"
