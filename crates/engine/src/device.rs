//! Which device a run computes on: the user's choice ([`DeviceChoice`]: `auto`, `cpu`,
//! `cuda[:N]`, `metal`) and opening it ([`DeviceChoice::open`]), with a clear error when this
//! build lacks the backend. The engine threads the opened [`Device`] through the model
//! (`model::placement`), the optimizer, batches and generation.
//!
//! `auto` is the device the planner budgets for (`plan::recommend`): a GPU whose backend this
//! build has (CUDA first, then Metal), otherwise the CPU.

use crate::error::{Error, Result};
use candle_core::Device;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Where to compute, as a user says it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(type = "string"))]
pub enum DeviceChoice {
    /// The planner's device: a usable GPU if this build supports it, else the CPU.
    #[default]
    Auto,
    Cpu,
    /// An NVIDIA GPU by CUDA ordinal.
    Cuda(usize),
    /// The Apple GPU.
    Metal,
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceChoice::Auto => write!(f, "auto"),
            DeviceChoice::Cpu => write!(f, "cpu"),
            DeviceChoice::Cuda(n) => write!(f, "cuda:{n}"),
            DeviceChoice::Metal => write!(f, "metal"),
        }
    }
}

impl FromStr for DeviceChoice {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::invalid(
                "device",
                format!("`{s}` is not a device; use auto, cpu, cuda, cuda:N or metal"),
            )
        };
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "auto" => DeviceChoice::Auto,
            "cpu" => DeviceChoice::Cpu,
            "cuda" | "gpu" => DeviceChoice::Cuda(0),
            "metal" | "mps" => DeviceChoice::Metal,
            other => match other.strip_prefix("cuda:") {
                Some(n) => DeviceChoice::Cuda(n.parse().map_err(|_| bad())?),
                None => return Err(bad()),
            },
        })
    }
}

impl TryFrom<String> for DeviceChoice {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<DeviceChoice> for String {
    fn from(d: DeviceChoice) -> String {
        d.to_string()
    }
}

/// Whether this build was compiled with the CUDA backend.
pub fn built_with_cuda() -> bool {
    candle_core::utils::cuda_is_available()
}

/// Whether this build was compiled with the Metal backend.
pub fn built_with_metal() -> bool {
    candle_core::utils::metal_is_available()
}

impl DeviceChoice {
    /// Opens the device.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming `device` when this build has no such backend ("this build has
    /// no CUDA support; build with `make cuda`") or the GPU cannot be opened (no driver, bad
    /// ordinal: candle's reason is included).
    pub fn open(&self) -> Result<Device> {
        match self {
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Cuda(n) => {
                if !built_with_cuda() {
                    return Err(Error::invalid(
                        "device",
                        "this build has no CUDA support; build with `make cuda`",
                    ));
                }
                Device::new_cuda(*n).map_err(|e| {
                    Error::invalid("device", format!("cannot open CUDA device {n}: {e}"))
                })
            }
            DeviceChoice::Metal => {
                if !built_with_metal() {
                    return Err(Error::invalid(
                        "device",
                        "this build has no Metal support; build with `--features metal` on a Mac",
                    ));
                }
                Device::new_metal(0)
                    .map_err(|e| Error::invalid("device", format!("cannot open Metal: {e}")))
            }
            DeviceChoice::Auto => Ok(Self::auto_device()),
        }
    }

    /// The device `auto` stands for in this build on this machine.
    fn auto_device() -> Device {
        if built_with_cuda() {
            if let Ok(d) = Device::new_cuda(0) {
                return d;
            }
        }
        if built_with_metal() {
            if let Ok(d) = Device::new_metal(0) {
                return d;
            }
        }
        Device::Cpu
    }
}

/// `cpu`, `cuda:N` or `metal`, for messages and records.
pub fn describe(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { .. } => "metal".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_every_choice() {
        for (s, d) in [
            ("auto", DeviceChoice::Auto),
            ("cpu", DeviceChoice::Cpu),
            ("cuda:0", DeviceChoice::Cuda(0)),
            ("cuda:3", DeviceChoice::Cuda(3)),
            ("metal", DeviceChoice::Metal),
        ] {
            assert_eq!(s.parse::<DeviceChoice>().unwrap(), d);
            assert_eq!(d.to_string(), s);
            let json = serde_json::to_string(&d).unwrap();
            assert_eq!(json, format!("\"{s}\""));
            assert_eq!(serde_json::from_str::<DeviceChoice>(&json).unwrap(), d);
        }
        assert_eq!(
            "CUDA".parse::<DeviceChoice>().unwrap(),
            DeviceChoice::Cuda(0)
        );
        let e = "tpu".parse::<DeviceChoice>().unwrap_err().to_string();
        assert!(e.contains("tpu") && e.contains("cuda:N"), "{e}");
        assert!("cuda:x".parse::<DeviceChoice>().is_err());
        assert!(serde_json::from_str::<DeviceChoice>("\"npu\"").is_err());
    }

    #[test]
    fn cpu_opens_and_missing_backends_say_how_to_build() {
        assert!(DeviceChoice::Cpu.open().unwrap().is_cpu());
        if !built_with_cuda() {
            let e = DeviceChoice::Cuda(0).open().unwrap_err().to_string();
            assert!(
                e.contains("this build has no CUDA support; build with `make cuda`"),
                "{e}"
            );
            // Without a GPU backend, auto is the CPU.
            if !built_with_metal() {
                assert!(DeviceChoice::Auto.open().unwrap().is_cpu());
            }
        }
        if !built_with_metal() {
            let e = DeviceChoice::Metal.open().unwrap_err().to_string();
            assert!(e.contains("no Metal support"), "{e}");
        }
        assert_eq!(describe(&Device::Cpu), "cpu");
    }
}
