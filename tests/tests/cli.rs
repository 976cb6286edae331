//! End-to-end tests of the `grove` command line: `init`, `--version`, `--help`, and every way a
//! configuration can stop startup (clear message naming key, file and line; exit code 2).

use std::net::TcpListener;
use std::path::Path;

use grove_tests::{eventually, free_port, grove, http_get, Gateway, WAIT};

/// Writes `text` as grove.toml in `dir` and runs `grove run -c` on it.
fn run_config(dir: &Path, text: &str) -> (i32, String) {
    let path = dir.join("grove.toml");
    std::fs::write(&path, text).unwrap();
    grove(&["run", "--config", path.to_str().unwrap()], dir)
}

/// A valid config on free ports, with `extra` spliced in.
fn config(dir: &Path, extra: &str) -> String {
    format!(
        "data_dir = {:?}\n{extra}\n",
        dir.join("data").to_str().unwrap()
    )
}

#[test]
fn config_errors_stop_startup_with_exit_code_2_and_say_where() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ops = free_port();
    let ports = format!(
        "[[broker.listeners]]\nbind = \"127.0.0.1:{}\"\n[ops]\nbind = \"127.0.0.1:{ops}\"\n",
        free_port()
    );
    // One case per line: config text, then fragments the message must contain.
    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            config(d, "bogus_key = 1"),
            vec!["grove.toml:2:1", "unknown field `bogus_key`"],
        ),
        (
            config(d, "[broker]\nmax_connections = \"lots\""),
            vec![
                "grove.toml:3:19",
                "invalid type: string \"lots\", expected usize",
            ],
        ),
        (
            config(d, "[broker]\nmax_connections = 0"),
            vec!["grove.toml:3", "`broker.max_connections`", "out of range"],
        ),
        (
            config(d, "[[broker.listeners]]\nbind = \"localhost\""),
            vec!["grove.toml:3:8", "invalid socket address syntax"],
        ),
        (
            "data_dir = [1, 2]\n".to_string(),
            vec!["grove.toml:1:12", "invalid type: sequence"],
        ),
        ("[broker\n".to_string(), vec!["grove.toml:1:8"]),
    ];
    for (text, wants) in cases {
        let (code, out) = run_config(d, &format!("{text}\n{ports}"));
        assert_eq!(code, 2, "for {text:?}: {out}");
        assert!(out.contains("configuration error"), "{out}");
        for want in wants {
            assert!(
                out.contains(want),
                "for {text:?}\n  got:  {out}\n  want: {want}"
            );
        }
    }
}

#[test]
fn a_port_in_use_names_the_listener_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let text = format!(
        "data_dir = {:?}\n\n[[broker.listeners]]\nbind = \"127.0.0.1:{port}\"\n[ops]\nenabled = false\n",
        dir.path().join("data")
    );
    let (code, out) = run_config(dir.path(), &text);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("grove.toml:4: `broker.listeners[0].bind`"),
        "{out}"
    );
    assert!(out.contains("in use"), "{out}");

    let text = format!(
        "data_dir = {:?}\n[[broker.listeners]]\nbind = \"127.0.0.1:{}\"\n[ops]\nbind = \"127.0.0.1:{port}\"\n",
        dir.path().join("data"),
        free_port()
    );
    let (code, out) = run_config(dir.path(), &text);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("grove.toml:5: `ops.bind`"), "{out}");
}

#[test]
fn an_unusable_data_dir_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    // A regular file where a directory must be: refused even for root, unlike permission bits.
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let text = format!(
        "data_dir = {:?}\n[[broker.listeners]]\nbind = \"127.0.0.1:{}\"\n[ops]\nenabled = false\n",
        file.join("data"),
        free_port()
    );
    let (code, out) = run_config(dir.path(), &text);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("grove.toml:1: `data_dir`"), "{out}");
    assert!(out.contains("cannot use data directory"), "{out}");
}

#[test]
fn a_second_gateway_on_the_same_data_dir_is_refused() {
    let g = Gateway::start("");
    let text = format!(
        "data_dir = {:?}\n[[broker.listeners]]\nbind = \"127.0.0.1:{}\"\n[ops]\nenabled = false\n",
        g.data_dir(),
        free_port()
    );
    let dir = tempfile::tempdir().unwrap();
    let (code, out) = run_config(dir.path(), &text);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("in use by another process"), "{out}");
}

#[test]
fn a_missing_config_file_is_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out) = grove(&["run", "--config", "nope.toml"], dir.path());
    assert_eq!(code, 2);
    assert!(out.contains("cannot read config file nope.toml"), "{out}");
}

#[test]
fn init_writes_a_commented_default_and_a_console_password_that_run_and_refuses_to_overwrite() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let (code, out) = grove(&["init"], dir.path());
    assert_eq!(code, 0, "{out}");
    // The console's operator password: random, printed once (the last line, on stdout), stored
    // hashed and private in the data directory the file names.
    let password = out.lines().last().unwrap_or_default().to_owned();
    assert!(
        password.len() == 24 && password.chars().all(|c| c.is_ascii_hexdigit()),
        "a printed password: {out}"
    );
    let stored = dir.path().join("grove-data/console.passwd");
    let hash = std::fs::read_to_string(&stored).expect("console.passwd written");
    assert!(
        hash.starts_with("$argon2id$") && !hash.contains(&password),
        "{hash}"
    );
    let mode = std::fs::metadata(&stored).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let text = std::fs::read_to_string(dir.path().join("grove.toml")).unwrap();
    assert!(
        text.lines().filter(|l| l.starts_with('#')).count() > 10,
        "commented"
    );
    for key in [
        "data_dir",
        "max_payload_size",
        "[[broker.listeners]]",
        "[ops]",
        "filter",
    ] {
        assert!(text.contains(key), "documents {key}");
    }
    let (code, out) = grove(&["init"], dir.path());
    assert_eq!(code, 2, "refuses to overwrite: {out}");
    assert!(out.contains("--force"), "{out}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("grove.toml")).unwrap(),
        text,
        "the refused init left the file as it was"
    );
    let (code, out) = grove(&["init", "--force", "other.toml"], dir.path());
    assert_eq!(code, 0);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("other.toml")).unwrap(),
        text
    );
    // Same data directory: the password set is kept, and none is printed.
    assert!(out.contains("already set is kept"), "{out}");
    assert!(!out.contains(&password), "{out}");
    assert_eq!(std::fs::read_to_string(&stored).unwrap(), hash);
    // Asked not to, it sets none.
    let bare = tempfile::tempdir().unwrap();
    let (code, out) = grove(&["init", "--no-console-password"], bare.path());
    assert_eq!(code, 0, "{out}");
    assert!(bare.path().join("grove.toml").exists());
    assert!(
        !bare.path().join("grove-data/console.passwd").exists(),
        "{out}"
    );

    // The written file is the defaults: run it with only the ports moved off the defaults, and
    // it serves MQTT and its ops endpoint.
    let (mqtt, ops) = (free_port(), free_port());
    let text = text
        .replace("127.0.0.1:1883", &format!("127.0.0.1:{mqtt}"))
        .replace("127.0.0.1:9464", &format!("127.0.0.1:{ops}"));
    std::fs::write(dir.path().join("grove.toml"), text).unwrap();
    let log = dir.path().join("grove.log");
    let mut child = std::process::Command::new(grove_tests::workspace_bin("grove"))
        .args(["run", "--config", "grove.toml"])
        .current_dir(dir.path())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let health = eventually(WAIT, || {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "grove exited on the init config ({status}):\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::net::TcpStream::connect(("127.0.0.1", mqtt))
            .and_then(|_| std::net::TcpStream::connect(("127.0.0.1", ops)))
            .map_err(|e| format!("not serving yet: {e}"))?;
        Ok(http_get(("127.0.0.1", ops), "/healthz"))
    });
    assert_eq!(health.0, 200, "{health:?}");
    // The console on the ops endpoint takes the password `grove init` printed.
    let signed_in = grove_tests::console::Console::new(ops).sign_in(&password);
    assert_eq!(signed_in.status, 303, "{signed_in:?}");
    assert!(
        dir.path().join("grove-data/grove.db").exists(),
        "the default data dir"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn version_and_help() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out) = grove(&["--version"], dir.path());
    assert_eq!(code, 0);
    assert_eq!(out.trim(), format!("grove {}", env!("CARGO_PKG_VERSION")));
    let (code, out) = grove(&["--help"], dir.path());
    assert_eq!(code, 0);
    for sub in ["run", "init"] {
        assert!(out.contains(sub), "--help lists {sub}: {out}");
    }
    let (code, out) = grove(&["run", "--help"], dir.path());
    assert_eq!(code, 0);
    assert!(
        out.contains("GROVE_LOG"),
        "run --help documents the log filter: {out}"
    );
}
