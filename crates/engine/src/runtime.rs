//! Process-wide CPU settings, applied once at start-up by each front end (before any thread
//! exists, because they work through environment variables that candle and rayon read lazily).
//!
//! Two measured problems with candle's defaults on small machines (`perf record` of a LoRA step
//! of SmolLM2-135M on 2 cores):
//! - candle asks for its thread count on every matmul and, when no variable pins it, parses
//!   `/proc/cpuinfo` each time (≈ 1 % of a step in the kernel's `show_cpuinfo`);
//! - after every elementwise op, candle's barrier-pool worker spins for 25,000 pause
//!   instructions (≈ 1 ms) before parking. The GEMM that usually follows runs on rayon's threads,
//!   so on a 2-core machine the spinning worker takes a core from it: the spin showed as 17 % of
//!   all CPU samples. 1,000 spins (tens of µs) still bridge back-to-back elementwise ops.

/// Sets `RAYON_NUM_THREADS` (to candle's own choice, the physical core count) and
/// `CANDLE_BARRIER_POOL_SPIN_LIMIT` unless the user already set them.
///
/// Call it first thing in `main`, while the process has one thread: changing the environment
/// is only sound then.
pub fn configure_cpu_threads() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = candle_core::utils::get_num_threads();
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "1000");
    }
}
