//! cloud-init (NoCloud) configuration of a VM.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What the VM's NoCloud `cidata` drive holds. `instance-id` defaults to the
/// VM's id and `local-hostname` to its name; keys given in `meta_data` win.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CloudInit {
    /// The `user-data` file (`#cloud-config ...`, a `#!` script, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    /// Keys of the `meta-data` file (written as YAML whose values are JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub meta_data: Option<BTreeMap<String, serde_json::Value>>,
    /// The `network-config` file: YAML text, or an object written as JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_config: Option<NetworkConfig>,
}

/// A `network-config` document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum NetworkConfig {
    Text(String),
    #[schema(value_type = Object)]
    Object(serde_json::Map<String, serde_json::Value>),
}

impl CloudInit {
    /// This configuration with its gaps filled from `base` (per file).
    pub fn or(self, base: &CloudInit) -> CloudInit {
        CloudInit {
            user_data: self.user_data.or_else(|| base.user_data.clone()),
            meta_data: self.meta_data.or_else(|| base.meta_data.clone()),
            network_config: self.network_config.or_else(|| base.network_config.clone()),
        }
    }

    /// The `meta-data` file: one `key: <JSON value>` line per key (JSON is
    /// YAML, so NoCloud reads it), with the defaults for the keys not given.
    pub fn meta_data_file(&self, instance_id: &str, hostname: &str) -> String {
        let mut keys = self.meta_data.clone().unwrap_or_default();
        keys.entry("instance-id".into())
            .or_insert_with(|| instance_id.into());
        keys.entry("local-hostname".into())
            .or_insert_with(|| hostname.into());
        let mut out = String::new();
        for (k, v) in keys {
            let plain = !k.is_empty()
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            let key = if plain {
                k
            } else {
                serde_json::Value::String(k).to_string()
            };
            out.push_str(&format!("{key}: {v}\n"));
        }
        out
    }

    /// The `network-config` file, when one is given.
    pub fn network_config_file(&self) -> Option<String> {
        self.network_config.as_ref().map(|n| match n {
            NetworkConfig::Text(t) => t.clone(),
            NetworkConfig::Object(o) => format!("{}\n", serde_json::Value::Object(o.clone())),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_data_defaults_yield_to_given_keys() {
        let c = CloudInit {
            meta_data: Some(
                [
                    ("local-hostname".to_string(), serde_json::json!("other")),
                    ("odd key:".to_string(), serde_json::json!({"a": 1})),
                ]
                .into(),
            ),
            ..Default::default()
        };
        let m = c.meta_data_file("i-1", "web-1");
        assert!(m.contains("instance-id: \"i-1\"\n"), "{m}");
        assert!(m.contains("local-hostname: \"other\"\n"), "{m}");
        assert!(m.contains("\"odd key:\": {\"a\":1}\n"), "{m}");
        assert!(!m.contains("web-1"));
    }

    #[test]
    fn network_config_text_or_object() {
        let t: CloudInit = serde_json::from_str(r#"{"network_config": "version: 2\n"}"#).unwrap();
        assert_eq!(t.network_config_file().unwrap(), "version: 2\n");
        let o: CloudInit = serde_json::from_str(r#"{"network_config": {"version": 1}}"#).unwrap();
        assert_eq!(o.network_config_file().unwrap(), "{\"version\":1}\n");
        assert!(serde_json::from_str::<CloudInit>(r#"{"network_config": 3}"#).is_err());
    }
}
