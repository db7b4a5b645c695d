//! REST routes, authentication and TLS.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use speech_emulator::timing::synthesized_ms;
use speech_emulator::{EmulatorConfig, token};

#[tokio::test]
async fn token_endpoint_issues_jwt_shaped_tokens_accepted_everywhere() {
    let emu = start_plain().await;
    let http = http(&emu);
    let base = emu.base_url_http();
    let r = http
        .post(format!("{base}/sts/v1.0/issueToken"))
        .header("Content-Length", "0")
        .header("Ocp-Apim-Subscription-Key", KEY)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .send()
        .await
        .expect("token response");
    assert_eq!(r.status(), 200);
    let jwt = r.text().await.expect("body");
    assert_eq!(jwt.split('.').count(), 3);
    assert!(!jwt.starts_with("Bearer"));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let exp = token::exp(&jwt).expect("exp claim");
    assert!((now + 590..=now + 610).contains(&exp), "exp = now + 600 s");

    // A wrong key gets no token.
    let r = http
        .post(format!("{base}/sts/v1.0/issueToken"))
        .header("Content-Length", "0")
        .header("Ocp-Apim-Subscription-Key", "wrong")
        .send()
        .await
        .expect("response");
    assert_eq!(r.status(), 401);

    // The token works as a header, in the query with and without "Bearer ".
    let bearer = format!("Bearer {jwt}");
    connect_with(&emu, TTS_PATH, &[("Authorization", &bearer)])
        .await
        .expect("header")
        .close()
        .await;
    let q = format!("{TTS_PATH}?Authorization={}", urlencode(&bearer));
    connect_with(&emu, &q, &[])
        .await
        .expect("query with Bearer")
        .close()
        .await;
    let q = format!("{TTS_PATH}?Authorization={jwt}");
    connect_with(&emu, &q, &[])
        .await
        .expect("query without Bearer")
        .close()
        .await;
    let q = format!(
        "/speech/recognition/interactive/cognitiveservices/v1?language=en-US&Ocp-Apim-Subscription-Key={KEY}"
    );
    connect_with(&emu, &q, &[])
        .await
        .expect("key in the query")
        .close()
        .await;
    let r = http
        .get(format!("{base}/cognitiveservices/voices/list"))
        .header("Authorization", &bearer)
        .send()
        .await
        .expect("voices");
    assert_eq!(r.status(), 200);

    // A forged token is refused.
    let forged = format!("Bearer {jwt}x");
    let r = refused(&emu, TTS_PATH, &[("Authorization", &forged)]).await;
    assert_eq!(r.status(), 401);
    drop(http);
    settle(&emu).await;
    assert_eq!(emu.counters().tokens_issued, 1);
    assert_eq!(emu.shutdown().await, 0, "no task left behind");
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn expired_tokens_are_refused_at_handshake_and_on_rest() {
    let emu = start(
        EmulatorConfig::plain()
            .with_key(KEY)
            .with_token_lifetime(Duration::ZERO),
    )
    .await;
    let http = http(&emu);
    let jwt = http
        .post(format!("{}/sts/v1.0/issueToken", emu.base_url_http()))
        .header("Content-Length", "0")
        .header("Ocp-Apim-Subscription-Key", KEY)
        .send()
        .await
        .expect("token")
        .text()
        .await
        .expect("body");
    let bearer = format!("Bearer {jwt}");
    assert_eq!(
        refused(&emu, TTS_PATH, &[("Authorization", &bearer)])
            .await
            .status(),
        401
    );
    let r = http
        .post(format!("{}/cognitiveservices/v1", emu.base_url_http()))
        .header("Authorization", &bearer)
        .header("Content-Type", "application/ssml+xml")
        .header("X-Microsoft-OutputFormat", "riff-16khz-16bit-mono-pcm")
        .body(ssml("hi"))
        .send()
        .await
        .expect("response");
    assert_eq!(r.status(), 401);
    assert_eq!(emu.shutdown().await, 0, "no task left behind");
}

#[tokio::test]
async fn auth_failures_are_401() {
    let emu = start_plain().await;
    assert_eq!(
        refused(&emu, TTS_PATH, &[]).await.status(),
        401,
        "no credential"
    );
    assert_eq!(
        refused(&emu, TTS_PATH, &[("Ocp-Apim-Subscription-Key", "nope")])
            .await
            .status(),
        401
    );
    assert_eq!(
        refused(&emu, TTS_PATH, &[("Authorization", "Bearer not-a-jwt")])
            .await
            .status(),
        401
    );
    let stt = "/speech/recognition/interactive/cognitiveservices/v1?language=en-US";
    assert_eq!(refused(&emu, stt, &[]).await.status(), 401);
    assert_eq!(emu.counters().handshakes_rejected, 4);

    // Without --key, any non-empty key is accepted, an empty one is not.
    let open = start(EmulatorConfig::plain()).await;
    connect_with(
        &open,
        TTS_PATH,
        &[("Ocp-Apim-Subscription-Key", "anything")],
    )
    .await
    .expect("any key")
    .close()
    .await;
    assert_eq!(
        refused(&open, TTS_PATH, &[("Ocp-Apim-Subscription-Key", "")])
            .await
            .status(),
        401
    );
    assert_eq!(emu.shutdown().await, 0, "no task left behind");
    assert_eq!(open.shutdown().await, 0);
}

#[tokio::test]
async fn tts_rest_streams_valid_audio_and_validates_requests() {
    let emu = start_plain().await;
    let http = http(&emu);
    let base = emu.base_url_http();
    let text = "REST synthesis works";
    for path in ["/cognitiveservices/v1", "/tts/cognitiveservices/v1"] {
        let r = http
            .post(format!("{base}{path}"))
            .header("Ocp-Apim-Subscription-Key", KEY)
            .header("Content-Type", "application/ssml+xml")
            .header("X-Microsoft-OutputFormat", "riff-24khz-16bit-mono-pcm")
            .header("User-Agent", "emulator-test")
            .body(ssml(text))
            .send()
            .await
            .expect("response");
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers().get("transfer-encoding").map(|v| v.as_bytes()),
            Some(&b"chunked"[..]),
            "streamed"
        );
        assert!(r.headers().get("content-length").is_none());
        let body = r.bytes().await.expect("body");
        assert_eq!(&body[..4], b"RIFF");
        let data = u32::from_le_bytes([body[40], body[41], body[42], body[43]]) as usize;
        assert_eq!(data + 44, body.len());
        assert_eq!(data as u64, 48 * synthesized_ms(text));
    }
    let post = |ct: &'static str, fmt: Option<&'static str>, body: String| {
        let mut b = http
            .post(format!("{base}/cognitiveservices/v1"))
            .header("Ocp-Apim-Subscription-Key", KEY)
            .header("Content-Type", ct)
            .body(body);
        if let Some(f) = fmt {
            b = b.header("X-Microsoft-OutputFormat", f);
        }
        b.send()
    };
    let ok_fmt = Some("audio-16khz-32kbitrate-mono-mp3");
    assert_eq!(
        post("text/plain", ok_fmt, ssml("x"))
            .await
            .expect("r")
            .status(),
        415
    );
    assert_eq!(
        post("application/ssml+xml", Some("bogus-format"), ssml("x"))
            .await
            .expect("r")
            .status(),
        400
    );
    assert_eq!(
        post("application/ssml+xml", None, ssml("x"))
            .await
            .expect("r")
            .status(),
        400
    );
    assert_eq!(
        post("application/ssml+xml", ok_fmt, "<speak>".into())
            .await
            .expect("r")
            .status(),
        400
    );
    assert_eq!(
        post("application/ssml+xml", ok_fmt, "plain text".into())
            .await
            .expect("r")
            .status(),
        400
    );
    let mp3 = post("application/ssml+xml", ok_fmt, ssml("x"))
        .await
        .expect("r");
    assert_eq!(mp3.headers()["content-type"], "audio/mpeg");
    assert_eq!(&mp3.bytes().await.expect("body")[..2], &[0xff, 0xf3]);
    drop(http);
    assert_eq!(emu.shutdown().await, 0, "no task left behind");
}

#[tokio::test]
async fn voices_list_stt_short_audio_unknown_paths_and_control_api() {
    let emu = start_plain().await;
    let http = http(&emu);
    let base = emu.base_url_http();
    let voices: serde_json::Value = http
        .get(format!("{base}/cognitiveservices/voices/list"))
        .header("Ocp-Apim-Subscription-Key", KEY)
        .send()
        .await
        .expect("r")
        .into_json()
        .await;
    let first = &voices[0];
    for field in [
        "Name",
        "DisplayName",
        "LocalName",
        "ShortName",
        "Gender",
        "Locale",
        "LocaleName",
        "SampleRateHertz",
        "VoiceType",
        "Status",
        "WordsPerMinute",
    ] {
        assert!(first.get(field).is_some(), "voice field {field}");
    }
    assert_eq!(
        http.get(format!("{base}/cognitiveservices/voices/list"))
            .send()
            .await
            .expect("r")
            .status(),
        401
    );

    let mut wav = riff_header(16000, 1, 16);
    wav.extend(pcm16k(2000));
    let stt = |q: &str| {
        http.post(format!(
            "{base}/speech/recognition/conversation/cognitiveservices/v1{q}"
        ))
        .header("Ocp-Apim-Subscription-Key", KEY)
        .header(
            "Content-Type",
            "audio/wav; codecs=audio/pcm; samplerate=16000",
        )
        .body(wav.clone())
        .send()
    };
    let v: serde_json::Value = stt("?language=en-US&format=detailed")
        .await
        .expect("r")
        .into_json()
        .await;
    assert_eq!(v["RecognitionStatus"], "Success");
    assert_eq!(v["Duration"], 20_000_000);
    assert_eq!(v["NBest"][0]["Display"], "hello world");
    assert_eq!(
        stt("").await.expect("r").status(),
        400,
        "language is mandatory"
    );

    for p in [
        "/",
        "/nope",
        "/cognitiveservices/v2",
        "/speech/recognition/bogus/cognitiveservices/v1",
    ] {
        assert_eq!(
            http.get(format!("{base}{p}"))
                .send()
                .await
                .expect("r")
                .status(),
            404,
            "{p}"
        );
    }
    let counters: serde_json::Value = http
        .get(format!("{base}/_emulator/counters"))
        .send()
        .await
        .expect("r")
        .into_json()
        .await;
    assert_eq!(counters["rest_requests"], 4);
    assert_eq!(
        http.get(format!("{base}/_emulator/ca.pem"))
            .send()
            .await
            .expect("r")
            .status(),
        404
    );
    drop(http);
    assert_eq!(emu.shutdown().await, 0, "no task left behind");
}

#[tokio::test]
async fn tls_with_the_generated_ca_and_h2_over_alpn() {
    let emu = start(EmulatorConfig::default().with_key(KEY)).await;
    assert!(emu.base_url_ws().starts_with("wss://"));
    let pem = emu.ca_cert_pem().expect("CA in TLS mode");
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));

    // wss with the CA trusted.
    let mut c = connect(&emu, TTS_PATH).await;
    c.speech_config(&new_id()).await;
    c.synthesize(&new_id(), "raw-16khz-16bit-mono-pcm", false, "secure")
        .await;
    let msgs = c.until_turn_end().await;
    assert!(msgs.iter().any(|m| m.path() == Some("audio")));
    c.close().await;

    // REST over h2 (ALPN) and over HTTP/1.1.
    let http2 = http(&emu);
    let r = http2
        .get(format!(
            "{}/cognitiveservices/voices/list",
            emu.base_url_http()
        ))
        .header("Ocp-Apim-Subscription-Key", KEY)
        .send()
        .await
        .expect("h2 response");
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    // Read the body: an unread h2 response keeps its stream (and connection) open.
    assert!(r.into_json().await.is_array());
    let http1 = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(pem.as_bytes()).expect("pem")])
        .http1_only()
        .build()
        .expect("client");
    let r = http1
        .post(format!(
            "https://localhost:{}/cognitiveservices/v1",
            emu.addr().port()
        ))
        .header("Ocp-Apim-Subscription-Key", KEY)
        .header("Content-Type", "application/ssml+xml")
        .header("X-Microsoft-OutputFormat", "raw-16khz-16bit-mono-pcm")
        .body(ssml("over TLS"))
        .send()
        .await
        .expect("h1 response");
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
    assert_eq!(
        r.bytes().await.expect("body").len() as u64,
        32 * synthesized_ms("over TLS")
    );
    let ca: String = http1
        .get(format!("{}/_emulator/ca.pem", emu.base_url_http()))
        .send()
        .await
        .expect("r")
        .text()
        .await
        .expect("pem");
    assert_eq!(ca, pem);

    // Without the CA the handshake fails.
    let untrusting = reqwest::Client::builder()
        .tls_certs_only(Vec::<reqwest::Certificate>::new())
        .build()
        .expect("client");
    assert!(
        untrusting
            .get(format!("{}/_emulator/counters", emu.base_url_http()))
            .send()
            .await
            .is_err()
    );
    drop((http2, http1, untrusting));
    settle(&emu).await;
    assert_eq!(emu.shutdown().await, 0, "no task left behind");
}
