#!/usr/bin/env bash
# Installs what lora.c needs to build and test, from Debian packages, only when missing.
set -euo pipefail
PKGS="gcc g++ make pkg-config libopenblas-openmp-dev libjson-c-dev libsentencepiece-dev libmicrohttpd-dev sentencepiece python3 python3-torch python3-numpy python3-jinja2"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "installing:$missing"
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends $missing
