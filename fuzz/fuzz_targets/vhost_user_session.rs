#![cfg_attr(fuzzing, no_main)]

#[cfg(fuzzing)]
libfuzzer_sys::fuzz_target!(|data: &[u8]| qconform_fuzz::vhost_user_session(data));

// Conversation-aware mutations (fuzz/src/mutator.rs), libFuzzer's own otherwise.
#[cfg(fuzzing)]
libfuzzer_sys::fuzz_mutator!(|data: &mut [u8], size: usize, max_size: usize, seed: u32| {
    qconform_fuzz::mutator::mutate_session(data, size, max_size, seed, libfuzzer_sys::fuzzer_mutate)
});

#[cfg(not(fuzzing))]
fn main() {
    qconform_fuzz::replay_main(qconform_fuzz::vhost_user_session)
}
