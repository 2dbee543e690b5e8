//! The status page, `/ui/`.

use crate::HttpSettings;
use crate::api::{Gateway, Request, error};
use crate::body::Body;
use alknet_core::AuthContext;
use http::{Response, StatusCode};
use std::rc::Rc;

/// Serves `/ui` and everything below it.
pub(crate) async fn serve(
    gate: Rc<Gateway>,
    req: Request,
    conn: &AuthContext,
    settings: &HttpSettings,
) -> Response<Body> {
    let _ = (gate, req, conn, settings);
    error(
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        "the status page is not built yet",
    )
}
