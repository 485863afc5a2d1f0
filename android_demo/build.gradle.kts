// AGP 8.9 with Gradle 8.11.1: the pair ExecuTorch's own Android build uses.
plugins {
    id("com.android.application") version "8.9.0" apply false
}
