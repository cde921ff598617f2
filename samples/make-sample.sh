#!/usr/bin/env bash
# Build samples/xen-guest.img: a small Xen-style single-filesystem image (a
# bare ext3 with no partition table, as Xen paravirtual guests' disks often
# are) from the tree in samples/xen-guest/, plus some generated data.
set -euo pipefail
cd "$(dirname "$0")"
out=xen-guest.img
[ -f "$out" ] && [ "$out" -nt make-sample.sh ] && exit 0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp -a xen-guest/. "$tmp/"
mkdir -p "$tmp/var/lib/data"
# Deterministic data: 8 MiB of a repeating text log, 4 MiB of pseudo-random bytes.
for i in $(seq 1 20000); do echo "$i: request served by xen-guest in $((i % 97)) ms"; done > "$tmp/var/lib/data/access.log"
head -c 4194304 /dev/zero | openssl enc -aes-128-ctr -nosalt -pass pass:imgtool -pbkdf2 2>/dev/null > "$tmp/var/lib/data/blob.bin" \
  || dd if=/dev/urandom of="$tmp/var/lib/data/blob.bin" bs=1M count=4 status=none
ln -s ../www/index.html "$tmp/var/lib/index-link.html"
truncate -s 64M "$out.tmp"
mke2fs -q -F -t ext3 -L xenroot -d "$tmp" "$out.tmp"
mv "$out.tmp" "$out"
echo "samples/$out: $(du -h --apparent-size "$out" | cut -f1) ext3 image (Xen single-filesystem style)"
