//! The control API under `/_emulator` (no authentication: it is a local test tool).
//!
//! | Method and path | Body | Effect |
//! |---|---|---|
//! | `GET /_emulator` | | this list, as JSON |
//! | `GET /_emulator/counters` | | the [`Counters`](crate::Counters) as JSON |
//! | `GET /_emulator/faults` | | the armed fault rules |
//! | `POST /_emulator/faults` | a rule or an array of rules | adds them |
//! | `PUT /_emulator/faults` | a rule or an array of rules | replaces all rules |
//! | `DELETE /_emulator/faults` | | removes all rules |
//! | `POST /_emulator/disconnect` | `{"target":"tts_ws","rst":false}` (both optional) | drops matching open websockets without a close frame |
//! | `POST /_emulator/blackhole` | `{"target":"tts_ws"}` (optional) | makes matching open websockets go silent (no reads, no writes, no close) with the socket kept open |
//! | `POST /_emulator/close` | `{"target":"any","code":1000,"reason":"…"}` (all optional) | closes matching open websockets |
//! | `PUT /_emulator/transcript` | plain text | sets what STT recognises |
//! | `GET /_emulator/ca.pem` | | the CA certificate to trust (404 in plain mode) |
//! | `GET /_emulator/capture` | | what clients sent, as JSON lines (404 unless capture is on) |
//! | `DELETE /_emulator/capture` | | forgets the capture |
//!
//! A rule is a [`FaultRule`] in JSON, e.g.
//! `{"kind":"handshake","status":429,"retry_after":2,"target":"tts_ws","times":1}` or
//! `{"kind":"disconnect","at":{"after_frames":3},"rst":true}`; `at` is `"before_turn_start"`,
//! `"after_turn_start"`, `"after_turn_end"` or `{"after_frames":K}`.

use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;

use crate::faults::{FaultRule, Target};
use crate::http::{self as h, Body};
use crate::state::{ServerState, SessionCommand, lock};

const MAX_CONTROL_BODY: usize = 64 * 1024;

#[derive(Deserialize)]
#[serde(untagged)]
enum FaultRules {
    Many(Vec<FaultRule>),
    One(FaultRule),
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct DisconnectRequest {
    target: Target,
    rst: bool,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct BlackholeRequest {
    target: Target,
}

#[derive(Deserialize)]
#[serde(default)]
struct CloseRequest {
    target: Target,
    code: u16,
    reason: String,
}

impl Default for CloseRequest {
    fn default() -> Self {
        Self {
            target: Target::Any,
            code: 1000,
            reason: "Closed by the emulator control API".to_owned(),
        }
    }
}

fn bad_request(msg: &str) -> Response<Body> {
    h::error(StatusCode::BAD_REQUEST, msg, None)
}

async fn read_json<T: for<'de> Deserialize<'de> + Default>(
    req: &mut Request<Incoming>,
) -> Result<T, Response<Body>> {
    let bytes = h::read_body(req.body_mut(), MAX_CONTROL_BODY)
        .await
        .map_err(|_| bad_request("body too large or unreadable"))?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&bytes).map_err(|e| bad_request(&format!("bad JSON: {e}")))
}

fn fault_rules_response(server: &ServerState) -> Response<Body> {
    let rules = lock(&server.emulator.faults).rules.clone();
    h::json(
        StatusCode::OK,
        &serde_json::to_value(rules).unwrap_or_default(),
    )
}

/// Serves `/_emulator{rest}`.
pub(crate) async fn handle(
    server: &Arc<ServerState>,
    rest: &str,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let method = req.method().clone();
    match (method, rest) {
        (Method::GET, "") => h::json(
            StatusCode::OK,
            &serde_json::json!({
                "counters": "GET /_emulator/counters",
                "faults": "GET|POST|PUT|DELETE /_emulator/faults",
                "disconnect": "POST /_emulator/disconnect {\"target\":\"any\",\"rst\":false}",
                "blackhole": "POST /_emulator/blackhole {\"target\":\"any\"}",
                "close": "POST /_emulator/close {\"target\":\"any\",\"code\":1000,\"reason\":\"...\"}",
                "transcript": "PUT /_emulator/transcript <text>",
                "ca": "GET /_emulator/ca.pem",
                "capture": "GET|DELETE /_emulator/capture",
            }),
        ),
        (Method::GET, "/counters") => h::json(
            StatusCode::OK,
            &serde_json::to_value(server.emulator.counters.snapshot()).unwrap_or_default(),
        ),
        (Method::GET, "/faults") => fault_rules_response(server),
        (m @ (Method::POST | Method::PUT), "/faults") => {
            let bytes = match h::read_body(req.body_mut(), MAX_CONTROL_BODY).await {
                Ok(b) => b,
                Err(_) => return bad_request("body too large or unreadable"),
            };
            let rules = match serde_json::from_slice::<FaultRules>(&bytes) {
                Ok(FaultRules::Many(v)) => v,
                Ok(FaultRules::One(r)) => vec![r],
                Err(e) => return bad_request(&format!("bad fault rule: {e}")),
            };
            {
                let mut p = lock(&server.emulator.faults);
                if m == Method::PUT {
                    p.clear();
                }
                for r in rules {
                    tracing::info!(rule = %r, "fault armed via control API");
                    p.add(r);
                }
            }
            fault_rules_response(server)
        }
        (Method::DELETE, "/faults") => {
            lock(&server.emulator.faults).clear();
            fault_rules_response(server)
        }
        (Method::POST, "/disconnect") => match read_json::<DisconnectRequest>(&mut req).await {
            Ok(d) => {
                let n = server.broadcast(d.target, &SessionCommand::Disconnect { rst: d.rst });
                h::json(StatusCode::OK, &serde_json::json!({"affected": n}))
            }
            Err(r) => r,
        },
        (Method::POST, "/blackhole") => match read_json::<BlackholeRequest>(&mut req).await {
            Ok(b) => {
                let n = server.broadcast(b.target, &SessionCommand::Blackhole);
                h::json(StatusCode::OK, &serde_json::json!({"affected": n}))
            }
            Err(r) => r,
        },
        (Method::POST, "/close") => match read_json::<CloseRequest>(&mut req).await {
            Ok(c) => {
                let cmd = SessionCommand::Close {
                    code: c.code,
                    reason: c.reason,
                };
                let n = server.broadcast(c.target, &cmd);
                h::json(StatusCode::OK, &serde_json::json!({"affected": n}))
            }
            Err(r) => r,
        },
        (Method::PUT | Method::POST, "/transcript") => {
            match h::read_body(req.body_mut(), MAX_CONTROL_BODY)
                .await
                .map(String::from_utf8)
            {
                Ok(Ok(t)) => {
                    *lock(&server.emulator.transcript) = t.trim().to_owned();
                    h::text(StatusCode::OK, "ok")
                }
                _ => bad_request("transcript must be UTF-8 text"),
            }
        }
        (Method::GET, "/ca.pem") => match &server.emulator.config.tls_identity {
            Some(id) if server.emulator.config.tls => h::with_type(
                StatusCode::OK,
                "application/x-pem-file",
                id.ca_cert_pem().as_bytes().to_vec(),
            ),
            _ => h::text(StatusCode::NOT_FOUND, "plain mode: no certificate"),
        },
        (Method::GET | Method::DELETE, "/capture") if !server.emulator.capture.is_enabled() => {
            h::text(
                StatusCode::NOT_FOUND,
                "capture is off (start with --capture)",
            )
        }
        (Method::GET, "/capture") => h::with_type(
            StatusCode::OK,
            "application/x-ndjson",
            server.emulator.capture.json_lines().into_bytes(),
        ),
        (Method::DELETE, "/capture") => {
            server.emulator.capture.clear();
            h::text(StatusCode::OK, "ok")
        }
        _ => h::text(StatusCode::NOT_FOUND, "unknown control route"),
    }
}
