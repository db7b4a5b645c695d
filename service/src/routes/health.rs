//! `/livez` and `/readyz`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::ToSchema;

use crate::state::AppState;

/// The body of `GET /livez`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Liveness {
    /// Always `ok`.
    pub status: &'static str,
}

/// `GET /livez`: the process is up and serving HTTP. Never depends on the backend, so an
/// orchestrator does not restart the service because Azure is slow.
#[utoipa::path(
    get,
    path = "/livez",
    tag = "health",
    responses((status = 200, description = "The process serves HTTP", body = Liveness))
)]
pub async fn livez() -> impl IntoResponse {
    Json(Liveness { status: "ok" })
}

/// The body of `GET /readyz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// `ready`, `warming` or `draining`.
    pub status: &'static str,
    /// Per configured pool: whether it has reached its warm target. Pools made on demand
    /// for SDK clients are not listed (see `/api/v1/pools`): they do not decide readiness.
    pub pools: std::collections::BTreeMap<String, bool>,
}

/// `GET /readyz`: 200 once every configured pool first reached its warm target; 503 before
/// that and while draining, so a load balancer sends traffic only to an instance that will
/// serve it warm. Pools made on demand (an SDK recognizer in a language outside
/// `STT_LANGUAGES`) do not count: one that cannot fill (throttled, or a language the speech
/// service refuses) must not take the replica out of its load balancer.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    responses(
        (status = 200, description = "Every configured pool reached its warm target", body = Readiness),
        (status = 503, description = "Warming up or draining", body = Readiness),
    )
)]
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let snapshots = state.readiness_snapshots();
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
