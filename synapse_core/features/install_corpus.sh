#!/usr/bin/env bash
# Install Synapse's feature corpus: text from Debian packages, unpacked (not installed, so no
# dictionary server is set up) under the corpus root. Idempotent: does nothing when the same
# package versions are already unpacked. Usage: install_corpus.sh [PYTHON]   (default .venv/bin/python)
# The corpus root is $SYNAPSE_CORPUS, or <venv>/share/synapse-corpus for the given Python.
set -euo pipefail

PY="${1:-.venv/bin/python}"
PACKAGES="dict-gcide dict-foldoc dict-jargon dict-devil fortunes fortunes-min python3.11-doc"
ROOT="${SYNAPSE_CORPUS:-$("$PY" -c 'import sys; print(sys.prefix)')/share/synapse-corpus}"
SUDO=""
if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null; then SUDO="sudo"; fi

if ! command -v apt-get >/dev/null; then
    echo "install_corpus.sh: needs Debian's apt-get (packages: $PACKAGES)" >&2
    exit 1
fi

versions() {  # "pkg=version ..." of the candidates apt would download now
    for p in $PACKAGES; do
        v=$(apt-cache policy "$p" 2>/dev/null | awk '/Candidate:/ {print $2}')
        [ -n "$v" ] && [ "$v" != "(none)" ] || return 1
        printf '%s=%s\n' "$p" "$v"
    done
}

WANT=$(versions) || { $SUDO apt-get update -qq; WANT=$(versions); }
if [ -f "$ROOT/MANIFEST" ] && [ "$(cat "$ROOT/MANIFEST")" = "$WANT" ]; then
    echo "corpus already installed at $ROOT"
    exit 0
fi

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
chmod 777 "$TMP"  # apt-get download drops to the _apt user when it can
(cd "$TMP" && apt-get download $WANT -qq)
rm -rf "$ROOT.new"
mkdir -p "$ROOT.new/debian"
for deb in "$TMP"/*.deb; do dpkg-deb -x "$deb" "$ROOT.new/debian"; done
# only the text is kept: the rendered HTML of the Python docs is not needed
rm -rf "$ROOT.new/debian/usr/share/doc/python3.11/html/"{*.html,c-api,distributing,distutils,extending,faq,howto,install,installing,library,reference,tutorial,using,whatsnew,_static,_images}
printf '%s\n' "$WANT" > "$ROOT.new/MANIFEST"
rm -rf "$ROOT"
mv "$ROOT.new" "$ROOT"
echo "corpus installed at $ROOT: $(du -sh "$ROOT" | cut -f1)"
