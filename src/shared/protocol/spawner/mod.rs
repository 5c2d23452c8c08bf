//! The spawner's wire contract (spec era B): sessions and their replies here; the requests with
//! their validation in `requests`; an exec's outcome and the SSE event data in `exec_result`.
//! camelCase JSON, field order as the original.
mod exec_result;
mod requests;
#[cfg(test)]
mod tests;

pub use exec_result::*;
pub use requests::*;
use serde::{Deserialize, Serialize};

/// Most env entries in a create or exec request.
pub const MAX_REQUEST_ENV_ENTRIES: usize = 128;
/// Longest env value, in UTF-16 code units (the original counts JavaScript string length).
pub const MAX_REQUEST_ENV_VALUE_UNITS: usize = 32_768;

/// `^[A-Za-z0-9_-]{1,128}$`.
pub fn is_valid_org_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Resource profile of a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    #[default]
    Default,
    Agent,
}

impl Profile {
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Default => "default",
            Profile::Agent => "agent",
        }
    }
    pub fn from_label(label: &str) -> Profile {
        if label == "agent" {
            Profile::Agent
        } else {
            Profile::Default
        }
    }
}

/// Session state as reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionState {
    Creating,
    Ready,
    Degraded,
    Terminating,
    Terminated,
    Expired,
}

impl SessionState {
    /// The wire name (also the metrics label).
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Creating => "creating",
            SessionState::Ready => "ready",
            SessionState::Degraded => "degraded",
            SessionState::Terminating => "terminating",
            SessionState::Terminated => "terminated",
            SessionState::Expired => "expired",
        }
    }
}

/// A session as the API reports it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionInfo {
    pub session_id: String,
    pub organization_id: String,
    pub profile: Profile,
    pub state: SessionState,
    pub backend: String,
    pub created_at_ms: u64,
    pub last_activity_at_ms: u64,
    pub expires_at_ms: u64,
    pub idle_timeout_ms: u64,
    pub pinned: bool,
    /// Whether the session's compute can be reached (an addition to the original contract):
    /// absent when it can, `false` when its node is lost, `null` when that cannot be told.
    #[serde(default, skip_serializing_if = "Reachability::is_reachable")]
    pub reachable: Reachability,
}

/// Whether a session's compute is within reach, as the backend can tell without probing it.
/// On the wire (field `reachable`): omitted, `false`, or `null` (unknown).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Reachability {
    #[default]
    Reachable,
    /// Its compute is on a node that stopped reporting (or left the cluster).
    Unreachable,
    /// Its compute does not answer and the backend cannot tell why (no right to read its node).
    Unknown,
}

impl Reachability {
    pub fn is_reachable(&self) -> bool {
        *self == Reachability::Reachable
    }
}

impl Serialize for Reachability {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Reachability::Reachable => serializer.serialize_bool(true),
            Reachability::Unreachable => serializer.serialize_bool(false),
            Reachability::Unknown => serializer.serialize_none(),
        }
    }
}

impl<'de> Deserialize<'de> for Reachability {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(match Option::<bool>::deserialize(deserializer)? {
            Some(true) => Reachability::Reachable,
            Some(false) => Reachability::Unreachable,
            None => Reachability::Unknown,
        })
    }
}

#[derive(Serialize, Deserialize, Debug)]
pub struct SessionReply {
    pub session: SessionInfo,
}

#[derive(Serialize, Deserialize, Debug)]
pub struct SessionListReply {
    pub sessions: Vec<SessionInfo>,
}

/// `DELETE /v1/sessions/:id` reply.
#[derive(Serialize, Deserialize, Debug, PartialEq, Eq)]
pub struct DestroyReply {
    pub destroyed: bool,
    pub busy: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `PATCH …/pin`.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct PinRequest {
    pub pinned: bool,
}

/// The spawner's default limits, for the request-parsing tests of the protocol modules.
#[cfg(test)]
pub(crate) const TEST_LIMITS: RequestLimits = RequestLimits {
    max_lifetime_ms: 86_400_000,
    max_idle_ms: 1_800_000,
    exec_default_timeout_ms: 600_000,
    exec_max_timeout_ms: 7_200_000,
};
