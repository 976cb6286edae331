//! Chaos during the measured phase: random single disconnects and reboots (Poisson processes over the
//! fleet) and periodic disconnect storms, all drawn from one seeded stream so a scenario's schedule of
//! faults is the same on every run.

use std::time::Duration;

use rand::seq::index;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Exp};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::device::Chaos;
use crate::scenario::ChaosFile;

/// Sends chaos to the devices (by index, through their channels) until `until`.
pub async fn run(
    settings: &ChaosFile,
    devices: &[mpsc::Sender<Chaos>],
    mut rng: ChaCha8Rng,
    until: Instant,
) {
    let start = Instant::now();
    let count = devices.len();
    let reboot = Chaos::Reboot(Duration::from_millis(settings.reboot_downtime_ms));
    // The next instant of each kind of fault; `None` when that kind is off.
    let next_gap = |rate: f64, rng: &mut ChaCha8Rng| {
        Exp::new(rate)
            .ok()
            .filter(|_| rate > 0.0)
            .map(|exp| Duration::from_secs_f64(exp.sample(rng)))
    };
    let mut disconnect_at = next_gap(settings.disconnects_per_s, &mut rng).map(|g| start + g);
    let mut reboot_at = next_gap(settings.reboots_per_s, &mut rng).map(|g| start + g);
    let storm_every = (settings.storm_every_s > 0.0 && settings.storm_fraction > 0.0)
        .then(|| Duration::from_secs_f64(settings.storm_every_s));
    let mut storm_at = storm_every.map(|every| start + every);
    while let Some(at) = [disconnect_at, reboot_at, storm_at]
        .into_iter()
        .flatten()
        .min()
    {
        if at >= until {
            break;
        }
        tokio::time::sleep_until(at).await;
        // A full channel means the device is still busy with earlier chaos: skipping is fine.
        if disconnect_at == Some(at) {
            let _ = devices[rng.gen_range(0..count)].try_send(Chaos::Disconnect);
            disconnect_at = next_gap(settings.disconnects_per_s, &mut rng).map(|g| at + g);
        } else if reboot_at == Some(at) {
            let _ = devices[rng.gen_range(0..count)].try_send(reboot);
            reboot_at = next_gap(settings.reboots_per_s, &mut rng).map(|g| at + g);
        } else {
            let victims = ((count as f64) * settings.storm_fraction).round() as usize;
            for device in index::sample(&mut rng, count, victims.min(count)) {
                let _ = devices[device].try_send(Chaos::Disconnect);
            }
            storm_at = storm_every.map(|every| at + every);
        }
    }
}
