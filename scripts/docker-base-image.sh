#!/usr/bin/env bash
# Builds a minimal Debian bookworm image with Python 3.11 (Debian's python3) and
# imports it into the local Docker engine, for machines that cannot pull images
# from a registry. deploy/Dockerfile takes it through its BASE_IMAGE build
# argument; real users keep the default (the official python:3.11 image).
#
#   scripts/docker-base-image.sh [TAG]        default TAG: seqinfer-base:bookworm
#
# Env: DEBIAN_MIRROR (default: the first URI in this machine's apt sources, so the
# build uses whatever mirror apt already reaches), DOCKER (default: docker),
# REBUILD=1 to rebuild when the tag already exists. Needs root and debootstrap.
set -euo pipefail
tag=${1:-seqinfer-base:bookworm}
docker=${DOCKER:-docker}

if [ -z "${REBUILD:-}" ] && $docker image inspect "$tag" >/dev/null 2>&1; then
  echo "base image $tag exists (REBUILD=1 to rebuild)"
  exit 0
fi

mirror=${DEBIAN_MIRROR:-}
if [ -z "$mirror" ]; then
  # Deb822 sources (bookworm default) first, then the one-line format.
  mirror=$(grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null \
    | awk '{print $2}' | grep -v security | head -n1 || true)
fi
if [ -z "$mirror" ]; then
  mirror=$(grep -hE '^deb ' /etc/apt/sources.list 2>/dev/null | awk '{print $2}' \
    | grep -v security | head -n1 || true)
fi
if [ -z "$mirror" ]; then
  echo "no Debian mirror found in apt sources; set DEBIAN_MIRROR" >&2
  exit 1
fi

root=$(mktemp -d /var/tmp/seqinfer-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
# minbase + what `python3 -m venv` and TLS to a package index need.
debootstrap --variant=minbase \
  --include=python3,python3-venv,python3-pip,ca-certificates \
  bookworm "$root" "$mirror"
# Trim: package caches and lists are rebuilt by `apt-get update` if ever needed.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/tmp/*
tar -C "$root" -c . | $docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["/bin/bash"]' \
  - "$tag"
echo "built $tag"
