#!/usr/bin/env bash
# The whole test suite: installs what it needs, checks the import graph,
# formatting and lints, runs every test (in-process and through real
# mounts), then the public conformance suites (pjdfstest,
# unionmount-testsuite) on the release binary.
# Mount tests need root and /dev/fuse; with CI=true they fail rather than skip.
# CONFORMANCE=0 skips the conformance suites (e.g. for a quick local run).
# Then xfstests' generic tests on unionfs, root and rootless, a fixed subset
# (scripts/xfstests.sh --ci, about 12 minutes; failures not listed in
# tests/xfstests-expected.txt fail it), and fsx/fsstress in their short mode
# (scripts/stress.sh --short, about 4 minutes). XFSTESTS=0 and STRESS=0 skip
# them.
# Then podman's whole cycle with unionfs as the mount program, rootful and
# rootless (scripts/podman_e2e.sh, under a minute); where podman cannot run
# it is skipped, and fails under CI=true. PODMAN=0 skips it.
# Then docker (dockerd's fuse-overlayfs driver running unionfs, rootful and
# rootless; scripts/docker_e2e.sh) and buildah (bud with unionfs as the
# mount program, the image run by podman; scripts/buildah_e2e.sh), each
# skipped or failed the same way. DOCKER=0 / BUILDAH=0 skip them.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
# The import graph is a DAG, top to bottom by docs/design.md §4: no cycle,
# no upward edge (seconds, so it runs before any build).
python3 scripts/module_graph.py --strict
cargo fmt --check
cargo clippy --all-targets --quiet -- -D warnings
cargo test --all-targets 2>&1
if [ "${CONFORMANCE:-1}" = 1 ]; then
  bash scripts/conformance.sh
fi
if [ "${XFSTESTS:-1}" = 1 ]; then
  bash scripts/xfstests.sh --ci
fi
if [ "${STRESS:-1}" = 1 ]; then
  bash scripts/stress.sh --short
fi
if [ "${PODMAN:-1}" = 1 ]; then
  bash scripts/podman_e2e.sh
fi
if [ "${DOCKER:-1}" = 1 ]; then
  bash scripts/docker_e2e.sh
fi
if [ "${BUILDAH:-1}" = 1 ]; then
  bash scripts/buildah_e2e.sh
fi
