//! Fixed-width integer fields of on-disk structures, defined once per
//! structure as a table of named fields (name, offset, width, byte order)
//! and used by the parser, the writer and the mutators alike, so the three
//! can never disagree about where a field lies.
//!
//! Every access is bounds checked: a field past the end of a buffer reads as
//! zero and is not written. Offsets are constants of the format and callers
//! size their buffers to hold them, so that case never happens on the paths
//! that matter; it is the no-panic rule for the paths that do not.

use std::marker::PhantomData;

/// Byte order of a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endian {
    /// Most significant byte first (qcow2).
    Big,
    /// Least significant byte first (QED, Parallels).
    Little,
}

impl Endian {
    /// The machine's own byte order: vhost-user numbers travel in it.
    pub const NATIVE: Endian = if cfg!(target_endian = "big") {
        Endian::Big
    } else {
        Endian::Little
    };
}

/// The unsigned integer types a field can hold.
pub trait Uint: Copy {
    /// Width in bytes.
    const WIDTH: usize;
    /// The low `WIDTH` bytes of `v`.
    fn from_u64(v: u64) -> Self;
    /// The value, widened.
    fn to_u64(self) -> u64;
}

macro_rules! uint {
    ($($t:ty),*) => {$(
        impl Uint for $t {
            const WIDTH: usize = std::mem::size_of::<$t>();
            fn from_u64(v: u64) -> Self {
                v as $t
            }
            fn to_u64(self) -> u64 {
                self as u64
            }
        }
    )*};
}
uint!(u8, u16, u32, u64);

/// Reads a `T` at byte `at` of `b` in byte order `e`; zero when it does not fit.
pub fn read<T: Uint>(b: &[u8], at: usize, e: Endian) -> T {
    let Some(s) = at.checked_add(T::WIDTH).and_then(|end| b.get(at..end)) else {
        return T::from_u64(0);
    };
    let v = match e {
        Endian::Big => s.iter().fold(0u64, |v, &x| v << 8 | x as u64),
        Endian::Little => s.iter().rev().fold(0u64, |v, &x| v << 8 | x as u64),
    };
    T::from_u64(v)
}

/// Stores `v` at byte `at` of `b` in byte order `e`; nothing when it does not fit.
pub fn write<T: Uint>(b: &mut [u8], at: usize, e: Endian, v: T) {
    let Some(s) = at.checked_add(T::WIDTH).and_then(|end| b.get_mut(at..end)) else {
        return;
    };
    let v = v.to_u64();
    let n = s.len();
    for (i, x) in s.iter_mut().enumerate() {
        let shift = match e {
            Endian::Big => 8 * (n - 1 - i),
            Endian::Little => 8 * i,
        };
        *x = (v >> shift) as u8;
    }
}

/// Appends `v` to `out` in byte order `e` (for tables built entry by entry).
pub fn push<T: Uint>(out: &mut Vec<u8>, e: Endian, v: T) {
    let at = out.len();
    out.resize(at + T::WIDTH, 0);
    write(out, at, e, v);
}

/// One field of an on-disk structure: its spec name, its offset from the
/// start of the structure, its byte order; its width is `T`'s.
#[derive(Debug, Clone, Copy)]
pub struct Field<T> {
    /// The field's name in the spec (and in the parsed structure).
    pub name: &'static str,
    /// Byte offset from the start of the structure.
    pub offset: usize,
    /// Byte order.
    pub endian: Endian,
    width: PhantomData<fn() -> T>,
}

impl<T: Uint> Field<T> {
    /// A field named `name` at byte `offset` of its structure.
    pub const fn new(name: &'static str, offset: usize, endian: Endian) -> Self {
        Field {
            name,
            offset,
            endian,
            width: PhantomData,
        }
    }
    /// The field's value in a structure starting at byte 0 of `b`.
    pub fn get(&self, b: &[u8]) -> T {
        self.get_at(b, 0)
    }
    /// Stores the field in a structure starting at byte 0 of `b`.
    pub fn put(&self, b: &mut [u8], v: T) {
        self.put_at(b, 0, v)
    }
    /// The field's value in a structure starting at byte `base` of `b`.
    pub fn get_at(&self, b: &[u8], base: usize) -> T {
        base.checked_add(self.offset)
            .map_or(T::from_u64(0), |at| read(b, at, self.endian))
    }
    /// Stores the field in a structure starting at byte `base` of `b`.
    pub fn put_at(&self, b: &mut [u8], base: usize, v: T) {
        if let Some(at) = base.checked_add(self.offset) {
            write(b, at, self.endian, v)
        }
    }
    /// The field's offset as a file offset, for findings about a structure
    /// at the start of the file (a header).
    pub const fn pos(&self) -> u64 {
        self.offset as u64
    }
    /// The field's offset in the file, for findings, when its structure
    /// starts at file offset `base`.
    pub const fn at(&self, base: u64) -> u64 {
        base.saturating_add(self.offset as u64)
    }
    /// First byte past the field, from the start of its structure.
    pub const fn end(&self) -> usize {
        self.offset + T::WIDTH
    }
}

/// A field of any width, for code that walks a whole table (tests, dumps).
pub trait AnyField: Sync {
    /// The field's spec name.
    fn name(&self) -> &'static str;
    /// Byte offset from the start of the structure.
    fn offset(&self) -> usize;
    /// Width in bytes.
    fn width(&self) -> usize;
    /// The field's value, widened.
    fn get_u64(&self, b: &[u8]) -> u64;
    /// Stores the low `width` bytes of `v`.
    fn put_u64(&self, b: &mut [u8], v: u64);
}

impl<T: Uint> AnyField for Field<T> {
    fn name(&self) -> &'static str {
        self.name
    }
    fn offset(&self) -> usize {
        self.offset
    }
    fn width(&self) -> usize {
        T::WIDTH
    }
    fn get_u64(&self, b: &[u8]) -> u64 {
        self.get(b).to_u64()
    }
    fn put_u64(&self, b: &mut [u8], v: u64) {
        self.put(b, T::from_u64(v))
    }
}

/// Declares a structure's field table: one `Field` const per field and
/// `ALL`, every field in order. `field_table!(Big; /// doc NAME: u32 = "name" @ 4, ...)`.
macro_rules! field_table {
    ($endian:ident; $( $(#[$m:meta])* $name:ident: $t:ty = $s:literal @ $off:expr, )*) => {
        $( $(#[$m])* pub const $name: $crate::field::Field<$t> =
            $crate::field::Field::new($s, $off, $crate::field::Endian::$endian); )*
        /// Every field of this table, in offset order.
        pub const ALL: &[&dyn $crate::field::AnyField] = &[$(&$name),*];
    };
}
pub(crate) use field_table;

// The byte-field helpers for table entries (L1/L2 entries, refcounts, BAT
// entries) that are not fields of a header: one implementation, the one above.

/// Whether every byte of `b` is zero, tested 64 bytes per step: refcount
/// blocks and clusters of up to 2 MiB are tested this way, and a byte-wise
/// loop costs a traced comparison per byte under the fuzzers'
/// instrumentation (a fifth of qcow2_check's time) and 8 times the work
/// without it.
pub(crate) fn is_zero(b: &[u8]) -> bool {
    let mut blocks = b.chunks_exact(64);
    let mut acc = 0u64;
    for block in blocks.by_ref() {
        for word in block.chunks_exact(8) {
            acc |= u64::from_ne_bytes(word.try_into().unwrap_or([0xff; 8]));
        }
        if acc != 0 {
            return false;
        }
    }
    acc | blocks.remainder().iter().fold(0u64, |a, &x| a | x as u64) == 0
}

/// Big-endian u16 at `at`; zero when it does not fit.
pub(crate) fn be_u16(b: &[u8], at: usize) -> u16 {
    read(b, at, Endian::Big)
}
/// Big-endian u32 at `at`; zero when it does not fit.
pub(crate) fn be_u32(b: &[u8], at: usize) -> u32 {
    read(b, at, Endian::Big)
}
/// Big-endian u64 at `at`; zero when it does not fit.
pub(crate) fn be_u64(b: &[u8], at: usize) -> u64 {
    read(b, at, Endian::Big)
}
/// Little-endian u32 at `at`; zero when it does not fit.
pub(crate) fn le_u32(b: &[u8], at: usize) -> u32 {
    read(b, at, Endian::Little)
}
/// Little-endian u64 at `at`; zero when it does not fit.
pub(crate) fn le_u64(b: &[u8], at: usize) -> u64 {
    read(b, at, Endian::Little)
}
/// Stores a big-endian u64 at `at`; nothing when it does not fit.
pub(crate) fn put_be64(b: &mut [u8], at: usize, v: u64) {
    write(b, at, Endian::Big, v)
}
/// Stores a little-endian u32 at `at`; nothing when it does not fit.
pub(crate) fn put_le32(b: &mut [u8], at: usize, v: u32) {
    write(b, at, Endian::Little, v)
}
/// Stores a little-endian u64 at `at`; nothing when it does not fit.
pub(crate) fn put_le64(b: &mut [u8], at: usize, v: u64) {
    write(b, at, Endian::Little, v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_zero_agrees_with_a_byte_wise_scan() {
        for len in [0usize, 1, 7, 8, 63, 64, 65, 130, 4096] {
            let mut b = vec![0u8; len];
            assert!(is_zero(&b), "{len} zeros");
            for at in 0..len {
                b[at] = 0x80;
                assert!(!is_zero(&b), "len {len}, byte {at} set");
                b[at] = 0;
            }
        }
    }

    #[test]
    fn reads_and_writes_agree_with_std_byte_order() {
        let mut b = [0u8; 12];
        write(&mut b, 1, Endian::Big, 0x0102_0304u32);
        assert_eq!(b[1..5], 0x0102_0304u32.to_be_bytes());
        assert_eq!(read::<u32>(&b, 1, Endian::Big), 0x0102_0304);
        write(&mut b, 4, Endian::Little, 0x1122_3344_5566_7788u64);
        assert_eq!(b[4..12], 0x1122_3344_5566_7788u64.to_le_bytes());
        assert_eq!(read::<u64>(&b, 4, Endian::Little), 0x1122_3344_5566_7788);
        assert_eq!(read::<u16>(&b, 10, Endian::Big), 0x2211);
    }

    #[test]
    fn out_of_bounds_reads_zero_and_writes_nothing() {
        let mut b = [7u8; 4];
        assert_eq!(read::<u32>(&b, 1, Endian::Big), 0);
        assert_eq!(read::<u64>(&b, usize::MAX, Endian::Little), 0);
        write(&mut b, 2, Endian::Big, u32::MAX);
        write(&mut b, usize::MAX, Endian::Big, 1u8);
        assert_eq!(b, [7; 4]);
        let f: Field<u32> = Field::new("f", 2, Endian::Big);
        assert_eq!(f.get_at(&b, usize::MAX), 0);
    }

    #[test]
    fn push_appends_in_order() {
        let mut v = Vec::new();
        push(&mut v, Endian::Big, 0xabcdu16);
        push(&mut v, Endian::Little, 0xabcdu16);
        assert_eq!(v, [0xab, 0xcd, 0xcd, 0xab]);
    }
}
