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
//! `M_TRIM_THRESHOLD`, and serves blocks over its mmap threshold (at most 32 MiB) from fresh
//! mappings it unmaps on free, so the next step faults every page in again and the kernel
//! zeroes each one: `clear_page_erms` and the fault path were ≈ 5 % of a LoRA step's samples and
//! 6 % of a full fine-tuning step's (its 113 MB embedding gradients). [`StepMemory`] keeps that
//! memory in the process while a run trains, and gives it back when the run ends, so an app
//! that goes on to chat or load another model does not sit on the run's peak.

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

/// Runs holding a [`StepMemory`]: glibc's settings change on the first and go back after the
/// last (two runs in one app overlap).
static RUNS: std::sync::Mutex<usize> = std::sync::Mutex::new(0);

/// While alive, glibc keeps what a training step frees for the next step: no trim of the
/// heap's top and no fresh mappings (large blocks come from the heap too, so they are reused
/// rather than unmapped and faulted in again). Peak RSS is unchanged: it is the step's own
/// high-water mark (measured: 963 MiB LoRA, 2.63 GiB full fine-tuning, before and after).
/// Dropped by the last run, it restores glibc's defaults and returns the free memory to the
/// kernel. A no-op where the allocator is not glibc's.
pub struct StepMemory(());

impl StepMemory {
    pub fn keep() -> Self {
        let mut runs = RUNS.lock().unwrap_or_else(|e| e.into_inner());
        if *runs == 0 {
            set_glibc(i32::MAX, 0);
        }
        *runs += 1;
        StepMemory(())
    }
}

impl Drop for StepMemory {
    fn drop(&mut self) {
        let mut runs = RUNS.lock().unwrap_or_else(|e| e.into_inner());
        *runs = runs.saturating_sub(1);
        if *runs == 0 {
            // glibc's documented defaults: a 128 KiB trim threshold, up to 65,536 mappings.
            set_glibc(128 * 1024, 65_536);
            #[cfg(all(target_os = "linux", target_env = "gnu"))]
            // SAFETY: `malloc_trim` walks the allocator's own free lists under its locks.
            unsafe {
                libc::malloc_trim(0);
            }
        }
    }
}

/// `M_TRIM_THRESHOLD` and `M_MMAP_MAX`.
fn set_glibc(trim_threshold: i32, mmap_max: i32) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only sets allocator parameters; it is safe to call at any time.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, trim_threshold);
        libc::mallopt(libc::M_MMAP_MAX, mmap_max);
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = (trim_threshold, mmap_max);
}
