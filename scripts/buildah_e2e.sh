#!/usr/bin/env bash
# End to end with buildah: unionfs as containers/storage's mount_program
# (`--storage-driver overlay --storage-opt overlay.mount_program=...`) on a
# private storage root, rootful and then rootless (an unprivileged user
# this script creates, with subordinate ids for newuidmap/newgidmap):
#   a base image made with `buildah from scratch` + `buildah copy` +
#   `buildah commit`, then `buildah bud` of a Dockerfile with RUN (a new
#   file), COPY (a file of the context), a deletion (`RUN rm` of a
#   base-image file), a base-image directory replaced by a new one
#   (opaque) and `RUN chown -R` of a base-image directory; the
#   built image run with podman on the same storage (the file, the copy,
#   the deletion, the owners), the built layers' content as buildah
#   pushes them to a docker-archive (the deletion is a `.wh.`); the mounts
#   done by unionfs (the mount program is a wrapper that logs each call and
#   execs unionfs; a RUN step records its root's type, fuse.unionfs);
#   and a cleanup that leaves no mount and no unionfs daemon behind.
# No registry: the base is a busybox-static tree. Every storage root is
# private, below one temp dir removed afterwards. Each step prints one
# PASS/FAIL line; the last line is `N passed, N failed` and the exit status
# is non-zero on any failure.
#
# Quirks as in podman_e2e.sh: runc (not crun), explicit --ulimit, a short
# runroot, --network none; for the rootless run /dev/fuse is made 0666 while
# the script runs (its mode is restored on exit).
#
# Needs root. Installs buildah, podman, runc, uidmap and busybox-static when
# missing.
#
#   scripts/buildah_e2e.sh                 # builds the release binary first
#   UNIONFS_BIN=path scripts/buildah_e2e.sh
#   MODES=rootful scripts/buildah_e2e.sh   # or MODES=rootless
#   KEEP=1 scripts/buildah_e2e.sh          # keep the storage to look into
#   E2E_USER=name                          # the unprivileged user (default unionfs-e2e)
set -uo pipefail
export LC_ALL=C

cd "$(dirname "$0")/.." || exit 1
START=$(date +%s)
E2E=buildah_e2e
CLIENT=buildah
# shellcheck source=scripts/e2e_lib.sh
. scripts/e2e_lib.sh
[ "$(id -u)" = 0 ] || cannot_run "needs root"
need buildah buildah
need podman podman
need runc runc
need newuidmap uidmap
need newgidmap uidmap
need fusermount3 fuse3
need setpriv util-linux
need useradd passwd
need usermod passwd
need pgrep procps
need tar tar
[ -x /bin/busybox ] || missing+=(busybox-static)
install_missing
buildah version >/dev/null 2>&1 || cannot_run "buildah version: $(buildah version 2>&1 | tail -n 1)"

build_unionfs
MODES=${MODES:-rootful rootless}
RUSER=${E2E_USER:-unionfs-e2e}

# Short: runroot sockets live below it.
T=$(mktemp -d /tmp/ube.XXXXXX)
chmod 755 "$T"
cp "$UNIONFS_BIN" "$T/unionfs"
chmod 755 "$T/unionfs"

FUSE_MODE=$(stat -c %a /dev/fuse)
CREATED_USER=0
cleanup_mode() { # cleanup_mode MODE: best effort
  local d=$T/$1
  [ -x "$d/bh" ] || return 0
  "$d/bh" rm -a >/dev/null 2>&1
  "$d/pm" rm -a -f >/dev/null 2>&1
  "$d/pm" system reset -f >/dev/null 2>&1
  return 0
}
stop_user_processes() { # rootless podman's pause process, a daemon left by a failure
  if [ "$CREATED_USER" = 1 ] && id -u "$RUSER" >/dev/null 2>&1; then
    local p
    for p in $(pgrep -u "$RUSER"); do kill "$p" 2>/dev/null; done
    for _ in 1 2 3 4 5 6 7 8 9 10; do pgrep -u "$RUSER" >/dev/null || return 0; sleep 0.2; done
    for p in $(pgrep -u "$RUSER"); do kill -9 "$p" 2>/dev/null; done
  fi
  return 0
}
cleanup() {
  set +e
  if [ "${KEEP:-0}" = 1 ]; then
    stop_user_processes
    chmod "$FUSE_MODE" /dev/fuse
    echo "buildah_e2e: kept $T (wrappers: $T/MODE/bh, $T/MODE/pm)"
    return
  fi
  for m in $MODES; do cleanup_mode "$m"; done
  stop_user_processes
  for p in $(pgrep -f "^$T/unionfs "); do kill "$p" 2>/dev/null; done
  awk '{print $2}' /proc/mounts | grep "^$T/" | sort -r |
    while read -r m; do umount "$m" 2>/dev/null || umount -l "$m"; done
  rm -rf "$T"
  chmod "$FUSE_MODE" /dev/fuse
  if [ "$CREATED_USER" = 1 ]; then userdel "$RUSER" 2>/dev/null; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The base image's files: busybox and a few files owned by root.
mkdir -p "$T/rootfs/bin" "$T/rootfs/etc" "$T/rootfs/data/sub" "$T/rootfs/tmp" "$T/rootfs/rep"
chmod 1777 "$T/rootfs/tmp"
cp /bin/busybox "$T/rootfs/bin/"
for a in sh ls cat echo mkdir rm mv stat id chown grep touch sed cut; do ln -s busybox "$T/rootfs/bin/$a"; done
echo base >"$T/rootfs/etc/base"
echo gone >"$T/rootfs/etc/gone"
echo data >"$T/rootfs/data/file"
echo deep >"$T/rootfs/data/sub/deep"
echo r >"$T/rootfs/rep/r"
chown -R 0:0 "$T/rootfs"
chmod -R a+rX "$T/rootfs"

# setup_mode MODE: $T/MODE/bh runs buildah, $T/MODE/pm podman, on one
# private storage with $T/MODE/mp (logs, then execs unionfs) as the mount
# program.
setup_mode() {
  local mode=$1 d=$T/$1 prefix=''
  mkdir -p "$d"
  cat >"$d/mp" <<EOF
#!/bin/sh
printf '%s\n' "\$*" >>"$d/mp.log"
exec "$T/unionfs" "\$@"
EOF
  chmod 755 "$d/mp"
  : >"$d/mp.log"
  mkdir -p "$d/ctx"
  echo ctx >"$d/ctx/ctx.txt"
  cat >"$d/ctx/Dockerfile" <<'EOF'
FROM localhost/e2e:base
RUN echo run >/etc/run && grep " / / " /proc/self/mountinfo | sed "s/.* - //" | cut -d" " -f1 >/etc/run-root-fs
COPY ctx.txt /etc/ctx.txt
RUN rm /etc/gone
RUN rm -r /rep && mkdir /rep && echo n >/rep/n
RUN chown -R 1000:1000 /data
EOF
  if [ "$mode" = rootless ]; then
    local uid gid
    uid=$(id -u "$RUSER") gid=$(id -g "$RUSER")
    mkdir -p "$d/home" "$d/xdg"
    chmod 700 "$d/xdg"
    chown -R "$uid:$gid" "$d"
    prefix="if [ -z \"\${UBE_IN:-}\" ]; then cd / && exec setpriv --reuid=$uid --regid=$gid --init-groups \
env -i UBE_IN=1 HOME=$d/home USER=$RUSER LOGNAME=$RUSER XDG_RUNTIME_DIR=$d/xdg \
XDG_CONFIG_HOME=$d/home/.config PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
\"\$0\" \"\$@\"; fi"
  fi
  cat >"$d/bh" <<EOF
#!/bin/sh
$prefix
exec buildah --root $d/root --runroot $d/run --storage-driver overlay \
  --storage-opt overlay.mount_program=$d/mp "\$@"
EOF
  cat >"$d/pm" <<EOF
#!/bin/sh
$prefix
exec podman --root $d/root --runroot $d/run --storage-driver overlay \
  --storage-opt overlay.mount_program=$d/mp \
  --cgroup-manager cgroupfs --events-backend file --runtime runc "\$@"
EOF
  chmod 755 "$d/bh" "$d/pm"
}

# try NAME CMD...: runs CMD; on failure a FAIL line with its error (the
# last `Error:`/`error` line), and 1. Its output is in $out.
try() {
  local name=$1 rc
  shift
  out=$("$@" 2>"$T/err")
  rc=$?
  [ $rc = 0 ] && return 0
  local e
  e=$(grep -v '^WARN' "$T/err" | grep -i error | tail -n 1)
  [ -n "$e" ] || e=$(tail -n 2 "$T/err" | one_line)
  [ ${#e} -gt 500 ] && e="${e:0:150} ... ${e: -300}"
  fail "$name" "${e:-$(tail -n 1 <<<"$out")} (exit $rc)"
  return 1
}

RUNOPTS=(--pull never --network none --ulimit nofile=1024:1024 --ulimit nproc=1024:1024)

run_mode() {
  MODE=$1
  local d=$T/$1 bh=$T/$1/bh pm=$T/$1/pm
  echo "== $MODE"
  setup_mode "$MODE"

  # the base image: from scratch, copy the tree, commit
  if try "base image: buildah from scratch, copy, commit" sh -c \
    "c=\$($bh from scratch) && $bh copy --chown 0:0 \$c $T/rootfs / >/dev/null &&
     $bh config --cmd sh \$c && $bh commit -q \$c localhost/e2e:base >/dev/null && $bh rm \$c >/dev/null"; then
    pass "base image: buildah from scratch, copy, commit"
  else
    return
  fi

  # bud: RUN, COPY, RUN rm, RUN chown -R
  local n0
  n0=$(grep -c 'lowerdir=' "$d/mp.log")
  if try "buildah bud: RUN, COPY, RUN rm, RUN chown -R" "$bh" bud -q --pull=never --network=none \
    --runtime runc --isolation oci --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 \
    -t localhost/e2e:bud -f "$d/ctx/Dockerfile" "$d/ctx"; then
    pass "buildah bud: RUN, COPY, RUN rm, RUN chown -R"
  else
    return
  fi
  # bud mounts its working container (where every RUN and the COPY act)
  # through the mount program: the wrapper that logs, then execs unionfs.
  local n1
  n1=$(grep -c 'lowerdir=' "$d/mp.log")
  check "buildah bud mounted through unionfs (the mount program's log)" "at least 1 mount" \
    "$([ $((n1 - n0)) -ge 1 ] && echo "at least 1" || echo "$((n1 - n0))") mount"

  # run the built image with podman on the same storage
  if try "podman run the built image" "$pm" run --rm "${RUNOPTS[@]}" localhost/e2e:bud sh -c \
    'cat /etc/run /etc/ctx.txt /etc/base; cat /etc/run-root-fs; ls /etc/gone 2>&1 | grep -c "No such"; stat -c "%u:%g" /data /data/file /data/sub /data/sub/deep /etc/ctx.txt /etc/base; grep " / / " /proc/self/mountinfo | grep -c fuse; ls /rep'; then
    check "podman run the built image: RUN file (its root was fuse.unionfs), COPY file, deletion, owners, FUSE root, replaced dir" \
      "run ctx base fuse.unionfs 1 1000:1000 1000:1000 1000:1000 1000:1000 0:0 0:0 1 n" "$(one_line <<<"$out")"
  fi

  # the built image as layers: the deletions are .wh. in them. With a
  # mount_program containers/storage makes a layer by its naive diff (the
  # mounted layer against its parent), so the replaced /rep is a whiteout
  # of its old file, not `.wh..wh..opq` (the same with fuse-overlayfs).
  local ar=$d/bud.tar
  if try "buildah push to a docker-archive" "$bh" push -q localhost/e2e:bud "docker-archive:$ar:localhost/e2e:bud"; then
    local wh='' m
    for m in $(tar -tf "$ar" | grep '\.tar$'); do
      wh+=$(tar -xOf "$ar" "$m" | tar -t 2>/dev/null | grep -E '(^|/)\.wh\.' | sed 's|^\./||')$'\n'
    done
    check "buildah push: the layers carry the whiteouts of the RUN rm and of the replaced dir's old file" "etc/.wh.gone rep/.wh.r" "$(grep . <<<"$wh" | sort | one_line)"
  fi

  # cleanup: nothing mounted, no daemon
  if [ "${KEEP:-0}" != 1 ]; then
    "$bh" rm -a >/dev/null 2>&1
    "$pm" rm -a -f >/dev/null 2>&1
    "$pm" rmi -a -f >/dev/null 2>&1
  fi
  local mounts daemons
  mounts=$(awk '{print $2" "$3}' /proc/mounts | grep "^$d/")
  if [ "$MODE" = rootless ]; then
    mounts+=$("$pm" unshare cat /proc/self/mounts 2>/dev/null | awk '{print $2" "$3}' | grep "^$d/")
  fi
  # (not counted: containers/storage binds its own overlay dir onto itself)
  mounts=$(grep -v -E "^$d/root/overlay [^f]" <<<"$mounts")
  daemons=$(pgrep -f "^$T/unionfs .*$d/" | wc -l)
  check "cleanup: no mount left below the storage root, no unionfs daemon" "mounts [], 0 daemons" \
    "mounts [$(one_line <<<"$mounts")], $daemons daemons"
}


for m in $MODES; do
  if [ "$m" = rootless ]; then
    rootless_prepare || { fail "prepare the unprivileged user" "useradd/usermod failed"; continue; }
  fi
  run_mode "$m"
done

MODE=end
if [ "${KEEP:-0}" != 1 ]; then
  for m in $MODES; do cleanup_mode "$m"; done
  stop_user_processes
  left=$(awk '{print $2" "$3}' /proc/mounts | grep "^$T/")
  daemons=$(pgrep -f "^$T/unionfs " | wc -l)
  check "after podman system reset: no mount below $T, no unionfs daemon" "mounts [], 0 daemons" \
    "mounts [$(one_line <<<"$left")], $daemons daemons"
fi
summary
