#![cfg_attr(fuzzing, no_main)]

#[cfg(fuzzing)]
libfuzzer_sys::fuzz_target!(|data: &[u8]| qconform_fuzz::differential_qcow2rs(data));

#[cfg(not(fuzzing))]
fn main() {
    qconform_fuzz::replay_main(qconform_fuzz::differential_qcow2rs)
}
