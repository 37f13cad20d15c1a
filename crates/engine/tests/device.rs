//! Device selection: what `auto`, `cpu`, `cuda` and `metal` mean in this (CPU-only CI) build,
//! the planner planning for the device that will actually run (a GPU counts only when the
//! build has its backend), a plan's memory split on each device kind, and a run's record of
//! where it computed.

mod common;

use common::{text_dataset, STORIES};
use peft_engine::device::{built_with_cuda, DeviceChoice};
use peft_engine::hardware::{CpuFeatures, CpuInfo, GpuInfo, GpuVendor, Hardware};
use peft_engine::plan::devices::device_options;
use peft_engine::plan::recommend::{recommend, DataStats, RecommendOptions};
use peft_engine::plan::{estimate, ComputeDevice, PlanRequest};
use peft_engine::train::{train, TrainConfig, TrainEvent, TrainStatus};
use std::sync::atomic::{AtomicBool, Ordering};

const GIB: u64 = 1 << 30;

fn cpu() -> CpuInfo {
    CpuInfo {
        model: "test".into(),
        arch: "x86_64".into(),
        physical_cores: 8,
        logical_cores: 8,
        features: CpuFeatures::default(),
    }
}

/// A scanned (not assumed) machine with 32 GiB of RAM and one 24 GiB GPU, with the given
/// compiled-in backends.
fn machine(unified: bool, cuda: bool, metal: bool) -> Hardware {
    let mut hw = Hardware::assumed_with_cpu(cpu(), 32 * GIB, None);
    hw.assumed = false;
    hw.gpu.gpus.push(GpuInfo {
        vendor: if unified {
            GpuVendor::Apple
        } else {
            GpuVendor::Nvidia
        },
        index: 0,
        name: "test GPU".into(),
        total_bytes: 24 * GIB,
        free_bytes: 24 * GIB,
        unified_memory: unified,
    });
    hw.gpu.backends.cuda = cuda;
    hw.gpu.backends.metal = metal;
    hw
}

fn smollm2() -> peft_engine::Config {
    peft_engine::Config::from_json(r#"{"model_type":"llama","vocab_size":49152,"hidden_size":576,"intermediate_size":1536,
        "num_hidden_layers":30,"num_attention_heads":9,"num_key_value_heads":3,"max_position_embeddings":8192,
        "tie_word_embeddings":true,"rope_theta":100000.0,"rms_norm_eps":1e-5}"#, "smollm2").unwrap()
}

#[test]
fn the_planner_plans_for_a_gpu_only_when_the_build_can_use_it() {
    let data = DataStats::from_lengths((1..=100).map(|i| 3 * i).collect());
    let o = RecommendOptions::default();
    let c = smollm2();
    for (hw, want) in [
        (machine(false, false, false), ComputeDevice::Cpu),
        (machine(false, true, false), ComputeDevice::Cuda),
        (machine(true, false, false), ComputeDevice::Cpu),
        (machine(true, false, true), ComputeDevice::Metal),
        // A GPU of the other kind does not count.
        (machine(false, false, true), ComputeDevice::Cpu),
    ] {
        let r = recommend(&c, &hw, &data, &o);
        assert_eq!(r.device, want, "{:?}", hw.gpu.backends);
        let best = r.best().expect("something fits");
        assert_eq!(best.request.device, want);
        let free = if want == ComputeDevice::Cpu { 32 } else { 24 };
        assert_eq!(r.available_bytes, free * GIB);
    }
    // An assumed machine's GPU is planned for whatever the build (the "what if" question).
    let assumed = Hardware::assumed_with_cpu(cpu(), 32 * GIB, Some(24 * GIB));
    assert_eq!(
        recommend(&c, &assumed, &data, &o).device,
        ComputeDevice::Cuda
    );
}

#[test]
fn the_user_picks_the_device_the_plan_budgets() {
    let data = DataStats::from_lengths((1..=100).map(|i| 3 * i).collect());
    let c = smollm2();
    let plan = |hw: &Hardware, device: DeviceChoice| {
        let o = RecommendOptions {
            device,
            ..RecommendOptions::default()
        };
        let r = recommend(&c, hw, &data, &o);
        (r.device, r.available_bytes)
    };
    let gpu = machine(false, true, false);
    assert_eq!(
        plan(&gpu, DeviceChoice::Auto),
        (ComputeDevice::Cuda, 24 * GIB)
    );
    assert_eq!(
        plan(&gpu, DeviceChoice::Cpu),
        (ComputeDevice::Cpu, 32 * GIB)
    );
    assert_eq!(
        plan(&gpu, DeviceChoice::Cuda(0)),
        (ComputeDevice::Cuda, 24 * GIB)
    );
    // No second GPU, and no Metal GPU: the CPU is what such a run could use.
    assert_eq!(
        plan(&gpu, DeviceChoice::Cuda(1)),
        (ComputeDevice::Cpu, 32 * GIB)
    );
    assert_eq!(
        plan(&gpu, DeviceChoice::Metal),
        (ComputeDevice::Cpu, 32 * GIB)
    );

    let choices = |hw: &Hardware| -> Vec<(String, bool)> {
        device_options(hw)
            .into_iter()
            .map(|d| (d.choice.to_string(), d.usable))
            .collect()
    };
    let own = |v: &[(&str, bool)]| -> Vec<(String, bool)> {
        v.iter().map(|(c, u)| (c.to_string(), *u)).collect()
    };
    assert_eq!(
        choices(&gpu),
        own(&[("auto", true), ("cpu", true), ("cuda:0", true)])
    );
    // A GPU the build cannot use is listed, marked unusable, with the reason.
    let no_cuda = machine(false, false, false);
    assert_eq!(
        choices(&no_cuda),
        own(&[("auto", true), ("cpu", true), ("cuda:0", false)])
    );
    let o = device_options(&no_cuda);
    assert!(o[2].why_not.as_deref().unwrap().contains("make cuda"));
    assert_eq!(o[0].label, "Automatic: the CPU");
    assert_eq!(
        choices(&machine(true, false, true)),
        own(&[("auto", true), ("cpu", true), ("metal", true)])
    );
    assert_eq!(device_options(&gpu)[0].label, "Automatic: test GPU");
}

#[test]
fn a_gpu_plan_splits_device_and_host_memory() {
    let c = smollm2();
    let on = |device| {
        estimate(
            &c,
            &PlanRequest {
                device,
                ..Default::default()
            },
        )
    };
    let (cpu, cuda, metal) = (
        on(ComputeDevice::Cpu),
        on(ComputeDevice::Cuda),
        on(ComputeDevice::Metal),
    );
    assert_eq!(cpu.device_bytes, 0);
    assert_eq!(cpu.host_bytes, cpu.peak_bytes);
    for gpu in [&cuda, &metal] {
        assert!(gpu.lines.iter().any(|l| l.name == "gpu_context"));
        assert!(gpu.device_bytes > 0 && gpu.host_bytes < gpu.device_bytes);
        assert_eq!(gpu.device_bytes + gpu.host_bytes, gpu.peak_bytes);
    }
}

#[test]
fn choices_open_or_say_what_the_build_lacks() {
    assert!(DeviceChoice::Cpu.open().unwrap().is_cpu());
    assert_eq!(TrainConfig::default().device, None, "auto by default");
    // The setting round-trips through a run's JSON, and old configs without it still load.
    let cfg = TrainConfig {
        device: Some(DeviceChoice::Cuda(1)),
        ..TrainConfig::default()
    };
    let json = serde_json::to_value(&cfg).unwrap();
    assert_eq!(json["device"], "cuda:1");
    assert_eq!(serde_json::from_value::<TrainConfig>(json).unwrap(), cfg);
    let mut old = serde_json::to_value(TrainConfig::default()).unwrap();
    assert!(old.get("device").is_none());
    old.as_object_mut().unwrap().remove("device");
    assert_eq!(
        serde_json::from_value::<TrainConfig>(old).unwrap().device,
        None
    );
    if !built_with_cuda() {
        let e = DeviceChoice::Cuda(0).open().unwrap_err().to_string();
        assert!(e.contains("build with `make cuda`"), "{e}");
    }
}

#[test]
fn a_run_records_its_device_and_a_missing_backend_fails_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let data = text_dataset(dir.path(), &STORIES);
    let model = common::bundled();
    let cfg = TrainConfig {
        max_steps: Some(1),
        seq_len: 32,
        val_fraction: 0.0,
        device: Some(DeviceChoice::Cpu),
        ..TrainConfig::default()
    };
    let out = dir.path().join("run");
    let s = train(&model, &data, &out, &cfg, None, None, &mut |_, _| {}).unwrap();
    assert_eq!(s.storage.device.as_deref(), Some("cpu"));
    assert_eq!(s.storage.compute_dtype.as_deref(), Some("f32"));
    if !built_with_cuda() {
        let cfg = TrainConfig {
            device: Some(DeviceChoice::Cuda(0)),
            ..cfg
        };
        let out = dir.path().join("cuda");
        let e = train(&model, &data, &out, &cfg, None, None, &mut |_, _| {}).unwrap_err();
        assert!(e.to_string().contains("no CUDA support"), "{e}");
    }
}

#[test]
fn a_run_resumes_on_another_device_setting() {
    let dir = tempfile::tempdir().unwrap();
    let data = text_dataset(dir.path(), &STORIES);
    let model = common::bundled();
    let cfg = TrainConfig {
        max_steps: Some(2),
        seq_len: 32,
        val_fraction: 0.0,
        ..TrainConfig::default()
    };
    let out = dir.path().join("run");
    let stop = AtomicBool::new(false);
    let mut on_event = |e: &TrainEvent, _: &_| {
        if let TrainEvent::Step(s) = e {
            stop.store(s.step == 1, Ordering::SeqCst);
        }
    };
    let s = train(&model, &data, &out, &cfg, None, Some(&stop), &mut on_event).unwrap();
    assert_eq!((s.status, s.steps), (TrainStatus::Cancelled, 1));
    // Started on auto, resumed on an explicit CPU: the device is not a training setting.
    let cpu = TrainConfig {
        device: Some(DeviceChoice::Cpu),
        ..cfg.clone()
    };
    let s = train(&model, &data, &out, &cpu, Some(&out), None, &mut |_, _| {}).unwrap();
    assert_eq!((s.status, s.steps), (TrainStatus::Completed, 2));
    // Another setting is still refused.
    let other = TrainConfig { lr: 1e-3, ..cfg };
    let out2 = dir.path().join("run");
    let e = train(
        &model,
        &data,
        &out2,
        &other,
        Some(&out2),
        None,
        &mut |_, _| {},
    )
    .unwrap_err();
    assert!(e.to_string().contains("different settings"), "{e}");
}
