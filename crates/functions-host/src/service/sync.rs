//! The functions component's sync invocations: requests on `$grove/functions/{name}/invoke`, their
//! reply topic checked and their answer made by [`crate::protocol`], answered on the bus.

use super::*;
use crate::protocol::{bad_request, SyncRequest};

impl Functions {
    /// Serves sync invocations published on `$grove/functions/{name}[:{qualifier}]/invoke`.
    pub(super) async fn serve_invoke(self, mut bus: grove_broker::bus::Bus) {
        let mut shutdown = self.inner.shutdown.clone();
        let mut batch = Vec::new();
        while bus.recv_until(&mut batch, &mut shutdown).await {
            for m in batch.drain(..) {
                let this = self.clone();
                tokio::spawn(async move { this.answer_request(m).await });
            }
        }
    }

    async fn answer_request(&self, m: Message) {
        let request = match SyncRequest::parse(&m) {
            Ok(r) => r,
            Err(e) => {
                // Debug only, and rate-limited: what reaches here came through the bus (a device's
                // request with a bad reply topic was refused by the connection layer), so a log
                // line per request would let a rule fed by devices flood the log.
                if let Some(suppressed) = self.may_log_stray() {
                    let topic = crate::logs::cut(m.topic.as_bytes(), MAX_LOGGED);
                    debug!(%topic, suppressed, "an invoke request refused (not invoked, not answered): {e}");
                }
                return;
            }
        };
        let body = match &request.target {
            Err(e) => bad_request(e),
            Ok((name, qualifier)) => {
                let invoked = self
                    .invoke(
                        name,
                        qualifier,
                        m.topic.clone(),
                        request.payload.clone(),
                        m.hops,
                    )
                    .await;
                match invoked {
                    Ok(invoked) => answer(&invoked),
                    Err(e) => error_answer(&e),
                }
            }
        };
        let _ = self.inner.publish.send(vec![request.reply(body)]).await;
    }
}
