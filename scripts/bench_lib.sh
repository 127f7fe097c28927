# shellcheck shell=bash
# Helpers shared by scripts/bench.sh and scripts/bench_dir_rename.sh.
# Source it (after `cd` to the repository root); it defines functions and a
# few globals and runs nothing by itself except `bench_init`, when called.
#
# Targets (KIND): kernel (mount -t overlay), fo1 (fuse-overlayfs 1.x from the
# distribution), fo2 (fuse-overlayfs 2.0.0, the Rust rewrite, installed by
# `bench_install_fo2` into $BENCH_TOOLS), unionfs (target/release/unionfs).
#
# Everything mounted through these helpers is recorded and undone by the EXIT
# trap that `bench_init` sets: our mount points (deepest first), our loop
# devices, our FUSE daemons if one outlives its unmount (by pid, never by
# name), and the scratch dir.

BENCH_TOOLS=${BENCH_TOOLS:-/var/tmp/unionfs-bench-tools}
FO1_BIN=${FO1_BIN:-/usr/bin/fuse-overlayfs}
FO2_BIN=${FO2_BIN:-$BENCH_TOOLS/bin/fuse-overlayfs}
UNIONFS_BIN=${UNIONFS_BIN:-${CARGO_TARGET_DIR:-$PWD/target}/release/unionfs}
# Extra options for kernel overlayfs (e.g. ",redirect_dir=on").
BENCH_KERNEL_OPTS=${BENCH_KERNEL_OPTS:-}
# More of them for the next mounts only (set per row by bench.sh).
BENCH_KERNEL_ROW_OPTS=
# Empty: everything runs as root. A uid: the FUSE daemons run as that user.
BENCH_RUN_UID=
# shellcheck disable=SC2034 # used by the scripts that source this
CLK_TCK=$(getconf CLK_TCK)

# fuse's enable_uring before `bench_set_uring` changed it (restored at exit).
BENCH_URING_PARAM=/sys/module/fuse/parameters/enable_uring
BENCH_URING_WAS=
BENCH_URING=

bench_mounts=()   # mount points, in mount order
bench_loops=()    # loop devices we attached
bench_daemons=()  # FUSE daemon pids we started
BENCH_BASE=

bench_die() { echo "${0##*/}: $*" >&2; exit 1; }
bench_log() { echo "[$(date +%T)] $*" >&2; }

# bench_as_user CMD...: CMD as $BENCH_RUN_UID (its own group, no
# supplementary groups, HOME=$BENCH_BASE/home), or as root if that is empty.
bench_as_user() {
  if [ -n "$BENCH_RUN_UID" ]; then
    HOME=$BENCH_BASE/home setpriv --reuid="$BENCH_RUN_UID" --regid="$BENCH_RUN_UID" --clear-groups -- "$@"
  else
    "$@"
  fi
}

bench_require_root() {
  [ "$(id -u)" = 0 ] || bench_die "needs root (mount -t overlay, FUSE, loop devices)"
}

# bench_init PREFIX: a scratch dir ($BENCH_BASE) and the cleanup trap.
bench_init() {
  BENCH_BASE=$(mktemp -d "$1.XXXXXX")
  trap bench_cleanup EXIT
  trap 'exit 130' INT TERM
}

# Mount points under $BENCH_BASE (ours), deepest first.
bench_our_mounts() {
  awk -v b="$BENCH_BASE/" 'index($2, b) == 1 { print length($2), $2 }' /proc/self/mounts |
    sort -rn | cut -d' ' -f2-
}

# bench_set_uring on|off: FUSE over io_uring offered to the daemons mounted
# from now on (fuse's enable_uring, global; the old value comes back at
# exit), and asked for by unionfs (`-o io_uring=on`) when on. FO1 (libfuse
# 3.14) cannot use it.
bench_set_uring() {
  [ -w "$BENCH_URING_PARAM" ] || bench_die "URING=$1: $BENCH_URING_PARAM is missing (kernel without FUSE over io_uring)"
  BENCH_URING_WAS=$(cat "$BENCH_URING_PARAM")
  BENCH_URING=$1
  case $1 in
    on) echo Y >"$BENCH_URING_PARAM" ;;
    off) echo N >"$BENCH_URING_PARAM" ;;
    *) bench_die "URING=$1: on or off" ;;
  esac
}

bench_cleanup() {
  local m i d p
  set +e
  [ -n "$BENCH_URING_WAS" ] && echo "$BENCH_URING_WAS" >"$BENCH_URING_PARAM"
  for ((i = ${#bench_mounts[@]} - 1; i >= 0; i--)); do
    m=${bench_mounts[i]}
    mountpoint -q "$m" 2>/dev/null && { umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null; }
  done
  [ -n "$BENCH_BASE" ] && while read -r m; do
    [ -n "$m" ] && { umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null; }
  done < <(bench_our_mounts)
  for p in "${bench_daemons[@]}"; do
    bench_is_ours "$p" && kill "$p" 2>/dev/null
  done
  for d in "${bench_loops[@]}"; do
    losetup "$d" >/dev/null 2>&1 && losetup -d "$d" 2>/dev/null
  done
  if [ -n "$BENCH_BASE" ] && [ -d "$BENCH_BASE" ]; then
    if awk -v b="$BENCH_BASE" 'index($2, b) == 1 { f = 1 } END { exit !f }' /proc/self/mounts; then
      echo "${0##*/}: WARNING: mounts remain under $BENCH_BASE, not removing it" >&2
    else
      rm -rf "$BENCH_BASE"
    fi
  fi
}

# bench_is_ours PID: PID is alive and is one of our daemons (its argv names a
# path under $BENCH_BASE), not a process that got the number since.
bench_is_ours() {
  [ -n "$BENCH_BASE" ] && grep -qzF -- "$BENCH_BASE/" "/proc/$1/cmdline" 2>/dev/null
}

# bench_install_fo2: cargo-installs fuse-overlayfs 2.0.0 into $BENCH_TOOLS once.
# Returns non-zero (having said why on stderr) if it cannot.
bench_install_fo2() {
  [ -x "$FO2_BIN" ] && return 0
  mkdir -p "$BENCH_TOOLS"
  bench_log "installing fuse-overlayfs 2.0.0 (cargo install, once, into $BENCH_TOOLS)"
  if ! cargo install fuse-overlayfs --version 2.0.0 --locked --root "$BENCH_TOOLS" \
    >"$BENCH_TOOLS/install.log" 2>&1 &&
    ! cargo install fuse-overlayfs --version 2.0.0 --root "$BENCH_TOOLS" \
      >>"$BENCH_TOOLS/install.log" 2>&1; then
    echo "${0##*/}: cargo install fuse-overlayfs 2.0.0 failed; last lines of $BENCH_TOOLS/install.log:" >&2
    tail -n 15 "$BENCH_TOOLS/install.log" >&2
    return 1
  fi
  [ -x "$FO2_BIN" ]
}

# bench_kind_available KIND: can this target be mounted here?
bench_kind_available() {
  case $1 in
    kernel) grep -qw overlay /proc/filesystems || modprobe overlay 2>/dev/null ;;
    fo1) [ -x "$FO1_BIN" ] ;;
    fo2) [ -x "$FO2_BIN" ] ;;
    unionfs) [ -x "$UNIONFS_BIN" ] ;;
    unionfs-meta) [ -x "$UNIONFS_BIN" ] && [ "${BENCH_UNIONFS_META:-0}" = 1 ] ;;
    *) return 1 ;;
  esac
}

bench_kind_label() {
  case $1 in
    kernel) echo "kernel overlayfs" ;;
    fo1) echo "fuse-overlayfs $("$FO1_BIN" --version 2>&1 | awk '/fuse-overlayfs: version/ { print $3 }')" ;;
    fo2) echo "fuse-overlayfs $("$FO2_BIN" --version 2>&1 | awk '/fuse-overlayfs: version/ { print $3 }')" ;;
    unionfs) echo "unionfs $(git describe --always --dirty 2>/dev/null || echo '?')" ;;
    unionfs-meta) echo "unionfs -o metacopy=on" ;;
  esac
}

# bench_probe_unionfs_meta DIR: does the unionfs binary mount with
# `-o metacopy=on`? Tries it on empty layers in DIR (which it removes after);
# sets BENCH_UNIONFS_META to 1 or 0 and BENCH_UNIONFS_META_WHY to its answer.
bench_probe_unionfs_meta() {
  local d=$1 rc=0
  BENCH_UNIONFS_META=0 BENCH_UNIONFS_META_WHY=
  mkdir -p "$d/l" "$d/u" "$d/w" "$d/m"
  BENCH_UNIONFS_META_WHY=$("$UNIONFS_BIN" mount -l "$d/l" -u "$d/u" -w "$d/w" -o metacopy=on "$d/m" 2>&1) || rc=$?
  if [ "$rc" = 0 ] && mountpoint -q "$d/m"; then
    BENCH_UNIONFS_META=1
    "$UNIONFS_BIN" umount "$d/m" 2>/dev/null || umount "$d/m" 2>/dev/null || umount -l "$d/m"
  fi
  BENCH_UNIONFS_META_WHY=$(printf '%s' "$BENCH_UNIONFS_META_WHY" | tr '\n' ' ' | cut -c1-200)
  sleep 0.2
  rm -rf "$d"
}

# bench_loop_fs SIZE DIR: a fresh journaled ext4 (mkfs of a sparse file in
# $BENCH_BASE, loop-mounted) at DIR. Sets LOOP_DEV.
bench_loop_fs() {
  local size=$1 dir=$2 img
  img=$dir.img
  rm -f "$img"
  truncate -s "$size" "$img"
  mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$img" ||
    bench_die "mkfs.ext4 $img failed"
  LOOP_DEV=$(losetup --find --show "$img") || bench_die "losetup $img failed"
  bench_loops+=("$LOOP_DEV")
  mkdir -p "$dir"
  mount -t ext4 "$LOOP_DEV" "$dir" || bench_die "mount $LOOP_DEV $dir failed"
  bench_mounts+=("$dir")
}

# bench_loop_fs_remove DIR: unmount the loop ext4 at DIR, detach, delete the image.
bench_loop_fs_remove() {
  local dir=$1 dev
  dev=$(findmnt -n -o SOURCE --target "$dir" 2>/dev/null || true)
  umount "$dir" 2>/dev/null || umount -l "$dir"
  case $dev in /dev/loop*) losetup -d "$dev" 2>/dev/null || true ;; esac
  rm -f "$dir.img"
  rmdir "$dir" 2>/dev/null || true
}

# bench_daemon_pid MNT: the pid of the FUSE daemon serving MNT (a process
# holding /dev/fuse open whose argv has MNT as one argument), or nothing.
bench_daemon_pid() {
  local mnt=$1 c p f
  # grep -z: NUL-separated argv, -x: MNT is a whole argument.
  # shellcheck disable=SC2013 # /proc/PID/cmdline paths: no blanks
  for c in $(grep -lzxF -- "$mnt" /proc/[0-9]*/cmdline 2>/dev/null); do
    p=${c#/proc/}
    p=${p%/cmdline}
    [ "$p" = "$$" ] && continue
    for f in /proc/"$p"/fd/*; do
      if [ "$(readlink "$f" 2>/dev/null)" = /dev/fuse ]; then
        echo "$p"
        return 0
      fi
    done
  done
  return 1
}

# bench_children_cpu VAR: sets VAR to the user + system seconds of the
# children this shell has waited for so far (bash's `times`, second line;
# run in this shell, not in a command substitution, which has no children).
bench_children_cpu() {
  local f=${BENCH_BASE:-/tmp}/times.$$
  times >"$f"
  printf -v "$1" '%s' "$(awk 'NR == 2 {
    s = 0
    for (i = 1; i <= NF; i++) { split($i, p, "m"); sub("s", "", p[2]); s += p[1] * 60 + p[2] }
    printf "%.3f", s }' "$f")"
  rm -f "$f"
}

# bench_cpu_ticks PID: utime + stime (all threads) in clock ticks.
bench_cpu_ticks() {
  # Fields after the ")" that ends comm: state is 1, utime 12, stime 13.
  sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | awk '{ print $12 + $13 }'
}

# bench_hwm_kib PID: peak resident set size (VmHWM) in KiB.
bench_hwm_kib() {
  awk '/^VmHWM:/ { print $2 }' "/proc/$1/status" 2>/dev/null
}

# bench_mount KIND LOWERS UPPER WORK MNT: mounts, records MNT, and sets
# DAEMON_PID (empty for the kernel). LOWERS is colon-separated, top first.
bench_mount() {
  local kind=$1 lowers=$2 upper=$3 work=$4 mnt=$5 i uid
  local err=${BENCH_BASE:-/tmp}/mount.err rc=0 ao=
  DAEMON_PID=
  # Rootless: other users (root: the harness, `mountpoint`) need allow_other.
  [ -n "$BENCH_RUN_UID" ] && ao=,allow_other
  # unionfs takes FUSE over io_uring only when asked (bench_set_uring on).
  [ "$BENCH_URING" = on ] && ao=$ao,io_uring=on
  case $kind in
    kernel) mount -t overlay overlay -o "lowerdir=$lowers,upperdir=$upper,workdir=$work$BENCH_KERNEL_OPTS$BENCH_KERNEL_ROW_OPTS" "$mnt" ;;
    fo1) bench_as_user "$FO1_BIN" -o "lowerdir=$lowers,upperdir=$upper,workdir=$work$ao" "$mnt" ;;
    fo2) bench_as_user "$FO2_BIN" -o "lowerdir=$lowers,upperdir=$upper,workdir=$work$ao" "$mnt" ;;
    unionfs) bench_as_user "$UNIONFS_BIN" mount -l "$lowers" -u "$upper" -w "$work" ${ao:+-o "${ao#,}"} "$mnt" ;;
    unionfs-meta) bench_as_user "$UNIONFS_BIN" mount -l "$lowers" -u "$upper" -w "$work" -o "metacopy=on$ao" "$mnt" ;;
    *) bench_die "unknown target $kind" ;;
  esac 2>"$err" || rc=$?
  # fuse-overlayfs 1.x says "unknown argument ignored: lazytime" on every
  # mount (an option it gets from mount(8)); anything else is shown.
  grep -v '^unknown argument ignored: lazytime$' "$err" >&2 || true
  [ "$rc" = 0 ] || bench_die "$kind: mount at $mnt failed (exit $rc)"
  bench_mounts+=("$mnt")
  for i in $(seq 50); do
    mountpoint -q "$mnt" && break
    sleep 0.1
  done
  mountpoint -q "$mnt" || bench_die "$kind: $mnt is not a mount point after mounting"
  if [ "$kind" != kernel ]; then
    DAEMON_PID=$(bench_daemon_pid "$mnt") || bench_die "$kind: no daemon found serving $mnt"
    bench_daemons+=("$DAEMON_PID")
    # The daemon measured must be the one of the mode: unprivileged when rootless.
    uid=$(awk '/^Uid:/ { print $3 }' "/proc/$DAEMON_PID/status")
    [ "$uid" = "${BENCH_RUN_UID:-0}" ] ||
      bench_die "$kind: daemon $DAEMON_PID runs as uid $uid, not ${BENCH_RUN_UID:-0}"
  fi
}

# bench_umount KIND MNT [PID]: unmounts and waits for the daemon (PID) to
# exit, so that it uses no CPU during the next measurement.
bench_umount() {
  local kind=$1 mnt=$2 pid=${3:-} i
  case $kind in
    unionfs | unionfs-meta) "$UNIONFS_BIN" umount "$mnt" 2>/dev/null || umount "$mnt" 2>/dev/null || true ;;
    fo1 | fo2) fusermount3 -u "$mnt" 2>/dev/null || umount "$mnt" 2>/dev/null || true ;;
    *) umount "$mnt" 2>/dev/null || true ;;
  esac
  # A daemon may hold layer fds for a moment after unmounting.
  for i in $(seq 25); do
    mountpoint -q "$mnt" || break
    sleep 0.2
    umount "$mnt" 2>/dev/null || true
  done
  mountpoint -q "$mnt" && umount -l "$mnt"
  if [ -n "$pid" ]; then
    for i in $(seq 50); do
      kill -0 "$pid" 2>/dev/null || return 0
      sleep 0.1
    done
    if bench_is_ours "$pid"; then
      echo "${0##*/}: $kind daemon $pid still running 5 s after unmount; killing it" >&2
      kill "$pid" 2>/dev/null || true
    fi
  fi
}

bench_drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }

# Seconds since the epoch, microsecond resolution, without a fork.
bench_now() { echo "${EPOCHREALTIME/,/.}"; }

# median: of the numbers on stdin (one per line), the middle one (lower middle).
median() { sort -g | awk '{ a[NR] = $1 } END { if (NR) print a[int((NR + 1) / 2)] }'; }

# ratio A B: A / B with 2 decimals, "-" if either is missing.
ratio() {
  awk -v a="$1" -v b="$2" 'BEGIN {
    if (a == "" || b == "" || a == "-" || b == "-") { print "-"; exit }
    if (b + 0 > 0) printf "%.2f", a / b; else print "inf" }'
}
