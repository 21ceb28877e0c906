//! Bad input, reported with the object and the field, never fatal.

use std::fmt;

/// Why something was skipped; also the `reason` label of the metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProblemKind {
    /// The object could not be decoded at all.
    Malformed,
    InvalidIp,
    InvalidPort,
    DuplicatePort,
    UnsupportedProtocol,
    FamilyMismatch,
    MissingField,
    /// A value outside what the API allows (e.g. an affinity timeout).
    InvalidValue,
    /// A service port that no EndpointSlice of the service carries although
    /// the slices have endpoints (typically a named targetPort no pod
    /// exposes): the port has no backends.
    UnresolvedPort,
    /// Two services claim the same frontend; the later one loses it.
    FrontendConflict,
    /// More endpoints than one backend set can hold.
    TooManyEndpoints,
    /// A map is full: the service keeps its previous version.
    Capacity,
}

impl ProblemKind {
    pub fn label(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::InvalidIp => "invalid_ip",
            Self::InvalidPort => "invalid_port",
            Self::DuplicatePort => "duplicate_port",
            Self::UnsupportedProtocol => "unsupported_protocol",
            Self::FamilyMismatch => "family_mismatch",
            Self::MissingField => "missing_field",
            Self::InvalidValue => "invalid_value",
            Self::UnresolvedPort => "unresolved_port",
            Self::FrontendConflict => "frontend_conflict",
            Self::TooManyEndpoints => "too_many_endpoints",
            Self::Capacity => "capacity",
        }
    }
}

/// One thing that was skipped, and where.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Problem {
    pub kind: ProblemKind,
    /// "Service default/web" or "EndpointSlice default/web-abc12".
    pub object: String,
    /// "spec.ports[1].port".
    pub field: String,
    pub reason: String,
}

impl Problem {
    pub fn new(
        kind: ProblemKind,
        object: impl Into<String>,
        field: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Self { kind, object: object.into(), field: field.into(), reason: reason.into() }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.object, self.field, self.reason)
    }
}
