//! `cargo xtask bench`: filled in below.
pub fn run(_args: &[String]) -> Result<(), super::DynError> {
    Err("not yet".into())
}
