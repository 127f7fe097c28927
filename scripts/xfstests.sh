#!/usr/bin/env bash
# xfstests (the unmodified snapshot in ../shared/suites) on unionfs, with
# kernel overlayfs over the same base filesystem as the baseline.
#
#   scripts/xfstests.sh [--ci] [--targets "unionfs rootless overlay"]
#                       [--tests "generic/001 generic/002 ..." | --group quick]
#                       [--parallel]   (the targets at once, each on its own images)
#   scripts/xfstests.sh --build-only    builds (or finds) xfstests, prints its dir
#
# Targets:
#   unionfs   the release binary mounted by root (FSTYP=fuse, FUSE_SUBTYP=.unionfs)
#   rootless  the same, the daemon running as uid 1000 through the setuid
#             fusermount3 (allow_other, user_allow_other)
#   overlay   kernel overlayfs, `./check -overlay` over the same ext4 base
#   fuse-overlayfs  the same layers under fuse-overlayfs (root), to tell a
#             limit of FUSE from one of unionfs
#
# How unionfs is mounted: xfstests runs `mount -t fuse.unionfs -o source=DIR
# DEV MNT`; mount(8) runs /sbin/mount.fuse.unionfs (written by this script,
# removed at exit), which mounts lowers DIR/lower1:DIR/lower2 (prefilled with
# a merged dir, hard links, a symlink and a big file, made if missing) under
# DIR/upper with work dir DIR/work.
#
# Everything runs inside a private mount namespace: the ext4 images (sparse
# files in a temp dir), the mounts, and for `rootless` a 0666 /dev/fuse and an
# /etc/fuse.conf with user_allow_other bind-mounted over the real ones, so
# nothing outside changes and nothing needs restoring. Loop devices are
# detached and daemons we started are ended at exit.
#
# Prints a table (passed / failed / not run per target) and the tests that
# pass on kernel overlayfs but fail on unionfs. tests/xfstests-expected.txt
# lists the failures we expect, with the reason.
#
# --ci: a fixed subset (CI_TESTS below) on unionfs (root) and rootless at
# once (--parallel), no baseline; exits non-zero on any failure not in the expected list and ends
# with the line `xfstests: N passed, N failed`. Under CI=true anything that
# cannot run fails instead of being skipped.
#
# Knobs: KEEP=1 keeps the temp dir (results, .out.bad, .full, daemon logs).
#        XFSTESTS_CACHE=DIR where the build is cached (/var/tmp/unionfs-xfstests).
set -euo pipefail
# The braces make bash read the whole script before running it, and every
# path ends in an exit inside them, so editing this file during a run (they
# take minutes) cannot break that run.
{
cd "$(dirname "$0")/.."
repo="$(pwd)"
say() { echo "[xfstests] $*" >&2; }
die() { echo "xfstests: $*" >&2; exit 2; }

# The CI subset: the quick generic tests numbered up to 200 that run on
# unionfs (the others are "not run" there: no O_TMPFILE, fiemap, mkfs,
# quota, ...), but generic/069 (3M appends of 4 bytes, minutes rootless),
# and the later quick tests that found bugs fixed since (remount, devices
# and setuid, ACLs and setgid, rewinddir, O_DIRECT).
# Covers data I/O and mmap, copy-up, rename, links, xattrs, ACLs, fsync,
# dirs, fsstress. Its expected failures are in tests/xfstests-expected.txt.
CI_TESTS="generic/001 generic/002 generic/003 generic/005 generic/006
generic/007 generic/008 generic/011 generic/013 generic/014 generic/020
generic/023 generic/024 generic/025 generic/028 generic/029 generic/030
generic/033 generic/035 generic/037 generic/053 generic/062 generic/070
generic/071 generic/075 generic/080 generic/084 generic/086 generic/087
generic/088 generic/091 generic/095 generic/097 generic/098 generic/099
generic/103 generic/105 generic/112 generic/113 generic/117 generic/120
generic/124 generic/126 generic/129 generic/130 generic/131 generic/135
generic/141 generic/169 generic/184 generic/198 generic/294 generic/306
generic/319 generic/366 generic/375 generic/434 generic/444 generic/452
generic/471 generic/633"

ci=0 targets="" tests="" group="" parallel=0 build_only=0
while [ $# -gt 0 ]; do
  case "$1" in
    --ci) ci=1 ;;
    --targets) targets="$2"; shift ;;
    --tests) tests="$2"; shift ;;
    --group) group="$2"; shift ;;
    --parallel) parallel=1 ;;
    --build-only) build_only=1 ;;
    --inner) shift; break ;;   # internal: the part inside the namespace
    -h|--help) sed -n '2,40p' "$0"; exit 0 ;;
    *) die "unknown argument $1 (--help)" ;;
  esac
  shift
done

# fail_or_skip MSG: under CI=true a missing piece fails the run.
fail_or_skip() {
  if [ "${CI:-}" = true ]; then die "$1 (CI=true: failing, not skipping)"; fi
  echo "xfstests: SKIPPED: $1" >&2
  exit 0
}

if [ "${1:-}" != inner ]; then
  [ "$(id -u)" = 0 ] || fail_or_skip "must run as root (xfstests mounts)"
  [ -e /dev/fuse ] || fail_or_skip "no /dev/fuse"
  if [ "$ci" = 1 ]; then
    targets="${targets:-unionfs rootless}"
    [ -n "$tests" ] || tests="$CI_TESTS"
    parallel=1
  else
    targets="${targets:-unionfs rootless overlay}"
    [ -n "$tests" ] || [ -n "$group" ] || group=quick
  fi
  tarball="$(cd "${SHARED_SUITES:-../shared/suites}" && pwd)/xfstests-63a2972.tar.gz"
  [ -f "$tarball" ] || fail_or_skip "no $tarball"

  # Build dependencies (Debian package names; README in shared/suites).
  pkgs=(xfsprogs xfslibs-dev uuid-dev libtool-bin e2fsprogs automake gcc make
        quota attr acl libattr1-dev libacl1-dev libaio-dev liburing-dev
        libgdbm-dev gawk fio dbench bc psmisc fuse3 util-linux)
  missing=()
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
  done
  command -v setpriv >/dev/null || missing+=(util-linux)
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  bash scripts/deps.sh

  # Build xfstests once per tarball (cached by its hash).
  hash="$(sha256sum "$tarball" | cut -c1-16)"
  cache="${XFSTESTS_CACHE:-/var/tmp/unionfs-xfstests}/$hash"
  if [ ! -e "$cache/built" ]; then
    say "building xfstests in $cache (once per tarball)"
    rm -rf "$cache"; mkdir -p "$cache"
    tar -xzf "$tarball" -C "$cache"
    if ! (cd "$cache/xfstests" && nice make -j"$(nproc)" >"$cache/build.log" 2>&1); then
      tail -30 "$cache/build.log" >&2; die "xfstests build failed ($cache/build.log)"
    fi
    touch "$cache/built"
  fi
  if [ "$build_only" = 1 ]; then echo "$cache/xfstests"; exit 0; fi
  say "cargo build --release"
  nice cargo build --release --quiet
  # cargo builds where CARGO_TARGET_DIR says (a worktree's build kept out of it)
  export XFS_DIR="$cache/xfstests" UNIONFS_BIN="${CARGO_TARGET_DIR:-$repo/target}/release/unionfs"
  export XFS_TARGETS="$targets" XFS_TESTS="$tests" XFS_GROUP="$group" XFS_CI="$ci"
  export XFS_REPO="$repo"
  tmp="$(mktemp -d /var/tmp/unionfs-xfstests-run.XXXXXX)"
  chmod 755 "$tmp"
  export XFS_TMP="$tmp"
  # mount(8) looks for helpers in /sbin only; ours are named by the run id
  export XFS_HELPER_DIR=/sbin XFS_RUN_ID="${tmp##*.}" XFS_PARALLEL="$parallel"
  inner_pid=""
  # shellcheck source=scripts/proc_lib.sh
  . scripts/proc_lib.sh
  cleanup() {
    local rc=$?
    if [ -n "$inner_pid" ] && kill -0 "$inner_pid" 2>/dev/null; then
      kill -TERM $(descendants "$inner_pid") "$inner_pid" 2>/dev/null || true
      wait "$inner_pid" 2>/dev/null || true
    fi
    # daemons we started name our temp dir on their command line
    local c p
    for c in /proc/[0-9]*/cmdline; do
      p="${c#/proc/}"; p="${p%/cmdline}"
      [ "$(readlink "/proc/$p/exe" 2>/dev/null)" = "$UNIONFS_BIN" ] || continue
      tr '\0' '\n' 2>/dev/null <"$c" | grep -q -F -- "$tmp" && kill -KILL "$p" 2>/dev/null
    done
    # loop devices backed by our images
    local img
    for img in "$tmp"/*/*.img; do
      [ -e "$img" ] || continue
      losetup -j "$img" -O NAME -n 2>/dev/null | xargs -r losetup -d 2>/dev/null || true
    done
    rm -f "$XFS_HELPER_DIR/mount.fuse.unionfs-$XFS_RUN_ID-"*
    if [ "${KEEP:-0}" = 1 ]; then say "kept $tmp"; else rm -rf --one-file-system "$tmp" || true; fi
    exit "$rc"
  }
  trap cleanup EXIT
  trap 'exit 130' INT TERM
  # the rest in a private mount namespace (see the header)
  unshare --mount --propagation private -- bash "$0" --inner inner &
  inner_pid=$!
  wait "$inner_pid"
  exit
fi

########## inside the private mount namespace ##########
tmp="$XFS_TMP"
xfs="$XFS_DIR"
results="$tmp/results"
mkdir -p "$results" "$tmp/logs"
chmod 1777 "$tmp/logs"

write_helper() {  # write_helper PATH RUN_AS_UID (empty: root)
  local helper="$1"
  cat >"$helper" <<EOF
#!/bin/bash
# mount.fuse.unionfs DEV MNT -o source=DIR,OPTS (written by scripts/xfstests.sh)
# Mounts DIR/lower1:DIR/lower2 (prefilled) under DIR/upper, work DIR/work.
set -euo pipefail
bin='$3'; run_as='$2'; logs='$tmp/logs'
EOF
  cat >>"$helper" <<'EOF'
echo "mount.fuse helper: $*" >>"$logs/helper-calls.log"
dev="" mnt="" opts=""
while [ $# -gt 0 ]; do
  case "$1" in
    -o) opts="$opts,$2"; shift ;;
    -o*) opts="$opts,${1#-o}" ;;
    -*) ;;
    *) if [ -z "$dev" ]; then dev="$1"; else mnt="$1"; fi ;;
  esac
  shift
done
src="" rest=""
IFS=, read -ra parts <<<"$opts"
for o in "${parts[@]}"; do
  case "$o" in
    "") ;;
    source=*) src="${o#source=}" ;;
    # atime flags: unionfs warns that they mean nothing to it, and that
    # warning on mount's stderr would show in every test's output (the
    # semantics stay as they are: generic/003 fails on them)
    atime|noatime|relatime|norelatime|strictatime|nostrictatime|diratime|nodiratime|lazytime|nolazytime) ;;
    *) rest="$rest,$o" ;;
  esac
done
[ -n "$src" ] && [ -n "$mnt" ] || { echo "mount.fuse.unionfs: need DEV MNT -o source=DIR" >&2; exit 1; }
mkdir -p "$src/upper" "$src/work"
if [ ! -d "$src/lower1" ]; then
  # lower2 (bottom): a dir both lowers have, hard links, a symlink, a big file
  f=unionfs-fixture
  mkdir -p "$src/lower2/$f/merged/sub" "$src/lower1/$f/merged" "$src/lower1/$f/dir1"
  echo lower2-a >"$src/lower2/$f/merged/a"
  echo lower2-b >"$src/lower2/$f/merged/sub/b"
  echo lower2-link >"$src/lower2/$f/hl1"
  ln "$src/lower2/$f/hl1" "$src/lower2/$f/hl2"
  head -c 1048576 /dev/urandom >"$src/lower2/$f/big"
  ln -s merged/a "$src/lower2/$f/sym"
  echo lower1-a >"$src/lower1/$f/merged/a"
  echo lower1-c >"$src/lower1/$f/merged/c"
  echo lower1-d >"$src/lower1/$f/dir1/d"
fi
log="$logs/$(echo "$src" | tr / _).log"
args=("$dev" "$mnt" -o "lowerdir=$src/lower1:$src/lower2,upperdir=$src/upper,workdir=$src/work,log_file=$log$rest")
# A remount changes only the flags of the live mount, which root (who
# runs mount(8) here) may do for any mount; fusermount3 has no remount.
case ",$rest," in *,remount,*) exec "$bin" "${args[@]}" ;; esac
if [ -n "$run_as" ]; then
  chown -R "$run_as:$run_as" "$src"
  # the daemon cannot chown: owners and modes are kept in xattrs, as
  # rootless containers/storage runs it
  args[3]="${args[3]},xattr_permissions=2"
  exec setpriv --reuid="$run_as" --regid="$run_as" --clear-groups -- "$bin" "${args[@]}"
fi
if [ "$(basename "$bin")" = fuse-overlayfs ]; then
  # the reference: the same layers under fuse-overlayfs (its own options)
  # (its parser warns on options it does not know: keep those out)
  rest="$(echo "$rest" | sed -e 's/,rw\b//g' -e 's/,lazytime\b//g')"
  args=(-o "lowerdir=$src/lower1:$src/lower2,upperdir=$src/upper,workdir=$src/work$rest" "$mnt")
  # (and it says "unknown argument ignored: lazytime" at every mount, which
  # would show in every test's output)
  exec "$bin" "${args[@]}" 2> >(grep -v 'unknown argument ignored: lazytime' >&2)
fi
exec "$bin" "${args[@]}"
EOF
  chmod 755 "$helper"
}

# run_target NAME: one ./check run on two fresh ext4 images of its own
# (sparse files in the temp dir, loop devices); leaves
# $results/NAME/{list,notrun,bad,pass,seconds}.
run_target() {
  local name="$1" cfg="$tmp/$1.config" out="$results/$1" d="$tmp/$1" n
  mkdir -p "$out" "$d/base-test" "$d/base-scratch" "$d/mnt-test" "$d/mnt-scratch"
  for n in test scratch; do
    truncate -s 3G "$d/$n.img"
    mkfs.ext4 -q -F "$d/$n.img"
  done
  local test_loop scratch_loop check_args=()
  test_loop="$(losetup -f --show "$d/test.img")"
  scratch_loop="$(losetup -f --show "$d/scratch.img")"
  case "$name" in
    overlay)
      cat >"$cfg" <<EOF
export FSTYP=ext4
export TEST_DEV=$test_loop
export TEST_DIR=$d/base-test
export SCRATCH_DEV=$scratch_loop
export SCRATCH_MNT=$d/base-scratch
export RESULT_BASE=$out/results
EOF
      check_args=(-overlay) ;;
    unionfs|rootless|fuse-overlayfs)
      mount "$test_loop" "$d/base-test"
      mount "$scratch_loop" "$d/base-scratch"
      chmod 755 "$d/base-test" "$d/base-scratch"
      # fusermount3 wants the user to own the mount point
      [ "$name" != rootless ] || chown 1000:1000 "$d/mnt-test" "$d/mnt-scratch"
      # a subtype of our own, so that concurrent runs never share a helper
      local subtype="unionfs-$XFS_RUN_ID-$name"
      local daemon="$UNIONFS_BIN"
      [ "$name" != fuse-overlayfs ] || daemon="$(command -v fuse-overlayfs)" ||
        die "fuse-overlayfs is not installed"
      write_helper "$XFS_HELPER_DIR/mount.fuse.$subtype" "$([ "$name" = rootless ] && echo 1000 || true)" "$daemon"
      cat >"$cfg" <<EOF
export FSTYP=fuse
export FUSE_SUBTYP=.$subtype
export TEST_DEV=${name}_test
export TEST_DIR=$d/mnt-test
export SCRATCH_DEV=${name}_scratch
export SCRATCH_MNT=$d/mnt-scratch
export MOUNT_OPTIONS="-osource=$d/base-scratch/src,allow_other,default_permissions"
export TEST_FS_MOUNT_OPTS="-osource=$d/base-test/src,allow_other,default_permissions"
export RESULT_BASE=$out/results
EOF
      # every FUSE mount here has type fuse.SUBTYPE (unionfs passes its
      # subtype to mount(2) too); xfstests wants df -T to say fuse
      printf '#!/bin/sh\ndf "$@" | sed "s/ fuse\\.[^ ]* / fuse /"\n' >"$d/df"
      chmod 755 "$d/df"
      echo "export DF_PROG=\"$d/df -T -P\"" >>"$cfg"
      if [ "$name" != fuse-overlayfs ]; then
        # umount that, when it finds the mount busy, logs who holds it: the
        # processes with a cwd, root, open file or mapping under it, and
        # what is mounted below it (umount-busy.log in the results)
        mkdir -p "$d/bin"
        cat >"$d/bin/umount" <<'EOF'
#!/bin/bash
err=$(/usr/bin/umount "$@" 2>&1) && exit 0
rc=$?
[ -z "$err" ] || printf '%s\n' "$err" >&2
case "$err" in *busy*) ;; *) exit $rc ;; esac
# First what the FUSE connection is doing (requests the kernel waits on,
# from fusectl, mounted in this private namespace if need be), before
# anything else can change it.
mountpoint -q /sys/fs/fuse/connections || mount -t fusectl fusectl /sys/fs/fuse/connections 2>/dev/null
waiting=
for a in "$@"; do
  case "$a" in "$BUSY_NAME"_test) a=$BUSY_TEST ;; "$BUSY_NAME"_scratch) a=$BUSY_SCRATCH ;; esac
  dev=$(awk -v m="$a" '$5 == m { print $3 }' /proc/self/mountinfo | tail -1)
  [ -n "$dev" ] && waiting="$waiting $dev: $(cat "/sys/fs/fuse/connections/${dev#*:}/waiting" 2>/dev/null || echo '?') requests waiting"
done
{
  echo "== $(date +%T.%N | cut -c1-12) umount $* failed ($rc);${waiting:- no fusectl entry}"
  for a in "$@"; do
    case "$a" in "$BUSY_NAME"_test) a=$BUSY_TEST ;; "$BUSY_NAME"_scratch) a=$BUSY_SCRATCH ;; esac
    [ -d "$a" ] || continue
    grep -F " $a" /proc/self/mountinfo
    for p in /proc/[0-9]*; do
      h=$( { ls -l "$p/cwd" "$p/root" "$p/fd" 2>/dev/null | grep -F -- "-> $a"; grep -F -- " $a" "$p/maps" 2>/dev/null | head -3; } )
      [ -z "$h" ] || echo "pid ${p#/proc/} ($(tr '\0' ' ' <"$p/cmdline" | cut -c1-120)): $h"
    done
  done
} >>"$BUSY_LOG" 2>&1
# Seen a few times a run, with no holder left by the time of the scan, until
# the daemon of the mount before stopped unmounting its path again on its
# way out (vendor/fuser/PATCH.md, is_mounted): right after a cycle mount it
# walked into the new mount. Kept to catch a return: retried every 0.1 s
# for up to 3 s, and counted in the summary (not hidden) so that the rest
# of the run is not lost to it. The log says how long after the scan it
# cleared.
for i in $(seq 1 30); do
  sleep 0.1
  if /usr/bin/umount "$@" 2>/dev/null; then
    echo "   unmounted on a retry $((i * 100)) ms after the scan" >>"$BUSY_LOG"
    exit 0
  fi
done
exit $rc
EOF
        chmod 755 "$d/bin/umount"
        cat >>"$cfg" <<EOF
export PATH="$d/bin:\$PATH" UMOUNT_PROG=$d/bin/umount BUSY_NAME=$name
export BUSY_TEST=$d/mnt-test BUSY_SCRATCH=$d/mnt-scratch BUSY_LOG=$out/umount-busy.log
EOF
      fi
      if [ "$name" = fuse-overlayfs ]; then
        # fuse-overlayfs names every mount's source "fuse-overlayfs" (no
        # fsname option); xfstests tells test from scratch by source, with
        # df and `findmnt -S DEV`: wrappers first on PATH map them by target
        mkdir -p "$d/bin"
        cat >"$d/bin/findmnt" <<EOF
#!/bin/bash
a=("\$@") tgt=""
for i in "\${!a[@]}"; do
  case "\${a[i]}" in
    ${name}_test) a[i]=fuse-overlayfs; tgt=$d/mnt-test ;;
    ${name}_scratch) a[i]=fuse-overlayfs; tgt=$d/mnt-scratch ;;
  esac
done
[ -z "\$tgt" ] || a+=(--mountpoint "\$tgt")
/usr/bin/findmnt "\${a[@]}" | sed -e "s|^fuse-overlayfs $d/mnt-test|${name}_test $d/mnt-test|" \\
  -e "s|^fuse-overlayfs $d/mnt-scratch|${name}_scratch $d/mnt-scratch|"
EOF
        cat >"$d/df" <<EOF
#!/bin/sh
df "\$@" | sed -e "s/ fuse\\.[^ ]* / fuse /" -e "s|^fuse-overlayfs\\( .* $d/mnt-test\\)\$|${name}_test\\1|" \\
  -e "s|^fuse-overlayfs\\( .* $d/mnt-scratch\\)\$|${name}_scratch\\1|"
EOF
        cat >"$d/bin/umount" <<EOF
#!/bin/bash
a=("\$@")
for i in "\${!a[@]}"; do
  case "\${a[i]}" in
    ${name}_test) a[i]=$d/mnt-test ;;
    ${name}_scratch) a[i]=$d/mnt-scratch ;;
  esac
done
exec /usr/bin/umount "\${a[@]}"
EOF
        chmod 755 "$d/bin/findmnt" "$d/bin/umount" "$d/df"
        echo "export PATH=\"$d/bin:\$PATH\" UMOUNT_PROG=$d/bin/umount" >>"$cfg"
      fi
      ;;
  esac
  local sel=()
  # generic only (the overlay/ group tests kernel overlayfs itself)
  if [ -n "$XFS_TESTS" ]; then sel=($XFS_TESTS); else sel=(-g "generic/$XFS_GROUP"); fi
  say "running ${sel[*]:0:8}$([ ${#sel[@]} -gt 8 ] && echo " ... (${#sel[@]})") on $name"
  local t0=$SECONDS rc=0
  (cd "$xfs" && HOST_OPTIONS="$cfg" timeout 3h nice ./check "${check_args[@]}" "${sel[@]}") \
    >"$out/check.log" 2>&1 || rc=$?
  sed -n 's/^Ran: //p' "$out/check.log" | tr ' ' '\n' | sed '/^$/d' | sort -u >"$out/list"
  sed -n 's/^Not run: //p' "$out/check.log" | tr ' ' '\n' | sed '/^$/d' | sort -u >"$out/notrun"
  sed -n 's/^Failures: //p' "$out/check.log" | tr ' ' '\n' | sed '/^$/d' | sort -u >"$out/bad"
  comm -23 "$out/list" <(sort -u "$out/notrun" "$out/bad") >"$out/pass"
  echo "$((SECONDS - t0))" >"$out/seconds"
  if [ ! -s "$out/list" ]; then
    echo "xfstests: $name: ./check ran nothing (exit $rc); its output:" >&2
    tail -30 "$out/check.log" >&2
    echo setup >"$out/error"
  fi
  say "$name: $(wc -l <"$out/pass") passed, $(wc -l <"$out/bad") failed, $(wc -l <"$out/notrun") not run ($((SECONDS - t0))s)"
  # leave no mount behind
  local m
  for m in "$d/mnt-test" "$d/mnt-scratch" "$d/base-test/ovl-mnt" "$d/base-scratch/ovl-mnt" \
           "$d/base-test" "$d/base-scratch"; do
    while mountpoint -q "$m"; do umount "$m" 2>/dev/null || umount -l "$m"; done
  done
  losetup -d "$test_loop" "$scratch_loop" 2>/dev/null || true
}

if [[ " $XFS_TARGETS " == *" rootless "* ]]; then
  # a 0666 /dev/fuse and user_allow_other, in this namespace only
  [ -u "$(command -v fusermount3)" ] || die "fusermount3 is not setuid"
  mknod "$tmp/fuse" c 10 229; chmod 666 "$tmp/fuse"
  mount --bind "$tmp/fuse" /dev/fuse
  { cat /etc/fuse.conf 2>/dev/null; echo user_allow_other; } >"$tmp/fuse.conf"
  mount --bind "$tmp/fuse.conf" /etc/fuse.conf
fi
pids=()
for t in $XFS_TARGETS; do
  case "$t" in
    unionfs|rootless|overlay|fuse-overlayfs) ;;
    *) die "unknown target $t (unionfs rootless overlay)" ;;
  esac
  if [ "$XFS_PARALLEL" = 1 ]; then run_target "$t" & pids+=($!); else run_target "$t"; fi
done
for p in "${pids[@]}"; do wait "$p" || true; done

# The expected failures: "TEST [TARGET...] -- reason" (no target: unionfs and rootless).
expected_for() {  # expected_for TARGET: the tests expected to fail there
  sed -e 's/#.*//' "$XFS_REPO/tests/xfstests-expected.txt" | awk -v t="$1" '
    NF == 0 { next }
    { n = 0; for (i = 2; i <= NF && $i != "--"; i++) { if ($i == t) n = -1; else if (n == 0) n = 1 } }
    n <= 0 { print $1 }' | sort -u
}

echo
echo "=== xfstests ($([ "$XFS_CI" = 1 ] && echo "CI subset" || echo "${XFS_TESTS:+stated list}${XFS_GROUP:+-g generic/$XFS_GROUP}"), ext4 base) ==="
printf '%-10s %7s %7s %8s %8s\n' target passed failed "not run" seconds
for t in $XFS_TARGETS; do
  o="$results/$t"
  printf '%-10s %7s %7s %8s %8s\n' "$t" "$(wc -l <"$o/pass")" "$(wc -l <"$o/bad")" \
    "$(wc -l <"$o/notrun")" "$(cat "$o/seconds")"
done
for t in $XFS_TARGETS; do
  b="$results/$t/umount-busy.log"
  [ -s "$b" ] || continue
  echo "$t: umount found the mount busy $(grep -c '^==' "$b") time(s), $(grep -c 'on a retry' "$b") unmounted on a retry (holders logged in $b)"
done
unexpected=() total_pass=0 total_fail=0
for t in $XFS_TARGETS; do
  o="$results/$t"
  case "$t" in overlay|fuse-overlayfs) continue ;; esac
  if [ -d "$results/overlay" ]; then
    regress="$(comm -12 "$results/overlay/pass" "$o/bad" | tr '\n' ' ')"
    echo "pass on overlay, fail on $t: ${regress:-none}"
  fi
  total_pass=$((total_pass + $(wc -l <"$o/pass")))
  total_fail=$((total_fail + $(wc -l <"$o/bad")))
  while read -r f; do
    [ -n "$f" ] || continue
    if expected_for "$t" | grep -qx "$f"; then
      why="$(grep "^$f\b" "$XFS_REPO/tests/xfstests-expected.txt" | head -1)"
      why="${why#* -- }"
      echo "  $t: $f failed (expected: ${why:0:150}...)"
    else
      unexpected+=("$t:$f")
      echo "  $t: $f FAILED (not expected); its diff:"
      head -20 "$o/results/$f.out.bad" 2>/dev/null | sed 's/^/      /' || true
    fi
  done <"$o/bad"
  if [ -e "$o/error" ]; then unexpected+=("$t:setup"); total_fail=$((total_fail + 1)); fi
done
[ "${KEEP:-0}" = 1 ] || echo "(KEEP=1 keeps the results: .out.bad, .full, daemon logs)"
[ ${#unexpected[@]} -eq 0 ] || echo "unexpected failures: ${unexpected[*]}"
echo "xfstests: $total_pass passed, $total_fail failed"
[ ${#unexpected[@]} -eq 0 ] && exit 0
exit 1
}
