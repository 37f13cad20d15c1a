//! QLoRA end to end on the bundled model: NF4 base, LoRA adapters in f32, training lowers the
//! loss, the adapter round-trips through PEFT format onto an NF4 base, and a merge dequantizes.

mod common;

use candle_core::{Device, Tensor};
use common::{text_dataset, STORIES};
use peft_engine::model::decoder::{LoadOptions, QuantizeOptions};
use peft_engine::model::linear::{Base, ForwardCtx};
use peft_engine::model::load::{ModelSource, OpenOptions};
use peft_engine::model::loaded::LoadedModel;
use peft_engine::peft::adapter_io::apply_adapter;
use peft_engine::peft::method::{LoraSettings, Method};
use peft_engine::train::{train, TrainConfig};

fn nf4_bundled() -> LoadedModel {
    let opts = LoadOptions {
        quantize: Some(QuantizeOptions::default()),
        ..Default::default()
    };
    LoadedModel::load(&ModelSource::Bundled, OpenOptions::default(), &opts).unwrap()
}

fn logits(m: &LoadedModel) -> Tensor {
    let ids = Tensor::new(&[[1u32, 403, 407, 261, 378, 432, 383]], &Device::Cpu).unwrap();
    m.decoder.forward(&ids, &ForwardCtx::default()).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn nf4_base_is_quantized_and_close_to_f32() {
    let mut q = nf4_bundled();
    let f = common::bundled();
    for (name, lin) in q.decoder.linears_mut() {
        assert!(matches!(lin.base, Base::Nf4(_)), "{name} is not NF4");
    }
    // Whole-model output stays close: a 4-bit base perturbs but does not destroy the model.
    let (a, b) = (logits(&q), logits(&f));
    let rel = max_diff(&a, &b)
        / b.abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
    assert!(rel > 0.0 && rel < 0.25, "relative logit change {rel}");
    let bytes = q.decoder.base_weight_bytes();
    let mut f = common::bundled();
    assert!(
        bytes < f.decoder.base_weight_bytes() / 2,
        "{bytes} bytes is not well under f32"
    );
}

#[test]
fn qlora_training_lowers_the_loss_and_the_adapter_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let data = text_dataset(dir.path(), &STORIES[..4]);
    let out = dir.path().join("qlora");
    let cfg = TrainConfig {
        method: Method::Qlora(LoraSettings {
            rank: 8,
            alpha: 16.0,
            dropout: 0.0,
            ..Default::default()
        }),
        seq_len: 64,
        batch_size: 2,
        max_steps: Some(40),
        lr: 5e-3,
        val_fraction: 0.0,
        ..Default::default()
    };
    let s = train(nf4_bundled(), &data, &out, &cfg, None, None, &mut |_| {}).unwrap();
    let (first, last) = (s.losses[0].1, s.losses.last().unwrap().1);
    assert!(last < 0.5 * first, "loss {first} → {last}");
    // The result is an ordinary PEFT LoRA adapter, in f32.
    let cfg_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg_json["peft_type"], "LORA");
    let w = candle_core::safetensors::load(out.join("adapter_model.safetensors"), &Device::Cpu)
        .unwrap();
    assert!(w.values().all(|t| t.dtype() == candle_core::DType::F32));
    assert!(w.contains_key("base_model.model.model.layers.0.mlp.down_proj.lora_B.weight"));

    // Chat on the NF4 base with the adapter: differs from the bare NF4 base.
    let base = nf4_bundled();
    let mut tuned = nf4_bundled();
    apply_adapter(&mut tuned.decoder, &out).unwrap();
    assert!(max_diff(&logits(&base), &logits(&tuned)) > 1e-3);

    // Merging dequantizes first and writes dense weights that reproduce the tuned NF4 model.
    let merged_dir = dir.path().join("merged");
    let want = logits(&tuned);
    peft_engine::export::merge::write_merged(&mut tuned, &merged_dir, Default::default()).unwrap();
    let merged = LoadedModel::load(
        &ModelSource::Folder(merged_dir),
        OpenOptions::default(),
        &LoadOptions::default(),
    )
    .unwrap();
    let d = max_diff(&want, &logits(&merged));
    assert!(d < 1e-4, "merged vs NF4+adapter: {d}");
}
