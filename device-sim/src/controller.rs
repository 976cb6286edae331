//! The controller: MQTT clients that change devices' desired state through the gateway's AWS Shadow API
//! during the measured phase, and read every shadow back for the final convergence check.
//!
//! Each request carries a `clientToken` holding its send time (see [`crate::fleet`]); answers on
//! `/accepted` and `/rejected` are matched by token. A client keeps at most [`PERMITS_PER_CLIENT`]
//! requests unanswered, under the gateway's per-client limit of 10 (more would get 429), so when the
//! gateway answers slowly the controller slows down instead of being refused.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use crate::fleet::Fleet;
use crate::mqtt::{MqttClient, MqttError};
use crate::observer::reported_holds_desired;

/// Tokens of the controller's requests start with this.
pub const TOKEN_PREFIX: &str = "ctl-";
/// Unanswered requests per client (the gateway's default limit is 10).
pub const PERMITS_PER_CLIENT: usize = 8;
/// How long an answer may take.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

type Waiters = Arc<Mutex<HashMap<String, oneshot::Sender<Answer>>>>;

/// The gateway's answer to a request.
#[derive(Debug)]
enum Answer {
    Accepted(Value),
    Rejected,
}

struct Client {
    mqtt: MqttClient,
    waiters: Waiters,
    permits: Arc<Semaphore>,
}

/// The result of reading every shadow back at the end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct FinalCheck {
    /// Shadows read.
    pub checked: usize,
    /// Shadows whose reported state holds the desired state.
    pub converged: usize,
    /// Devices whose simulated relay pin is switched as the shadow desires.
    pub relays_match: usize,
    /// Shadows that could not be read (rejected or unanswered).
    pub unreadable: usize,
}

/// The controller's clients.
pub struct Controller {
    clients: Vec<Arc<Client>>,
    fleet: Arc<Fleet>,
}

impl Controller {
    /// Connects `count` clients named `{prefix}-{i}`.
    pub async fn connect(
        target: SocketAddr,
        prefix: &str,
        count: usize,
        fleet: Arc<Fleet>,
    ) -> Result<Self, MqttError> {
        let mut clients = Vec::with_capacity(count);
        for i in 0..count {
            let waiters: Waiters = Arc::default();
            let answers = waiters.clone();
            let mqtt = MqttClient::connect(
                &format!("{prefix}-{i}"),
                target,
                &[
                    "$aws/things/+/shadow/update/accepted",
                    "$aws/things/+/shadow/update/rejected",
                    "$aws/things/+/shadow/get/accepted",
                    "$aws/things/+/shadow/get/rejected",
                ],
                move |topic, payload| answer(&answers, topic, payload),
            )
            .await?;
            clients.push(Arc::new(Client {
                mqtt,
                waiters,
                permits: Arc::new(Semaphore::new(PERMITS_PER_CLIENT)),
            }));
        }
        Ok(Self { clients, fleet })
    }

    /// Changes desired state at `per_s` changes per second, each on a random device, until `until`.
    /// Every change flips the relay; with `interval_choices` it also sets a random interval.
    pub async fn drive(
        &self,
        per_s: f64,
        interval_choices: &[u32],
        mut rng: ChaCha8Rng,
        until: tokio::time::Instant,
    ) {
        if per_s <= 0.0 {
            tokio::time::sleep_until(until).await;
            return;
        }
        let devices = self.fleet.things.len();
        let mut relay = vec![false; devices];
        let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / per_s));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sequence = 0u64;
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = tokio::time::sleep_until(until) => break,
            }
            let device = rng.gen_range(0..devices);
            relay[device] = !relay[device];
            let mut desired = json!({ "relay": relay[device] });
            if let Some(interval) = interval_choices.choose(&mut rng) {
                desired["interval_s"] = json!(interval);
            }
            let client = self.clients[(sequence as usize) % self.clients.len()].clone();
            sequence += 1;
            let permit = tokio::select! {
                permit = client.permits.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
                () = tokio::time::sleep_until(until) => break,
            };
            let micros = self.fleet.origin.elapsed().as_micros();
            let token = format!("{TOKEN_PREFIX}{}-{sequence}-{micros}", client.mqtt_id());
            let topic = format!("$aws/things/{}/shadow/update", self.fleet.things[device]);
            let body = json!({ "state": { "desired": desired }, "clientToken": token });
            let fleet = self.fleet.clone();
            tasks.spawn(async move {
                fleet.counters.desired_sent.fetch_add(1, Ordering::Relaxed);
                let counter = match client.request(topic, token, body, permit).await {
                    Some(Answer::Accepted(_)) => &fleet.counters.desired_accepted,
                    Some(Answer::Rejected) => &fleet.counters.desired_rejected,
                    None => &fleet.counters.desired_unanswered,
                };
                counter.fetch_add(1, Ordering::Relaxed);
            });
            // Reap finished requests so the set does not grow with the run.
            while tasks.try_join_next().is_some() {}
        }
        while tasks.join_next().await.is_some() {}
    }

    /// Reads every shadow and compares desired with reported, and with the simulated relay.
    pub async fn final_check(&self) -> FinalCheck {
        let mut tasks = tokio::task::JoinSet::new();
        for (index, thing) in self.fleet.things.iter().enumerate() {
            let client = self.clients[index % self.clients.len()].clone();
            let Ok(permit) = client.permits.clone().acquire_owned().await else {
                break;
            };
            let token = format!("check-{index}");
            let topic = format!("$aws/things/{thing}/shadow/get");
            let body = json!({ "clientToken": token });
            let fleet = self.fleet.clone();
            tasks.spawn(async move {
                let answer = client.request(topic, token, body, permit).await;
                let Some(Answer::Accepted(document)) = answer else {
                    return (false, false, false);
                };
                let state = &document["state"];
                let desired_relay = state["desired"]["relay"].as_bool().unwrap_or(false);
                let pin = fleet.devices[index].relay.is_high();
                (true, reported_holds_desired(state), pin == desired_relay)
            });
        }
        let mut check = FinalCheck::default();
        while let Some(result) = tasks.join_next().await {
            let (read, converged, relay) = result.unwrap_or((false, false, false));
            check.checked += 1;
            check.unreadable += usize::from(!read);
            check.converged += usize::from(converged);
            check.relays_match += usize::from(relay);
        }
        check
    }

    /// Disconnects every client.
    pub async fn close(self) {
        for client in self.clients {
            if let Ok(client) = Arc::try_unwrap(client) {
                client.mqtt.close().await;
            }
        }
    }
}

impl Client {
    fn mqtt_id(&self) -> &str {
        self.mqtt.id()
    }

    /// Publishes `body` to `topic` and waits for the answer carrying `token`; the permit is held
    /// until then.
    async fn request(
        &self,
        topic: String,
        token: String,
        body: Value,
        _permit: OwnedSemaphorePermit,
    ) -> Option<Answer> {
        let (tx, rx) = oneshot::channel();
        lock(&self.waiters).insert(token.clone(), tx);
        let sent = self
            .mqtt
            .publish(topic, body.to_string().into_bytes())
            .await;
        let answer = match sent {
            Ok(()) => tokio::time::timeout(ANSWER_TIMEOUT, rx)
                .await
                .ok()
                .and_then(Result::ok),
            Err(_) => None,
        };
        lock(&self.waiters).remove(&token);
        answer
    }
}

/// Routes an answer to the request waiting for its token.
fn answer(waiters: &Waiters, topic: &str, payload: &[u8]) {
    let Ok(document) = serde_json::from_slice::<Value>(payload) else {
        return;
    };
    let Some(token) = document.get("clientToken").and_then(Value::as_str) else {
        return;
    };
    let Some(waiter) = lock(waiters).remove(token) else {
        return;
    };
    let answer = if topic.ends_with("/accepted") {
        Answer::Accepted(document)
    } else {
        Answer::Rejected
    };
    let _ = waiter.send(answer);
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
