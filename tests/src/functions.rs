//! Helpers of the functions' end-to-end tests (`tests/functions.rs`, `tests/hostile_functions.rs`):
//! guest modules written in WAT against ABI v1 (`functions/ABI.md`) and a gateway
//! fixture driving `grove fn`.

use std::path::Path;

use crate::{grove, Gateway};

/// A guest module: ABI v1's exports around `body` (the handler, with params `$tp $tl $pp $pl`
/// and a local `$rc`). Data at fixed offsets: 16 "ok", 32 "denied", 48 "error", 64 "n" (a kv
/// key), 96 the `topic` argument, 160 "lamp", 192 a shadow update document.
pub fn guest(body: &str, topic: &str) -> Vec<u8> {
    guest_version(body, topic, 1)
}

/// [`guest`] whose `grove_abi_version` returns `abi`.
pub fn guest_version(body: &str, topic: &str, abi: i32) -> Vec<u8> {
    guest_abi(body, topic, &format!("(i32.const {abi})"))
}

/// [`guest`] whose `grove_abi_version` has the body `abi` (WAT instructions leaving an i32).
pub fn guest_abi(body: &str, topic: &str, abi: &str) -> Vec<u8> {
    guest_module(body, topic, abi, "")
}

/// [`guest`] with more module fields (`extra`: functions the handler does not call, which make a
/// module large with code the runtime compiles).
pub fn guest_with(body: &str, topic: &str, extra: &str) -> Vec<u8> {
    guest_module(body, topic, "(i32.const 1)", extra)
}

fn guest_module(body: &str, topic: &str, abi: &str, extra: &str) -> Vec<u8> {
    let text = format!(
        r#"(module
  (import "grove" "output" (func $output (param i32 i32) (result i32)))
  (import "grove" "publish" (func $publish (param i32 i32 i32 i32 i32) (result i32)))
  (import "grove" "kv_get" (func $kv_get (param i32 i32) (result i32)))
  (import "grove" "kv_put" (func $kv_put (param i32 i32 i32 i32) (result i32)))
  (import "grove" "result" (func $result (param i32 i32) (result i32)))
  (import "grove" "log" (func $log (param i32 i32 i32)))
  (import "grove" "shadow_get" (func $shadow_get (param i32 i32 i32 i32) (result i32)))
  (import "grove" "shadow_update" (func $shadow_update (param i32 i32 i32 i32 i32 i32) (result i32)))
  (import "grove" "now_ms" (func $now_ms (result i64)))
  (memory (export "memory") 1)
  (global $count (mut i32) (i32.const 0))
  (data (i32.const 16) "ok")
  (data (i32.const 32) "denied")
  (data (i32.const 48) "error")
  (data (i32.const 64) "n")
  (data (i32.const 96) "{topic}")
  (data (i32.const 160) "lamp")
  (data (i32.const 192) "{{\"state\":{{\"desired\":{{\"on\":true}}}}}}")
  (func (export "grove_abi_version") (result i32) {abi})
  ;; One event at a time: the buffer at 4096 is reused.
  (func (export "grove_alloc") (param $n i32) (result i32)
    (if (result i32) (i32.gt_u (local.get $n) (i32.const 60000))
      (then (i32.const 0)) (else (i32.const 4096))))
  (func (export "grove_handle") (param $tp i32) (param $tl i32) (param $pp i32) (param $pl i32) (result i32)
    (local $rc i32)
    {body})
  {extra})"#,
        topic = topic,
        body = body,
        abi = abi,
        extra = extra,
    );
    wat::parse_str(&text).unwrap_or_else(|e| panic!("bad test WAT: {e}\n{text}"))
}

/// `wasm` grown to about `size` bytes by a custom section, which the runtime skips: what names
/// and debug information are in a real module.
pub fn padded(mut wasm: Vec<u8>, size: usize) -> Vec<u8> {
    use wasm_encoder::Section;
    let data = vec![0xAB; size.saturating_sub(wasm.len() + 16)];
    wasm_encoder::CustomSection {
        name: "pad".into(),
        data: data.into(),
    }
    .append_to(&mut wasm);
    wasm
}

/// Echoes the payload.
pub const ECHO: &str = "(drop (call $output (local.get $pp) (local.get $pl))) (i32.const 0)";

/// A gateway, a scratch directory for modules and manifests, and `grove fn` against it.
pub struct Fixture {
    /// The gateway.
    pub g: Gateway,
    /// Where modules and manifests are written before `grove fn deploy`.
    pub files: tempfile::TempDir,
}

impl Fixture {
    /// Starts a gateway with `extra` config.
    pub fn start(extra: &str) -> Fixture {
        Fixture::start_with_env(extra, &[])
    }

    /// Starts a gateway with `extra` config and these environment variables (kept for its
    /// restarts).
    pub fn start_with_env(extra: &str, env: &[(&str, &str)]) -> Fixture {
        Fixture {
            g: Gateway::start_with_env(extra, env),
            files: tempfile::tempdir().unwrap(),
        }
    }

    /// Runs `grove fn ARGS --config <the gateway's>`; returns (exit code, output).
    pub fn cli(&self, args: &[&str]) -> (i32, String) {
        let config = self.g.config_path();
        let mut all = vec!["fn"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--config", config.to_str().unwrap()]);
        grove(&all, self.files.path())
    }

    /// Deploys `wasm` with a manifest (the name line is added); returns (exit code, output).
    pub fn deploy(
        &self,
        name: &str,
        wasm: &[u8],
        manifest: &str,
        alias: Option<&str>,
    ) -> (i32, String) {
        let module = self.files.path().join(format!("{name}.wasm"));
        let toml = self.files.path().join(format!("{name}.toml"));
        std::fs::write(&module, wasm).unwrap();
        std::fs::write(&toml, format!("name = \"{name}\"\n{manifest}")).unwrap();
        let (m, t) = (path(&module), path(&toml));
        let mut args = vec!["deploy", m.as_str(), "--manifest", t.as_str()];
        if let Some(a) = alias {
            args.extend_from_slice(&["--alias", a]);
        }
        self.cli(&args)
    }

    /// Deploys and asserts success.
    pub fn deployed(&self, name: &str, wasm: &[u8], manifest: &str) {
        let (code, out) = self.deploy(name, wasm, manifest, None);
        assert_eq!(code, 0, "deploy {name}: {out}\n{}", self.g.log());
    }

    /// A metric of the gateway.
    pub fn metric(&self, series: &str) -> f64 {
        self.g.metric(series)
    }
}

/// A path as a string (for command-line arguments).
pub fn path(p: &Path) -> String {
    p.to_str().unwrap().to_owned()
}
