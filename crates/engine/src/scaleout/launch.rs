//! Multi-GPU launch files: a DeepSpeed ZeRO config (Axolotl, LLaMA-Factory) or an accelerate
//! config that enables DeepSpeed (TRL).
//!
//! The stage follows the method: adapters (LoRA, QLoRA, selective) keep a full copy of the
//! frozen base on every GPU and shard optimizer state and gradients (ZeRO-2, which also works
//! with a 4-bit base); full fine-tuning shards the weights too (ZeRO-3), gathering them in 16
//! bits when saving so the written model is whole. Batch sizes, accumulation, clipping and
//! precision are `"auto"`: the Trainer fills them in from the engine config, so the launch file
//! never contradicts it.

use crate::peft::method::Method;
use crate::scaleout::yaml::{Doc, Y};
use serde_json::json;

/// ZeRO stage for a method.
pub fn zero_stage(method: &Method) -> u8 {
    match method {
        Method::Full => 3,
        _ => 2,
    }
}

/// The DeepSpeed config file's name for a method.
pub fn deepspeed_file(method: &Method) -> String {
    format!("ds_zero{}.json", zero_stage(method))
}

/// A DeepSpeed JSON config for the Hugging Face integration.
pub fn deepspeed_json(method: &Method) -> String {
    let stage = zero_stage(method);
    let mut zero = json!({
        "stage": stage,
        "overlap_comm": true,
        "contiguous_gradients": true,
        "reduce_bucket_size": "auto",
    });
    if stage == 3 {
        zero["stage3_prefetch_bucket_size"] = json!("auto");
        zero["stage3_param_persistence_threshold"] = json!("auto");
        zero["stage3_gather_16bit_weights_on_model_save"] = json!(true);
    } else {
        zero["allgather_partitions"] = json!(true);
        zero["allgather_bucket_size"] = json!(5e8);
        zero["reduce_scatter"] = json!(true);
    }
    let ds = json!({
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "zero_allow_untested_optimizer": true,
        "bf16": { "enabled": "auto" },
        "fp16": { "enabled": "auto" },
        "zero_optimization": zero,
    });
    serde_json::to_string_pretty(&ds).expect("json serialises") + "\n"
}

/// The accelerate config file's name for a method.
pub fn accelerate_file(method: &Method) -> String {
    format!("accelerate_zero{}.yaml", zero_stage(method))
}

/// An accelerate config that launches with DeepSpeed at the method's ZeRO stage; the number
/// of processes is given on the command line.
pub fn accelerate_yaml(method: &Method) -> String {
    let stage = zero_stage(method);
    let mut d = Doc::new();
    d.comment("accelerate launch config (DeepSpeed). Give --num_processes N on the command line.");
    d.set("compute_environment", Y::str("LOCAL_MACHINE"));
    d.set("distributed_type", Y::str("DEEPSPEED"));
    d.set(
        "deepspeed_config",
        Y::map(vec![
            ("deepspeed_multinode_launcher", Y::str("standard")),
            ("offload_optimizer_device", Y::str("none")),
            ("offload_param_device", Y::str("none")),
            ("zero3_init_flag", Y::Bool(stage == 3)),
            ("zero3_save_16bit_model", Y::Bool(stage == 3)),
            ("zero_stage", Y::Int(stage as i64)),
        ]),
    );
    d.set("mixed_precision", Y::str("bf16"));
    d.set("machine_rank", Y::Int(0));
    d.set("num_machines", Y::Int(1));
    d.set("num_processes", Y::Int(1));
    d.set("rdzv_backend", Y::str("static"));
    d.set("same_network", Y::Bool(true));
    d.set("use_cpu", Y::Bool(false));
    d.to_yaml()
}
