#!/usr/bin/env bash
# Why unionfs does not pass lower files through (FUSE passthrough, root):
# the experiment behind that choice, run on kernel overlayfs, FO1, FO2 and
# unionfs. A lower file is opened for reading (fd A, read once), then
# written at offset 0 through a second open (the write copies it up); then
# fd A reads again. Kernel overlayfs: fd A sees the new bytes, the upper
# holds them, the lower is unchanged. The kernel binds one backing file to
# a FUSE inode while a passthrough file of it is open, and each open of it
# reopens that same backing file with its own flags: once fd A passes
# through to the lower, no later open of the inode can be passed through
# to the upper copy. A daemon that passes the lower through must then
# either serve fd A stale bytes (reads bypass the daemon) or hand the
# writer the lower's backing (fuse-overlayfs 2.0.0 as root: the write
# lands in the lower layer).
#
# Needs root. Usage: scripts/lower_passthrough_probe.sh
# FO2 (fuse-overlayfs 2.0.0) is run if installed by scripts/bench.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/bench_lib.sh
. scripts/bench_lib.sh
bench_require_root
cargo build --release --quiet
D=$(mktemp -d /var/tmp/unionfs-passthrough-probe.XXXXXX)
trap 'mountpoint -q "$D/m" && umount "$D/m"; rm -rf "$D"' EXIT
mkdir -p "$D/l" "$D/m"
cat >"$D/probe.py" <<'EOF'
import os, sys
f = sys.argv[1] + "/f"
a = os.open(f, os.O_RDONLY)
before = os.pread(a, 12, 0)
w = os.open(f, os.O_WRONLY)
os.pwrite(w, b"UPPER", 0)
os.close(w)
print(before.decode().strip(), os.pread(a, 12, 0).decode().strip(), end=" ")
EOF
printf '%-10s %-14s %-14s %-14s %s\n' target "fd A before" "fd A after" "upper holds" "lower holds"
for t in kernel fo1 fo2 unionfs; do
  rm -rf "$D/u" "$D/w"
  mkdir "$D/u" "$D/w"
  echo lower-bytes >"$D/l/f"
  o="lowerdir=$D/l,upperdir=$D/u,workdir=$D/w"
  case $t in
    kernel) mount -t overlay overlay -o "$o" "$D/m" ;;
    fo1) command -v fuse-overlayfs >/dev/null || continue
      fuse-overlayfs -o "$o" "$D/m" 2>/dev/null ;;
    fo2) [ -x "$FO2_BIN" ] || { echo "fo2        not installed (scripts/bench.sh installs it)"; continue; }
      "$FO2_BIN" -o "$o" "$D/m" ;;
    unionfs) "$UNIONFS_BIN" mount -l "$D/l" -u "$D/u" -w "$D/w" "$D/m" ;;
  esac
  printf '%-10s ' "$t"
  python3 "$D/probe.py" "$D/m" | awk '{printf "%-14s %-14s ", $1, $2}'
  umount "$D/m"
  printf '%-14s %s\n' "$(cat "$D/u/f" 2>/dev/null || echo -)" "$(cat "$D/l/f")"
done
