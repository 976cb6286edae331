//! The web console (issue 21, phase 1) against the real `grove`.
//!
//! Security from outside: every route of `grove_console::ROUTES` (the one table the console's
//! router is built from, so a new route cannot escape these tests) without a session, cross-site
//! posts, the ops endpoint's bind, sessions' expiry and sign-out, and each budget under its attack
//! (wrong passwords, sessions, live streams). Then a real browser: Debian's Chromium driven
//! through chromedriver (WebDriver, fantoccini) signs in, watches a mosquitto client appear on
//! the devices page live and disconnects it from the page.

use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use fantoccini::{ClientBuilder, Locator};
use grove_console::{Access, ROUTES};
use grove_tests::console::{set_password, Console, Session, PASSWORD};
use grove_tests::{eventually, free_port, grove, Gateway, MosquittoSub, WAIT};

const DEVICES: &str = "/console/devices";
const DEVICES_EVENTS: &str = "/console/events/devices";
const DISCONNECT: &str = "/console/devices/disconnect";

/// A gateway with the operator password set, and a console client for it.
fn console_gateway(extra: &str) -> (Gateway, Console) {
    let g = Gateway::start(extra);
    set_password(&g, PASSWORD);
    let c = Console::new(g.ops_port);
    (g, c)
}

/// A device: mosquitto_sub connected as `id` (MQTT 5), subscribed.
fn device(g: &Gateway, id: &str) -> MosquittoSub {
    MosquittoSub::connect_v5(g.mqtt_port, id, "site/#")
}

fn listed(c: &Console, s: &Session, id: &str) -> bool {
    let page = c.get(DEVICES, Some(s));
    assert_eq!(page.status, 200, "{page:?}");
    page.body.contains(&format!("data-client=\"{id}\""))
}

#[test]
fn every_console_route_refuses_without_a_session() {
    let (_g, c) = console_gateway("");
    let kinds = |a: Access| ROUTES.iter().filter(|r| r.access == a).count();
    assert!(
        kinds(Access::Page) >= 2 && kinds(Access::Stream) >= 2 && kinds(Access::Change) >= 2,
        "{ROUTES:?}"
    );
    let forged = Session {
        cookie: "grove_console=0123456789abcdef".into(),
        csrf: "0123456789abcdef".into(),
    };
    for session in [None, Some(&forged)] {
        for r in ROUTES {
            let answer = match r.method {
                "GET" => c.get(r.path, session),
                "POST" => c.post(
                    r.path,
                    session,
                    &[("Origin", c.origin())],
                    &[("csrf", &forged.csrf), ("password", "not the password")],
                ),
                other => panic!("{other} {}: a method this test does not know", r.path),
            };
            let seen = (answer.status, answer.location.as_deref());
            let case = format!("{} {} with {session:?}: {answer:?}", r.method, r.path);
            match r.access {
                Access::Open => assert_eq!(seen, (200, None), "{case}"),
                // The sign-in form itself: the wrong password is refused.
                Access::SignIn => assert_eq!(seen.0, 401, "{case}"),
                Access::Page => assert_eq!(seen, (303, Some("/console/signin")), "{case}"),
                Access::Stream | Access::Change | Access::Upload => {
                    assert_eq!(seen, (401, None), "{case}")
                }
            }
            assert!(answer.set_cookie.is_none(), "{case}");
        }
    }
    // The same requests with a real session are served: the refusals above were the guard's.
    let s = c.session();
    assert_eq!(c.get("/console", Some(&s)).status, 200);
    assert_eq!(c.get(DEVICES, Some(&s)).status, 200);
    assert!(c.stream(DEVICES_EVENTS, Some(&s)).is_ok());
}

#[test]
fn the_session_cookie_is_http_only_and_strictly_same_site() {
    let (_g, c) = console_gateway("");
    let answer = c.sign_in(PASSWORD);
    assert_eq!(answer.location.as_deref(), Some("/console"), "{answer:?}");
    let cookie = answer.set_cookie.expect("a session cookie");
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/console"] {
        assert!(cookie.contains(attribute), "{attribute} in {cookie}");
    }
}

/// A refused change: what is wrong with it, its headers, its CSRF token.
type Refused<'a> = (&'a str, &'a [(&'a str, &'a str)], Option<&'a str>);

#[test]
fn a_cross_site_post_is_refused_and_only_a_same_origin_one_with_the_token_is_taken() {
    let (g, c) = console_gateway("");
    let _sensor = device(&g, "sensor-1");
    let s = c.session();
    let other = c.session();
    assert!(listed(&c, &s, "sensor-1"));
    let own = c.origin().to_owned();
    // (what is wrong, the request's headers, the form's CSRF token)
    let refused: &[Refused] = &[
        (
            "a foreign Origin",
            &[("Origin", "http://evil.example")],
            Some(&s.csrf),
        ),
        (
            "Sec-Fetch-Site: cross-site",
            &[("Origin", &own), ("Sec-Fetch-Site", "cross-site")],
            Some(&s.csrf),
        ),
        ("neither Origin nor Sec-Fetch-Site", &[], Some(&s.csrf)),
        ("no CSRF token", &[("Origin", &own)], None),
        ("a wrong CSRF token", &[("Origin", &own)], Some("0000")),
        (
            "another session's token",
            &[("Origin", &own)],
            Some(&other.csrf),
        ),
    ];
    for (case, headers, csrf) in refused {
        let mut form = vec![("client_id", "sensor-1")];
        form.extend(csrf.map(|t| ("csrf", t)));
        let answer = c.post(DISCONNECT, Some(&s), headers, &form);
        assert_eq!(answer.status, 403, "{case}: {answer:?}");
        assert!(listed(&c, &s, "sensor-1"), "{case}: still connected");
    }
    assert_eq!(g.log_count(&["disconnected by an operator"]), 0);
    // A cross-site sign-in (login CSRF) is refused before the password is looked at.
    let answer = c.post(
        "/console/signin",
        None,
        &[("Origin", "http://evil.example")],
        &[("password", PASSWORD)],
    );
    assert_eq!((answer.status, answer.set_cookie), (403, None));
    // The console's own form: taken.
    let answer = c.post(
        DISCONNECT,
        Some(&s),
        &[("Origin", &own), ("Sec-Fetch-Site", "same-origin")],
        &[("client_id", "sensor-1"), ("csrf", &s.csrf)],
    );
    assert_eq!(
        (answer.status, answer.location.as_deref()),
        (303, Some(DEVICES)),
        "{answer:?}"
    );
    g.wait_log(&["disconnected by an operator", "sensor-1"], 1);
}

#[test]
fn the_console_obeys_the_ops_bind() {
    // On 127.0.0.1: there, and nowhere else on loopback.
    let (g, c) = console_gateway("");
    assert_eq!(c.get("/console", None).status, 303);
    assert!(TcpStream::connect(("127.0.0.2", g.ops_port)).is_err());

    // The ops endpoint on every address (plain HTTP on the network): the console is not served.
    let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    let open = Gateway::start_with_ops_on(any, "");
    assert_eq!(open.http_get("/healthz").0, 200);
    assert_eq!(open.http_get("/console").0, 404);
    assert_eq!(open.http_get("/console/signin").0, 404);
    // ... unless the operator says TLS is in front.
    let allowed = Gateway::start_with_ops_on(
        any,
        "[console]\nenabled = true\nallow_network_without_tls = true\n",
    );
    assert_eq!(allowed.http_get("/console/signin").0, 200);

    // Asked for explicitly without that: a configuration error naming the way out.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("grove.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\n[console]\nenabled = true\n[[broker.listeners]]\nbind = \"127.0.0.1:{}\"\n[ops]\nbind = \"0.0.0.0:{}\"\n",
            dir.path().join("data"),
            free_port(),
            free_port()
        ),
    )
    .unwrap();
    let (code, out) = grove(&["run", "--config", config.to_str().unwrap()], dir.path());
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("allow_network_without_tls"), "{out}");
}

#[test]
fn a_request_for_another_host_name_is_refused_against_dns_rebinding() {
    // A page of rebind.example whose name was made to resolve to 127.0.0.1 (DNS rebinding)
    // reaches the console with its own name in `Host` and `Origin`, which pass the same-origin
    // checks. The console answers only requests for an IP address, localhost or a name in
    // `console.hosts`: 421 for the rest, so such a page cannot even try a password.
    let (g, c) = console_gateway("[console]\nhosts = [\"gateway.lan\"]\n");
    let port = g.ops_port;
    let rebound = format!("rebind.example:{port}");
    assert_eq!(c.get_for_host("/console/signin", &rebound).status, 421);
    let origin = format!("http://{rebound}");
    let answer = c.post(
        "/console/signin",
        None,
        &[("Host", &rebound), ("Origin", &origin)],
        &[("password", PASSWORD)],
    );
    assert_eq!(answer.status, 421, "{answer:?}");
    assert!(answer.set_cookie.is_none(), "no session: {answer:?}");
    for host in [format!("gateway.lan:{port}"), format!("localhost:{port}")] {
        assert_eq!(
            c.get_for_host("/console/signin", &host).status,
            200,
            "{host}"
        );
    }
}

/// Waits until the console ends the live stream `s` holds open (the session is over), then
/// checks that the session's pages redirect to the sign-in page.
fn wait_session_over(c: &Console, s: &Session, mut stream: grove_tests::console::Stream) {
    while stream.next_event().is_some() {}
    let page = c.get(DEVICES, Some(s));
    assert_eq!(
        (page.status, page.location.as_deref()),
        (303, Some("/console/signin"))
    );
}

#[test]
fn sessions_end_when_idle_and_at_their_absolute_expiry() {
    let cases = [
        ("idle", "[console]\nidle_timeout_s = 3\n"),
        (
            "absolute",
            "[console]\nidle_timeout_s = 3600\nsession_max_s = 3\n",
        ),
    ];
    for (case, extra) in cases {
        let (_g, c) = console_gateway(extra);
        let s = c.session();
        let mut stream = c.stream(DEVICES_EVENTS, Some(&s)).expect(case);
        assert!(stream.next_event().is_some(), "{case}: first fragment");
        // The stream looks at the session without using it; it ends when the session does.
        wait_session_over(&c, &s, stream);
    }
}

#[test]
fn signing_out_ends_the_session_and_its_streams() {
    let (_g, c) = console_gateway("");
    let s = c.session();
    let mut stream = c.stream(DEVICES_EVENTS, Some(&s)).unwrap();
    assert!(stream.next_event().is_some());
    let answer = c.post(
        "/console/signout",
        Some(&s),
        &[("Origin", c.origin())],
        &[("csrf", &s.csrf)],
    );
    assert_eq!(answer.location.as_deref(), Some("/console/signin"));
    assert!(answer.set_cookie.unwrap().contains("Max-Age=0"));
    wait_session_over(&c, &s, stream);
}

#[test]
fn a_burst_of_wrong_passwords_is_held_to_the_sign_in_budget() {
    let (g, c) = console_gateway("");
    // 8 peers at once, 4 wrong passwords each.
    let answers: Vec<_> = std::thread::scope(|scope| {
        let peers: Vec<_> = (0..8)
            .map(|_| scope.spawn(|| (0..4).map(|_| c.sign_in("wrong")).collect::<Vec<_>>()))
            .collect();
        peers.into_iter().flat_map(|p| p.join().unwrap()).collect()
    });
    let checked = answers.iter().filter(|a| a.status == 401).count();
    let refused: Vec<_> = answers.iter().filter(|a| a.status == 429).collect();
    assert_eq!(checked + refused.len(), 32, "{answers:?}");
    // One password check at a time, 5 failures a minute: everything else is refused without an
    // argon2 run, with when to come back.
    assert!((1..=5).contains(&checked), "{checked} passwords checked");
    assert!(refused.iter().all(|a| a.retry_after.is_some()));
    // One at a time, the rest of the budget: exactly 5 failures are checked in all.
    let sequential: Vec<u16> = (0..10).map(|_| c.sign_in("wrong").status).collect();
    let checked = checked + sequential.iter().filter(|s| **s == 401).count();
    assert_eq!(checked, 5, "{sequential:?}");
    assert!(sequential.ends_with(&[429; 5]), "{sequential:?}");
    assert_eq!(
        g.log_count(&["console: a sign-in with a wrong password"]),
        5
    );
    // Spent: even the right password waits for the window to slide.
    let answer = c.sign_in(PASSWORD);
    assert_eq!((answer.status, answer.set_cookie), (429, None));
}

#[test]
fn sign_ins_beyond_the_session_budget_end_the_least_recently_used() {
    let (_g, c) = console_gateway("");
    let sessions: Vec<Session> = (0..9).map(|_| c.session()).collect();
    // 8 live at most: the first (least recently used) is gone, the others are live.
    assert_eq!(c.get("/console", Some(&sessions[0])).status, 303);
    for s in &sessions[1..] {
        assert_eq!(c.get("/console", Some(s)).status, 200);
    }
}

#[test]
fn live_streams_are_held_to_their_budget() {
    let (_g, c) = console_gateway("");
    let s = c.session();
    let mut open: Vec<_> = (0..16)
        .map(|i| {
            let mut stream = c
                .stream(DEVICES_EVENTS, Some(&s))
                .unwrap_or_else(|a| panic!("stream {i}: {a:?}"));
            assert!(stream.next_event().is_some());
            stream
        })
        .collect();
    let refused = c
        .stream(DEVICES_EVENTS, Some(&s))
        .err()
        .expect("a 17th stream refused");
    assert_eq!(refused.status, 503, "{refused:?}");
    assert_eq!(
        c.stream("/console/events/overview", Some(&s))
            .err()
            .map(|a| a.status),
        Some(503)
    );
    // Pages still answer, and a closed stream's place comes back.
    assert_eq!(c.get(DEVICES, Some(&s)).status, 200);
    open.pop();
    eventually(WAIT, || {
        c.stream(DEVICES_EVENTS, Some(&s))
            .map(drop)
            .map_err(|a| format!("still refused: {}", a.status))
    });
}

/// Debian's Chromium, headless, driven through its chromedriver (WebDriver) by fantoccini.
struct Browser {
    web: fantoccini::Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts Chromium with the machine's flags and `extra` ones.
    async fn start(extra: &[&str]) -> Browser {
        let port = free_port();
        // Its own process group, so that a failed test's drop ends Chromium with it (Chromium is
        // chromedriver's child, in its group; killing chromedriver alone would leave it running).
        let driver = Command::new("/usr/bin/chromedriver")
            .process_group(0)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian's chromium-driver, installed by scripts/test.sh)");
        eventually(WAIT, || {
            TcpStream::connect(("127.0.0.1", port))
                .map(drop)
                .map_err(|e| format!("chromedriver on {port}: {e}"))
        });
        let profile = tempfile::tempdir().unwrap();
        // The flags this machine needs (no sandbox as root, no network beyond loopback).
        let user_data = format!("--user-data-dir={}", profile.path().display());
        let mut args = vec![
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,900",
            &user_data,
        ];
        args.extend_from_slice(extra);
        let capabilities = serde_json::json!({
            "goog:chromeOptions": { "binary": "/usr/bin/chromium", "args": args }
        });
        let serde_json::Value::Object(capabilities) = capabilities else {
            unreachable!()
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let web = ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a Chromium session");
        Browser {
            web,
            driver,
            _profile: profile,
        }
    }

    async fn wait(&self, css: &str) -> fantoccini::elements::Element {
        self.web
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}\n{}", futures_source(&self.web)))
    }

    async fn click(&self, css: &str) {
        self.wait(css).await.click().await.unwrap();
    }

    /// The page's background colour, as the style sheet resolved it.
    async fn background(&self) -> String {
        let script = "return getComputedStyle(document.body).backgroundColor";
        let colour = self.web.execute(script, Vec::new()).await.unwrap();
        colour.as_str().unwrap_or_default().to_owned()
    }

    /// Signs in on the console at `origin` with the sign-in form.
    async fn sign_in(&self, origin: &str) {
        self.web.goto(&format!("{origin}/console")).await.unwrap();
        let password = self.wait("form input#password").await;
        password.send_keys(PASSWORD).await.unwrap();
        self.click("form button[type=submit]").await;
        self.wait("dd#health").await;
    }

    async fn screenshot(&self, dir: &Path, name: &str) {
        let png = self.web.screenshot().await.expect("a screenshot");
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The whole group: chromedriver and the Chromium it started (`kill -- -PGID`).
        let group = format!("-{}", self.driver.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.driver.wait();
    }
}

/// Where the browser test saves its screenshots (printed by the test); with
/// `GROVE_CONSOLE_DOCS=1` they are also copied to `docs/console/` for the README.
fn screenshot_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    println!("console screenshots: {}", dir.display());
    dir
}

#[tokio::test(flavor = "multi_thread")]
async fn in_a_browser_a_device_appears_live_and_is_disconnected_from_the_page() {
    let (g, c) = console_gateway(RULES);
    let shots = screenshot_dir();
    let b = Browser::start(&[]).await;
    // Without a session the console sends the browser to the sign-in page.
    b.web
        .goto(&format!("{}/console", c.origin()))
        .await
        .unwrap();
    let password = b.wait("form input#password").await;
    assert!(b
        .web
        .current_url()
        .await
        .unwrap()
        .path()
        .ends_with("/console/signin"));
    b.screenshot(&shots, "signin").await;
    password.send_keys(PASSWORD).await.unwrap();
    b.click("form button[type=submit]").await;
    // The overview, live.
    b.wait("dd#health").await;
    b.wait("p.stream[data-state=live]").await;
    // A chart with a line: the sampler's third reading (5 s apart), as the stream brought it.
    b.wait(".chart polyline[points*=' ']").await;
    b.screenshot(&shots, "overview").await;
    let light = b.background().await;
    // The devices page: nothing connected yet; then a mosquitto client appears without a reload.
    b.click("a[href='/console/devices']").await;
    b.wait("#clients").await;
    b.wait("p.stream[data-state=live]").await;
    let _sensor = device(&g, "sensor-1");
    let row = b.wait("#clients tr[data-client='sensor-1']").await;
    let peer = row
        .attr("data-peer")
        .await
        .unwrap()
        .expect("the row's address");
    b.screenshot(&shots, "devices").await;
    // A phone-sized window.
    b.web.set_window_size(390, 844).await.unwrap();
    b.wait("#clients tr[data-client='sensor-1']").await;
    b.screenshot(&shots, "devices-narrow").await;
    b.web.set_window_size(1280, 900).await.unwrap();
    // By keyboard: focus the row's button and press Enter.
    let button = b.wait("button[aria-label='Disconnect sensor-1']").await;
    button.send_keys("\u{E007}").await.unwrap();
    // That connection goes (mosquitto_sub may come back on a new connection: a new address).
    b.wait(&format!("#clients tbody:not(:has(tr[data-peer='{peer}']))"))
        .await;
    g.wait_log(&["disconnected by an operator", "sensor-1"], 1);
    b.screenshot(&shots, "devices-after-disconnect").await;
    // The topics page: a filter typed and submitted with Enter, then a message arrives live and
    // its JSON is shown pretty-printed.
    b.click("a[href='/console/topics']").await;
    let filter = b.wait("input#filter").await;
    filter.send_keys("site/+/temp\u{E007}").await.unwrap();
    b.wait("p#messages").await;
    b.wait("p.stream[data-state=live]").await;
    grove_tests::blocking(|| {
        grove_tests::mosquitto_pub(
            g.mqtt_port,
            &["-t", "site/kitchen/temp", "-m", r#"{"c":21.5,"unit":"C"}"#],
        )
    });
    let payload = b.wait("ol#messages li.message pre.payload").await;
    assert_eq!(
        payload.text().await.unwrap(),
        "{\n  \"c\": 21.5,\n  \"unit\": \"C\"\n}"
    );
    b.screenshot(&shots, "topics").await;
    // A shadow: found on the shadows page, its desired state edited in the page's form, and the
    // device gets the delta while the page shows it pending.
    let mqtt = g.mqtt_port.to_string();
    grove_tests::blocking(|| {
        grove_tests::mosquitto_pub(
            g.mqtt_port,
            &[
                "-t",
                "$aws/things/lamp-1/shadow/update",
                "-m",
                r#"{"state":{"reported":{"on":false}}}"#,
            ],
        )
    });
    b.click("a[href='/console/shadows']").await;
    b.click("#shadows a[href*='lamp-1']").await;
    b.wait("#reported-now").await;
    b.wait("p.stream[data-state=live]").await;
    let delta = MosquittoSub::start(&[
        "-h",
        "127.0.0.1",
        "-p",
        &mqtt,
        "-t",
        "$aws/things/lamp-1/shadow/update/delta",
        "-C",
        "1",
        "-W",
        "20",
    ]);
    let desired = b.wait("textarea#desired").await;
    desired.clear().await.unwrap();
    desired.send_keys(r#"{"on": true}"#).await.unwrap();
    b.click("form.desired button[type=submit]").await;
    b.wait(".sides section.delta").await;
    let (got, ok) = grove_tests::blocking(|| delta.finish());
    assert!(
        ok && got[0].contains(r#""on":true"#),
        "the device's delta: {got:?}"
    );
    b.screenshot(&shots, "shadow").await;
    // A rule: listed with its counters, then a statement tried on a message in the page's form
    // (nothing published).
    b.click("a[href='/console/rules']").await;
    b.wait("#rules tr[data-rule='apply']").await;
    let sql = b.wait("textarea#sql").await;
    sql.clear().await.unwrap();
    sql.send_keys("SELECT state.reported.on AS on FROM 'apply/+'")
        .await
        .unwrap();
    let topic = b.wait("input#topic").await;
    topic.send_keys("apply/lamp-1").await.unwrap();
    let payload = b.wait("textarea#payload").await;
    payload.clear().await.unwrap();
    payload
        .send_keys(r#"{"state":{"reported":{"on":true}}}"#)
        .await
        .unwrap();
    b.click("button#run-test").await;
    let outcome = b.wait("pre#outcome").await;
    assert_eq!(outcome.text().await.unwrap().trim(), r#"{"on":true}"#);
    b.screenshot(&shots, "rules").await;
    // A function: its module chosen in the upload form's file input and deployed, then invoked
    // from its page.
    let module = shots.join("echo.wasm");
    std::fs::write(
        &module,
        grove_tests::functions::guest(grove_tests::functions::ECHO, ""),
    )
    .unwrap();
    b.click("a[href='/console/functions']").await;
    b.wait("p#functions").await;
    let file = b.wait("input#module").await;
    file.send_keys(module.to_str().unwrap()).await.unwrap();
    let manifest = b.wait("textarea#manifest").await;
    manifest.clear().await.unwrap();
    manifest.send_keys("name = \"echo\"\n").await.unwrap();
    b.click("button#deploy").await;
    let payload = b.wait("form.invoke textarea#payload").await;
    payload.clear().await.unwrap();
    payload.send_keys(r#"{"hello":"browser"}"#).await.unwrap();
    b.click("button#invoke").await;
    let answer = b.wait("pre#answer").await.text().await.unwrap();
    assert!(
        answer.contains(r#""status": "ok""#) && answer.contains(r#""hello": "browser""#),
        "{answer}"
    );
    b.screenshot(&shots, "function").await;
    b.click("a[href='/console/deployments']").await;
    b.wait("p#deployments").await;
    b.wait("p.stream[data-state=live]").await;
    b.screenshot(&shots, "deployments").await;
    b.web.clone().close().await.unwrap();
    // Light above (the machine's default scheme); dark where the system asks for it.
    assert_eq!(light, "rgb(250, 250, 247)");
    let dark = Browser::start(&["--force-dark-mode"]).await;
    dark.sign_in(c.origin()).await;
    assert_eq!(dark.background().await, "rgb(20, 22, 18)");
    dark.screenshot(&shots, "overview-dark").await;
    dark.web.clone().close().await.unwrap();
    if std::env::var_os("GROVE_CONSOLE_DOCS").is_some() {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/console");
        std::fs::create_dir_all(&docs).unwrap();
        for name in [
            "signin",
            "overview",
            "overview-dark",
            "devices",
            "devices-narrow",
            "topics",
            "shadow",
            "rules",
            "function",
            "deployments",
        ] {
            let file = format!("{name}.png");
            std::fs::copy(shots.join(&file), docs.join(&file)).unwrap();
        }
    }
}
fn futures_source(web: &fantoccini::Client) -> String {
    let web = web.clone();
    std::thread::spawn(move || {
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(async { format!("{:?} {:?}", web.current_url().await, web.source().await) })
    })
    .join()
    .unwrap()
}

#[test]
fn the_cli_disconnects_through_the_same_checks_as_the_console() {
    let (g, c) = console_gateway("");
    let _sensor = device(&g, "sensor-2");
    let s = c.session();
    assert!(listed(&c, &s, "sensor-2"));
    let config = g.config_path();
    let config = config.to_str().unwrap();
    let (code, out) = grove(
        &["clients", "disconnect", "nobody", "--config", config],
        g.dir.path(),
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("no client \"nobody\" is connected"), "{out}");
    let (code, out) = grove(
        &["clients", "disconnect", "sensor-2", "--config", config],
        g.dir.path(),
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("sensor-2: 1 connection(s) closed"), "{out}");
    // It has ended when the command returns.
    assert!(!listed(&c, &s, "sensor-2"));
    g.wait_log(&["an operator disconnects a client", "sensor-2"], 1);
}

#[test]
fn the_devices_stream_shows_identities_as_the_devices_file_changes() {
    let (g, c) = console_gateway("");
    let s = c.session();
    let mut stream = c.stream(DEVICES_EVENTS, Some(&s)).unwrap();
    let first = stream.next_event().unwrap();
    assert!(first.contains("No device is registered"), "{first}");
    grove_tests::grove_device(
        &g.config_path(),
        &["add", "pump-1", "--password-stdin", "--thing", "pump-thing"],
        Some("pump-1-password\n"),
    );
    // The next fragment lists it (a new one is sent only when something changed).
    let next = stream.next_event().unwrap();
    assert!(
        next.contains("<code>pump-1</code>") && next.contains("pump-thing"),
        "{next}"
    );
}

#[test]
fn the_topics_page_streams_a_filters_messages_newest_first_with_json_pretty_printed() {
    let (g, c) = console_gateway("");
    let s = c.session();
    let watched = "/console/events/topics?filter=site%2F%2B%2Ftemp";
    let page = c.get("/console/topics?filter=site%2F%2B%2Ftemp", Some(&s));
    assert_eq!(page.status, 200, "{page:?}");
    assert!(
        page.body.contains(&format!("data-stream=\"{watched}\"")),
        "{}",
        page.body
    );
    let mut stream = c.stream(watched, Some(&s)).expect("a topics stream");
    // The stream answers once the subscription is in place: what is published now reaches it.
    let first = stream.next_event().expect("the first fragment");
    assert!(first.contains("no message yet"), "{first}");
    grove_tests::mosquitto_pub(
        g.mqtt_port,
        &["-t", "site/kitchen/temp", "-m", r#"{"c":21.5,"unit":"C"}"#],
    );
    grove_tests::mosquitto_pub(g.mqtt_port, &["-t", "site/kitchen/humidity", "-m", "40"]);
    grove_tests::mosquitto_pub(g.mqtt_port, &["-t", "site/hall/temp", "-m", "<b>hot</b>"]);
    let shown = loop {
        let fragment = stream
            .next_event()
            .expect("fragments until both messages are shown");
        if fragment.contains("site/hall/temp") && fragment.contains("site/kitchen/temp") {
            break fragment;
        }
    };
    // Pretty-printed JSON (escaped as text), a text payload escaped, newest first, and only
    // what the filter matches.
    assert!(
        shown.contains("{\n  &quot;c&quot;: 21.5,\n  &quot;unit&quot;: &quot;C&quot;\n}"),
        "{shown}"
    );
    assert!(
        shown.contains("&lt;b&gt;hot&lt;/b&gt;") && !shown.contains("<b>"),
        "{shown}"
    );
    assert!(
        shown.find("site/hall/temp") < shown.find("site/kitchen/temp"),
        "newest first: {shown}"
    );
    assert!(!shown.contains("humidity"), "{shown}");

    // Refused filters are answered, not watched.
    for (filter, why) in [
        ("a%2F%23%2Fb", "#"),
        ("%24share%2Fg%2Fsite%2F%23", "shared subscription"),
        ("", "no filter"),
    ] {
        match c.stream(&format!("/console/events/topics?filter={filter}"), Some(&s)) {
            Err(answer) => {
                assert_eq!(answer.status, 400, "{filter}: {answer:?}");
                assert!(answer.body.contains(why), "{filter}: {answer:?}");
            }
            Ok(_) => panic!("{filter} was watched"),
        }
    }
}

/// Posts the shadow page's form: `desired` for the classic shadow of `thing`.
fn set_desired(
    c: &Console,
    s: &Session,
    thing: &str,
    desired: &str,
) -> grove_tests::console::Answer {
    c.post(
        "/console/shadow/desired",
        Some(s),
        &[("Origin", c.origin())],
        &[
            ("csrf", &s.csrf),
            ("thing", thing),
            ("shadow", ""),
            ("desired", desired),
        ],
    )
}

#[test]
fn a_shadow_is_found_shown_live_with_its_delta_and_its_desired_state_set_from_the_console() {
    let (g, c) = console_gateway("");
    let s = c.session();
    let mqtt = g.mqtt_port.to_string();
    // A device reports its state (AWS IoT Device Shadow over MQTT, mosquitto's own client).
    grove_tests::mosquitto_pub(
        g.mqtt_port,
        &[
            "-t",
            "$aws/things/lamp-7/shadow/update",
            "-m",
            r#"{"state":{"reported":{"on":false}}}"#,
        ],
    );
    // Listed, and found by a search; another search finds nothing.
    let listed = eventually(WAIT, || {
        let page = c.get("/console/shadows?q=LAMP", Some(&s));
        match page.body.contains("lamp-7") {
            true => Ok(page),
            false => Err(format!("not listed yet: {page:?}")),
        }
    });
    assert_eq!(listed.status, 200);
    assert!(
        listed
            .body
            .contains("href=\"/console/shadow?thing=lamp-7&amp;shadow=\""),
        "{}",
        listed.body
    );
    let none = c.get("/console/shadows?q=pump", Some(&s));
    assert!(none.body.contains("No shadow matches"), "{}", none.body);

    // Its page, live: version 1, reported, no delta.
    let page = c.get("/console/shadow?thing=lamp-7&shadow=", Some(&s));
    assert_eq!(page.status, 200, "{page:?}");
    let mut stream = c
        .stream("/console/events/shadow?thing=lamp-7&shadow=", Some(&s))
        .expect("the shadow's stream");
    let first = stream.next_event().expect("the first fragment");
    assert!(
        first.contains("Version 1") && first.contains("&quot;on&quot;: false"),
        "{first}"
    );
    assert!(!first.contains("a delta is pending"), "{first}");

    // The device listens for its delta; the operator sets desired from the console.
    let delta = MosquittoSub::start(&[
        "-h",
        "127.0.0.1",
        "-p",
        &mqtt,
        "-t",
        "$aws/things/lamp-7/shadow/update/delta",
        "-C",
        "1",
        "-W",
        "20",
    ]);
    let set = set_desired(&c, &s, "lamp-7", r#"{"on": true}"#);
    assert_eq!(set.status, 303, "{set:?}");
    assert_eq!(
        set.location.as_deref(),
        Some("/console/shadow?thing=lamp-7&shadow=")
    );
    let (got, ok) = delta.finish();
    assert!(ok, "the device got its delta: {got:?}");
    let doc: serde_json::Value = serde_json::from_str(&got[0]).unwrap();
    assert_eq!(doc["state"], serde_json::json!({"on": true}), "{doc}");
    // The page shows it without a reload: version 2, the delta pending and marked.
    let live = loop {
        let fragment = stream
            .next_event()
            .expect("fragments until the update shows");
        if fragment.contains("Version 2") {
            break fragment;
        }
    };
    assert!(live.contains("a delta is pending"), "{live}");
    assert!(live.contains("class=\"delta\""), "{live}");

    // Refused: JSON that is not, and a desired state the shadow service refuses; the page comes
    // back with the text and why (400), and the shadow is unchanged.
    for (text, why) in [
        ("{on: true", "not JSON"),
        ("42", "Desired node must be an object"),
    ] {
        let refused = set_desired(&c, &s, "lamp-7", text);
        assert_eq!(refused.status, 400, "{text}: {refused:?}");
        assert!(
            refused.body.contains(why) && refused.body.contains("role=\"alert\""),
            "{refused:?}"
        );
    }
    let page = c.get("/console/shadow?thing=lamp-7&shadow=", Some(&s));
    assert!(page.body.contains("Version 2"), "{}", page.body);
    // A shadow that does not exist, and a name no shadow can have.
    assert_eq!(
        c.get("/console/shadow?thing=nothing-here&shadow=", Some(&s))
            .status,
        404
    );
    let bad = c.stream("/console/events/shadow?thing=a%2Fb&shadow=", Some(&s));
    assert!(
        matches!(bad, Err(ref a) if a.status == 400),
        "{:?}",
        bad.err()
    );
}

#[test]
fn the_cloud_page_follows_the_links_state_live() {
    // Without a cloud: said so.
    let (_g, c) = console_gateway("");
    let s = c.session();
    let page = c.get("/console/cloud", Some(&s));
    assert_eq!(page.status, 200, "{page:?}");
    assert!(page.body.contains("no [cloud] section"), "{}", page.body);

    // A cloud broker (mosquitto) that goes away: the page shows the link up, then down with the
    // error and the messages waiting, without a reload.
    let mut cloud = grove_tests::Mosquitto::start();
    let (g, c) = console_gateway(&format!(
        "[cloud]\nhost = \"127.0.0.1\"\nport = {}\nplain_tcp = true\nclient_id = \"edge-1\"\nthing = \"edge-1\"\nmax_backoff_ms = 1000\nforward = [{{ filter = \"t/#\" }}]\n",
        cloud.port
    ));
    let s = c.session();
    g.wait_metric("grove_cloud_link_up", |v| v == 1.0);
    let mut stream = c
        .stream("/console/events/cloud", Some(&s))
        .expect("the cloud stream");
    let up = stream.next_event().expect("the first fragment");
    assert!(
        up.contains("<dd>connected</dd>") && up.contains("shadow sync"),
        "{up}"
    );
    cloud.stop();
    g.wait_metric("grove_cloud_link_up", |v| v == 0.0);
    grove_tests::mosquitto_pub(g.mqtt_port, &["-t", "t/1", "-q", "1", "-m", "waiting"]);
    let down = loop {
        let fragment = stream
            .next_event()
            .expect("fragments until the link is down");
        if fragment.contains("<dd>disconnected</dd>") && fragment.contains("1 messages") {
            break fragment;
        }
    };
    assert!(down.contains("last error"), "{down}");
}

/// The counters the rules page shows for `rule` in a fragment: matched, outputs, failed actions,
/// dropped (the row's numeric cells, in order).
fn rule_counts(fragment: &str, rule: &str) -> Vec<u64> {
    let row = fragment
        .split("<tr data-rule=\"")
        .find(|r| r.starts_with(&format!("{rule}\"")))
        .unwrap_or_else(|| panic!("no row for {rule}: {fragment}"));
    let row = &row[..row.find("</tr>").unwrap_or(row.len())];
    row.split("<td class=\"num")
        .skip(1)
        .map(|cell| {
            let value = &cell[cell.find('>').expect("a cell") + 1..];
            value[..value.find('<').expect("its end")]
                .parse()
                .expect("a count")
        })
        .collect()
}

const RULES: &str = r#"
[[rules]]
name = "apply"
sql = "SELECT state FROM 'apply/+'"
actions = [{ shadow = { thing = "${topic(2)}" } }]
error_action = { republish = { topic = "errors/${topic(2)}" } }
"#;

#[test]
fn the_rules_page_shows_counters_and_the_last_failure_live_and_tests_a_statement() {
    let (g, c) = console_gateway(RULES);
    let s = c.session();
    let page = c.get("/console/rules", Some(&s));
    assert_eq!(page.status, 200, "{page:?}");
    assert!(
        page.body
            .contains("<code>SELECT state FROM 'apply/+'</code>"),
        "{}",
        page.body
    );
    assert!(
        page.body
            .contains("update the classic shadow of ${topic(2)}")
            && page
                .body
                .contains("on error: republish to errors/${topic(2)} (QoS 0)"),
        "{}",
        page.body
    );
    let mut stream = c
        .stream("/console/events/rules", Some(&s))
        .expect("the rules stream");
    let first = stream.next_event().expect("the first fragment");
    assert_eq!(rule_counts(&first, "apply"), [0, 0, 0, 0], "{first}");

    // A device's update the shadow service takes, then one it refuses (AWS: "delta" is not a
    // state a device may write): the page follows, and shows the refusal as the last failure.
    let next_with = |stream: &mut grove_tests::console::Stream, counts: [u64; 4]| loop {
        let fragment = stream
            .next_event()
            .expect("fragments until the counts show");
        if rule_counts(&fragment, "apply") == counts {
            break fragment;
        }
    };
    let publish = |thing: &str, payload: &str| {
        grove_tests::mosquitto_pub(
            g.mqtt_port,
            &["-t", &format!("apply/{thing}"), "-q", "1", "-m", payload],
        )
    };
    publish("t1", r#"{"state":{"reported":{"a":1}}}"#);
    let ok = next_with(&mut stream, [1, 1, 0, 0]);
    assert!(ok.contains("<td>none</td>"), "{ok}");
    publish("t2", r#"{"state":{"delta":{"a":1}}}"#);
    let failed = next_with(&mut stream, [2, 2, 1, 0]);
    assert!(
        failed.contains("IotShadowAction on t2: ")
            && failed.contains("400 State contains an invalid node: 'delta'"),
        "{failed}"
    );
    assert!(failed.contains("class=\"num failed\""), "{failed}");
    g.wait_metric("grove_rule_action_failures_total{rule=\"apply\"}", |v| {
        v == 1.0
    });

    // The test form: outputs, a WHERE that lets nothing through, and a statement that does not
    // compile, with its line and column (400).
    let test = |sql: &str, payload: &str| {
        c.post(
            "/console/rules/test",
            Some(&s),
            &[("Origin", c.origin())],
            &[
                ("csrf", &s.csrf),
                ("sql", sql),
                ("topic", "site/a/temp"),
                ("client_id", "dev-1"),
                ("payload", payload),
            ],
        )
    };
    let hot = "SELECT temp * 2 AS t, topic(2) AS at FROM 'site/+/temp' WHERE temp > 30";
    let out = test(hot, r#"{"temp": 31}"#);
    assert_eq!(out.status, 200, "{out:?}");
    assert!(
        out.body
            .contains("{&quot;t&quot;:62,&quot;at&quot;:&quot;a&quot;}"),
        "{}",
        out.body
    );
    let none = test(hot, r#"{"temp": 20}"#);
    assert_eq!(none.status, 200, "{none:?}");
    assert!(none
        .body
        .contains("the WHERE clause did not let the message through"));
    let bad = test("SELECT temp\nFROM 'site/+/temp' WHERE", "{}");
    assert_eq!(bad.status, 400, "{bad:?}");
    assert!(
        bad.body.contains("at line 2, column") && bad.body.contains("role=\"alert\""),
        "{}",
        bad.body
    );
    let no_topic = rules_form(&c, &s, "/console/rules/test", "apply", hot);
    assert_eq!(no_topic.status, 400, "{no_topic:?}");
    assert!(
        no_topic.body.contains("a test needs its message's topic"),
        "{}",
        no_topic.body
    );
}

/// Posts the rules page's form to `path` with `rule` and `sql` only (no test message).
fn rules_form(
    c: &Console,
    s: &Session,
    path: &str,
    rule: &str,
    sql: &str,
) -> grove_tests::console::Answer {
    c.post(
        path,
        Some(s),
        &[("Origin", c.origin())],
        &[("csrf", &s.csrf), ("rule", rule), ("sql", sql)],
    )
}

#[test]
fn a_rule_edited_in_the_console_is_saved_in_the_file_and_applied_and_what_fails_changes_nothing() {
    let (g, c) = console_gateway(RULES);
    let s = c.session();
    let config = g.config_path();
    let save = |rule: &str, sql: &str| rules_form(&c, &s, "/console/rules/save", rule, sql);

    // A new statement: in the file, the rest of the file as it was, and running (a device's
    // message on the new filter reaches the rule).
    let before = std::fs::read_to_string(&config).unwrap();
    let saved = save("apply", "SELECT state FROM 'apply/#'");
    assert_eq!(saved.status, 200, "{saved:?}");
    assert!(
        saved
            .body
            .contains("Saved in the configuration file and applied; running: apply")
            && saved
                .body
                .contains("<code>SELECT state FROM 'apply/#'</code>"),
        "{}",
        saved.body
    );
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        before.replace("SELECT state FROM 'apply/+'", "SELECT state FROM 'apply/#'")
    );
    grove_tests::mosquitto_pub(
        g.mqtt_port,
        &[
            "-t",
            "apply/t9/deeper",
            "-q",
            "1",
            "-m",
            r#"{"state":{"reported":{"a":1}}}"#,
        ],
    );
    g.wait_metric("grove_rule_matched_total{rule=\"apply\"}", |v| v == 1.0);
    g.wait_log(&["console: a rule changed and applied by an operator"], 1);

    // Refused, the file unchanged: a statement that does not compile (its line and column), a
    // rule the file does not have.
    let now = std::fs::read_to_string(&config).unwrap();
    let bad = save("apply", "SELECT state\nFROM 'apply/#' WHERE");
    assert_eq!(bad.status, 400, "{bad:?}");
    assert!(
        bad.body.contains("at line 2, column") && bad.body.contains("role=\"alert\""),
        "{}",
        bad.body
    );
    let missing = save("nope", "SELECT * FROM 'x'");
    assert_eq!(missing.status, 400, "{missing:?}");
    assert!(
        missing.body.contains("no rule named &quot;nope&quot;"),
        "{}",
        missing.body
    );
    assert_eq!(std::fs::read_to_string(&config).unwrap(), now);

    // The reload: a second rule added to the file runs; a file that does not compile changes
    // nothing and says why.
    let text = now;
    let added = format!(
        "{text}\n[[rules]]\nname = \"hot\"\nsql = \"SELECT temp FROM 'site/+/temp' WHERE temp > 30\"\nactions = [{{ republish = {{ topic = \"alerts/${{topic(2)}}\" }} }}]\n"
    );
    std::fs::write(&config, &added).unwrap();
    let reload = || rules_form(&c, &s, "/console/rules/reload", "", "");
    let reloaded = reload();
    assert_eq!(reloaded.status, 200, "{reloaded:?}");
    assert!(
        reloaded.body.contains("Reloaded; running: apply, hot")
            && reloaded.body.contains("data-rule=\"hot\""),
        "{}",
        reloaded.body
    );
    let broken = added.replace("WHERE temp > 30", "WHERE");
    std::fs::write(&config, &broken).unwrap();
    let refused = reload();
    assert_eq!(refused.status, 400, "{refused:?}");
    assert!(
        refused.body.contains("Not reloaded") && refused.body.contains("role=\"alert\""),
        "{}",
        refused.body
    );
    assert!(refused.body.contains("data-rule=\"hot\""), "still running");
    g.wait_log(&["console: rules reloaded by an operator"], 1);
    // A save into a file that another rule breaks: the reload fails, and the file is put back
    // as it was, broken rule and all (the operator's text, not the console's, to mend).
    let failed = save("apply", "SELECT state FROM 'apply/+'");
    assert_eq!(failed.status, 400, "{failed:?}");
    assert!(
        failed.body.contains("the rules were not reloaded")
            && failed.body.contains("the file is as it was"),
        "{}",
        failed.body
    );
    assert_eq!(std::fs::read_to_string(&config).unwrap(), broken);
}

#[test]
fn functions_are_listed_invoked_and_aliased_from_the_console_with_their_log_live() {
    use grove_tests::functions::{guest, Fixture};
    let f = Fixture::start("");
    set_password(&f.g, PASSWORD);
    let c = Console::new(f.g.ops_port);
    let s = c.session();
    let none = c.get("/console/functions", Some(&s));
    assert_eq!(none.status, 200, "{none:?}");
    assert!(
        none.body.contains("No function is deployed."),
        "{}",
        none.body
    );

    // Logs its event and echoes it; deployed twice (versions 1 and 2). One that always fails.
    let logger = "(call $log (i32.const 2) (local.get $pp) (local.get $pl)) \
                  (drop (call $output (local.get $pp) (local.get $pl))) (i32.const 0)";
    f.deployed("logger", &guest(logger, ""), "triggers = [\"log/#\"]");
    f.deployed("logger", &guest(logger, ""), "triggers = [\"log/#\"]");
    f.deployed(
        "fails",
        &guest(
            "(drop (call $output (local.get $pp) (local.get $pl))) (i32.const 1)",
            "",
        ),
        "",
    );
    let listed = c.get("/console/functions", Some(&s));
    assert!(
        listed
            .body
            .contains("<a href=\"/console/function?name=logger\">logger</a>")
            && listed.body.contains("<td>log/#</td>")
            && listed.body.contains("data-function=\"fails\""),
        "{}",
        listed.body
    );

    // The function's page, live: nothing logged; an invocation from the page answers with the
    // envelope, and its log line and count show without a reload.
    let page = c.get("/console/function?name=logger", Some(&s));
    assert_eq!(page.status, 200, "{page:?}");
    let mut stream = c
        .stream("/console/events/function?name=logger", Some(&s))
        .expect("the function's stream");
    let first = stream.next_event().expect("the first fragment");
    assert!(first.contains("Nothing logged yet."), "{first}");
    let invoke = |name: &str, qualifier: &str, payload: &str| {
        c.post(
            "/console/function/invoke",
            Some(&s),
            &[("Origin", c.origin())],
            &[
                ("csrf", &s.csrf),
                ("name", name),
                ("qualifier", qualifier),
                ("payload", payload),
            ],
        )
    };
    let answered = invoke("logger", "", "hello from the console");
    assert_eq!(answered.status, 200, "{answered:?}");
    assert!(
        answered.body.contains("&quot;status&quot;: &quot;ok&quot;")
            && answered
                .body
                .contains("&quot;result&quot;: &quot;hello from the console&quot;")
            && answered.body.contains("&quot;version&quot;: 2"),
        "{}",
        answered.body
    );
    let logged = loop {
        let fragment = stream.next_event().expect("fragments until the log shows");
        if fragment.contains("hello from the console") {
            break fragment;
        }
    };
    assert!(
        logged.contains("v2 info  hello from the console"),
        "{logged}"
    );
    f.g.wait_log(&["console: function invoked by an operator", "logger"], 1);
    // A failing handler's envelope; the list counts it.
    let failed = invoke("fails", "", "{}");
    assert_eq!(failed.status, 200, "{failed:?}");
    assert!(
        failed
            .body
            .contains("&quot;status&quot;: &quot;error&quot;"),
        "{}",
        failed.body
    );
    f.g.wait_metric(
        "grove_function_invocations_total{function=\"fails\",result=\"handler_error\"}",
        |v| v == 1.0,
    );
    let listed = c.get("/console/functions", Some(&s));
    let row = listed.body.split("data-function=\"fails\"").nth(1).unwrap();
    assert!(row.contains("class=\"num failed\">1<"), "{row}");

    // An alias with a weight: set from the page, shown on it; the invocation through it runs.
    let alias = |fields: &[(&str, &str)]| {
        let mut form = vec![("csrf", s.csrf.as_str()), ("name", "logger")];
        form.extend_from_slice(fields);
        c.post(
            "/console/function/alias",
            Some(&s),
            &[("Origin", c.origin())],
            &form,
        )
    };
    let set = alias(&[
        ("alias", "live"),
        ("version", "1"),
        ("weight_version", "2"),
        ("weight_percent", "10"),
    ]);
    assert_eq!(set.status, 303, "{set:?}");
    assert_eq!(
        set.location.as_deref(),
        Some("/console/function?name=logger")
    );
    let page = c.get("/console/function?name=logger", Some(&s));
    assert!(
        page.body.contains("Alias live → 1, 10 % to 2"),
        "{}",
        page.body
    );
    let through = invoke("logger", "live", "via the alias");
    assert!(
        through.body.contains("&quot;status&quot;: &quot;ok&quot;"),
        "{}",
        through.body
    );

    // Refused, with why: numbers that are not, a version that does not exist, a qualifier that
    // cannot be one; a function that is not deployed has no page.
    for (fields, why) in [
        (vec![("alias", "live"), ("version", "x")], "is not a number"),
        (
            vec![("alias", "live"), ("version", "9")],
            "version 9 does not exist",
        ),
    ] {
        let refused = alias(&fields);
        assert_eq!(refused.status, 400, "{fields:?}: {refused:?}");
        assert!(
            refused.body.contains(why) && refused.body.contains("id=\"alias-refused\""),
            "{}",
            refused.body
        );
    }
    let refused = invoke("logger", "no such/alias", "{}");
    assert_eq!(refused.status, 400, "{refused:?}");
    assert!(refused.body.contains("role=\"alert\""), "{}", refused.body);
    assert_eq!(
        c.get("/console/function?name=nothing", Some(&s)).status,
        404
    );
}

#[test]
fn a_function_is_deployed_by_upload_with_the_token_of_the_session_and_refused_otherwise() {
    use grove_tests::functions::{guest, Fixture, ECHO};
    let f = Fixture::start("");
    set_password(&f.g, PASSWORD);
    let c = Console::new(f.g.ops_port);
    let s = c.session();
    let other = c.session();
    let own = c.origin().to_owned();
    let wasm = guest(ECHO, "");
    let manifest = "name = \"echo\"\ntriggers = [\"echo/#\"]\n";
    let upload = |query: &str, headers: &[(&str, &str)], module: &[u8], manifest: &str| {
        let path = format!("/console/functions/deploy{query}");
        c.post_upload(
            &path,
            &s,
            headers,
            module,
            &[("manifest", manifest), ("alias", "live")],
        )
    };
    let with_token = format!("?csrf={}", s.csrf);
    // Refused before anything is read: a foreign origin, no token, another session's token.
    let others = format!("?csrf={}", other.csrf);
    for (case, query, headers) in [
        (
            "a foreign Origin",
            with_token.as_str(),
            vec![("Origin", "http://evil.example")],
        ),
        ("no token", "", vec![("Origin", own.as_str())]),
        (
            "another session's token",
            others.as_str(),
            vec![("Origin", own.as_str())],
        ),
    ] {
        let refused = upload(query, &headers, &wasm, manifest);
        assert_eq!(refused.status, 403, "{case}: {refused:?}");
    }
    // Refused with why, on the functions page (400): not WebAssembly, a manifest that is not.
    let origin = [("Origin", own.as_str())];
    for (module, text, why) in [
        (b"not wasm".as_slice(), manifest, "module"),
        (wasm.as_slice(), "name = ", "manifest"),
    ] {
        let refused = upload(&with_token, &origin, module, text);
        assert_eq!(refused.status, 400, "{why}: {refused:?}");
        assert!(
            refused.body.contains("id=\"deploy-refused\"") && refused.body.contains(why),
            "{}",
            refused.body
        );
    }
    // The upload budget: over 5 MiB, 413 (what was sent is read and dropped, so the answer
    // arrives).
    let big = grove_tests::functions::padded(wasm.clone(), 6 << 20);
    let refused = upload(&with_token, &origin, &big, manifest);
    assert_eq!(refused.status, 413, "{}", refused.status);
    assert!(
        refused.body.contains("the upload is over 5 MiB"),
        "{}",
        refused.body
    );
    // One upload at a time: while one is being received (a client that sent its head and part of
    // its body), another is answered 503; once that client has gone, uploads are taken again.
    let received = f.g.log_count(&["console: receiving an upload"]);
    let mut slow = TcpStream::connect(("127.0.0.1", f.g.ops_port)).unwrap();
    let head = format!(
        "POST /console/functions/deploy{with_token} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\
         Cookie: {}\r\nOrigin: {own}\r\n\
         Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 1000000\r\n\r\n\
         --b\r\nContent-Disposition: form-data; name=\"module\"; filename=\"m.wasm\"\r\n\r\n",
        f.g.ops_port, s.cookie
    );
    std::io::Write::write_all(&mut slow, head.as_bytes()).unwrap();
    f.g.wait_log(&["console: receiving an upload"], received + 1);
    let busy = upload(&with_token, &origin, &wasm, manifest);
    assert_eq!(busy.status, 503, "{busy:?}");
    assert!(
        busy.body.contains("another upload is in progress"),
        "{}",
        busy.body
    );
    drop(slow);
    let (_, listed) = f.cli(&["list"]);
    assert!(!listed.contains("echo"), "nothing deployed: {listed}");
    // Taken: the new version's page, the alias pointed at it, and it runs (the slow upload's
    // place comes back when its connection ends, which the gateway notices on its own time).
    let deployed = eventually(WAIT, || {
        let answer = upload(&with_token, &origin, &wasm, manifest);
        match answer.status {
            503 => Err(format!("still busy: {answer:?}")),
            _ => Ok(answer),
        }
    });
    assert_eq!(deployed.status, 303, "{deployed:?}");
    assert_eq!(
        deployed.location.as_deref(),
        Some("/console/function?name=echo")
    );
    let page = c.get("/console/function?name=echo", Some(&s));
    assert!(page.body.contains("Alias live → 1"), "{}", page.body);
    f.g.wait_log(&["console: function deployed by an operator", "echo"], 1);
    grove_tests::mosquitto_pub(f.g.mqtt_port, &["-t", "echo/1", "-q", "1", "-m", "hi"]);
    f.g.wait_metric(
        "grove_function_invocations_total{function=\"echo\",result=\"ok\"}",
        |v| v == 1.0,
    );
}

#[test]
fn deployments_and_jobs_are_followed_live_and_rolled_back_and_canceled_from_the_console() {
    use grove_tests::functions::{guest, path, Fixture, ECHO};
    use grove_tests::jobs_cloud::{deployment, sha256_hex};
    let f = Fixture::start("");
    set_password(&f.g, PASSWORD);
    let c = Console::new(f.g.ops_port);
    let s = c.session();
    let page = c.get("/console/deployments", Some(&s));
    assert_eq!(page.status, 200, "{page:?}");
    assert!(
        page.body.contains("No deployment has been committed")
            && page.body.contains("No jobs for devices."),
        "{}",
        page.body
    );
    let mut stream = c
        .stream("/console/events/deployments", Some(&s))
        .expect("the deployments stream");
    stream.next_event().expect("the first fragment");
    let until = |stream: &mut grove_tests::console::Stream, wanted: &[&str]| loop {
        let fragment = stream.next_event().expect("fragments until it shows");
        if wanted.iter().all(|w| fragment.contains(w)) {
            break fragment;
        }
    };

    // A deployment applied with `grove deploy`: shown running, without a reload.
    let echo = guest(ECHO, "");
    let module = f.files.path().join("d1.wasm");
    std::fs::write(&module, &echo).unwrap();
    let doc = f.files.path().join("d1.json");
    let manifest = "name = \"f\"\ntriggers = [\"sensors/+\"]\n";
    let module_ref = serde_json::json!({"sha256": sha256_hex(&echo), "file": path(&module)});
    let text = deployment(
        "d1",
        "f",
        manifest,
        module_ref,
        r#""health": {"soak_s": 1}"#,
    );
    std::fs::write(&doc, text).unwrap();
    let config = path(&f.g.config_path());
    let (code, out) = grove_tests::grove(
        &["deploy", "apply", &path(&doc), "--config", &config],
        f.files.path(),
    );
    assert_eq!(code, 0, "{out}");
    until(
        &mut stream,
        &[
            "Running deployment <strong>d1</strong>",
            "<td>committed</td>",
        ],
    );

    // A job for a device, created with `grove jobs`, then canceled from the page.
    let job = f.files.path().join("fw.json");
    std::fs::write(&job, r#"{"operation":"firmware-update","version":"2.1.0"}"#).unwrap();
    let job = path(&job);
    let (code, out) = f.g.jobs(&[
        "create",
        "--document",
        &job,
        "--id",
        "fw-1",
        "--targets",
        "lamp-1",
    ]);
    assert_eq!(code, 0, "{out}");
    until(&mut stream, &["data-job=\"fw-1\"", "IN_PROGRESS", "lamp-1"]);
    let cancel = |id: &str| {
        c.post(
            "/console/jobs/cancel",
            Some(&s),
            &[("Origin", c.origin())],
            &[("csrf", &s.csrf), ("id", id), ("force", "on")],
        )
    };
    let canceled = cancel("fw-1");
    assert_eq!(canceled.status, 200, "{canceled:?}");
    assert!(
        canceled.body.contains("Job fw-1 canceled"),
        "{}",
        canceled.body
    );
    until(&mut stream, &["data-job=\"fw-1\"", "CANCELED"]);
    let again = cancel("fw-1");
    assert_eq!(again.status, 400, "{again:?}");
    assert!(again.body.contains("is CANCELED already"), "{}", again.body);
    f.g.wait_log(&["console: job canceled by an operator", "fw-1"], 1);

    // The rollback: the committed deployment reverted to what ran before it (the file's).
    let rollback = || {
        c.post(
            "/console/deployments/rollback",
            Some(&s),
            &[("Origin", c.origin())],
            &[("csrf", &s.csrf)],
        )
    };
    let rolled = rollback();
    assert_eq!(rolled.status, 200, "{rolled:?}");
    assert!(
        rolled.body.contains("Rollback started: reverting d1"),
        "{}",
        rolled.body
    );
    until(
        &mut stream,
        &["No deployment has been committed", "<td>rolled_back</td>"],
    );
    f.g.wait_log(&["console: rollback asked by an operator", "d1"], 1);
}

#[test]
fn devices_are_registered_with_a_password_or_a_downloaded_certificate_and_removed_from_the_console()
{
    let site = grove_tests::Devices::with_ca("").start_site("");
    let g = &site.gateway;
    set_password(g, PASSWORD);
    let c = Console::new(g.ops_port);
    let s = c.session();
    let add = |fields: &[(&str, &str)]| {
        let mut form = vec![("csrf", s.csrf.as_str())];
        form.extend_from_slice(fields);
        c.post(
            "/console/devices/add",
            Some(&s),
            &[("Origin", c.origin())],
            &form,
        )
    };

    // A password: registered, and mosquitto's own client signs in with it on the password
    // listener (staying connected, subscribed).
    let added = add(&[
        ("id", "pump-2"),
        ("thing", "pump-thing"),
        ("password", "pump-2-secret"),
    ]);
    assert_eq!(
        (added.status, added.location.as_deref()),
        (303, Some(DEVICES)),
        "{added:?}"
    );
    let _pump = MosquittoSub::connect_v5_with_password(
        site.password_port,
        "pump-2",
        "pump-2-secret",
        "$aws/things/pump-thing/shadow/#",
    );
    assert!(listed(&c, &s, "pump-2"));
    g.wait_log(&["console: device registered by an operator", "pump-2"], 1);

    // A certificate: downloaded once as one PEM (its certificate, its key, the local CA), with
    // which mosquitto_pub connects to the mutual-TLS listener.
    let issued = add(&[("id", "lamp-3"), ("certificate", "on")]);
    assert_eq!(issued.status, 200, "{issued:?}");
    assert_eq!(
        issued.body.matches("-----BEGIN CERTIFICATE-----").count(),
        2,
        "{}",
        issued.body
    );
    assert!(issued.body.contains("PRIVATE KEY-----"), "{}", issued.body);
    let pem = site.pki.join("lamp-3-download.pem");
    std::fs::write(&pem, &issued.body).unwrap();
    let pem = pem.to_str().unwrap();
    grove_tests::mosquitto_pub(
        site.mtls_port,
        &[
            "--cafile",
            pem,
            "--cert",
            pem,
            "--key",
            pem,
            "-i",
            "lamp-3",
            "-q",
            "1",
            "-t",
            "$aws/things/lamp-3/shadow/update",
            "-m",
            r#"{"state":{"reported":{"on":true}}}"#,
        ],
    );

    // Refused with why (400), nothing registered: no credential, an id a policy cannot hold.
    for (fields, why) in [
        (vec![("id", "bare")], "say how the device proves itself"),
        (
            vec![("id", "a/b"), ("password", "x-secret")],
            "free of / + # $",
        ),
    ] {
        let refused = add(&fields);
        assert_eq!(refused.status, 400, "{fields:?}: {refused:?}");
        assert!(
            refused.body.contains(why) && refused.body.contains("id=\"device-refused\""),
            "{}",
            refused.body
        );
    }

    // Removed: its connection is closed before the page comes back.
    let remove = |id: &str| {
        c.post(
            "/console/devices/remove",
            Some(&s),
            &[("Origin", c.origin())],
            &[("csrf", &s.csrf), ("id", id)],
        )
    };
    let removed = remove("pump-2");
    assert_eq!(
        (removed.status, removed.location.as_deref()),
        (303, Some(DEVICES)),
        "{removed:?}"
    );
    assert!(!listed(&c, &s, "pump-2"), "pump-2's connection is closed");
    g.wait_log(
        &[
            "console: device removed by an operator",
            "pump-2",
            "closed=1",
        ],
        1,
    );
    let again = remove("pump-2");
    assert_eq!(again.status, 400, "{again:?}");
    assert!(again.body.contains("no device pump-2"), "{}", again.body);
}
