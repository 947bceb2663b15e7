//! The typed methods: one per route of the API (docs/api.md §4), each a
//! route and its wire types around [`Client::request`].
//!
//! Calls that run as jobs have two forms: the plain one waits for the job
//! and answers its result (the server's synchronous mode), and the
//! `*_async` one answers [`Accepted`] at once (`Prefer: respond-async`),
//! to be followed with [`Client::wait_job`] or [`Client::follow_job`].

use hyper::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use super::{segment as s, Client, Result};
use crate::model::*;

/// Paging, sorting and filters of a list call (docs/api.md §6).
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub limit: Option<u32>,
    pub page_token: Option<String>,
    pub sort: Option<String>,
    /// Exact filters: `status`, `name`, `tag`, `state`, `type`, `all`, …
    pub filters: Vec<(String, String)>,
}

impl ListQuery {
    pub fn filter(mut self, key: &str, value: impl Into<String>) -> ListQuery {
        self.filters.push((key.to_owned(), value.into()));
        self
    }

    /// `?a=b&…`, or nothing.
    pub fn to_query(&self) -> String {
        let mut q: Vec<String> = Vec::new();
        if let Some(l) = self.limit {
            q.push(format!("limit={l}"));
        }
        if let Some(t) = &self.page_token {
            q.push(format!("page_token={}", s(t)));
        }
        if let Some(t) = &self.sort {
            q.push(format!("sort={}", s(t)));
        }
        for (k, v) in &self.filters {
            q.push(format!("{}={}", s(k), s(v)));
        }
        if q.is_empty() {
            String::new()
        } else {
            format!("?{}", q.join("&"))
        }
    }
}

/// A list answer that may have more pages.
pub trait Page {
    fn next_page_token(&self) -> Option<&str>;
}

macro_rules! paged {
    ($($t:ty),*) => {$(
        impl Page for $t {
            fn next_page_token(&self) -> Option<&str> {
                self.next_page_token.as_deref()
            }
        }
    )*};
}
paged!(
    VmList,
    JobList,
    TaskList,
    TemplateList,
    ContainerList,
    GroupList,
    InstanceList,
    AuditPage
);

const NO_BODY: Option<&()> = None;
const ASYNC: [(&str, &str); 1] = [("prefer", "respond-async")];

impl Client {
    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.request(Method::GET, path, NO_BODY).await
    }

    async fn send_json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &(impl Serialize + ?Sized),
    ) -> Result<T> {
        self.request(method, path, Some(body)).await
    }

    async fn bare<T: DeserializeOwned>(&self, method: Method, path: &str) -> Result<T> {
        self.request(method, path, NO_BODY).await
    }

    /// A job call in the asynchronous mode: `202 {job, vm?}` at once.
    pub async fn submit(
        &self,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<Accepted> {
        self.request_with(method, path, body, &ASYNC).await
    }

    // --- System ---------------------------------------------------------

    pub async fn health(&self) -> Result<Health> {
        self.get("/health").await
    }

    pub async fn node_resources(&self) -> Result<NodeResources> {
        self.get("/api/v1/nodes/self/resources").await
    }

    /// The nodes: the agent itself, or every node behind an aggregator.
    pub async fn nodes(&self) -> Result<crate::model::NodeList> {
        self.get("/api/v1/nodes").await
    }

    pub async fn node(&self, name: &str) -> Result<crate::model::Node> {
        self.get(&format!("/api/v1/nodes/{}", s(name))).await
    }

    /// The totals over the nodes and each node's figures.
    pub async fn resources(&self) -> Result<crate::model::ClusterResources> {
        self.get("/api/v1/resources").await
    }

    pub async fn cluster(&self) -> Result<crate::model::Cluster> {
        self.get("/api/v1/cluster").await
    }

    /// The OpenAPI document.
    pub async fn openapi(&self) -> Result<Value> {
        self.get("/openapi.json").await
    }

    // --- Access ---------------------------------------------------------

    pub async fn login(&self, username: &str, password: &str) -> Result<Session> {
        let body = LoginRequest {
            username: username.into(),
            password: password.into(),
        };
        self.send_json(Method::POST, "/api/v1/login", &body).await
    }

    pub async fn logout(&self) -> Result<()> {
        self.bare(Method::POST, "/api/v1/logout").await
    }

    pub async fn whoami(&self) -> Result<WhoAmI> {
        self.get("/api/v1/whoami").await
    }

    pub async fn users(&self) -> Result<UserList> {
        self.get("/api/v1/users").await
    }

    pub async fn user(&self, name: &str) -> Result<User> {
        self.get(&format!("/api/v1/users/{}", s(name))).await
    }

    pub async fn create_user(&self, req: &CreateUserRequest) -> Result<User> {
        self.send_json(Method::POST, "/api/v1/users", req).await
    }

    pub async fn patch_user(&self, name: &str, req: &PatchUserRequest) -> Result<User> {
        self.send_json(Method::PATCH, &format!("/api/v1/users/{}", s(name)), req)
            .await
    }

    pub async fn delete_user(&self, name: &str) -> Result<()> {
        self.bare(Method::DELETE, &format!("/api/v1/users/{}", s(name)))
            .await
    }

    pub async fn tokens(&self) -> Result<TokenList> {
        self.get("/api/v1/tokens").await
    }

    pub async fn token(&self, id: &str) -> Result<Token> {
        self.get(&format!("/api/v1/tokens/{}", s(id))).await
    }

    pub async fn create_token(&self, req: &CreateTokenRequest) -> Result<CreatedToken> {
        self.send_json(Method::POST, "/api/v1/tokens", req).await
    }

    pub async fn revoke_token(&self, id: &str) -> Result<()> {
        self.bare(Method::DELETE, &format!("/api/v1/tokens/{}", s(id)))
            .await
    }

    pub async fn audit(&self, q: &ListQuery) -> Result<AuditPage> {
        self.get(&format!("/api/v1/audit{}", q.to_query())).await
    }

    // --- VMs ------------------------------------------------------------

    pub async fn vms(&self, q: &ListQuery) -> Result<VmList> {
        self.get(&format!("/api/v1/vms{}", q.to_query())).await
    }

    /// A VM by id or name.
    pub async fn vm(&self, id: &str) -> Result<Vm> {
        self.get(&format!("/api/v1/vms/{}", s(id))).await
    }

    pub async fn create_vm(&self, req: &CreateVmRequest) -> Result<CreatedVm> {
        self.send_json(Method::POST, "/api/v1/vms", req).await
    }

    pub async fn create_vm_async(&self, req: &CreateVmRequest) -> Result<Accepted> {
        self.submit(Method::POST, "/api/v1/vms", Some(req)).await
    }

    /// Bulk create (1 to 100): always a job.
    pub async fn create_vms(&self, reqs: &[CreateVmRequest]) -> Result<Accepted> {
        self.submit(Method::POST, "/api/v1/vms", Some(reqs)).await
    }

    pub async fn delete_vm(&self, id: &str) -> Result<DeleteResponse> {
        self.bare(Method::DELETE, &format!("/api/v1/vms/{}", s(id)))
            .await
    }

    pub async fn delete_vm_async(&self, id: &str) -> Result<Accepted> {
        self.submit(Method::DELETE, &format!("/api/v1/vms/{}", s(id)), NO_BODY)
            .await
    }

    /// Bulk delete (ids or names, 1 to 100): always a job.
    pub async fn delete_vms(&self, ids: &[String]) -> Result<Accepted> {
        let body = BulkDeleteVms {
            vm_ids: ids.to_vec(),
        };
        self.submit(Method::DELETE, "/api/v1/vms", Some(&body))
            .await
    }

    pub async fn patch_vm(&self, id: &str, req: &PatchVmRequest) -> Result<UpdateResponse> {
        self.send_json(Method::PATCH, &format!("/api/v1/vms/{}", s(id)), req)
            .await
    }

    pub async fn vm_config(&self, id: &str) -> Result<VmConfig> {
        self.get(&format!("/api/v1/vms/{}/config", s(id))).await
    }

    pub async fn vm_status(&self, id: &str) -> Result<StatusResponse> {
        self.get(&format!("/api/v1/vms/{}/status", s(id))).await
    }

    pub async fn vm_performance(&self, id: &str) -> Result<Performance> {
        self.get(&format!("/api/v1/vms/{}/performance", s(id)))
            .await
    }

    pub async fn vm_resources(&self, id: &str) -> Result<Resources> {
        self.get(&format!("/api/v1/vms/{}/resources", s(id))).await
    }

    pub async fn put_vm_cpu(&self, id: &str, req: &UpdateCpuRequest) -> Result<UpdateResponse> {
        self.send_json(Method::PUT, &format!("/api/v1/vms/{}/cpu", s(id)), req)
            .await
    }

    pub async fn put_vm_memory(
        &self,
        id: &str,
        req: &UpdateMemoryRequest,
    ) -> Result<UpdateResponse> {
        self.send_json(Method::PUT, &format!("/api/v1/vms/{}/memory", s(id)), req)
            .await
    }

    pub async fn put_vm_disk(&self, id: &str, req: &UpdateDiskRequest) -> Result<UpdateResponse> {
        self.send_json(Method::PUT, &format!("/api/v1/vms/{}/disk", s(id)), req)
            .await
    }

    /// A power action: `start`, `stop`, `shutdown`, `poweroff`, `reboot`,
    /// `reset`, `pause`, `resume`; `timeout` in seconds where it applies.
    pub async fn vm_action(
        &self,
        id: &str,
        action: &str,
        timeout: Option<u64>,
    ) -> Result<ActionResponse> {
        let body = ActionRequest { timeout };
        self.send_json(
            Method::POST,
            &format!("/api/v1/vms/{}/{}", s(id), s(action)),
            &body,
        )
        .await
    }

    pub async fn vm_action_async(
        &self,
        id: &str,
        action: &str,
        timeout: Option<u64>,
    ) -> Result<Accepted> {
        let body = ActionRequest { timeout };
        self.submit(
            Method::POST,
            &format!("/api/v1/vms/{}/{}", s(id), s(action)),
            Some(&body),
        )
        .await
    }

    /// The display as a PNG.
    pub async fn vm_screenshot(&self, id: &str) -> Result<Vec<u8>> {
        let path = format!("/api/v1/vms/{}/screenshot", s(id));
        Ok(self.call(Method::GET, &path, None, &[]).await?.1.to_vec())
    }

    pub async fn snapshots(&self, vm: &str) -> Result<SnapshotList> {
        self.get(&format!("/api/v1/vms/{}/snapshots", s(vm))).await
    }

    pub async fn snapshot(&self, vm: &str, name: &str) -> Result<Snapshot> {
        self.get(&format!("/api/v1/vms/{}/snapshots/{}", s(vm), s(name)))
            .await
    }

    pub async fn create_snapshot(&self, vm: &str, req: &CreateSnapshotRequest) -> Result<Snapshot> {
        self.send_json(
            Method::POST,
            &format!("/api/v1/vms/{}/snapshots", s(vm)),
            req,
        )
        .await
    }

    pub async fn create_snapshot_async(
        &self,
        vm: &str,
        req: &CreateSnapshotRequest,
    ) -> Result<Accepted> {
        self.submit(
            Method::POST,
            &format!("/api/v1/vms/{}/snapshots", s(vm)),
            Some(req),
        )
        .await
    }

    pub async fn delete_snapshot(&self, vm: &str, name: &str) -> Result<Snapshot> {
        self.bare(
            Method::DELETE,
            &format!("/api/v1/vms/{}/snapshots/{}", s(vm), s(name)),
        )
        .await
    }

    pub async fn revert_snapshot(&self, vm: &str, name: &str) -> Result<Snapshot> {
        self.bare(
            Method::POST,
            &format!("/api/v1/vms/{}/snapshots/{}/revert", s(vm), s(name)),
        )
        .await
    }

    pub async fn export_vm(&self, vm: &str, req: &ExportVmRequest) -> Result<StorageVolume> {
        self.send_json(Method::POST, &format!("/api/v1/vms/{}/export", s(vm)), req)
            .await
    }

    pub async fn export_vm_async(&self, vm: &str, req: &ExportVmRequest) -> Result<Accepted> {
        self.submit(
            Method::POST,
            &format!("/api/v1/vms/{}/export", s(vm)),
            Some(req),
        )
        .await
    }

    // --- Moving VMs between nodes ----------------------------------------

    /// Moves a VM to another node; answers once it lives there.
    pub async fn migrate_vm(&self, vm: &str, req: &MigrateRequest) -> Result<MigrationResult> {
        self.send_json(Method::POST, &format!("/api/v1/vms/{}/migrate", s(vm)), req)
            .await
    }

    pub async fn migrate_vm_async(&self, vm: &str, req: &MigrateRequest) -> Result<Accepted> {
        self.submit(
            Method::POST,
            &format!("/api/v1/vms/{}/migrate", s(vm)),
            Some(req),
        )
        .await
    }

    /// Target side of a move: prepares to receive the VM.
    pub async fn prepare_migration(&self, req: &IncomingMigration) -> Result<PreparedMigration> {
        self.send_json(Method::POST, "/api/v1/migrations", req)
            .await
    }

    /// Target side of a move: the VM becomes an ordinary VM of the node.
    pub async fn complete_migration(&self, id: Uuid) -> Result<Vm> {
        self.bare(Method::POST, &format!("/api/v1/migrations/{id}/complete"))
            .await
    }

    /// Target side of a move: gives it up, nothing left.
    pub async fn abort_migration(&self, id: Uuid) -> Result<()> {
        self.bare(Method::DELETE, &format!("/api/v1/migrations/{id}"))
            .await
    }

    pub async fn disks(&self, vm: &str) -> Result<DiskList> {
        self.get(&format!("/api/v1/vms/{}/disks", s(vm))).await
    }

    pub async fn disk(&self, vm: &str, disk: &str) -> Result<Disk> {
        self.get(&format!("/api/v1/vms/{}/disks/{}", s(vm), s(disk)))
            .await
    }

    pub async fn attach_disk(&self, vm: &str, req: &AttachDiskRequest) -> Result<Disk> {
        self.send_json(Method::POST, &format!("/api/v1/vms/{}/disks", s(vm)), req)
            .await
    }

    pub async fn detach_disk(&self, vm: &str, disk: &str) -> Result<Disk> {
        self.bare(
            Method::POST,
            &format!("/api/v1/vms/{}/disks/{}/detach", s(vm), s(disk)),
        )
        .await
    }

    pub async fn delete_disk(&self, vm: &str, disk: &str) -> Result<Disk> {
        self.bare(
            Method::DELETE,
            &format!("/api/v1/vms/{}/disks/{}", s(vm), s(disk)),
        )
        .await
    }

    // --- Jobs -----------------------------------------------------------

    pub async fn jobs(&self, q: &ListQuery) -> Result<JobList> {
        self.get(&format!("/api/v1/jobs{}", q.to_query())).await
    }

    pub async fn job(&self, id: Uuid) -> Result<Job> {
        self.get(&format!("/api/v1/jobs/{id}")).await
    }

    pub async fn job_tasks(&self, id: Uuid, q: &ListQuery) -> Result<TaskList> {
        self.get(&format!("/api/v1/jobs/{id}/tasks{}", q.to_query()))
            .await
    }

    pub async fn job_task(&self, id: Uuid, task: u32) -> Result<Task> {
        self.get(&format!("/api/v1/jobs/{id}/tasks/{task}")).await
    }

    pub async fn cancel_job(&self, id: Uuid) -> Result<Job> {
        self.bare(Method::DELETE, &format!("/api/v1/jobs/{id}"))
            .await
    }

    pub async fn cancel_jobs(&self, ids: &[Uuid]) -> Result<Accepted> {
        let body = BulkCancelJobs {
            job_ids: ids.to_vec(),
        };
        self.submit(Method::DELETE, "/api/v1/jobs", Some(&body))
            .await
    }

    // --- Templates ------------------------------------------------------

    pub async fn templates(&self, q: &ListQuery) -> Result<TemplateList> {
        self.get(&format!("/api/v1/templates{}", q.to_query()))
            .await
    }

    pub async fn template(&self, id: &str) -> Result<Template> {
        self.get(&format!("/api/v1/templates/{}", s(id))).await
    }

    pub async fn create_template(&self, req: &TemplateRequest) -> Result<Template> {
        self.send_json(Method::POST, "/api/v1/templates", req).await
    }

    pub async fn patch_template(&self, id: &str, req: &TemplateRequest) -> Result<Template> {
        self.send_json(Method::PATCH, &format!("/api/v1/templates/{}", s(id)), req)
            .await
    }

    pub async fn delete_template(&self, id: &str) -> Result<Template> {
        self.bare(Method::DELETE, &format!("/api/v1/templates/{}", s(id)))
            .await
    }

    /// Bulk delete of templates (ids or names): always a job.
    pub async fn delete_templates(&self, ids: &[String]) -> Result<Accepted> {
        let body = BulkDeleteTemplates {
            template_ids: ids.to_vec(),
        };
        self.submit(Method::DELETE, "/api/v1/templates", Some(&body))
            .await
    }

    // --- Groups ---------------------------------------------------------

    pub async fn groups(&self, q: &ListQuery) -> Result<GroupList> {
        self.get(&format!("/api/v1/groups{}", q.to_query())).await
    }

    pub async fn group(&self, name: &str) -> Result<Group> {
        self.get(&format!("/api/v1/groups/{}", s(name))).await
    }

    pub async fn create_group(&self, req: &CreateGroupRequest) -> Result<Group> {
        self.send_json(Method::POST, "/api/v1/groups", req).await
    }

    pub async fn put_group(&self, name: &str, req: &UpdateGroupRequest) -> Result<Group> {
        self.send_json(Method::PUT, &format!("/api/v1/groups/{}", s(name)), req)
            .await
    }

    /// Deletes a group (its VMs stay).
    pub async fn delete_group(&self, name: &str) -> Result<Group> {
        self.bare(Method::DELETE, &format!("/api/v1/groups/{}", s(name)))
            .await
    }

    /// Deletes a group and its VMs: a job when it has members.
    pub async fn delete_group_with_vms(&self, name: &str) -> Result<Value> {
        self.bare(
            Method::DELETE,
            &format!("/api/v1/groups/{}?delete_vms=true", s(name)),
        )
        .await
    }

    pub async fn group_members(&self, name: &str) -> Result<GroupMembers> {
        self.get(&format!("/api/v1/groups/{}/vms", s(name))).await
    }

    pub async fn create_group_vm(&self, name: &str, req: &CreateVmRequest) -> Result<CreatedVm> {
        self.send_json(
            Method::POST,
            &format!("/api/v1/groups/{}/vms", s(name)),
            req,
        )
        .await
    }

    /// `start` or `stop` of every member: the finished job.
    pub async fn group_action(
        &self,
        name: &str,
        action: &str,
        timeout: Option<u64>,
    ) -> Result<Job> {
        let body = ActionRequest { timeout };
        self.send_json(
            Method::POST,
            &format!("/api/v1/groups/{}/{}", s(name), s(action)),
            &body,
        )
        .await
    }

    pub async fn group_action_async(
        &self,
        name: &str,
        action: &str,
        timeout: Option<u64>,
    ) -> Result<Accepted> {
        let body = ActionRequest { timeout };
        self.submit(
            Method::POST,
            &format!("/api/v1/groups/{}/{}", s(name), s(action)),
            Some(&body),
        )
        .await
    }

    // --- Containers -----------------------------------------------------

    pub async fn containers(&self, q: &ListQuery) -> Result<ContainerList> {
        self.get(&format!("/api/v1/containers{}", q.to_query()))
            .await
    }

    pub async fn container(&self, id: &str) -> Result<Container> {
        self.get(&format!("/api/v1/containers/{}", s(id))).await
    }

    pub async fn create_container(&self, req: &CreateContainerRequest) -> Result<Container> {
        self.send_json(Method::POST, "/api/v1/containers", req)
            .await
    }

    pub async fn update_container(
        &self,
        id: &str,
        req: &UpdateContainerRequest,
    ) -> Result<Container> {
        self.send_json(Method::PATCH, &format!("/api/v1/containers/{}", s(id)), req)
            .await
    }

    pub async fn delete_container(&self, id: &str, force: bool) -> Result<Container> {
        self.bare(
            Method::DELETE,
            &format!("/api/v1/containers/{}?force={force}", s(id)),
        )
        .await
    }

    /// `start`, `stop`, `restart`, `kill`, `pause`, `unpause`.
    pub async fn container_action(
        &self,
        id: &str,
        action: &str,
        timeout: Option<u64>,
    ) -> Result<ActionResponse> {
        let body = ActionRequest { timeout };
        self.send_json(
            Method::POST,
            &format!("/api/v1/containers/{}/{}", s(id), s(action)),
            &body,
        )
        .await
    }

    pub async fn put_container_resources(
        &self,
        id: &str,
        req: &UpdateContainerRequest,
    ) -> Result<Container> {
        self.send_json(
            Method::PUT,
            &format!("/api/v1/containers/{}/resources", s(id)),
            req,
        )
        .await
    }

    /// An interactive command in a container over a WebSocket: frames sent
    /// are its stdin, binary frames back its output; the close reason is
    /// `exit <code>`.
    pub async fn container_exec_socket(
        &self,
        id: &str,
        command: &[String],
        tty: bool,
    ) -> Result<super::Socket> {
        let mut q: Vec<String> = command
            .iter()
            .map(|c| format!("command={}", s(c)))
            .collect();
        q.push(format!("tty={tty}"));
        self.websocket(&format!(
            "/api/v1/containers/{}/exec?{}",
            s(id),
            q.join("&")
        ))
        .await
    }

    pub async fn container_exec(&self, id: &str, req: &ExecRequest) -> Result<ExecResult> {
        self.send_json(
            Method::POST,
            &format!("/api/v1/containers/{}/exec", s(id)),
            req,
        )
        .await
    }

    pub async fn adopt_container(&self, id: &str) -> Result<Container> {
        self.bare(Method::POST, &format!("/api/v1/containers/{}/adopt", s(id)))
            .await
    }

    /// The container's logs (`tail`: a count or `all`).
    pub async fn container_logs(&self, id: &str, tail: Option<&str>) -> Result<String> {
        let mut path = format!("/api/v1/containers/{}/logs", s(id));
        if let Some(t) = tail {
            path.push_str(&format!("?tail={}", s(t)));
        }
        let (_, bytes) = self.call(Method::GET, &path, None, &[]).await?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    pub async fn container_stats(&self, id: &str) -> Result<Performance> {
        self.get(&format!("/api/v1/containers/{}/stats", s(id)))
            .await
    }

    pub async fn instances(&self, q: &ListQuery) -> Result<InstanceList> {
        self.get(&format!("/api/v1/instances{}", q.to_query()))
            .await
    }

    /// `POST /instances`: `{"backend": "vm" | "container", …}` with the
    /// fields of a VM or container create; answers the bare `Vm` or
    /// `Container`.
    pub async fn create_instance(&self, req: &Value) -> Result<Value> {
        self.send_json(Method::POST, "/api/v1/instances", req).await
    }

    /// An action on a VM or a container by id or name.
    pub async fn instance_action(
        &self,
        id: &str,
        action: &str,
        timeout: Option<u64>,
    ) -> Result<ActionResponse> {
        let body = ActionRequest { timeout };
        self.send_json(
            Method::POST,
            &format!("/api/v1/instances/{}/{}", s(id), s(action)),
            &body,
        )
        .await
    }

    // --- Images, networks, container volumes -----------------------------

    pub async fn images(&self) -> Result<ImageList> {
        self.get("/api/v1/images").await
    }

    /// The engine's own inspect document.
    pub async fn image(&self, id: &str) -> Result<Value> {
        self.get(&format!("/api/v1/images/{}", s(id))).await
    }

    pub async fn pull_image(&self, image: &str) -> Result<Image> {
        let body = ImageRef {
            image: image.into(),
        };
        self.send_json(Method::POST, "/api/v1/images/pull", &body)
            .await
    }

    pub async fn pull_image_async(&self, image: &str) -> Result<Accepted> {
        let body = ImageRef {
            image: image.into(),
        };
        self.submit(Method::POST, "/api/v1/images/pull", Some(&body))
            .await
    }

    pub async fn tag_image(&self, id: &str, new: &str) -> Result<Image> {
        let body = ImageRef { image: new.into() };
        self.send_json(
            Method::POST,
            &format!("/api/v1/images/{}/tag", s(id)),
            &body,
        )
        .await
    }

    pub async fn push_image(&self, id: &str) -> Result<Image> {
        self.bare(Method::POST, &format!("/api/v1/images/{}/push", s(id)))
            .await
    }

    pub async fn remove_image(&self, id: &str, force: bool) -> Result<()> {
        self.bare(
            Method::DELETE,
            &format!("/api/v1/images/{}?force={force}", s(id)),
        )
        .await
    }

    /// Imports a root filesystem tarball as `image`.
    pub async fn import_image(&self, image: &str, tarball: Vec<u8>) -> Result<Image> {
        let path = format!("/api/v1/images/import?image={}", s(image));
        let (_, bytes) = self
            .call(
                Method::POST,
                &path,
                Some(tarball),
                &[("content-type", "application/x-tar")],
            )
            .await?;
        super::decode(&bytes)
    }

    /// Loads a `docker save` tarball: every image after loading.
    pub async fn load_images(&self, tarball: Vec<u8>) -> Result<ImageList> {
        let (_, bytes) = self
            .call(
                Method::POST,
                "/api/v1/images/load",
                Some(tarball),
                &[("content-type", "application/x-tar")],
            )
            .await?;
        super::decode(&bytes)
    }

    /// Builds `tag` from a context tarball (`dockerfile`: its path in the
    /// context, default `Dockerfile`).
    pub async fn build_image(
        &self,
        tag: &str,
        dockerfile: Option<&str>,
        context: Vec<u8>,
    ) -> Result<Image> {
        let mut path = format!("/api/v1/images/build?tag={}", s(tag));
        if let Some(f) = dockerfile {
            path.push_str(&format!("&dockerfile={}", s(f)));
        }
        let (_, bytes) = self
            .call(
                Method::POST,
                &path,
                Some(context),
                &[("content-type", "application/x-tar")],
            )
            .await?;
        super::decode(&bytes)
    }

    pub async fn networks(&self) -> Result<NetworkList> {
        self.get("/api/v1/networks").await
    }

    pub async fn network(&self, id: &str) -> Result<Network> {
        self.get(&format!("/api/v1/networks/{}", s(id))).await
    }

    pub async fn create_network(&self, req: &CreateNetworkRequest) -> Result<Network> {
        self.send_json(Method::POST, "/api/v1/networks", req).await
    }

    pub async fn delete_network(&self, id: &str) -> Result<()> {
        self.bare(Method::DELETE, &format!("/api/v1/networks/{}", s(id)))
            .await
    }

    /// `connect` or `disconnect` a container.
    pub async fn network_op(&self, id: &str, op: &str, container: &str) -> Result<Network> {
        let body = NetworkConnect {
            container: container.into(),
        };
        self.send_json(
            Method::POST,
            &format!("/api/v1/networks/{}/{}", s(id), s(op)),
            &body,
        )
        .await
    }

    pub async fn volumes(&self) -> Result<VolumeList> {
        self.get("/api/v1/volumes").await
    }

    pub async fn volume(&self, name: &str) -> Result<Volume> {
        self.get(&format!("/api/v1/volumes/{}", s(name))).await
    }

    pub async fn create_volume(&self, req: &CreateVolumeRequest) -> Result<Volume> {
        self.send_json(Method::POST, "/api/v1/volumes", req).await
    }

    pub async fn delete_volume(&self, name: &str, force: bool) -> Result<()> {
        self.bare(
            Method::DELETE,
            &format!("/api/v1/volumes/{}?force={force}", s(name)),
        )
        .await
    }

    // --- Storage pools and their volumes ---------------------------------

    pub async fn pools(&self) -> Result<StoragePoolList> {
        self.get("/api/v1/storage-pools").await
    }

    pub async fn pool(&self, name: &str) -> Result<StoragePool> {
        self.get(&format!("/api/v1/storage-pools/{}", s(name)))
            .await
    }

    pub async fn create_pool(&self, req: &CreatePoolRequest) -> Result<StoragePool> {
        self.send_json(Method::POST, "/api/v1/storage-pools", req)
            .await
    }

    pub async fn delete_pool(&self, name: &str) -> Result<StoragePool> {
        self.bare(
            Method::DELETE,
            &format!("/api/v1/storage-pools/{}", s(name)),
        )
        .await
    }

    /// `activate` or `deactivate`.
    pub async fn pool_action(&self, name: &str, action: &str) -> Result<StoragePool> {
        self.bare(
            Method::POST,
            &format!("/api/v1/storage-pools/{}/{}", s(name), s(action)),
        )
        .await
    }

    pub async fn pool_volumes(&self, pool: &str) -> Result<StorageVolumeList> {
        self.get(&format!("/api/v1/storage-pools/{}/volumes", s(pool)))
            .await
    }

    pub async fn pool_volume(&self, pool: &str, name: &str) -> Result<StorageVolume> {
        self.get(&format!(
            "/api/v1/storage-pools/{}/volumes/{}",
            s(pool),
            s(name)
        ))
        .await
    }

    pub async fn create_pool_volume(
        &self,
        pool: &str,
        req: &CreateStorageVolumeRequest,
    ) -> Result<StorageVolume> {
        self.send_json(
            Method::POST,
            &format!("/api/v1/storage-pools/{}/volumes", s(pool)),
            req,
        )
        .await
    }

    pub async fn create_pool_volume_async(
        &self,
        pool: &str,
        req: &CreateStorageVolumeRequest,
    ) -> Result<Accepted> {
        self.submit(
            Method::POST,
            &format!("/api/v1/storage-pools/{}/volumes", s(pool)),
            Some(req),
        )
        .await
    }

    pub async fn delete_pool_volume(&self, pool: &str, name: &str) -> Result<StorageVolume> {
        self.bare(
            Method::DELETE,
            &format!("/api/v1/storage-pools/{}/volumes/{}", s(pool), s(name)),
        )
        .await
    }

    /// A volume's content as a stream (the response's body).
    pub async fn download_pool_volume(
        &self,
        pool: &str,
        name: &str,
    ) -> Result<hyper::Response<hyper::body::Incoming>> {
        let path = format!(
            "/api/v1/storage-pools/{}/volumes/{}/content",
            s(pool),
            s(name)
        );
        let resp = self.send(Method::GET, &path, None, &[]).await?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let bytes = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .map_err(|e| super::ClientError::Transport(e.to_string()))?
            .to_bytes();
        Err(super::ClientError::from_answer(status, &bytes))
    }

    /// Writes a volume's content from a file, streamed (made, or replaced
    /// whole).
    pub async fn upload_pool_volume_file(
        &self,
        pool: &str,
        name: &str,
        file: tokio::fs::File,
    ) -> Result<StorageVolume> {
        let path = format!(
            "/api/v1/storage-pools/{}/volumes/{}/content",
            s(pool),
            s(name)
        );
        let resp = self
            .send_file(
                Method::PUT,
                &path,
                file,
                &[("content-type", "application/octet-stream")],
            )
            .await?;
        let (_, bytes) = Client::read(resp).await?;
        super::decode(&bytes)
    }

    /// Writes a volume's content (made, or replaced whole).
    pub async fn upload_pool_volume(
        &self,
        pool: &str,
        name: &str,
        content: Vec<u8>,
    ) -> Result<StorageVolume> {
        let path = format!(
            "/api/v1/storage-pools/{}/volumes/{}/content",
            s(pool),
            s(name)
        );
        let (_, bytes) = self
            .call(
                Method::PUT,
                &path,
                Some(content),
                &[("content-type", "application/octet-stream")],
            )
            .await?;
        super::decode(&bytes)
    }

    pub async fn storage_server(&self, host: &str) -> Result<StorageServer> {
        self.get(&format!("/api/v1/storage-servers/{}", s(host)))
            .await
    }

    pub async fn storage_servers(&self) -> Result<StorageServerList> {
        self.get("/api/v1/storage-servers").await
    }

    pub async fn storage_targets(&self, host: &str) -> Result<IscsiTargetList> {
        self.get(&format!("/api/v1/storage-servers/{}/targets", s(host)))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_queries_are_encoded() {
        assert_eq!(ListQuery::default().to_query(), "");
        let q = ListQuery {
            limit: Some(10),
            page_token: Some("a+b/c=".into()),
            sort: Some("-name".into()),
            ..Default::default()
        }
        .filter("tag", "x y");
        assert_eq!(
            q.to_query(),
            "?limit=10&page_token=a%2Bb%2Fc%3D&sort=-name&tag=x%20y"
        );
    }
}
