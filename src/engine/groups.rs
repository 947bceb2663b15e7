//! VM groups: named sets of VMs with a description and tags, whose members
//! are started or stopped together as one job (one task per VM, bounded
//! parallelism, one failure never stopping the others), and into which VMs
//! are created. A group holds properties only, never live state: deleting
//! it leaves its VMs alone unless asked to delete them too; a VM deleted on
//! its own leaves its groups.

use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use super::bulk::Bulk;
use super::core::{Core, Requester, Submitted};
use super::error::{EngineError, Result};
use super::vm::lifecycle::{plan, Plan};
use super::vm::record as vm;
use super::vm::{Action, VmEngine};
use crate::model::{
    CreateGroupRequest, CreateVmRequest, Group, GroupMember, Job, Target, UpdateGroupRequest, Vm,
};
use crate::store::{GroupRow, StoreError};

/// At most this many characters of description.
pub const MAX_DESCRIPTION: usize = 1024;

/// The group engine. Cheap to clone.
#[derive(Clone)]
pub struct Groups {
    core: Arc<Core>,
    vms: VmEngine,
    bulk: Bulk,
}

fn to_api(g: GroupRow) -> Group {
    Group {
        name: g.name,
        description: g.description,
        tags: g.tags,
        vms: g.vms,
        created_at: g.created_at,
        updated_at: g.updated_at,
    }
}

fn check_description(d: &str) -> Result<()> {
    if d.chars().count() > MAX_DESCRIPTION {
        return Err(EngineError::Invalid(format!(
            "Invalid parameter: description must be at most {MAX_DESCRIPTION} characters."
        )));
    }
    Ok(())
}

impl Groups {
    pub(crate) fn new(core: Arc<Core>, vms: VmEngine, bulk: Bulk) -> Groups {
        Groups { core, vms, bulk }
    }

    pub fn list(&self) -> Result<Vec<Group>> {
        Ok(self.core.store.groups()?.into_iter().map(to_api).collect())
    }

    fn row(&self, name: &str) -> Result<GroupRow> {
        if !vm::is_dns_label(name) {
            return Err(EngineError::Invalid(format!(
                "Invalid parameter: group name {name:?} must be a DNS label."
            )));
        }
        self.core
            .store
            .group(name)?
            .ok_or_else(|| EngineError::NotFound(format!("Group not found: {name}.")))
    }

    pub fn get(&self, name: &str) -> Result<Group> {
        self.row(name).map(to_api)
    }

    /// VM ids or names resolved to ids, once each; an unknown VM is 404.
    fn resolve(&self, keys: &[String]) -> Result<Vec<Uuid>> {
        if keys.len() > 1000 {
            return Err(EngineError::Invalid(
                "Invalid parameter: a group holds at most 1000 VMs.".into(),
            ));
        }
        let mut out = Vec::new();
        for k in keys {
            let id = self.vms.find(k)?.id;
            if !out.contains(&id) {
                out.push(id);
            }
        }
        Ok(out)
    }

    pub fn create(&self, req: CreateGroupRequest) -> Result<Group> {
        vm::validate_name(&req.name)?;
        let description = req.description.unwrap_or_default();
        check_description(&description)?;
        let tags = req.tags.unwrap_or_default();
        vm::validate_tags(&tags)?;
        let vms = self.resolve(req.vms.as_deref().unwrap_or_default())?;
        let now = crate::clock::now();
        let row = GroupRow {
            name: req.name,
            description,
            tags,
            vms,
            created_at: now.clone(),
            updated_at: now,
        };
        match self.core.store.insert_group(&row) {
            Err(StoreError::NameTaken(n)) => Err(EngineError::Conflict(format!(
                "Group name already in use: {n}."
            ))),
            Err(e) => Err(e.into()),
            Ok(()) => self.get(&row.name),
        }
    }

    /// Replaces the properties the request names (never live state).
    pub fn update(&self, name: &str, req: UpdateGroupRequest) -> Result<Group> {
        let mut row = self.row(name)?;
        if let Some(d) = req.description {
            check_description(&d)?;
            row.description = d;
        }
        if let Some(t) = req.tags {
            vm::validate_tags(&t)?;
            row.tags = t;
        }
        if let Some(v) = req.vms {
            row.vms = self.resolve(&v)?;
        }
        row.updated_at = crate::clock::now();
        if !self.core.store.update_group(&row)? {
            return Err(EngineError::NotFound(format!("Group not found: {name}.")));
        }
        self.get(name)
    }

    /// The members as they are now.
    pub fn members(&self, name: &str) -> Result<Vec<GroupMember>> {
        let row = self.row(name)?;
        Ok(row
            .vms
            .iter()
            .filter_map(|id| self.vms.find(&id.to_string()).ok())
            .map(|e| {
                let r = e.record();
                GroupMember {
                    id: r.id,
                    name: r.name,
                    status: r.status,
                    link: format!("/api/v1/vms/{}", r.id),
                }
            })
            .collect())
    }

    /// Creates a VM through the usual create path, then makes it a member.
    pub async fn create_vm(
        &self,
        name: &str,
        req: CreateVmRequest,
        requester: &Requester,
    ) -> Result<Submitted<Vm>> {
        let group = self.row(name)?.name;
        let store = self.core.store.clone();
        self.vms
            .create_then(req, requester, move |vm, ctx| {
                match store.add_group_member(&group, vm.id) {
                    Ok(true) => ctx.log(format!("joined group {group}")),
                    Ok(false) => ctx.log(format!("group {group} was deleted meanwhile")),
                    Err(e) => ctx.log(format!("could not join group {group}: {e}")),
                }
            })
            .await
    }

    /// Starts or stops every member: one job, one task per VM.
    pub fn power(
        &self,
        name: &str,
        action: Action,
        timeout: Option<u64>,
        requester: &Requester,
    ) -> Result<Submitted<()>> {
        let row = self.row(name)?;
        let members = self.members(name)?;
        if members.is_empty() {
            return Err(EngineError::Conflict(format!(
                "Group {} has no VMs.",
                row.name
            )));
        }
        let kind = format!("group.{}", action.as_str());
        let timeout = Duration::from_secs(timeout.unwrap_or(self.core.cfg.stop_timeout_secs));
        let items = members.into_iter().map(|m| (m.name, m.id)).collect();
        let slot = kind.clone();
        self.bulk
            .run_tasks(&kind, requester, items, move |bulk, id: Uuid, ctx| {
                let slot = slot.clone();
                async move {
                    let vms = bulk.vms();
                    let entry = vms.find(&id.to_string())?;
                    ctx.handle.task_target(ctx.task, Target::Vm(id));
                    let _guard = vms.claim(&entry, ctx.handle.id(), &slot)?;
                    ctx.check()?;
                    match plan(action, entry.status()) {
                        Plan::Refuse(msg) => return Err(EngineError::Conflict(msg)),
                        Plan::Skip(_) => ctx.log(format!("already {}", entry.status().as_str())),
                        Plan::Proceed => {
                            vms.run_action(&entry, action, timeout, &ctx).await?;
                        }
                    }
                    Ok(Some(Target::Vm(id)))
                }
            })
    }

    /// Removes the group; with `delete_vms`, a job deleting its members
    /// (one task each) too.
    pub fn delete(
        &self,
        name: &str,
        delete_vms: bool,
        requester: &Requester,
    ) -> Result<(Group, Option<Job>)> {
        let group = self.get(name)?;
        let members = self.members(name)?;
        let job = if delete_vms && !members.is_empty() {
            let items = members.into_iter().map(|m| (m.name, m.id)).collect();
            let sub = self.bulk.run_tasks(
                "group.delete",
                requester,
                items,
                |bulk, id: Uuid, ctx| async move {
                    let vms = bulk.vms();
                    let entry = vms.find(&id.to_string())?;
                    let _guard = vms.claim(&entry, ctx.handle.id(), "group.delete")?;
                    ctx.check()?;
                    vms.delete_steps(&entry).await?;
                    Ok(Some(Target::Vm(id)))
                },
            )?;
            Some(sub.job)
        } else {
            None
        };
        self.core.store.delete_group(name)?;
        Ok((group, job))
    }
}
