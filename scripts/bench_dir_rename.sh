#!/usr/bin/env bash
# Times `mv` of a directory tree that lives in a lower layer (100 dirs x 100
# files of 4 KiB = 10k files, 40 MiB) on unionfs, kernel overlayfs
# (redirect_dir=on: the rename only records a redirect) and fuse-overlayfs
# 1.x and 2.0.0 (whose rename(2) of a lower dir may fail with EXDEV, so mv
# falls back to copy + delete). Each timing is on a fresh mount and a fresh
# upper (a new loop-mounted ext4, as in scripts/bench.sh); the median of RUNS
# runs is printed next to the ratios.
#
# Needs root. Usage: scripts/bench_dir_rename.sh
# Environment: RUNS (default 3), DIRS and FILES (default 100 each),
# DROP_CACHES=1 to drop the page cache before each timing (machine-wide),
# TARGETS (default kernel,unionfs,fo1,fo2; fo2 only if already installed
# by scripts/bench.sh).
# Cleans up after itself (scripts/bench_lib.sh): unmounts what it mounted
# (its own paths only), detaches its loop devices, removes its temp dir.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench_lib.sh
bench_require_root
UNIONFS_BENCH=1 bash scripts/deps.sh
cargo build --release --quiet
RUNS=${RUNS:-3}
DIRS=${DIRS:-100}
FILES=${FILES:-100}
BENCH_KERNEL_OPTS=,redirect_dir=on
KINDS=()
IFS=, read -r -a want <<<"${TARGETS:-kernel,unionfs,fo1,fo2}"
for k in "${want[@]}"; do
  if bench_kind_available "$k"; then KINDS+=("$k"); else echo "skipping $k: not installed" >&2; fi
done

bench_init /var/tmp/unionfs-bench-rename

# The lower: $DIRS x $FILES files of exactly 4 KiB, each starting with its name.
L="$BENCH_BASE/lower"
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

UP=$BENCH_BASE/up
MNT=$BENCH_BASE/mnt
mkdir -p "$MNT"

# fresh_run KIND: a new upper (fresh ext4) and work dir, KIND mounted at $MNT.
fresh_run() {
  bench_loop_fs 1G "$UP"
  mkdir "$UP/u" "$UP/w"
  bench_mount "$1" "$L" "$UP/u" "$UP/w" "$MNT"
}
end_run() {
  bench_umount "$1" "$MNT" "$DAEMON_PID"
  bench_loop_fs_remove "$UP"
}

# probe_rename KIND: what rename(2) of the lower dir itself returns (no mv
# fallback), in $PROBE.
probe_rename() {
  fresh_run "$1"
  PROBE=$(python3 - "$MNT/tree" "$MNT/probe" <<'EOF'
import errno, os, sys
try:
    os.rename(sys.argv[1], sys.argv[2])
    print("ok")
except OSError as e:
    print(errno.errorcode.get(e.errno, str(e.errno)))
EOF
)
  end_run "$1"
}

# time_one KIND: milliseconds of `mv tree tree2` on a fresh mount, in $MS.
time_one() {
  local kind=$1 t0 t1 n
  fresh_run "$kind"
  sync
  if [ "${DROP_CACHES:-0}" = 1 ]; then bench_drop_caches; fi
  t0=$(date +%s%N)
  mv "$MNT/tree" "$MNT/tree2"
  t1=$(date +%s%N)
  # Outside the timing: the result is right.
  n=$(find "$MNT/tree2" -type f | wc -l)
  if [ -e "$MNT/tree" ] || [ "$n" != $((DIRS * FILES)) ]; then
    echo "bench_dir_rename.sh: $kind: after mv, tree2 has $n files (want $((DIRS * FILES)))" \
      "and tree $( [ -e "$MNT/tree" ] && echo still exists || echo is gone)" >&2
    exit 1
  fi
  end_run "$kind"
  MS=$(((t1 - t0) / 1000000))
}

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

echo
echo "mv of a lower dir tree of $((DIRS * FILES)) files x 4 KiB; median of $RUNS runs, each on a fresh mount"
echo "(upper: fresh ext4 on a loop device; cache: $([ "${DROP_CACHES:-0}" = 1 ] && echo dropped before each run || echo warm); kernel $(uname -r))"
printf '%-24s %12s %-22s %s\n' filesystem "median ms" "rename(2) of the dir" "runs (ms)"
for kind in "${KINDS[@]}"; do
  printf '%-24s %12s %-22s %s\n' "$(bench_kind_label "$kind")" "${med[$kind]}" "${probe[$kind]}" "${all[$kind]}"
done
echo
for kind in "${KINDS[@]}"; do
  [ "$kind" = unionfs ] && continue
  printf 'unionfs / %-24s %s\n' "$(bench_kind_label "$kind"):" "$(ratio "${med[unionfs]:-}" "${med[$kind]}")"
done
