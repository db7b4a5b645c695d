//! REST routes: the token endpoint, TTS REST, the voices list and STT short audio.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::audio::{SynthAudio, Timeline};
use crate::auth::{self, Presented};
use crate::faults::{Endpoint, Fault, Phase};
use crate::formats::OutputFormat;
use crate::http::{self as h, Body, ReadError};
use crate::recognition::{parse_riff, phrase_json};
use crate::ssml;
use crate::state::ServerState;

/// The largest TTS REST body accepted. The docs give no figure; 1 MiB is far above any
/// sensible SSML and keeps a misbehaving client from exhausting memory.
const MAX_SSML_REST: usize = 1 << 20;
/// The largest STT short-audio body: 60 s of 48 kHz 16-bit mono with room to spare.
const MAX_SHORT_AUDIO: usize = 8 << 20;

const ACCESS_DENIED: &str = "Access denied due to invalid subscription key or wrong API endpoint. \
     Make sure to provide a valid key for an active subscription and use a correct regional API \
     endpoint for your resource.";

/// What every REST route does first: count, simulate the round trip, apply injected REST
/// faults, authenticate. `Ok` carries the caller's identity.
async fn prologue(
    server: &Arc<ServerState>,
    req: &Request<Incoming>,
    endpoint: Endpoint,
    key_only: bool,
) -> Result<String, Response<Body>> {
    let emulator = &server.emulator;
    emulator.counters.inc(&emulator.counters.rest_requests);
    let query = h::query_pairs(req.uri().query());
    let presented = auth::presented(|n| h::header(req, n), &query);
    let presented = presented.filter(|p| !key_only || matches!(p, Presented::Key(_)));
    let checked = auth::check(presented.as_ref(), emulator.config.key.as_deref());
    let identity = checked.as_ref().ok().map(String::as_str);
    let mut delay = emulator.config.rtt;
    let mut injected = None;
    for f in emulator.take_faults(Phase::Rest, Some(endpoint), identity) {
        match f {
            Fault::RestDelay { ms } => delay = delay.saturating_add(Duration::from_millis(ms)),
            Fault::Rest {
                status,
                retry_after,
            } => {
                injected.get_or_insert((status, retry_after));
            }
            _ => {}
        }
    }
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if let Some((status, retry_after)) = injected {
        return Err(h::error(h::status(status), "injected fault", retry_after));
    }
    checked.map_err(|e| {
        tracing::debug!(?endpoint, reason = e.reason(), "REST request refused");
        h::error(StatusCode::UNAUTHORIZED, ACCESS_DENIED, None)
    })
}

/// `POST /sts/v1.0/issueToken`: a JWT as plain text (no JSON, no `Bearer `).
pub(crate) async fn issue_token(
    server: &Arc<ServerState>,
    req: Request<Incoming>,
) -> Response<Body> {
    let key = match prologue(server, &req, Endpoint::Token, true).await {
        Ok(k) => k,
        Err(r) => return r,
    };
    let emulator = &server.emulator;
    let token = auth::issue_token(&key, SystemTime::now(), emulator.config.token_lifetime);
    emulator.counters.inc(&emulator.counters.tokens_issued);
    h::with_type(
        StatusCode::OK,
        "text/plain; charset=utf-8",
        token.into_bytes(),
    )
}

/// `POST /cognitiveservices/v1` (and `/tts/…`): SSML in, streamed audio out.
pub(crate) async fn tts(server: &Arc<ServerState>, mut req: Request<Incoming>) -> Response<Body> {
    if let Err(r) = prologue(server, &req, Endpoint::TtsRest, false).await {
        return r;
    }
    let content_type = h::header(&req, "content-type").unwrap_or_default();
    if !content_type
        .trim()
        .to_ascii_lowercase()
        .starts_with("application/ssml+xml")
    {
        return h::error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/ssml+xml",
            None,
        );
    }
    let format = match h::header(&req, "x-microsoft-outputformat") {
        None => {
            return h::error(
                StatusCode::BAD_REQUEST,
                "missing X-Microsoft-OutputFormat header",
                None,
            );
        }
        Some(name) => match OutputFormat::by_name(name) {
            Some(f) => f,
            None => {
                return h::error(
                    StatusCode::BAD_REQUEST,
                    &format!("unsupported output format {name:?}"),
                    None,
                );
            }
        },
    };
    let body = match h::read_body(req.body_mut(), MAX_SSML_REST).await {
        Ok(b) => b,
        Err(ReadError::TooLarge) => {
            return h::error(StatusCode::BAD_REQUEST, "request body too large", None);
        }
        Err(ReadError::Io) => return h::error(StatusCode::BAD_REQUEST, "body not read", None),
    };
    let doc = match String::from_utf8(body) {
        Ok(d) => d,
        Err(_) => return h::error(StatusCode::BAD_REQUEST, "SSML is not UTF-8", None),
    };
    let parsed = match ssml::parse(&doc) {
        Ok(p) => p,
        Err(e) => return h::error(StatusCode::BAD_REQUEST, &e.to_string(), None),
    };
    let audio = SynthAudio::new(format, Timeline::new(&parsed.text));
    let mut r = Response::new(Body::Audio {
        audio: Box::new(audio),
        offset: 0,
        chunk: 4096,
    });
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(format.mime()));
    r
}

/// `GET /cognitiveservices/voices/list`.
pub(crate) async fn voices(server: &Arc<ServerState>, req: Request<Incoming>) -> Response<Body> {
    if let Err(r) = prologue(server, &req, Endpoint::Voices, false).await {
        return r;
    }
    let list: Vec<serde_json::Value> = VOICES
        .iter()
        .map(|(short, display, gender, locale, locale_name, styles)| {
            let (lang, region) = locale.split_once('-').unwrap_or((locale, ""));
            let base = short.rsplit('-').next().unwrap_or(short);
            let mut v = serde_json::json!({
                "Name": format!("Microsoft Server Speech Text to Speech Voice ({lang}-{region}, {base})"),
                "DisplayName": display,
                "LocalName": display,
                "ShortName": short,
                "Gender": gender,
                "Locale": locale,
                "LocaleName": locale_name,
                "SampleRateHertz": "24000",
                "VoiceType": "Neural",
                "Status": "GA",
                "WordsPerMinute": "150",
            });
            if !styles.is_empty() {
                v["StyleList"] = serde_json::json!(styles);
            }
            v
        })
        .collect();
    h::json(StatusCode::OK, &serde_json::Value::Array(list))
}

type Voice = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static [&'static str],
);

const VOICES: &[Voice] = &[
    (
        "en-US-JennyNeural",
        "Jenny",
        "Female",
        "en-US",
        "English (United States)",
        &["assistant", "chat", "cheerful"],
    ),
    (
        "en-US-GuyNeural",
        "Guy",
        "Male",
        "en-US",
        "English (United States)",
        &["newscast"],
    ),
    (
        "en-US-AvaMultilingualNeural",
        "Ava Multilingual",
        "Female",
        "en-US",
        "English (United States)",
        &[],
    ),
    (
        "en-GB-SoniaNeural",
        "Sonia",
        "Female",
        "en-GB",
        "English (United Kingdom)",
        &["cheerful", "sad"],
    ),
    (
        "de-DE-KatjaNeural",
        "Katja",
        "Female",
        "de-DE",
        "German (Germany)",
        &[],
    ),
];

/// `POST /speech/recognition/{mode}/cognitiveservices/v1?language=…`: a WAV body in, one
/// final result out (docs/protocol.md#stt-over-rest).
pub(crate) async fn stt_short(
    server: &Arc<ServerState>,
    mut req: Request<Incoming>,
) -> Response<Body> {
    if let Err(r) = prologue(server, &req, Endpoint::SttRest, false).await {
        return r;
    }
    let query = h::query_pairs(req.uri().query());
    if h::query_get(&query, "language").is_none_or(str::is_empty)
        && h::query_get(&query, "cid").is_none()
    {
        return h::error(StatusCode::BAD_REQUEST, "missing language parameter", None);
    }
    let detailed =
        h::query_get(&query, "format").is_some_and(|f| f.eq_ignore_ascii_case("detailed"));
    let body = match h::read_body(req.body_mut(), MAX_SHORT_AUDIO).await {
        Ok(b) => b,
        Err(_) => {
            return h::error(
                StatusCode::BAD_REQUEST,
                "audio too long or unreadable",
                None,
            );
        }
    };
    let (fmt, data_at) = match parse_riff(&body) {
        Ok(x) => x,
        Err(e) => return h::error(StatusCode::BAD_REQUEST, e, None),
    };
    let audio_bytes = body.len().saturating_sub(data_at) as u64;
    let duration = fmt.ticks(audio_bytes);
    let transcript = server.emulator.transcript();
    let v = if audio_bytes == 0 {
        serde_json::json!({"RecognitionStatus": "InitialSilenceTimeout", "Offset": 0, "Duration": 0})
    } else {
        phrase_json(&transcript, 0, duration, detailed, false)
    };
    h::json(StatusCode::OK, &v)
}
