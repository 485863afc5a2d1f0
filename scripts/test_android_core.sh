#!/usr/bin/env bash
# Compiles android_demo/core (plain Java: no Android SDK, no Gradle, no Maven) and runs its JUnit 4
# tests, including the conformance vectors the Python runtime wrote into tests/conformance/.
# Installs Debian's junit4 and libgoogle-gson-java (and a JDK) when they are missing.
# Exits non-zero on any failure, or when no test ran. --install-only: install them, and stop.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CORE="$ROOT/android_demo/core"
BUILD="$CORE/build/plain-javac"
CONFORMANCE="${CONFORMANCE_DIR:-$ROOT/tests/conformance}"
JARS=/usr/share/java
CP="$JARS/gson.jar:$JARS/junit4.jar:$JARS/hamcrest-core.jar"

install_packages() {
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get install -y -q "$@" >/dev/null 2>&1 ||
        { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q "$@" >/dev/null; }
}

missing=()
command -v javac >/dev/null || missing+=(default-jdk-headless)
[ -f "$JARS/junit4.jar" ] && [ -f "$JARS/hamcrest-core.jar" ] || missing+=(junit4)
[ -f "$JARS/gson.jar" ] || missing+=(libgoogle-gson-java)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}"
    install_packages "${missing[@]}"
fi
[ "${1:-}" = --install-only ] && exit 0  # make test: the JDK for pytest's Java tests (test_java_onnx.py)

if [ ! -f "$CONFORMANCE/generation.json" ]; then
    echo "no conformance vectors in $CONFORMANCE (write them with scripts/make_conformance.py ARTIFACT)" >&2
    exit 1
fi

rm -rf "$BUILD"
mkdir -p "$BUILD/main" "$BUILD/test"
mapfile -t main_src < <(find "$CORE/src/main/java" -name '*.java')
mapfile -t test_src < <(find "$CORE/src/test/java" -name '*.java')
# --release 8: the core runs on Android API 26+, whose Java library is (a superset of) Java 8's;
# compiling against Java 8's API keeps newer JDK methods out of the core.
javac --release 8 -encoding UTF-8 -nowarn -cp "$CP" -d "$BUILD/main" "${main_src[@]}"
javac --release 8 -encoding UTF-8 -nowarn -cp "$CP:$BUILD/main" -d "$BUILD/test" "${test_src[@]}"

mapfile -t classes < <(cd "$BUILD/test" && find . -name '*Test.class' ! -name '*$*' | sed 's|^\./||; s|\.class$||; s|/|.|g' | sort)
if [ ${#classes[@]} -eq 0 ]; then
    echo "no test classes found" >&2
    exit 1
fi

set +e
java -Dconformance.dir="$CONFORMANCE" -Dreport.schema="$ROOT/cosmoe_edge/runtime/report.schema.json" -cp "$CP:$BUILD/main:$BUILD/test" org.junit.runner.JUnitCore "${classes[@]}" \
    2>&1 | tee "$BUILD/junit.log"
status=${PIPESTATUS[0]}
set -e

ran=$(sed -n 's/^OK (\([0-9]*\) tests\{0,1\})$/\1/p; s/^Tests run: \([0-9]*\),.*/\1/p' "$BUILD/junit.log" | tail -1)
failed=$(sed -n 's/^Tests run: [0-9]*,  Failures: \([0-9]*\).*/\1/p' "$BUILD/junit.log" | tail -1)
ran=${ran:-0}
failed=${failed:-0}
echo "junit: $((ran - failed)) passed, $failed failed"
if [ "$status" -ne 0 ] || [ "$failed" -ne 0 ]; then
    exit 1
fi
if [ "$ran" -eq 0 ]; then
    echo "no test ran" >&2
    exit 1
fi
