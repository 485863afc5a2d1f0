#!/usr/bin/env bash
# Fetch onnxruntime's Java API (ai.onnxruntime 1.17.0, with its linux-x64 libraries) for running the Java
# core's ONNX backend on this machine's JVM. There is no Maven here: PyPI's pyserini 1.6.0 sdist carries
# anserini's fat jar, which holds it. Both files are sha256-checked; only ai/onnxruntime/** (classes,
# linux-x64 natives) is kept, cached. Prints the jar's path; exits 3 with one line when it cannot.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${ORT_JAVA_CACHE:-$HOME/.cache/cosmoe-edge}"
JAR="$CACHE/onnxruntime-java-1.17.0-linux-x64.jar"
SDIST=pyserini-1.6.0.tar.gz
SDIST_SHA=e34761d700b33613c26bc61113effc6d65598dee6ada28a33214f79350f833f4
FAT=pyserini-1.6.0/pyserini/resources/jars/anserini-1.7.1-fatjar.jar
FAT_SHA=183bf5b53c82441b249d475f66f73aaa3e7dedd8892dece747e3680a1fda34f3

[ -f "$JAR" ] && { echo "$JAR"; exit 0; }
die() { echo "fetch_ort_java: $*" >&2; exit 3; }
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$ROOT/.venv/bin/pip" download --quiet --no-deps --no-binary :all: --no-build-isolation pyserini==1.6.0 -d "$tmp" \
    >"$tmp/pip.log" 2>&1 || die "cannot download the pyserini 1.6.0 sdist from PyPI ($(tail -1 "$tmp/pip.log"))"
echo "$SDIST_SHA  $tmp/$SDIST" | sha256sum --check --quiet - || die "$SDIST: sha256 differs from the pinned one"
tar -xzf "$tmp/$SDIST" -C "$tmp" "$FAT" || die "$SDIST holds no $FAT"
echo "$FAT_SHA  $tmp/$FAT" | sha256sum --check --quiet - || die "$FAT: sha256 differs from the pinned one"
mkdir -p "$tmp/ort" "$CACHE"
(cd "$tmp/ort" && unzip -q "$tmp/$FAT" 'ai/onnxruntime/*.class' 'ai/onnxruntime/platform/*' \
    'ai/onnxruntime/providers/*' 'ai/onnxruntime/native/linux-x64/*') || die "cannot unpack ai/onnxruntime from $FAT"
jar --create --file "$tmp/ort.jar" -C "$tmp/ort" ai
mv "$tmp/ort.jar" "$JAR"
echo "$JAR"
