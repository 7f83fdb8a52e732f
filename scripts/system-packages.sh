#!/usr/bin/env bash
# The Debian packages the tests use: an engine for self-play (fairy-stockfish), a browser for the
# report and the dashboard (chromium), a PostgreSQL server, ss (iproute2) and ps (procps).
# Installed with apt-get where this runs as root on Debian; elsewhere one line says what is
# missing (the tests that need it then say why they skip).
set -euo pipefail
packages=(fairy-stockfish chromium postgresql iproute2 procps)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian packages for the tests: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "not installed (needs root and apt-get): ${missing[*]}; the tests that need them will skip"
fi
