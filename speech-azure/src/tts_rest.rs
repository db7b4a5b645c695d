//! TTS over REST (docs/protocol.md#tts-over-rest): one HTTP connection per pooled resource,
//! reused across requests, audio streamed to the caller chunk by chunk.

use std::sync::Arc;

use async_trait::async_trait;
use speech_core::{
    Connection, SpeechError, SynthesisEvent, SynthesisRequest, SynthesisSummary, Synthesizer,
    SynthesizerFactory,
};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::client::{AzureSpeech, ClientInner, http_client};
use crate::secret::Secret;
use crate::util::{excerpt, reqwest_error, retry_after};

/// A TTS REST connection: its own reqwest client (so its own kept-alive HTTP connection,
/// HTTP/2 when the server negotiates it) plus the shared credentials.
///
/// Why one client per resource rather than one shared client: a pool resource must be a
/// real connection for WARM versus COLD to mean anything. `warm` performs a cheap
/// authenticated request (the voices list) that opens and keeps the connection; a
/// resource is ready while that connection is younger than the age limit and was used
/// recently enough that neither reqwest nor the front end has dropped it.
pub struct TtsRest {
    http: reqwest::Client,
    client: Arc<ClientInner>,
    created_at: Instant,
    last_used: Instant,
    /// Set by a failed or abandoned request: the connection may be half-read.
    broken: bool,
    in_request: bool,
    requests: u64,
}

impl std::fmt::Debug for TtsRest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TtsRest")
            .field("age", &self.created_at.elapsed())
            .field("broken", &self.broken)
            .field("requests", &self.requests)
            .finish_non_exhaustive()
    }
}

impl TtsRest {
    pub(crate) async fn connect(client: Arc<ClientInner>) -> Result<Self, SpeechError> {
        // The idle timeout of reqwest's own pool must outlive ours, so the connection we
        // consider ready is still there.
        let idle = client.policy.rest_max_idle + std::time::Duration::from_secs(30);
        let http = http_client(&client.tls, &client.policy, &client.user_agent, idle)
            .map_err(|e| SpeechError::transient(e.to_string()))?;
        // Fetch a token now (if tokens are used), so the first request does not pay for it.
        client.auth.header().await?;
        let now = Instant::now();
        Ok(Self {
            http,
            client,
            created_at: now,
            last_used: now,
            broken: false,
            in_request: false,
            requests: 0,
        })
    }

    /// Requests completed on this connection.
    pub fn requests(&self) -> u64 {
        self.requests
    }

    /// Sends one request, retrying once with a fresh token when a bearer token is refused.
    async fn send(
        &mut self,
        build: impl Fn(&reqwest::Client, &Secret, &'static str) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, SpeechError> {
        let policy = self.client.policy;
        let mut retried = false;
        loop {
            let auth = self.client.auth.header().await?;
            let req = build(&self.http, &auth.value, auth.name);
            let resp = tokio::time::timeout(policy.first_response_timeout, req.send())
                .await
                .map_err(|_| {
                    SpeechError::timeout(format!(
                        "no response within {} ms",
                        policy.first_response_timeout.as_millis()
                    ))
                })?
                .map_err(|e| reqwest_error("TTS REST request", e))?;
            let status = resp.status().as_u16();
            if status == 200 {
                return Ok(resp);
            }
            let ra = retry_after(resp.headers());
            // Read the (small) error body so the connection stays reusable.
            let body = tokio::time::timeout(policy.frame_gap_timeout, resp.text())
                .await
                .ok()
                .and_then(Result::ok)
                .map(|b| excerpt(&b))
                .unwrap_or_default();
            if status == 401 && self.client.auth.is_token_based() && !retried {
                retried = true;
                self.client.auth.invalidate(&auth.value);
                continue;
            }
            let mut body = auth.value.redact_in(&body);
            if let Some(k) = self.client.auth.key_secret() {
                body = k.redact_in(&body);
            }
            let msg = if body.is_empty() {
                "the service refused the request".to_owned()
            } else {
                body
            };
            return Err(SpeechError::from_http_status(status, ra, msg));
        }
    }

    async fn run(
        &mut self,
        request: &SynthesisRequest,
        events: &mpsc::Sender<SynthesisEvent>,
    ) -> Result<SynthesisSummary, SpeechError> {
        let ssml = request.to_ssml().into_owned();
        let url = self.client.endpoint.tts_rest_url();
        let format = request.format.as_header_str();
        let mut resp = self
            .send(|http, value, name| {
                http.post(url.clone())
                    .header(name, value.expose())
                    .header("Content-Type", "application/ssml+xml")
                    .header("X-Microsoft-OutputFormat", format)
                    .body(ssml.clone())
            })
            .await?;
        let gap = self.client.policy.frame_gap_timeout;
        let mut bytes = 0u64;
        let mut chunks = 0u32;
        loop {
            let next = tokio::time::timeout(gap, resp.chunk()).await.map_err(|_| {
                SpeechError::timeout(format!(
                    "no audio from the service for {} ms mid-response",
                    gap.as_millis()
                ))
            })?;
            match next.map_err(|e| reqwest_error("reading TTS REST audio", e))? {
                Some(chunk) if chunk.is_empty() => {}
                Some(chunk) => {
                    bytes += chunk.len() as u64;
                    chunks += 1;
                    events.send(SynthesisEvent::Audio(chunk)).await?;
                }
                None => break,
            }
        }
        Ok(SynthesisSummary {
            audio_bytes: bytes,
            chunks,
            request_id: request.request_id.clone(),
        })
    }
}

#[async_trait]
impl Connection for TtsRest {
    fn is_ready(&self) -> bool {
        let now = Instant::now();
        let p = &self.client.policy;
        !self.broken
            && !self.in_request
            && now.saturating_duration_since(self.created_at) < p.max_age
            && now.saturating_duration_since(self.last_used) < p.rest_max_idle
    }

    /// Opens the HTTP connection with one voices-list request (authenticated, cheap, not
    /// billed), since reqwest has no connect-only call (docs/protocol.md#warm-connections).
    async fn warm(&mut self) -> Result<(), SpeechError> {
        self.in_request = true;
        let url = self.client.endpoint.voices_url();
        let resp = self
            .send(|http, value, name| http.get(url.clone()).header(name, value.expose()))
            .await?;
        let gap = self.client.policy.first_response_timeout;
        tokio::time::timeout(gap, resp.bytes())
            .await
            .map_err(|_| SpeechError::timeout("reading the voices list timed out"))?
            .map_err(|e| reqwest_error("reading the voices list", e))?;
        self.in_request = false;
        self.last_used = Instant::now();
        Ok(())
    }

    /// A caller waiting on a COLD connection gets no voices-list request first: its own
    /// synthesis opens the HTTP connection (TCP, TLS, request: three round trips instead
    /// of four) and fails with a classified error if the connection cannot be made, so
    /// the warm-up would prove nothing the caller's request does not.
    async fn warm_for_caller(&mut self) -> Result<(), SpeechError> {
        Ok(())
    }

    async fn close(self: Box<Self>) {
        // Dropping the client closes its idle connection; HTTP has no close handshake
        // worth waiting for.
        drop(self);
    }
}

// No `synthesize_stoppable` override: REST has no stop message. A caller that barges in
// can only read the rest of the response (the service drains it, bounded) or abandon it,
// which breaks this connection's HTTP stream and makes the pool replace it.
#[async_trait]
impl Synthesizer for TtsRest {
    /// Word boundaries are not available over REST (the response is only audio); a request
    /// asking for them gets audio only.
    async fn synthesize(
        &mut self,
        request: SynthesisRequest,
        events: mpsc::Sender<SynthesisEvent>,
    ) -> Result<SynthesisSummary, SpeechError> {
        request.validate()?;
        self.in_request = true;
        let result = self.run(&request, &events).await;
        self.in_request = false;
        self.last_used = Instant::now();
        match &result {
            Ok(_) => self.requests += 1,
            // An HTTP error status with its body read leaves the connection reusable;
            // anything that interrupted the body does not.
            Err(e) => {
                if !matches!(
                    e,
                    SpeechError::Auth { .. }
                        | SpeechError::Throttled { .. }
                        | SpeechError::BadRequest { .. }
                ) {
                    self.broken = true;
                }
                tracing::debug!(error = %e, request_id = %request.request_id, "TTS REST request failed");
            }
        }
        result
    }
}

/// Creates TTS REST connections for a pool.
#[derive(Debug)]
pub struct TtsRestFactory {
    pub(crate) client: AzureSpeech,
}

#[async_trait]
impl SynthesizerFactory for TtsRestFactory {
    async fn create(&self) -> Result<Box<dyn Synthesizer>, SpeechError> {
        Ok(Box::new(self.client.connect_tts_rest().await?))
    }
    async fn voices(&self) -> Result<bytes::Bytes, SpeechError> {
        self.client.voices_list().await
    }
}
