//! `grove-bench console`: the web console's figures (issue 21), in a real browser (Debian's
//! Chromium through chromedriver, WebDriver): each page's load to interactive on loopback and the
//! bytes it transfers; the gateway's resident memory with 5 console tabs open, each watching a
//! topic; and whether those tabs, watching a topic that carries 1,000 msg/s, slow the broker's
//! other clients: the same flow (1,000 msg/s, QoS 0, one publisher and one subscriber, both client
//! libraries) measured without and then with the 5 tabs in the same run, p99 and CPU side by side.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context as _;
use fantoccini::{Client as Web, ClientBuilder, Locator};
use rumqttc::QoS;
use serde::Serialize;

use crate::flow::{self, Encoding, FlowRow, Publishers, Subscriber};
use crate::gateway::CLIENTS;
use crate::load::{Pace, Stop};
use crate::peer::{free_port, RunningPeer};

/// The operator's password the benchmark sets.
const PASSWORD: &str = "grove-bench-console";

/// The pages loaded, in this order (the first one after sign-in fetches the style sheet and the
/// script; the others find them in the browser's cache, as an operator's next pages do).
const PAGES: [&str; 8] = [
    "/console",
    "/console/devices",
    "/console/topics",
    "/console/shadows",
    "/console/rules",
    "/console/functions",
    "/console/deployments",
    "/console/cloud",
];

/// The topic the flow publishes on, and the filter the tabs watch.
const TOPIC: &str = "sensors/console-bench/t";
const WATCHED: &str = "sensors%2F%23";

/// How many tabs watch the topic.
const TABS: usize = 5;

/// One page's load.
#[derive(Debug, Clone, Serialize)]
pub struct PageLoad {
    /// Its path.
    pub page: &'static str,
    /// From the navigation's start to `domInteractive` (Navigation Timing), milliseconds.
    pub interactive_ms: f64,
    /// Bytes transferred for the HTML, headers included (`transferSize`; the console does not
    /// compress).
    pub html_bytes: u64,
    /// Bytes transferred for the other resources (the style sheet and the script; 0 when the
    /// browser had them in its cache).
    pub assets_bytes: u64,
}

/// The benchmark's figures.
#[derive(Debug, Clone, Serialize)]
pub struct ConsoleReport {
    /// Each page's load.
    pub pages: Vec<PageLoad>,
    /// The gateway's RSS signed in, one tab on a page without a stream (KiB).
    pub rss_one_tab_kib: u64,
    /// The gateway's RSS with [`TABS`] more tabs, each watching the topic (KiB).
    pub rss_tabs_kib: u64,
    /// The flow without tabs, then with them, per client library.
    pub flows: Vec<FlowRow>,
    /// The browser's CPU during each flow (percent of one core), in the order of `flows`: it
    /// runs on the same machine as the gateway and the load.
    pub browser_cpu_percent: Vec<f64>,
}

/// A Chromium driven through chromedriver; both end when it is dropped.
struct Browser {
    web: Web,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    /// Ends chromedriver's whole process group: Chromium and its helpers are chromedriver's
    /// children, and a benchmark that stops on an error would otherwise leave them running.
    fn drop(&mut self) {
        if let Ok(group) = i32::try_from(self.driver.id()) {
            let group = nix::unistd::Pid::from_raw(group);
            let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        }
        let _ = self.driver.wait();
    }
}

impl Browser {
    async fn start(chromedriver: &Path, chromium: &Path) -> anyhow::Result<Browser> {
        use std::os::unix::process::CommandExt as _;
        let port = free_port()?;
        // Its own process group: Chromium is chromedriver's child.
        let driver = Command::new(chromedriver)
            .process_group(0)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", chromedriver.display()))?;
        let profile = tempfile::tempdir()?;
        let capabilities = serde_json::json!({ "goog:chromeOptions": {
            "binary": chromium,
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update",
                     "--disable-sync", "--window-size=1280,900",
                     format!("--user-data-dir={}", profile.path().display())],
        }});
        let serde_json::Value::Object(capabilities) = capabilities else {
            unreachable!("a JSON object")
        };
        let url = format!("http://127.0.0.1:{port}");
        // chromedriver takes a moment to listen.
        let mut tries = 0;
        let web = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(capabilities.clone())
                .connect(&url)
                .await
            {
                Ok(web) => break web,
                Err(_) if tries < 100 => tries += 1,
                Err(e) => return Err(e).context("a Chromium session"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        Ok(Browser {
            web,
            driver,
            _profile: profile,
        })
    }

    /// The CPU time used so far by the browser: chromedriver's process group (Chromium and its
    /// renderers are in it).
    fn cpu(&self) -> Duration {
        let Ok(group) = i32::try_from(self.driver.id()) else {
            return Duration::ZERO;
        };
        let Ok(all) = procfs::process::all_processes() else {
            return Duration::ZERO;
        };
        let ticks = procfs::ticks_per_second() as f64;
        (all.flatten())
            .filter_map(|p| p.stat().ok())
            .filter(|stat| stat.pgrp == group)
            .map(|stat| Duration::from_secs_f64((stat.utime + stat.stime) as f64 / ticks))
            .sum()
    }

    async fn wait(&self, css: &str) -> anyhow::Result<fantoccini::elements::Element> {
        (self.web.wait())
            .at_most(Duration::from_secs(20))
            .for_element(Locator::Css(css))
            .await
            .with_context(|| format!("waiting for {css}"))
    }
}

/// Runs the benchmark on `grove` (with `extra` TOML) in the Chromium at `chromium`.
pub async fn run(
    grove: &Path,
    chromedriver: &Path,
    chromium: &Path,
    seconds: u64,
    extra: &[&str],
) -> anyhow::Result<ConsoleReport> {
    let ops_port = free_port()?;
    let ops = format!("[ops]\nenabled = true\nbind = \"127.0.0.1:{ops_port}\"");
    let config: Vec<&str> = std::iter::once(ops.as_str())
        .chain(extra.iter().copied())
        .collect();
    let peer = crate::gateway::start(grove, &config)?;
    set_password(grove, &peer)?;
    let origin = format!("http://127.0.0.1:{ops_port}");
    let browser = Browser::start(chromedriver, chromium).await?;
    let web = &browser.web;
    web.goto(&format!("{origin}/console/signin")).await?;
    browser.wait("input#password").await?;
    let mut pages = vec![page_load(web, "/console/signin (first, cold cache)").await?];
    browser
        .wait("input#password")
        .await?
        .send_keys(PASSWORD)
        .await?;
    browser
        .wait("form button[type=submit]")
        .await?
        .click()
        .await?;
    browser.wait("dd#health").await?;
    for page in PAGES {
        web.goto(&format!("{origin}{page}")).await?;
        browser.wait("main#main").await?;
        pages.push(page_load(web, page).await?);
    }
    // One tab on a page without a stream, then TABS more watching the topic.
    web.goto(&format!("{origin}/console/shadows")).await?;
    let rss_one_tab_kib = settled_rss(&peer).await?;
    let first = web.window().await?;
    let mut tabs = Vec::new();
    for _ in 0..TABS {
        let tab = web.new_window(true).await?.handle;
        web.switch_to_window(tab.clone()).await?;
        web.goto(&format!("{origin}/console/topics?filter={WATCHED}"))
            .await?;
        browser.wait("p.stream[data-state=live]").await?;
        tabs.push(tab);
    }
    let rss_tabs_kib = settled_rss(&peer).await?;
    web.switch_to_window(first.clone()).await?;
    // The flow, without the tabs watching, then with them.
    let mut flows = Vec::new();
    let mut browser_cpu_percent = Vec::new();
    for watched in [false, true] {
        if !watched {
            for tab in &tabs {
                web.switch_to_window(tab.clone()).await?;
                web.goto("about:blank").await?;
            }
        } else {
            for tab in &tabs {
                web.switch_to_window(tab.clone()).await?;
                web.goto(&format!("{origin}/console/topics?filter={WATCHED}"))
                    .await?;
                browser.wait("p.stream[data-state=live]").await?;
            }
        }
        for client in CLIENTS {
            let publishers = Publishers {
                port: peer.port(),
                topics: vec![TOPIC.to_owned()],
                qos: QoS::AtMostOnce,
                pace: Pace::PerSecond(1000),
                stop: Stop::Duration(Duration::from_secs(seconds + 1)),
                encoding: Encoding::Json,
                id: "console-bench".to_owned(),
            };
            let subscriber = Subscriber {
                port: peer.port(),
                filters: vec![TOPIC.to_owned()],
                dead_letters: None,
                encoding: Encoding::Json,
                batch_topic: None,
            };
            let browser_before = browser.cpu();
            let (outcome, cost) =
                flow::measure(&peer, &publishers, &subscriber, seconds, client).await?;
            let browser_cpu = browser.cpu().saturating_sub(browser_before);
            let path = match watched {
                false => "no console tab".to_owned(),
                true => format!("{TABS} console tabs watching it"),
            };
            eprintln!(
                "console: {path}, {}: p99 {}",
                client.name(),
                flow::ms(outcome.latency.p99_us)
            );
            browser_cpu_percent.push(browser_cpu.as_secs_f64() * 100.0 / (seconds + 1) as f64);
            flows.push(FlowRow {
                scenario: "1,000 msg/s, QoS 0, 1 publisher, 1 subscriber".to_owned(),
                path,
                client,
                outcome,
                cost,
                rss_kib: peer.memory().ok().map(|m| m.rss_kb),
            });
        }
    }
    browser.web.clone().close().await?;
    drop(browser);
    peer.stop()?;
    Ok(ConsoleReport {
        pages,
        rss_one_tab_kib,
        rss_tabs_kib,
        flows,
        browser_cpu_percent,
    })
}

/// `grove console passwd` on the running gateway's configuration (it takes effect at the next
/// sign-in).
fn set_password(grove: &Path, peer: &RunningPeer) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut child = Command::new(grove)
        .args(["console", "passwd", "--config"])
        .arg(peer.config())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .context("grove console passwd")?;
    let mut stdin = child.stdin.take().context("its stdin")?;
    stdin.write_all(format!("{PASSWORD}\n").as_bytes())?;
    drop(stdin);
    anyhow::ensure!(child.wait()?.success(), "grove console passwd failed");
    Ok(())
}

/// The current page's load, from the browser's Navigation and Resource Timing.
async fn page_load(web: &Web, page: &'static str) -> anyhow::Result<PageLoad> {
    let script = "const n = performance.getEntriesByType('navigation')[0];\
        const assets = performance.getEntriesByType('resource')\
          .filter((r) => !r.name.includes('/events/'))\
          .reduce((sum, r) => sum + r.transferSize, 0);\
        return [n.domInteractive - n.startTime, n.transferSize, assets];";
    let answer = web.execute(script, Vec::new()).await?;
    let number = |i: usize| answer[i].as_f64().unwrap_or(0.0);
    Ok(PageLoad {
        page,
        interactive_ms: number(0),
        html_bytes: number(1) as u64,
        assets_bytes: number(2) as u64,
    })
}

/// The gateway's RSS once it has held still for a second (KiB).
async fn settled_rss(peer: &RunningPeer) -> anyhow::Result<u64> {
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(peer.memory()?.rss_kb)
}

/// The report's tables.
pub fn markdown(r: &ConsoleReport) -> String {
    let mut out = String::from(
        "| page | load to interactive | bytes transferred: HTML | style sheet and script |\n|---|---:|---:|---:|\n",
    );
    for p in &r.pages {
        out.push_str(&format!(
            "| `{}` | {:.1} ms | {} B | {} B |\n",
            p.page, p.interactive_ms, p.html_bytes, p.assets_bytes
        ));
    }
    out.push_str(&format!(
        "\nGateway RSS signed in with one tab: {}; with {TABS} more tabs watching `sensors/#`: {} \
         (+{} KiB, {} KiB a tab).\n\n",
        flow::mib(Some(r.rss_one_tab_kib)),
        flow::mib(Some(r.rss_tabs_kib)),
        r.rss_tabs_kib.saturating_sub(r.rss_one_tab_kib),
        r.rss_tabs_kib.saturating_sub(r.rss_one_tab_kib) / TABS as u64,
    ));
    out.push_str(&flow::markdown(&r.flows));
    let browser: Vec<String> = (r.browser_cpu_percent.iter())
        .map(|p| format!("{p:.0} %"))
        .collect();
    out.push_str(&format!(
        "\nThe browser's CPU during each flow, in the table's order (one core = 100 %, on the same \
         2 cores as the gateway and the load): {}.\n",
        browser.join(", ")
    ));
    out.push_str("\n| client | p99 with tabs / without | gateway CPU per message with / without |\n|---|---:|---:|\n");
    for client in CLIENTS {
        let of = |watched: bool| {
            (r.flows.iter()).find(|f| f.client == client && f.path.contains("tabs") == watched)
        };
        if let (Some(with), Some(without)) = (of(true), of(false)) {
            out.push_str(&format!(
                "| {} | {} | {} |\n",
                client.name(),
                flow::ratio(
                    with.outcome.latency.p99_us as f64,
                    without.outcome.latency.p99_us as f64
                ),
                match (with.cost.gateway_us, without.cost.gateway_us) {
                    (Some(a), Some(b)) => flow::ratio(a, b),
                    _ => "-".to_owned(),
                },
            ));
        }
    }
    out
}
