//! `peft hardware [--json]`: what this machine offers for training.

use clap::Args;
use peft_engine::hardware::Hardware;
use peft_engine::memory::format_bytes;

#[derive(Args)]
pub struct HardwareArgs {
    /// Print the snapshot as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: HardwareArgs) -> peft_engine::Result<()> {
    let hw = Hardware::scan();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&hw).unwrap_or_default());
        return Ok(());
    }
    let f = &hw.cpu.features;
    let flags: Vec<&str> = [
        ("AVX2", f.avx2),
        ("AVX-512", f.avx512f),
        ("FMA", f.fma),
        ("NEON", f.neon),
        ("AMX-BF16", f.amx_bf16),
        ("AVX512-BF16", f.avx512_bf16),
    ]
    .iter()
    .filter(|(_, on)| *on)
    .map(|(n, _)| *n)
    .collect();
    println!(
        "CPU      {} ({})",
        if hw.cpu.model.is_empty() {
            "unknown"
        } else {
            &hw.cpu.model
        },
        hw.cpu.arch
    );
    println!(
        "cores    {} physical, {} logical",
        hw.cpu.physical_cores, hw.cpu.logical_cores
    );
    println!(
        "SIMD     {}",
        if flags.is_empty() {
            "none detected".into()
        } else {
            flags.join(", ")
        }
    );
    println!(
        "bf16     {} (train --bf16-compute)",
        peft_engine::ops::Bf16Backend::detect().describe()
    );
    println!(
        "RAM      {} total, {} available",
        format_bytes(hw.memory.total_bytes),
        format_bytes(hw.memory.available_bytes)
    );
    println!(
        "swap     {} total, {} free",
        format_bytes(hw.memory.swap_total_bytes),
        format_bytes(hw.memory.swap_free_bytes)
    );
    let b = &hw.gpu.backends;
    println!(
        "backends CPU{}{}",
        if b.cuda { ", CUDA" } else { "" },
        if b.metal { ", Metal" } else { "" }
    );
    if hw.gpu.gpus.is_empty() {
        println!("GPUs     none");
    }
    for g in &hw.gpu.gpus {
        println!(
            "GPU {}    {} — {} total, {} free{}",
            g.index,
            g.name,
            format_bytes(g.total_bytes),
            format_bytes(g.free_bytes),
            if g.unified_memory {
                " (unified with RAM)"
            } else {
                ""
            }
        );
    }
    for n in &hw.gpu.notes {
        println!("note     {n}");
    }
    Ok(())
}
