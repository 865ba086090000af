#!/usr/bin/env bash
# `cmake --install` into a temporary prefix gives a usable mpass (issue 11 item 5): the program runs,
# the man page is there, and a C program built with `pkg-config --cflags --libs mpass` against the
# installed header and library (shared, then static) creates a context and parses a document.
set -euo pipefail
BUILD=$1 SRC=$2
P=$(mktemp -d)
trap 'rm -rf "$P"' EXIT
cmake --install "$BUILD" --prefix "$P" > "$P.log" || { cat "$P.log"; rm -f "$P.log"; exit 1; }
rm -f "$P.log"
for f in bin/mpass include/mpass/mpass.h share/man/man1/mpass.1 share/doc/mpass/NOTICE; do
  [ -f "$P/$f" ] || { echo "missing $P/$f"; exit 1; }
done
libdir=$(dirname "$(find "$P" -name mpass.pc | head -1)")/..
[ -f "$libdir/libmpass.a" ] && ls "$libdir"/libmpass.so* >/dev/null || { echo "libmpass.a/.so missing in $libdir"; exit 1; }
# the shared library exports the public API only
if nm -D --defined-only "$libdir/libmpass.so" | awk '{print $3}' | grep -v '^mpass_' | grep -q .; then
  echo "libmpass.so exports more than mpass_*:"; nm -D --defined-only "$libdir/libmpass.so" | grep -v ' mpass_' | head; exit 1
fi
"$P/bin/mpass" --version | tee "$P/version.txt"
grep -q '^mpass [0-9]' "$P/version.txt" && grep -q '^commit ' "$P/version.txt" && grep -q '^compute: precision' "$P/version.txt"
grep -q '^\.TH MPASS 1' "$P/share/man/man1/mpass.1"
export PKG_CONFIG_PATH="$(cd "$libdir" && pwd)/pkgconfig"
CC=${CC:-cc}
$CC ${CC_FLAGS:-} -o "$P/consumer" "$SRC/tests/cli/sh/consumer.c" $(pkg-config --cflags --libs mpass)
LD_LIBRARY_PATH="$(cd "$libdir" && pwd)" "$P/consumer"
# static: the private requirements must be enough to link
$CC ${CC_FLAGS:-} -o "$P/consumer-static" "$SRC/tests/cli/sh/consumer.c" $(pkg-config --cflags mpass) \
  "$libdir/libmpass.a" $(pkg-config --libs-only-l --static mpass | sed 's/-lmpass//') $(pkg-config --libs-only-other --static mpass)
"$P/consumer-static"
if [ -d "$SRC/models/vision" ]; then
  [ -f "$P/share/mpass/vision/selfie_segmentation.tflite" ] || { echo "models not installed"; exit 1; }
fi
