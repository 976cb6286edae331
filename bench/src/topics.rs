//! `grove-bench topics`: broker memory while a device publishes on ever new topics.
//!
//! Devices that put an id, a counter or a time in their topics (`events/{uuid}`) publish on a
//! topic the broker has never seen, message after message. A broker that keeps something per
//! distinct topic forever grows without limit on such a device. One client publishes `rounds`
//! rounds of `per_round` QoS 0 messages, each on a topic of its own, with nobody subscribed; a
//! QoS 1 publish closes each round (its PUBACK comes after the broker has read the round), then,
//! after a pause, the broker's resident memory is read. grove and mosquitto get the same load in
//! the same run.

use std::time::Duration;

use anyhow::Context as _;
use rumqttc::{Event, Packet, QoS};
use serde::Serialize;

use crate::flow::{self, mib};
use crate::peer::{PeerKind, PeerSpec};

/// Memory of one broker after each round.
#[derive(Debug, Clone, Serialize)]
pub struct Growth {
    /// `grove` or `mosquitto`.
    pub peer: &'static str,
    /// VmRSS after start, before any publish (KiB).
    pub start_kib: u64,
    /// VmRSS after each round (KiB).
    pub rounds_kib: Vec<u64>,
}

/// Runs the load against each broker in turn.
pub async fn run(
    grove: &std::path::Path,
    mosquitto: &std::path::Path,
    rounds: u32,
    per_round: u64,
    pause: Duration,
    extra: &[&str],
) -> anyhow::Result<Vec<Growth>> {
    let peers = [
        (PeerKind::Mosquitto, mosquitto.to_owned()),
        (PeerKind::Grove, grove.to_owned()),
    ];
    let mut out = Vec::new();
    for (kind, binary) in peers {
        let spec = PeerSpec {
            kind,
            binary,
            extra_config: match kind {
                PeerKind::Grove => extra.iter().map(|s| s.to_string()).collect(),
                PeerKind::Mosquitto => Vec::new(),
            },
        };
        let peer = spec
            .start()
            .with_context(|| format!("starting {}", kind.name()))?;
        let start_kib = peer.memory()?.rss_kb;
        let (client, mut events) = flow::event_loop(flow::options(
            &format!("topics-{}", kind.name()),
            peer.port(),
        ));
        let (acks_tx, mut acks) = tokio::sync::mpsc::unbounded_channel();
        let driver = tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        if acks_tx.send(()).is_err() {
                            return Ok(());
                        }
                    }
                    Ok(_) => {}
                    Err(e) => return Err(e),
                }
            }
        });
        let mut rounds_kib = Vec::new();
        for round in 0..rounds {
            for n in 0..per_round {
                client
                    .publish(format!("unique/{round}/{n}/x"), QoS::AtMostOnce, false, "1")
                    .await?;
            }
            client
                .publish("unique/barrier", QoS::AtLeastOnce, false, "1")
                .await?;
            match tokio::time::timeout(Duration::from_secs(120), acks.recv()).await {
                Ok(Some(())) => {}
                Ok(None) => {
                    driver.await??;
                    anyhow::bail!("{}: the connection ended in round {round}", kind.name());
                }
                Err(_) => anyhow::bail!("{}: no PUBACK for round {round} in 120 s", kind.name()),
            }
            tokio::time::sleep(pause).await;
            rounds_kib.push(peer.memory()?.rss_kb);
        }
        driver.abort();
        out.push(Growth {
            peer: kind.name(),
            start_kib,
            rounds_kib,
        });
        peer.stop()?;
    }
    Ok(out)
}

/// The table: topics published so far, each broker's RSS, and grove's growth over mosquitto's.
pub fn markdown(results: &[Growth], per_round: u64) -> String {
    let kib = |peer: &str, round: Option<usize>| {
        results
            .iter()
            .find(|g| g.peer == peer)
            .and_then(|g| match round {
                None => Some(g.start_kib),
                Some(r) => g.rounds_kib.get(r).copied(),
            })
    };
    let rounds = results
        .iter()
        .map(|g| g.rounds_kib.len())
        .max()
        .unwrap_or(0);
    let mut out = String::from(
        "| distinct topics published | grove RSS | mosquitto RSS | grove / mosquitto |\n|---:|---:|---:|---:|\n",
    );
    for round in std::iter::once(None).chain((0..rounds).map(Some)) {
        let topics = round.map_or(0, |r| (r as u64 + 1) * per_round);
        let (g, m) = (kib("grove", round), kib("mosquitto", round));
        let ratio = match (g, m) {
            (Some(g), Some(m)) => flow::ratio(g as f64, m as f64),
            _ => "-".to_owned(),
        };
        out.push_str(&format!(
            "| {topics} | {} | {} | {ratio} |\n",
            mib(g),
            mib(m)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_a_row_per_round_and_the_ratio() {
        let results = [
            Growth {
                peer: "mosquitto",
                start_kib: 1024,
                rounds_kib: vec![2048, 4096],
            },
            Growth {
                peer: "grove",
                start_kib: 2048,
                rounds_kib: vec![2048, 2048],
            },
        ];
        let table = markdown(&results, 100);
        let rows: Vec<&str> = table.lines().skip(2).collect();
        assert_eq!(
            rows,
            [
                "| 0 | 2.0 MiB | 1.0 MiB | 2.00 |",
                "| 100 | 2.0 MiB | 2.0 MiB | 1.00 |",
                "| 200 | 2.0 MiB | 4.0 MiB | 0.50 |",
            ]
        );
    }
}
