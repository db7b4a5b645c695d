//! The dashboard in a real browser: headless Chromium loads `/` from the running service
//! after some traffic, and the test reads the charts' pixels back through the DevTools
//! protocol: inside each chart's plot area there must be pixels of every data series'
//! colour (axes, grid and labels alone do not count).
//!
//! Needs Debian's `chromium` (`apt-get install -y chromium`; `.ci/run` and `cargo xtask
//! ci` install it). Without it the test fails: a check that quietly stops running is no
//! check.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use service::backend::{BackendKind, Managers};
use service::{Config, state_from_managers};
use speech_mock::backend::{MockConfig, mock_stt_manager, mock_tts_manager};
use tests::{HANG, Ws, spawn_service, tts};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

/// Samples (one a second) the page must have drawn before its pixels are read, so every
/// line spans several samples.
const SAMPLES: u64 = 4;
/// Pixels of a series' colour that show it was drawn: a two-pixel line over a few
/// samples paints well over this, a legend swatch (outside the canvas) nothing.
const MIN_SERIES_PIXELS: u64 = 12;
/// The page's plot padding in CSS pixels (left, right, top, bottom): outside it are the
/// axis labels; inside, only the grid and the data.
const PLOT_PAD: (u32, u32, u32, u32) = (34, 8, 8, 18);

/// Each chart and the CSS variables of its data series' colours.
const CHARTS: [(&str, &[&str]); 3] = [
    ("chart-speech-tts", &["--inuse", "--warm", "--target"]),
    ("chart-speech-stt", &["--inuse", "--warm", "--target"]),
    ("tiers", &["--cold", "--warm", "--ded"]),
];

fn find_chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CHROMIUM_BIN") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser", "google-chrome", "chrome"] {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    None
}

/// Evaluates `expression` in the page and returns its value (`returnByValue`).
async fn evaluate(page: &mut Ws, id: u64, expression: &str) -> Value {
    let request = json!({
        "id": id,
        "method": "Runtime.evaluate",
        "params": { "expression": expression, "returnByValue": true },
    });
    page.send(Message::text(request.to_string()))
        .await
        .expect("send to DevTools");
    loop {
        let message = tokio::time::timeout(HANG, page.next())
            .await
            .expect("DevTools answers")
            .expect("DevTools connection open")
            .expect("DevTools message");
        let Message::Text(text) = message else {
            continue;
        };
        let reply: Value = serde_json::from_str(&text).expect("DevTools JSON");
        if reply["id"] == id {
            assert!(
                reply["result"]["exceptionDetails"].is_null(),
                "the page threw: {reply}"
            );
            return reply["result"]["result"]["value"].clone();
        }
    }
}

/// The page's DevTools websocket, from the browser's `/json/list`.
async fn page_socket(port: u16, url: &str) -> Ws {
    let list_url = format!("http://127.0.0.1:{port}/json/list");
    let deadline = tokio::time::Instant::now() + HANG;
    loop {
        let list: Value = tests::client()
            .get(&list_url)
            .send()
            .await
            .expect("GET /json/list")
            .json()
            .await
            .expect("DevTools target list");
        let page = list.as_array().and_then(|targets| {
            targets
                .iter()
                .find(|t| t["type"] == "page" && t["url"].as_str() == Some(url))
        });
        if let Some(socket) = page.and_then(|p| p["webSocketDebuggerUrl"].as_str()) {
            let (ws, _) = tokio_tungstenite::connect_async(socket)
                .await
                .expect("connect to the page's DevTools socket");
            return ws;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the dashboard never showed up as a DevTools target: {list}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// In the page: the body's data attributes, the status badge, and for each chart its
/// point count and the number of pixels of each series' colour inside the plot area.
fn pixel_probe() -> String {
    let charts: serde_json::Map<String, Value> = CHARTS
        .iter()
        .map(|(id, vars)| ((*id).to_owned(), json!(vars)))
        .collect();
    let (left, right, top, bottom) = PLOT_PAD;
    format!(
        r##"(() => {{
  const charts = {charts};
  const css = (v) => getComputedStyle(document.documentElement).getPropertyValue(v).trim();
  const rgb = (hex) => {{ const h = hex.replace("#", ""); return [0, 2, 4].map((i) => parseInt(h.slice(i, i + 2), 16)); }};
  // Until the page has loaded, the document may still be empty.
  const status = document.getElementById("status");
  const out = {{
    samples: Number((document.body && document.body.dataset.samples) || 0),
    pools: (document.body && document.body.dataset.pools) || "",
    status: status ? status.className : "",
    charts: {{}},
  }};
  for (const [id, vars] of Object.entries(charts)) {{
    const c = document.getElementById(id);
    if (!c || c.width === 0 || c.height === 0) {{ out.charts[id] = null; continue; }}
    const dpr = c.width / (c.clientWidth || c.width);
    // The plot area, widened by 2 px at the top and bottom: a series at 0 or at the
    // maximum is drawn on the area's edge.
    const x0 = Math.floor({left} * dpr), x1 = Math.ceil(c.width - {right} * dpr);
    const y0 = Math.max(0, Math.floor(({top} - 2) * dpr));
    const y1 = Math.min(c.height, Math.ceil(c.height - ({bottom} - 2) * dpr));
    const d = c.getContext("2d").getImageData(x0, y0, x1 - x0, y1 - y0).data;
    const want = vars.map((v) => rgb(css(v)));
    const counts = vars.map(() => 0);
    for (let i = 0; i < d.length; i += 4) {{
      if (d[i + 3] < 128) continue;
      want.forEach((w, k) => {{
        if (Math.abs(d[i] - w[0]) <= 16 && Math.abs(d[i + 1] - w[1]) <= 16 && Math.abs(d[i + 2] - w[2]) <= 16) counts[k]++;
      }});
    }}
    out.charts[id] = {{
      points: Number(c.dataset.points || 0),
      series: Object.fromEntries(vars.map((v, k) => [v, {{ colour: css(v), pixels: counts[k] }}])),
    }};
  }}
  return JSON.stringify(out);
}})()"##,
        charts = Value::Object(charts)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_paints_every_data_series_in_chromium() {
    let chromium = find_chromium().unwrap_or_else(|| {
        panic!(
            "Chromium was not found (looked for CHROMIUM_BIN, then chromium, chromium-browser, \
             google-chrome and chrome on PATH): install it with `apt-get install -y chromium` \
             (`.ci/run` and `cargo xtask ci` do)"
        )
    });

    let mut config = Config::defaults();
    config.warm_pool_tts_size = 2;
    config.warm_pool_stt_size = 1;
    // No background refill: the traffic below then gives fixed, distinct levels (TTS: 3
    // in use, 0 idle, target 2) and every tier (two WARM, one COLD, one DEDICATED).
    config.warm_pool_background_refresh = false;
    let (tts_m, _) = mock_tts_manager(MockConfig::default());
    let (stt_m, _) = mock_stt_manager(MockConfig::default());
    let state = state_from_managers(
        &config,
        Managers {
            kind: BackendKind::Mock,
            tts: tts_m,
            stt: stt_m,
        },
    )
    .expect("state");
    state.warm_up().await;
    let running = spawn_service(&state).await;
    for (session, tier) in [
        ("a", "warm"),
        ("b", "warm"),
        ("c", "cold"),
        ("a", "dedicated"),
    ] {
        let (status, got, _) = tts(&running, json!({"text": "hello", "session_id": session})).await;
        assert_eq!(status, 200, "session {session}");
        assert_eq!(got.as_deref(), Some(tier), "session {session}");
    }

    let profile =
        std::env::temp_dir().join(format!("speech-pool-dashboard-{}", std::process::id()));
    let url = running.url("/");
    let mut browser = tokio::process::Command::new(&chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            "--window-size=1280,900",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(&url)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", chromium.display()));

    // Chromium names its DevTools port on stderr; the rest of stderr is drained so the
    // browser never blocks on a full pipe.
    let mut stderr = BufReader::new(browser.stderr.take().expect("stderr")).lines();
    let port = tokio::time::timeout(HANG, async {
        while let Some(line) = stderr.next_line().await.expect("chromium stderr") {
            if let Some(at) = line.find("ws://127.0.0.1:") {
                let rest = &line[at + "ws://127.0.0.1:".len()..];
                let port = rest.split('/').next().and_then(|p| p.parse::<u16>().ok());
                return port.expect("a DevTools port");
            }
        }
        panic!("chromium exited without opening DevTools");
    })
    .await
    .expect("chromium opens DevTools");
    tokio::spawn(async move { while let Ok(Some(_)) = stderr.next_line().await {} });

    let mut page = page_socket(port, &url).await;
    let probe = pixel_probe();
    let mut id = 0;
    let report = tokio::time::timeout(HANG, async {
        loop {
            id += 1;
            let text = evaluate(&mut page, id, &probe).await;
            let report: Value =
                serde_json::from_str(text.as_str().expect("the probe returns text"))
                    .expect("the probe's JSON");
            if report["samples"].as_u64().unwrap_or(0) >= SAMPLES {
                return report;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
    .await
    .expect("the page draws its samples");
    drop(page);
    browser.kill().await.expect("stop chromium");
    let _ = std::fs::remove_dir_all(&profile);

    eprintln!("dashboard pixels: {report}");
    assert_eq!(
        report["pools"], "speech-stt,speech-tts,speech-tts-stream",
        "{report:#}"
    );
    assert!(
        report["status"].as_str().unwrap_or("").contains("healthy"),
        "{report:#}"
    );
    for (id, vars) in CHARTS {
        let chart = &report["charts"][id];
        assert!(chart.is_object(), "no drawn canvas #{id}: {report:#}");
        assert!(
            chart["points"].as_u64().unwrap_or(0) >= SAMPLES,
            "{id}: {chart:#}"
        );
        for var in vars {
            let series = &chart["series"][var];
            let pixels = series["pixels"].as_u64().unwrap_or(0);
            assert!(
                pixels >= MIN_SERIES_PIXELS,
                "{id}: the {var} series painted {pixels} pixels of its colour in the plot area \
                 (want at least {MIN_SERIES_PIXELS}): {chart:#}"
            );
        }
    }
    running.stop(HANG).await.expect("clean shutdown");
}
