#!/usr/bin/env bash
# imgtool set-up on a fresh Debian 12 machine with Node 20, as root:
# system packages, npm dependencies, the TypeScript build and the WebAssembly
# e2fsprogs build. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

# Peers that judge our output in tests (qemu-img, sfdisk, e2fsck, blkid,
# virt-xml-validate, qemu-system-x86_64), what wrap --boot grub needs at run
# time (grub-pc-bin, grub-common), and the wasm32-wasi toolchain for wasm/.
PACKAGES=(
  qemu-utils e2fsprogs fdisk util-linux
  clang-14 lld-14 llvm-14 wasi-libc libclang-rt-14-dev-wasm32 dpkg-dev
  qemu-system-x86 busybox-static grub-pc-bin grub-common cpio
  libvirt-clients libxml2-utils time attr patch xz-utils zstd
  libvirt-daemon libvirt-daemon-driver-qemu
  kmod openssl
)

if [ "$(id -u)" = 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  apt-get install -y --no-install-recommends "${PACKAGES[@]}"
else
  echo "setup: not root: skipping apt-get; install these yourself: ${PACKAGES[*]}" >&2
fi

if [ -f package-lock.json ]; then npm ci; else npm install; fi
npm run build
bash wasm/build.sh
bash samples/make-sample.sh
