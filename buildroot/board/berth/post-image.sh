#!/usr/bin/env bash
# Buildroot post-image script: assembles the same images `berth build` makes, from the kernel
# Buildroot built (everything built in: no modules), the init and netd the berth package
# installed, and an OCI image layout for the manifest's images.
#
# Arguments (BR2_ROOTFS_POST_SCRIPT_ARGS): ARCH [FORMAT]
#   ARCH    x86_64 or aarch64
#   FORMAT  kernel (kernel + initrd only, the default), raw or qcow2 (a UEFI disk image too)
# Environment, as Buildroot sets it: BINARIES_DIR, TARGET_DIR, HOST_DIR,
# BR2_EXTERNAL_BERTH_PATH; optional BERTH_MANIFEST and BERTH_IMAGES (NAME:TAG=DIR, space
# separated).
set -euo pipefail

arch="${1:?usage: post-image.sh ARCH [FORMAT]}"
format="${2:-kernel}"
case "$arch" in
  x86_64) kernel="$BINARIES_DIR/bzImage" ;;
  aarch64) kernel="$BINARIES_DIR/Image" ;;
  *) echo "post-image.sh: unknown arch $arch" >&2; exit 2 ;;
esac
manifest="${BERTH_MANIFEST:-$BR2_EXTERNAL_BERTH_PATH/board/berth/manifest.toml}"
berth="$HOST_DIR/bin/berth"

args=(build --arch "$arch" --manifest "$manifest" --out "$BINARIES_DIR/berth"
      --kernel "$kernel" --init "$TARGET_DIR/init" --netd "$TARGET_DIR/usr/lib/berth/netd"
      --berthctl "$TARGET_DIR/usr/bin/berthctl")
for image in ${BERTH_IMAGES:-}; do
  args+=(--image "$image")
done
case "$format" in
  kernel) ;;
  raw|qcow2) args+=(--format "$format") ;;
  *) echo "post-image.sh: unknown format $format" >&2; exit 2 ;;
esac
exec "$berth" "${args[@]}"
