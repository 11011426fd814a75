#!/usr/bin/env bash
# Install what the lab and suites need: system packages, then the project in .venv.
# Idempotent and quick when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBIAN_PACKAGES=(
  qemu-system-x86 qemu-utils qemu-block-extra
  libvirt-daemon-system libvirt-clients libvirt-dev
  openssh-server openssh-client busybox-static cpio iproute2 nftables
  gcc libc6-dev pkg-config python3-dev python3-venv
  nfs-ganesha nfs-ganesha-vfs rpcbind
  vagrant vagrant-libvirt ansible-core ansible ansible-lint debootstrap dnsmasq-base
  ansible-mitogen  # the Vagrant lab's playbook runs with strategy mitogen_linear where it is installed
  chrony
  chromium  # headless, for the HTML report's browser test (tests/test_report.py)
  elfutils  # eu-stack: the hot patch doctor's --pid (thread stacks of a running QEMU)
  # QEMU source builds through ccache (build stacks such as labs/fixed-qemu.yaml, which the harness's tests pin; the hot patch doctor's build): lab/stacks/build.py BUILD_DEPS
  make ccache ninja-build meson libglib2.0-dev libpixman-1-dev libfdt-dev libnfs-dev flex bison dpkg-dev patch
)
# openEuler names (dnf); libcareplus is packaged there.
OPENEULER_PACKAGES=(
  qemu qemu-img libvirt libvirt-devel libvirt-client
  openssh-server openssh-clients busybox cpio iproute nftables
  gcc glibc-static pkgconf python3-devel nfs-ganesha nfs-ganesha-vfs rpcbind libcareplus chrony
  elfutils
)

missing_debian() {
  local pkg missing=()
  for pkg in "${DEBIAN_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
  done
  echo "${missing[@]:-}"
}

if [ "$(id -u)" != 0 ]; then
  echo "make setup: run as root (the lab makes namespaces and starts libvirtd)" >&2
  exit 1
fi

if command -v apt-get >/dev/null; then
  missing=$(missing_debian)
  if [ -n "$missing" ]; then
    echo "setup: installing Debian packages: $missing"
    apt-get update -qq
    # The lab starts its own daemons inside its namespaces: keep package scripts from
    # starting libvirtd, rpcbind or ganesha in the root namespace (policy-rc.d: 101 = deny).
    created_policy=
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && created_policy=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
    [ -n "$created_policy" ] && rm -f /usr/sbin/policy-rc.d
  fi
elif command -v dnf >/dev/null; then
  dnf install -y -q "${OPENEULER_PACKAGES[@]}"
else
  echo "make setup: neither apt-get nor dnf found; install the packages listed in scripts/setup.sh by hand" >&2
  exit 1
fi

stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -e "$stamp" ]; then
  echo "setup: creating .venv and installing the project"
  python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e .
  rm -f .venv/.installed-* && touch "$stamp"
fi
echo "setup: ready (.venv/bin/python -m lab status)"
