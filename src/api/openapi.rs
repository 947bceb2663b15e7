//! The OpenAPI document, generated from the handlers' annotations and the
//! model types.

use axum::Json;
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(title = "libgo", description = "libgo node agent API: VMs on QEMU over QMP."),
    paths(
        super::health,
        super::vms::list, super::vms::create, super::vms::get, super::vms::config,
        super::vms::status, super::vms::action, super::vms::delete,
        super::vms::put_cpu, super::vms::put_memory, super::vms::put_disk, super::vms::patch,
        super::vms::performance, super::vms::resources, super::metrics::serve,
        super::jobs::list, super::jobs::get,
    ),
    tags((name = "vms", description = "Virtual machines"), (name = "jobs", description = "Operation records"))
)]
pub struct ApiDoc;

pub async fn serve() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
