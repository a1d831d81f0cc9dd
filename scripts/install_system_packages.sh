#!/usr/bin/env bash
# Install the Debian packages of scripts/system-packages.txt that the given extras need.
#
#   bash scripts/install_system_packages.sh [EXTRAS]          e.g. train,dev (default: all of them)
#   bash scripts/install_system_packages.sh --list [EXTRAS]   print their names, install nothing
#
# Installs only what is missing, after one `apt-get update`. Without root or without apt-get it
# installs nothing and says what to install (exit 0): what needs a package then warns or skips.
# FINPERCEP_SKIP_SYSTEM_PACKAGES=1 skips this step.
set -euo pipefail
list="$(cd "$(dirname "$0")" && pwd)/system-packages.txt"
mode=install
if [ "${1:-}" = "--list" ]; then
  mode=list
  shift
fi
extras="${1:-all}"

wanted=()
while read -r name groups _; do
  case "$name" in "" | "#"*) continue ;; esac
  for g in ${groups//,/ }; do
    case ",$extras," in
      ,all, | *,"$g",*) wanted+=("$name"); break ;;
    esac
  done
done <"$list"

if [ "$mode" = list ]; then
  [ ${#wanted[@]} -eq 0 ] || printf '%s\n' "${wanted[@]}"
  exit 0
fi
[ ${#wanted[@]} -gt 0 ] || exit 0
if [ "${FINPERCEP_SKIP_SYSTEM_PACKAGES:-0}" = 1 ]; then
  echo "system packages: skipped (FINPERCEP_SKIP_SYSTEM_PACKAGES=1); wanted: ${wanted[*]}" >&2
  exit 0
fi
if ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
  echo "system packages: no apt-get/dpkg here, nothing installed. Install the equivalent of: ${wanted[*]}" >&2
  echo "  (see scripts/system-packages.txt; without them BRISQUE is left out of the training monitor, the" >&2
  echo "   Debian photo pools are empty and the browser test fails)" >&2
  exit 0
fi

missing=()
for p in "${wanted[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -gt 0 ] || exit 0
if [ "$(id -u)" != 0 ]; then
  echo "system packages: not root, nothing installed. Missing: ${missing[*]}" >&2
  echo "  install them with: sudo apt-get install -y ${missing[*]}" >&2
  exit 0
fi
echo "system packages: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq "${missing[@]}" >/dev/null
