#!/usr/bin/env bash
# Cross-builds lora.c for aarch64 (Graviton, Ampere, Raspberry Pi 5) on an x86-64 Debian 12 host,
# into a build folder of its own (default build-arm64), without touching the native build.
#
#   bash scripts/cross-aarch64.sh [make targets...]   default: $BUILD/lora and the C tests
#
# 1. installs, when missing, the cross compilers and qemu-user (Debian packages);
# 2. unpacks the arm64 libraries lora.c links (OpenBLAS-OpenMP, json-c, sentencepiece,
#    libmicrohttpd, and their run-time closure down to libc6) into $BUILD/sysroot-arm64 with
#    `apt-get download` + `dpkg -x`. They are not installed: Debian 12's libsentencepiece0/-dev
#    are not co-installable across architectures and installing the :arm64 ones would remove
#    the amd64 ones the native build needs;
# 3. runs `make ARCH=aarch64 SYSROOT=... BUILD=...`; the binary is $BUILD/lora (./lora stays
#    the native one).
# Run the results with:  QEMU_LD_PREFIX=$BUILD/sysroot-arm64 qemu-aarch64 $BUILD/lora ...
# Environment: BUILD (default build-arm64), JOBS (make -j, default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build-arm64}
JOBS=${JOBS:-2}
SYSROOT=$PWD/$BUILD/sysroot-arm64
APT=(apt-get -o DPkg::Lock::Timeout=600 -q)
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive

have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "ok installed"; }

# --- 1. toolchain and emulator -------------------------------------------------------------
missing=""
for p in make gcc-aarch64-linux-gnu g++-aarch64-linux-gnu qemu-user; do
  have_pkg "$p" || missing="$missing $p"
done
updated=0
if [ -n "$missing" ]; then
  echo "cross-aarch64: installing$missing"
  $SUDO "${APT[@]}" update
  updated=1
  $SUDO "${APT[@]}" install -y --no-install-recommends $missing
fi

# --- 2. the arm64 sysroot ------------------------------------------------------------------
# The run-time closure (apt-cache depends --recurse on the libraries below, Debian 12), plus the
# -dev packages whose headers and .so links the build needs. libmicrohttpd-dev's own
# dependency (libgnutls28-dev) is not needed: lora.c never includes gnutls headers.
PKGS="libc6 libgcc-s1 gcc-12-base libstdc++6 libgomp1 libgfortran5
      libopenblas0-openmp libopenblas-openmp-dev
      libjson-c5 libjson-c-dev
      libsentencepiece0 libsentencepiece-dev
      libmicrohttpd12 libmicrohttpd-dev
      libgnutls30 libgmp10 libhogweed6 libnettle8 libidn2-0 libunistring2 libp11-kit0 libffi8 libtasn1-6"
stamp=$SYSROOT/.packages
want="$(echo $PKGS)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    $SUDO dpkg --add-architecture arm64
    updated=0
  fi
  # apt-get download needs the arm64 package lists (it installs nothing)
  if [ "$updated" -eq 0 ] || ! apt-cache show libc6:arm64 > /dev/null 2>&1; then
    $SUDO "${APT[@]}" update
  fi
  rm -rf "$SYSROOT" "$BUILD/debs-arm64"
  mkdir -p "$SYSROOT" "$BUILD/debs-arm64"
  # apt-get download writes into the current folder; as root it drops to the _apt user, which
  # must be able to write there (or it warns and downloads unsandboxed)
  (cd "$BUILD/debs-arm64" && "${APT[@]}" download $(for p in $PKGS; do echo "$p:arm64"; done))
  for d in "$BUILD"/debs-arm64/*.deb; do dpkg -x "$d" "$SYSROOT"; done
  # what the packages' maintainer scripts would have made: the libopenblas.so.0 alternative
  # (lora links it through its rpath, /usr/lib/aarch64-linux-gnu/openblas-openmp, anyway)
  ln -sf openblas-openmp/libopenblas.so.0 "$SYSROOT/usr/lib/aarch64-linux-gnu/libopenblas.so.0"
  echo "$want" > "$stamp"
  echo "cross-aarch64: sysroot $SYSROOT ($(ls "$BUILD"/debs-arm64/*.deb | wc -l) packages)"
fi

# --- 3. build ------------------------------------------------------------------------------
# The Makefile's `lora` rule writes ./lora (the native binary's place); $BUILD/lora is the same
# link into the cross build's folder, as an extra rule read after the Makefile.
xmake() {
  make --no-print-directory -j"$JOBS" ARCH=aarch64 SYSROOT="$SYSROOT" BUILD="$BUILD" -f Makefile -f - "$@" <<'EOF'
$(BUILD)/lora: $(BUILD)/train/main.o $(BUILD)/liblora.a
	$(CC) $(CFLAGS) $^ -o $@ $(LDLIBS)
EOF
}
set +e
if [ $# -gt 0 ]; then xmake "$@"; exit $?; fi
# The library and lora with the project's flags; then the tests (-k: each that builds), whose
# own code gets two allowances for Debian 12's GCC 12.2 aarch64 back end: format-truncation
# warnings it raises where x86-64's does not (tests/test_arch.c), and -fno-tree-loop-vectorize
# for its internal compiler error ("in vect_transform_reduction") on a double fmax reduction
# over floats, `m = fmax(m, fabs((double)a[i]))`, which the tests' error helpers use (library
# code must not: write it `v > m ? v : m`, or fmaxf on floats, which compile).
xmake "$BUILD/lora"
rc=$?
tests=$(for t in tests/test_*.c; do echo "$BUILD/tests/$(basename "$t" .c)"; done)
xmake -k EXTRA_CFLAGS="${EXTRA_CFLAGS:-} -Wno-error=format-truncation -fno-tree-loop-vectorize" $tests || rc=1
exit $rc
