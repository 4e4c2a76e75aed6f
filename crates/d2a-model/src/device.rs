//! Where a model runs: `cpu` (the default and the tested path) or `cuda` / `cuda:N` in a build
//! with the `cuda` feature.

use candle_core::Device;

use crate::{Error, Result};

/// A device named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    /// The CPU.
    #[default]
    Cpu,
    /// GPU number `N` (`cuda` is `cuda:0`).
    Cuda(usize),
}

impl DeviceSpec {
    /// Opens the device: an error (never a panic) when this build has no CUDA support or the
    /// GPU does not open.
    pub fn open(self) -> Result<Device> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(n) => open_cuda(n).map_err(|reason| Error::Device {
                spec: self.to_string(),
                reason,
            }),
        }
    }
}

#[cfg(feature = "cuda")]
fn open_cuda(n: usize) -> std::result::Result<Device, String> {
    // cudarc panics where the driver library is absent; a panic here is a missing driver.
    match std::panic::catch_unwind(|| Device::new_cuda(n)) {
        Ok(Ok(device)) => Ok(device),
        Ok(Err(e)) => Err(format!("the GPU did not open: {e}")),
        Err(_) => Err("the CUDA driver (libcuda.so) could not be loaded".into()),
    }
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(_: usize) -> std::result::Result<Device, String> {
    Err(
        "this d2a was built without the `cuda` feature; rebuild with \
         `cargo build --release -p d2a-cli --features cuda`"
            .into(),
    )
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl std::str::FromStr for DeviceSpec {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || format!("unknown device {s:?}: cpu, cuda or cuda:N");
        match s {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(bad),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_print_back() {
        for (text, spec) in [
            ("cpu", DeviceSpec::Cpu),
            ("cuda", DeviceSpec::Cuda(0)),
            ("cuda:3", DeviceSpec::Cuda(3)),
        ] {
            assert_eq!(text.parse(), Ok(spec));
        }
        assert_eq!(DeviceSpec::Cuda(2).to_string(), "cuda:2");
        for bad in ["gpu", "cuda:", "cuda:-1", "cuda:x", "CPU"] {
            assert!(bad.parse::<DeviceSpec>().is_err(), "{bad}");
        }
        assert!(DeviceSpec::Cpu.open().unwrap().is_cpu());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_is_a_clear_error() {
        let err = DeviceSpec::Cuda(0).open().unwrap_err().to_string();
        assert!(
            err.contains("cuda:0") && err.contains("--features cuda"),
            "{err}"
        );
    }
}
