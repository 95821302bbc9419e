//! How a new version is judged before it serves, and why it may not.

use crate::canary::CanarySettings;
use crate::contract::{self, ContractGate};
use crate::runtime::plugin::LoadError;
use crate::shadow::ShadowSettings;
use crate::versions::refused::{self, Refused};
use std::sync::Arc;

/// How a new version is judged before it serves: whether the contract
/// gate runs, the shadow stage and the weighted canary after it, and the
/// record of the versions refused.
#[derive(Clone, Default)]
pub struct Admission {
    /// `--contract-gate`.
    pub gate: ContractGate,
    /// `--shadow*`: off by default in the library.
    pub shadow: ShadowSettings,
    /// `--rollout-*`: no steps by default.
    pub canary: CanarySettings,
    /// The versions refused so far, by digest.
    pub refused: Arc<Refused>,
}

/// Why a version does not serve.
#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    /// It does not compile, fit the world, or instantiate.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// It fits, but the contract gate refused it for what it does.
    #[error("refused at the contract gate: {0}")]
    Contract(#[from] contract::Refusal),
    /// The contract gate refused it before (this run or an earlier one):
    /// it is not run again.
    #[error("refused earlier at the {} (it came from {}): {}", stage_name(&.0.stage), .0.source, .0.reason)]
    RefusedBefore(refused::Refusal),
}

impl SwapError {
    /// Whether it was refused for what it does, not for what it is.
    pub fn is_behaviour(&self) -> bool {
        !matches!(self, SwapError::Load(_))
    }
}

/// How a refusal's stage is said: `gate` is the contract gate.
pub fn stage_name(stage: &str) -> &str {
    match stage {
        "gate" => "contract gate",
        "shadow" => "shadow stage",
        "canary" => "weighted canary",
        "operator" => "operator's abort",
        other => other,
    }
}
