//! Templates: reusable VM defaults. A VM create naming a
//! template takes its values; the request's own fields override them.

use uuid::Uuid;

use super::record as vm;
use super::registry::VmEngine;
use crate::engine::error::{EngineError, Result};
use crate::model::{Target, Template, TemplateRequest};

impl VmEngine {
    pub fn templates(&self) -> Result<Vec<Template>> {
        Ok(self.inner.core.store.load_templates()?)
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
        let cfg = &self.inner.core.cfg;
        let invalid = |m: String| Err(EngineError::Invalid(format!("Invalid parameter: {m}")));
        vm::Bounds::of(cfg).check(t.spec.vcpus, t.spec.memory, t.spec.disk_size)?;
        if let Some(p) = &t.spec.cpu_pinning {
            super::resources::check_pinning(p)?;
        }
        if let Some(l) = &t.spec.io_limits {
            vm::validate_io_limits(l)?;
        }
        vm::validate_tags(t.spec.tags.as_deref().unwrap_or_default())?;
        if t.spec
            .user_data
            .as_ref()
            .is_some_and(|u| u.len() > vm::MAX_USER_DATA)
        {
            return invalid(format!(
                "user_data must be at most {} bytes.",
                vm::MAX_USER_DATA
            ));
        }
        if let Some(c) = &t.spec.cloud_init {
            vm::validate_cloud_init(c)?;
        }
        // Files must be paths inside the pools; whether they exist is
        // checked when a VM is made from the template (they may come later).
        let pools = self.core().pools.active_dirs();
        let in_pools = |given: &str, what: &'static str| {
            if given.chars().count() > 4096 {
                return Err(EngineError::Invalid(format!(
                    "Invalid parameter: {what} must be at most 4096 characters."
                )));
            }
            match crate::host::pool::resolve(&pools, given, what) {
                Ok(_) | Err(crate::host::pool::PoolError::NotFound { .. }) => Ok(()),
                Err(e) => Err(super::registry::pool_err(e)),
            }
        };
        if let Some(base) = &t.spec.base_image {
            in_pools(base, "base image")?;
        }
        if let Some(boot) = &t.spec.boot {
            in_pools(&boot.kernel, "kernel")?;
            if let Some(initrd) = &boot.initrd {
                in_pools(initrd, "initrd")?;
            }
            if boot
                .cmdline
                .as_ref()
                .is_some_and(|c| c.chars().count() > 4096 || c.contains('\0'))
            {
                return invalid(
                    "boot.cmdline must be at most 4096 characters, without NUL.".into(),
                );
            }
        }
        Ok(())
    }

    pub fn create_template(&self, req: TemplateRequest) -> Result<Template> {
        let name = req
            .name
            .clone()
            .ok_or_else(|| EngineError::Invalid("Invalid parameter: name is required.".into()))?;
        let now = crate::clock::now();
        let mut spec = req.spec;
        spec.tags.get_or_insert_with(Vec::new);
        let t = Template {
            id: Uuid::new_v4(),
            name,
            spec,
            created_at: now.clone(),
            updated_at: now,
        };
        self.check_template(&t)?;
        self.inner
            .core
            .store
            .insert_template(t.id, &t.name, &t.created_at, &t)?;
        self.inner.core.events.emit(
            "template.created",
            Target::Template(t.id),
            Some(t.name.clone()),
            None,
        );
        Ok(t)
    }

    pub fn update_template(&self, key: &str, req: TemplateRequest) -> Result<Template> {
        let mut t = self.find_template(key)?;
        t.spec = req.spec.or(&t.spec);
        if let Some(name) = req.name {
            t.name = name;
        }
        t.updated_at = crate::clock::now();
        self.check_template(&t)?;
        self.inner.core.store.update_template(t.id, &t.name, &t)?;
        self.inner.core.events.emit(
            "template.updated",
            Target::Template(t.id),
            Some(t.name.clone()),
            None,
        );
        Ok(t)
    }

    pub fn delete_template(&self, key: &str) -> Result<Template> {
        let t = self.find_template(key)?;
        if !self.inner.core.store.delete_template(t.id)? {
            return Err(EngineError::NotFound(format!("Template not found: {key}.")));
        }
        self.inner.core.events.emit(
            "template.deleted",
            Target::Template(t.id),
            Some(t.name.clone()),
            None,
        );
        Ok(t)
    }
}
