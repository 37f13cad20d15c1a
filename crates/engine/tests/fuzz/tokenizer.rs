//! `tokenizer.json`: the bundled model's tokenizer with its model, vocabulary, merges, added
//! tokens, normalizer, pre-tokenizer, post-processor, decoder, truncation or padding replaced
//! by odd but parseable values. A file that loads is used: texts encoded and decoded, and ids
//! (in and out of range) decoded.

use crate::harness::{run, Rng, Verdict};
use peft_engine::Tokenizer;
use serde_json::{json, Value};

fn component(rng: &mut Rng, kind: &str) -> Value {
    let n = rng.size();
    let s = rng.text(4);
    match kind {
        "normalizer" => rng
            .pick(&[
                json!({"type": "Prepend", "prepend": s}),
                json!({"type": "Replace", "pattern": {"String": s}, "content": "xx"}),
                json!({"type": "Replace", "pattern": {"Regex": "(a|"}, "content": ""}),
                json!({"type": "Replace", "pattern": {"String": ""}, "content": "ab"}),
                json!({"type": "NFKC"}),
                json!({"type": "Strip", "strip_left": true, "strip_right": false}),
                json!({"type": "Sequence", "normalizers": []}),
                json!({"type": "Precompiled", "precompiled_charsmap": "AAAA"}),
                json!({"type": "Lowercase"}),
            ])
            .clone(),
        "pre_tokenizer" => rng
            .pick(&[
                json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true}),
                json!({"type": "Split", "pattern": {"Regex": "\\s+"}, "behavior": "Isolated", "invert": false}),
                json!({"type": "Split", "pattern": {"String": ""}, "behavior": "Removed", "invert": true}),
                json!({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": true}),
                json!({"type": "Digits", "individual_digits": true}),
                json!({"type": "Punctuation", "behavior": "Contiguous"}),
                json!({"type": "Whitespace"}),
                json!({"type": "Sequence", "pretokenizers": []}),
            ])
            .clone(),
        "decoder" => rng
            .pick(&[
                json!({"type": "Strip", "content": " ", "start": n, "stop": n}),
                json!({"type": "Strip", "content": "▁", "start": 0, "stop": 7}),
                json!({"type": "ByteFallback"}),
                json!({"type": "Fuse"}),
                json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true}),
                json!({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": true}),
                json!({"type": "WordPiece", "prefix": "##", "cleanup": true}),
                json!({"type": "CTC", "pad_token": "<pad>", "word_delimiter_token": "|", "cleanup": true}),
                json!({"type": "BPEDecoder", "suffix": s}),
                json!({"type": "Replace", "pattern": {"String": "▁"}, "content": s}),
                json!({"type": "Sequence", "decoders": []}),
            ])
            .clone(),
        _ => {
            let id = rng.size();
            rng.pick(&[
                json!({"type": "TemplateProcessing",
                    "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                    "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                    "special_tokens": {"<s>": {"id": "<s>", "ids": [id], "tokens": ["<s>"]}}}),
                json!({"type": "TemplateProcessing",
                    "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                    "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                    "special_tokens": {"<s>": {"id": "<s>", "ids": [], "tokens": []}}}),
                json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}),
                json!({"type": "BertProcessing", "sep": ["[SEP]", id], "cls": ["[CLS]", 0]}),
                json!({"type": "RobertaProcessing", "sep": ["</s>", 2], "cls": ["<s>", id], "trim_offsets": true, "add_prefix_space": true}),
                json!({"type": "Sequence", "processors": []}),
            ])
            .clone()
        }
    }
}

fn mutate(t: &mut Value, rng: &mut Rng) {
    match rng.below(12) {
        0..=3 => {
            let kind = *rng.pick(&["normalizer", "pre_tokenizer", "decoder", "post_processor"]);
            t[kind] = if rng.one_in(5) {
                json!(null)
            } else {
                component(rng, kind)
            };
        }
        4 => {
            // Vocabulary ids: huge, duplicated, or a hole.
            let Some(vocab) = t["model"]["vocab"].as_object_mut() else {
                return;
            };
            let keys: Vec<String> = vocab.keys().cloned().collect();
            if keys.is_empty() {
                return;
            }
            let k = rng.pick(&keys).clone();
            match rng.below(3) {
                0 => vocab[&k] = json!(rng.size() as u32),
                1 => vocab[&k] = json!(3),
                _ => {
                    vocab.remove(&k);
                }
            }
        }
        5 => {
            let Some(merges) = t["model"]["merges"]
                .as_array_mut()
                .filter(|m| !m.is_empty())
            else {
                return;
            };
            let i = rng.below(merges.len());
            merges[i] = rng
                .pick(&[
                    json!("a"),
                    json!("zz qq"),
                    json!(["x", "y"]),
                    json!("▁ ▁ ▁"),
                    json!(""),
                ])
                .clone();
        }
        6 => {
            let m = &mut t["model"];
            match rng.below(5) {
                0 => m["unk_token"] = json!(rng.pick(&["<nope>", "", "<unk>"])),
                1 => m["dropout"] = json!(rng.pick(&[0.5, 1.0, 0.0])),
                2 => m["byte_fallback"] = json!(rng.one_in(2)),
                3 => m["continuing_subword_prefix"] = json!("##"),
                _ => m["end_of_word_suffix"] = json!("</w>"),
            }
        }
        7 => {
            let Some(added) = t["added_tokens"].as_array_mut() else {
                return;
            };
            added.push(json!({
                "id": rng.size() as u32, "content": rng.text(3), "single_word": rng.one_in(2),
                "lstrip": rng.one_in(2), "rstrip": rng.one_in(2), "normalized": rng.one_in(2),
                "special": rng.one_in(2)
            }));
        }
        8 => {
            t["truncation"] = json!({"direction": "Right", "max_length": rng.size() % 5,
                "strategy": rng.pick(&["LongestFirst", "OnlyFirst", "OnlySecond"]), "stride": rng.size() % 9});
        }
        9 => {
            t["padding"] = json!({"strategy": {"Fixed": rng.size() % 4096}, "direction": "Left",
                "pad_to_multiple_of": rng.size() % 3, "pad_id": rng.size() as u32,
                "pad_type_id": 0, "pad_token": "<pad>"});
        }
        10 => {
            // Another model type over the same vocabulary.
            let vocab = t["model"]["vocab"].clone();
            t["model"] = rng
                .pick(&[
                    json!({"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}),
                    json!({"type": "WordPiece", "vocab": vocab, "unk_token": "<unk>", "continuing_subword_prefix": "##", "max_input_chars_per_word": 3}),
                    json!({"type": "WordLevel", "vocab": {}, "unk_token": "<unk>"}),
                    json!({"type": "Unigram", "unk_id": 0, "vocab": [["<unk>", 0.0], ["a", -1.0]], "byte_fallback": true}),
                    json!({"type": "Unigram", "unk_id": 5, "vocab": [], "byte_fallback": false}),
                ])
                .clone();
        }
        _ => {
            if let Some(vocab) = t["model"]["vocab"].as_object_mut() {
                vocab.clear();
            }
        }
    }
}

#[test]
fn tokenizer_json() {
    let base: Value = serde_json::from_str(include_str!(
        "../../../../models/stories260K/tokenizer.json"
    ))
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    run("tokenizer.json", 250, |rng, i| {
        let mut t = base.clone();
        for _ in 0..1 + rng.below(3) {
            mutate(&mut t, rng);
        }
        let path = dir.path().join(format!("tok-{i}.json"));
        std::fs::write(&path, t.to_string()).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let r = Tokenizer::from_file(&path).and_then(|tok| {
            for _ in 0..4 {
                let text = rng.text(40);
                let ids = tok.encode(&text, rng.one_in(2))?;
                tok.decode(&ids, rng.one_in(2))?;
            }
            let ids: Vec<u32> = (0..8).map(|_| rng.size() as u32).collect();
            let _ = tok.decode(&ids, false);
            Ok(())
        });
        let _ = std::fs::remove_file(&path);
        Verdict::of(r, &[&name, "tokenizer"])
    });
}
