//! TEMPORARY (by-hand interop check; delete after use).
use candle_core::{Device, Tensor};
use peft_engine::infer::template::Message;
use peft_engine::model::decoder::LoadOptions;
use peft_engine::model::linear::ForwardCtx;
use peft_engine::model::load::{ModelSource, OpenOptions};
use peft_engine::model::loaded::LoadedModel;

const TOKENS: [u32; 8] = [1, 403, 407, 261, 378, 432, 383, 286];

fn logits(m: &LoadedModel) -> Vec<Vec<f32>> {
    let ids = Tensor::new(&TOKENS, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    m.decoder.forward(&ids, &ForwardCtx::default()).unwrap().squeeze(0).unwrap().to_vec2().unwrap()
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let mut m = LoadedModel::load(&ModelSource::Bundled, OpenOptions::default(), &LoadOptions::default()).unwrap();
    peft_engine::peft::adapter_io::apply_adapter(&mut m.decoder, std::path::Path::new(&a[1])).unwrap();
    let with_adapter = logits(&m);
    let merged = LoadedModel::load(&ModelSource::Folder(a[2].clone().into()), OpenOptions::default(), &LoadOptions::default()).unwrap();
    let merged_logits = logits(&merged);
    let text = "Tom had a red kite. He flew it high in the sky.";
    let chat = merged.template.render(&[Message::new("user", "Tell me a story."), Message::new("assistant", "Once upon a time.")], false).unwrap();
    let out = serde_json::json!({
        "token_ids": TOKENS,
        "adapter_logits": with_adapter,
        "merged_logits": merged_logits,
        "text": text,
        "text_ids": merged.tokenizer.encode(text, true).unwrap(),
        "chat_rendered": chat,
    });
    std::fs::write(&a[3], out.to_string()).unwrap();
}
