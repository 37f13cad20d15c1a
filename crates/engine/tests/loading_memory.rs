//! Loading never costs more than the result: reading a tensor from a safetensors file grows
//! the process by about the f32 result, not by the mapped file pages plus a copy plus the
//! result. Measured by peak RSS growth in a child process of its own (this test binary run
//! again with `PEFT_LOADING_CHILD` set), so no other test's memory is counted.

use candle_core::{DType, Device, Tensor};
use peft_engine::memory::{peak_rss_bytes, rss_bytes};
use peft_engine::model::tensors::{SafetensorsSource, TensorSource};
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

const CHILD: &str = "PEFT_LOADING_CHILD";
/// 8M elements: 32 MiB as f32, 16 MiB stored as bf16.
const ELEMENTS: usize = 8 << 20;

fn write_folder(dir: &Path, dtype: DType) {
    let t = Tensor::arange(0u32, ELEMENTS as u32, &Device::Cpu)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .affine(1e-6, -1.0)
        .unwrap()
        .reshape((ELEMENTS / 1024, 1024))
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
    let map: HashMap<String, Tensor> = [("model.embed_tokens.weight".to_string(), t)].into();
    candle_core::safetensors::save(&map, dir.join("model.safetensors")).unwrap();
}

/// In the child: load the tensor, print `growth result` in bytes.
fn measure(dir: &Path) {
    let src = SafetensorsSource::open_dir(dir).unwrap();
    let before = rss_bytes().unwrap();
    let t = src.load("model.embed_tokens.weight").unwrap();
    let peak = peak_rss_bytes().unwrap();
    let result = (t.elem_count() * 4) as u64;
    // The values arrived (and are kept alive until after the measurement).
    let last: f32 = t.flatten_all().unwrap().to_vec1::<f32>().unwrap()[ELEMENTS - 1];
    assert!(
        (last - ((ELEMENTS as f32 - 1.0) * 1e-6 - 1.0)).abs() < 0.05,
        "{last}"
    );
    println!("MEASURED {} {result}", peak.saturating_sub(before));
}

fn run_child(dtype: DType) -> (u64, u64) {
    let dir = tempfile::tempdir().unwrap();
    write_folder(dir.path(), dtype);
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "loading_grows_by_about_the_result",
            "--exact",
            "--nocapture",
        ])
        .args(["--test-threads", "1"])
        .env(CHILD, dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.split("MEASURED ").nth(1))
        .unwrap_or_else(|| {
            panic!(
                "child printed no measurement: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let v: Vec<u64> = line
        .split_whitespace()
        .take(2)
        .map(|x| x.parse().unwrap())
        .collect();
    (v[0], v[1])
}

#[test]
fn loading_grows_by_about_the_result() {
    if let Ok(dir) = std::env::var(CHILD) {
        return measure(Path::new(&dir));
    }
    for dtype in [DType::BF16, DType::F32] {
        let (growth, result) = run_child(dtype);
        eprintln!("{dtype:?}: loading grew RSS by {growth} bytes for a {result}-byte result");
        // The result plus at most one run of mapped pages (4 MiB) and allocator slack; the
        // old path (pages + copy + result) grew by 1.5× (bf16) to 2× (f32).
        assert!(
            growth as f64 <= 1.2 * result as f64,
            "{dtype:?}: grew {growth} bytes for a {result}-byte tensor"
        );
    }
}
