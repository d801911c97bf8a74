#![cfg_attr(fuzzing, no_main)]
#[cfg(not(fuzzing))]
fn main() {}
