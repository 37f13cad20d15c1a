//! GPU detection: which candle backends this build can use, NVIDIA GPUs through NVML, and
//! Apple unified memory.
//!
//! NVML (`libnvidia-ml`) is loaded at run time by `nvml-wrapper`: a machine without the NVIDIA
//! driver simply has no NVIDIA GPU — the failure is recorded as a note, never an error.
//! This module does not decide anything (how much memory a run may use is `crate::plan`).

use serde::{Deserialize, Serialize};

/// Which vendor a GPU is from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "lowercase")]
pub enum GpuVendor {
    Nvidia,
    Apple,
}

/// One GPU.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct GpuInfo {
    pub vendor: GpuVendor,
    pub index: u32,
    pub name: String,
    #[cfg_attr(feature = "ts", ts(type = "number"))]
    pub total_bytes: u64,
    /// Memory not in use right now.
    #[cfg_attr(feature = "ts", ts(type = "number"))]
    pub free_bytes: u64,
    /// True on Apple silicon: GPU memory is the host's RAM (budget them together).
    pub unified_memory: bool,
}

/// Which of candle's compute backends this binary can use on this machine.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct Backends {
    /// Built with the `cuda` feature (candle reports false otherwise).
    pub cuda: bool,
    /// Built with the `metal` feature.
    pub metal: bool,
}

/// Everything GPU-related in one snapshot.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct GpuScan {
    pub backends: Backends,
    pub gpus: Vec<GpuInfo>,
    /// Why a vendor library was not used (`NVML not available: …`), for display.
    pub notes: Vec<String>,
}

/// candle's own answer for the compiled-in backends.
pub fn backends() -> Backends {
    Backends {
        cuda: candle_core::utils::cuda_is_available(),
        metal: candle_core::utils::metal_is_available(),
    }
}

/// NVIDIA GPUs via NVML. `Err` carries a human-readable reason when NVML cannot be loaded
/// or initialised (no driver, no library, no permission).
pub fn nvidia_gpus() -> std::result::Result<Vec<GpuInfo>, String> {
    let nvml = nvml_wrapper::Nvml::init().map_err(|e| nvml_note(&e))?;
    let count = nvml
        .device_count()
        .map_err(|e| format!("NVML device count: {e}"))?;
    let mut out = Vec::new();
    for index in 0..count {
        let Ok(dev) = nvml.device_by_index(index) else {
            continue;
        };
        let name = dev.name().unwrap_or_else(|_| "NVIDIA GPU".into());
        let (total_bytes, free_bytes) = dev
            .memory_info()
            .map(|m| (m.total, m.free))
            .unwrap_or((0, 0));
        out.push(GpuInfo {
            vendor: GpuVendor::Nvidia,
            index,
            name,
            total_bytes,
            free_bytes,
            unified_memory: false,
        });
    }
    Ok(out)
}

/// Why NVML could not start, in words a person can act on (the raw error names a shared
/// library the user has never heard of).
pub fn nvml_note(e: &nvml_wrapper::error::NvmlError) -> String {
    use nvml_wrapper::error::NvmlError as E;
    match e {
        E::LibloadingError(_) | E::LibraryNotFound => {
            "No NVIDIA driver found (NVIDIA GPUs need the NVIDIA driver; none is installed).".into()
        }
        E::DriverNotLoaded => {
            "An NVIDIA driver is installed but not running (reboot, or check `nvidia-smi`).".into()
        }
        E::NoPermission => "The NVIDIA driver refused access to the GPU (permissions).".into(),
        E::FailedToLoadSymbol(_) => {
            "The NVIDIA driver is too old for this app (update the driver).".into()
        }
        other => format!("The NVIDIA driver could not be queried: {other}"),
    }
}

/// On Apple silicon the GPU shares the host's RAM: report it as one unified-memory GPU.
pub fn apple_gpu(host_total: u64, host_available: u64) -> Option<GpuInfo> {
    if cfg!(all(target_os = "macos", target_arch = "aarch64")) {
        Some(GpuInfo {
            vendor: GpuVendor::Apple,
            index: 0,
            name: "Apple silicon GPU (unified memory)".into(),
            total_bytes: host_total,
            free_bytes: host_available,
            unified_memory: true,
        })
    } else {
        None
    }
}

/// Scans every source; missing vendor libraries become notes.
pub fn scan(host_total: u64, host_available: u64) -> GpuScan {
    let mut s = GpuScan {
        backends: backends(),
        ..Default::default()
    };
    match nvidia_gpus() {
        Ok(g) => s.gpus.extend(g),
        Err(note) => s.notes.push(note),
    }
    s.gpus.extend(apple_gpu(host_total, host_available));
    s
}
