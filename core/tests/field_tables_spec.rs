//! The field tables against the specs themselves: every field of the qcow2,
//! QED and Parallels header tables sits where the spec text in
//! specs/upstream/ puts it, with the spec's width. The offsets are read out
//! of the spec files (the "A - B: name" layouts of qcow2.rst and
//! parallels.rst, the C struct of qed_spec.rst), not copied into the test.

use qconform_core::field::AnyField;
use qconform_core::{parallels, qcow2, qed};
use std::collections::BTreeMap;

fn spec(name: &str) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../specs/upstream/").to_owned() + name;
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// `name -> (first byte, last byte)` of the "A - B: name" lines between the
/// line containing `from` and the next line containing `to`.
fn byte_ranges(text: &str, from: &str, to: &str) -> BTreeMap<String, (usize, usize)> {
    let mut out = BTreeMap::new();
    let start = text
        .find(from)
        .unwrap_or_else(|| panic!("{from} not in spec"));
    let body = &text[start..];
    let end = body.find(to).unwrap_or(body.len());
    for line in body[..end].lines() {
        let l = line.trim().trim_start_matches("Byte").trim();
        let Some((range, name)) = l.split_once(':') else {
            continue;
        };
        // "A - B: name", or "A: name" for a one-byte field.
        let (a, b) = range.split_once('-').unwrap_or((range, range));
        let (Ok(a), Ok(b)) = (a.trim().parse(), b.trim().parse()) else {
            continue;
        };
        let name = name.split_whitespace().next().unwrap_or("").to_owned();
        out.entry(name).or_insert((a, b));
    }
    out
}

fn check(what: &str, table: &[&dyn AnyField], layout: &BTreeMap<String, (usize, usize)>) {
    assert!(!layout.is_empty(), "{what}: no layout found in the spec");
    for f in table {
        let Some(&(a, b)) = layout.get(f.name()) else {
            panic!(
                "{what}: field {} is not in the spec's layout {layout:?}",
                f.name()
            );
        };
        assert_eq!(
            (f.offset(), f.offset() + f.width() - 1),
            (a, b),
            "{what}: {} is bytes {a}-{b} in the spec",
            f.name()
        );
    }
}

#[test]
fn qcow2_header_table_is_the_specs_layout() {
    let layout = byte_ranges(
        &spec("qcow2.rst"),
        "Byte  0 -  3:   magic",
        "\nHeader extensions\n",
    );
    check("qcow2 header", qcow2::header::field::ALL, &layout);
}

#[test]
fn parallels_header_table_is_the_specs_layout() {
    let layout = byte_ranges(
        &spec("parallels.rst"),
        "0 - 15:    magic",
        "\nFormat Extension\n",
    );
    check("parallels header", parallels::header::field::ALL, &layout);
}

#[test]
fn qed_header_table_is_the_specs_struct() {
    // Offsets follow from the struct's field order and types (no padding:
    // every field is naturally aligned, as QEMU's QEDHeader is packed).
    let text = spec("qed_spec.rst");
    let start = text.find("Header {").expect("QED header struct");
    let body = &text[start..];
    let body = &body[..body.find('}').expect("end of struct")];
    let mut layout = BTreeMap::new();
    let mut at = 0usize;
    for line in body.lines() {
        let l = line.trim();
        let width = if l.starts_with("uint32_t") {
            4
        } else if l.starts_with("uint64_t") {
            8
        } else {
            continue;
        };
        let name = l
            .split_whitespace()
            .nth(1)
            .unwrap_or("")
            .trim_end_matches(';')
            .to_owned();
        layout.insert(name, (at, at + width - 1));
        at += width;
    }
    check("qed header", qed::header::field::ALL, &layout);
}
