//! After a run ends (`runtime::StepMemory` dropped), glibc keeps serving large blocks from its
//! heap and keeps their pages: with its thresholds pinned at the 128 KiB start-up values, every
//! later op's output over that size was mapped, faulted in, zeroed and unmapped again per call
//! (the planner's elementwise probe read 13 GB/s instead of ~90, chat after training paid the
//! same). Its own process: glibc's counters are process-wide.

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn after_a_run_large_blocks_come_from_the_heap_and_are_not_trimmed_on_free() {
    use peft_engine::runtime::StepMemory;
    drop(StepMemory::keep());
    const BLOCK: usize = 4 << 20;
    for round in 0..5 {
        let v = vec![1u8; BLOCK];
        std::hint::black_box(&v);
        // SAFETY: `mallinfo2` only reads the allocator's statistics.
        let held = unsafe { libc::mallinfo2() };
        assert_eq!(
            held.hblks, 0,
            "round {round}: a 4 MiB block was mapped on its own"
        );
        drop(v);
        // SAFETY: as above.
        let freed = unsafe { libc::mallinfo2() };
        assert!(
            freed.arena >= BLOCK,
            "round {round}: the heap shrank to {} bytes on free (trimmed)",
            freed.arena
        );
    }
}
