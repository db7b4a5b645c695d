//! The dashboard in a real browser: headless Chromium loads `/` from the running service
//! and the test checks that the charts drew data points and painted pixels.
//!
//! Needs Debian's `chromium` (`apt-get install -y chromium`; `.ci/run` installs it). When
//! it is absent the test is skipped with a message, except under CI (`CI` set), where a
//! missing browser is a failure so the check cannot silently stop running.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;
use service::backend::{BackendKind, Managers};
use service::{Config, state_from_managers};
use speech_mock::backend::{MockConfig, mock_stt_manager, mock_tts_manager};
use tests::{HANG, spawn_service, tts};

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

fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false"))
}

/// The opening tag of the element whose `id` is `id`.
fn tag_with_id<'a>(dom: &'a str, id: &str) -> Option<&'a str> {
    let at = dom.find(&format!("id=\"{id}\""))?;
    let start = dom[..at].rfind('<')?;
    let end = at + dom[at..].find('>')?;
    Some(&dom[start..=end])
}

fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let key = format!(" {name}=\"");
    let at = tag.find(&key)? + key.len();
    let len = tag[at..].find('"')?;
    Some(&tag[at..at + len])
}

fn number(tag: &str, name: &str) -> i64 {
    attr(tag, name)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing or not a number in {tag}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_renders_charts_with_data_in_chromium() {
    let Some(chromium) = find_chromium() else {
        if under_ci() {
            panic!(
                "CI is set but Chromium was not found (looked for CHROMIUM_BIN, chromium, \
                 chromium-browser, google-chrome on PATH); .ci/run must \
                 `apt-get install -y chromium`"
            );
        }
        eprintln!(
            "SKIPPED dashboard_renders_charts_with_data_in_chromium: Chromium is not \
             installed (apt-get install -y chromium, or set CHROMIUM_BIN); under CI this \
             test fails instead of skipping"
        );
        return;
    };

    let mut config = Config::defaults();
    config.warm_pool_tts_size = 2;
    config.warm_pool_stt_size = 1;
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
    // Some traffic so the tier chart has something to stack.
    for body in [
        json!({"text": "one", "session_id": "dash"}),
        json!({"text": "two", "session_id": "dash"}),
        json!({"text": "three"}),
    ] {
        assert_eq!(tts(&running, body).await.0, 200);
    }

    let profile =
        std::env::temp_dir().join(format!("speech-pool-dashboard-{}", std::process::id()));
    let url = running.url("/");
    let dom = tokio::task::spawn_blocking(move || {
        let mut child = Command::new(&chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--hide-scrollbars",
                "--window-size=1280,900",
                // Virtual time: the page's 1 s polls run without the test waiting
                // seconds of wall-clock time; fetches still go to the real service.
                "--virtual-time-budget=6000",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("--dump-dom")
            .arg(&url)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", chromium.display()));
        // A hang guard: kill the browser if it does not finish.
        let pid = child.id();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let watchdog = std::thread::spawn(move || {
            if done_rx.recv_timeout(Duration::from_secs(90)).is_err() {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
        });
        let mut out = String::new();
        if let Some(mut stdout) = child.stdout.take() {
            use std::io::Read;
            let _ = stdout.read_to_string(&mut out);
        }
        let _ = child.wait();
        let _ = done_tx.send(());
        let _ = watchdog.join();
        let _ = std::fs::remove_dir_all(&profile);
        out
    })
    .await
    .expect("chromium task");

    let body = dom
        .find("<body")
        .map(|at| &dom[at..at + dom[at..].find('>').unwrap_or(0) + 1])
        .unwrap_or_else(|| panic!("no <body> in the DOM dump:\n{dom:.2000}"));
    assert!(number(body, "data-samples") >= 2, "{body}");
    assert_eq!(
        attr(body, "data-pools"),
        Some("speech-stt,speech-tts"),
        "{body}"
    );
    let status = tag_with_id(&dom, "status").expect("status badge");
    assert!(status.contains("healthy"), "{status}");
    for id in ["chart-speech-tts", "chart-speech-stt", "tiers"] {
        let canvas = tag_with_id(&dom, id).unwrap_or_else(|| panic!("no canvas #{id}"));
        assert!(canvas.starts_with("<canvas"), "{canvas}");
        assert!(number(canvas, "data-points") >= 2, "{canvas}");
        assert!(
            number(canvas, "data-ink") > 0,
            "{id} painted nothing: {canvas}"
        );
    }
    running.stop(HANG).await.expect("clean shutdown");
}
