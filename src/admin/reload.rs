//! `POST /admin/reload`: asks the server to re-read its config file (as SIGHUP does) and says
//! what happened: 200 with what changed and the settings that need a restart, 400 with every
//! problem of a refused file (the running configuration kept), 503 when the store could not
//! take the reload, 409 for a server not started from a file.

use http::{Response, StatusCode};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use super::json_response;
use crate::control::{ReloadOutcome, ReloadRequest};
use crate::domain::Body;
use crate::proxy::error_response;

pub(super) async fn reload(requests: Option<&mpsc::Sender<ReloadRequest>>) -> Response<Body> {
    let Some(requests) = requests else {
        return error_response(
            StatusCode::CONFLICT,
            "no_config_file",
            "this server was not started from a configuration file; nothing to reload",
            None,
        );
    };
    let (reply, answer) = oneshot::channel();
    let outcome = match requests.send(reply).await {
        Ok(()) => answer.await.ok(),
        Err(_) => None,
    };
    match outcome {
        Some(ReloadOutcome::Applied {
            reloaded,
            restart_required,
        }) => {
            let message = if restart_required.is_empty() {
                "configuration reloaded".to_string()
            } else {
                format!(
                    "configuration reloaded; changed settings that need a restart (running values kept): {}",
                    restart_required.join(", ")
                )
            };
            json_response(
                StatusCode::OK,
                &json!({
                    "reloaded": true,
                    "message": message,
                    "added": reloaded.added,
                    "removed": reloaded.removed,
                    "updated": reloaded.updated,
                    "changes": reloaded.changes,
                    "restart_required": restart_required,
                }),
            )
        }
        Some(ReloadOutcome::Refused(problems)) => json_response(
            StatusCode::BAD_REQUEST,
            &json!({
                "reloaded": false,
                "error": {
                    "message": format!(
                        "configuration refused, the running configuration is kept: {} problem(s): {}",
                        problems.len(),
                        problems.join("; ")
                    ),
                    "type": "invalid_request_error",
                    "param": null,
                    "code": "invalid_config",
                },
                "problems": problems,
            }),
        ),
        Some(ReloadOutcome::Failed(e)) => error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "reload_failed",
            &format!("reload failed: {e}"),
            None,
        ),
        None => error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the server is shutting down",
            None,
        ),
    }
}
