//! `speech-emulator`: runs the Azure Speech emulator from the command line.
//!
//! It prints `speech-emulator listening on <base URL>` on its first line of standard output
//! (scripts parse it), serves until ctrl-c or SIGTERM, then shuts down gracefully.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use speech_emulator::{Emulator, EmulatorConfig, FaultRule, TlsIdentity};

const FAULT_HELP: &str = "\
Inject a fault; repeatable. Syntax: NAME[=VALUE][,OPTION=VALUE]... or the control API's JSON.
Names:
  handshake=STATUS        refuse websocket upgrades (401, 403, 400, 404, 429, 500, 503; 307 redirects)
  handshake-delay=MS      wait before answering the upgrade (slow handshake)
  tls-delay=MS            wait before the TLS handshake of new connections
  rest=STATUS             answer REST requests with STATUS (429, 502, 503, 415, ...)
  rest-delay=MS           wait before answering REST requests (e.g. a slow token endpoint)
  close=CODE              close the websocket (4429, 1007, 1011, 1013, 1000, ...); at=... (default after-turn-start), reason=TEXT
  drop[=K]                drop the connection without a close frame after K audio frames (default 1); at=..., rst
  drop-between-turns      drop the connection right after turn.end
  stall[=K]               stop after K audio frames and never send turn.end (default 0: right after turn.start)
  turn-start-delay=MS     delay turn.start
  first-audio-delay=MS    delay the first audio frame / first STT result
  phrase-error=STATUS     STT: answer with speech.phrase RecognitionStatus=STATUS (TooManyRequests, Error, ...)
  quirks                  lowercase 'name: value' headers, an unknown-path message, an extra empty audio frame
Options:
  times=N                 fire for the next N matching events only (default: every one)
  skip=N                  let the first N matching events through
  target=T                any (default), ws, rest, tts, stt, tts-ws, stt-ws, tts-rest, stt-rest, voices, token
  key=KEY                 only for this subscription key
  retry-after=S           add Retry-After: S (handshake, rest)
  at=POINT                before-turn-start, after-turn-start, after-turn-end, frames:K (close, drop)
  frames=K                same as at=frames:K
Frames are TTS audio frames sent, or STT audio frames received.
Examples: --fault handshake=429,retry-after=2,times=1   --fault close=4429,target=tts-ws   --fault drop=3,rst";

const CONTROL_HELP: &str = "\
Control API (no authentication; JSON unless noted):
  GET    /_emulator               list of these routes
  GET    /_emulator/counters      connections open/opened, handshakes rejected, turns, tokens, REST requests, faults fired
  GET    /_emulator/faults        armed fault rules
  POST   /_emulator/faults        add a rule or an array of rules, e.g. {\"kind\":\"handshake\",\"status\":429,\"retry_after\":2,\"times\":1}
  PUT    /_emulator/faults        replace all rules
  DELETE /_emulator/faults        remove all rules
  POST   /_emulator/disconnect    {\"target\":\"tts_ws\",\"rst\":false}: drop open websockets without a close frame
  POST   /_emulator/close         {\"target\":\"any\",\"code\":1000,\"reason\":\"...\"}: close open websockets
  PUT    /_emulator/transcript    plain text: what STT recognises from now on
  GET    /_emulator/ca.pem        the CA certificate (TLS mode)
  GET    /_emulator/capture       what clients sent, as JSON lines (with --capture)
  DELETE /_emulator/capture       forget the capture
Rule JSON fields: kind (handshake, handshake_delay, tls_delay, rest, rest_delay, close, disconnect, stall,
turn_start_delay, first_audio_delay, phrase_error, quirks) with its fields (status, retry_after, ms, code,
reason, at, rst, after_frames), plus target, times, skip, key. `at` is \"before_turn_start\",
\"after_turn_start\", \"after_turn_end\" or {\"after_frames\":K}.";

/// A protocol-faithful Azure Speech emulator (TTS and STT over REST and websocket) for
/// offline tests, with simulated latency and fault injection.
///
/// Prints `speech-emulator listening on <URL>` on start. Point clients at that URL (for the
/// JavaScript SDK: `SpeechConfig.fromHost(new URL("ws://127.0.0.1:PORT"), key)`). A control
/// API is served under /_emulator (GET /_emulator lists it).
#[derive(Debug, Parser)]
#[command(
    name = "speech-emulator",
    version,
    verbatim_doc_comment,
    after_long_help = CONTROL_HELP
)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    host: IpAddr,
    /// Port to listen on (0 picks a free one; the chosen port is printed).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Serve plain http/ws instead of https/wss.
    #[arg(long)]
    plain: bool,
    /// The accepted subscription key (default: any non-empty key; missing or wrong keys get 401).
    #[arg(long, env = "SPEECH_EMULATOR_KEY")]
    key: Option<String>,
    /// What the speech-to-text routes recognise.
    #[arg(long, default_value = "hello world")]
    transcript: String,
    /// Simulated network round trip in milliseconds: added per handshake round trip (TCP,
    /// TLS, websocket upgrade), before each REST response and before each turn's first
    /// response.
    #[arg(long, default_value_t = 0)]
    rtt_ms: u64,
    /// Close websockets idle this long, with code 1000.
    #[arg(long, default_value_t = 180)]
    idle_timeout_secs: u64,
    /// Close websockets this long after they opened, with code 1000 (the
    /// maxConnectionDurationSecs query parameter can lower it per connection).
    #[arg(long, default_value_t = 600)]
    max_connection_age_secs: u64,
    /// Lifetime of tokens issued by /sts/v1.0/issueToken.
    #[arg(long, default_value_t = 600)]
    token_lifetime_secs: u64,
    /// Write the CA certificate (PEM) clients must trust to this file (TLS mode).
    #[arg(long, value_name = "PATH")]
    cert_out: Option<PathBuf>,
    /// Extra DNS names for the server certificate (it always covers localhost, 127.0.0.1
    /// and ::1), e.g. eastus.tts.speech.microsoft.com for clients mapping real hosts here.
    #[arg(long, value_name = "NAME")]
    tls_name: Vec<String>,
    #[arg(long = "fault", value_name = "SPEC", long_help = FAULT_HELP, help = "Inject a fault (repeatable; see --help for the syntax)")]
    faults: Vec<FaultRule>,
    /// Strict protocol checks (X-ConnectionId required, speech.config once and first, no
    /// overlapping turns, Path and X-RequestId on every message).
    #[arg(long)]
    strict: bool,
    /// At most this many open websockets per key; more get a handshake 429.
    #[arg(long, value_name = "N")]
    max_connections_per_key: Option<usize>,
    /// STT: a phrase ends after this much audio even if the client keeps streaming.
    #[arg(long, default_value_t = 15_000)]
    max_phrase_ms: u64,
    /// Record what clients send (GET /_emulator/capture returns it as JSON lines).
    #[arg(long)]
    capture: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    // Install the signal handlers before announcing the address: a supervisor may signal as
    // soon as it has read it.
    let signals = Signals::install();

    let mut config = EmulatorConfig::default();
    config.bind = SocketAddr::new(args.host, args.port);
    config.tls = !args.plain;
    config.key = args.key.filter(|k| !k.is_empty());
    config.transcript = args.transcript;
    config.rtt = Duration::from_millis(args.rtt_ms);
    config.idle_timeout = Duration::from_secs(args.idle_timeout_secs);
    config.max_connection_age = Duration::from_secs(args.max_connection_age_secs);
    config.token_lifetime = Duration::from_secs(args.token_lifetime_secs);
    config.strict = args.strict;
    config.max_connections_per_key = args.max_connections_per_key;
    config.max_phrase = Duration::from_millis(args.max_phrase_ms.max(1));
    config.faults = args.faults;
    config.capture = args.capture;
    if config.tls {
        match TlsIdentity::generate(&args.tls_name) {
            Ok(id) => config.tls_identity = Some(id),
            Err(e) => {
                eprintln!("speech-emulator: cannot generate a certificate: {e}");
                return ExitCode::FAILURE;
            }
        }
    }

    let handle = match Emulator::start(config).await {
        Ok(h) => h,
        Err(e) => {
            eprintln!("speech-emulator: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let (Some(path), Some(pem)) = (&args.cert_out, handle.ca_cert_pem())
        && let Err(e) = std::fs::write(path, pem)
    {
        eprintln!("speech-emulator: cannot write {}: {e}", path.display());
        handle.shutdown().await;
        return ExitCode::FAILURE;
    }
    // The first line is the contract with scripts. Write errors are ignored (unlike
    // `println!`, which panics): a supervisor that read the address and closed the pipe must
    // not bring the server down.
    {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "speech-emulator listening on {}",
            handle.base_url_http()
        );
        let _ = writeln!(out, "websocket base URL: {}", handle.base_url_ws());
        let _ = writeln!(out, "control API: {}/_emulator", handle.base_url_http());
        if let (Some(path), true) = (&args.cert_out, handle.is_tls()) {
            let _ = writeln!(out, "CA certificate written to {}", path.display());
        }
        let _ = out.flush();
    }

    signals.wait().await;
    tracing::info!("shutting down");
    let left = handle.shutdown().await;
    if left > 0 {
        tracing::warn!(left, "tasks still running at exit");
    }
    ExitCode::SUCCESS
}

/// SIGINT/SIGTERM (ctrl-c elsewhere), registered up front.
struct Signals {
    #[cfg(unix)]
    streams: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Signals {
    fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let streams = signal(SignalKind::interrupt())
                .and_then(|int| Ok((int, signal(SignalKind::terminate())?)))
                .ok();
            Self { streams }
        }
        #[cfg(not(unix))]
        {
            Self {}
        }
    }

    async fn wait(self) {
        #[cfg(unix)]
        if let Some((mut int, mut term)) = self.streams {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}
