//! Builds grove-bench's second load client, `c/mqtt_load.c` on libmosquitto, into an executable
//! in OUT_DIR (its own process, so its CPU time is measured apart from the broker and from
//! grove-bench) and hands its path to the crate as `GROVE_BENCH_MQTT_LOAD`. Needs a C compiler
//! and the `libmosquitto-dev` package (mosquitto.h and libmosquitto.so).

use std::path::PathBuf;

/// The Debian/Ubuntu package with libmosquitto's header and link library.
const APT_PACKAGE: &str = "libmosquitto-dev";

fn main() {
    let source = "c/mqtt_load.c";
    println!("cargo:rerun-if-changed={source}");
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let executable = out_dir.join("mqtt-load");

    // The cc crate picks the C compiler as for any C code in a build (CC, CFLAGS, target) and
    // tells cargo to rerun this script when those change; linking is done here, not by cargo.
    let compiler = cc::Build::new().opt_level(2).warnings(false).get_compiler();
    let mut command = compiler.to_command();
    command
        .args(["-std=c99", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&executable)
        .arg(source)
        .arg("-lmosquitto");
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run the C compiler {:?}: {e}", compiler.path()));
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        if stderr.contains("mosquitto.h") || stderr.contains("-lmosquitto") {
            let message = format!(
                "libmosquitto is missing: install it with `apt-get install {APT_PACKAGE}` \
                 (grove-bench's libmosquitto load client, bench/{source}, needs mosquitto.h and \
                 libmosquitto.so)"
            );
            println!("cargo:warning={message}");
            panic!("{message}\ncompiler output:\n{stderr}");
        }
        panic!("compiling bench/{source} failed ({command:?}):\n{stderr}");
    }
    println!(
        "cargo:rustc-env=GROVE_BENCH_MQTT_LOAD={}",
        executable.display()
    );
}
