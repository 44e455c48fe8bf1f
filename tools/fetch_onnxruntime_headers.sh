#!/usr/bin/env bash
# Fetch ONNX Runtime's C/C++ headers into third_party/onnxruntime/include, without touching the
# system: the onnxruntime wheel ships no headers, and Debian 12 has no libonnxruntime-dev, so we
# download Debian 13's libonnxruntime-dev .deb through a private apt configuration and unpack it
# with dpkg -x. The custom-op library only needs the headers (it links nothing from onnxruntime).
#
# Usage: tools/fetch_onnxruntime_headers.sh [DEST]     (DEST defaults to third_party/onnxruntime)
# Idempotent: does nothing when DEST/include/onnxruntime_c_api.h already exists.
# Afterwards build with ONNXRUNTIME_DIR=DEST (setup.py also looks there by default).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$(realpath -m "${1:-$repo_root/third_party/onnxruntime}")"

if [[ -f "$dest/include/onnxruntime_c_api.h" ]]; then
    echo "ONNX Runtime headers already present: $dest/include"
    exit 0
fi

for tool in apt-get dpkg; do
    if ! command -v "$tool" >/dev/null; then
        echo "error: $tool not found (this script is for Debian/Ubuntu); set ONNXRUNTIME_DIR to an unpacked" \
             "onnxruntime release (https://github.com/microsoft/onnxruntime/releases) instead." >&2
        exit 1
    fi
done

suite="${MEGAPORTRAITS_ORT_DEBIAN_SUITE:-trixie}"
mirror="${MEGAPORTRAITS_ORT_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
keyring="/usr/share/keyrings/debian-archive-${suite}-stable.gpg"
[[ -f "$keyring" ]] || keyring="/usr/share/keyrings/debian-archive-keyring.gpg"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/sources.list.d" "$work/deb"
echo "deb [signed-by=$keyring] $mirror $suite main" > "$work/sources.list"

apt_private=(
    -o "Dir::Etc::SourceList=$work/sources.list"
    -o "Dir::Etc::SourceParts=$work/sources.list.d"
    -o "Dir::State::Lists=$work/lists"
    -o "Dir::Cache=$work/cache"
    -o "APT::Sandbox::User=$(id -un)"
    -o "Debug::NoLocking=1"
)

echo "Downloading libonnxruntime-dev from Debian $suite (private apt lists in $work)..."
apt-get "${apt_private[@]}" -qq update
(cd "$work/deb" && apt-get "${apt_private[@]}" -qq download libonnxruntime-dev)

deb_file="$(ls "$work"/deb/libonnxruntime-dev_*.deb)"
dpkg -x "$deb_file" "$work/unpacked"
header_dir="$work/unpacked/usr/include/onnxruntime"
if [[ ! -f "$header_dir/onnxruntime_c_api.h" ]]; then
    echo "error: $(basename "$deb_file") has no usr/include/onnxruntime/onnxruntime_c_api.h;" \
         "set ONNXRUNTIME_DIR to an onnxruntime release archive instead." >&2
    exit 1
fi

mkdir -p "$dest"
rm -rf "$dest/include"
cp -r "$header_dir" "$dest/include"
basename "$deb_file" > "$dest/SOURCE"
echo "ONNX Runtime headers installed: $dest/include (from $(basename "$deb_file"))"
