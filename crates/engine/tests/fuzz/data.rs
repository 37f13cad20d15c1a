//! Datasets in every container (JSONL, JSON array, CSV, unknown extension) and record format,
//! with broken UTF-8, byte-order marks, CRLF, blank and truncated lines, wrong types, empty
//! conversations, unknown roles, very long rows and conversations of thousands of turns. A
//! file that loads has every example rendered and tokenised with the bundled model's template.

use crate::harness::{run, Rng, Verdict};
use peft_engine::data::formats::{load, LoadOptions};
use peft_engine::data::render::{RenderOptions, Renderer, TrainOn};
use serde_json::{json, Value};

fn turns(rng: &mut Rng, n: usize, share: bool) -> Value {
    let (rk, tk) = if share {
        ("from", "value")
    } else {
        ("role", "content")
    };
    let roles: &[&str] = if share {
        &["human", "gpt", "system", "robot", ""]
    } else {
        &["user", "assistant", "system", "tool", "", "Assistant"]
    };
    Value::Array(
        (0..n)
            .map(|i| {
                let mut t = json!({ rk: if rng.one_in(6) { *rng.pick(roles) } else { roles[i % 2] }, tk: rng.text(12) });
                if rng.one_in(25) {
                    t[tk] = json!(rng.size());
                }
                if rng.one_in(40) {
                    t = json!(rng.pick(&["x", "[]"]));
                }
                t
            })
            .collect(),
    )
}

fn row(rng: &mut Rng, format: usize) -> Value {
    let big = rng.one_in(60);
    let text = |rng: &mut Rng| {
        if big {
            "x".repeat(peft_engine::limits::MAX_ROW_BYTES + 10)
        } else {
            rng.text(30)
        }
    };
    let mut r = match format {
        0 => json!({"instruction": text(rng), "input": rng.text(5), "output": rng.text(10)}),
        1 => {
            let n = if rng.one_in(30) {
                *rng.pick(&[2000, 3000])
            } else {
                rng.below(7)
            };
            json!({"messages": turns(rng, n, false)})
        }
        2 => {
            let n = rng.below(5);
            json!({"conversations": turns(rng, n, true)})
        }
        3 => json!({"prompt": text(rng), "completion": rng.text(10)}),
        4 => json!({"question": rng.text(10), "answer": text(rng)}),
        _ => json!({"text": text(rng)}),
    };
    if rng.one_in(12) {
        let keys: Vec<String> = r.as_object().unwrap().keys().cloned().collect();
        let k = rng.pick(&keys).clone();
        r[&k] = rng
            .pick(&[json!(null), json!(1), json!([]), json!({})])
            .clone();
    }
    if rng.one_in(20) {
        r = rng.pick(&[json!([1]), json!("row"), json!(null)]).clone();
    }
    r
}

fn csv_cell(v: &Value) -> String {
    let s = match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn file(rng: &mut Rng) -> (Vec<u8>, &'static str) {
    let format = rng.below(6);
    let rows: Vec<Value> = (0..1 + rng.below(6)).map(|_| row(rng, format)).collect();
    let ext = *rng.pick(&["jsonl", "json", "csv", "txt"]);
    let mut text = match ext {
        "json" => Value::Array(rows.clone()).to_string(),
        "csv" => {
            let keys: Vec<String> = rows
                .iter()
                .find_map(|r| r.as_object().map(|o| o.keys().cloned().collect()))
                .unwrap_or_else(|| vec!["text".into()]);
            let mut out = keys.join(",") + "\n";
            for r in &rows {
                let cells: Vec<String> = keys.iter().map(|k| csv_cell(&r[k])).collect();
                out += &(cells.join(",") + if rng.one_in(5) { "\r\n" } else { "\n" });
            }
            out
        }
        _ => rows.iter().map(|r| r.to_string() + "\n").collect(),
    };
    if rng.one_in(10) {
        text.insert(0, '\u{feff}');
    }
    if rng.one_in(10) {
        let mut cut = text.len().saturating_sub(rng.below(40));
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    let mut bytes = text.into_bytes();
    if rng.one_in(8) && !bytes.is_empty() {
        let at = rng.below(bytes.len());
        bytes[at] = *rng.pick(&[0xff, 0xc3, 0x80, 0xed]);
    }
    if rng.one_in(30) {
        bytes.clear();
    }
    (bytes, ext)
}

#[test]
fn datasets() {
    let model = peft_engine::model::loaded::LoadedModel::open(
        &peft_engine::model::load::ModelSource::Bundled,
        Default::default(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    run("datasets", 300, |rng, i| {
        let (bytes, ext) = file(rng);
        let path = dir.path().join(format!("data-{i}.{ext}"));
        std::fs::write(&path, bytes).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let opts = LoadOptions {
            skip_bad_rows: rng.one_in(3),
        };
        let r = load(&path, &opts).and_then(|ds| {
            let ro = RenderOptions {
                max_len: 64,
                train_on: if rng.one_in(3) {
                    TrainOn::All
                } else {
                    TrainOn::Assistant
                },
            };
            let r = Renderer::new(&model.tokenizer, &model.template, ro)?;
            for ex in &ds.examples {
                r.build(ex)?;
            }
            Ok(())
        });
        let _ = std::fs::remove_file(&path);
        Verdict::of(r, &[&name, "chat template"])
    });
}
