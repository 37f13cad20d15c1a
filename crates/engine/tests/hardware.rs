//! Hardware snapshot: works on a machine without NVIDIA's library (this one), sizes parse,
//! assumed machines are what they say.

use peft_engine::hardware::{gpu, parse_size, Hardware};

#[test]
fn scan_without_nvml_is_not_an_error() {
    let hw = Hardware::scan();
    assert!(hw.cpu.logical_cores >= 1);
    assert!(hw.memory.total_bytes > 0);
    assert!(hw.memory.available_bytes <= hw.memory.total_bytes);
    // No NVIDIA driver here: NVML fails to load, which must read as "no NVIDIA GPU".
    if gpu::nvidia_gpus().is_err() {
        assert!(hw
            .gpu
            .gpus
            .iter()
            .all(|g| g.vendor != gpu::GpuVendor::Nvidia));
        // … said in words a person can act on, not as the library loader's error.
        let note = hw
            .gpu
            .notes
            .iter()
            .find(|n| n.contains("NVIDIA"))
            .expect("a note");
        assert!(note.contains("No NVIDIA driver found"), "{note}");
        assert!(
            !note.contains("libloading") && !note.contains(".so"),
            "{note}"
        );
    }
    // A default build has neither backend.
    if cfg!(not(any(feature = "cuda", feature = "metal"))) {
        assert!(!hw.gpu.backends.cuda && !hw.gpu.backends.metal);
    }
    let json = serde_json::to_string(&hw).unwrap();
    assert!(json.contains("\"physical_cores\""));
}

#[test]
fn refresh_keeps_the_cpu() {
    let mut hw = Hardware::scan();
    let cpu = hw.cpu.clone();
    hw.refresh();
    assert_eq!(hw.cpu, cpu);
}

#[test]
fn assumed_hardware() {
    let hw = Hardware::assumed(8 << 30, Some(6 << 30));
    assert!(hw.assumed);
    assert_eq!(hw.memory.available_bytes, 8 << 30);
    assert_eq!(hw.best_gpu().map(|g| g.free_bytes), Some(6 << 30));
    let cpu_only = Hardware::assumed(8 << 30, None);
    assert!(cpu_only.best_gpu().is_none());
}

#[test]
fn sizes_parse() {
    assert_eq!(parse_size("x", "8GiB").unwrap(), 8 << 30);
    assert_eq!(parse_size("x", "6 GB").unwrap(), 6_000_000_000);
    assert_eq!(parse_size("x", "512MiB").unwrap(), 512 << 20);
    assert_eq!(parse_size("x", "1.5G").unwrap(), 3 << 29);
    assert_eq!(parse_size("x", "1024").unwrap(), 1024);
    assert!(parse_size("x", "lots").is_err());
    assert!(parse_size("x", "8 parsecs").is_err());
}
