//! Not code: cargo needs a target in every package, and this manifest only exists to describe the
//! `grove` Debian package to cargo-deb (see `Cargo.toml` next to this file and `cross/package.sh`).
