//! HTTP plumbing: the response body type (fixed bytes or lazily streamed audio), request
//! body reading with a cap, query parsing and small response helpers.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use http::{Request, Response, StatusCode};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};

use crate::audio::SynthAudio;

/// A response body: fixed bytes, or synthetic audio produced chunk by chunk as the client
/// reads (HTTP/1.1 sends it chunked, since its length is not announced).
#[derive(Debug)]
pub enum Body {
    /// A complete body (or none).
    Full(Option<Bytes>),
    /// Streamed audio.
    Audio {
        /// The audio being streamed.
        audio: Box<SynthAudio>,
        /// Bytes sent so far.
        offset: u64,
        /// Bytes per chunk.
        chunk: usize,
    },
}

impl Body {
    /// An empty body.
    pub fn empty() -> Self {
        Self::Full(None)
    }
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        match this {
            Self::Full(b) => Poll::Ready(
                b.take()
                    .filter(|b| !b.is_empty())
                    .map(|b| Ok(Frame::data(b))),
            ),
            Self::Audio {
                audio,
                offset,
                chunk,
            } => {
                if *offset >= audio.total_len() {
                    return Poll::Ready(None);
                }
                let data = audio.chunk(*offset, *chunk);
                *offset += data.len() as u64;
                Poll::Ready(Some(Ok(Frame::data(Bytes::from(data)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Full(b) => b.as_ref().is_none_or(Bytes::is_empty),
            Self::Audio { audio, offset, .. } => *offset >= audio.total_len(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            // Deliberately inexact, so hyper uses chunked transfer as the service does
            // (docs/protocol.md#tts-over-rest).
            Self::Audio { .. } => SizeHint::default(),
        }
    }
}

/// A plain-text response.
pub fn text(status: StatusCode, body: &str) -> Response<Body> {
    with_type(
        status,
        "text/plain; charset=utf-8",
        body.to_owned().into_bytes(),
    )
}

/// A JSON response.
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    with_type(
        status,
        "application/json; charset=utf-8",
        value.to_string().into_bytes(),
    )
}

/// A response with a content type and a body.
pub fn with_type(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Response<Body> {
    let mut r = Response::new(Body::Full(Some(Bytes::from(body))));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// An error response as the service shapes them: `{"error":{"code":…,"message":…}}`, with
/// an optional `Retry-After`.
pub fn error(status: StatusCode, message: &str, retry_after: Option<u32>) -> Response<Body> {
    let mut r = json(
        status,
        &serde_json::json!({"error": {"code": status.as_u16().to_string(), "message": message}}),
    );
    if let Some(secs) = retry_after {
        r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    r
}

/// The status for an injected fault code (an invalid code becomes 500).
pub fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// A header value as text, if present and visible ASCII.
pub fn header<'a, B>(req: &'a Request<B>, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Whether an HTTP/1 request announces neither `Content-Length` nor `Transfer-Encoding`.
/// Azure answers such a `POST` with `411 Length Required`, even when it means to send no
/// body; HTTP/2 frames carry the end of the body, so the rule does not apply there.
pub fn lacks_body_length<B>(req: &Request<B>) -> bool {
    let http1 = matches!(
        req.version(),
        http::Version::HTTP_10 | http::Version::HTTP_11
    );
    http1
        && !req.headers().contains_key(http::header::CONTENT_LENGTH)
        && !req.headers().contains_key(http::header::TRANSFER_ENCODING)
}

/// Whether the request asks for a websocket upgrade.
pub fn is_upgrade<B>(req: &Request<B>) -> bool {
    header(req, "upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// The query string as percent-decoded pairs.
pub fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// The first value of a query parameter (name compared case-insensitively).
pub fn query_get<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Why a request body could not be read.
#[derive(Debug)]
pub enum ReadError {
    /// Longer than the cap.
    TooLarge,
    /// The connection failed mid-body.
    Io,
}

/// Reads a whole request body, refusing more than `limit` bytes.
pub async fn read_body(body: &mut Incoming, limit: usize) -> Result<Vec<u8>, ReadError> {
    let mut out = Vec::new();
    loop {
        let frame = std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await;
        match frame {
            None => return Ok(out),
            Some(Err(_)) => return Err(ReadError::Io),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    if out.len() + data.len() > limit {
                        return Err(ReadError::TooLarge);
                    }
                    out.extend_from_slice(&data);
                }
            }
        }
    }
}
