#!/usr/bin/env bash
# Data-integrity and namespace stress on unionfs with xfstests' fsx and
# fsstress (built from ../shared/suites/xfstests-63a2972.tar.gz by
# scripts/xfstests.sh --build-only, cached):
#
#   scripts/stress.sh           long mode (>= 1M fsx operations in all)
#   scripts/stress.sh --short   CI mode (about 4 minutes)
#
# 1. fsx, root (the daemon may serve upper files by FUSE passthrough), and
#    rootless (daemon and fsx as uid 1000, mounted through the setuid
#    fusermount3): every fsx file starts in a lower (1 MiB of random
#    bytes); fsx's open for writing copies it up (unionfs copies up at
#    open, as overlayfs), fsx -k keeps the bytes and checks every read
#    against them, and a file of its own checks that a copy is exact;
#    with mmap and without (-R -W), two
#    fsx at once on two files; then the two names of one hard-linked lower
#    file, one fsx after the other (two fsx on one inode at once would see
#    each other's writes, which fsx reports as corruption by design), with
#    the names checked to stay one inode with the same bytes. Then unmount,
#    remount, and the bytes must be what they were.
# 2. fsstress -p 4 on a merged tree: the lowers are trees fsstress itself
#    made (so its names collide with lower names: creat truncates lower
#    files, mkdir meets lower dirs), plus a shell loop renaming, appending
#    to and deleting lower objects beside it; the daemon must stay alive;
#    then unmount, remount, and `find`, `stat` and a read of every file
#    must succeed, and kernel overlayfs over the same layers must show the
#    same tree (names, types, sizes, contents).
#
# Prints each check as PASS/FAIL and ends with `stress: N passed, N failed`;
# exits non-zero on any failure. Needs root and /dev/fuse; under CI=true a
# missing piece fails instead of skipping. KEEP=1 keeps the temp dir.
set -euo pipefail
# The braces make bash read the whole script before running it, and every
# path ends in an exit inside them, so editing this file during a run (they
# take minutes) cannot break that run.
{
cd "$(dirname "$0")/.."
repo="$(pwd)"
short=0
case "${1:-}" in
  --short) short=1 ;;
  "") ;;
  -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
  --inner) ;;
  *) echo "stress: unknown argument $1" >&2; exit 2 ;;
esac
say() { echo "[stress] $*"; }
die() { echo "stress: $*" >&2; exit 2; }
USER_ID=1000

if [ "${1:-}" != --inner ]; then
  if [ "$(id -u)" != 0 ] || [ ! -e /dev/fuse ]; then
    [ "${CI:-}" = true ] && die "needs root and /dev/fuse (CI=true: failing, not skipping)"
    echo "stress: SKIPPED: needs root and /dev/fuse" >&2; exit 0
  fi
  XFS="$(bash scripts/xfstests.sh --build-only)"
  say "cargo build --release"
  nice cargo build --release --quiet
  export XFS UNIONFS_BIN="$repo/target/release/unionfs" STRESS_SHORT="$short"
  tmp="$(mktemp -d /var/tmp/unionfs-stress.XXXXXX)"
  chmod 755 "$tmp"
  export STRESS_TMP="$tmp"
  inner_pid=""
  cleanup() {
    local rc=$? c p
    if [ -n "$inner_pid" ] && kill -0 "$inner_pid" 2>/dev/null; then
      kill -TERM "$inner_pid" 2>/dev/null || true; wait "$inner_pid" 2>/dev/null || true
    fi
    # daemons and workers we started name our temp dir on their command line
    for c in /proc/[0-9]*/cmdline; do
      p="${c#/proc/}"; p="${p%/cmdline}"
      [ "$p" != $$ ] || continue
      tr '\0' '\n' 2>/dev/null <"$c" | grep -q -F -- "$tmp" && kill -KILL "$p" 2>/dev/null
    done
    if [ "${KEEP:-0}" = 1 ]; then say "kept $tmp"; else rm -rf --one-file-system "$tmp" || true; fi
    exit "$rc"
  }
  trap cleanup EXIT
  trap 'exit 130' INT TERM
  # everything in a private mount namespace: the mounts, and a 0666
  # /dev/fuse for the unprivileged user, vanish with it
  unshare --mount --propagation private -- bash "$0" --inner &
  inner_pid=$!
  wait "$inner_pid"
  exit
fi

########## inside the private mount namespace ##########
tmp="$STRESS_TMP"
fsx="$XFS/ltp/fsx" fsstress="$XFS/ltp/fsstress"
bin="$UNIONFS_BIN"
pass=0 fail=0
ok() { say "PASS $*"; pass=$((pass + 1)); }
bad() { say "FAIL $*"; fail=$((fail + 1)); }
check() {  # check NAME CMD...: runs CMD, PASS/FAIL by its status
  local name="$1"; shift
  if "$@"; then ok "$name"; else bad "$name"; fi
}

# (each can be set in the environment)
if [ "$STRESS_SHORT" = 1 ]; then
  d_fsx=20000 d_hl=10000 d_fss=2000 d_lfss=500
else
  # per identity 4 fsx runs of FSX_OPS and 4 of FSX_HL_OPS: 2 x 900k in all
  d_fsx=150000 d_hl=75000 d_fss=20000 d_lfss=3000
fi
FSX_OPS="${FSX_OPS:-$d_fsx}" FSX_HL_OPS="${FSX_HL_OPS:-$d_hl}"
FSSTRESS_OPS="${FSSTRESS_OPS:-$d_fss}" LOWER_FSSTRESS_OPS="${LOWER_FSSTRESS_OPS:-$d_lfss}"
fsx_total=0

mknod "$tmp/fuse" c 10 229; chmod 666 "$tmp/fuse"
mount --bind "$tmp/fuse" /dev/fuse

# as_id ID CMD...: runs CMD as ID (root: as is).
as_id() {
  local id="$1"; shift
  if [ "$id" = 0 ]; then "$@"; else setpriv --reuid="$id" --regid="$id" --clear-groups -- "$@"; fi
}

# daemon_pid MNT: the pid of the unionfs daemon serving MNT.
daemon_pid() {
  local c p
  for c in /proc/[0-9]*/cmdline; do
    p="${c#/proc/}"; p="${p%/cmdline}"
    [ "$(readlink "/proc/$p/exe" 2>/dev/null)" = "$bin" ] || continue
    tr '\0' '\n' 2>/dev/null <"$c" | grep -qx -F -- "$1" && { echo "$p"; return 0; }
  done
  return 1
}

# mount_union DIR ID: DIR/{lower1,lower2,upper,work} at DIR/mnt, daemon as ID.
mount_union() {
  local d="$1" id="$2"
  as_id "$id" "$bin" mount -l "$d/lower1:$d/lower2" -u "$d/upper" -w "$d/work" \
    --log-file "$d/daemon.log" "$d/mnt"
}
umount_union() { as_id "$2" "$bin" umount "$1/mnt"; }

# make_layers DIR ID: two lowers; the fsx files in lower2 (1 MiB of random
# bytes each, hl1 and hl2 one inode), a merged dir fsx/ in both.
make_layers() {
  local d="$1" id="$2"
  mkdir -p "$d/lower1/fsx" "$d/lower2/fsx" "$d/upper" "$d/work" "$d/mnt" "$d/logs"
  local f
  for f in mmap nommap mmap2 nommap2 hl1 probe; do
    # byte 1 = byte 0: fsx probes copy_file_range by copying byte 0 over
    # byte 1 of the file, unrecorded (harmless on the empty file it
    # normally starts from; -k keeps ours)
    { printf 'xx'; head -c 1048574 /dev/urandom; } >"$d/lower2/fsx/$f"
  done
  ln "$d/lower2/fsx/hl1" "$d/lower2/fsx/hl2"
  echo lower1 >"$d/lower1/fsx/other"
  (cd "$d" && find lower1 lower2 -type f -exec md5sum {} + | sort) >"$d/lower-sums"
  chown -R "$id:$id" "$d"
  chmod 755 "$d"
}

# run_fsx DIR ID NAME OPS FLAGS...: one fsx run on DIR/mnt/fsx/NAME, as ID.
run_fsx() {
  local d="$1" id="$2" name="$3" ops="$4"; shift 4
  local log="$d/logs/fsx-$name.log"
  if as_id "$id" "$fsx" -q -k -N "$ops" -S "$RANDOM" -P "$d/logs" "$@" "$d/mnt/fsx/$name" >"$log" 2>&1; then
    return 0
  fi
  echo "  fsx $name $* failed; the end of its log ($log):"; tail -15 "$log" | sed 's/^/    /'
  return 1
}

# fsx_suite ID LABEL: the fsx checks for one identity.
fsx_suite() {
  local id="$1" label="$2" d="$tmp/fsx-$2" pid sums
  make_layers "$d" "$id"
  mount_union "$d" "$id" || { bad "$label: mount"; return; }
  pid="$(daemon_pid "$d/mnt")" || { bad "$label: daemon pid"; return; }
  say "$label: fsx on lower files (daemon $pid), $FSX_OPS ops per run"
  # unionfs copies a file up when it is opened for writing (as overlayfs),
  # so fsx's open copies each file up and fsx then checks every byte it
  # reads against what it read first, from the copy; that the copy itself
  # is exact is checked here, on a file of its own: an open for writing,
  # then the bytes against the lower's
  copy_exact() {
    as_id "$id" sh -c 'exec 3<>"$1/mnt/fsx/probe"; exec 3>&-; cmp "$1/mnt/fsx/probe" "$1/lower2/fsx/probe"' _ "$d" &&
      [ -f "$d/upper/fsx/probe" ]
  }
  check "$label: copy-up on open for writing is exact" copy_exact
  # two at once (mmap and not), then two more
  local r1=0 r2=0
  run_fsx "$d" "$id" mmap "$FSX_OPS" & local p1=$!
  run_fsx "$d" "$id" nommap "$FSX_OPS" -R -W & local p2=$!
  wait "$p1" || r1=$?; wait "$p2" || r2=$?
  [ $r1 = 0 ] && ok "$label: fsx mmap on a lower file" || bad "$label: fsx mmap on a lower file"
  [ $r2 = 0 ] && ok "$label: fsx -R -W on a lower file" || bad "$label: fsx -R -W on a lower file"
  # -c drops the page cache at each close: root only
  if [ "$id" = 0 ]; then
    check "$label: fsx mmap, closing, dropping caches, reopening (-c 50)" run_fsx "$d" "$id" mmap2 "$FSX_OPS" -c 50
  else
    check "$label: fsx mmap, second file" run_fsx "$d" "$id" mmap2 "$FSX_OPS"
  fi
  check "$label: fsx -R -W, O_SYNC-like flushes (-y)" run_fsx "$d" "$id" nommap2 "$FSX_OPS" -R -W -y
  fsx_total=$((fsx_total + 4 * FSX_OPS))
  # the two names of one lower inode, one after the other
  # (as ID: a rootless mount has no allow_other, root cannot look in)
  hl_same() {
    as_id "$id" sh -c 'a="$1/hl1" b="$1/hl2"
      [ "$(stat -c %i:%h "$a")" = "$(stat -c %i:%h "$b")" ] && [ "$(stat -c %h "$a")" = 2 ] &&
        cmp -s "$a" "$b" && exit 0
      echo "  hl1 $(stat -c "ino %i nlink %h size %s" "$a"), hl2 $(stat -c "ino %i nlink %h size %s" "$b")"
      exit 1' _ "$d/mnt/fsx"
  }
  sums_of() { as_id "$id" sh -c 'cd "$1" && md5sum mmap nommap mmap2 nommap2 hl1 hl2' _ "$d/mnt/fsx"; }
  check "$label: fsx on hard link name 1 (mmap)" run_fsx "$d" "$id" hl1 "$FSX_HL_OPS"
  check "$label: after it, both names one inode, same bytes" hl_same
  check "$label: fsx on hard link name 2 (-R -W)" run_fsx "$d" "$id" hl2 "$FSX_HL_OPS" -R -W
  check "$label: fsx on hard link name 1 again (-R -W)" run_fsx "$d" "$id" hl1 "$FSX_HL_OPS" -R -W
  check "$label: fsx on hard link name 2 again (mmap)" run_fsx "$d" "$id" hl2 "$FSX_HL_OPS"
  check "$label: both names one inode, same bytes" hl_same
  fsx_total=$((fsx_total + 4 * FSX_HL_OPS))
  check "$label: daemon alive after fsx" kill -0 "$pid"
  sums="$(sums_of)"
  umount_union "$d" "$id" || bad "$label: unmount"
  mount_union "$d" "$id" || { bad "$label: remount"; return; }
  same_after_remount() { [ "$(sums_of)" = "$sums" ] && hl_same; }
  check "$label: the bytes after remount" same_after_remount
  lowers_untouched() { [ "$(cat "$d/lower-sums")" = "$(cd "$d" && find lower1 lower2 -type f -exec md5sum {} + | sort)" ]; }
  umount_union "$d" "$id" || bad "$label: unmount"
  check "$label: lowers unchanged" lowers_untouched
}

say "fsx: $([ "$STRESS_SHORT" = 1 ] && echo short || echo long) mode"
fsx_suite 0 root
fsx_suite "$USER_ID" rootless

# fsstress on a merged tree.
stress_suite() {
  local d="$tmp/fsstress" pid
  mkdir -p "$d/lower1" "$d/lower2" "$d/upper" "$d/work" "$d/mnt" "$d/logs" "$d/ovl" "$d/ovl-work"
  # the lowers: trees fsstress makes (-p 4: dirs p0..p3), the top one
  # over the bottom one so that the dirs merge
  "$fsstress" -d "$d/lower2/t" -p 4 -n "$LOWER_FSSTRESS_OPS" -s 1 >"$d/logs/lower2.log" 2>&1
  "$fsstress" -d "$d/lower1/t" -p 4 -n "$LOWER_FSSTRESS_OPS" -s 2 >"$d/logs/lower1.log" 2>&1
  local lower_sums
  lower_sums="$(cd "$d" && find lower1 lower2 -type f -exec md5sum {} + | sort)"
  mount_union "$d" 0 || { bad "fsstress: mount"; return; }
  pid="$(daemon_pid "$d/mnt")" || { bad "fsstress: daemon pid"; return; }
  say "fsstress: -p 4 -n $FSSTRESS_OPS on a merged tree (daemon $pid)"
  # beside it, a loop over lower objects: append, rename, chmod, delete
  (
    cd "$d/mnt/t"
    for f in $(find . -type f | head -300); do
      [ -e "$f" ] || continue
      case $((RANDOM % 4)) in
        0) echo appended >>"$f" ;;
        1) mv "$f" "$f.moved" ;;
        2) chmod 600 "$f" ;;
        3) rm -f "$f" ;;
      esac 2>/dev/null || true
    done
    for dd in $(find . -mindepth 2 -type d | head -40); do
      [ -d "$dd" ] && mv "$dd" "$dd.r" 2>/dev/null || true
    done
  ) >"$d/logs/churn.log" 2>&1 &
  local churn=$!
  local rc=0
  "$fsstress" -d "$d/mnt/t" -p 4 -n "$FSSTRESS_OPS" -s 3 >"$d/logs/fsstress.log" 2>&1 || rc=$?
  wait "$churn" || true
  [ $rc = 0 ] && ok "fsstress -p 4 -n $FSSTRESS_OPS" || { bad "fsstress (exit $rc)"; tail -5 "$d/logs/fsstress.log"; }
  check "fsstress: daemon alive" kill -0 "$pid"
  check "fsstress: mount answers" stat "$d/mnt/t" >/dev/null
  umount_union "$d" 0 || bad "fsstress: unmount"
  mount_union "$d" 0 || { bad "fsstress: remount"; return; }
  pid="$(daemon_pid "$d/mnt")"
  readable() {
    local errs
    errs="$( { find "$d/mnt" >/dev/null;
               find "$d/mnt" -print0 | xargs -0 stat >/dev/null;
               find "$d/mnt" -type f -print0 | xargs -0 cat >/dev/null; } 2>&1 )"
    [ -z "$errs" ] || { echo "$errs" | head -10; return 1; }
  }
  check "fsstress: after remount, find/stat/read everything" readable
  # kernel overlayfs over the same layers (the upper as a read-only lower)
  # Objects with several names (in either view) are left out: unionfs
  # keeps a copied-up hard link in WORK/index (as overlayfs index=on),
  # which a mount of the layers without that index cannot see, and counts
  # the names the merged view has. Names kernel overlayfs lists but cannot
  # stat (a lower whiteout in a dir no other layer has: overlayfs does not
  # filter those; unionfs hides them) drop out of find.
  listing() {  # listing DIR: path, type, size, links, md5 of each object
    (cd "$1" && find . -mindepth 1 -printf '%p\t%y\t%s\t%n\t' -exec sh -c \
      '[ -f "$1" ] && [ ! -L "$1" ] && md5sum <"$1" | cut -c1-32 || echo -' _ {} \; 2>>"$d/logs/find.log")
  }
  same_as_overlay() {
    mount -t overlay overlay -o "ro,lowerdir=$d/upper:$d/lower1:$d/lower2,redirect_dir=follow" "$d/ovl" ||
      { echo "  kernel overlayfs mount failed"; return 1; }
    listing "$d/mnt" >"$d/logs/list-unionfs"
    listing "$d/ovl" >"$d/logs/list-overlay"
    umount "$d/ovl"
    awk -F'\t' 'NR == FNR { u[$1] = $0; next } { o[$1] = $0 }
      END {
        for (p in u) { split(u[p], a, "\t"); if (a[4] > 1) skip[p] = 1 }
        for (p in o) { split(o[p], a, "\t"); if (a[4] > 1) skip[p] = 1 }
        for (p in u) if (!(p in skip)) {
          if (!(p in o)) print "only in unionfs: " u[p]
          else { split(u[p], a, "\t"); split(o[p], b, "\t")
                 if (a[2] != b[2] || a[3] != b[3] || a[5] != b[5]) print "differs: " u[p] " | overlayfs: " o[p] } }
        for (p in o) if (!(p in skip) && !(p in u)) print "only in overlayfs: " o[p]
      }' "$d/logs/list-unionfs" "$d/logs/list-overlay" | sort >"$d/logs/vs-overlay.diff"
    [ -s "$d/logs/vs-overlay.diff" ] || return 0
    echo "  differences (path type size links md5):"; head -20 "$d/logs/vs-overlay.diff" | cut -c1-300
    return 1
  }
  check "fsstress: kernel overlayfs over the same layers shows the same tree" same_as_overlay
  check "fsstress: daemon alive after the checks" kill -0 "$pid"
  umount_union "$d" 0 || bad "fsstress: unmount"
  lowers_same() { [ "$(cd "$d" && find lower1 lower2 -type f -exec md5sum {} + | sort)" = "$lower_sums" ]; }
  check "fsstress: lowers unchanged" lowers_same
}
stress_suite

umount /dev/fuse
say "fsx operations in all: $fsx_total"
echo "stress: $pass passed, $fail failed"
[ "$fail" = 0 ] && exit 0
exit 1
}
