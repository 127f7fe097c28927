#!/usr/bin/env bash
# Benchmarks unionfs against kernel overlayfs and fuse-overlayfs on the same
# layers, in the same run. Prints the median of N runs per workload and the
# ratios (lower is better for unionfs). Needs root. Usage: scripts/bench.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
UNIONFS_BENCH=1 bash scripts/deps.sh
cargo build --release --quiet
UNIONFS="$PWD/target/release/unionfs"
RUNS=${1:-5}

base=$(mktemp -d /tmp/unionfs-bench.XXXXXX)
mounted=()
cleanup() {
  for m in "${mounted[@]}"; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
  rm -rf "$base"
}
trap cleanup EXIT

# Layers: a tree of 20k small files over 2 lowers, and one 256 MiB file.
L1="$base/l1" L2="$base/l2"
mkdir -p "$L1" "$L2"
for d in $(seq 1 100); do
  mkdir -p "$L2/tree/d$d" "$L1/tree/d$d"
  for f in $(seq 1 100); do echo "l2 $d $f" > "$L2/tree/d$d/f$f"; done
  for f in $(seq 101 200); do echo "l1 $d $f" > "$L1/tree/d$d/f$f"; done
done
head -c $((256 << 20)) /dev/urandom > "$L2/big"

# mount_fs KIND MNT UPPER WORK
mount_fs() {
  case $1 in
    kernel) mount -t overlay overlay -o "lowerdir=$L1:$L2,upperdir=$3,workdir=$4" "$2" ;;
    unionfs) "$UNIONFS" mount -l "$L1:$L2" -u "$3" -w "$4" "$2" ;;
    fuse-overlayfs) fuse-overlayfs -o "lowerdir=$L1:$L2,upperdir=$3,workdir=$4" "$2" ;;
  esac
}

# time_one KIND WORKLOAD: fresh mount, drop caches, time the workload (seconds)
time_one() {
  local kind=$1 work=$2 run=$base/run-$kind-$RANDOM
  mkdir -p "$run/u" "$run/w" "$run/m"
  mount_fs "$kind" "$run/m" "$run/u" "$run/w"
  mounted+=("$run/m")
  sync; echo 3 > /proc/sys/vm/drop_caches
  local t0 t1
  t0=$(date +%s.%N)
  (cd "$run/m" && eval "$work") >/dev/null 2>&1
  t1=$(date +%s.%N)
  umount "$run/m" 2>/dev/null || umount -l "$run/m"
  rm -rf "$run"
  echo "$t1 - $t0" | bc
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

declare -A workloads=(
  [stat-walk-20k]='find tree -printf "%s %i\n" | wc -l'
  [read-20k-files]='cat tree/*/* | wc -c'
  [read-256MiB]='cat big | wc -c'
  [copy-up-2k-appends]='for f in tree/d1*/f1*; do echo x >> $f; done'
  [create-5k-files]='mkdir new && for i in $(seq 5000); do echo $i > new/$i; done'
  [readdir-ls-lR]='ls -lR tree | wc -l'
)

printf '%-22s %12s %12s %16s %10s %10s\n' workload kernel unionfs fuse-overlayfs u/kernel u/fuse-ov
for name in stat-walk-20k read-20k-files read-256MiB copy-up-2k-appends create-5k-files readdir-ls-lR; do
  declare -A med=()
  for kind in kernel unionfs fuse-overlayfs; do
    med[$kind]=$(for i in $(seq "$RUNS"); do time_one "$kind" "${workloads[$name]}"; done | median)
  done
  printf '%-22s %12.3f %12.3f %16.3f %10.2f %10.2f\n' "$name" "${med[kernel]}" "${med[unionfs]}" "${med[fuse-overlayfs]}" \
    "$(echo "${med[unionfs]} / ${med[kernel]}" | bc -l)" "$(echo "${med[unionfs]} / ${med[fuse-overlayfs]}" | bc -l)"
done
