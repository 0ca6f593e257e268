#!/usr/bin/env bash
# Install the Debian packages the tests need, if any is missing:
#   libpango-1.0-0 libpangoft2-1.0-0  WeasyPrint's text layout (PDF reports)
#   libharfbuzz-subset0               font subsetting for WeasyPrint (else it warns per font)
#   fonts-dejavu-core                 a font for the PDFs
#   poppler-utils                     pdftotext and pdftoppm, to read rendered PDFs back
set -euo pipefail

packages=(libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz-subset0 fonts-dejavu-core poppler-utils)
missing=()
for package in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$package")
    fi
done
[ "${#missing[@]}" -eq 0 ] && exit 0

echo "installing Debian packages: ${missing[*]}" >&2
sudo_cmd=()
[ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
"${sudo_cmd[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
