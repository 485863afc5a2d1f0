// The runtime's plain-Java half: no Android imports, so scripts/test_android_core.sh compiles and
// tests it with javac and JUnit alone. Java 8's library API keeps it within what Android API 26 has.
plugins {
    `java-library`
}

tasks.withType<JavaCompile>().configureEach {
    options.release.set(8)
    options.encoding = "UTF-8"
}

dependencies {
    api("com.google.code.gson:gson:2.10.1")
    testImplementation("junit:junit:4.13.2")
}

tasks.test {
    systemProperty("conformance.dir", rootDir.resolve("../tests/conformance").canonicalPath)
}
