//! The web console from outside, over HTTP (ureq): set the operator password with the real
//! `grove console passwd`, sign in, make requests with or without a session and with chosen
//! `Origin` / `Sec-Fetch-Site` headers, and hold live streams (server-sent events) open.
//!
//! Redirects are not followed: a test sees the console's own answer (303 to the sign-in page).

use std::io::{BufRead, BufReader, Read};

use crate::{blocking, grove_with_input, Gateway};

/// The operator password the tests set.
pub const PASSWORD: &str = "correct horse battery";

/// Sets the operator password of `gateway`'s data directory with `grove console passwd`.
pub fn set_password(gateway: &Gateway, password: &str) {
    let config = gateway.config_path();
    let (code, out) = grove_with_input(
        &[
            "console",
            "passwd",
            "--config",
            config.to_str().expect("UTF-8"),
        ],
        gateway.dir.path(),
        Some(&format!("{password}\n")),
    );
    assert_eq!(code, 0, "grove console passwd: {out}");
}

/// An HTTP answer of the console.
#[derive(Debug)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// Its `Location`, for a redirect.
    pub location: Option<String>,
    /// Its `Set-Cookie`.
    pub set_cookie: Option<String>,
    /// Its `Retry-After`.
    pub retry_after: Option<String>,
    /// The body.
    pub body: String,
}

/// A signed-in session: the cookie to send and the page's CSRF token.
#[derive(Debug, Clone)]
pub struct Session {
    /// `grove_console=...`, for a `Cookie` header.
    pub cookie: String,
    /// The token the session's forms carry.
    pub csrf: String,
}

/// A console client for the gateway whose ops endpoint is on `port` (on 127.0.0.1).
pub struct Console {
    base: String,
    agent: ureq::Agent,
}

/// An open live stream; dropping it closes the connection.
pub struct Stream {
    lines: std::io::Lines<BufReader<Box<dyn Read + Send>>>,
}

impl Stream {
    /// The next event's data, or `None` once the console has ended the stream.
    pub fn next_event(&mut self) -> Option<String> {
        blocking(|| {
            let mut data = String::new();
            for line in self.lines.by_ref() {
                let line = line.ok()?;
                if let Some(d) = line.strip_prefix("data:") {
                    data.push_str(d.strip_prefix(' ').unwrap_or(d));
                    data.push('\n');
                } else if line.is_empty() && !data.is_empty() {
                    return Some(data);
                }
            }
            None
        })
    }
}

impl Console {
    /// A client of the console on `127.0.0.1:port`.
    pub fn new(port: u16) -> Console {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(Some(std::time::Duration::from_secs(20)))
            .build()
            .into();
        Console {
            base: format!("http://127.0.0.1:{port}"),
            agent,
        }
    }

    /// The console's origin, as its own pages send it.
    pub fn origin(&self) -> &str {
        &self.base
    }

    fn answer(response: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Answer {
        let response = response.expect("the console answers");
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let (location, set_cookie, retry_after) = (
            header("location"),
            header("set-cookie"),
            header("retry-after"),
        );
        let status = response.status().as_u16();
        let body = response.into_body().read_to_string().unwrap_or_default();
        Answer {
            status,
            location,
            set_cookie,
            retry_after,
            body,
        }
    }

    /// `GET path`, with the session's cookie if any.
    pub fn get(&self, path: &str, session: Option<&Session>) -> Answer {
        blocking(|| {
            let mut request = self.agent.get(format!("{}{path}", self.base));
            if let Some(s) = session {
                request = request.header("Cookie", &s.cookie);
            }
            Console::answer(request.call())
        })
    }

    /// `GET path` with no session, addressed to `host` (the `Host` header).
    pub fn get_for_host(&self, path: &str, host: &str) -> Answer {
        blocking(|| {
            let request = self.agent.get(format!("{}{path}", self.base));
            Console::answer(request.header("Host", host).call())
        })
    }

    /// `POST path` with a form, the session's cookie if any and `headers` (`Origin`, ...).
    pub fn post(
        &self,
        path: &str,
        session: Option<&Session>,
        headers: &[(&str, &str)],
        form: &[(&str, &str)],
    ) -> Answer {
        blocking(|| {
            let mut request = self.agent.post(format!("{}{path}", self.base));
            if let Some(s) = session {
                request = request.header("Cookie", &s.cookie);
            }
            for (k, v) in headers {
                request = request.header(*k, *v);
            }
            Console::answer(request.send_form(form.iter().copied()))
        })
    }

    /// `POST path` with a multipart form (a browser's file upload: `module` as a file, the other
    /// fields as text), the session's cookie and `headers`.
    pub fn post_upload(
        &self,
        path: &str,
        session: &Session,
        headers: &[(&str, &str)],
        module: &[u8],
        fields: &[(&str, &str)],
    ) -> Answer {
        use ureq::unversioned::multipart::{Form, Part};
        blocking(|| {
            let mut request = self.agent.post(format!("{}{path}", self.base));
            request = request.header("Cookie", &session.cookie);
            for (k, v) in headers {
                request = request.header(*k, *v);
            }
            let part = Part::bytes(module).file_name("module.wasm");
            let mut form = Form::new().part("module", part);
            for (k, v) in fields {
                form = form.text(k, v);
            }
            Console::answer(request.send(form))
        })
    }

    /// Signs in with `password` as the console's sign-in page does (same origin).
    pub fn sign_in(&self, password: &str) -> Answer {
        self.post(
            "/console/signin",
            None,
            &[("Origin", self.origin())],
            &[("password", password)],
        )
    }

    /// Signs in with [`PASSWORD`] and reads the session's CSRF token from the overview.
    pub fn session(&self) -> Session {
        let answer = self.sign_in(PASSWORD);
        assert_eq!(answer.status, 303, "sign-in: {answer:?}");
        let cookie = answer
            .set_cookie
            .as_deref()
            .and_then(|c| c.split(';').next())
            .expect("a session cookie")
            .to_owned();
        let mut session = Session {
            cookie,
            csrf: String::new(),
        };
        let page = self.get("/console", Some(&session));
        assert_eq!(page.status, 200, "{page:?}");
        session.csrf = page
            .body
            .split("name=\"csrf\" value=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("the page's CSRF token")
            .to_owned();
        session
    }

    /// Opens the live stream at `path`: the stream, or the status of a refusal.
    pub fn stream(&self, path: &str, session: Option<&Session>) -> Result<Stream, Answer> {
        blocking(|| {
            let mut request = self
                .agent
                .get(format!("{}{path}", self.base))
                .header("Accept", "text/event-stream");
            if let Some(s) = session {
                request = request.header("Cookie", &s.cookie);
            }
            let response = request.call().expect("the console answers");
            if response.status().as_u16() != 200 {
                return Err(Console::answer(Ok(response)));
            }
            let reader: Box<dyn Read + Send> = Box::new(response.into_body().into_reader());
            Ok(Stream {
                lines: BufReader::new(reader).lines(),
            })
        })
    }
}
