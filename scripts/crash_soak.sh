#!/usr/bin/env bash
# Crash soak: the kill -9 crash test of tests/crash.rs with many more kills.
#
#   scripts/crash_soak.sh [N]        N kills (default 2000)
#
# Environment:
#   SEED=...                 the storm's seed (default: a random one, printed)
#   UNIONFS_CRASH_MAX_DELAY_MS   kill after 0..this many ms (default 50)
#   KEEP=DIR                 copy the layers and daemon log of failing rounds there
#   UNIONFS_CRASH_LOG=debug  the daemon's RUST_LOG (its log is kept with KEEP)
#
# A failure prints, per failing round, the calls that led there; save them
# to a file and replay them deterministically (and shrink them) with:
#   UNIONFS_CRASH_REPLAY=FILE UNIONFS_CRASH_SEED=SEED [UNIONFS_CRASH_REPLAY_REDUCE=1] \
#     cargo test --test crash replay_history -- --ignored --nocapture
# (see the replay_history doc comment for the format/disk/kill knobs).
# Needs root and /dev/fuse.
set -euo pipefail
cd "$(dirname "$0")/.."
kills="${1:-2000}"
seed="${SEED:-$(( (RANDOM << 30) ^ (RANDOM << 15) ^ RANDOM ))}"
echo "crash soak: $kills kills, seed $seed" >&2
export UNIONFS_CRASH_KILLS="$kills"
export UNIONFS_CRASH_SEED="$seed"
if [ -n "${KEEP:-}" ]; then
  export UNIONFS_CRASH_KEEP_DIR="$KEEP"
fi
exec cargo test --test crash kill9_during_storms_then_remount -- --exact --nocapture
