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
//!
//! And one with glibc's: a training step allocates and frees its activations (hundreds of MB)
//! every step. glibc hands the freed top of the heap back to the kernel once it exceeds
//! `M_TRIM_THRESHOLD` (at most 64 MiB by default), so the next step faults every page in again
//! and the kernel zeroes each one: `clear_page_erms` and the fault path were ≈ 5 % of a LoRA
//! step's samples. [`keep_freed_memory`] keeps it for the next step; [`release_freed_memory`]
//! gives it back when a run ends, so an idle app does not sit on its peak.

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
    keep_freed_memory();
}

/// glibc: freed memory stays in the process for reuse (no trim of the heap's top), and blocks
/// below 32 MiB (glibc's largest mmap threshold) come from the heap rather than fresh mappings.
/// A fixed threshold also stops glibc's own adaptation, which only ever raises it after the
/// first step has paid the faults. Peak RSS is unchanged: it is the step's own high-water mark.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only sets allocator parameters; it is safe to call at any time.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

/// Returns the memory freed by a finished run to the kernel (the counterpart of
/// [`keep_freed_memory`]); a no-op where the allocator is not glibc's.
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` walks the allocator's own free lists under its locks.
    unsafe {
        libc::malloc_trim(0);
    }
}
