//! Which Burn backend runs the model, chosen at run time among those compiled in by cargo features.

use burn::prelude::*;

use crate::Error;

/// A compute backend. `Flex` (pure-Rust CPU) is always the default; the others need their feature.
/// Configs and flags spell it in lowercase (`device = "flex"`, `--device wgpu`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    #[default]
    Flex,
    Ndarray,
    Wgpu,
}

impl Backend {
    pub const ALL: [Backend; 3] = [Self::Flex, Self::Ndarray, Self::Wgpu];

    pub fn parse(name: &str) -> Result<Self, Error> {
        Self::ALL
            .into_iter()
            .find(|b| b.name() == name)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|b| b.name()).collect();
                Error::Config(format!(
                    "unknown device {name:?}; expected one of {}",
                    names.join(", ")
                ))
            })
    }

    /// The spelling of configs and flags; serde uses the same lowercase names.
    pub fn name(self) -> &'static str {
        match self {
            Self::Flex => "flex",
            Self::Ndarray => "ndarray",
            Self::Wgpu => "wgpu",
        }
    }

    /// The plain (inference) device; call `.autodiff()` on it to train.
    pub fn device(self) -> Result<Device, Error> {
        let missing = |feature: &str| {
            Err(Error::Config(format!(
                "device {feature:?} is not compiled in; rebuild with `--features {feature}`"
            )))
        };
        match self {
            #[cfg(feature = "flex")]
            Self::Flex => Ok(Device::flex()),
            #[cfg(feature = "ndarray")]
            #[allow(deprecated)] // kept for comparison while Burn still ships it
            Self::Ndarray => Ok(Device::ndarray()),
            #[cfg(feature = "wgpu")]
            Self::Wgpu => Ok(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice)),
            #[allow(unreachable_patterns)]
            Self::Flex => missing("flex"),
            #[allow(unreachable_patterns)]
            Self::Ndarray => missing("ndarray"),
            #[allow(unreachable_patterns)]
            Self::Wgpu => missing("wgpu"),
        }
    }
}

impl std::str::FromStr for Backend {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Self::parse(s)
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
