#!/usr/bin/env bash
# Install what the report tests (tests/browser) drive: Debian's Chromium, headless, which
# Playwright's Python package (in the dev extra) launches as the system executable. Playwright's
# own browser downloads are not used: the system package works offline from the mirror.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  chromium --version
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
# The package lists may be stale on a fresh machine: refresh them when the install fails.
$SUDO apt-get install -y -qq chromium >/dev/null 2>&1 \
  || { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null; }
chromium --version
