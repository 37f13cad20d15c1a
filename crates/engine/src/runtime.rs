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
/// `CANDLE_BARRIER_POOL_SPIN_LIMIT` unless the user already set them, and gives glibc one
/// malloc arena for all threads ([`one_malloc_arena`]).
///
/// Call it first thing in `main`, while the process has one thread: changing the environment
/// is only sound then, and threads take their arena at their first allocation.
pub fn configure_cpu_threads() {
    one_malloc_arena();
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = candle_core::utils::get_num_threads();
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "1000");
    }
}

/// Runs `f` on a thread of a thread pool of its own (as many threads as the global pool),
/// the caller's thread waiting: a long loop of parallel ops — a training run, a generation —
/// then starts each op's parallel part on its own thread instead of handing all of it to a
/// pool from outside and sleeping until it is done (a wake-up per op, ~500 per LoRA step on
/// SmolLM2). Its own pool rather than one thread of the global one: a worker of a shared pool
/// that waits for its own work may pick up another caller's whole loop from the queue and
/// run it to the end first (a chat reply stalled behind a training run). The pool's threads
/// end with the call. Falls back to the caller's thread if no thread can be started.
pub fn on_own_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let threads = candle_core::utils::get_num_threads();
    match rayon::ThreadPoolBuilder::new().num_threads(threads).build() {
        Ok(pool) => pool.install(f),
        Err(_) => f(),
    }
}

/// Every thread allocates from glibc's main arena (`M_ARENA_MAX` = 1; by default each thread
/// that meets contention gets its own). A run's loop runs on a thread-pool thread
/// (`train::train`), while the model was loaded on the caller's: with an arena per thread, the
/// memory one frees cannot serve the other, and blocks too large for a thread arena's heap
/// fall back to fresh mappings. Measured with the loop on the pool (SmolLM2, `peft bench
/// train`): peak RSS QLoRA 549 → 607 MiB, bf16 LoRA 706 → 808 MiB, full fine-tuning 2.64 →
/// 3.04 GiB, and full fine-tuning 196 → 163–173 tokens/s; with one arena all are back to the
/// single-thread figures (546, 706 MiB, 2.63 GiB, 207–209 tokens/s). The step's allocations
/// are few and large, so the shared lock costs nothing measurable. Returns whether glibc took
/// the setting (false where the allocator is not glibc's).
pub fn one_malloc_arena() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only sets allocator parameters; it is safe to call at any time.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1) == 1
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    false
}

/// Runs holding a [`StepMemory`]: glibc's settings change on the first and go back after the
/// last (two runs in one app overlap).
static RUNS: std::sync::Mutex<usize> = std::sync::Mutex::new(0);

/// While alive, glibc keeps what a training step frees for the next step: no trim of the
/// heap's top and no fresh mappings (large blocks come from the heap too, so they are reused
/// rather than unmapped and faulted in again). Peak RSS is unchanged: it is the step's own
/// high-water mark (measured: 963 MiB LoRA, 2.63 GiB full fine-tuning, before and after).
/// Dropped by the last run, it returns the free memory to the kernel (`malloc_trim`) and sets
/// the thresholds glibc's own dynamic ones settle at once large blocks have been freed
/// (blocks up to 32 MiB from the heap, its top trimmed past 64 MiB free). Not glibc's start-up
/// values: any `mallopt` of them switches the dynamic adjustment off for good, and pinned at
/// 128 KiB every later op's output over that size was unmapped or trimmed on free and faulted
/// in again on the next (an elementwise op on 1.5 MiB ran at 13 GB/s instead of ~50, chat after
/// training paid the same). A no-op where the allocator is not glibc's.
pub struct StepMemory(());

impl StepMemory {
    pub fn keep() -> Self {
        let mut runs = RUNS.lock().unwrap_or_else(|e| e.into_inner());
        if *runs == 0 {
            set_glibc(i32::MAX, 0, MMAP_THRESHOLD_MAX);
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
            // Where glibc's dynamic thresholds end up (see above); up to 65,536 mappings, its
            // default.
            set_glibc(2 * MMAP_THRESHOLD_MAX, 65_536, MMAP_THRESHOLD_MAX);
            #[cfg(all(target_os = "linux", target_env = "gnu"))]
            // SAFETY: `malloc_trim` walks the allocator's own free lists under its locks.
            unsafe {
                libc::malloc_trim(0);
            }
        }
    }
}

/// The largest mmap threshold glibc's dynamic adjustment reaches on 64-bit Linux
/// (`DEFAULT_MMAP_THRESHOLD_MAX`, 32 MiB).
const MMAP_THRESHOLD_MAX: i32 = 32 << 20;

/// `M_TRIM_THRESHOLD`, `M_MMAP_MAX` and `M_MMAP_THRESHOLD`.
fn set_glibc(trim_threshold: i32, mmap_max: i32, mmap_threshold: i32) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only sets allocator parameters; it is safe to call at any time.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, trim_threshold);
        libc::mallopt(libc::M_MMAP_MAX, mmap_max);
        libc::mallopt(libc::M_MMAP_THRESHOLD, mmap_threshold);
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = (trim_threshold, mmap_max, mmap_threshold);
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    /// The number of arenas glibc reports (`<heap nr="…">` in `malloc_info`'s XML).
    fn arenas() -> usize {
        let (mut buf, mut len) = (std::ptr::null_mut(), 0usize);
        // SAFETY: open_memstream allocates the buffer it returns; malloc_info writes to the
        // stream, fclose flushes it and sets `buf`/`len`; the buffer is freed after the read.
        unsafe {
            let f = libc::open_memstream(&mut buf, &mut len);
            assert!(!f.is_null());
            assert_eq!(libc::malloc_info(0, f), 0);
            libc::fclose(f);
            let xml = std::slice::from_raw_parts(buf as *const u8, len);
            let n = String::from_utf8_lossy(xml).matches("<heap nr=").count();
            libc::free(buf.cast());
            n
        }
    }

    /// After [`super::one_malloc_arena`], new threads that allocate at once (which by default
    /// each get an arena of their own) add no arena: they share what exists.
    #[test]
    fn new_threads_share_the_existing_arenas() {
        assert!(super::one_malloc_arena());
        let before = arenas();
        let barrier = std::sync::Barrier::new(4);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    barrier.wait();
                    let v: Vec<Vec<u8>> = (0..64).map(|i| vec![i as u8; 4096]).collect();
                    barrier.wait();
                    std::hint::black_box(v);
                });
            }
        });
        assert_eq!(arenas(), before);
    }
}
