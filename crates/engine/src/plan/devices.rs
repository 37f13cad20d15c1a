//! Which devices a run can be planned for and trained on, from the hardware scan and this
//! build's backends: the choices a front end offers (`peft plan --device`, the app's Plan step)
//! and the GPU a plan budgets for a given [`DeviceChoice`].
//!
//! Kept beside the recommender so both read the same rule: a GPU counts only when this build
//! has its backend (or the machine is an assumed one, planned for elsewhere).

use crate::device::DeviceChoice;
use crate::hardware::{GpuInfo, Hardware};
use crate::memory::format_bytes;
use serde::{Deserialize, Serialize};

/// One device a user may pick.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct DeviceOption {
    pub choice: DeviceChoice,
    /// `CPU — 15.2 GiB free`, `NVIDIA GeForce RTX 4060 — 7.6 GiB free`.
    pub label: String,
    /// False when this build or machine cannot train there (`why_not` says why).
    pub usable: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ts", ts(optional))]
    pub why_not: Option<String>,
}

fn usable(hw: &Hardware, g: &GpuInfo) -> bool {
    hw.assumed
        || (g.unified_memory && hw.gpu.backends.metal)
        || (!g.unified_memory && hw.gpu.backends.cuda)
}

/// The GPU a plan for `choice` budgets (`None`: the CPU). `Auto` is the usable GPU with the
/// most free memory, as `DeviceChoice::Auto` opens it; an explicit GPU that is missing or
/// unusable in this build gives `None` (the CPU), and [`device_options`] never offers it.
pub fn planned_gpu(hw: &Hardware, choice: DeviceChoice) -> Option<&GpuInfo> {
    let gpus = &hw.gpu.gpus;
    match choice {
        DeviceChoice::Cpu => None,
        DeviceChoice::Auto => gpus
            .iter()
            .filter(|g| usable(hw, g))
            .max_by_key(|g| g.free_bytes),
        DeviceChoice::Cuda(n) => gpus
            .iter()
            .filter(|g| !g.unified_memory)
            .nth(n)
            .filter(|g| usable(hw, g)),
        DeviceChoice::Metal => gpus
            .iter()
            .find(|g| g.unified_memory)
            .filter(|g| usable(hw, g)),
    }
}

/// Auto first (naming what it picks), then the CPU, then each GPU found.
pub fn device_options(hw: &Hardware) -> Vec<DeviceOption> {
    let cpu_label = format!("CPU — {} free", format_bytes(hw.memory.available_bytes));
    let auto = match planned_gpu(hw, DeviceChoice::Auto) {
        Some(g) => format!("Automatic: {}", g.name),
        None => "Automatic: the CPU".to_string(),
    };
    let mut out = vec![
        DeviceOption {
            choice: DeviceChoice::Auto,
            label: auto,
            usable: true,
            why_not: None,
        },
        DeviceOption {
            choice: DeviceChoice::Cpu,
            label: cpu_label,
            usable: true,
            why_not: None,
        },
    ];
    let mut cuda = 0;
    for g in &hw.gpu.gpus {
        let choice = if g.unified_memory {
            DeviceChoice::Metal
        } else {
            cuda += 1;
            DeviceChoice::Cuda(cuda - 1)
        };
        let ok = usable(hw, g);
        let why_not = (!ok).then(|| {
            if g.unified_memory {
                "this build has no Metal support (build with `--features metal` on a Mac)".into()
            } else {
                "this build has no CUDA support (build with `make cuda`)".into()
            }
        });
        out.push(DeviceOption {
            choice,
            label: format!("{} — {} free", g.name, format_bytes(g.free_bytes)),
            usable: ok,
            why_not,
        });
    }
    out
}
