//! A snapshot of the machine: CPU, host memory and GPUs ([`Hardware::scan`]), refreshable, and
//! an assumed machine for tests and "what if" questions ([`Hardware::assumed`]).
//!
//! Detection only: what fits where is decided by `crate::plan`, which takes a `Hardware` value
//! and never scans by itself (so the planner stays pure and testable).

pub mod cpu;
pub mod gpu;

pub use cpu::{CpuFeatures, CpuInfo, MemoryInfo};
pub use gpu::{Backends, GpuInfo, GpuScan, GpuVendor};

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// What this machine offers for training.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct Hardware {
    pub cpu: CpuInfo,
    pub memory: MemoryInfo,
    pub gpu: GpuScan,
    /// True when the figures were given by the user (`--assume-ram`) rather than measured.
    pub assumed: bool,
}

impl Hardware {
    /// Reads everything from the OS (and NVML when present). Never fails: what cannot be read
    /// is reported as absent, with a note for GPUs.
    pub fn scan() -> Self {
        let (cpu, memory) = cpu::detect();
        let gpu = gpu::scan(memory.total_bytes, memory.available_bytes);
        Self {
            cpu,
            memory,
            gpu,
            assumed: false,
        }
    }

    /// Re-reads the fast-changing figures (free RAM, swap, free VRAM).
    pub fn refresh(&mut self) {
        if self.assumed {
            return;
        }
        let (_, memory) = cpu::detect();
        self.memory = memory;
        self.gpu = gpu::scan(self.memory.total_bytes, self.memory.available_bytes);
    }

    /// A machine described by the user: `ram` bytes free (and total), and optionally one
    /// NVIDIA-class GPU with `vram` bytes free. The CPU is this machine's.
    pub fn assumed(ram: u64, vram: Option<u64>) -> Self {
        let (cpu, _) = cpu::detect();
        Self::assumed_with_cpu(cpu, ram, vram)
    }

    /// As [`Hardware::assumed`] with a given CPU (tests use a fixed one).
    pub fn assumed_with_cpu(cpu: CpuInfo, ram: u64, vram: Option<u64>) -> Self {
        let gpus = vram
            .map(|v| GpuInfo {
                vendor: GpuVendor::Nvidia,
                index: 0,
                name: "assumed GPU".into(),
                total_bytes: v,
                free_bytes: v,
                unified_memory: false,
            })
            .into_iter()
            .collect();
        Self {
            cpu,
            memory: MemoryInfo {
                total_bytes: ram,
                available_bytes: ram,
                swap_total_bytes: 0,
                swap_free_bytes: 0,
            },
            gpu: GpuScan {
                backends: Backends::default(),
                gpus,
                notes: vec![],
            },
            assumed: true,
        }
    }

    /// The GPU with the most free memory, if any.
    pub fn best_gpu(&self) -> Option<&GpuInfo> {
        self.gpu.gpus.iter().max_by_key(|g| g.free_bytes)
    }
}

/// Parses a memory size: `8GiB`, `6 GB`, `512MiB`, `1.5G`, or plain bytes. Decimal units
/// (`GB`) are 10⁹, binary ones (`GiB`, and a bare `G`) 2³⁰.
///
/// # Errors
/// [`Error::Invalid`] naming `what` when the text is not a size.
pub fn parse_size(what: &str, text: &str) -> Result<u64> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| Error::invalid(what, format!("`{text}` is not a size like 8GiB or 512MiB")))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "kb" => 1e3,
        "m" | "mib" => 1024.0 * 1024.0,
        "mb" => 1e6,
        "g" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "gb" => 1e9,
        "t" | "tib" => 1024f64.powi(4),
        "tb" => 1e12,
        other => {
            return Err(Error::invalid(
                what,
                format!(
                "unknown unit `{other}` in `{text}`; use B, KiB, MiB, GiB, TiB (or KB, MB, GB, TB)"
            ),
            ))
        }
    };
    if !value.is_finite() || value < 0.0 {
        return Err(Error::invalid(what, format!("`{text}` is not a size")));
    }
    Ok((value * mult).round() as u64)
}
