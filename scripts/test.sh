#!/usr/bin/env bash
# The whole test suite: installs what it needs, checks formatting and lints,
# then runs every test (in-process and through real mounts).
# Mount tests need root and /dev/fuse; with CI=true they fail rather than skip.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
cargo fmt --check
cargo clippy --all-targets --quiet -- -D warnings
cargo test --all-targets 2>&1
