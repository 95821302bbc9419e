//! Where a followed tag points, kept beside what serves, so that the
//! admin API can say when the two differ and why: a version the tag names
//! was refused, could not be pulled yet, or an operator swapped or rolled
//! back through the admin API (the follower swaps again only when the tag
//! moves). Without it, such a follower diverges from its tag silently.

use serde::Serialize;

/// What the follower last saw of its tag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Following {
    /// The followed reference, `oci://REGISTRY/REPOSITORY:TAG`.
    pub reference: String,
    /// The manifest digest the tag pointed to at the last look.
    pub manifest: Option<String>,
    /// The digest of the component that manifest holds, once pulled.
    pub component: Option<String>,
    /// Why that component does not serve, when the pull or the swap
    /// refused it.
    pub refused: Option<String>,
}

impl Following {
    /// A tag seen at `manifest`, its component not pulled yet.
    pub fn new(reference: String, manifest: Option<String>) -> Self {
        Following {
            reference,
            manifest,
            component: None,
            refused: None,
        }
    }
}
