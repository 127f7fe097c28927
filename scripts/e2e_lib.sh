# shellcheck shell=bash
# What the end-to-end scripts with real clients (podman_e2e.sh,
# docker_e2e.sh, buildah_e2e.sh) share: the verdict of a client that cannot
# run, installing what is missing, one PASS/FAIL line per step and the
# `N passed, N failed` summary, the binary under test. Sourced, after the
# script has set E2E (its name) and CLIENT (the client it drives).

# Where the client cannot run at all: a failure under CI=true, else a skip.
cannot_run() {
  if [ "${CI:-}" = true ]; then
    echo "FAIL $E2E: $CLIENT cannot run here: $1"
    echo "0 passed, 1 failed"
    exit 1
  fi
  echo "SKIP $E2E: $CLIENT cannot run here: $1 (under CI=true this fails)"
  exit 0
}

# need COMMAND PACKAGE: the Debian package to install when COMMAND is missing.
missing=()
need() { command -v "$1" >/dev/null 2>&1 || missing+=("$2"); }

# Installs what `need` found missing, or gives up as `cannot_run`.
install_missing() {
  [ ${#missing[@]} -gt 0 ] || return 0
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  { apt-get update -qq >/dev/null &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; } ||
    cannot_run "apt-get install ${missing[*]} failed"
}

# UNIONFS_BIN: as given, else the release binary, built now.
build_unionfs() {
  if [ -z "${UNIONFS_BIN:-}" ]; then
    cargo build --release --quiet || {
      echo "FAIL $E2E: cargo build --release"
      echo "0 passed, 1 failed"
      exit 1
    }
    UNIONFS_BIN=$PWD/target/release/unionfs
  fi
}

passed=0
failed=0
MODE=-
pass() { echo "PASS [$MODE] $1"; passed=$((passed + 1)); }
fail() { echo "FAIL [$MODE] $1: $2"; failed=$((failed + 1)); }
check() { # check NAME EXPECTED ACTUAL
  if [ "$2" = "$3" ]; then pass "$1"; else fail "$1" "expected [$2], got [$3]"; fi
}
one_line() { tr '\n' ' ' | sed 's/  */ /g; s/ $//'; }

# craft_archive UNIONFS: $T/ld.tar, a 2-layer docker-archive: the base
# ($T/base.tar of $T/rootfs), then a layer made with `UNIONFS commit` over
# it that deletes /etc/gone (`.wh.gone`) and replaces /opq by a new
# directory (`.wh..wh..opq`). Works in $T/craft.
craft_archive() {
  local u=$1 c=$T/craft
  mkdir -p "$c/up" "$c/mnt"
  "$u" mount -l "$T/rootfs" -u "$c/up" --format oci "$c/mnt" || return 1
  rm "$c/mnt/etc/gone" && rm -r "$c/mnt/opq" && mkdir "$c/mnt/opq" && echo c >"$c/mnt/opq/c"
  local rc=$?
  "$u" umount "$c/mnt" || return 1
  [ $rc = 0 ] || return 1
  "$u" commit -l "$T/rootfs" -u "$c/up" -o "$c/l2.tar" || return 1
  mkdir "$c/ar"
  cp "$T/base.tar" "$c/ar/l1.tar"
  cp "$c/l2.tar" "$c/ar/l2.tar"
  local d1 d2
  d1=$(sha256sum "$c/ar/l1.tar" | cut -d' ' -f1)
  d2=$(sha256sum "$c/ar/l2.tar" | cut -d' ' -f1)
  printf '{"architecture":"%s","os":"linux","config":{"Cmd":["sh"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s","sha256:%s"]}}' \
    "$(dpkg --print-architecture)" "$d1" "$d2" >"$c/ar/config.json"
  printf '[{"Config":"config.json","RepoTags":["localhost/e2e:ld"],"Layers":["l1.tar","l2.tar"]}]' >"$c/ar/manifest.json"
  tar -C "$c/ar" -cf "$T/ld.tar" manifest.json config.json l1.tar l2.tar
}

# The unprivileged user $RUSER (made if missing: CREATED_USER=1, for the
# cleanup to remove), with subordinate ids enough for --uidmap
# 0:100000:65536 inside, and /dev/fuse open to it.
rootless_prepare() {
  MODE=rootless
  if ! id -u "$RUSER" >/dev/null 2>&1; then
    useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$RUSER" || return 1
    # shellcheck disable=SC2034 # read by the sourcing script's cleanup
    CREATED_USER=1
  fi
  grep -q "^$RUSER:" /etc/subuid || usermod --add-subuids 400000-599999 "$RUSER" || return 1
  grep -q "^$RUSER:" /etc/subgid || usermod --add-subgids 400000-599999 "$RUSER" || return 1
  chmod 666 /dev/fuse
}

# The closing lines; the exit status says whether every step passed.
summary() {
  echo "$E2E: $(($(date +%s) - START)) s"
  echo "$passed passed, $failed failed"
  [ "$failed" = 0 ]
}
