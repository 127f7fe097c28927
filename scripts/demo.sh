#!/usr/bin/env bash
# The classic copy-on-write walkthrough: four image layers and an empty
# container layer mounted together with unionfs. Builds unionfs, shows the
# merged view and which layer each file comes from, writes and deletes
# through the mount, shows where the changes landed, checks the image
# layers are untouched, and unmounts. Needs root (for FUSE) on Linux.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
cargo build --release --quiet
UNIONFS="$PWD/target/release/unionfs"

demo=$(mktemp -d /tmp/unionfs-demo.XXXXXX)
mnt="$demo/merged"
cleanup() {
  if mountpoint -q "$mnt" 2>/dev/null; then "$UNIONFS" umount "$mnt" || umount -l "$mnt"; fi
  rm -rf "$demo"
}
trap cleanup EXIT

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
put() { mkdir -p "$(dirname "$1")"; printf '%s\n' "$2" > "$1"; }

# Image layers, bottom first, as an image build would make them.
L1="$demo/layer1-base" L2="$demo/layer2-libs" L3="$demo/layer3-app" L4="$demo/layer4-patch"
put "$L1/etc/os-release" "NAME=demo-os (layer1-base)"
put "$L1/etc/motd" "welcome (layer1-base)"
put "$L1/usr/share/doc/README" "docs (layer1-base)"
put "$L1/bin/hello" "#!/bin/sh (layer1-base)"
put "$L2/usr/lib/libdemo.so.1" "libdemo 1.0 (layer2-libs)"
put "$L2/etc/ld.so.conf" "/usr/lib (layer2-libs)"
put "$L3/app/server.conf" "port=8080 (layer3-app)"
put "$L3/app/bin/server" "server binary (layer3-app)"
put "$L3/etc/motd" "welcome to the app (layer3-app)"
put "$L4/usr/lib/libdemo.so.1" "libdemo 1.1 security fix (layer4-patch)"
mkdir -p "$L4/usr/share"
: > "$L4/usr/share/.wh.doc"          # an OCI whiteout: layer 4 deletes /usr/share/doc
container="$demo/container" work="$demo/work"
mkdir -p "$container" "$mnt"

say "Layers (top first): $L4 : $L3 : $L2 : $L1, writable container layer $container"
before=$(cd "$demo" && find layer* -type f -exec sha256sum {} + | sort)

"$UNIONFS" mount -l "$L4:$L3:$L2:$L1" -u "$container" -w "$work" "$mnt"
echo "mounted at $mnt"

origin() {  # which layer serves a path of the merged view
  for l in "$container" "$L4" "$L3" "$L2" "$L1"; do
    if [ -e "$l/$1" ] || [ -L "$l/$1" ]; then basename "$l"; return; fi
  done
}
show() {
  (cd "$mnt" && find . -mindepth 1 -not -type d | sort) | while read -r f; do
    printf '  %-26s from %-16s %s\n' "${f#./}" "$(origin "$f")" "$(head -c 60 "$mnt/$f")"
  done
}
say "The merged view: each file comes from the topmost layer that has it"
show
echo "  (usr/share/doc is gone: layer4 holds a whiteout for it)"

say "Write: append to /etc/motd through the mount"
echo "tuned by the container" >> "$mnt/etc/motd"
echo "merged view:    $(tr '\n' '|' < "$mnt/etc/motd")"
echo "container layer: $(tr '\n' '|' < "$container/etc/motd")   <- copied up, then written"
echo "layer3-app:      $(tr '\n' '|' < "$L3/etc/motd")   <- unchanged"

say "Delete: remove /app/server.conf through the mount"
rm "$mnt/app/server.conf"
ls "$mnt/app"
echo "container layer now holds a whiteout for it:"
ls -l "$container/app" | sed 's/^/  /'

say "New file: /app/data.txt"
echo "written by the container" > "$mnt/app/data.txt"
echo "container layer: $(cat "$container/app/data.txt")"

say "Everything the container changed is in its layer:"
(cd "$container" && find . -mindepth 1 | sort | sed 's/^/  /')

say "The image layers are byte-identical to before:"
after=$(cd "$demo" && find layer* -type f -exec sha256sum {} + | sort)
if [ "$before" = "$after" ]; then echo "  yes ($(echo "$after" | wc -l) files checked)"; else echo "  NO: image layers changed"; exit 1; fi

"$UNIONFS" umount "$mnt"
say "Unmounted. Done."
