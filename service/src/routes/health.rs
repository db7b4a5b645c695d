//! `/livez` and `/readyz`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Serialize;

use crate::state::AppState;

/// `GET /livez`: the process is up and serving HTTP. Never depends on the backend, so an
/// orchestrator does not restart the service because Azure is slow.
pub async fn livez() -> impl IntoResponse {
    Json(serde_json::json!({ "status": "ok" }))
}

#[derive(Debug, Serialize)]
struct Readiness {
    status: &'static str,
    pools: std::collections::BTreeMap<String, bool>,
}

/// `GET /readyz`: 200 once every pool first reached its warm target; 503 before that and
/// while draining, so a load balancer sends traffic only to an instance that will serve
/// it warm.
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let snapshots = state.snapshots();
    let pools = snapshots
        .iter()
        .map(|s| (s.name.clone(), s.ready))
        .collect();
    let (code, status) = if state.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else if snapshots.iter().all(|s| s.ready) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "warming")
    };
    (code, Json(Readiness { status, pools }))
}
