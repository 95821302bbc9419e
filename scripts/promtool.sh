#!/usr/bin/env bash
# promtool, which the tests run on a live /metrics (`promtool check
# metrics`) and on the shipped alert rules (`promtool test rules`): taken
# from Debian's prometheus package with `apt-get download` and `dpkg -x`,
# so the Prometheus daemon is not installed. Kept in target/tools/; prints
# the path.
set -euo pipefail
cd "$(dirname "$0")/.."
tool="$PWD/target/tools/promtool"
if [ -x "$tool" ]; then
  echo "$tool"
  exit 0
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
if ! (cd "$work" && apt-get download prometheus >/dev/null 2>&1); then
  # A machine whose package lists were never fetched.
  $sudo apt-get update -qq
  (cd "$work" && apt-get download prometheus >/dev/null 2>&1)
fi
dpkg -x "$work"/prometheus_*.deb "$work/root"
mkdir -p "$(dirname "$tool")"
cp "$work/root/usr/bin/promtool" "$tool"
echo "$tool"
