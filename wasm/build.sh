#!/usr/bin/env bash
# Build e2fsck, resize2fs and mke2fs for WebAssembly (wasm32-wasi) from
# Debian 12's e2fsprogs source package, into wasm/build/.
#
#   bash wasm/build.sh          build when the outputs are missing or stale
#   bash wasm/build.sh --force  rebuild
#
# Route (see docs/README-e2fsprogs.md): Debian's clang-14 targeting
# wasm32-wasi with Debian's wasi-libc, the exact Debian source version below
# (apt verifies the download against the signed Sources index, dpkg-source
# verifies the tarballs against the .dsc, and we pin the .dsc's hash), our
# patches in wasm/patches/ and stub headers/C in wasm/stubs/.
# The binaries run under Node's node:wasi; src/fs/e2fsprogs.ts serves their
# file I/O from an imgtool BlockDevice.
#
# Needs (installed here when missing, as root): clang-14 lld-14 llvm-14
# wasi-libc libclang-rt-14-dev-wasm32 dpkg-dev, and a deb-src entry for the
# Debian suites already configured (added as a separate deb822 file).
#
# Idempotent: a stamp records the hash of everything that determines the
# output; a second run with nothing changed does nothing.

set -euo pipefail

E2FS_VERSION=1.47.0-2
E2FS_UPSTREAM=1.47.0
E2FS_DSC_SHA256=35b4de254e021f721362b767994598e249fea02e38ac446197cd9c22be1130fd
LLVM=14
APT_PACKAGES=(clang-$LLVM lld-$LLVM llvm-$LLVM wasi-libc libclang-rt-$LLVM-dev-wasm32 dpkg-dev patch make)
SRC_LIST=/etc/apt/sources.list.d/imgtool-src.sources
TOOLS=(e2fsck resize2fs mke2fs)

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SRC="$HERE/src"
OUT="$HERE/build"
TREE="$SRC/tree"
STUBS="$HERE/stubs"
PATCHES="$HERE/patches"
LOG="$SRC/build.log"
FORCE=0
[[ "${1:-}" == "--force" ]] && FORCE=1

say() { printf 'wasm/build.sh: %s\n' "$*"; }
die() { printf 'wasm/build.sh: error: %s\n' "$*" >&2; exit 1; }

# --- up to date? -------------------------------------------------------------
inputs_hash() {
  {
    echo "$E2FS_VERSION $E2FS_DSC_SHA256 $LLVM"
    sha256sum "$HERE/build.sh"
    find "$PATCHES" "$STUBS" -type f -print0 | sort -z | xargs -0 sha256sum
  } | sha256sum | cut -d' ' -f1
}
HASH="$(inputs_hash)"
up_to_date() {
  [[ -f "$OUT/.stamp" && "$(cat "$OUT/.stamp")" == "$HASH" ]] || return 1
  local t
  for t in "${TOOLS[@]}"; do [[ -s "$OUT/$t.wasm" ]] || return 1; done
}
if [[ $FORCE == 0 ]] && up_to_date; then
  say "up to date (${TOOLS[*]} in wasm/build/)"
  exit 0
fi

# --- toolchain ---------------------------------------------------------------
CLANG_RES="/usr/lib/llvm-$LLVM/lib/clang"
missing_tools() {
  command -v clang-$LLVM >/dev/null || return 0
  command -v wasm-ld-$LLVM >/dev/null || return 0
  command -v llvm-ar-$LLVM >/dev/null || return 0
  command -v llvm-ranlib-$LLVM >/dev/null || return 0
  command -v dpkg-source >/dev/null || return 0
  command -v patch >/dev/null || return 0
  command -v make >/dev/null || return 0
  [[ -f /usr/lib/wasm32-wasi/libc.a ]] || return 0
  compgen -G "$CLANG_RES/*/lib/wasi/libclang_rt.builtins-wasm32.a" >/dev/null || return 0
  return 1
}
if missing_tools; then
  if [[ $(id -u) -ne 0 ]]; then
    die "missing build tools; as root run: apt-get install -y ${APT_PACKAGES[*]}"
  fi
  say "installing ${APT_PACKAGES[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${APT_PACKAGES[@]}" >/dev/null
  missing_tools && die "toolchain still incomplete after apt-get install"
fi
CLANG_INC="$(ls -d "$CLANG_RES"/*/include | sort -V | tail -1)"
[[ -d "$CLANG_INC" && -d /usr/include/wasm32-wasi ]] || die "clang or wasi-libc headers not found"

# --- source ------------------------------------------------------------------
DSC="$SRC/e2fsprogs_$E2FS_VERSION.dsc"

# Add deb-src stanzas mirroring the deb stanzas of debian.sources (deb822),
# then refresh only that list. Done once; returns 0 when it added the file.
ensure_deb_src() {
  if apt-cache showsrc e2fsprogs 2>/dev/null | grep -qx "Version: $E2FS_VERSION"; then
    return 0
  fi
  [[ $(id -u) -eq 0 ]] || die "no deb-src entry for e2fsprogs $E2FS_VERSION; as root, add one (see wasm/build.sh) or run this script as root"
  local tmp
  tmp="$(mktemp)"
  if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
    # Each deb822 stanza whose Types include "deb" is copied with Types: deb-src.
    awk 'BEGIN { RS = ""; ORS = "" }
      {
        n = split($0, L, "\n"); keep = 0; out = ""
        for (i = 1; i <= n; i++) {
          if (L[i] ~ /^Types:/) {
            t = L[i]; sub(/^Types:/, "", t)
            if ((" " t " ") ~ /[ \t]deb[ \t]/) keep = 1
            L[i] = "Types: deb-src"
          }
          out = out L[i] "\n"
        }
        if (keep) print out "\n"
      }' /etc/apt/sources.list.d/debian.sources >"$tmp"
  fi
  if [[ ! -s "$tmp" && -f /etc/apt/sources.list ]]; then
    # One-line style: "deb [opts] URI SUITE COMPONENT..." -> deb822 stanzas.
    awk '$1 == "deb" {
        i = 2; opts = ""
        if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) { opts = opts " " $i; i++ } opts = opts " " $i; i++ }
        signed = ""
        if (match(opts, /signed-by=[^] ]+/)) signed = substr(opts, RSTART + 10, RLENGTH - 10)
        uri = $i; suite = $(i + 1); comps = ""
        for (j = i + 2; j <= NF; j++) comps = comps (comps ? " " : "") $j
        print "Types: deb-src\nURIs: " uri "\nSuites: " suite "\nComponents: " comps
        if (signed != "") print "Signed-By: " signed
        print ""
      }' /etc/apt/sources.list >"$tmp"
  fi
  [[ -s "$tmp" ]] || { rm -f "$tmp"; die "cannot derive a deb-src entry from /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list"; }
  install -m 0644 "$tmp" "$SRC_LIST"
  rm -f "$tmp"
  say "added $SRC_LIST; refreshing its source index"
  apt-get update -o Dir::Etc::sourcelist="$SRC_LIST" -o Dir::Etc::sourceparts=- \
    -o APT::Get::List-Cleanup=0 >/dev/null
  apt-cache showsrc e2fsprogs 2>/dev/null | grep -qx "Version: $E2FS_VERSION" ||
    die "e2fsprogs $E2FS_VERSION is not in the configured Debian suites"
}

mkdir -p "$SRC" "$OUT"
: >"$LOG"
if [[ ! -f "$DSC" ]]; then
  ensure_deb_src
  say "downloading e2fsprogs $E2FS_VERSION source"
  (cd "$SRC" && apt-get source --download-only --only-source "e2fsprogs=$E2FS_VERSION" >>"$LOG" 2>&1) ||
    die "apt-get source e2fsprogs=$E2FS_VERSION failed (see $LOG)"
fi
echo "$E2FS_DSC_SHA256  $DSC" | sha256sum -c --quiet - || die "$DSC does not have the pinned SHA-256"

# --- unpack + patch ----------------------------------------------------------
rm -rf "$TREE"
# dpkg-source checks the tarballs against the checksums in the (pinned) .dsc.
dpkg-source -x "$DSC" "$TREE" >>"$LOG" 2>&1 || die "dpkg-source -x failed (see $LOG)"
for p in "$PATCHES"/*.patch; do
  patch -d "$TREE" -p1 --batch --forward --quiet <"$p" >>"$LOG" 2>&1 || die "patch $(basename "$p") failed (see $LOG)"
done

# --- configure ---------------------------------------------------------------
WASI_DEFS="-D_WASI_EMULATED_SIGNAL -D_WASI_EMULATED_MMAN -D_WASI_EMULATED_GETPID -D_WASI_EMULATED_PROCESS_CLOCKS"
# -nostdinc: Debian's clang would otherwise add the host's /usr/include.
BASE_CFLAGS="--target=wasm32-wasi -nostdinc -isystem $CLANG_INC -isystem $STUBS/include -isystem /usr/include/wasm32-wasi -O2 $WASI_DEFS"
# An 8 MiB stack placed first: the default 64 KiB overflows silently into data.
LINK_FLAGS="--target=wasm32-wasi -Wl,-z,stack-size=8388608 -Wl,--stack-first"
WASI_LIBS="-lwasi-emulated-signal -lwasi-emulated-mman -lwasi-emulated-getpid -lwasi-emulated-process-clocks"

say "configuring (log: wasm/src/build.log)"
(
  cd "$TREE"
  CC=clang-$LLVM AR=llvm-ar-$LLVM RANLIB=llvm-ranlib-$LLVM \
    CFLAGS="$BASE_CFLAGS" LDFLAGS="$LINK_FLAGS" LIBS="$WASI_LIBS" \
    ./configure --host=wasm32-wasi --disable-nls --disable-fuse2fs --disable-tdb \
    --disable-uuidd --disable-debugfs --disable-imager --disable-defrag \
    --disable-elf-shlibs --disable-bmap-stats --disable-tls --without-pthread \
    --disable-backtrace --disable-rpath --disable-e2initrd-helper \
    ac_cv_header_signal_h=no ac_cv_header_termios_h=no ac_cv_header_setjmp_h=no
) >>"$LOG" 2>&1 || die "configure failed (see $LOG)"

# --- make --------------------------------------------------------------------
JOBS="$(nproc 2>/dev/null || echo 2)"
# compat.h is force-included at make time only, so configure's probes saw the real libc.
MAKE_CFLAGS="$BASE_CFLAGS -include $STUBS/compat.h"
MK=(make -j"$JOBS" "CFLAGS=$MAKE_CFLAGS" "CFLAGS_STLIB=$MAKE_CFLAGS" "CFLAGS_SHLIB=$MAKE_CFLAGS" RDYNAMIC=
  "SYSLIBS=$WASI_LIBS $TREE/imgtool-stubs.o")
say "compiling"
{
  clang-$LLVM $MAKE_CFLAGS -c "$STUBS/stubs.c" -o "$TREE/imgtool-stubs.o"
  # Generated headers first: a parallel library build races on them.
  make -C "$TREE" subs
  # lib/ss is debugfs's command shell: not needed.
  for lib in et:libcom_err e2p:libe2p uuid:libuuid blkid:libblkid support:libsupport ext2fs:libext2fs; do
    "${MK[@]}" -C "$TREE/lib/${lib%%:*}" "${lib##*:}.a"
  done
  "${MK[@]}" -C "$TREE/e2fsck" e2fsck
  "${MK[@]}" -C "$TREE/resize" resize2fs
  "${MK[@]}" -C "$TREE/misc" mke2fs
} >>"$LOG" 2>&1 || { tail -30 "$LOG" >&2; die "build failed (see $LOG)"; }

# --- install -----------------------------------------------------------------
install_tool() { # name path-in-tree
  local tmp="$OUT/.$1.wasm.tmp"
  cp "$TREE/$2" "$tmp"
  # Every output must be a WebAssembly module ("\0asm").
  [[ "$(head -c4 "$tmp" | od -An -tx1 | tr -d ' \n')" == "0061736d" ]] || die "$2 is not a WebAssembly module"
  mv -f "$tmp" "$OUT/$1.wasm"
}
install_tool e2fsck e2fsck/e2fsck
install_tool resize2fs resize/resize2fs
install_tool mke2fs misc/mke2fs
echo "$HASH" >"$OUT/.stamp"
rm -rf "$TREE"
say "built $(for t in "${TOOLS[@]}"; do printf '%s.wasm (%s KiB) ' "$t" $(($(stat -c %s "$OUT/$t.wasm") / 1024)); done)"
