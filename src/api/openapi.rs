//! The OpenAPI document, generated from the handlers' annotations and the
//! model types, then made exact in one place (`document`): the statuses
//! every operation shares (credentials, roles, rate limits, body limits,
//! idempotency keys, asynchronous answers, an absent backend), the patterns
//! of ids and names, the enums of filters and the bounds of numbers (the
//! agent's own configuration and host), and the exact shape of bodies.

use axum::extract::State;
use axum::Json;
use serde_json::{json, Map, Value};
use utoipa::OpenApi;

use crate::engine::Agent;

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
        super::containers::update, super::containers::put_resources, super::containers::action, super::containers::exec, super::containers::exec_ws, super::containers::adopt,
        super::containers::logs, super::containers::stats, super::containers::images, super::containers::image,
        super::containers::pull, super::containers::import, super::containers::load, super::containers::build,
        super::containers::tag, super::containers::push, super::containers::remove_image,
        super::containers::networks, super::containers::create_network, super::containers::network,
        super::containers::remove_network, super::containers::network_op, super::containers::volumes,
        super::containers::create_volume, super::containers::volume, super::containers::remove_volume,
        super::containers::instances, super::containers::create_instance, super::containers::instance_action,
        serve, super::docs::index, super::docs::file, super::users::login, super::users::logout, super::users::whoami,
        super::users::list_users, super::users::create_user, super::users::get_user,
        super::users::patch_user, super::users::delete_user,
        super::users::list_tokens, super::users::create_token, super::users::get_token,
        super::users::revoke_token, super::audit::list,
        super::nodes::list, super::nodes::get, super::nodes::resources, super::nodes::totals,
        super::nodes::cluster,
        super::snapshots::list, super::snapshots::create, super::snapshots::get,
        super::snapshots::delete, super::snapshots::revert,
        super::storage::list, super::storage::create, super::storage::get, super::storage::delete,
        super::storage::activate, super::storage::deactivate, super::storage::volumes,
        super::storage::create_volume, super::storage::volume, super::storage::delete_volume,
        super::storage::upload, super::storage::download, super::storage::export,
        super::disks::list, super::disks::attach, super::disks::get, super::disks::delete,
        super::disks::detach, super::storage::servers, super::storage::server, super::storage::targets,
        super::consoles::console, super::consoles::screenshot,
        super::groups::list, super::groups::create, super::groups::get, super::groups::put,
        super::groups::delete, super::groups::members, super::groups::create_vm,
        super::groups::start, super::groups::stop,
        super::migrations::migrate, super::migrations::prepare, super::migrations::complete,
        super::migrations::abort,
    ),
    tags((name = "vms", description = "Virtual machines"), (name = "jobs", description = "Jobs: every mutating call, with tasks"),
         (name = "templates", description = "Reusable VM defaults"), (name = "groups", description = "Named sets of VMs"), (name = "events", description = "WebSocket event stream"),
         (name = "containers", description = "Containers through the Docker engine"), (name = "images", description = "Container images"),
         (name = "networks", description = "Container networks"), (name = "volumes", description = "Container volumes"),
         (name = "instances", description = "VMs and containers together"),
         (name = "storage", description = "Storage pools, volumes and storage servers"),
         (name = "access", description = "Login, users, API tokens and the audit trail"),
         (name = "system", description = "Health, metrics, this document"))
)]
pub struct ApiDoc;

/// A VM or template name: a DNS label.
pub const DNS_LABEL: &str = "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$";
/// A DNS label the engine also takes as a container or volume name (at
/// least 2 characters).
const ENGINE_LABEL: &str = "^[a-z0-9][-a-z0-9]{0,61}[a-z0-9]$";
/// A UUID in its hyphenated form.
pub const UUID: &str =
    "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$";
/// `{id}` of a VM or a template: its UUID or its name.
pub const VM_KEY: &str = "^([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)$";
/// A container (libgo id, engine id or name), network or volume name as
/// the engine accepts it.
pub const ENGINE_NAME: &str = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$";
/// An image name, as `docker::check_image_name` reads it:
/// `[host[:port]/]path[:tag]` (at most 200).
pub const IMAGE_NAME: &str = "^(([a-z0-9]+(-[a-z0-9]+)*(\\.[a-z0-9]+(-[a-z0-9]+)*)*(:[0-9]{1,5})?|[a-z0-9]{1,63}([_-][a-z0-9]{1,63})*)(/[a-z0-9]{1,63}([._-][a-z0-9]{1,63})*)+|[a-z0-9]{1,63}([._-][a-z0-9]{1,63})*)(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?$";
/// An image reference, as `docker::check_image_ref` reads it: an id
/// (`sha256:` and 64 hex digits) or a name.
pub const IMAGE_REF: &str = "^(sha256:[a-f0-9]{64}|(([a-z0-9]+(-[a-z0-9]+)*(\\.[a-z0-9]+(-[a-z0-9]+)*)*(:[0-9]{1,5})?|[a-z0-9]{1,63}([_-][a-z0-9]{1,63})*)(/[a-z0-9]{1,63}([._-][a-z0-9]{1,63})*)+|[a-z0-9]{1,63}([._-][a-z0-9]{1,63})*)(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?)$";
/// A file in a storage pool: a name, or a relative path whose components
/// do not start with `.` (`..` never leaves the pool).
pub const POOL_FILE: &str = "^[^/\\x00.][^/\\x00]*(/[^/\\x00.][^/\\x00]*)*$";
/// A volume: a file name that is never hidden, `..` or an option.
pub const VOLUME_NAME: &str = "^[A-Za-z0-9_][A-Za-z0-9._-]{0,254}$";
/// A tag: 1 to 63 characters, no `,` and no control character.
pub const TAG: &str = "^[^\\x00-\\x1f\\x7f-\\x9f,]{1,63}$";
/// An `Idempotency-Key`: 1 to 255 visible ASCII characters.
pub const IDEMPOTENCY_KEY: &str = "^[!-~]{1,255}$";

/// What the document's bounds come from: the agent's configuration and
/// the host it runs on.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_vcpus: u32,
    pub max_memory_mib: u64,
    pub max_disk_gib: u64,
    /// The host cores that are online: pinning may name only these.
    pub online_cores: Vec<u32>,
    /// The agent's node name: the one `node` a create may give (beside
    /// `self`). None: any node name (the aggregator places on many).
    pub node: Option<String>,
}

impl Limits {
    pub fn of(cfg: &crate::config::Config) -> Limits {
        Limits {
            max_vcpus: cfg.max_vcpus,
            max_memory_mib: cfg.max_memory_mib,
            max_disk_gib: cfg.max_disk_gib,
            online_cores: std::fs::read_to_string("/sys/devices/system/cpu/online")
                .map(|s| crate::host::pinning::parse_cpu_list(&s))
                .unwrap_or_default(),
            node: None,
        }
    }
}

/// The document with the default configuration's bounds.
pub fn document() -> Value {
    document_for(&Limits::of(&crate::config::Config::default()))
}

/// The document as an agent with these limits serves it.
pub fn document_for(limits: &Limits) -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    if let Some(schemas) = doc
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
    {
        for schema in schemas.values_mut() {
            merge_all_of(schema);
        }
        constrain_schemas(schemas, limits);
        add_examples(schemas);
    }
    add_shared_components(&mut doc);
    add_docs_page(&mut doc);
    add_container_resources_route(&mut doc);
    unique_operation_ids(&mut doc);
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        for (path, item) in paths.iter_mut() {
            let Some(item) = item.as_object_mut() else {
                continue;
            };
            for (method, op) in item.iter_mut() {
                complete_operation(path, method, op);
            }
        }
    }
    add_links(&mut doc);
    doc
}

/// Handlers of different resources share names (`get`, `list`): an
/// operation id is unique in the document, so a shared one gets its tag.
fn unique_operation_ids(doc: &mut Value) {
    let mut count = std::collections::HashMap::<String, usize>::new();
    let ops = |doc: &Value| -> Vec<(String, String)> {
        doc["paths"]
            .as_object()
            .into_iter()
            .flatten()
            .flat_map(|(p, item)| {
                item.as_object()
                    .into_iter()
                    .flatten()
                    .map(move |(m, _)| (p.clone(), m.clone()))
            })
            .collect()
    };
    for (p, m) in ops(doc) {
        if let Some(id) = doc["paths"][&p][&m]["operationId"].as_str() {
            *count.entry(id.to_owned()).or_default() += 1;
        }
    }
    for (p, m) in ops(doc) {
        let op = &mut doc["paths"][&p][&m];
        let Some(id) = op["operationId"].as_str().map(str::to_owned) else {
            continue;
        };
        if count[&id] > 1 {
            let tag = op["tags"][0].as_str().unwrap_or("api").to_owned();
            op["operationId"] = format!("{tag}_{id}").into();
        }
    }
}

/// What a created resource's answer leads to: the operations on it, with
/// the id the answer carries (the fuzzer and clients follow these rather
/// than guess). Every 202 leads to its job.
fn add_links(doc: &mut Value) {
    let op_ref = |path: &str, method: &str| {
        format!(
            "#/paths/{}/{method}",
            path.replace('~', "~0").replace('/', "~1")
        )
    };
    type Targets = Vec<(String, String)>;
    let on = |base: &str, subs: &[(&str, &str)]| -> Targets {
        subs.iter()
            .map(|(sub, m)| (format!("{base}{sub}"), m.to_string()))
            .collect()
    };
    let vm_ops = on(
        "/api/v1/vms/{id}",
        &[
            ("", "get"),
            ("", "patch"),
            ("", "delete"),
            ("/status", "get"),
            ("/config", "get"),
            ("/resources", "get"),
            ("/performance", "get"),
            ("/cpu", "put"),
            ("/memory", "put"),
            ("/disk", "put"),
            ("/{action}", "post"),
        ],
    );
    let template_ops = on(
        "/api/v1/templates/{id}",
        &[("", "get"), ("", "patch"), ("", "delete")],
    );
    let container_ops = on(
        "/api/v1/containers/{id}",
        &[
            ("", "get"),
            ("", "patch"),
            ("", "delete"),
            ("/{action}", "post"),
            ("/logs", "get"),
            ("/stats", "get"),
            ("/exec", "post"),
        ],
    );
    let job_ops = on(
        "/api/v1/jobs/{id}",
        &[("", "get"), ("", "delete"), ("/tasks", "get")],
    );
    let created: Vec<(&str, Targets, &str)> = vec![
        ("/api/v1/vms", vm_ops.clone(), "$response.body#/id"),
        ("/api/v1/templates", template_ops, "$response.body#/id"),
        ("/api/v1/containers", container_ops, "$response.body#/id"),
        (
            "/api/v1/networks",
            on("/api/v1/networks/{id}", &[("", "get"), ("", "delete")]),
            "$response.body#/name",
        ),
        (
            "/api/v1/volumes",
            on("/api/v1/volumes/{id}", &[("", "get"), ("", "delete")]),
            "$response.body#/name",
        ),
        (
            "/api/v1/instances",
            on("/api/v1/instances/{id}", &[("/{action}", "post")]),
            "$response.body#/id",
        ),
    ];
    let links = |targets: &[(String, String)], param: &str| -> Value {
        let mut out = Map::new();
        for (path, method) in targets {
            let name = format!(
                "{method}{}",
                path.replace("/api/v1", "")
                    .replace(['{', '}'], "")
                    .replace('/', "_")
            );
            out.insert(
                name,
                json!({"operationRef": op_ref(path, method), "parameters": {"id": param}}),
            );
        }
        Value::Object(out)
    };
    for (path, targets, param) in created {
        if let Some(r) = doc.pointer_mut(&format!(
            "/paths/{}/post/responses/201",
            path.replace('/', "~1")
        )) {
            r["links"] = links(&targets, param);
        }
    }
    let Some(paths) = doc["paths"].as_object_mut() else {
        return;
    };
    for item in paths.values_mut() {
        for op in item
            .as_object_mut()
            .into_iter()
            .flat_map(|o| o.values_mut())
        {
            if let Some(r) = op.pointer_mut("/responses/202") {
                r["links"] = links(&job_ops, "$response.body#/job/id");
            }
        }
    }
}

/// This OpenAPI document.
///
/// The OpenAPI 3.1 document of the API, with this agent's bounds (vCPUs, memory, disk sizes,
/// host cores). Needs no credentials on any listener.
#[utoipa::path(get, path = "/openapi.json", tag = "system", operation_id = "openapi",
    responses((status = 200, description = "The OpenAPI document", body = Object)))]
pub async fn serve(State(agent): State<Agent>) -> Json<Value> {
    static DOC: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    Json(
        DOC.get_or_init(|| {
            document_for(&Limits {
                node: Some(agent.node().to_owned()),
                ..Limits::of(agent.config())
            })
        })
        .clone(),
    )
}

/// A struct with a flattened part (`#[serde(flatten)]`) is generated as an
/// `allOf` of inline objects; on the wire it is one object, so the document
/// says so: the parts' properties and required fields in one object.
fn merge_all_of(schema: &mut Value) {
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

/// Merges `extra` into a property's schema (the `null` of an optional
/// property stays allowed: these keywords only bind their own type).
fn refine(schemas: &mut Map<String, Value>, schema: &str, prop: &str, extra: Value) {
    let Some(p) = schemas
        .get_mut(schema)
        .and_then(|s| s.get_mut("properties"))
        .and_then(|p| p.get_mut(prop))
        .and_then(Value::as_object_mut)
    else {
        panic!("OpenAPI: {schema}.{prop} is not in the document");
    };
    if let Value::Object(extra) = extra {
        for (k, v) in extra {
            p.insert(k, v);
        }
    }
}

/// An unsigned integer as serde reads it: 0 to its type's maximum (utoipa's
/// `format: int64` would say at most 2^63 - 1).
fn unsigned_bounds(v: &mut Value) {
    match v {
        Value::Object(o) => {
            let unsigned = o.get("minimum") == Some(&Value::from(0))
                && o.get("type")
                    .is_some_and(|t| t.to_string().contains("integer"));
            if unsigned {
                match o.remove("format").as_ref().and_then(Value::as_str) {
                    Some("int32") => o.insert("maximum".into(), u32::MAX.into()),
                    _ => o.insert("maximum".into(), u64::MAX.into()),
                };
            }
            o.values_mut().for_each(unsigned_bounds);
        }
        Value::Array(a) => a.iter_mut().for_each(unsigned_bounds),
        _ => {}
    }
}

/// `bounds` with a type (and so without null).
fn typed(bounds: &Value, ty: &str) -> Value {
    let mut b = bounds.clone();
    b["type"] = json!(ty);
    b
}

fn int(min: u64, max: u64) -> Value {
    json!({"minimum": min, "maximum": max})
}

/// An I/O limit: 0 (none) or 2 to `max` (cgroups treat 1 inconsistently).
fn io_limit(max: u64) -> Value {
    json!({"minimum": 0, "maximum": max, "not": {"const": 1}})
}

/// One way of filling a body whose fields go together: `given` must be
/// there (with a value of its type), `absent` absent or null.
fn variant(given: &[(&str, Value)], absent: &[&str]) -> Value {
    let mut props = Map::new();
    for (name, schema) in given {
        props.insert((*name).into(), schema.clone());
    }
    for name in absent {
        props.insert((*name).into(), json!({"type": "null"}));
    }
    let required: Vec<&str> = given.iter().map(|(n, _)| *n).collect();
    json!({"required": required, "properties": props})
}

/// An absolute path whose components are never `.` or `..`.
pub const ABSOLUTE_PATH: &str =
    "^(/([^/\\x00.][^/\\x00]*|\\.[^/\\x00.][^/\\x00]*|\\.\\.[^/\\x00]+))+$";
/// An iSCSI name, as `host::iscsi::valid_iqn` reads it.
pub const ISCSI_NAME: &str = "^(iqn\\.[0-9]{4}-(0[1-9]|1[0-2])\\.[a-z0-9-]+(\\.[a-z0-9-]+)*(:[a-z0-9.:-]+)?|eui\\.[0-9A-Fa-f]{16}|naa\\.([0-9A-Fa-f]{16}|[0-9A-Fa-f]{32}))$";

/// The storage bodies whose fields go together: a pool's type decides
/// which of path, host and target it takes; a volume is made from exactly
/// one of capacity (with its format), source and import; a disk from
/// exactly one of size and volume.
fn constrain_storage(s: &mut Map<String, Value>, disk: &Value) {
    refine(
        s,
        "CreatePoolRequest",
        "path",
        json!({"pattern": ABSOLUTE_PATH}),
    );
    refine(
        s,
        "CreatePoolRequest",
        "target",
        json!({"pattern": ISCSI_NAME}),
    );
    let string = json!({"type": "string"});
    let object = json!({"type": "object"});
    let integer = json!({"type": "integer"});
    if let Some(pool) = s.get_mut("CreatePoolRequest") {
        pool["oneOf"] = json!([
            variant(&[("type", json!({"const": "dir"}))], &["host", "target"]),
            variant(
                &[
                    ("type", json!({"const": "iscsi"})),
                    ("host", string.clone()),
                    ("target", string.clone())
                ],
                &["path"],
            ),
        ]);
        pool["example"] = json!({"name": "fast", "type": "dir"});
    }
    refine(s, "CreateStorageVolumeRequest", "capacity", disk.clone());
    if let Some(vol) = s.get_mut("CreateStorageVolumeRequest") {
        vol["oneOf"] = json!([
            variant(&[("capacity", integer.clone())], &["source", "import"]),
            variant(
                &[("source", object.clone())],
                &["capacity", "import", "format"]
            ),
            variant(&[("import", object)], &["capacity", "source", "format"]),
        ]);
        vol["example"] = json!({"name": "data.qcow2", "capacity": 20});
    }
    refine(s, "AttachDiskRequest", "size", disk.clone());
    if let Some(d) = s.get_mut("AttachDiskRequest") {
        d["oneOf"] = json!([
            variant(&[("size", integer)], &["volume"]),
            variant(&[("volume", string)], &["size"]),
        ]);
        d["example"] = json!({"name": "data", "size": 10});
    }
}

fn constrain_schemas(s: &mut Map<String, Value>, l: &Limits) {
    let vcpus = int(1, l.max_vcpus.into());
    let memory = int(crate::engine::vm::record::MIN_MEMORY_MIB, l.max_memory_mib);
    let disk = int(1, l.max_disk_gib);
    // A bulk create's items are parsed with the request (a wrong type or an
    // unknown field is 400 for all), but checked in their own tasks: an item
    // out of bounds fails its task, not the request.
    let originals = s.clone();
    let mut item = s["CreateVmRequest"].clone();
    // Nested parts as serde reads them, without the bounds checked later.
    for (f, part) in [
        ("cpu_pinning", "CpuPinning"),
        ("io_limits", "IoLimits"),
        ("boot", "BootSpec"),
        ("network", "NetworkSpec"),
    ] {
        let mut shape = originals[part].clone();
        if part == "NetworkSpec" {
            shape = json!({"$ref": "#/components/schemas/NetworkSpec"});
        }
        item["properties"][f] = json!({"oneOf": [shape, {"type": "null"}]});
    }
    item["description"] = "An item of a bulk `POST /vms`: the fields of `CreateVmRequest`, \
        checked in the item's own task (a bad value fails that task only)."
        .into();
    item["additionalProperties"] = Value::Bool(false);
    unsigned_bounds(&mut item);
    let node = match &l.node {
        Some(n) => json!({"type": ["string", "null"], "enum": ["self", n, null]}),
        None => json!({"type": ["string", "null"], "pattern": DNS_LABEL, "maxLength": 63}),
    };
    // A bulk item's node is checked in its task, like its other fields.
    item["properties"]["node"] = json!({"type": ["string", "null"]});
    refine(s, "CreateVmRequest", "node", node);
    s.insert("CreateVmItem".into(), item);
    // An arriving VM's stored definition has every figure a create may
    // leave to a template.
    // The disk's virtual size: what a create's disk_size allows.
    if let Some(v) = s
        .get_mut("MigrationDisk")
        .and_then(|m| m.pointer_mut("/properties/virtual_size"))
    {
        v["maximum"] = json!(l.max_disk_gib.saturating_mul(1 << 30));
    }
    if let Some(spec) = s
        .get_mut("IncomingMigration")
        .and_then(|m| m.pointer_mut("/properties/spec"))
    {
        let shape = spec.clone();
        // The same bounds as a create's, null not allowed.
        *spec = json!({"allOf": [shape, {
            "required": ["vcpus", "memory", "disk_size", "base_image"],
            "properties": {
                "vcpus": typed(&vcpus, "integer"),
                "memory": typed(&memory, "integer"),
                "disk_size": typed(&disk, "integer"),
                "base_image": {"type": "string", "minLength": 1},
                "tags": {"maxItems": 32, "items": {"type": "string", "pattern": TAG}}
            }
        }]});
    }
    // A move on an agent: to another node, and the caller says how to
    // reach it (an aggregator fills `target` in itself).
    if let Some(n) = &l.node {
        refine(s, "MigrateRequest", "node", json!({"not": {"enum": [n]}}));
        if let Some(t) = s
            .get_mut("MigrateRequest")
            .and_then(|m| m.pointer_mut("/properties/target"))
        {
            *t = json!({"$ref": "#/components/schemas/MigrationTarget"});
        }
        // An https target needs its certificate pinned.
        if let Some(t) = s.get_mut("MigrationTarget").and_then(|m| m.as_object_mut()) {
            t.insert("required".into(), json!(["url", "token", "fingerprint"]));
            if let Some(f) = t
                .get_mut("properties")
                .and_then(|p| p.get_mut("fingerprint"))
            {
                f["type"] = json!("string");
            }
        }
        if let Some(req) = s.get_mut("MigrateRequest").and_then(|m| m.as_object_mut()) {
            let required = req.entry("required").or_insert_with(|| json!([]));
            if let Some(r) = required.as_array_mut() {
                if !r.contains(&json!("target")) {
                    r.push(json!("target"));
                }
            }
        }
    }
    let tags = json!({"maxItems": 32, "items": {"type": "string", "pattern": TAG}});
    let pool_file = json!({"pattern": POOL_FILE, "maxLength": 4096});
    for name in ["CreateVmRequest", "TemplateRequest"] {
        refine(
            s,
            name,
            "name",
            json!({"pattern": DNS_LABEL, "maxLength": 63}),
        );
        refine(s, name, "vcpus", vcpus.clone());
        refine(s, name, "memory", memory.clone());
        refine(s, name, "disk_size", disk.clone());
        refine(s, name, "base_image", pool_file.clone());
        refine(s, name, "tags", tags.clone());
        refine(
            s,
            name,
            "user_data",
            json!({"maxLength": crate::engine::vm::record::MAX_USER_DATA}),
        );
        if let Some(o) = s.get_mut(name).and_then(Value::as_object_mut) {
            o.insert("additionalProperties".into(), Value::Bool(false));
        }
    }
    refine(
        s,
        "CreateVmRequest",
        "template",
        json!({"pattern": VM_KEY, "maxLength": 63}),
    );
    if let Some(create) = s.get_mut("CreateVmRequest") {
        // vcpus, memory, disk_size and base_image: here or in the template.
        create["anyOf"] = json!([
            {"required": ["template"], "properties": {"template": {"type": "string"}}},
            {"required": ["vcpus", "memory", "disk_size", "base_image"],
             "properties": {"vcpus": {"type": "integer"}, "memory": {"type": "integer"},
                            "disk_size": {"type": "integer"}, "base_image": {"type": "string"}}},
        ]);
        create["example"] = json!({"name": "web-1", "vcpus": 1, "memory": 128,
            "disk_size": 1, "base_image": "debian-12.qcow2", "tags": ["web"]});
    }
    // POST /templates needs a name; PATCH takes the same fields, all optional.
    let mut create_template = s["TemplateRequest"].clone();
    create_template["description"] = "`POST /templates` body: a name and any VM fields.".into();
    create_template["properties"]["name"] =
        json!({"type": "string", "pattern": DNS_LABEL, "maxLength": 63});
    create_template["required"] = json!(["name"]);
    s.insert("CreateTemplateRequest".into(), create_template);

    for name in ["PatchVmRequest", "UpdateCpuRequest"] {
        refine(s, name, "vcpus", vcpus.clone());
    }
    for name in ["PatchVmRequest", "UpdateMemoryRequest"] {
        refine(s, name, "memory", memory.clone());
    }
    for name in ["PatchVmRequest", "UpdateDiskRequest"] {
        refine(s, name, "disk_size", disk.clone());
    }
    refine(s, "PatchVmRequest", "tags", tags.clone());
    refine(
        s,
        "PatchVmRequest",
        "status",
        json!({"oneOf": [{"type": "string", "enum": ["running", "stopped", "paused"]}, {"type": "null"}]}),
    );
    refine(s, "ActionRequest", "timeout", int(0, 3600));

    let cores = if l.online_cores.is_empty() {
        json!({"type": "integer", "minimum": 0, "maximum": u32::MAX})
    } else {
        json!({"type": "integer", "enum": l.online_cores})
    };
    refine(
        s,
        "CpuPinning",
        "cores",
        json!({"minItems": 1, "items": cores}),
    );
    refine(
        s,
        "CpuPinning",
        "emulator_cores",
        json!({"minItems": 1, "items": cores}),
    );
    for f in ["iops", "read_iops", "write_iops"] {
        refine(s, "IoLimits", f, io_limit(u32::MAX as u64 - 1));
    }
    for f in ["read_bps", "write_bps"] {
        refine(s, "IoLimits", f, io_limit(i64::MAX as u64 - 1));
    }
    refine(s, "BootSpec", "kernel", pool_file.clone());
    refine(s, "BootSpec", "initrd", pool_file);
    refine(
        s,
        "BootSpec",
        "cmdline",
        json!({"maxLength": 4096, "pattern": "^[^\\x00]*$"}),
    );

    // Bulk bodies: 1 to 100 items, under the name or its camelCase alias
    // (exactly one of them).
    for (name, field, alias, items) in [
        (
            "BulkDeleteVms",
            "vm_ids",
            "vmIds",
            json!({"type": "string"}),
        ),
        (
            "BulkDeleteTemplates",
            "template_ids",
            "templateIds",
            json!({"type": "string"}),
        ),
        (
            "BulkCancelJobs",
            "job_ids",
            "jobIds",
            json!({"type": "string", "format": "uuid"}),
        ),
    ] {
        let list = json!({"type": "array", "minItems": 1, "maxItems": crate::engine::bulk::MAX_ITEMS, "items": items});
        let mut alias_list = list.clone();
        alias_list["description"] = format!("Same as `{field}`.").into();
        if let Some(o) = s.get_mut(name).and_then(Value::as_object_mut) {
            let desc = o
                .get("properties")
                .and_then(|p| p.get(field))
                .and_then(|f| f.get("description"))
                .cloned();
            let mut list = list;
            if let Some(d) = desc {
                list["description"] = d;
            }
            o.insert(
                "properties".into(),
                json!({ field: list, alias: alias_list }),
            );
            o.remove("required");
            o.insert(
                "oneOf".into(),
                json!([{"required": [field]}, {"required": [alias]}]),
            );
        }
    }

    // Containers and what the engine holds next to them.
    let c = "CreateContainerRequest";
    // A DNS label of at least 2 characters: the engine's rule for names.
    refine(
        s,
        c,
        "name",
        json!({"pattern": ENGINE_LABEL, "maxLength": 63}),
    );
    refine(
        s,
        c,
        "image",
        json!({"pattern": IMAGE_REF, "maxLength": 200}),
    );
    // The engine's CPU quota cannot exceed the host's CPUs.
    let host_cpus = (l.online_cores.len() as u64).clamp(1, l.max_vcpus.into());
    let container_vcpus = int(1, host_cpus);
    refine(s, c, "vcpus", container_vcpus.clone());
    refine(s, c, "memory", int(6, l.max_memory_mib));
    refine(s, c, "tags", tags.clone());
    refine(
        s,
        c,
        "restart_policy",
        json!({"enum": ["no", "always", "unless-stopped", "on-failure", null]}),
    );
    refine(s, c, "network", json!({"pattern": ENGINE_NAME}));
    refine(
        s,
        c,
        "labels",
        json!({"propertyNames": {"not": {"pattern": "^io\\.libgo\\."}}}),
    );
    refine(
        s,
        c,
        "env",
        json!({"propertyNames": {"pattern": "^[^=\\x00]+$"},
               "additionalProperties": {"type": "string", "pattern": "^[^\\x00]*$"}}),
    );
    refine(
        s,
        c,
        "command",
        json!({"minItems": 1, "prefixItems": [{"type": "string", "minLength": 1}]}),
    );
    refine(s, "UpdateContainerRequest", "vcpus", container_vcpus);
    refine(
        s,
        "UpdateContainerRequest",
        "memory",
        int(6, l.max_memory_mib),
    );
    refine(s, "PortMapping", "container_port", int(1, 65535));
    refine(s, "PortMapping", "host_port", int(1, 65535));
    refine(
        s,
        "PortMapping",
        "protocol",
        json!({"enum": ["tcp", "udp"]}),
    );
    refine(
        s,
        "MountSpec",
        "source",
        json!({"pattern": "^(/[^\\x00]*|[A-Za-z0-9][A-Za-z0-9_.-]{0,254})$",
               "description": "A volume name, or an absolute path on the host that exists (else 404)."}),
    );
    refine(
        s,
        "MountSpec",
        "target",
        json!({"pattern": "^(/[^/\\x00.][^/\\x00]*)+$"}),
    );
    refine(
        s,
        "ExecRequest",
        "command",
        json!({"minItems": 1, "prefixItems": [{"type": "string", "minLength": 1}]}),
    );
    refine(s, "ExecRequest", "timeout", int(1, 3600));
    refine(
        s,
        "ImageRef",
        "image",
        json!({"pattern": IMAGE_NAME, "maxLength": 200}),
    );
    refine(
        s,
        "CreateNetworkRequest",
        "name",
        json!({"pattern": DNS_LABEL, "maxLength": 63}),
    );
    let mut drivers: Vec<Value> = crate::engine::container::objects::NETWORK_DRIVERS
        .iter()
        .map(|d| Value::from(*d))
        .collect();
    drivers.push(Value::Null);
    refine(
        s,
        "CreateNetworkRequest",
        "driver",
        json!({ "enum": drivers }),
    );
    // The engine wants at least 2 characters in a volume name.
    refine(
        s,
        "CreateVolumeRequest",
        "name",
        json!({"pattern": ENGINE_LABEL, "maxLength": 63}),
    );
    refine(
        s,
        "NetworkConnect",
        "container",
        json!({"pattern": ENGINE_NAME}),
    );

    // POST /instances: a VM or a container body, with its backend.
    let with_backend = |base: &Value, backend: &str| {
        let mut v = base.clone();
        v["properties"]["backend"] = json!({"type": "string", "enum": [backend]});
        let mut req = v["required"].as_array().cloned().unwrap_or_default();
        req.push("backend".into());
        v["required"] = Value::Array(req);
        v["additionalProperties"] = Value::Bool(false);
        v.as_object_mut().map(|o| o.remove("example"));
        v
    };
    let vm = with_backend(&s["CreateVmRequest"], "vm");
    let container = with_backend(&s[c], "container");
    s.insert(
        "CreateInstanceRequest".into(),
        json!({"description": "`POST /instances`: the body of `POST /vms` (one object) or of `POST /containers`, with its `backend`.",
               "oneOf": [vm, container]}),
    );

    constrain_storage(s, &disk);
    refine(
        s,
        "CreateGroupRequest",
        "name",
        json!({"pattern": DNS_LABEL, "maxLength": 63}),
    );
    if let Some(export) = s.get_mut("ExportVmRequest") {
        // Raw and vdi have no compressed form.
        export["anyOf"] = json!([
            {"properties": {"compress": {"const": false}}},
            {"properties": {"format": {"enum": ["qcow2", "vmdk", "ova"]}}},
        ]);
    }
    for body in ["CreateGroupRequest", "UpdateGroupRequest"] {
        refine(s, body, "tags", tags.clone());
        refine(
            s,
            body,
            "vms",
            json!({"items": {"type": "string", "pattern": VM_KEY, "maxLength": 63}}),
        );
    }

    let statuses: Vec<&str> = [
        400u16, 401, 403, 404, 405, 408, 409, 413, 422, 429, 500, 503,
    ]
    .into_iter()
    .map(|c| super::error::status_name(axum::http::StatusCode::from_u16(c).unwrap()))
    .chain(["INSUFFICIENT_CAPACITY"])
    .collect();
    refine(s, "ErrorDetail", "status", json!({"enum": statuses}));
    refine(s, "ErrorDetail", "code", int(400, 599));
}

/// The page over this document and its files: what they answer.
fn add_docs_page(doc: &mut Value) {
    if let Some(r) = doc.pointer_mut("/paths/~1docs/get/responses/200") {
        r["content"] = json!({"text/html": {"schema": {"type": "string"}}});
    }
    if let Some(r) = doc.pointer_mut("/paths/~1docs~1{file}/get/responses/200") {
        r["content"] = json!({
            "text/javascript": {"schema": {"type": "string"}},
            "text/css": {"schema": {"type": "string"}},
            "image/png": {"schema": {"type": "string", "format": "binary"}},
        });
    }
}

/// Example bodies, valid against their schemas and accepted by the agent
/// (a client can send them as they are: the page's try-it-out starts from
/// them, and the fuzzer sends them).
fn add_examples(s: &mut Map<String, Value>) {
    let vm = json!({"name": "web-1", "vcpus": 1, "memory": 128, "disk_size": 1,
        "base_image": "debian-12.qcow2", "tags": ["web"]});
    let examples = [
        ("CreateVmRequest", vm.clone()),
        ("CreateVmItem", vm),
        (
            "CreateInstanceRequest",
            json!({"backend": "vm", "name": "web-2", "vcpus": 1,
            "memory": 128, "disk_size": 1, "base_image": "debian-12.qcow2"}),
        ),
        (
            "PatchVmRequest",
            json!({"memory": 256, "tags": ["web", "frontend"]}),
        ),
        ("UpdateCpuRequest", json!({"vcpus": 2})),
        ("UpdateMemoryRequest", json!({"memory": 256})),
        ("UpdateDiskRequest", json!({"disk_size": 2})),
        ("ActionRequest", json!({"timeout": 60})),
        ("BulkDeleteVms", json!({"vm_ids": ["web-1", "web-2"]})),
        (
            "CreateSnapshotRequest",
            json!({"name": "before-upgrade",
            "description": "Before the upgrade", "memory": false}),
        ),
        (
            "ExportVmRequest",
            json!({"format": "qcow2", "compress": true}),
        ),
        (
            "MigrateRequest",
            json!({"node": "node2", "target": {"url": "https://node2:8443",
            "token": "lgo_…", "fingerprint": "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"}}),
        ),
        (
            "IncomingMigration",
            json!({"id": "0b6c1f4e-2a5d-4c8e-9f3a-7d1e2c3b4a59", "name": "web-1",
            "spec": {"vcpus": 1, "memory": 128, "disk_size": 1, "base_image": "debian-12.qcow2"},
            "mac_address": "52:54:00:12:34:56", "live": true,
            "disks": [{"name": "root", "virtual_size": 1073741824u64}]}),
        ),
        (
            "CreateTemplateRequest",
            json!({"name": "small", "vcpus": 1, "memory": 128,
            "disk_size": 1, "base_image": "debian-12.qcow2", "tags": ["small"]}),
        ),
        ("TemplateRequest", json!({"memory": 256, "tags": ["small"]})),
        ("BulkDeleteTemplates", json!({"template_ids": ["small"]})),
        (
            "BulkCancelJobs",
            json!({"job_ids": ["3fa85f64-5717-4562-b3fc-2c963f66afa6"]}),
        ),
        (
            "CreateGroupRequest",
            json!({"name": "web", "description": "The web tier",
            "tags": ["prod"], "vms": ["web-1"]}),
        ),
        (
            "UpdateGroupRequest",
            json!({"description": "The web tier", "tags": ["prod"]}),
        ),
        (
            "LoginRequest",
            json!({"username": "alice", "password": "correct horse battery"}),
        ),
        (
            "CreateUserRequest",
            json!({"username": "alice", "password": "correct horse battery",
            "role": "operator"}),
        ),
        ("PatchUserRequest", json!({"role": "viewer"})),
        (
            "CreateTokenRequest",
            json!({"name": "ci", "role": "operator", "expires_in": 86400}),
        ),
        (
            "CreateContainerRequest",
            json!({"name": "cache", "image": "redis:7", "vcpus": 1,
            "memory": 256, "env": {"TZ": "UTC"}, "tags": ["cache"], "start": true}),
        ),
        ("UpdateContainerRequest", json!({"vcpus": 1, "memory": 512})),
        (
            "ExecRequest",
            json!({"command": ["uname", "-a"], "timeout": 30}),
        ),
        ("ImageRef", json!({"image": "alpine:3.20"})),
        (
            "CreateNetworkRequest",
            json!({"name": "backend", "driver": "bridge", "internal": false}),
        ),
        ("NetworkConnect", json!({"container": "cache"})),
        (
            "CreateVolumeRequest",
            json!({"name": "cache-data", "labels": {"team": "web"}}),
        ),
        // Answers: what the page shows as a response's example value.
        (
            "Vm",
            json!({"id": "6039fa11-59cd-460c-b791-b0c52086d0c8", "name": "web-1",
            "status": "stopped", "node": "node-1", "vcpus": 1, "memory": 128, "disk_size": 1,
            "base_image": "debian-12.qcow2", "clone": "linked",
            "disk_file": "/var/lib/libgo/vms/6039fa11-59cd-460c-b791-b0c52086d0c8/root.qcow2",
            "mac_address": "52:54:00:f1:1d:70", "network": {"mode": "user"}, "tags": ["web"],
            "cloud_init": false, "display": false,
            "created_at": "2026-12-02T16:15:34Z", "updated_at": "2026-12-02T16:15:34Z"}),
        ),
        (
            "Job",
            json!({"id": "0b7e8d52-3c1a-4f0e-9a57-6d2f1e4b8c90", "type": "vm.create",
            "state": "succeeded", "progress_percent": 100, "requested_by": "user:alice",
            "created_at": "2026-12-02T16:15:33Z", "finished_at": "2026-12-02T16:15:34Z",
            "tasks": [{"id": 0, "state": "succeeded", "progress_percent": 100,
                "description": "create VM web-1", "started_at": "2026-12-02T16:15:33Z",
                "finished_at": "2026-12-02T16:15:34Z", "log": ["disk cloned"]}]}),
        ),
        (
            "ActionResponse",
            json!({"id": "6039fa11-59cd-460c-b791-b0c52086d0c8",
            "status": "running", "message": "VM successfully started.",
            "job_id": "0b7e8d52-3c1a-4f0e-9a57-6d2f1e4b8c90"}),
        ),
        (
            "StatusResponse",
            json!({"id": "6039fa11-59cd-460c-b791-b0c52086d0c8", "name": "web-1",
            "status": "running", "message": "VM is running"}),
        ),
        (
            "DeleteResponse",
            json!({"vm_id": "6039fa11-59cd-460c-b791-b0c52086d0c8",
            "status": "deleted", "message": "VM successfully deleted.",
            "disk_file": "/var/lib/libgo/vms/6039fa11-59cd-460c-b791-b0c52086d0c8/root.qcow2",
            "job_id": "0b7e8d52-3c1a-4f0e-9a57-6d2f1e4b8c90"}),
        ),
        (
            "Template",
            json!({"id": "9d2c4a8e-1f3b-4e6a-8c7d-5b0a9e2f1c34", "name": "small",
            "vcpus": 1, "memory": 128, "disk_size": 1, "base_image": "debian-12.qcow2",
            "tags": ["small"], "created_at": "2026-12-02T16:00:00Z",
            "updated_at": "2026-12-02T16:00:00Z"}),
        ),
        (
            "Group",
            json!({"name": "web", "description": "The web tier", "tags": ["prod"],
            "vms": ["6039fa11-59cd-460c-b791-b0c52086d0c8"],
            "created_at": "2026-12-02T16:20:00Z", "updated_at": "2026-12-02T16:20:00Z"}),
        ),
        (
            "WhoAmI",
            json!({"caller": "user:alice", "role": "operator", "transport": "tcp",
            "expires_at": 1796316000}),
        ),
        (
            "Session",
            json!({"token": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl",
            "token_type": "Bearer", "expires_at": 1796316000, "username": "alice",
            "role": "operator"}),
        ),
        (
            "Health",
            json!({"status": "ok", "version": env!("CARGO_PKG_VERSION"),
            "node": "node-1", "accel": "kvm", "vms": 3}),
        ),
        (
            "ErrorBody",
            json!({"error": {"code": 404, "status": "NOT_FOUND",
            "message": "VM web-9 not found.", "details": [],
            "request_id": "req-5d1c0f3e9b2a4c7d8e6f1a2b3c4d5e6f"}}),
        ),
    ];
    for (name, example) in examples {
        let Some(schema) = s.get_mut(name) else {
            panic!("OpenAPI: no schema {name} for its example");
        };
        schema["example"] = example;
    }
}

fn add_shared_components(doc: &mut Value) {
    // On the TCP listener every route but the open ones wants a bearer
    // credential; the Unix sockets know their callers by their peer
    // credentials and ignore it.
    doc["components"]["securitySchemes"] = json!({
        "bearer": {"type": "http", "scheme": "bearer",
            "description": "On the TCP listener: an API token (`POST /api/v1/tokens`) or a login session's token (`POST /api/v1/login`), as `Authorization: Bearer <token>`. The Unix sockets need none: they know the caller by its peer credentials."},
    });
    doc["security"] = json!([{"bearer": []}]);
    doc["components"]["headers"] = json!({
        "X-Request-Id": {"description": "The request's id: the client's own `X-Request-Id` (1 to 128 visible ASCII characters) or one the agent made.",
                         "required": true, "schema": {"type": "string", "minLength": 1, "maxLength": 128}},
        "Location": {"description": "The job: `/api/v1/jobs/{id}`.", "required": true,
                     "schema": {"type": "string", "pattern": "^/api/v1/jobs/[0-9a-f-]{36}$"}},
        "Retry-After": {"description": "Seconds before the caller may try again.", "required": true,
                        "schema": {"type": "integer", "minimum": 0}},
    });
    doc["components"]["parameters"] = json!({
        "Idempotency-Key": {"name": "Idempotency-Key", "in": "header", "required": false,
            "description": "Retry safely for 24 h: the same request with the same key gets the first answer again; another request with it is 422.",
            "schema": {"type": "string", "pattern": IDEMPOTENCY_KEY}},
        "Prefer": {"name": "Prefer", "in": "header", "required": false,
            "description": "`respond-async`: answer 202 with the job at once instead of waiting for it.",
            "schema": {"type": "string"}},
    });
}

/// `PUT /containers/{id}/resources` is `PATCH /containers/{id}` under
/// another name (one handler, so one generated operation).
fn add_container_resources_route(doc: &mut Value) {
    let Some(mut op) = doc
        .pointer("/paths/~1api~1v1~1containers~1{id}/patch")
        .cloned()
    else {
        return;
    };
    op["operationId"] = "update_resources".into();
    doc["paths"]["/api/v1/containers/{id}/resources"] = json!({ "put": op });
}

/// Operations whose work runs as a job: `Prefer: respond-async` makes them
/// answer 202 with the job.
const JOB_ROUTES: &[(&str, &str)] = &[
    ("post", "/api/v1/vms"),
    ("delete", "/api/v1/vms/{id}"),
    ("patch", "/api/v1/vms/{id}"),
    ("put", "/api/v1/vms/{id}/cpu"),
    ("put", "/api/v1/vms/{id}/memory"),
    ("put", "/api/v1/vms/{id}/disk"),
    ("post", "/api/v1/vms/{id}/{action}"),
    ("post", "/api/v1/vms/{id}/snapshots"),
    ("delete", "/api/v1/vms/{id}/snapshots/{name}"),
    ("post", "/api/v1/vms/{id}/snapshots/{name}/revert"),
    ("post", "/api/v1/storage-pools/{pool}/volumes"),
    ("post", "/api/v1/vms/{id}/export"),
    ("post", "/api/v1/vms/{id}/migrate"),
    ("post", "/api/v1/migrations"),
    ("post", "/api/v1/vms/{id}/disks"),
    ("delete", "/api/v1/vms/{id}/disks/{disk}"),
    ("post", "/api/v1/vms/{id}/disks/{disk}/detach"),
    ("post", "/api/v1/containers"),
    ("delete", "/api/v1/containers/{id}"),
    ("patch", "/api/v1/containers/{id}"),
    ("put", "/api/v1/containers/{id}/resources"),
    ("post", "/api/v1/containers/{id}/{action}"),
    ("post", "/api/v1/images/pull"),
    ("post", "/api/v1/images/import"),
    ("post", "/api/v1/images/load"),
    ("post", "/api/v1/images/build"),
    ("post", "/api/v1/images/{id}/push"),
    ("post", "/api/v1/instances"),
    ("post", "/api/v1/instances/{id}/{action}"),
    ("post", "/api/v1/groups/{name}/vms"),
    ("post", "/api/v1/groups/{name}/start"),
    ("post", "/api/v1/groups/{name}/stop"),
];

/// Bulk operations: always 202 with the job.
const BULK_ROUTES: &[(&str, &str)] = &[
    ("delete", "/api/v1/vms"),
    ("delete", "/api/v1/jobs"),
    ("delete", "/api/v1/templates"),
];

/// Operations whose last path parameter shares its place with fixed routes
/// of other methods (`POST /vms/{id}/config` is a `GET` route): 405.
const SHADOWED: &[(&str, &str)] = &[
    ("post", "/api/v1/vms/{id}/{action}"),
    ("post", "/api/v1/containers/{id}/{action}"),
    ("get", "/api/v1/images/{id}"),
    ("delete", "/api/v1/images/{id}"),
];

/// Routes served by the Docker engine.
fn docker(path: &str) -> bool {
    ["containers", "images", "networks", "volumes"]
        .iter()
        .any(|p| path.starts_with(&format!("/api/v1/{p}")))
}

/// Creates that name other resources (a base image, a template, an image):
/// 404 when one is missing.
const CREATES_FROM_REFERENCES: &[(&str, &str)] = &[
    ("post", "/api/v1/vms"),
    ("post", "/api/v1/templates"),
    ("post", "/api/v1/instances"),
];

/// Operations that need a backend that may be absent: the Docker engine
/// (every container, image, network and volume call, and instance calls on
/// a container), or QEMU (what starts a VM).
fn backend_may_be_absent(method: &str, path: &str) -> bool {
    docker(path)
        || (method == "post" && path.starts_with("/api/v1/instances"))
        || (method == "post" && path == "/api/v1/vms/{id}/{action}")
        || (method == "patch" && path == "/api/v1/vms/{id}")
}

fn error_response(description: &str) -> Value {
    json!({"description": description,
           "headers": {"X-Request-Id": {"$ref": "#/components/headers/X-Request-Id"}},
           "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}})
}

fn describe(code: u16) -> &'static str {
    match code {
        400 => "INVALID_INPUT: a path segment, query parameter, header or body the agent refuses.",
        401 => "UNAUTHORIZED: no or invalid credentials (TCP listener).",
        403 => "FORBIDDEN: the caller's role may not do this.",
        404 => "NOT_FOUND: no such resource (or action).",
        405 => "METHOD_NOT_ALLOWED: the path is a route of another method.",
        409 => "RESOURCE_CONFLICT (or INSUFFICIENT_CAPACITY): the resource's state does not allow it, it is busy, or an Idempotency-Key's first request still runs without a job.",
        408 => "REQUEST_TIMEOUT: the body stalled longer than the body timeout; the connection closes.",
        413 => "PAYLOAD_TOO_LARGE: the body is over the limit.",
        422 => "IDEMPOTENCY_MISMATCH: the Idempotency-Key was used with another request.",
        429 => "RATE_LIMITED: too many requests; try again after Retry-After seconds.",
        500 => "INTERNAL_SERVER_ERROR: a step on the host failed; the message names it.",
        503 => "BACKEND_UNAVAILABLE: the Docker engine (or QEMU) is not there.",
        _ => "",
    }
}

/// The schema of a parameter, by its name and the route it is on.
fn param_schema(path: &str, name: &str) -> Option<Value> {
    let under = |p: &str| path.starts_with(p);
    let pattern = |p: &str, max: u32| json!({"type": "string", "pattern": p, "maxLength": max});
    Some(match name {
        "id" if under("/api/v1/vms/") || under("/api/v1/templates/") => pattern(VM_KEY, 63),
        "id" if under("/api/v1/jobs/") || under("/api/v1/migrations/") => {
            json!({"type": "string", "format": "uuid", "pattern": UUID})
        }
        "id" if under("/api/v1/images/") && path.ends_with("/push") => pattern(IMAGE_NAME, 200),
        "id" if under("/api/v1/images/") => pattern(IMAGE_REF, 200),
        "id" => pattern(ENGINE_NAME, 255),
        "task_id" => json!({"type": "integer", "minimum": 0, "maximum": u32::MAX}),
        "name" if under("/api/v1/vms/") || under("/api/v1/groups/") => pattern(DNS_LABEL, 63),
        "delete_vms" => json!({"type": "boolean", "default": false}),
        "name" if under("/api/v1/storage-pools/") && path.contains("/volumes/") => {
            pattern(VOLUME_NAME, 255)
        }
        "name" | "pool" if under("/api/v1/storage-pools/") => pattern(DNS_LABEL, 63),
        "host" => pattern(
            "^([A-Za-z0-9.-]{1,253}|\\[[0-9A-Fa-f:.]{2,45}\\])(:[0-9]{1,5})?$",
            261,
        ),
        "disk" => pattern("^[a-z0-9]([-a-z0-9]{0,22}[a-z0-9])?$", 24),
        "action" if under("/api/v1/vms/") => json!({"type": "string",
            "enum": ["start", "stop", "shutdown", "poweroff", "reboot", "reset", "pause", "resume"]}),
        "action" => {
            json!({"type": "string", "enum": ["start", "stop", "restart", "kill", "pause", "unpause",
            "shutdown", "reboot", "poweroff", "resume"]})
        }
        "op" => json!({"type": "string", "enum": ["connect", "disconnect"]}),
        "type" if path.ends_with("/console") => {
            json!({"type": "string", "enum": ["serial", "vnc"], "default": "serial"})
        }
        "limit" => json!({"type": "integer", "minimum": 1, "maximum": 200, "default": 50}),
        "page_token" => json!({"type": "string", "pattern": "^[A-Za-z0-9_-]+$"}),
        "sort" if path == "/api/v1/templates" => json!({"type": "string",
            "enum": ["name", "-name", "created_at", "-created_at"], "default": "name"}),
        "sort" => json!({"type": "string",
            "enum": ["name", "-name", "created_at", "-created_at"], "default": "created_at"}),
        "status" => json!({"type": "string", "enum": ["creating", "stopped", "starting", "running",
            "paused", "stopping", "rebooting", "deleting", "crashed", "error"]}),
        "state" => {
            json!({"type": "string", "enum": ["queued", "running", "succeeded", "failed", "cancelled"]})
        }
        "backend" => json!({"type": "string", "enum": ["vm", "container"]}),
        "outcome" => json!({"type": "string", "enum": ["succeeded", "failed", "denied"]}),
        "wait" => json!({"type": "integer", "minimum": 0, "maximum": 300}),
        "since" => json!({"type": "integer", "minimum": 0, "maximum": i32::MAX}),
        "tail" => json!({"type": "string", "pattern": "^(all|[0-9]{1,9})$"}),
        "image" | "tag" if under("/api/v1/images/") => pattern(IMAGE_NAME, 200),
        "file" if path == "/docs/{file}" => json!({"type": "string", "enum": super::docs::FILES}),
        "dockerfile" => json!({"type": "string", "maxLength": 1024, "default": "Dockerfile",
            "pattern": "^[A-Za-z0-9_][A-Za-z0-9_.-]{0,254}(/[A-Za-z0-9_][A-Za-z0-9_.-]{0,254})*$"}),
        _ => return None,
    })
}

/// What a parameter is, where its handler does not say.
fn param_description(path: &str, name: &str) -> String {
    let under = |p: &str| path.starts_with(p);
    let what = match name {
        "id" if under("/api/v1/vms/") => "The VM: its id (UUID) or name",
        "id" if under("/api/v1/templates/") => "The template: its id (UUID) or name",
        "id" if under("/api/v1/containers/") || under("/api/v1/instances/") => {
            "The container (or VM): its libgo id, engine id or name"
        }
        "id" if under("/api/v1/images/") => "The image: its id (`sha256:...`) or name",
        "id" if under("/api/v1/jobs/") => "The job's id",
        "id" if under("/api/v1/tokens/") => "The API token's id",
        "id" => "The object's id or name",
        "name" if under("/api/v1/groups/") => "The group's name",
        "name" if under("/api/v1/vms/") => "The snapshot's name",
        "name" if path.contains("/volumes/") => "The volume's name",
        "name" if path.contains("{name}") => "The name",
        "name" => "Only those with this name",
        "username" => "The user's name",
        "disk" => "The disk's name",
        "task_id" => "The task's index in its job",
        "tag" if path == "/api/v1/images/build" => "The new image's name, `repo:tag`",
        "tag" => "Only those with this tag",
        "limit" => "Page size, 1 to 200 (default 50)",
        "page_token" => "The cursor of the next page, as the previous page gave it",
        "status" => "Only those in this status",
        "state" => "Only those in this state",
        "type" => "Only jobs of this type (`vm.create`, ...)",
        "backend" => "Only VMs (`vm`) or only containers (`container`)",
        "force" => "Also when it is in use (else 409)",
        "all" => "Every container of the engine, not only libgo's",
        "command" => "The command and its arguments, one `command` each (default `sh`)",
        "tty" => "Give the command a terminal",
        "tail" => "The last lines only: a number, or `all`",
        "since" => "Only lines since then (seconds since the epoch)",
        "timestamps" => "Prefix each line with its time",
        "follow" => "Keep streaming what comes next",
        "delete_vms" => "Delete the group's VMs too (202 with the job)",
        "dockerfile" => "The Dockerfile's path in the context (default `Dockerfile`)",
        "image" => "The image's name, `repo:tag`",
        "action" => "The power action",
        "sort" => "The order: a field, `-` before it for descending",
        "template" => "Only VMs made from this template",
        "node" => "Only VMs of this node",
        _ => "",
    };
    what.to_owned()
}

fn complete_operation(path: &str, method: &str, op: &mut Value) {
    let Some(o) = op.as_object_mut() else {
        return;
    };
    let key = (method, path);
    // Open on every listener, and touching nothing but what they serve.
    let system = ["/health", "/openapi.json", "/docs", "/docs/{file}"].contains(&path);
    // A summary is a title: the doc comment's first line without its stop.
    if let Some(summary) = o.get("summary").and_then(Value::as_str) {
        let title = summary.trim().trim_end_matches('.').to_owned();
        o.insert("summary".into(), title.into());
    }
    // Anyone may call the open routes: no bearer token.
    if super::access::rule(&method.to_ascii_uppercase(), path) == Some(super::access::Rule::Open) {
        o.insert("security".into(), json!([]));
    }

    // Parameters: exact schemas; idempotency keys and `Prefer` where taken.
    let mut params = o
        .remove("parameters")
        .and_then(|p| p.as_array().cloned())
        .unwrap_or_default();
    params.retain(|p| p.get("in") != Some(&"header".into()));
    for p in params.iter_mut() {
        let name = p["name"].as_str().unwrap_or_default().to_owned();
        if let Some(schema) = param_schema(path, &name) {
            p["schema"] = schema;
        }
        if p["description"].as_str().is_none_or(str::is_empty) {
            p["description"] = param_description(path, &name).into();
        }
    }
    let job = JOB_ROUTES.contains(&key);
    if job {
        params.push(json!({"$ref": "#/components/parameters/Prefer"}));
    }
    if matches!(method, "post" | "patch" | "delete") {
        params.push(json!({"$ref": "#/components/parameters/Idempotency-Key"}));
    }
    let has_params = !params.is_empty();
    let has_path_params = path.contains('{');
    if has_params {
        o.insert("parameters".into(), Value::Array(params));
    }

    // Bodies.
    if path.ends_with("/{action}")
        || path == "/api/v1/groups/{name}/start"
        || path == "/api/v1/groups/{name}/stop"
    {
        o.insert(
            "requestBody".into(),
            json!({"required": false, "description": "Optional; an empty body is `{}`.",
                   "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ActionRequest"}}}}),
        );
    }
    if key == ("post", "/api/v1/vms") {
        o.insert("requestBody".into(), json!({"required": true,
            "description": "One VM (201, or 202 under `Prefer: respond-async`), or an array of 1 to 100 (always 202, one task each).",
            "content": {"application/json": {"schema": {"oneOf": [
                {"$ref": "#/components/schemas/CreateVmRequest"},
                {"type": "array", "minItems": 1, "maxItems": crate::engine::bulk::MAX_ITEMS,
                 "items": {"$ref": "#/components/schemas/CreateVmItem"}}]},
                "examples": {
                    "one": {"summary": "One VM (201)", "value": {"name": "web-1", "vcpus": 1,
                        "memory": 128, "disk_size": 1, "base_image": "debian-12.qcow2", "tags": ["web"]}},
                    "many": {"summary": "Many VMs (202, one task each)", "value": [
                        {"name": "web-3", "vcpus": 1, "memory": 128, "disk_size": 1, "base_image": "debian-12.qcow2"},
                        {"name": "web-4", "vcpus": 1, "memory": 128, "disk_size": 1, "base_image": "debian-12.qcow2"}]}}}}}));
    }
    if key == ("post", "/api/v1/templates") {
        o.insert("requestBody".into(), json!({"required": true,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CreateTemplateRequest"}}}}));
    }
    if key == ("post", "/api/v1/instances") {
        o.insert("requestBody".into(), json!({"required": true,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CreateInstanceRequest"}}}}));
        o.insert("responses".into(), json!({"201": {"description": "The VM or the container",
            "content": {"application/json": {"schema": {"oneOf": [
                {"$ref": "#/components/schemas/Vm"}, {"$ref": "#/components/schemas/Container"}]}}}}}));
    }
    let body = o.get("requestBody").cloned();
    let json_body = body
        .as_ref()
        .is_some_and(|b| b.pointer("/content/application~1json").is_some());
    if json_body {
        if let Some(b) = o.get_mut("requestBody") {
            if b.get("required").is_none() {
                b["required"] = Value::Bool(true);
            }
        }
    }

    // Responses.
    let responses = o
        .entry("responses")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .expect("responses");
    for r in responses.values_mut() {
        r["headers"]["X-Request-Id"] = json!({"$ref": "#/components/headers/X-Request-Id"});
    }
    let mut add = |code: u16| {
        responses
            .entry(code.to_string())
            .or_insert_with(|| error_response(describe(code)));
    };
    // Every listener but the admin socket counts requests (rate limits).
    add(429);
    if path == "/docs/{file}" {
        add(404);
    }
    if !system {
        add(401);
        add(500);
        // Open to anyone: no role is checked.
        if key != ("post", "/api/v1/login") {
            add(403);
        }
        if has_params || body.is_some() {
            add(400);
        }
        if has_path_params {
            add(404);
        }
        if body.is_some() {
            add(408);
            add(413);
        }
        if matches!(method, "post" | "patch" | "delete") {
            add(409);
            add(422);
        }
        // The Docker engine's own "no such ..." is 404 on any of its calls.
        if CREATES_FROM_REFERENCES.contains(&key) || docker(path) {
            add(404);
        }
        // A key that several engine objects match (an id prefix) is 409.
        if docker(path) && has_path_params {
            add(409);
        }
        if SHADOWED.contains(&key) {
            add(405);
        }
        if backend_may_be_absent(method, path) {
            add(503);
        }
    }
    if job || BULK_ROUTES.contains(&key) {
        responses.insert(
            "202".into(),
            json!({"description": "Accepted: the job runs; `Location` names it.",
                   "headers": {"Location": {"$ref": "#/components/headers/Location"},
                               "X-Request-Id": {"$ref": "#/components/headers/X-Request-Id"}},
                   "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Accepted"}}}}),
        );
    }
    if let Some(r) = responses.get_mut("429") {
        r["headers"]["Retry-After"] = json!({"$ref": "#/components/headers/Retry-After"});
    }
    // Every error the operation answers, in its own response and in the
    // operation's description (what a reader of the page sees first).
    let mut errors = Vec::new();
    for (code, r) in responses.iter_mut() {
        let Ok(n) = code.parse::<u16>() else { continue };
        if n < 400 {
            continue;
        }
        let generic = describe(n);
        let text = r["description"].as_str().unwrap_or_default().to_owned();
        let text = if text.is_empty() {
            generic.to_owned()
        } else if text == generic || generic.is_empty() {
            text
        } else {
            format!("{generic} Here: {text}")
        };
        r["description"] = text.clone().into();
        errors.push(format!("- `{code}` {text}"));
    }
    let mut description = o
        .get("description")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if job {
        description.push_str(
            "\n\nRuns as a job: the answer comes when the job has finished, or at once as \
             202 with the job under `Prefer: respond-async` (`GET /api/v1/jobs/{id}` follows it).",
        );
    }
    if !errors.is_empty() {
        description.push_str("\n\n**Errors**\n\n");
        description.push_str(&errors.join("\n"));
    }
    o.insert("description".into(), description.trim().into());
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    /// What the docs page shows for each operation: a short summary, a
    /// description that lists its errors, at least one 4xx, and an example
    /// of every JSON request body.
    #[test]
    fn every_operation_is_described_with_its_errors_and_examples() {
        let doc = super::document();
        let schemas = &doc["components"]["schemas"];
        let has_example = |media: &Value| -> bool {
            if media.get("example").is_some() || media.get("examples").is_some() {
                return true;
            }
            let schema = &media["schema"];
            let named = |s: &Value| {
                s["$ref"]
                    .as_str()
                    .and_then(|r| r.strip_prefix("#/components/schemas/"))
                    .is_some_and(|n| schemas[n].get("example").is_some())
            };
            schema.get("example").is_some() || named(schema)
        };
        let mut seen = 0;
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                seen += 1;
                let summary = op["summary"].as_str().unwrap_or_default();
                assert!(
                    !summary.is_empty()
                        && summary.len() <= 60
                        && !summary.contains('\n')
                        && !summary.ends_with('.'),
                    "{method} {path}: summary {summary:?}"
                );
                let description = op["description"].as_str().unwrap_or_default();
                assert!(
                    description.len() > summary.len(),
                    "{method} {path}: description {description:?}"
                );
                let responses = op["responses"].as_object().unwrap();
                let errors: Vec<&String> = responses
                    .keys()
                    .filter(|c| c.starts_with('4') || c.starts_with('5'))
                    .collect();
                assert!(
                    errors.iter().any(|c| c.starts_with('4')),
                    "{method} {path}: no 4xx"
                );
                for code in errors {
                    let text = responses[code]["description"].as_str().unwrap_or_default();
                    assert!(!text.is_empty(), "{method} {path} {code}: no description");
                    assert!(
                        description.contains(&format!("- `{code}` ")),
                        "{method} {path}: the description does not list {code}"
                    );
                }
                for p in op["parameters"].as_array().into_iter().flatten() {
                    if p.get("$ref").is_some() {
                        continue;
                    }
                    let name = p["name"].as_str().unwrap_or_default();
                    assert!(
                        p["description"].as_str().is_some_and(|d| !d.is_empty()),
                        "{method} {path}: parameter {name} has no description"
                    );
                    assert!(p["schema"].is_object(), "{method} {path}: {name}");
                }
                if let Some(json) = op.pointer("/requestBody/content/application~1json") {
                    assert!(has_example(json), "{method} {path}: no example body");
                }
            }
        }
        assert!(seen > 110, "{seen} operations");
        // The try-it-out can send a bearer token; the open routes need none.
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
        assert_eq!(doc["security"][0]["bearer"], serde_json::json!([]));
        for (path, method) in [
            ("/docs", "get"),
            ("/health", "get"),
            ("/api/v1/login", "post"),
        ] {
            assert_eq!(
                doc["paths"][path][method]["security"],
                serde_json::json!([]),
                "{path}"
            );
        }
        assert!(doc["paths"]["/api/v1/vms"]["get"].get("security").is_none());
    }

    /// Every schema example is an instance of its schema's shape: its
    /// properties are known (the bodies are closed) and the required ones
    /// are there.
    #[test]
    fn schema_examples_have_the_shape_of_their_schema() {
        let doc = super::document();
        let mut checked = 0;
        for (name, schema) in doc["components"]["schemas"].as_object().unwrap() {
            let Some(example) = schema.get("example") else {
                continue;
            };
            checked += 1;
            let (Some(props), Some(ex)) = (schema["properties"].as_object(), example.as_object())
            else {
                continue;
            };
            for k in ex.keys() {
                assert!(
                    props.contains_key(k),
                    "{name}: example field {k} is not in the schema"
                );
            }
            for r in schema["required"].as_array().into_iter().flatten() {
                assert!(
                    ex.contains_key(r.as_str().unwrap()),
                    "{name}: example lacks {r}"
                );
            }
        }
        assert!(checked >= 30, "{checked} examples");
    }

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

    /// Every operation but the two public ones documents the statuses every
    /// request can meet, with the error body.
    #[test]
    fn every_operation_lists_the_shared_statuses() {
        let doc = super::document();
        let mut seen = 0;
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let r = &op["responses"];
                assert!(r.get("415").is_none(), "{method} {path}");
                assert!(r.get("429").is_some(), "{method} {path}");
                if ["/health", "/openapi.json", "/docs", "/docs/{file}"].contains(&path.as_str()) {
                    assert!(r.get("401").is_none(), "{method} {path}");
                    continue;
                }
                seen += 1;
                let shared: &[&str] = if path == "/api/v1/login" {
                    &["401", "429", "500"]
                } else {
                    &["401", "403", "429", "500"]
                };
                for code in shared {
                    assert_eq!(
                        r[code]["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/ErrorBody",
                        "{method} {path} {code}"
                    );
                }
                assert!(r["429"]["headers"].get("Retry-After").is_some());
                if op.get("requestBody").is_some() {
                    assert!(r.get("413").is_some(), "{method} {path}");
                    assert!(r.get("408").is_some(), "{method} {path}");
                }
                if path.contains('{') {
                    assert!(r.get("404").is_some(), "{method} {path}");
                }
                if ["post", "patch", "delete"].contains(&method.as_str()) {
                    assert!(r.get("422").is_some(), "{method} {path}");
                }
                if path.starts_with("/api/v1/containers") || path.starts_with("/api/v1/images") {
                    assert!(r.get("503").is_some(), "{method} {path}");
                }
            }
        }
        assert!(seen > 55, "{seen} operations");
    }

    /// Operation ids are unique, every `$ref` names a component, and every
    /// link names an operation of the document.
    #[test]
    fn the_document_is_consistent() {
        let doc = super::document();
        let mut ids = std::collections::HashSet::new();
        for item in doc["paths"].as_object().unwrap().values() {
            for op in item.as_object().unwrap().values() {
                let id = op["operationId"].as_str().unwrap();
                assert!(ids.insert(id.to_owned()), "operationId {id} twice");
            }
        }
        fn walk(v: &Value, doc: &Value, refs: &mut usize) {
            match v {
                Value::Object(o) => {
                    for (k, x) in o {
                        if k == "$ref" || k == "operationRef" {
                            let target = x.as_str().unwrap().trim_start_matches("#/");
                            let mut node = doc;
                            for part in target.split('/') {
                                let part = part.replace("~1", "/").replace("~0", "~");
                                node = node
                                    .get(&part)
                                    .unwrap_or_else(|| panic!("dangling {k}: {x}"));
                            }
                            *refs += 1;
                        }
                        walk(x, doc, refs);
                    }
                }
                Value::Array(a) => a.iter().for_each(|x| walk(x, doc, refs)),
                _ => {}
            }
        }
        let mut refs = 0;
        walk(&doc, &doc, &mut refs);
        assert!(refs > 500, "{refs} references");
        let created = &doc["paths"]["/api/v1/vms"]["post"]["responses"]["201"]["links"];
        assert!(created.as_object().unwrap().len() >= 10, "{created}");
    }

    #[test]
    fn ids_filters_numbers_and_bodies_are_exact() {
        let doc = super::document();
        let op = &doc["paths"]["/api/v1/vms/{id}/{action}"]["post"];
        let params = op["parameters"].as_array().unwrap();
        let param = |n: &str| params.iter().find(|p| p["name"] == n).unwrap().clone();
        assert_eq!(param("id")["schema"]["pattern"], super::VM_KEY);
        assert_eq!(
            param("action")["schema"]["enum"].as_array().unwrap().len(),
            8
        );
        // An action body is an optional object, never null.
        assert_eq!(op["requestBody"]["required"], false);
        assert_eq!(
            op["requestBody"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/ActionRequest"
        );
        assert!(op["responses"].get("202").is_some());
        let list = &doc["paths"]["/api/v1/vms"]["get"]["parameters"];
        let status = list
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "status")
            .unwrap();
        assert!(status["schema"]["enum"]
            .as_array()
            .unwrap()
            .contains(&Value::from("running")));
        let create = &doc["paths"]["/api/v1/vms"]["post"]["requestBody"]["content"]
            ["application/json"]["schema"]["oneOf"];
        assert_eq!(create[1]["type"], "array");
        assert_eq!(create[1]["maxItems"], 100);
        let spec = &doc["components"]["schemas"]["CreateVmRequest"]["properties"];
        assert_eq!(spec["vcpus"]["maximum"], 256);
        assert_eq!(spec["vcpus"]["minimum"], 1);
        assert_eq!(spec["memory"]["minimum"], 16);
        assert_eq!(spec["name"]["pattern"], super::DNS_LABEL);
        let instances = &doc["components"]["schemas"]["InstanceList"]["properties"];
        assert!(instances.get("containers_error").is_some());
        let jobs = &doc["paths"]["/api/v1/jobs/{id}"]["get"]["parameters"][0];
        assert_eq!(jobs["schema"]["format"], "uuid");
        assert!(doc["paths"]["/api/v1/containers/{id}/resources"]
            .get("put")
            .is_some());
    }
}
