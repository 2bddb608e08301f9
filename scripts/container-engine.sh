#!/usr/bin/env bash
# The container engine that `make compose-test` runs on, set up when missing (Debian 12, root or
# sudo): podman with runc, netavark, aardvark-dns and iptables, docker-compose (it drives
# podman through podman's Docker-compatible socket), debootstrap; and a Debian 12 base image
# made with debootstrap from this machine's own Debian mirror and imported into podman as
# localhost/debian-base:bookworm. podman's image store keeps it between runs.
# podman's system settings are left alone: the test run hands podman its own containers.conf
# (tests/deploy/stack/engine.py).
set -euo pipefail

BASE_IMAGE=${BASE_IMAGE:-localhost/debian-base:bookworm}
SUITE=bookworm

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "container-engine: need root (or sudo) for apt-get, debootstrap and podman" >&2; exit 1
  fi
fi

need=()
command -v podman >/dev/null 2>&1 || need+=(podman)
command -v runc >/dev/null 2>&1 || need+=(runc)
[ -x /usr/lib/podman/netavark ] || need+=(netavark)
[ -x /usr/lib/podman/aardvark-dns ] || need+=(aardvark-dns)
# netavark sets up the bridge network with iptables, which no package here depends on: without
# it every container on a network fails with "netavark: No such file or directory".
[ -x /usr/sbin/iptables ] || need+=(iptables)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
if [ ${#need[@]} -gt 0 ]; then
  echo "container-engine: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if $SUDO podman image exists "$BASE_IMAGE"; then
  echo "container-engine: $BASE_IMAGE is there"
  exit 0
fi

# The mirror this machine's apt sources use for the suite (the image's apt uses it too).
mirror=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE) $(TARGET_OF)' 2>/dev/null \
  | awk -v suite="$SUITE" '$2 == suite && $3 == "deb" { print $1; exit }')
mirror=${mirror:-http://deb.debian.org/debian/}
work=$(mktemp -d "${TMPDIR:-/tmp}/debian-base.XXXXXX")
trap '$SUDO rm -rf "$work"' EXIT
echo "container-engine: debootstrap --variant=minbase $SUITE from $mirror"
started=$(date +%s)
if ! $SUDO debootstrap --variant=minbase "$SUITE" "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1; then
  tail -n 30 "$work/debootstrap.log" >&2
  [ -f "$work/rootfs/debootstrap/debootstrap.log" ] && tail -n 30 "$work/rootfs/debootstrap/debootstrap.log" >&2
  exit 1
fi
$SUDO tar -C "$work/rootfs" -c . | $SUDO podman import --quiet - "$BASE_IMAGE" >/dev/null
echo "container-engine: imported $BASE_IMAGE in $(( $(date +%s) - started )) s"
