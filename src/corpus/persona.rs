//! User personas that talk with the persona being taught.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PersonaKind {
    /// An ordinary person.
    Ordinary,
    /// A historical figure.
    Historical,
    /// An ordinary person who carries a historical figure's thought (`inherits`).
    Inheritor,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Persona {
    pub id: String,
    pub kind: PersonaKind,
    pub name: String,
    pub description: String,
    /// For inheritors: the id of the historical persona whose thought they carry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inherits: Option<String>,
}
