#!/usr/bin/env bash
# Long differential campaign: random layer stacks and operation sequences run
# on kernel overlayfs and on unionfs, compared after every operation
# (tests/differential.rs). Needs root, /dev/fuse and kernel overlayfs.
#
#   scripts/differential.sh [N] [SEED]
#
# N sequences (default 20000) from base seed SEED (default: random, printed).
# Failures are shrunk and a repro script per kind is written under
# target/differential-repros/SEED/. Other knobs pass through the environment:
# UNIONFS_DIFF_OPS (operations per sequence, 50), UNIONFS_DIFF_THREADS,
# UNIONFS_DIFF_SHRINK, UNIONFS_DIFF_MAX_SHRINKS, UNIONFS_DIFF_SKIP_OPS,
# UNIONFS_DIFF_NO_LOWER_LINKS, UNIONFS_DIFF_SKIP_KNOWN_BUGS, UNIONFS_DIFF_METACOPY
# (1: both sides with metacopy=on) (see the test).
# Rerun one failing sequence: UNIONFS_DIFF_SEQ_SEED=0x... (printed per failure).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
    echo "differential.sh: run as root (mounts kernel overlayfs and FUSE)" >&2
    exit 1
fi
N=${1:-20000}
SEED=${2:-$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}
export UNIONFS_DIFF_SEQUENCES="$N"
export UNIONFS_DIFF_SEED="$SEED"
export UNIONFS_DIFF_REPRO_DIR="${UNIONFS_DIFF_REPRO_DIR:-$PWD/target/differential-repros/$SEED}"
echo "differential: $N sequences, base seed $SEED; repro scripts in $UNIONFS_DIFF_REPRO_DIR"
start=$(date +%s)
status=0
cargo test --test differential differential_against_kernel_overlayfs -- --nocapture || status=$?
echo "differential: seed $SEED, $N sequences, $(( $(date +%s) - start )) s, exit $status"
exit "$status"
