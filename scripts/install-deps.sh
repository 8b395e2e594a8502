#!/usr/bin/env bash
# Installs the system packages tiermon needs, if they are missing.
#   scripts/install-deps.sh build   what building needs
#   scripts/install-deps.sh test    that, plus the real peers the tests run
#                                   against (promtool, Prometheus,
#                                   node_exporter, Alertmanager, moto's S3
#                                   server, aiosmtpd's SMTP server,
#                                   Chromium and ChromeDriver, dnsmasq)
# Works on Debian and Ubuntu as root or with sudo; prints what it does.
set -euo pipefail

want=${1:-build}
pkgs=()
need() { # need <command> <package>
  command -v "$1" >/dev/null 2>&1 || [ -x "/usr/bin/$1" ] || [ -x "/usr/sbin/$1" ] || pkgs+=("$2")
}

need cc gcc
need c++ g++
# The rocksdb crate generates its bindings with libclang at build time.
# (libclang-cpp, which some toolchains bring, is not what it loads.)
compgen -G "/usr/lib/llvm-*/lib/libclang.so*" >/dev/null || compgen -G "/usr/lib/*/libclang-[0-9]*.so*" >/dev/null || compgen -G "/usr/lib/*/libclang.so*" >/dev/null || pkgs+=(libclang-dev)
if [ "$want" = test ]; then
  need promtool prometheus
  need prometheus-node-exporter prometheus-node-exporter
  need prometheus-alertmanager prometheus-alertmanager
  # The dashboard's browser test: headless Chromium through WebDriver.
  need chromium chromium
  need chromedriver chromium-driver
  need python3 python3
  # A real DNS server (SRV and A records) for DNS service discovery.
  need dnsmasq dnsmasq-base
fi

apt_install() { # apt_install <package>...
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-deps: missing $* and no apt-get here; install them by hand" >&2
    exit 1
  fi
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
      echo "install-deps: missing $*; run as root or install sudo" >&2
      exit 1
    fi
  fi
  echo "install-deps: installing $*" >&2
  export DEBIAN_FRONTEND=noninteractive
  # Packaged services must not start inside containers and CI machines.
  local made_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
    $sudo chmod +x /usr/sbin/policy-rc.d
    made_policy=1
  fi
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
  [ "$made_policy" = 0 ] || $sudo rm -f /usr/sbin/policy-rc.d
}

[ ${#pkgs[@]} -eq 0 ] || apt_install "${pkgs[@]}"

# moto (an S3-compatible server, for the blob tiering test) comes from PyPI
# into a virtualenv of our own; Debian's python3 needs python3-venv for it.
venv="$HOME/.cache/tiermon/venv"
if [ "$want" = test ] && [ ! -x "$venv/bin/moto_server" ]; then
  if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    rm -rf "$venv"
    apt_install python3-venv
    python3 -m venv "$venv"
  fi
  echo "install-deps: installing moto[server] into $venv" >&2
  "$venv/bin/pip" install -q --disable-pip-version-check "moto[server]>=5,<6"
fi
# aiosmtpd: a real SMTP server for the email notification test.
if [ "$want" = test ] && [ ! -x "$venv/bin/aiosmtpd" ]; then
  echo "install-deps: installing aiosmtpd into $venv" >&2
  "$venv/bin/pip" install -q --disable-pip-version-check "aiosmtpd>=1.4,<2"
fi
