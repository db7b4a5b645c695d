//! The end of a load run: the text report, the `load.<name>: <value>` lines, and with
//! `--out DIR` the same report as JSON plus an SVG plot of the latency distributions.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use plotters::prelude::*;
use serde_json::{Value, json};

use super::stats::{Kind, Recorded, Summary, round};
use super::target::Connections;

/// What the report needs besides the samples.
#[derive(Debug)]
pub(crate) struct RunInfo<'a> {
    /// One line describing the run's settings.
    pub settings: String,
    /// The settings as JSON, for the report file.
    pub settings_json: Value,
    pub calls: u64,
    pub completed: u64,
    pub elapsed: Duration,
    pub connections: &'a Connections,
}

/// The headline figures, computed once for the text, the JSON and the machine lines.
struct Figures {
    turns: BTreeMap<Kind, usize>,
    errors: u64,
    /// Share of all turns (TTS and STT) served by a cold connect.
    cold_share: f64,
    latency: BTreeMap<(Kind, String), Summary>,
    acquire: BTreeMap<(Kind, String), Summary>,
}

impl Figures {
    fn of(recorded: &Recorded) -> Self {
        let summarise = |samples: &BTreeMap<(Kind, String), Vec<f64>>| {
            samples
                .iter()
                .filter_map(|(key, v)| Some((key.clone(), Summary::of(v)?)))
                .collect::<BTreeMap<_, _>>()
        };
        let latency = summarise(&recorded.latency_ms);
        let mut turns = BTreeMap::new();
        let mut cold = 0;
        for ((kind, tier), s) in &latency {
            *turns.entry(*kind).or_default() += s.count;
            if tier == "cold" {
                cold += s.count;
            }
        }
        let total: usize = turns.values().sum();
        Self {
            turns,
            errors: recorded.errors.values().sum(),
            cold_share: if total == 0 {
                0.0
            } else {
                cold as f64 * 100.0 / total as f64
            },
            latency,
            acquire: summarise(&recorded.acquire_ms),
        }
    }

    fn p99(&self, kind: Kind, tier: &str) -> Option<f64> {
        self.latency.get(&(kind, tier.to_owned())).map(|s| s.p99)
    }
}

fn fmt_ms(value: Option<f64>) -> String {
    value.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.1}"))
}

/// Prints the report and the machine-readable lines.
pub(crate) fn print(info: &RunInfo<'_>, recorded: &Recorded) {
    let f = Figures::of(recorded);
    let turns: Vec<String> = f
        .turns
        .iter()
        .map(|(kind, n)| format!("{n} {}", kind.as_str()))
        .collect();
    println!();
    println!("load report");
    println!("  {}", info.settings);
    println!(
        "  {} calls ({} completed), turns ok: {}, in {:.1} s",
        info.calls,
        info.completed,
        if turns.is_empty() {
            "none".to_owned()
        } else {
            turns.join(", ")
        },
        info.elapsed.as_secs_f64()
    );
    println!("  errors: {}", recorded.errors_line());
    println!("  cold share: {:.2}% of turns", f.cold_share);
    if let Some(last) = recorded.cold_at_s.iter().copied().reduce(f64::max) {
        let late = recorded
            .cold_at_s
            .iter()
            .filter(|t| **t > info.elapsed.as_secs_f64() / 3.0)
            .count();
        println!(
            "  cold turns: last at {last:.1} s after the start; {late} in the last two thirds of the run"
        );
    }
    println!(
        "  {:<4} {:<10} {:>6} {:>6} | {:>8} {:>8} {:>8} {:>8} | {:>9} {:>9}",
        "kind",
        "tier",
        "turns",
        "share",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "max ms",
        "acq p50",
        "acq p99"
    );
    for ((kind, tier), s) in &f.latency {
        let total = f.turns.get(kind).copied().unwrap_or(0).max(1);
        let acquire = f.acquire.get(&(*kind, tier.clone()));
        println!(
            "  {:<4} {:<10} {:>6} {:>5.1}% | {:>8.1} {:>8.1} {:>8.1} {:>8.1} | {:>9} {:>9}",
            kind.as_str(),
            tier,
            s.count,
            s.count as f64 * 100.0 / total as f64,
            s.p50,
            s.p95,
            s.p99,
            s.max,
            acquire.map_or_else(|| "n/a".to_owned(), |a| format!("{:.3}", a.p50)),
            acquire.map_or_else(|| "n/a".to_owned(), |a| format!("{:.3}", a.p99)),
        );
    }
    println!(
        "  (tts: time to first audio; stt: first audio frame to first result; acq: connection acquire from Server-Timing, ms)"
    );
    println!("  connections:");
    for line in &info.connections.lines {
        println!("    {line}");
    }
    if info.calls > 0 {
        let per_call: Vec<String> = info
            .connections
            .created
            .iter()
            .map(|(pool, n)| format!("{pool} {:.2}", *n as f64 / info.calls as f64))
            .collect();
        println!(
            "    connects per call (warm-up included): {}",
            per_call.join(", ")
        );
    }
    println!();
    println!("load.calls: {}", info.calls);
    println!("load.errors: {}", f.errors);
    println!("load.cold_share_percent: {:.2}", f.cold_share);
    for tier in ["warm", "cold"] {
        println!(
            "load.first_audio_p99_ms.{tier}: {}",
            fmt_ms(f.p99(Kind::Tts, tier))
        );
    }
    for tier in ["warm", "cold"] {
        if let Some(p99) = f.p99(Kind::Stt, tier) {
            println!("load.stt_first_result_p99_ms.{tier}: {p99:.1}");
        }
    }
    println!("load.leaked_connections: {}", info.connections.leaked);
}

/// The report as JSON: settings, totals, per kind and tier summaries, and every sample.
pub(crate) fn to_json(info: &RunInfo<'_>, recorded: &Recorded) -> Value {
    let f = Figures::of(recorded);
    let mut kinds = serde_json::Map::new();
    for ((kind, tier), s) in &f.latency {
        let entry = kinds
            .entry(kind.as_str())
            .or_insert_with(|| json!({ "turns": f.turns.get(kind), "tiers": {} }));
        let samples: Vec<f64> = recorded.latency_ms[&(*kind, tier.clone())]
            .iter()
            .map(|v| round(*v))
            .collect();
        entry["tiers"][tier] = json!({
            "latency_ms": s.to_json(),
            "acquire_ms": f.acquire.get(&(*kind, tier.clone())).map(|a| a.to_json()),
            "samples_ms": samples,
        });
    }
    json!({
        "settings": info.settings_json,
        "calls": info.calls,
        "completed": info.completed,
        "elapsed_s": round(info.elapsed.as_secs_f64()),
        "errors": { "total": f.errors, "by_class": recorded.errors },
        "cold_share_percent": round(f.cold_share),
        "cold_turns_at_s": recorded.cold_at_s.iter().map(|t| round(*t)).collect::<Vec<_>>(),
        "kinds": kinds,
        "connections": {
            "lines": info.connections.lines,
            "leaked": info.connections.leaked,
            "created": info.connections.created.iter().cloned().collect::<BTreeMap<_, _>>(),
        },
    })
}

/// Writes `load-report.json` and `load-latency.svg` into `dir` (created if missing).
pub(crate) fn write(dir: &Path, info: &RunInfo<'_>, recorded: &Recorded) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let json_path = dir.join("load-report.json");
    let text = serde_json::to_string_pretty(&to_json(info, recorded))?;
    std::fs::write(&json_path, text).with_context(|| format!("writing {}", json_path.display()))?;
    let svg_path = dir.join("load-latency.svg");
    plot(&svg_path, recorded)?;
    eprintln!(
        "load: wrote {} and {}",
        json_path.display(),
        svg_path.display()
    );
    Ok(())
}

/// Colours by tier, the same in every panel.
fn tier_colour(tier: &str) -> RGBColor {
    match tier {
        "cold" => RGBColor(0xd6, 0x27, 0x28),
        "warm" => RGBColor(0x1f, 0x77, 0xb4),
        "dedicated" => RGBColor(0x2c, 0xa0, 0x2c),
        _ => RGBColor(0x7f, 0x7f, 0x7f),
    }
}

/// One panel per kind: the cumulative distribution of its latency, one line per tier, so
/// cold and warm can be read off at any percentile.
fn plot(path: &Path, recorded: &Recorded) -> anyhow::Result<()> {
    let kinds: Vec<Kind> = [Kind::Tts, Kind::Stt]
        .into_iter()
        .filter(|k| recorded.latency_ms.keys().any(|(kind, _)| kind == k))
        .collect();
    let panels = kinds.len().max(1) as u32;
    let root = SVGBackend::new(path, (900, 420 * panels)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let areas = root.split_evenly((panels as usize, 1));
    for (area, kind) in areas.iter().zip(&kinds) {
        let series: Vec<(&str, Vec<f64>)> = recorded
            .latency_ms
            .iter()
            .filter(|((k, _), _)| k == kind)
            .map(|((_, tier), v)| {
                let mut v = v.clone();
                v.sort_by(f64::total_cmp);
                (tier.as_str(), v)
            })
            .collect();
        let max = series
            .iter()
            .filter_map(|(_, v)| v.last().copied())
            .fold(1.0_f64, f64::max);
        let mut chart = ChartBuilder::on(area)
            .caption(
                format!(
                    "{}: {} by tier",
                    kind.as_str().to_uppercase(),
                    kind.latency_name()
                ),
                ("sans-serif", 20),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d(0.0..max * 1.05, 0.0..100.0)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc("milliseconds")
            .y_desc("% of turns at or below")
            .draw()
            .map_err(plot_error)?;
        for (tier, sorted) in &series {
            let n = sorted.len() as f64;
            let points = sorted
                .iter()
                .enumerate()
                .map(|(i, ms)| (*ms, (i + 1) as f64 * 100.0 / n));
            let colour = tier_colour(tier);
            chart
                .draw_series(LineSeries::new(points, colour.stroke_width(2)))
                .map_err(plot_error)?
                .label(format!("{tier} ({} turns)", sorted.len()))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(plot_error)?;
    }
    root.present().map_err(plot_error)?;
    Ok(())
}

fn plot_error<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow::anyhow!("drawing the latency plot: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Recorded {
        let mut r = Recorded::default();
        r.latency_ms
            .insert((Kind::Tts, "warm".into()), vec![10.0, 12.0, 30.0]);
        r.latency_ms.insert((Kind::Tts, "cold".into()), vec![400.0]);
        r.latency_ms
            .insert((Kind::Stt, "dedicated".into()), vec![5.0]);
        r.acquire_ms.insert((Kind::Tts, "warm".into()), vec![0.01]);
        r.errors.insert("tts-503".into(), 2);
        r
    }

    fn info(connections: &Connections) -> RunInfo<'_> {
        RunInfo {
            settings: "test".into(),
            settings_json: json!({"rate": 1}),
            calls: 3,
            completed: 3,
            elapsed: Duration::from_secs(2),
            connections,
        }
    }

    #[test]
    fn the_json_report_holds_summaries_samples_and_errors() {
        let connections = Connections {
            lines: vec!["x".into()],
            leaked: 0,
            created: vec![("speech-tts".into(), 7)],
        };
        let v = to_json(&info(&connections), &sample());
        assert_eq!(v["errors"]["total"], 2);
        assert_eq!(v["connections"]["created"]["speech-tts"], 7);
        assert_eq!(v["errors"]["by_class"]["tts-503"], 2);
        assert_eq!(v["kinds"]["tts"]["turns"], 4);
        assert_eq!(
            v["kinds"]["tts"]["tiers"]["warm"]["latency_ms"]["p50"],
            12.0
        );
        assert_eq!(v["kinds"]["tts"]["tiers"]["cold"]["samples_ms"][0], 400.0);
        assert_eq!(
            v["kinds"]["stt"]["tiers"]["dedicated"]["acquire_ms"],
            Value::Null
        );
        // One cold turn out of five.
        assert_eq!(v["cold_share_percent"], 20.0);
    }

    #[test]
    fn the_plot_is_an_svg_with_a_line_per_tier() {
        let dir = std::env::temp_dir().join(format!("xtask-plot-{}", std::process::id()));
        let connections = Connections::default();
        write(&dir, &info(&connections), &sample()).unwrap();
        let svg = std::fs::read_to_string(dir.join("load-latency.svg")).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(80)]);
        for label in ["warm (3 turns)", "cold (1 turns)", "dedicated (1 turns)"] {
            assert!(svg.contains(label), "missing legend {label}");
        }
        assert!(svg.contains("<polyline"));
        let json: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("load-report.json")).unwrap())
                .unwrap();
        assert_eq!(json["calls"], 3);
        let _ = std::fs::remove_dir_all(dir);
    }
}
