//! A reference to one resource of the API. The engine names what a job or
//! an event is about with it; on the wire it is the resource's path.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

/// The resource a job, task or event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    Vm(Uuid),
    Container(Uuid),
    Template(Uuid),
    Job(Uuid),
    /// The event stream itself (`/api/v1/events`, id nil): what an
    /// `events.lost` message is about.
    Events,
}

impl Target {
    /// The resource's id.
    pub fn id(&self) -> Uuid {
        match *self {
            Target::Vm(id) | Target::Container(id) | Target::Template(id) | Target::Job(id) => id,
            Target::Events => Uuid::nil(),
        }
    }

    fn collection(&self) -> &'static str {
        match self {
            Target::Vm(_) => "vms",
            Target::Container(_) => "containers",
            Target::Template(_) => "templates",
            Target::Job(_) => "jobs",
            Target::Events => "events",
        }
    }
}

/// The resource's path: `/api/v1/vms/{id}`.
impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Events => f.write_str("/api/v1/events"),
            _ => write!(f, "/api/v1/{}/{}", self.collection(), self.id()),
        }
    }
}

impl FromStr for Target {
    type Err = String;
    fn from_str(s: &str) -> Result<Target, String> {
        let bad = || format!("not a resource path: {s:?}");
        let rest = s.strip_prefix("/api/v1/").ok_or_else(bad)?;
        if rest == "events" {
            return Ok(Target::Events);
        }
        let (coll, id) = rest.split_once('/').ok_or_else(bad)?;
        let id = Uuid::parse_str(id).map_err(|_| bad())?;
        Ok(match coll {
            "vms" => Target::Vm(id),
            "containers" => Target::Container(id),
            "templates" => Target::Template(id),
            "jobs" => Target::Job(id),
            _ => return Err(bad()),
        })
    }
}

impl Serialize for Target {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Target {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Target, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_is_its_path_on_the_wire() {
        let id = Uuid::new_v4();
        for t in [
            Target::Vm(id),
            Target::Container(id),
            Target::Template(id),
            Target::Job(id),
        ] {
            let json = serde_json::to_string(&t).unwrap();
            assert!(json.contains(&id.to_string()));
            assert_eq!(serde_json::from_str::<Target>(&json).unwrap(), t);
        }
        assert_eq!(Target::Vm(id).to_string(), format!("/api/v1/vms/{id}"));
        assert!("/api/v1/things/x".parse::<Target>().is_err());
        assert_eq!(Target::Events.to_string(), "/api/v1/events");
        assert_eq!("/api/v1/events".parse::<Target>(), Ok(Target::Events));
    }
}
