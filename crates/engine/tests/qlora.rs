//! QLoRA end to end on the bundled model: NF4 base, LoRA adapters in f32, training lowers the
//! loss, the adapter round-trips through PEFT format onto an NF4 base, and a merge dequantizes.

mod common;

use candle_core::{Device, Tensor};
use common::{text_dataset, STORIES};
use peft_engine::model::ctx::ForwardCtx;
use peft_engine::model::decoder::{Decoder, LoadOptions};
use peft_engine::model::linear::Base;
use peft_engine::model::load::{ModelSource, OpenOptions};
use peft_engine::model::loaded::LoadedModel;
use peft_engine::peft::adapter_io::apply_adapter;
use peft_engine::peft::method::{LoraSettings, Method};
use peft_engine::test_support::max_diff;
use peft_engine::train::{train, TrainConfig};

fn logits(d: &Decoder) -> Tensor {
    let ids = Tensor::new(&[[1u32, 403, 407, 261, 378, 432, 383]], &Device::Cpu).unwrap();
    d.forward(&ids, &ForwardCtx::default()).unwrap()
}

#[test]
fn nf4_base_is_quantized_and_close_to_f32() {
    let mut q = common::nf4_decoder();
    let f = common::decoder();
    for (name, lin) in q.linears_mut() {
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
    let bytes = q.base_weight_bytes();
    let mut f = common::decoder();
    assert!(
        bytes < f.base_weight_bytes() / 2,
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
    // A caller that built dense f32 weights first (the app after a chat, say): the method still
    // decides, and the run trains over NF4 block linears.
    let model = LoadedModel::load(
        &ModelSource::Bundled,
        OpenOptions::default(),
        &LoadOptions::default(),
    )
    .unwrap();
    let s = train(&model, &data, &out, &cfg, None, None, &mut |_, _| {}).unwrap();
    assert_eq!(s.storage.nf4_linears, 35);
    assert_eq!(s.storage.dense_linears, 0);
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
    let base = common::nf4_decoder();
    let mut tuned = common::nf4_decoder();
    apply_adapter(&mut tuned, &out).unwrap();
    assert!(max_diff(&logits(&base), &logits(&tuned)) > 1e-3);

    // Merging dequantizes first and writes dense weights that reproduce the tuned NF4 model.
    let merged_dir = dir.path().join("merged");
    let want = logits(&tuned);
    peft_engine::export::merge::write_merged(&model, &mut tuned, &merged_dir, Default::default())
        .unwrap();
    let merged = LoadedModel::load(
        &ModelSource::Folder(merged_dir),
        OpenOptions::default(),
        &LoadOptions::default(),
    )
    .unwrap();
    let d = max_diff(
        &want,
        &logits(&merged.weights(&LoadOptions::default()).unwrap()),
    );
    assert!(d < 1e-4, "merged vs NF4+adapter: {d}");
}

#[test]
fn a_method_refuses_a_base_stored_for_another() {
    use peft_engine::peft::method::apply_method;
    let lora = LoraSettings::default();
    let e = apply_method(&mut common::decoder(), &Method::Qlora(lora.clone()), 1).unwrap_err();
    assert!(
        e.to_string()
            .contains("qlora needs quantized (NF4 or GGUF)"),
        "{e}"
    );
    let e = apply_method(&mut common::nf4_decoder(), &Method::Lora(lora), 1).unwrap_err();
    assert!(e.to_string().contains("lora needs dense"), "{e}");
    let e = apply_method(&mut common::nf4_decoder(), &Method::Full, 1).unwrap_err();
    assert!(e.to_string().contains("full needs dense"), "{e}");
}
