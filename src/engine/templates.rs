//! Templates: reusable VM defaults (seed 000). A `POST /vms` naming a
//! template takes its values; the request's own fields override them.

use uuid::Uuid;

use super::{vm, Agent, EngineError, Result};
use crate::model::{Template, TemplateRequest};

impl Agent {
    pub fn templates(&self) -> Result<Vec<Template>> {
        Ok(self.inner.store.load_templates()?)
    }

    /// A template by id or name.
    pub fn find_template(&self, key: &str) -> Result<Template> {
        let by_id = Uuid::parse_str(key).ok();
        if by_id.is_none() && !vm::is_dns_label(key) {
            return Err(EngineError::Invalid(
                "Invalid UUID format: expected a template id or name.".into(),
            ));
        }
        self.templates()?
            .into_iter()
            .find(|t| Some(t.id) == by_id || t.name == key)
            .ok_or_else(|| EngineError::NotFound(format!("Template not found: {key}.")))
    }

    fn check_template(&self, t: &Template) -> Result<()> {
        vm::validate_name(&t.name)?;
        let cfg = &self.inner.cfg;
        let invalid = |m: String| Err(EngineError::Invalid(format!("Invalid parameter: {m}")));
        if t.vcpus.is_some_and(|v| v == 0 || v > cfg.max_vcpus) {
            return invalid(format!("vcpus must be between 1 and {}.", cfg.max_vcpus));
        }
        if t.memory
            .is_some_and(|m| !(16..=cfg.max_memory_mib).contains(&m))
        {
            return invalid(format!(
                "memory must be between 16 and {} MiB.",
                cfg.max_memory_mib
            ));
        }
        if t.disk_size.is_some_and(|d| d == 0 || d > cfg.max_disk_gib) {
            return invalid(format!(
                "disk_size must be between 1 and {} GiB.",
                cfg.max_disk_gib
            ));
        }
        if let Some(p) = &t.cpu_pinning {
            super::resources::check_pinning(p)?;
        }
        if let Some(l) = &t.io_limits {
            vm::validate_io_limits(l)?;
        }
        vm::validate_tags(&t.tags)?;
        if t.user_data
            .as_ref()
            .is_some_and(|u| u.len() > vm::MAX_USER_DATA)
        {
            return invalid(format!(
                "user_data must be at most {} bytes.",
                vm::MAX_USER_DATA
            ));
        }
        if let Some(base) = &t.base_image {
            crate::host::pool::resolve(&cfg.pools(), base, "base image")
                .map_err(super::pool_err)?;
        }
        Ok(())
    }

    pub fn create_template(&self, req: TemplateRequest) -> Result<Template> {
        let name = req
            .name
            .clone()
            .ok_or_else(|| EngineError::Invalid("Invalid parameter: name is required.".into()))?;
        let now = crate::clock::now();
        let t = Template {
            id: Uuid::new_v4(),
            name,
            base_image: req.base_image,
            vcpus: req.vcpus,
            memory: req.memory,
            disk_size: req.disk_size,
            clone: req.clone,
            cpu_pinning: req.cpu_pinning,
            io_limits: req.io_limits,
            boot: req.boot,
            network: req.network,
            tags: req.tags.unwrap_or_default(),
            user_data: req.user_data,
            created_at: now.clone(),
            updated_at: now,
        };
        self.check_template(&t)?;
        self.inner
            .store
            .insert_template(t.id, &t.name, &t.created_at, &t)?;
        self.inner.events.emit(
            "template.created",
            format!("/api/v1/templates/{}", t.id),
            t.id,
            Some(t.name.clone()),
            None,
        );
        Ok(t)
    }

    pub fn update_template(&self, key: &str, req: TemplateRequest) -> Result<Template> {
        let mut t = self.find_template(key)?;
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = req.$f { t.$f = Some(v); } )* };
        }
        set!(
            base_image,
            vcpus,
            memory,
            disk_size,
            clone,
            cpu_pinning,
            io_limits,
            boot,
            network,
            user_data
        );
        if let Some(name) = req.name {
            t.name = name;
        }
        if let Some(tags) = req.tags {
            t.tags = tags;
        }
        t.updated_at = crate::clock::now();
        self.check_template(&t)?;
        self.inner.store.update_template(t.id, &t.name, &t)?;
        self.inner.events.emit(
            "template.updated",
            format!("/api/v1/templates/{}", t.id),
            t.id,
            Some(t.name.clone()),
            None,
        );
        Ok(t)
    }

    pub fn delete_template(&self, key: &str) -> Result<Template> {
        let t = self.find_template(key)?;
        if !self.inner.store.delete_template(t.id)? {
            return Err(EngineError::NotFound(format!("Template not found: {key}.")));
        }
        self.inner.events.emit(
            "template.deleted",
            format!("/api/v1/templates/{}", t.id),
            t.id,
            Some(t.name.clone()),
            None,
        );
        Ok(t)
    }
}
