//! `grove-bench cloud-idle`: what an idle gateway's cloud link costs (issue 16: "325 MB/day of
//! cellular data with the runtime idle" was a complaint about Greengrass; the goal is <= 1 MB/day
//! and O(changed shadows) messages per reconnect).
//!
//! The cloud is a mosquitto with a Device Shadow service ([`crate::shadow_cloud`]); the gateway
//! reaches it through the byte-counting proxy ([`crate::byte_proxy`]) and syncs `--shadows`
//! shadows (`things = ["*"]`), which devices create on the gateway first. Once every shadow is in
//! the cloud and the link has been quiet for a few seconds:
//! - idle: the bytes and segments through the proxy over `--seconds`, extrapolated to a day;
//!   and per keep-alive exchange, so that the cost of other keep-alive periods follows;
//! - reconnect: the proxy drops the connection (the link breaks, nothing changed anywhere); the
//!   shadow requests the gateway then sends the cloud, and the bytes, until the link has been
//!   quiet again.
//!
//! The proxy sees the gateway's MQTT bytes (plain TCP to the cloud here). The report adds what
//! TLS and TCP/IP put around them, by the sizes they have ([`Traffic::wire_estimate`]).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rumqttc::QoS;

use crate::byte_proxy::{ByteProxy, Traffic};
use crate::flow;
use crate::peer::{PeerKind, PeerSpec};
use crate::shadow_cloud::{Requests, ShadowCloud};

/// How long the link must carry nothing to count as quiet.
const QUIET: Duration = Duration::from_secs(3);

/// Keep-alive periods the report extrapolates to.
const KEEP_ALIVES: [u64; 5] = [30, 60, 120, 300, 1200];

/// Everything `grove-bench cloud-idle` measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct IdleResults {
    /// Shadows synced.
    pub shadows: usize,
    /// The gateway's keep-alive (seconds), as configured (`None`: its default).
    pub keep_alive_secs: Option<u64>,
    /// The measured idle window.
    pub window_secs: f64,
    /// What crossed the link in the idle window.
    pub idle: Traffic,
    /// Shadow requests the cloud answered in the idle window.
    pub idle_requests: Requests,
    /// What crossed the link from the drop to quiet again (the reconnect included).
    pub reconnect: Traffic,
    /// Shadow requests the cloud answered for the reconnect.
    pub reconnect_requests: Requests,
}

impl IdleResults {
    fn per_day(&self, bytes: u64) -> f64 {
        bytes as f64 * 86_400.0 / self.window_secs.max(1e-9)
    }
}

fn cloud_config(port: u16, keep_alive: Option<u64>) -> String {
    let keep_alive = keep_alive.map_or(String::new(), |k| format!("keep_alive_secs = {k}\n"));
    format!(
        "[cloud]\nhost = \"127.0.0.1\"\nport = {port}\nplain_tcp = true\nthing = \"bench-gw\"\n\
         max_backoff_ms = 500\n{keep_alive}[cloud.shadows]\nthings = [\"*\"]\n"
    )
}

/// Runs the benchmark (see the module doc).
pub async fn run(
    grove: &Path,
    mosquitto: &Path,
    shadows: usize,
    window: Duration,
    keep_alive: Option<u64>,
    extra: &[&str],
) -> anyhow::Result<IdleResults> {
    let cloud = PeerSpec {
        kind: PeerKind::Mosquitto,
        binary: mosquitto.to_owned(),
        extra_config: Vec::new(),
    }
    .start()
    .context("starting the cloud mosquitto")?;
    let service = ShadowCloud::start(cloud.port()).await?;
    let proxy = ByteProxy::start(cloud.port())
        .await
        .context("starting the byte-counting proxy")?;
    let section = cloud_config(proxy.port(), keep_alive);
    let config: Vec<&str> = std::iter::once(section.as_str())
        .chain(extra.iter().copied())
        .collect();
    let gateway = crate::gateway::start(grove, &config)?;

    create_shadows(gateway.port(), shadows).await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while service.shadows() < shadows {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{} of {shadows} shadows reached the cloud in 120 s",
            service.shadows()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    quiet(&proxy).await;

    eprintln!(
        "cloud-idle: {shadows} shadows synced; idle for {} s",
        window.as_secs()
    );
    let (start, requests) = (proxy.traffic(), service.requests());
    let started = Instant::now();
    tokio::time::sleep(window).await;
    let idle = proxy.traffic().since(&start);
    let window_secs = started.elapsed().as_secs_f64();
    let idle_requests = service.requests().since(&requests);

    let (before, requests) = (proxy.traffic(), service.requests());
    proxy.drop_connections();
    let deadline = Instant::now() + Duration::from_secs(60);
    while proxy.traffic().connections == before.connections {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the gateway did not reconnect in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    quiet(&proxy).await;
    let reconnect = proxy.traffic().since(&before);
    let reconnect_requests = service.requests().since(&requests);
    gateway.stop()?;
    cloud.stop()?;
    Ok(IdleResults {
        shadows,
        keep_alive_secs: keep_alive,
        window_secs,
        idle,
        idle_requests,
        reconnect,
        reconnect_requests,
    })
}

/// Creates the devices' shadows on the gateway (`dev-{i}`, a reported state each), at most 8
/// updates in flight: the shadow service answers more than 10 from one connection with 429, as
/// AWS does.
async fn create_shadows(port: u16, shadows: usize) -> anyhow::Result<()> {
    let (device, mut events) = flow::event_loop(flow::options("idle-bench-devices", port));
    device
        .subscribe("$aws/things/+/shadow/update/accepted", QoS::AtMostOnce)
        .await?;
    let (mut sent, mut accepted) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(120);
    while accepted < shadows {
        if sent < shadows && sent - accepted < 8 {
            let report = format!(
                "{{\"state\":{{\"reported\":{{\"temperature\":{sent},\"fw\":\"1.4.2\"}}}}}}"
            );
            device
                .publish(
                    format!("$aws/things/dev-{sent}/shadow/update"),
                    QoS::AtLeastOnce,
                    false,
                    report,
                )
                .await?;
            sent += 1;
            continue;
        }
        let event = tokio::time::timeout_at(deadline.into(), events.poll())
            .await
            .context("the gateway's shadow service did not answer within 120 s")??;
        if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(_)) = event {
            accepted += 1;
        }
    }
    let _ = device.disconnect().await;
    Ok(())
}

/// Waits until nothing has crossed the proxy for [`QUIET`].
async fn quiet(proxy: &ByteProxy) {
    let mut last = proxy.traffic();
    let mut since = Instant::now();
    while since.elapsed() < QUIET {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = proxy.traffic();
        if now != last {
            last = now;
            since = Instant::now();
        }
    }
}

/// The Markdown section.
pub fn markdown(r: &IdleResults) -> String {
    let keep_alive = r
        .keep_alive_secs
        .map_or("the gateway's default".to_owned(), |k| format!("{k} s"));
    let i = &r.idle;
    let mut out = format!(
        "Idle, {} synced shadows, keep-alive {keep_alive}, measured over {:.0} s:\n\n\
         | | up | down | both | per day |\n|---|---:|---:|---:|---:|\n\
         | MQTT bytes (measured) | {} B | {} B | {} B | {:.1} KB |\n\
         | segments (measured reads) | {} | {} | {} | {:.0} |\n\
         | on the wire with TLS 1.3 and TCP/IPv4 (estimated) | | | {} B | **{:.1} KB** |\n\
         | shadow requests to the cloud | | | {} | |\n",
        r.shadows,
        r.window_secs,
        i.up_bytes,
        i.down_bytes,
        i.bytes(),
        r.per_day(i.bytes()) / 1000.0,
        i.up_reads,
        i.down_reads,
        i.reads(),
        r.per_day(i.reads()),
        i.wire_estimate(),
        r.per_day(i.wire_estimate()) / 1000.0,
        r.idle_requests.total(),
    );
    // One keep-alive exchange is a PINGREQ up and a PINGRESP down.
    if i.up_reads == 0 {
        out.push_str(
            "\nNo keep-alive exchange in the window: measure longer than the keep-alive.\n",
        );
    } else {
        let per_exchange = i.wire_estimate() as f64 / i.up_reads as f64;
        out.push_str(&format!(
            "\nOne keep-alive exchange on the wire: {per_exchange:.0} B ({} measured). Per day by keep-alive period:\n\n| keep_alive_secs | exchanges / day | on the wire / day |\n|---:|---:|---:|\n",
            i.up_reads
        ));
        for k in KEEP_ALIVES {
            let per_day = 86_400 / k;
            out.push_str(&format!(
                "| {k} | {per_day} | {:.1} KB |\n",
                per_day as f64 * per_exchange / 1000.0
            ));
        }
    }
    let c = &r.reconnect;
    let q = &r.reconnect_requests;
    out.push_str(&format!(
        "\nA reconnect with nothing changed (the connection dropped; until the link was quiet for {} s):\n\n\
         | shadow requests (get / update / delete) | MQTT bytes up / down | segments | on the wire (estimated) |\n|---:|---:|---:|---:|\n\
         | {} / {} / {} | {} B / {} B | {} | {} B |\n",
        QUIET.as_secs(),
        q.get,
        q.update,
        q.delete,
        c.up_bytes,
        c.down_bytes,
        c.reads(),
        c.wire_estimate(),
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cloud_section_is_what_the_gateway_reads() {
        let text = cloud_config(1, Some(60));
        let value: toml::Value = toml::from_str(&text).expect("valid TOML");
        assert_eq!(value["cloud"]["keep_alive_secs"].as_integer(), Some(60));
        assert_eq!(value["cloud"]["shadows"]["things"][0].as_str(), Some("*"));
    }
}
