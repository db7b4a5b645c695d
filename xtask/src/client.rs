//! The one client of the service's HTTP API used by `load`, `soak` and `faults`.
//!
//! It speaks what a voice agent speaks: `POST /api/v1/tts` (timed to the first audio
//! byte), the STT websocket `GET /api/v1/stt` (audio frames, events up to `turn_end`, timed
//! to the first recognition result) and `DELETE /api/v1/sessions/{id}`. Every failure comes
//! back as a typed [`Failure`]: an [`ErrorClass`] (the service's status and error code, or
//! what the client saw instead of an answer) and the [`Stage`] it happened at, before the
//! first audio byte or recognition result, or after it (a cut stream).
//!
//! Every request and every wait for a message is bounded by the client's bound, so a stuck
//! service shows up as [`ErrorClass::Hang`] instead of a stuck caller.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The request header a load balancer routes on for per-call affinity (HAProxy's stick
/// table and `balance hdr(X-Session-Id)` in `deploy/haproxy.cfg`, Envoy's consistent hash): sent on
/// every request of a call, so each of its turns and its final DELETE reach one replica.
pub(crate) use service::SESSION_HEADER;
/// The response header `deploy/haproxy.cfg` adds: the name of the replica that served the
/// request. Absent when no load balancer is in between.
pub(crate) const REPLICA_HEADER: &str = "x-speech-pool-replica";
/// The response header naming the tier a connection came from: the service's own constant,
/// so the client cannot drift from what the service sends.
pub(crate) use service::TIER_HEADER;

/// One STT audio frame: 100 ms of 16 kHz, 16-bit mono PCM, as a telephony client sends it.
pub(crate) const FRAME: Duration = Duration::from_millis(100);
const FRAME_BYTES: usize = 3_200;

/// How long polite closes of an STT stream may take.
const CLOSE_LIMIT: Duration = Duration::from_secs(2);

/// Which request of the API failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Request {
    Tts,
    Stt,
    Delete,
    /// A whole call: its task panicked or did not finish in time.
    Call,
}

impl Request {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Tts => "tts",
            Self::Stt => "stt",
            Self::Delete => "delete",
            Self::Call => "call",
        }
    }
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a request failed, as the caller saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum ErrorClass {
    /// 429 because the speech service throttled (or any 429 but pool exhaustion).
    Throttled,
    /// 429 `pool_exhausted`: no connection within the acquire timeout.
    PoolExhausted,
    /// 409: the session already has a turn of this kind in flight.
    SessionBusy,
    /// 502 `upstream_auth`.
    UpstreamAuth,
    /// 502 `upstream_protocol`.
    UpstreamProtocol,
    /// Any other 502.
    Upstream,
    /// 503 `shutting_down`.
    Draining,
    /// Any other 503.
    Unavailable,
    /// 504.
    Timeout,
    /// A status the service never answers for these requests (a 500, a 400).
    UnexpectedStatus(u16),
    /// No HTTP answer, or the socket failed.
    Transport,
    /// The client's bound passed without an answer.
    Hang,
    /// The response or stream ended without its end marker.
    StreamCut,
    /// A 200 TTS response without a single audio byte.
    EmptyAudio,
    /// An STT turn that ended (`turn_end`) without any recognition result.
    NoResult,
    /// A message of the wrong shape.
    Protocol,
    /// The caller's task panicked: whatever it was doing is lost.
    Panicked,
    /// The call was still running when the run's drain limit passed.
    Unfinished,
    /// The call was never started: the load generator's cap on calls in flight was hit.
    InFlightCap,
}

impl ErrorClass {
    /// The class of an HTTP failure from its status and the service's `error.code`.
    pub(crate) fn from_status(status: u16, code: Option<&str>) -> Self {
        match (status, code) {
            (429, Some("pool_exhausted")) => Self::PoolExhausted,
            (429, _) => Self::Throttled,
            (409, _) => Self::SessionBusy,
            (502, Some("upstream_auth")) => Self::UpstreamAuth,
            (502, Some("upstream_protocol")) => Self::UpstreamProtocol,
            (502, _) => Self::Upstream,
            (503, Some("shutting_down")) => Self::Draining,
            (503, _) => Self::Unavailable,
            (504, _) => Self::Timeout,
            (status, _) => Self::UnexpectedStatus(status),
        }
    }

    /// Whether the service can answer this way by design (a throttle, an upstream failure
    /// passed on); the rest are defects of the service or of the harness.
    pub(crate) fn is_expected(self) -> bool {
        !matches!(
            self,
            Self::UnexpectedStatus(_)
                | Self::EmptyAudio
                | Self::Protocol
                | Self::Panicked
                | Self::Unfinished
                | Self::InFlightCap
        )
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Self::Throttled => "429-throttled",
            Self::PoolExhausted => "429-pool-exhausted",
            Self::SessionBusy => "409-session-busy",
            Self::UpstreamAuth => "502-auth",
            Self::UpstreamProtocol => "502-protocol",
            Self::Upstream => "502-upstream",
            Self::Draining => "503-draining",
            Self::Unavailable => "503-unavailable",
            Self::Timeout => "504-timeout",
            Self::UnexpectedStatus(status) => return write!(f, "unexpected-{status}"),
            Self::Transport => "transport",
            Self::Hang => "hang",
            Self::StreamCut => "stream-cut",
            Self::EmptyAudio => "unexpected-empty-audio",
            Self::NoResult => "no-result",
            Self::Protocol => "unexpected-protocol",
            Self::Panicked => "unexpected-panic",
            Self::Unfinished => "unfinished",
            Self::InFlightCap => "skipped-in-flight-cap",
        };
        f.write_str(name)
    }
}

/// When, in a request, a failure happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Stage {
    /// Before the caller got anything: no audio byte, no recognition result. The caller
    /// can retry the whole request.
    BeforeOutput,
    /// After the first audio byte or recognition result: the caller has part of the
    /// answer and the rest is lost.
    AfterOutput,
}

/// A failed request: its class and when it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Failure {
    pub class: ErrorClass,
    pub stage: Stage,
}

impl Failure {
    pub(crate) fn before(class: ErrorClass) -> Self {
        Self {
            class,
            stage: Stage::BeforeOutput,
        }
    }

    fn at(class: ErrorClass, output_seen: bool) -> Self {
        Self {
            class,
            stage: if output_seen {
                Stage::AfterOutput
            } else {
                Stage::BeforeOutput
            },
        }
    }
}

/// A TTS turn that delivered its whole audio.
#[derive(Debug, Clone)]
pub(crate) struct TtsTurn {
    /// The tier the service reported (`dedicated`, `warm`, `cold`).
    pub tier: String,
    /// From the request to the first audio byte.
    pub first_audio: Duration,
    /// The acquire wait from the service's `Server-Timing` header, milliseconds.
    pub acquire_ms: Option<f64>,
    /// The replica that served it, when a load balancer named it ([`REPLICA_HEADER`]).
    pub replica: Option<String>,
}

/// An STT turn that ended with `turn_end` after at least one recognition result.
#[derive(Debug, Clone)]
pub(crate) struct SttTurn {
    pub tier: String,
    /// From the turn's start (or the given earlier instant) to the first `hypothesis` or
    /// `phrase`.
    pub first_result: Duration,
    pub acquire_ms: Option<f64>,
}

/// How the caller's audio goes out in an STT turn.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Pace {
    /// One 100 ms frame every 100 ms, events read as they come: a live caller.
    RealTime,
    /// Every frame at once, then `end`: a caller replaying a recording.
    AllAtOnce,
}

/// How to reach the service: cheap to clone, shared by every caller.
#[derive(Debug, Clone)]
pub(crate) struct Client {
    /// One HTTP client (and connection pool) for all callers, as a real agent fleet's
    /// gateway would have. It has no timeout of its own: the bound is ours, so a hang is
    /// told apart from a transport error.
    http: reqwest::Client,
    /// `http://host:port`, no trailing slash.
    base: Arc<str>,
    /// Bearer key for a service started with `SERVICE_API_KEY`.
    auth: Option<Arc<str>>,
    /// Bound on each request and on each wait for a message.
    bound: Duration,
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

impl Client {
    /// A client of the service at `base`, each step bounded by `bound`.
    pub(crate) fn new(base: &str, auth: Option<String>, bound: Duration) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder().build()?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').into(),
            auth: auth.map(Into::into),
            bound,
        })
    }

    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Adds the bearer key when there is one.
    pub(crate) fn authorize(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.auth {
            Some(key) => request.bearer_auth(key),
            None => request,
        }
    }

    /// `POST /api/v1/tts` and the whole audio stream.
    pub(crate) async fn tts(&self, session: Option<&str>, text: &str) -> Result<TtsTurn, Failure> {
        let body = match session {
            Some(id) => serde_json::json!({ "text": text, "session_id": id }),
            None => serde_json::json!({ "text": text }),
        };
        let started = Instant::now();
        let mut first_audio = None;
        let turn = async {
            let mut request = self
                .http
                .post(format!("{}/api/v1/tts", self.base))
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_string());
            if let Some(id) = session {
                request = request.header(SESSION_HEADER, id);
            }
            let request = self.authorize(request);
            let mut response = request
                .send()
                .await
                .map_err(|_| Failure::before(ErrorClass::Transport))?;
            let status = response.status();
            if !status.is_success() {
                let body = response.bytes().await.unwrap_or_default();
                let code = error_code(&body);
                return Err(Failure::before(ErrorClass::from_status(
                    status.as_u16(),
                    code.as_deref(),
                )));
            }
            let headers = response.headers();
            let tier = header_str(headers, TIER_HEADER)
                .unwrap_or("unknown")
                .to_owned();
            let acquire_ms = header_str(headers, "server-timing").and_then(parse_acquire_timing);
            let replica = header_str(headers, REPLICA_HEADER).map(str::to_owned);
            loop {
                match response.chunk().await {
                    Ok(Some(chunk)) => {
                        if first_audio.is_none() && !chunk.is_empty() {
                            first_audio = Some(started.elapsed());
                        }
                    }
                    Ok(None) => break,
                    // The service aborts the body when the turn fails after audio started.
                    Err(_) => {
                        return Err(Failure::at(ErrorClass::StreamCut, first_audio.is_some()));
                    }
                }
            }
            match first_audio {
                Some(first_audio) => Ok(TtsTurn {
                    tier,
                    first_audio,
                    acquire_ms,
                    replica,
                }),
                None => Err(Failure::before(ErrorClass::EmptyAudio)),
            }
        };
        let outcome = tokio::time::timeout(self.bound, turn).await;
        match outcome {
            Ok(result) => result,
            Err(_) => Err(Failure::at(ErrorClass::Hang, first_audio.is_some())),
        }
    }

    /// Opens the session's STT stream and reads the `connected` message.
    pub(crate) async fn open_stt(&self, session: &str) -> Result<SttStream, Failure> {
        let ws_base = self.base.replacen("http", "ws", 1);
        let url = format!("{ws_base}/api/v1/stt?session_id={session}");
        let mut request = tungstenite::client::IntoClientRequest::into_client_request(url)
            .map_err(|_| Failure::before(ErrorClass::Protocol))?;
        if let Some(key) = &self.auth {
            let value = format!("Bearer {key}")
                .parse()
                .map_err(|_| Failure::before(ErrorClass::Protocol))?;
            request.headers_mut().insert("authorization", value);
        }
        let id = session
            .parse()
            .map_err(|_| Failure::before(ErrorClass::Protocol))?;
        request.headers_mut().insert(SESSION_HEADER, id);
        let connect = tokio_tungstenite::connect_async(request);
        let ws = match tokio::time::timeout(self.bound, connect).await {
            Err(_) => return Err(Failure::before(ErrorClass::Hang)),
            // The stream's first connection is taken before the upgrade, so pool and
            // upstream failures arrive as an HTTP status.
            Ok(Err(tungstenite::Error::Http(response))) => {
                let code = response.body().as_deref().and_then(error_code);
                return Err(Failure::before(ErrorClass::from_status(
                    response.status().as_u16(),
                    code.as_deref(),
                )));
            }
            Ok(Err(_)) => return Err(Failure::before(ErrorClass::Transport)),
            Ok(Ok((ws, response))) => (ws, response),
        };
        let (mut ws, response) = ws;
        let replica = response
            .headers()
            .get(REPLICA_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        match next_json(&mut ws, self.bound).await {
            Ok(hello) if hello["type"] == "connected" => Ok(SttStream {
                ws,
                bound: self.bound,
                replica,
            }),
            Ok(v) if v["type"] == "error" => Err(Failure::before(in_band_class(&v))),
            Ok(_) => Err(Failure::before(ErrorClass::Protocol)),
            Err(class) => Err(Failure::before(class)),
        }
    }

    /// `DELETE /api/v1/sessions/{id}`: the call is over, its connections go back. A 404 is
    /// not a failure: a call whose every turn failed before getting a connection has no
    /// session to end.
    pub(crate) async fn end_session(&self, session: &str) -> Result<(), Failure> {
        let request = self.authorize(
            self.http
                .delete(format!("{}/api/v1/sessions/{session}", self.base))
                .header(SESSION_HEADER, session),
        );
        let outcome = async {
            let response = request
                .send()
                .await
                .map_err(|_| Failure::before(ErrorClass::Transport))?;
            let status = response.status();
            let body = response.bytes().await.unwrap_or_default();
            if status.is_success() || status == reqwest::StatusCode::NOT_FOUND {
                Ok(())
            } else {
                let code = error_code(&body);
                Err(Failure::before(ErrorClass::from_status(
                    status.as_u16(),
                    code.as_deref(),
                )))
            }
        };
        tokio::time::timeout(self.bound, outcome)
            .await
            .unwrap_or(Err(Failure::before(ErrorClass::Hang)))
    }
}

/// An open STT stream of one session: one or more turns, then [`SttStream::close`].
pub(crate) struct SttStream {
    ws: Ws,
    bound: Duration,
    /// The replica serving the stream, when a load balancer named it ([`REPLICA_HEADER`]).
    pub replica: Option<String>,
}

impl SttStream {
    /// Sends `utterance` of audio at `pace`, then `end`, and reads the turn's events up
    /// to `turn_end`. The first result is timed from `from` (a call's first turn is timed
    /// from the moment the stream was asked for: a live caller starts speaking when the
    /// call connects) or else from the turn's start. After a failure the stream is
    /// unusable.
    pub(crate) async fn turn(
        &mut self,
        utterance: Duration,
        pace: Pace,
        from: Option<Instant>,
    ) -> Result<SttTurn, Failure> {
        let frames = (utterance.as_millis() / FRAME.as_millis()).max(1) as usize;
        let audio = pcm_frame();
        let started = from.unwrap_or_else(Instant::now);
        let mut first_result: Option<Duration> = None;
        let mut start: Option<(String, Option<f64>)> = None;
        // `frames` audio messages and then `end`.
        let mut sent = 0;
        if let Pace::AllAtOnce = pace {
            while sent <= frames {
                self.send_next(sent, frames, &audio).await?;
                sent += 1;
            }
        }
        let mut pace_clock = tokio::time::interval(FRAME);
        let real_time = matches!(pace, Pace::RealTime);
        // Audio goes out on the pacing clock while events are read as they come, as a
        // telephony client does: the first hypothesis arrives while the caller still
        // speaks. The select only says which happened; sending happens after it, once the
        // pending read (cancel-safe) no longer borrows the socket.
        loop {
            let event = tokio::select! {
                _ = pace_clock.tick(), if real_time && sent <= frames => None,
                event = next_json(&mut self.ws, self.bound) => Some(event),
            };
            let Some(event) = event else {
                self.send_next(sent, frames, &audio)
                    .await
                    .map_err(|f| Failure::at(f.class, first_result.is_some()))?;
                sent += 1;
                continue;
            };
            let event = event.map_err(|class| Failure::at(class, first_result.is_some()))?;
            match event["type"].as_str() {
                Some("turn_start") => {
                    let tier = event["tier"].as_str().unwrap_or("unknown").to_owned();
                    start = Some((tier, event["acquire_ms"].as_f64()));
                }
                Some("hypothesis" | "phrase") if first_result.is_none() => {
                    first_result = Some(started.elapsed());
                }
                Some("turn_end") => break,
                Some("error") => {
                    return Err(Failure::at(in_band_class(&event), first_result.is_some()));
                }
                _ => {}
            }
        }
        match (start, first_result) {
            (Some((tier, acquire_ms)), Some(first_result)) => Ok(SttTurn {
                tier,
                first_result,
                acquire_ms,
            }),
            (None, Some(_)) => Err(Failure::at(ErrorClass::Protocol, true)),
            (_, None) => Err(Failure::before(ErrorClass::NoResult)),
        }
    }

    /// Message number `sent` of a turn of `frames` audio frames: audio, then `end`.
    async fn send_next(
        &mut self,
        sent: usize,
        frames: usize,
        audio: &bytes::Bytes,
    ) -> Result<(), Failure> {
        let message = if sent < frames {
            Message::binary(audio.clone())
        } else {
            Message::text(r#"{"type":"end"}"#)
        };
        match tokio::time::timeout(self.bound, self.ws.send(message)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Failure::before(ErrorClass::StreamCut)),
            Err(_) => Err(Failure::before(ErrorClass::Hang)),
        }
    }

    /// Closes politely (bounded) and drains the close handshake, so the service parks the
    /// connection in the session rather than seeing a dropped socket.
    pub(crate) async fn close(mut self) {
        let close = async {
            if self.ws.close(None).await.is_ok() {
                while let Some(Ok(_)) = self.ws.next().await {}
            }
        };
        let _ = tokio::time::timeout(CLOSE_LIMIT, close).await;
    }
}

fn header_str<'a>(headers: &'a reqwest::header::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The next JSON text message, or the class of what came instead.
async fn next_json(ws: &mut Ws, bound: Duration) -> Result<Value, ErrorClass> {
    loop {
        match tokio::time::timeout(bound, ws.next()).await {
            Err(_) => return Err(ErrorClass::Hang),
            Ok(Some(Ok(Message::Text(text)))) => {
                return serde_json::from_str(&text).map_err(|_| ErrorClass::Protocol);
            }
            Ok(Some(Ok(Message::Close(_))) | None) => return Err(ErrorClass::StreamCut),
            Ok(Some(Err(_))) => return Err(ErrorClass::Transport),
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// The class of an STT `{"type":"error","status":…,"code":…}` message.
fn in_band_class(v: &Value) -> ErrorClass {
    let status = v["status"]
        .as_u64()
        .and_then(|s| u16::try_from(s).ok())
        .unwrap_or(0);
    ErrorClass::from_status(status, v["code"].as_str())
}

/// The `error.code` of the service's JSON error body, if it has one.
fn error_code(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    v["error"]["code"].as_str().map(str::to_owned)
}

/// The `acquire;dur=<ms>` entry of a `Server-Timing` header.
pub(crate) fn parse_acquire_timing(header: &str) -> Option<f64> {
    header.split(',').find_map(|metric| {
        let mut parts = metric.trim().split(';');
        (parts.next()? == "acquire").then_some(())?;
        parts.find_map(|p| p.trim().strip_prefix("dur=")?.parse().ok())
    })
}

/// 100 ms of a quiet saw wave (the mock and the emulator recognise any audio).
fn pcm_frame() -> bytes::Bytes {
    (0..FRAME_BYTES / 2)
        .flat_map(|i| (((i % 64) as i16 - 32) * 100).to_le_bytes())
        .collect::<Vec<u8>>()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_acquire_entry_is_read_from_server_timing() {
        assert_eq!(parse_acquire_timing("acquire;dur=0.012"), Some(0.012));
        assert_eq!(
            parse_acquire_timing("db;dur=3, acquire;desc=\"pool\";dur=12.5"),
            Some(12.5)
        );
        assert_eq!(parse_acquire_timing("db;dur=3"), None);
        assert_eq!(parse_acquire_timing("acquire"), None);
        assert_eq!(parse_acquire_timing("acquire;dur=abc"), None);
    }

    #[test]
    fn statuses_and_codes_map_to_classes() {
        let class = |status, code| ErrorClass::from_status(status, code).to_string();
        assert_eq!(class(429, Some("pool_exhausted")), "429-pool-exhausted");
        assert_eq!(class(429, Some("upstream_throttled")), "429-throttled");
        assert_eq!(class(502, Some("upstream_auth")), "502-auth");
        assert_eq!(class(502, None), "502-upstream");
        assert_eq!(class(503, Some("upstream_unavailable")), "503-unavailable");
        assert_eq!(class(503, Some("shutting_down")), "503-draining");
        assert_eq!(class(504, None), "504-timeout");
        assert_eq!(class(500, Some("internal")), "unexpected-500");
        assert_eq!(class(400, None), "unexpected-400");
        assert!(!ErrorClass::from_status(500, None).is_expected());
        assert!(ErrorClass::from_status(429, None).is_expected());
        assert!(!ErrorClass::Panicked.is_expected());
        assert_eq!(
            error_code(br#"{"error":{"code":"upstream_auth","message":"x"}}"#).as_deref(),
            Some("upstream_auth")
        );
        assert_eq!(error_code(b"not json"), None);
        let in_band =
            serde_json::json!({"type":"error","status":503,"code":"upstream_unavailable"});
        assert_eq!(in_band_class(&in_band), ErrorClass::Unavailable);
    }

    #[test]
    fn a_failure_after_output_is_a_cut() {
        assert_eq!(
            Failure::at(ErrorClass::StreamCut, true).stage,
            Stage::AfterOutput
        );
        assert_eq!(
            Failure::at(ErrorClass::StreamCut, false).stage,
            Stage::BeforeOutput
        );
    }
}
