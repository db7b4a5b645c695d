//! Log set-up.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global tracing subscriber: `filter` in EnvFilter syntax (already validated
/// by the config parser), pretty or JSON lines on stderr. A second call does nothing, so
/// tests that start several services in one process can all call it.
pub fn init(format: LogFormat, filter: &str) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            // The innermost span's fields (request id, session, pool, tier of a turn) on
            // every line, so a turn's lines can be grepped together.
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Pretty => builder.compact().try_init(),
    };
}
