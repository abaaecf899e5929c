//! Roles and what they see of a tenant's jobs: domain facts the store and the
//! authorization rules both rely on.

/// What a caller is allowed to do, from its role claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything in the tenant.
    Admin,
    /// Reads the whole tenant.
    Staff,
    /// Reads only jobs it owns and its own notifications.
    Customer,
    /// Writes jobs in its tenant.
    Worker,
    /// A backend: reads and writes the whole tenant.
    Service,
}

impl Role {
    /// Parses Herald's role names and Supabase's (`service_role` → service,
    /// `authenticated` → customer).
    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "admin" => Role::Admin,
            "staff" => Role::Staff,
            "customer" | "authenticated" => Role::Customer,
            "worker" => Role::Worker,
            "service" | "service_role" => Role::Service,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Staff => "staff",
            Role::Customer => "customer",
            Role::Worker => "worker",
            Role::Service => "service",
        }
    }
}

/// How much of a tenant's jobs a principal sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobVisibility {
    /// Every job of the tenant.
    All,
    /// Only jobs whose owner is this sub.
    OwnedBy(String),
}

impl JobVisibility {
    pub fn of_role(role: Role, sub: &str) -> JobVisibility {
        match role {
            Role::Customer => JobVisibility::OwnedBy(sub.to_string()),
            Role::Admin | Role::Staff | Role::Worker | Role::Service => JobVisibility::All,
        }
    }

    /// The one owner whose jobs are visible, if the visibility is limited to one.
    pub fn owner(&self) -> Option<&str> {
        match self {
            JobVisibility::All => None,
            JobVisibility::OwnedBy(sub) => Some(sub),
        }
    }

    pub fn allows(&self, owner: Option<&str>) -> bool {
        match self {
            JobVisibility::All => true,
            JobVisibility::OwnedBy(sub) => owner == Some(sub.as_str()),
        }
    }
}
