#!/usr/bin/env bash
# End to end with podman: unionfs as containers/storage's mount_program
# (`unionfs -o lowerdir=...,upperdir=...,workdir=...[,uidmapping=...] MNT`),
# podman's whole cycle, rootful and then rootless (an unprivileged user
# this script creates, with subordinate ids for newuidmap/newgidmap):
#   run, write, rm, diff, commit, run the committed image, save (the saved
#   layer carries `.wh.`), load a 2-layer image whose top layer (a lower of
#   the container) holds `.wh.NAME` and `.wh..wh..opq` (made with
#   `unionfs commit`), build with a RUN step, `podman mount`,
#   `podman image mount`, `--uidmap 0:100000:65536` (owners compared with
#   fuse-overlayfs as the mount program), `--userns=keep-id` (rootless),
#   and a cleanup that leaves no mount and no unionfs daemon behind.
# Images come from a tiny busybox image built here (no registry); every
# storage root is private, below one temp dir removed afterwards.
# Each step prints one PASS/FAIL line; the last line is `N passed, N failed`
# and the exit status is non-zero on any failure.
#
# Quirks of the machines this runs on: crun fails (runc is used), root may
# lack CAP_SYS_RESOURCE (explicit --ulimit), the runroot is kept short
# (socket path limits), --network=none. For the rootless run /dev/fuse is
# made 0666 while the script runs (its mode is restored on exit).
#
# Needs root. Installs podman, runc, uidmap, busybox-static and
# fuse-overlayfs when missing.
#
#   scripts/podman_e2e.sh                 # builds the release binary first
#   UNIONFS_BIN=path scripts/podman_e2e.sh
#   MODES=rootful scripts/podman_e2e.sh   # or MODES=rootless
#   KEEP=1 scripts/podman_e2e.sh          # keep the storage to look into
#   E2E_USER=name                         # the unprivileged user (default unionfs-e2e)
set -uo pipefail
export LC_ALL=C

cd "$(dirname "$0")/.." || exit 1
START=$(date +%s)
E2E=podman_e2e
CLIENT=podman
# shellcheck source=scripts/e2e_lib.sh
. scripts/e2e_lib.sh
[ "$(id -u)" = 0 ] || cannot_run "needs root"
need podman podman
need runc runc
need newuidmap uidmap
need newgidmap uidmap
need fuse-overlayfs fuse-overlayfs
need fusermount3 fuse3
need setpriv util-linux
need useradd passwd
need usermod passwd
need pgrep procps
need sha256sum coreutils
need tar tar
[ -x /bin/busybox ] || missing+=(busybox-static)
install_missing
podman version >/dev/null 2>&1 || cannot_run "podman version: $(podman version 2>&1 | tail -n 1)"

build_unionfs
MODES=${MODES:-rootful rootless}
RUSER=${E2E_USER:-unionfs-e2e}

# Short: runroot sockets live below it.
T=$(mktemp -d /tmp/upe.XXXXXX)
chmod 755 "$T"
cp "$UNIONFS_BIN" "$T/unionfs"
chmod 755 "$T/unionfs"

FUSE_MODE=$(stat -c %a /dev/fuse)
CREATED_USER=0
cleanup_mode() { # cleanup_mode MODE: best effort
  local d=$T/$1
  [ -x "$d/pm" ] || return 0
  "$d/pm" rm -a -f >/dev/null 2>&1
  "$d/pm" system reset -f >/dev/null 2>&1
  [ -x "$d/fo" ] && "$d/fo" system reset -f >/dev/null 2>&1
  return 0
}
stop_user_processes() { # rootless podman's pause process, a daemon left by a failure
  if id -u "$RUSER" >/dev/null 2>&1; then
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
    echo "podman_e2e: kept $T (podman wrappers: $T/MODE/pm, $T/MODE/fo; rootless" \
      "needs chmod 666 /dev/fuse); remove the user $RUSER with userdel when done"
    return
  fi
  for m in $MODES; do cleanup_mode "$m"; done
  stop_user_processes
  # Daemons of ours still running (their command line names $T).
  for p in $(pgrep -f "^$T/unionfs "); do kill "$p" 2>/dev/null; done
  # What is left mounted below $T, deepest first.
  awk '{print $2}' /proc/mounts | grep "^$T/" | sort -r |
    while read -r m; do umount "$m" 2>/dev/null || umount -l "$m"; done
  rm -rf "$T"
  chmod "$FUSE_MODE" /dev/fuse
  if [ "$CREATED_USER" = 1 ]; then userdel "$RUSER" 2>/dev/null; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The base image's files: busybox and a few files owned by root.
mkdir -p "$T/rootfs/bin" "$T/rootfs/etc" "$T/rootfs/data" "$T/rootfs/tmp" "$T/rootfs/opq"
chmod 1777 "$T/rootfs/tmp"
cp /bin/busybox "$T/rootfs/bin/"
for a in sh ls cat echo mkdir rm mv stat id sync grep touch; do ln -s busybox "$T/rootfs/bin/$a"; done
echo base >"$T/rootfs/etc/base"
echo gone >"$T/rootfs/etc/gone"
echo data >"$T/rootfs/data/file"
echo a >"$T/rootfs/opq/a"
echo b >"$T/rootfs/opq/b"
tar -C "$T/rootfs" --owner=0 --group=0 -cf "$T/base.tar" .

MODE=setup
if craft_archive "$T/unionfs" >"$T/craft.log" 2>&1; then
  members=$(tar -tf "$T/craft/l2.tar" | grep -E '(^|/)\.wh\.' | sed 's|^\./||' | sort | one_line)
  check "unionfs commit wrote the whiteout and the opaque marker" "etc/.wh.gone opq/.wh..wh..opq" "$members"
else
  fail "craft a 2-layer image with unionfs commit" "$(tail -n 3 "$T/craft.log" | one_line)"
fi
chmod -R a+rX "$T/rootfs" "$T/base.tar" "$T/ld.tar" 2>/dev/null

# setup_mode MODE: $T/MODE/pm runs podman on a private storage with unionfs
# as the mount program; $T/MODE/fo the same with fuse-overlayfs.
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
  if [ "$mode" = rootless ]; then
    local uid gid
    uid=$(id -u "$RUSER") gid=$(id -g "$RUSER")
    mkdir -p "$d/home" "$d/xdg"
    chmod 700 "$d/xdg"
    chown -R "$uid:$gid" "$d"
    # Outside: become the user with a clean environment. Inside
    # `podman unshare` (UPE_IN set): podman directly.
    prefix="if [ -z \"\${UPE_IN:-}\" ]; then cd / && exec setpriv --reuid=$uid --regid=$gid --init-groups \
env -i UPE_IN=1 HOME=$d/home USER=$RUSER LOGNAME=$RUSER XDG_RUNTIME_DIR=$d/xdg \
XDG_CONFIG_HOME=$d/home/.config PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
\"\$0\" \"\$@\"; fi"
  fi
  local prog name
  for name in pm fo; do
    if [ $name = pm ]; then prog=$d/mp; else prog=/usr/bin/fuse-overlayfs; fi
    cat >"$d/$name" <<EOF
#!/bin/sh
$prefix
exec podman --root $d/$name-root --runroot $d/$name-run --storage-driver overlay \
  --storage-opt overlay.mount_program=$prog \
  --cgroup-manager cgroupfs --events-backend file --runtime runc "\$@"
EOF
    chmod 755 "$d/$name"
  done
}

RUNOPTS=(--pull never --network none --ulimit nofile=1024:1024 --ulimit nproc=1024:1024)

# try NAME CMD...: runs CMD; on failure a FAIL line with its error (podman's
# last `Error:`), and 1. Its output is in $out.
try() {
  local name=$1 rc
  shift
  out=$("$@" 2>"$T/err")
  rc=$?
  [ $rc = 0 ] && return 0
  local e
  e=$(grep -v '^WARN' "$T/err" | awk '/Error: /{e=""} {e=e" "$0} END{print e}' | sed 's/^.*\(Error: \)/\1/')
  [ ${#e} -gt 500 ] && e="${e:0:150} ... ${e: -300}"
  fail "$name" "${e:-$(tail -n 1 <<<"$out")} (exit $rc)"
  return 1
}

run_mode() {
  MODE=$1
  local d=$T/$1 pm=$T/$1/pm
  echo "== $MODE"
  setup_mode "$MODE"

  # import: the base image
  if try "import the busybox image" sh -c "$pm import -q - localhost/e2e:1 <$T/base.tar"; then
    pass "import the busybox image"
  else
    return
  fi

  # run, write over a lower file
  if try "run" "$pm" run --rm "${RUNOPTS[@]}" localhost/e2e:1 sh -c \
    'cat /etc/base; echo hi >/data/file; cat /data/file; stat -c "%u:%g" /etc/base; grep " / / " /proc/self/mountinfo | grep -c fuse'; then
    check "run: image file read, write over a lower file, owner, FUSE root" \
      "base hi 0:0 1" "$(one_line <<<"$out")"
  fi
  if grep -q "lowerdir=" "$d/mp.log"; then pass "podman ran unionfs as the mount program"; else
    fail "podman ran unionfs as the mount program" "no call logged"; fi

  # write, rm, diff, commit
  if try "write and rm in a container" "$pm" run --name c2 "${RUNOPTS[@]}" localhost/e2e:1 sh -c \
    'rm /etc/gone; echo new >/etc/new; mkdir /made; echo m >/made/x; rm -r /opq'; then
    pass "write and rm in a container"
    try "diff" "$pm" diff c2 &&
      check "diff" "A /etc/new A /made A /made/x C /etc D /etc/gone D /opq" "$(sort <<<"$out" | one_line)"
    try "commit" "$pm" commit -q c2 localhost/e2e:2 && pass "commit"
    "$pm" rm c2 >/dev/null 2>&1
  fi
  if try "run the committed image" "$pm" run --rm "${RUNOPTS[@]}" localhost/e2e:2 sh -c \
    'ls /etc | grep -v -e hostname -e hosts -e mtab -e resolv; cat /etc/new /made/x /data/file; ls -d /opq 2>&1 | grep -c "No such"'; then
    check "run the committed image: deletions stay deleted, new files there" \
      "base new new m data 1" "$(one_line <<<"$out")"
  fi

  # save: the top layer carries the whiteouts
  local sv=$d/save.tar
  if try "save" "$pm" save -q -o "$sv" localhost/e2e:2; then
    pass "save"
    local wh='' m
    for m in $(tar -tf "$sv" | grep '\.tar$'); do
      wh+=$(tar -xOf "$sv" "$m" | tar -t 2>/dev/null | grep -E '(^|/)\.wh\.' | sed 's|^\./||')$'\n'
    done
    check "the saved layer carries .wh." ".wh.opq etc/.wh.gone" "$(grep . <<<"$wh" | sort | one_line)"
  fi

  # load a 2-layer image with .wh. and .wh..wh..opq
  if [ -s "$T/ld.tar" ] && try "load a 2-layer image" "$pm" load -q -i "$T/ld.tar"; then
    pass "load a 2-layer image"
    if try "run the loaded image" "$pm" run --rm "${RUNOPTS[@]}" localhost/e2e:ld sh -c \
      'ls /etc | grep -v -e hostname -e hosts -e mtab -e resolv; ls /opq; cat /opq/c'; then
      check "run the loaded image: .wh. hides, .wh..wh..opq hides the lower dir" "base c c" "$(one_line <<<"$out")"
    fi
  elif [ ! -s "$T/ld.tar" ]; then
    fail "load a 2-layer image" "the archive could not be made (see setup)"
  fi

  # build with a RUN step
  mkdir -p "$d/ctx"
  printf 'FROM localhost/e2e:2\nRUN rm /etc/base && echo built >/built && echo more >>/etc/new\n' >"$d/ctx/Containerfile"
  [ "$MODE" = rootless ] && chown -R "$RUSER" "$d/ctx"
  if try "build with a RUN step" "$pm" build -q --pull=never --network=none --runtime runc \
    --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 -t localhost/e2e:b -f "$d/ctx/Containerfile" "$d/ctx"; then
    pass "build with a RUN step"
    if try "run the built image" "$pm" run --rm "${RUNOPTS[@]}" localhost/e2e:b sh -c \
      'cat /built /etc/new; ls /etc/base 2>&1 | grep -c "No such"'; then
      check "run the built image" "built new more 1" "$(one_line <<<"$out")"
    fi
  fi

  # podman mount / podman image mount (rootless: inside podman unshare)
  local un=()
  [ "$MODE" = rootless ] && un=("$pm" unshare)
  if try "create a container to mount" "$pm" create --name cm "${RUNOPTS[@]}" localhost/e2e:2 cat /data/w; then
    if try "podman mount" "${un[@]}" sh -c "m=\$($pm mount cm) && cat \$m/etc/new \$m/made/x && ls \$m/etc/gone 2>&1 | grep -c 'No such' && echo w >\$m/data/w && $pm umount cm >/dev/null"; then
      check "podman mount: files read, a write, umount" "new m 1" "$(one_line <<<"$out")"
      try "podman mount: the write is in the container" "$pm" start -a cm &&
        check "podman mount: the write is in the container" w "$out"
    fi
    "$pm" rm -f cm >/dev/null 2>&1
  fi
  if try "podman image mount" "${un[@]}" sh -c "m=\$($pm image mount localhost/e2e:b) && cat \$m/built && ls \$m/etc/gone 2>&1 | grep -c 'No such' && $pm image umount localhost/e2e:b >/dev/null"; then
    check "podman image mount" "built 1" "$(one_line <<<"$out")"
  fi

  # --uidmap 0:100000:65536
  : >"$d/mp.log"
  local uidmap=(--uidmap 0:100000:65536 --gidmap 0:100000:65536)
  local script='stat -c "%u:%g" /etc/base /etc/new; echo x >/owned; stat -c "%u:%g" /owned; id -u'
  if try "--uidmap 0:100000:65536" "$pm" run --name c3 "${RUNOPTS[@]}" "${uidmap[@]}" localhost/e2e:2 sh -c "$script"; then
    local mine=$out
    if grep -Eq "uidmapping=:?0:100000:65536" "$d/mp.log" && grep -Eq "gidmapping=:?0:100000:65536" "$d/mp.log"; then
      pass "--uidmap: containers/storage passed uidmapping=/gidmapping= to unionfs"
    else
      fail "--uidmap: containers/storage passed uidmapping=/gidmapping= to unionfs" "$(one_line <"$d/mp.log")"
    fi
    check "--uidmap: a file the container's root makes, inside" "0:0 0" "$(sed -n '3,4p' <<<"$mine" | one_line)"
    local upper
    upper=$("$pm" inspect --format '{{.GraphDriver.Data.UpperDir}}' c3 2>&1)
    # (rootless: the upper as the user namespace of podman sees it)
    check "--uidmap: stored unshifted in the upper" 0:0 "$("${un[@]}" stat -c %u:%g "$upper/owned" 2>&1)"
    "$pm" rm c3 >/dev/null 2>&1
    if "$pm" save -q localhost/e2e:2 2>/dev/null | "$d/fo" load -q >/dev/null 2>"$T/err"; then
      if try "--uidmap: same owners as with fuse-overlayfs" "$d/fo" run --rm "${RUNOPTS[@]}" "${uidmap[@]}" localhost/e2e:2 sh -c "$script"; then
        check "--uidmap: same owners as with fuse-overlayfs" "$(one_line <<<"$out")" "$(one_line <<<"$mine")"
      fi
    else
      fail "--uidmap: same owners as with fuse-overlayfs" "fuse-overlayfs storage: $(tail -n 2 "$T/err" | one_line)"
    fi
  fi

  # --userns=keep-id (rootless only: podman refuses it as root)
  if [ "$MODE" = rootless ]; then
    local uid gid
    uid=$(id -u "$RUSER") gid=$(id -g "$RUSER")
    if try "--userns=keep-id" "$pm" run --rm "${RUNOPTS[@]}" --userns=keep-id localhost/e2e:2 sh -c \
      'id -u; id -g; stat -c "%u:%g" /etc/base; echo k >/tmp/k; stat -c "%u:%g" /tmp/k; cat /tmp/k'; then
      check "--userns=keep-id: ids, image owner, a new file" "$uid $gid 0:0 $uid:$gid k" "$(one_line <<<"$out")"
    fi
  fi

  # cleanup: nothing mounted, no daemon
  if [ "${KEEP:-0}" != 1 ]; then
    "$pm" rm -a -f >/dev/null 2>&1
    "$pm" rmi -a -f >/dev/null 2>&1
    "$d/fo" rm -a -f >/dev/null 2>&1
    "$d/fo" rmi -a -f >/dev/null 2>&1
  fi
  # Every mount below this mode's dir: the host's, and for rootless those
  # of podman's own mount namespace too.
  local mounts daemons
  mounts=$(awk '{print $2" "$3}' /proc/mounts | grep "^$d/")
  if [ "$MODE" = rootless ]; then
    mounts+=$("$pm" unshare cat /proc/self/mounts 2>/dev/null | awk '{print $2" "$3}' | grep "^$d/")
  fi
  # (not counted: containers/storage binds its own overlay dir onto itself;
  # rootless, that bind lives as long as podman's pause process)
  mounts=$(grep -v -E "^$d/(pm|fo)-root/overlay [^f]" <<<"$mounts")
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

# The end: every storage reset, the test user's processes gone; nothing of
# ours may be mounted or running.
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
