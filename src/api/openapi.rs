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
        super::jobs::list, super::jobs::get, super::jobs::tasks, super::jobs::task,
        super::jobs::cancel, super::jobs::bulk_cancel, super::vms::bulk_delete,
        super::templates::list, super::templates::create, super::templates::get,
        super::templates::patch, super::templates::delete, super::templates::bulk_delete,
        super::events::stream,
        super::containers::list, super::containers::create, super::containers::get, super::containers::delete,
        super::containers::update, super::containers::action, super::containers::exec, super::containers::exec_ws, super::containers::adopt,
        super::containers::logs, super::containers::stats, super::containers::images, super::containers::image,
        super::containers::pull, super::containers::import, super::containers::load, super::containers::build,
        super::containers::tag, super::containers::push, super::containers::remove_image,
        super::containers::networks, super::containers::create_network, super::containers::network,
        super::containers::remove_network, super::containers::network_op, super::containers::volumes,
        super::containers::create_volume, super::containers::volume, super::containers::remove_volume,
        super::containers::instances, super::containers::create_instance, super::containers::instance_action,
    ),
    tags((name = "vms", description = "Virtual machines"), (name = "jobs", description = "Jobs: every mutating call, with tasks"),
         (name = "templates", description = "Reusable VM defaults"), (name = "events", description = "WebSocket event stream"),
         (name = "containers", description = "Containers through the Docker engine"), (name = "images", description = "Container images"),
         (name = "networks", description = "Container networks"), (name = "volumes", description = "Container volumes"),
         (name = "instances", description = "VMs and containers together"),
         (name = "system", description = "Health, metrics, this document"))
)]
pub struct ApiDoc;

pub async fn serve() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
