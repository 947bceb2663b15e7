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
        super::metrics::node_resources,
    ),
    tags((name = "vms", description = "Virtual machines"), (name = "jobs", description = "Jobs: every mutating call, with tasks"),
         (name = "templates", description = "Reusable VM defaults"), (name = "events", description = "WebSocket event stream"),
         (name = "containers", description = "Containers through the Docker engine"), (name = "images", description = "Container images"),
         (name = "networks", description = "Container networks"), (name = "volumes", description = "Container volumes"),
         (name = "instances", description = "VMs and containers together"),
         (name = "system", description = "Health, metrics, this document"))
)]
pub struct ApiDoc;

/// The document as served, built once.
pub fn document() -> serde_json::Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    if let Some(schemas) = doc
        .pointer_mut("/components/schemas")
        .and_then(serde_json::Value::as_object_mut)
    {
        for schema in schemas.values_mut() {
            merge_all_of(schema);
        }
    }
    doc
}

pub async fn serve() -> Json<serde_json::Value> {
    static DOC: std::sync::OnceLock<serde_json::Value> = std::sync::OnceLock::new();
    Json(DOC.get_or_init(document).clone())
}

/// A struct with a flattened part (`#[serde(flatten)]`) is generated as an
/// `allOf` of inline objects; on the wire it is one object, so the document
/// says so: the parts' properties and required fields in one object.
fn merge_all_of(schema: &mut serde_json::Value) {
    use serde_json::{Map, Value};
    let Some(parts) = schema.get("allOf").and_then(Value::as_array) else {
        return;
    };
    if !parts
        .iter()
        .all(|p| p.get("type") == Some(&Value::from("object")) && p.get("$ref").is_none())
    {
        return;
    }
    let mut properties = Map::new();
    let mut required = Vec::new();
    let mut closed = false;
    for part in parts {
        if let Some(props) = part.get("properties").and_then(Value::as_object) {
            properties.extend(props.clone());
        }
        if let Some(req) = part.get("required").and_then(Value::as_array) {
            required.extend(req.iter().cloned());
        }
        closed |= part.get("additionalProperties") == Some(&Value::Bool(false));
    }
    let Some(obj) = schema.as_object_mut() else {
        return;
    };
    obj.remove("allOf");
    obj.insert("type".into(), "object".into());
    obj.insert("properties".into(), Value::Object(properties));
    if !required.is_empty() {
        obj.insert("required".into(), Value::Array(required));
    }
    if closed {
        obj.insert("additionalProperties".into(), Value::Bool(false));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn flattened_requests_are_one_object_in_the_document() {
        let doc = super::document();
        for name in ["CreateVmRequest", "Template", "TemplateRequest"] {
            let s = &doc["components"]["schemas"][name];
            assert!(s.get("allOf").is_none(), "{name}: {s}");
            assert!(s["properties"].get("disk_size").is_some(), "{name}: {s}");
            assert!(s["properties"].get("vcpus").is_some(), "{name}: {s}");
        }
        let create = &doc["components"]["schemas"]["CreateVmRequest"];
        assert!(create["properties"].get("template").is_some());
    }
}
