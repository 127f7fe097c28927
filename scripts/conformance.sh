#!/usr/bin/env bash
# Runs the public conformance suites against the release binary:
#   * pjdfstest (POSIX semantics; 238 files), cwd a merged dir below the
#     mount root, two lowers, layers on ext4;
#   * unionmount-testsuite, `--ov` and `--ov=3` (union semantics, layer
#     rotation).
# The suites are the unmodified copies in ../shared/suites (read-only in CI:
# everything built or written goes to one temp dir, removed at exit).
# Prints one summary per suite and exits non-zero if any file/test failed.
#
# Knobs (environment):
#   TARGET=unionfs|overlay  what is mounted (default unionfs; overlay = kernel
#                           `mount -t overlay`, to check the baselines
#                           pjdfstest 238/238, unionmount 58/58)
#   SUITES="pjdfstest umt-ov umt-ov3"   a subset to run (default all three)
#   PJD_DIRS="chmod rename"  pjdfstest dirs to run (default all)
#   UMT_TESTS="open-plain"   unionmount tests to run (default the suite's list)
#   KEEP=1      keep the temp dir (results, logs, pjdfstest build) and print it
#   VERBOSE=1   stream the suites' own output; print every failing line
#   SHOW=N      `not ok` lines shown per failed pjdfstest file (default 5)
#   PJDFSTEST_DIR=DIR  use an already built pjdfstest (skips the build)
#   SHARED_SUITES=DIR  where the suites live (default ../shared/suites)
# Needs root and /dev/fuse (pjdfstest switches uids; the suites mount).
set -euo pipefail
# The braces make bash read the whole script before running it, so editing
# this file during a run (they take minutes) cannot break that run.
{
cd "$(dirname "$0")/.."
repo="$(pwd)"

TARGET="${TARGET:-unionfs}"
SUITES="${SUITES:-pjdfstest umt-ov umt-ov3}"
KEEP="${KEEP:-0}"
VERBOSE="${VERBOSE:-0}"
SHOW="${SHOW:-5}"
[ "$VERBOSE" = 1 ] && SHOW=100000
shared="$(cd "${SHARED_SUITES:-../shared/suites}" && pwd)"

say() { echo "[conformance] $*"; }
die() { echo "conformance: $*" >&2; exit 2; }

[ "$(id -u)" = 0 ] || die "must run as root (pjdfstest switches uids; the suites mount)"
[ -x "$shared/run-suites.sh" ] || die "no $shared/run-suites.sh (a copy of shared/ beside the repo?)"
bash scripts/deps.sh

# What is mounted, as run-suites.sh templates ($LOWERS $UPPER $WORK $MNT $OPTS
# are set when they are eval'd).
case "$TARGET" in
  unionfs)
    [ -e /dev/fuse ] || die "no /dev/fuse"
    say "cargo build --release"
    cargo build --release --quiet
    export UNIONFS_BIN="${CARGO_TARGET_DIR:-$repo/target}/release/unionfs"
    # FUSE mode: the suite expects every file on the union's st_dev.
    umt_mode=fuse
    mount_cmd='"$UNIONFS_BIN" mount -l "$LOWERS" -u "$UPPER" -w "$WORK" "$MNT"'
    umount_cmd='"$UNIONFS_BIN" umount "$MNT"'
    ;;
  overlay)
    umt_mode=kernel
    # keep $OPTS: the unionmount suite adds e.g. redirect_dir=on, xino=on
    mount_cmd='mount -t overlay overlay -o "lowerdir=$LOWERS,upperdir=$UPPER,workdir=$WORK${OPTS:+,$OPTS}" "$MNT"'
    umount_cmd='umount "$MNT"'
    ;;
  *) die "TARGET must be unionfs or overlay" ;;
esac

tmp="$(mktemp -d "${TMPDIR:-/tmp}/unionfs-conformance.XXXXXX")"
loop_mnt=""
suite_pid=""
# shellcheck source=scripts/proc_lib.sh
. scripts/proc_lib.sh
cleanup() {
  local rc=$?
  # Interrupted during a suite: run-suites.sh acts on a signal only once its
  # current test has ended (the test runs under timeout, in its own process
  # group, which a ^C does not reach), so end that test, by pid, and let
  # run-suites.sh clean up its mounts.
  if [ -n "$suite_pid" ] && kill -0 "$suite_pid" 2>/dev/null; then
    kill -TERM $(descendants "$suite_pid") "$suite_pid" 2>/dev/null || true
    wait "$suite_pid" 2>/dev/null || true
  fi
  # A unionfs daemon left behind (e.g. run-suites.sh was killed) names our
  # temp dir on its command line: end exactly those, by pid.
  local c p
  if [ -n "${UNIONFS_BIN:-}" ]; then
    for c in /proc/[0-9]*/cmdline; do
      p="${c#/proc/}"; p="${p%/cmdline}"
      [ "$(readlink "/proc/$p/exe" 2>/dev/null)" = "$UNIONFS_BIN" ] || continue
      tr '\0' '\n' <"$c" 2>/dev/null | grep -q -F -- "$tmp" && kill -KILL "$p" 2>/dev/null
    done
  fi
  if [ -n "$loop_mnt" ] && mountpoint -q "$loop_mnt"; then
    umount "$loop_mnt" 2>/dev/null || umount -l "$loop_mnt" || true
  fi
  if [ "$KEEP" = 1 ]; then
    echo "[conformance] kept $tmp (results: $tmp/results/)"
  else
    # --one-file-system: never delete through a mount that is still there
    rm -rf --one-file-system "$tmp" || true
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# pjdfstest drops to other uids, which must reach the merged dir below here.
chmod 755 "$tmp"

# pjdfstest's layers (and expectations) are for ext4: use the temp dir if it
# is on ext4, else a loop-mounted ext4 image inside it.
scratch="$tmp"
fstype="$(findmnt -n -o FSTYPE -T "$tmp" | tail -1)"
layers_on="$fstype ($tmp)"
if [ "$fstype" != ext4 ]; then
  say "$tmp is on $fstype, not ext4: using a loop-mounted ext4 image"
  truncate -s 2G "$tmp/ext4.img"
  mkfs.ext4 -q -F "$tmp/ext4.img"
  loop_mnt="$tmp/ext4"
  mkdir "$loop_mnt"
  mount -o loop "$tmp/ext4.img" "$loop_mnt"
  chmod 755 "$loop_mnt"
  scratch="$loop_mnt"
  layers_on="an ext4 image ($tmp is on $fstype)"
fi

if [ -z "${PJDFSTEST_DIR:-}" ] && [[ " $SUITES " == *" pjdfstest "* ]]; then
  say "building pjdfstest"
  PJDFSTEST_DIR="$("$shared/build-pjdfstest.sh" "$tmp/pjdfstest")"
fi

# run_suite NAME VAR=VALUE...: one run-suites.sh run with its own scratch and
# results dir; its output goes to a log (streamed with VERBOSE=1).
run_suite() {
  local name="$1"; shift
  local log="$tmp/results/$name.log" rc=0
  mkdir -p "$tmp/results/$name"
  say "running $name ($TARGET)"
  local cmd=(env MOUNT_CMD="$mount_cmd" UMOUNT_CMD="$umount_cmd" UMT_MODE="$umt_mode"
    UMT_DIR="$shared/unionmount-testsuite" PJDFSTEST_DIR="${PJDFSTEST_DIR:-}"
    SCRATCH="$scratch/scratch-$name" RESULTS="$tmp/results/$name" "$@"
    "$shared/run-suites.sh")
  # in the background, so that a ^C reaches our trap at once (see cleanup)
  if [ "$VERBOSE" = 1 ]; then
    "${cmd[@]}" > >(tee "$log") 2>&1 &
  else
    "${cmd[@]}" >"$log" 2>&1 &
  fi
  suite_pid=$!
  wait "$suite_pid" || rc=$?
  suite_pid=""
  # run-suites.sh: 0 all passed, 1 some failed, 2 setup error
  if [ "$rc" -ge 2 ] || [ ! -s "$tmp/results/$name/summary.txt" ]; then
    echo "conformance: $name: setup error (exit $rc); its output:" >&2
    tail -30 "$log" >&2
    setup_failed+=("$name")
  fi
}

# summarize NAME TSV: PASS/FAIL counts and the failed files with why.
summarize() {
  local name="$1" tsv="$2" pass fail
  [ -f "$tsv" ] || return 0
  pass="$(awk -F'\t' '$2 == "PASS"' "$tsv" | wc -l)"
  fail="$(awk -F'\t' '$2 != "PASS"' "$tsv" | wc -l)"
  summary+=("$name: $pass passed, $fail failed")
  [ "$fail" -gt 0 ] || return 0
  failed+=("$name")
  local f status why tap
  while IFS=$'\t' read -r f status why; do
    [ "$status" = PASS ] && continue
    summary+=("  FAIL $f  ($status${why:+: $why})")
    if [ "$name" = pjdfstest ]; then
      tap="$tmp/results/$name/pjdfstest/logs/${f//\//_}.tap"
      # the ENAMETOOLONG tests print paths of 4 KiB: keep both ends
      while IFS= read -r line; do
        [ ${#line} -gt 240 ] && line="${line:0:100} [...] ${line: -120}"
        summary+=("      $line")
      done < <(grep -a '^not ok' "$tap" 2>/dev/null | grep -av '# *TODO' | head -n "$SHOW")
    fi
  done <"$tsv"
}

summary=() failed=() setup_failed=()
pjd_only=() umt_only=()   # subsets, passed on only when asked for
[ -n "${PJD_DIRS:-}" ] && pjd_only=(PJD_DIRS="$PJD_DIRS")
[ -n "${UMT_TESTS:-}" ] && umt_only=(UMT_TESTS="$UMT_TESTS")
for s in $SUITES; do
  case "$s" in
    pjdfstest)
      run_suite pjdfstest SUITES=pjdfstest PJD_LOWERS=2 PJD_SUBDIR=pjd "${pjd_only[@]}"
      summarize pjdfstest "$tmp/results/pjdfstest/pjdfstest/results.tsv" ;;
    umt-ov)
      run_suite umt-ov SUITES=unionmount "${umt_only[@]}"
      summarize "unionmount --ov" "$tmp/results/umt-ov/unionmount/results.tsv" ;;
    umt-ov3)
      run_suite umt-ov3 SUITES=unionmount UMT_LAYERS=3 "${umt_only[@]}"
      summarize "unionmount --ov=3" "$tmp/results/umt-ov3/unionmount/results.tsv" ;;
    *) die "unknown suite $s (pjdfstest, umt-ov, umt-ov3)" ;;
  esac
done

echo
echo "=== conformance: $TARGET, pjdfstest layers on $layers_on, ${SECONDS}s with the builds ==="
printf '%s\n' "${summary[@]}"
[ ${#setup_failed[@]} -eq 0 ] || echo "setup errors: ${setup_failed[*]}"
[ "$KEEP" = 1 ] || echo "(KEEP=1 keeps the logs)"
[ ${#failed[@]} -eq 0 ] && [ ${#setup_failed[@]} -eq 0 ]
exit
}
