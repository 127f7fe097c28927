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

# The closing lines; the exit status says whether every step passed.
summary() {
  echo "$E2E: $(($(date +%s) - START)) s"
  echo "$passed passed, $failed failed"
  [ "$failed" = 0 ]
}
