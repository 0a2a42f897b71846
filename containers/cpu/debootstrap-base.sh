#!/usr/bin/env bash
# The CPU image's base made without a registry: a minimal Debian 12 (bookworm) with its Python 3.11 and the shared
# libpython the Python-backend stub links, made by debootstrap from Debian's mirror and imported into podman.
# The CPU Dockerfile takes it as `--build-arg BASE=<printed reference>`; elsewhere the default public
# python:3.11-slim-bookworm (pinned by digest) plays the same part.
#
# Cached: the tag is a hash of this script, so an image already in podman's storage is reused (~1 min saved) and a
# changed recipe makes a new one. Prints the image reference on stdout, progress on stderr. Needs root, debootstrap
# and podman (Debian packages). Mirror: $DEBIAN_MIRROR, else the first deb.debian.org-style URI in apt's sources.
set -euo pipefail
SUITE=bookworm
PACKAGES=python3,python3-venv,libpython3.11,passwd
REPOSITORY=localhost/ruth-base/bookworm-python3.11
key=$(sha256sum "$0" | cut -c1-12)
ref="$REPOSITORY:$key"
if podman image exists "$ref"; then
  echo "base $ref: cached" >&2
  echo "$ref"
  exit 0
fi
mirror=${DEBIAN_MIRROR:-}
if [ -z "$mirror" ]; then
  mirror=$(sed -n 's/^URIs: *\([^ ]*\/debian\)$/\1/p; s/^deb \(http[^ ]*\/debian\) .*/\1/p' \
    /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null | head -n1 || true)
fi
mirror=${mirror:-http://deb.debian.org/debian}
rootfs=$(mktemp -d /var/tmp/ruth-base.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT
started=$(date +%s)
echo "base $ref: debootstrap $SUITE from $mirror" >&2
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$rootfs" "$mirror" >&2
version=$(chroot "$rootfs" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[ "$version" = 3.11 ] || { echo "expected Python 3.11 in $SUITE, got $version" >&2; exit 1; }
ls "$rootfs"/usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0 >/dev/null
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/lib/apt/lists/* \
  "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*
tar -C "$rootfs" --numeric-owner -c . | podman import --change 'CMD ["python3"]' \
  --message "debootstrap --variant=minbase --include=$PACKAGES $SUITE" - "$ref" >&2
echo "base $ref: made in $(($(date +%s) - started)) s" >&2
echo "$ref"
