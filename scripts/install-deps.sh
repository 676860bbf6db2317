#!/usr/bin/env bash
# Installs the system packages Moraine links against, when any is missing (Debian/Ubuntu).
set -euo pipefail
# redis-tools (redis-cli, redis-benchmark) and python3-redis drive `moraine serve` in the tests.
packages=(liburing-dev libpmem-dev libnuma-dev liblz4-dev redis-tools python3-redis)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
