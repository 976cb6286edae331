//! Checks the modules `functions/build.sh` wrote against Grove function ABI v1 (functions/ABI.md).
//!
//! For each `{name}.wasm` and its `{name}.toml` in the output directory (`GROVE_FN_OUT`, default
//! `<repo>/target/functions`): the module validates; it imports exactly the expected host calls, all
//! from module `"grove"` with the ABI's signatures, and nothing else (no WASI, no `env`); it exports
//! `memory`, `grove_alloc`, the manifest's handler with the ABI's signatures, and a
//! `grove_abi_version` whose body is `i32.const 1`; and the manifest parses with the documented fields
//! only. Run build.sh first (ci.sh does).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::Deserialize;
use wasmparser::types::EntityType;
use wasmparser::{Operator, Parser, Payload, ValType, Validator};

use ValType::{I32, I64};

/// ABI v1's host imports: name, parameters, results.
const HOST_CALLS: &[(&str, &[ValType], &[ValType])] = &[
    ("output", &[I32, I32], &[I32]),
    ("publish", &[I32, I32, I32, I32, I32], &[I32]),
    ("shadow_get", &[I32, I32, I32, I32], &[I32]),
    ("shadow_update", &[I32, I32, I32, I32, I32, I32], &[I32]),
    ("kv_get", &[I32, I32], &[I32]),
    ("kv_put", &[I32, I32, I32, I32], &[I32]),
    ("kv_delete", &[I32, I32], &[I32]),
    ("config_get", &[I32, I32], &[I32]),
    ("log", &[I32, I32, I32], &[]),
    ("now_ms", &[], &[I64]),
    ("result", &[I32, I32], &[I32]),
];

/// The exports every module has besides its handler: name, parameters, results.
const GUEST_EXPORTS: &[(&str, &[ValType], &[ValType])] = &[
    ("grove_abi_version", &[], &[I32]),
    ("grove_alloc", &[I32], &[I32]),
];

/// The handler's signature: topic pointer and length, payload pointer and length -> code.
const HANDLER: (&[ValType], &[ValType]) = (&[I32, I32, I32, I32], &[I32]);

/// The manifest format of ABI.md; unknown fields are errors, so a typo in an example fails here.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // Fields are read by serde's validation; the test only needs a few of them.
struct Manifest {
    name: String,
    handler: Option<String>,
    triggers: Vec<String>,
    memory_limit_mb: Option<u32>,
    timeout_ms: Option<u64>,
    max_concurrency: Option<u32>,
    instance: Option<Instance>,
    config: Option<BTreeMap<String, String>>,
    grants: Option<Grants>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Instance {
    Reuse,
    Fresh,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // As for Manifest.
struct Grants {
    publish: Option<Vec<String>>,
    shadow_read: Option<Vec<String>>,
    shadow_update: Option<Vec<String>>,
    kv: Option<bool>,
}

fn out_dir() -> PathBuf {
    std::env::var_os("GROVE_FN_OUT").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/functions"),
        PathBuf::from,
    )
}

/// Checks module `name` and its manifest; `imports` are the host calls it must import, exactly.
fn check(name: &str, imports: &[&str]) {
    let dir = out_dir();
    let wasm = dir.join(format!("{name}.wasm"));
    let bytes = std::fs::read(&wasm)
        .unwrap_or_else(|e| panic!("{}: {e}; run functions/build.sh first", wasm.display()));
    let manifest_path = dir.join(format!("{name}.toml"));
    let manifest = std::fs::read_to_string(&manifest_path)
        .unwrap_or_else(|e| panic!("{}: {e}", manifest_path.display()));
    let manifest: Manifest =
        toml::from_str(&manifest).unwrap_or_else(|e| panic!("{}: {e}", manifest_path.display()));
    assert_eq!(manifest.name, name, "the manifest names its module");
    assert!(!manifest.triggers.is_empty(), "{name}: no triggers");

    let types = Validator::new()
        .validate_all(&bytes)
        .unwrap_or_else(|e| panic!("{name}: invalid module: {e}"));
    let types = types.as_ref();
    let signature = |entity: EntityType| match entity {
        EntityType::Func(id) => {
            let func = types[id].unwrap_func();
            Some((func.params().to_vec(), func.results().to_vec()))
        }
        _ => None,
    };

    let mut imported = BTreeSet::new();
    for (module, field, entity) in types.core_imports().expect("a core module") {
        assert_eq!(
            module, "grove",
            "{name}: import {module}.{field} is not a Grove host call"
        );
        let (_, params, results) = HOST_CALLS
            .iter()
            .find(|(call, _, _)| *call == field)
            .unwrap_or_else(|| panic!("{name}: imports grove.{field}, which ABI v1 does not have"));
        let expected = (params.to_vec(), results.to_vec());
        assert_eq!(signature(entity), Some(expected), "{name}: grove.{field}");
        imported.insert(field);
    }
    assert_eq!(
        imported,
        imports.iter().copied().collect(),
        "{name}: imports"
    );

    let exports: BTreeMap<&str, EntityType> =
        types.core_exports().expect("a core module").collect();
    assert!(
        matches!(exports.get("memory"), Some(EntityType::Memory(_))),
        "{name}: no exported memory"
    );
    let handler = manifest.handler.as_deref().unwrap_or("grove_handle");
    let required = GUEST_EXPORTS
        .iter()
        .copied()
        .chain([(handler, HANDLER.0, HANDLER.1)]);
    for (export, params, results) in required {
        let entity = *exports
            .get(export)
            .unwrap_or_else(|| panic!("{name}: does not export {export}"));
        let expected = (params.to_vec(), results.to_vec());
        assert_eq!(signature(entity), Some(expected), "{name}: export {export}");
    }
    assert_eq!(
        abi_version_body(&bytes),
        [Operator::I32Const { value: 1 }, Operator::End],
        "{name}: grove_abi_version must return the constant 1"
    );
}

/// The operators of `grove_abi_version`'s body.
fn abi_version_body(bytes: &[u8]) -> Vec<Operator<'_>> {
    let mut imported_functions = 0;
    let mut export_index = None;
    let mut bodies = Vec::new();
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.expect("validated above") {
            Payload::ImportSection(section) => {
                for imports in section {
                    for import in imports.expect("validated above") {
                        let (_, import) = import.expect("validated above");
                        if matches!(import.ty, wasmparser::TypeRef::Func(_)) {
                            imported_functions += 1;
                        }
                    }
                }
            }
            Payload::ExportSection(section) => {
                for export in section {
                    let export = export.expect("validated above");
                    if export.name == "grove_abi_version" {
                        export_index = Some(export.index);
                    }
                }
            }
            Payload::CodeSectionEntry(body) => bodies.push(body),
            _ => {}
        }
    }
    let index = export_index.expect("checked above") - imported_functions;
    let body = &bodies[usize::try_from(index).expect("32-bit index")];
    let operators = body.get_operators_reader().expect("validated above");
    operators
        .into_iter()
        .collect::<Result<_, _>>()
        .expect("validated above")
}

#[test]
fn built_modules_follow_abi_v1() {
    // One line per module build.sh writes: its name and, exactly, the host calls it imports.
    let cases: &[(&str, &[&str])] = &[
        (
            "threshold-alert",
            &[
                "config_get",
                "kv_get",
                "kv_put",
                "log",
                "now_ms",
                "output",
                "publish",
                "result",
            ],
        ),
        (
            "enricher",
            &["config_get", "log", "now_ms", "output", "publish", "result"],
        ),
        (
            "actuator",
            &[
                "config_get",
                "log",
                "output",
                "result",
                "shadow_get",
                "shadow_update",
            ],
        ),
        (
            "echo",
            &["config_get", "log", "output", "publish", "result"],
        ),
    ];
    for &(name, imports) in cases {
        check(name, imports);
    }
    let built: BTreeSet<String> = std::fs::read_dir(out_dir())
        .expect("the output directory exists after the checks above")
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            (path.extension()? == "wasm").then(|| path.file_stem()?.to_str().map(str::to_string))?
        })
        .collect();
    let checked: BTreeSet<String> = cases.iter().map(|(name, _)| name.to_string()).collect();
    assert_eq!(built, checked, "every built module is checked here");
}
