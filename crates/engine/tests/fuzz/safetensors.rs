//! safetensors headers and shard indexes: a valid two-tensor file, then a broken header length,
//! dtypes, shapes (overflowing, zero, huge), data offsets (reversed, overlapping, past the
//! end), metadata, or bytes; and `model.safetensors.index.json` files with empty, odd or
//! escaping shard names. Each opened file has all its tensors read.

use crate::harness::{run, Rng, Verdict};
use peft_engine::model::tensors::{SafetensorsSource, TensorSource};
use serde_json::{json, Value};
use std::path::Path;

fn header(rng: &mut Rng) -> (Value, usize) {
    let mut h = json!({
        "__metadata__": {"format": "pt"},
        "a.weight": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
        "b.bias": {"dtype": "F16", "shape": [4], "data_offsets": [24, 32]},
    });
    let names = ["a.weight", "b.bias"];
    let mut len = 32usize;
    for _ in 0..1 + rng.below(3) {
        let t = *rng.pick(&names);
        if !h[t].is_object() {
            continue;
        }
        match rng.below(9) {
            0 => {
                h[t]["dtype"] = json!(rng
                    .pick(&["F32", "BF16", "F64", "I64", "U8", "BOOL", "F8_E4M3", "Q4", "", "f32"]))
            }
            1 => {
                let dims: Vec<u64> = (0..rng.below(5)).map(|_| rng.size()).collect();
                h[t]["shape"] = json!(dims);
            }
            2 => h[t]["data_offsets"] = json!([rng.size(), rng.size()]),
            3 => h[t]["data_offsets"] = json!([32, 24]),
            4 => h[t] = json!(rng.pick(&["x", "1"])),
            5 => h["__metadata__"] = json!({"k": [1, 2]}),
            6 => h[t]["shape"] = json!([-1, 3]),
            7 => len = rng.below(64),
            _ => {
                h[format!("extra{}", rng.below(5))] =
                    json!({"dtype": "F32", "shape": [rng.size()], "data_offsets": [0, rng.size()]})
            }
        }
    }
    (h, len)
}

fn write_file(path: &Path, rng: &mut Rng) {
    let (h, data_len) = header(rng);
    let mut text = h.to_string();
    if rng.one_in(8) {
        text.truncate(rng.below(text.len()));
    }
    let mut bytes = Vec::new();
    let n = match rng.below(10) {
        0 => rng.size(),
        1 => text.len() as u64 + 1 + rng.below(100) as u64,
        _ => text.len() as u64,
    };
    bytes.extend(n.to_le_bytes());
    bytes.extend(text.as_bytes());
    bytes.extend(rng.bytes(data_len));
    if rng.one_in(6) {
        bytes.truncate(rng.below(bytes.len()));
    }
    std::fs::write(path, bytes).unwrap();
}

fn read_all(src: &SafetensorsSource) -> peft_engine::Result<()> {
    for name in src.names() {
        let _ = src.shape(&name);
        src.load(&name)?;
    }
    let _ = src.label();
    let _ = src.dtype_summary();
    Ok(())
}

#[test]
fn safetensors_headers() {
    let dir = tempfile::tempdir().unwrap();
    run("safetensors", 400, |rng, i| {
        let path = dir.path().join(format!("case-{i}.safetensors"));
        write_file(&path, rng);
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let r = SafetensorsSource::open(std::slice::from_ref(&path)).and_then(|s| read_all(&s));
        let _ = std::fs::remove_file(&path);
        Verdict::of(r, &[&name])
    });
}

#[test]
fn shard_indexes() {
    let dir = tempfile::tempdir().unwrap();
    run("safetensors-index", 150, |rng, i| {
        let model = dir.path().join(format!("m{i}"));
        std::fs::create_dir_all(&model).unwrap();
        write_file(&model.join("shard-1.safetensors"), rng);
        let mut map = serde_json::Map::new();
        for _ in 0..rng.below(4) {
            let file = match rng.below(8) {
                0 => json!("../outside.safetensors"),
                1 => json!("/etc/hostname"),
                2 => json!(""),
                3 => json!(7),
                4 => json!("sub/../../x"),
                5 => json!("missing.safetensors"),
                _ => json!("shard-1.safetensors"),
            };
            map.insert(format!("t{}", rng.below(3)), file);
        }
        let index = match rng.below(6) {
            0 => json!({"weight_map": []}),
            1 => json!({}),
            _ => json!({"metadata": {}, "weight_map": map}),
        };
        std::fs::write(
            model.join("model.safetensors.index.json"),
            index.to_string(),
        )
        .unwrap();
        let r = SafetensorsSource::open_dir(&model).and_then(|s| read_all(&s));
        let _ = std::fs::remove_dir_all(&model);
        Verdict::of(r, &[&format!("m{i}")])
    });
}
