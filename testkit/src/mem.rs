//! A resolver serving one file from memory, under any name (the data or
//! backing file of a written image), shared by the core property tests.

use qconform_core::disk::{ReadError, Resolved, Resolver, Role};

pub struct Mem(pub Option<Vec<u8>>);

impl Resolver for Mem {
    fn open(&self, name: &str, _role: Role) -> Result<Resolved, ReadError> {
        let d = self
            .0
            .clone()
            .ok_or_else(|| ReadError::Open(format!("{name}: no such file")))?;
        Ok(Resolved {
            source: Box::new(d),
            key: name.into(),
            resolver: Box::new(Mem(None)),
        })
    }
}
