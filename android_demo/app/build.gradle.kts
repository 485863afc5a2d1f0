plugins {
    id("com.android.application")
}

android {
    namespace = "org.cosmoe.edge.demo"
    compileSdk = 35

    defaultConfig {
        applicationId = "org.cosmoe.edge.demo"
        minSdk = 26
        targetSdk = 35
        versionCode = 1
        versionName = "0.1.0"
        ndk {
            abiFilters.add("arm64-v8a")
        }
    }

    // the ONNX backend (android_demo/onnx): plain Java over onnxruntime's API, also built by the JVM test
    sourceSets["main"].java.srcDir("../onnx/src/main/java")

    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_11
        targetCompatibility = JavaVersion.VERSION_11
    }
}

dependencies {
    implementation(project(":core"))
    // the same ExecuTorch release as the Python exporter (export writes .pte files for 1.5.1);
    // the Maven artifact carries the XNNPACK backend and pulls fbjni and soloader itself
    implementation("org.pytorch:executorch-android:1.5.1")
    // the ONNX backend's runtime (ai.onnxruntime classes, libonnxruntime.so for arm64-v8a); the artifact's
    // .onnx files are IR 9, which any release from 1.17 on reads
    implementation("com.microsoft.onnxruntime:onnxruntime-android:1.22.0")
}
