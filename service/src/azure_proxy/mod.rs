//! Azure Speech's own protocol, served from the pools: an app using Microsoft's Speech
//! SDKs points its `SpeechConfig` host at this service and every synthesizer and
//! recognizer it creates is served by a warm, pooled upstream connection.
//!
//! Paths (the forms the SDKs use, `docs/protocol.md`):
//! - TTS websocket: `/tts/cognitiveservices/websocket/v1` (JavaScript SDK) and
//!   `/cognitiveservices/websocket/v1` (native SDKs, every third-party client);
//! - STT websocket: `/speech/recognition/{interactive|conversation|dictation}/cognitiveservices/v1`
//!   and the same under `/stt`, with `language` (required, as Azure requires it) and
//!   `format` (`simple` or `detailed`) in the query.
//!
//! - TTS REST: `POST /cognitiveservices/v1` (and `/tts/cognitiveservices/v1`) ([`rest`]);
//! - voices list: `GET /cognitiveservices/voices/list` (and under `/tts`) ([`voices`]);
//! - token: `POST /sts/v1.0/issueToken` ([`token`]).
//!
//! Each downstream websocket is one session of its pool: WARM (COLD only when none is
//! ready) for its first turn, DEDICATED for the rest, returned to the warm set when the
//! SDK disconnects. The upgrade itself takes the connection, so a pool or upstream failure
//! is the upgrade's HTTP status, as Azure would answer it (429 when throttled or
//! exhausted). A connection that speaks Azure's protocol (the azure backend's websockets)
//! relays the SDK's turns verbatim ([`relay`]); any other (the mock, TTS over REST) is
//! served by translation ([`translate`]): the service speaks the protocol itself and runs
//! each turn through the connection's ordinary API. Credentials: [`auth`].

pub mod auth;
pub mod relay;
pub mod rest;
pub mod stt_pools;
pub mod token;
pub mod translate;
pub mod voices;
pub mod wire;

use axum::Router;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use pool_core::{Manager, Pool};
use speech_core::{RecognitionFormat, RecognitionMode, SpeechError};

use crate::error::ApiError;
use crate::routes::{Peer, acquire, check_session_cap, client_id};
use crate::state::AppState;
use relay::{Downstream, Kind, WireConnection};
use stt_pools::Combination;

/// Largest message accepted from an SDK: an SSML turn is at most 64 KiB and audio frames
/// are a few KiB; 1 MiB bounds memory per socket with room to spare.
const MAX_MESSAGE_BYTES: usize = 1 << 20;

/// The Azure-protocol routes. They carry their own authentication ([`auth`]), because the
/// SDKs send their credentials in Azure's forms, not in this service's.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/tts/cognitiveservices/websocket/v1", get(tts_ws))
        .route("/cognitiveservices/websocket/v1", get(tts_ws))
        .route(
            "/speech/recognition/{mode}/cognitiveservices/v1",
            get(stt_ws),
        )
        .route(
            "/stt/speech/recognition/{mode}/cognitiveservices/v1",
            get(stt_ws),
        )
        .route("/cognitiveservices/v1", post(rest::synthesize))
        .route("/tts/cognitiveservices/v1", post(rest::synthesize))
        .route("/cognitiveservices/voices/list", get(voices::list))
        .route("/tts/cognitiveservices/voices/list", get(voices::list))
        .route("/sts/v1.0/issueToken", post(token::issue_token))
}

type QueryPairs = Query<Vec<(String, String)>>;

/// The answer to a plain HTTP request on a websocket path.
fn upgrade_required(e: &WebSocketUpgradeRejection) -> Response {
    ApiError::new(
        e.status(),
        "websocket_required",
        "this is an Azure Speech websocket endpoint: connect with a Speech SDK or an \
         Upgrade: websocket request",
    )
    .into_response()
}

/// `GET /tts/cognitiveservices/websocket/v1` and `/cognitiveservices/websocket/v1`.
async fn tts_ws(
    State(state): State<AppState>,
    peer: Peer,
    headers: HeaderMap,
    Query(query): QueryPairs,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => return upgrade_required(&e),
    };
    if let Err(r) = auth::check(&state, &headers, &query) {
        return r;
    }
    let pool = state.pools().tts.clone();
    match take_first(&state, &peer, pool, Kind::Tts).await {
        Ok((down, true)) => on_upgrade(&state, ws, |s| relay::serve(s, down)),
        Ok((down, false)) => on_upgrade(&state, ws, |s| translate::tts::serve(s, down)),
        Err(r) => r,
    }
}

/// `GET /speech/recognition/{mode}/cognitiveservices/v1` (and under `/stt`).
async fn stt_ws(
    State(state): State<AppState>,
    peer: Peer,
    Path(mode): Path<String>,
    headers: HeaderMap,
    Query(query): QueryPairs,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => return upgrade_required(&e),
    };
    if let Err(r) = auth::check(&state, &headers, &query) {
        return r;
    }
    let combination = match combination(&mode, &query) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let options = state.options();
    let default = combination.mode == options.stt_mode
        && combination.format == options.stt_format
        && combination
            .language
            .eq_ignore_ascii_case(&options.stt_language);
    let pool = if default {
        state.pools().stt.clone()
    } else {
        match state.sdk_stt_pools().get(&combination) {
            Ok(p) => p,
            Err(stt_pools::SttPoolError::Backend(e)) => {
                return ApiError::from_speech(&e).into_response();
            }
            Err(e) => {
                return ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "combination_unavailable",
                    e.to_string(),
                )
                .into_response();
            }
        }
    };
    match take_first(&state, &peer, pool, Kind::Stt).await {
        Ok((down, true)) => on_upgrade(&state, ws, |s| relay::serve(s, down)),
        Ok((down, false)) => on_upgrade(&state, ws, move |s| {
            translate::stt::serve(s, down, combination)
        }),
        Err(r) => r,
    }
}

/// The STT combination a handshake asks for, refused as Azure refuses it: 404 for an
/// unknown mode (no such path), 400 for a missing language or an unknown format.
fn combination(mode: &str, query: &[(String, String)]) -> Result<Combination, ApiError> {
    let mode = match mode {
        "interactive" => RecognitionMode::Interactive,
        "conversation" => RecognitionMode::Conversation,
        "dictation" => RecognitionMode::Dictation,
        _ => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such endpoint",
            ));
        }
    };
    let param = |name: &str| {
        query
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let language = param("language")
        .filter(|l| !l.is_empty())
        .ok_or_else(|| ApiError::bad_request("the language query parameter is required"))?;
    let format = match param("format").map(str::to_ascii_lowercase).as_deref() {
        None | Some("simple") => RecognitionFormat::Simple,
        Some("detailed") => RecognitionFormat::Detailed,
        Some(_) => return Err(ApiError::bad_request("format must be simple or detailed")),
    };
    Ok(Combination {
        mode,
        language: language.to_owned(),
        format,
    })
}

/// Takes the socket's first connection (its session's first turn), so a pool or
/// upstream failure is the upgrade's HTTP status. Returns the socket's session and whether
/// the connection relays Azure's protocol itself (else the socket is served by
/// [`translate`]).
async fn take_first<M>(
    state: &AppState,
    peer: &Peer,
    pool: Pool<M>,
    kind: Kind,
) -> Result<(Downstream<M>, bool), Response>
where
    M: Manager<Error = SpeechError>,
    M::Resource: WireConnection,
{
    let session = format!("azure-sdk:{}", speech_core::RequestId::new());
    let client = client_id(state, peer);
    if let Err(e) = check_session_cap(state, &client, Some(&session)) {
        return Err(e.into_response());
    }
    let first = match acquire(state, &pool, Some(&session)).await {
        Ok(g) => g,
        Err(e) => return Err(e.into_response()),
    };
    let wire = first.0.speaks_wire();
    state.session_cap().record(&client, &session);
    Ok((
        Downstream {
            state: state.clone(),
            pool,
            session,
            first: Some(first),
            kind,
        },
        wire,
    ))
}

/// Upgrades, serving the socket with `serve` as tracked work (shutdown waits for it).
fn on_upgrade<F, Fut>(state: &AppState, ws: WebSocketUpgrade, serve: F) -> Response
where
    F: FnOnce(WebSocket) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let token = state.tasks().token();
    ws.max_message_size(MAX_MESSAGE_BYTES)
        .max_frame_size(MAX_MESSAGE_BYTES)
        .on_upgrade(move |socket| async move {
            serve(socket).await;
            drop(token);
        })
}
