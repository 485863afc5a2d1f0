#!/usr/bin/env bash
# make apk: a signed debug APK of the Android demo, built offline (no Gradle, no Google Maven) from pinned
# packages: Debian bookworm's aapt, apksigner, zipalign and android-framework-res (installed); bullseye's dx
# (dalvik-exchange) and API-23 android.jar (libandroid-23-java) (downloaded with a throwaway apt configuration and unpacked into a
# cache, never installed); and onnxruntime 1.29's Android AAR from the npm package com.github.asus4.onnxruntime
# (its Java 17 classes set to class version 52 for dx; arm64-v8a libraries). The APK has the ONNX backend;
# ExecuTorch's Java API needs fbjni and SoLoader classes that only Maven carries, so its backend is left to the
# Gradle build (the app says so when chosen). Every download is sha256-checked.
# Writes android_demo/build/cosmoe-edge-demo-debug.apk (APK_OUT overrides) and checks it with apksigner verify
# and aapt dump badging. Exits 3 with one line when the toolchain cannot be had.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
APP="$ROOT/android_demo"
OUT="${APK_OUT:-$APP/build/cosmoe-edge-demo-debug.apk}"
CACHE="${APK_CACHE:-$HOME/.cache/cosmoe-edge/apk}"
DEBS=("dalvik-exchange=10.0.0+r36-1 8fc128db7c27253d963eb9b33de79b197162a4749d2ba69019b2fd0664cbd7fe"
      "libandroid-23-java=6.0.1+r72-6 8af1b6df556971dda0a6da3536ea526a838e0c363afcdd454213d8bce94793e3")
NPM=com.github.asus4.onnxruntime@0.4.9
NPM_SHA=e59788788818fdde1b2e522e766a21ba0f7d8391de55737abf81e32cc801785d

die() { echo "build_apk: $*" >&2; exit 3; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# 1. bookworm's tools (installed, like the JDK the Java tests use)
missing=()
for tool in aapt apksigner zipalign javac keytool npm; do command -v $tool >/dev/null || missing+=("$tool"); done
[ -f /usr/share/android-framework-res/framework-res.apk ] || missing+=(android-framework-res)
[ -f /usr/share/java/gson.jar ] || missing+=(libgoogle-gson-java)
if [ ${#missing[@]} -gt 0 ]; then
    pkgs=("${missing[@]/javac/default-jdk-headless}")
    pkgs=("${pkgs[@]/keytool/default-jdk-headless}")
    sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
    echo "installing ${pkgs[*]}"
    { $sudo apt-get install -y -q "${pkgs[@]}" >/dev/null 2>&1 ||
        { $sudo apt-get update -q >/dev/null 2>&1 && $sudo apt-get install -y -q "${pkgs[@]}" >/dev/null 2>&1; }; } ||
        die "cannot install ${pkgs[*]} from Debian"
fi

# 2. bullseye's dx and android.jar, unpacked into the cache
if [ ! -f "$CACHE/bullseye/.done" ]; then
    apt="$work/apt"
    mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/debs"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bullseye main" \
        >"$apt/sources.list"
    cat >"$apt/apt.conf" <<EOF
Dir::Etc::SourceList "$apt/sources.list";
Dir::Etc::SourceParts "/nonexistent";
Dir::State::Lists "$apt/lists";
Dir::Cache "$apt/cache";
Dir::State::status "/var/lib/dpkg/status";
APT::Sandbox::User "root";
EOF
    APT_CONFIG="$apt/apt.conf" apt-get update -q >/dev/null 2>&1 || die "cannot read Debian bullseye's package lists"
    rm -rf "$CACHE/bullseye" && mkdir -p "$CACHE/bullseye"
    for entry in "${DEBS[@]}"; do
        read -r pkg sha <<<"$entry"
        (cd "$apt/debs" && APT_CONFIG="$apt/apt.conf" apt-get download -q "$pkg" >/dev/null 2>&1) ||
            die "cannot download $pkg from Debian bullseye (has the suite left the mirror?)"
        deb="$(ls "$apt/debs"/"${pkg%%=*}"_*.deb)"
        echo "$sha  $deb" | sha256sum --check --quiet - || die "$(basename "$deb"): sha256 differs from the pinned one"
        dpkg -x "$deb" "$CACHE/bullseye"
    done
    touch "$CACHE/bullseye/.done"
fi
DX="$CACHE/bullseye/usr/lib/android-sdk/build-tools/debian/lib/dx.jar"
ANDROID_JAR="$CACHE/bullseye/usr/share/java/com.android.android-23.jar"

# 3. onnxruntime's Android AAR from npm: classes for dx, arm64 libraries
if [ ! -f "$CACHE/ort/.done" ]; then
    (cd "$work" && npm pack --silent "$NPM" >/dev/null 2>&1) || die "cannot download $NPM from npm"
    tgz="$(ls "$work"/com.github.asus4.onnxruntime-*.tgz)"
    echo "$NPM_SHA  $tgz" | sha256sum --check --quiet - || die "$(basename "$tgz"): sha256 differs from the pinned one"
    tar -xzf "$tgz" -C "$work" package/Plugins/Android/onnxruntime.aar
    rm -rf "$CACHE/ort" && mkdir -p "$CACHE/ort/classes" "$CACHE/ort/lib/arm64-v8a"
    unzip -q -o "$work/package/Plugins/Android/onnxruntime.aar" classes.jar 'jni/arm64-v8a/*' -d "$work/aar"
    unzip -q "$work/aar/classes.jar" 'ai/*' -d "$CACHE/ort/classes"
    # Java 17 class files, but no Java 9+ bytecode beyond four lambdas (dx emits invoke-custom for those, in
    # methods this app never calls): dx 1.16 takes them as version 52
    python3 - "$CACHE/ort/classes" <<'EOF'
import pathlib, sys
for p in pathlib.Path(sys.argv[1]).rglob("*.class"):
    b = bytearray(p.read_bytes())
    b[6:8] = (52).to_bytes(2, "big")
    p.write_bytes(b)
EOF
    cp "$work"/aar/jni/arm64-v8a/*.so "$CACHE/ort/lib/arm64-v8a/"
    touch "$CACHE/ort/.done"
fi

# 4. resources, classes, dex, libraries, alignment, signature
src="$work/src"
mkdir -p "$src/gen" "$src/classes" "$src/stage"
sed 's|<manifest |<manifest package="org.cosmoe.edge.demo" |' "$APP/app/src/main/AndroidManifest.xml" >"$src/AndroidManifest.xml"
aapt package -f -m -J "$src/gen" -M "$src/AndroidManifest.xml" -S "$APP/app/src/main/res" \
    -I /usr/share/android-framework-res/framework-res.apk --min-sdk-version 26 --target-sdk-version 29 \
    --version-code 1 --version-name 0.1.0 -F "$src/base.apk"
mapfile -t java < <(find "$src/gen" "$APP/core/src/main/java" "$APP/onnx/src/main/java" "$APP/app/src/main/java" \
    -name '*.java' ! -name 'ExecuTorch*.java')
javac --release 8 -encoding UTF-8 -nowarn -cp "$ANDROID_JAR:/usr/share/java/gson.jar:$CACHE/ort/classes" \
    -d "$src/classes" "${java[@]}"
cp -r "$CACHE/ort/classes/ai" "$src/classes/"
(cd "$src/classes" && unzip -q -o /usr/share/java/gson.jar 'com/*')
java -jar "$DX" --dex --min-sdk-version=26 --output="$src/stage/classes.dex" "$src/classes"
mkdir -p "$src/stage/lib/arm64-v8a"
cp "$CACHE"/ort/lib/arm64-v8a/*.so "$src/stage/lib/arm64-v8a/"
(cd "$src/stage" && aapt add "$src/base.apk" classes.dex lib/arm64-v8a/*.so >/dev/null)
zipalign -p -f 4 "$src/base.apk" "$src/aligned.apk"
[ -f "$CACHE/debug.keystore" ] || keytool -genkeypair -keystore "$CACHE/debug.keystore" -storepass android \
    -keypass android -alias debug -keyalg RSA -keysize 2048 -validity 10000 -dname "CN=cosmoe-edge debug" \
    >/dev/null 2>&1
mkdir -p "$(dirname "$OUT")"
apksigner sign --ks "$CACHE/debug.keystore" --ks-pass pass:android --out "$src/signed.apk" "$src/aligned.apk"

# 5. checks, then the APK into place
apksigner verify --verbose "$src/signed.apk" | grep -q "Verified using v2 scheme (APK Signature Scheme v2): true" ||
    { echo "build_apk: apksigner does not verify the APK" >&2; exit 1; }
badging="$(aapt dump badging "$src/signed.apk")"
for want in "package: name='org.cosmoe.edge.demo'" "sdkVersion:'26'" "native-code: 'arm64-v8a'" \
            "launchable-activity: name='org.cosmoe.edge.demo.MainActivity'"; do
    grep -qF "$want" <<<"$badging" || { echo "build_apk: aapt dump badging lacks $want" >&2; exit 1; }
done
mv "$src/signed.apk" "$OUT"
echo "wrote $OUT ($(du -h "$OUT" | cut -f1)): signed (v2), min SDK 26, arm64-v8a, ONNX backend"
