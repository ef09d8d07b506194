//! Which Burn backend and device run the model, chosen at run time among those compiled in by
//! cargo features.

use burn::prelude::*;

use crate::Error;

/// A compute device. `Flex` (pure-Rust CPU) is always the default; the others need their feature.
/// Configs and flags spell it `flex`, `ndarray`, `wgpu`, `wgpu:N` (the N-th discrete GPU wgpu
/// finds), `cuda` or `cuda:N` (`device = "cuda:1"`, `--device wgpu`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Backend {
    #[default]
    Flex,
    Ndarray,
    /// `None`: the adapter wgpu prefers (a high-power GPU; lavapipe on a machine without one).
    Wgpu(Option<usize>),
    Cuda(usize),
}

/// The kinds a flag may name, for error messages.
const KINDS: &str = "flex, ndarray, wgpu, wgpu:N, cuda, cuda:N";

impl Backend {
    pub fn parse(spec: &str) -> Result<Self, Error> {
        let bad = || Error::Config(format!("unknown device {spec:?}; expected one of {KINDS}"));
        let (kind, index) = match spec.split_once(':') {
            Some((k, i)) => (k, Some(i.parse::<usize>().map_err(|_| bad())?)),
            None => (spec, None),
        };
        match (kind, index) {
            ("flex", None) => Ok(Self::Flex),
            ("ndarray", None) => Ok(Self::Ndarray),
            ("wgpu", i) => Ok(Self::Wgpu(i)),
            ("cuda", i) => Ok(Self::Cuda(i.unwrap_or(0))),
            _ => Err(bad()),
        }
    }

    /// The backend's name, without the device index.
    pub fn kind(self) -> &'static str {
        match self {
            Self::Flex => "flex",
            Self::Ndarray => "ndarray",
            Self::Wgpu(_) => "wgpu",
            Self::Cuda(_) => "cuda",
        }
    }

    /// Whether Burn can all-reduce across devices of this kind (for data-parallel training): in
    /// Burn 0.22 only the CUDA backend does, through NCCL; flex and ndarray have no collectives
    /// and wgpu answers "no device transport".
    pub fn all_reduces(self) -> bool {
        matches!(self, Self::Cuda(_))
    }

    /// Whether the model's tensors live in this machine's RAM (a CPU backend), so that a step's
    /// memory estimate is checked against the RAM available; a GPU has its own.
    pub fn uses_host_memory(self) -> bool {
        matches!(self, Self::Flex | Self::Ndarray)
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
            Self::Wgpu(i) => Ok(Device::wgpu(match i {
                None => burn::tensor::DeviceKind::DefaultDevice,
                Some(i) => burn::tensor::DeviceKind::DiscreteGpu(i),
            })),
            #[cfg(feature = "cuda")]
            Self::Cuda(i) => Ok(Device::cuda(i)),
            #[allow(unreachable_patterns)]
            Self::Flex => missing("flex"),
            #[allow(unreachable_patterns)]
            Self::Ndarray => missing("ndarray"),
            #[allow(unreachable_patterns)]
            Self::Wgpu(_) => missing("wgpu"),
            #[allow(unreachable_patterns)]
            Self::Cuda(_) => missing("cuda"),
        }
    }
}

/// Where fresh weights are drawn for `device`: the CPU backend when it is built (each backend has
/// its own random generator, so drawing there and moving gives the same weights on every device),
/// with `device`'s autodiff setting; else `device` itself.
pub fn init_device(device: &Device) -> Device {
    #[cfg(feature = "flex")]
    {
        let cpu = Device::flex();
        if device.is_autodiff() {
            cpu.autodiff()
        } else {
            cpu
        }
    }
    #[cfg(not(feature = "flex"))]
    {
        device.clone()
    }
}

/// `m`, drawn on the init device, moved to `device`. Parameters are drawn lazily, on first use:
/// draw them before the move (`fork` makes each a fresh leaf on `device`, where `to_device` would
/// record the copy in the autodiff graph).
pub(crate) fn drawn_for<M: burn::module::Module>(m: M, device: &Device) -> M {
    m.visit(&mut crate::recompute::Materialize);
    m.fork(device)
}

/// Seeds `device`'s generator and the one fresh weights are drawn from ([`init_device`]).
pub fn seed(device: &Device, seed: u64) {
    init_device(device).seed(seed);
    device.seed(seed);
}

impl std::str::FromStr for Backend {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Self::parse(s)
    }
}

impl TryFrom<String> for Backend {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        Self::parse(&s)
    }
}

impl From<Backend> for String {
    fn from(b: Backend) -> String {
        b.to_string()
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Wgpu(Some(i)) | Self::Cuda(i) => write!(f, "{}:{i}", self.kind()),
            _ => f.write_str(self.kind()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_specs_parse_and_print_back() {
        for (spec, want, printed) in [
            ("flex", Backend::Flex, "flex"),
            ("wgpu", Backend::Wgpu(None), "wgpu"),
            ("wgpu:1", Backend::Wgpu(Some(1)), "wgpu:1"),
            ("cuda", Backend::Cuda(0), "cuda:0"),
            ("cuda:3", Backend::Cuda(3), "cuda:3"),
        ] {
            let b = Backend::parse(spec).unwrap();
            assert_eq!(b, want, "{spec}");
            assert_eq!(b.to_string(), printed);
            assert_eq!(Backend::parse(printed).unwrap(), b);
        }
        for bad in ["gpu", "cuda:x", "flex:0", "wgpu:-1", ""] {
            let e = Backend::parse(bad).unwrap_err().to_string();
            assert!(e.contains("cuda:N"), "{bad}: {e}");
        }
        #[derive(serde::Deserialize)]
        struct T {
            device: Backend,
        }
        let t: T = toml::from_str("device = \"cuda:1\"").unwrap();
        assert_eq!(t.device, Backend::Cuda(1));
        assert!(toml::from_str::<T>("device = \"tpu\"").is_err());
    }

    /// A device whose feature is not built says which feature to build.
    #[cfg(not(feature = "cuda"))]
    #[test]
    fn a_missing_backend_names_its_feature() {
        let e = Backend::Cuda(0).device().unwrap_err().to_string();
        assert!(e.contains("--features cuda"), "{e}");
    }
}
