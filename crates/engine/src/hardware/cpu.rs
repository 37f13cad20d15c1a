//! CPU and host-memory detection: model name, core counts, the SIMD features candle's CPU
//! kernels use, RAM and swap. Detection only — no policy (that is `crate::plan`).

use serde::{Deserialize, Serialize};

/// Instruction-set extensions that change CPU training speed (candle's GEMM and elementwise
/// kernels pick AVX2/AVX-512 on x86-64 and NEON on aarch64 at run time).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct CpuFeatures {
    pub avx2: bool,
    pub avx512f: bool,
    pub fma: bool,
    pub neon: bool,
    /// Intel AMX bf16 tiles: `--bf16-compute` (the app's "bf16 compute") runs natively, and
    /// faster than f32; without them it is emulated (the same numbers, slower).
    #[serde(default)]
    pub amx_bf16: bool,
    /// AVX512-BF16 dot products (Zen 4 and 5, Cooper Lake): `--bf16-compute` runs natively
    /// where there is no AMX; whether that beats f32 is measured (`plan::calibrate`).
    #[serde(default)]
    pub avx512_bf16: bool,
}

impl CpuFeatures {
    /// The bf16 products a CPU with these features runs (what `ops::Bf16Backend::detect`
    /// finds on the running one, before the OS's say on AMX tiles).
    pub fn bf16_backend(&self) -> crate::ops::Bf16Backend {
        use crate::ops::Bf16Backend;
        if self.amx_bf16 {
            Bf16Backend::Amx
        } else if self.avx512_bf16 && self.avx512f {
            Bf16Backend::Dot
        } else {
            Bf16Backend::Emulated
        }
    }
}

/// The host processor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct CpuInfo {
    /// Brand string (`AMD EPYC 9R14 …`), empty when the OS does not say.
    pub model: String,
    /// `x86_64`, `aarch64`, …
    pub arch: String,
    /// Physical cores when the OS reports them, else equal to `logical_cores`.
    pub physical_cores: usize,
    pub logical_cores: usize,
    pub features: CpuFeatures,
}

/// Host memory, in bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct MemoryInfo {
    #[cfg_attr(feature = "ts", ts(type = "number"))]
    pub total_bytes: u64,
    /// What the OS says can be allocated without swapping (`MemAvailable` on Linux).
    #[cfg_attr(feature = "ts", ts(type = "number"))]
    pub available_bytes: u64,
    #[cfg_attr(feature = "ts", ts(type = "number"))]
    pub swap_total_bytes: u64,
    #[cfg_attr(feature = "ts", ts(type = "number"))]
    pub swap_free_bytes: u64,
}

/// Features of the running CPU, detected at run time.
pub fn detect_features() -> CpuFeatures {
    #[allow(unused_mut)]
    let mut f = CpuFeatures::default();
    #[cfg(target_arch = "x86_64")]
    {
        f.avx2 = std::arch::is_x86_feature_detected!("avx2");
        f.avx512f = std::arch::is_x86_feature_detected!("avx512f");
        f.fma = std::arch::is_x86_feature_detected!("fma");
        f.avx512_bf16 = std::arch::is_x86_feature_detected!("avx512bf16");
        // CPUID.(EAX=7, ECX=0):EDX bits 22 (AMX-BF16) and 24 (AMX-TILE); whether the OS
        // grants the tile state is `ops::Bf16Backend`'s concern.
        let leaf = std::arch::x86_64::__cpuid_count(7, 0);
        f.amx_bf16 = leaf.edx & (1 << 22) != 0 && leaf.edx & (1 << 24) != 0;
    }
    #[cfg(target_arch = "aarch64")]
    {
        f.neon = std::arch::is_aarch64_feature_detected!("neon");
        f.fma = f.neon;
    }
    f
}

/// Reads CPU and memory facts from the OS through `sysinfo`.
pub fn detect() -> (CpuInfo, MemoryInfo) {
    use sysinfo::{CpuRefreshKind, MemoryRefreshKind, RefreshKind, System};
    let sys = System::new_with_specifics(
        RefreshKind::nothing()
            .with_cpu(CpuRefreshKind::nothing())
            .with_memory(MemoryRefreshKind::everything()),
    );
    let logical = sys.cpus().len().max(
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
    );
    let model = sys
        .cpus()
        .first()
        .map(|c| c.brand().trim().to_string())
        .unwrap_or_default();
    let cpu = CpuInfo {
        model,
        arch: System::cpu_arch(),
        physical_cores: System::physical_core_count().unwrap_or(logical),
        logical_cores: logical,
        features: detect_features(),
    };
    let mem = MemoryInfo {
        total_bytes: sys.total_memory(),
        available_bytes: sys.available_memory(),
        swap_total_bytes: sys.total_swap(),
        swap_free_bytes: sys.free_swap(),
    };
    (cpu, mem)
}
