//! The field tables are shared by the writer, the parser and the mutators:
//! a value stored through a table into a writer-made image is the value the
//! parser returns for that field (and no other field moves), and every
//! header byte a mutator edits is a byte of a field the parser then reads
//! differently.

use qconform_core::field::AnyField;
use qconform_core::report::Report;
use qconform_core::{parallels, qcow2, qed, Limits};
use serde_json::Value;

/// A value for field `i` of a table that fits its width, is not `old` and
/// differs from the other fields' values.
fn distinct(f: &dyn AnyField, i: usize, old: u64) -> u64 {
    let mask = if f.width() == 8 {
        u64::MAX
    } else {
        (1u64 << (8 * f.width())) - 1
    };
    let v = (0xA5C3_0000_0000_0011u64 ^ (i as u64 * 0x0101_0101_0101_0107)) & mask;
    if v == old {
        (v + 1) & mask
    } else {
        v
    }
}

/// For each field of `table`: store a distinct value through the table in
/// a copy of `img` (the structure at `base`), parse with `parse`, and
/// expect the value under the field's name and every other field unchanged.
fn round_trip(
    what: &str,
    table: &[&dyn AnyField],
    img: &[u8],
    base: usize,
    parse: impl Fn(&[u8]) -> Value,
) {
    let before = parse(img);
    for (i, f) in table.iter().enumerate() {
        let old = f.get_u64(&img[base..]);
        assert_eq!(
            before[f.name()].as_u64(),
            Some(old),
            "{what}: the parser's {} is not the table's",
            f.name()
        );
        let v = distinct(*f, i, old);
        let mut edited = img.to_vec();
        f.put_u64(&mut edited[base..], v);
        let after = parse(&edited);
        assert_eq!(
            after[f.name()].as_u64(),
            Some(v),
            "{what}: {} did not read back",
            f.name()
        );
        for g in table.iter().filter(|g| g.name() != f.name()) {
            assert_eq!(
                after[g.name()],
                before[g.name()],
                "{what}: writing {} moved {}",
                f.name(),
                g.name()
            );
        }
    }
}

/// Applies mutation kind 0..`kinds` (through `mutate`, which names the
/// mutation it applied) to copies of `img`: the byte ranges of the fields
/// whose parsed value then differs must cover every byte of the first
/// `header_len` that differs. Returns how many mutations edit the header.
fn header_mutations(
    table: &[&dyn AnyField],
    img: &[u8],
    header_len: usize,
    kinds: usize,
    mutate: impl Fn(usize, &mut Vec<u8>) -> Option<String>,
    parse: impl Fn(&[u8]) -> Value,
) -> usize {
    let mut header_edits = 0;
    for kind in 0..kinds {
        let mut after = img.to_vec();
        let Some(what) = mutate(kind, &mut after) else {
            continue;
        };
        let (pb, pa) = (parse(img), parse(&after));
        let moved: Vec<&&dyn AnyField> = table
            .iter()
            .filter(|f| pb[f.name()] != pa[f.name()])
            .collect();
        let changed: Vec<usize> = (0..header_len).filter(|&i| img[i] != after[i]).collect();
        if changed.is_empty() {
            continue; // the mutation edits tables, not the header
        }
        header_edits += 1;
        for i in changed {
            assert!(
                moved
                    .iter()
                    .any(|f| (f.offset()..f.offset() + f.width()).contains(&i)),
                "{what}: header byte {i} changed outside every field the parser saw change"
            );
        }
    }
    header_edits
}

fn qcow2_image() -> Vec<u8> {
    use qcow2::write::{ClusterData, Description};
    let mut d = Description::new(64 << 10, 12);
    d.clusters.insert(1, ClusterData::Data(vec![3; 4096]));
    d.backing = Some(("base.qcow2".into(), Some("qcow2".into())));
    qcow2::write::write(&d).unwrap().image
}

fn qcow2_decode(b: &[u8]) -> Value {
    serde_json::to_value(qcow2::header::decode(b)).unwrap()
}

#[test]
fn qcow2_header_fields_round_trip_through_the_table() {
    let img = qcow2_image();
    round_trip(
        "qcow2 header",
        qcow2::header::field::ALL,
        &img,
        0,
        qcow2_decode,
    );
}

#[test]
fn qcow2_extension_header_fields_round_trip_through_the_table() {
    use qcow2::ext::field;
    let img = qcow2_image();
    let parse = |b: &[u8]| {
        let mut r = Report::new("t", "qcow2", &Limits::default());
        let p = qcow2::header::parse(&b, &mut r).unwrap();
        let exts = qcow2::ext::parse(&p.header, &p.cluster0, &Limits::default(), &mut r).unwrap();
        (p.header.extensions_start(), exts)
    };
    // The first extension is the backing format name "qcow2": as an
    // unknown type with a shorter length it must read back as both.
    let (start, exts) = parse(&img);
    assert_eq!(exts.backing_format.as_deref(), Some("qcow2"));
    let at = start as usize;
    let mut edited = img.clone();
    field::TYPE.put_at(&mut edited, at, 0x1234_5678);
    field::LENGTH.put_at(&mut edited, at, 3);
    let (_, exts) = parse(&edited);
    assert_eq!(exts.backing_format, None);
    let u = &exts.unknown[0];
    assert_eq!((u.ext_type, u.length, u.offset), (0x1234_5678, 3, start));
}

#[test]
fn qcow2_header_mutations_land_on_parsed_fields() {
    let edits = header_mutations(
        qcow2::header::field::ALL,
        &qcow2_image(),
        qcow2::header::KNOWN_HEADER_LENGTH as usize,
        qcow2::mutate::KINDS,
        |kind, img| {
            let m = qcow2::mutate::Mutation::from_parts(kind, 0, 3);
            qcow2::mutate::apply(m, img).map(|_| format!("{m:?}"))
        },
        qcow2_decode,
    );
    assert_eq!(edits, 2, "incompatible bit and refcount_order");
}

fn qed_image() -> Vec<u8> {
    use qed::write::{Cluster, Description};
    let mut d = Description::new(64 << 10, 4096, 1);
    d.clusters.insert(2, Cluster::Data(vec![5; 4096]));
    d.backing = Some(("base.raw".into(), true));
    qed::write::write(&d).unwrap()
}

fn qed_decode(b: &[u8]) -> Value {
    serde_json::to_value(qed::header::decode(b)).unwrap()
}

#[test]
fn qed_header_fields_round_trip_through_the_table() {
    let img = qed_image();
    let mut r = Report::new("t", "qed", &Limits::default());
    qed::header::parse(&img.as_slice(), &mut r).expect("the writer's header parses");
    round_trip("qed header", qed::header::field::ALL, &img, 0, qed_decode);
}

#[test]
fn qed_header_mutations_land_on_parsed_fields() {
    let edits = header_mutations(
        qed::header::field::ALL,
        &qed_image(),
        qed::header::HEADER_FIELDS,
        qed::mutate::KINDS,
        |kind, img| {
            let m = qed::mutate::Mutation::from_parts(kind, 0, 3);
            qed::mutate::apply(m, img).map(|_| format!("{m:?}"))
        },
        qed_decode,
    );
    assert!(edits >= 7, "only {edits} QED mutations edit the header");
}

fn parallels_image() -> Vec<u8> {
    use parallels::write::{BitmapDesc, Description};
    let mut d = Description::new(64 << 10, 4096, true);
    d.clusters.insert(1, vec![9; 4096]);
    d.bitmap = Some(BitmapDesc {
        id: [7; 16],
        granularity: 8,
        dirty_bits: vec![1, 5],
    });
    parallels::write::write(&d).unwrap()
}

fn parallels_decode(b: &[u8]) -> Value {
    serde_json::to_value(parallels::header::decode(b, true)).unwrap()
}

#[test]
fn parallels_header_fields_round_trip_through_the_table() {
    let img = parallels_image();
    let mut r = Report::new("t", "parallels", &Limits::default());
    parallels::header::parse(&img.as_slice(), &mut r).expect("the writer's header parses");
    round_trip(
        "parallels header",
        parallels::header::field::ALL,
        &img,
        0,
        parallels_decode,
    );
}

#[test]
fn parallels_header_mutations_land_on_parsed_fields() {
    let edits = header_mutations(
        parallels::header::field::ALL,
        &parallels_image(),
        parallels::header::HEADER_SIZE as usize,
        parallels::mutate::KINDS,
        |kind, img| {
            let m = parallels::mutate::Mutation::from_parts(kind, 0, 3);
            parallels::mutate::apply(m, img).map(|_| format!("{m:?}"))
        },
        parallels_decode,
    );
    assert!(
        edits >= 8,
        "only {edits} Parallels mutations edit the header"
    );
}

#[test]
fn parallels_extension_fields_round_trip_through_the_tables() {
    use parallels::ext::{bitmap_field, feature_field, field};
    let img = parallels_image();
    let parse = |b: &[u8]| {
        let mut r = Report::new("t", "parallels", &Limits::default());
        let h = parallels::header::parse(&b, &mut r).unwrap();
        let x = parallels::ext::parse(&b, &h, &mut r);
        let ids: Vec<&str> = r.findings.iter().map(|f| f.rule.id).collect();
        (h, x, ids.join(","))
    };
    let (h, x, _) = parse(&img);
    let ext_at = (h.ext_off * 512) as usize;
    let feature = ext_at + field::FEATURES;
    let data = feature + feature_field::DATA;
    let b = &x.unwrap().bitmaps[0];
    assert_eq!(b.size, bitmap_field::SIZE.get_at(&img, data));
    assert_eq!(b.granularity, bitmap_field::GRANULARITY.get_at(&img, data));
    assert_eq!(
        b.l1.len(),
        bitmap_field::L1_SIZE.get_at(&img, data) as usize
    );
    assert_eq!(b.id, "07".repeat(16));
    // Bitmap fields stored through the table read back.
    let mut e = img.clone();
    bitmap_field::SIZE.put_at(&mut e, data, 77);
    bitmap_field::GRANULARITY.put_at(&mut e, data, 2);
    bitmap_field::L1_SIZE.put_at(&mut e, data, 0);
    let b = &parse(&e).1.unwrap().bitmaps[0];
    assert_eq!((b.size, b.granularity, b.l1.len()), (77, 2, 0));
    // The feature header: an unknown magic and its flags read back.
    let mut e = img.clone();
    feature_field::MAGIC.put_at(&mut e, feature, 0x1122_3344_5566_7788);
    feature_field::FLAGS.put_at(&mut e, feature, 0x99);
    assert_eq!(
        parse(&e).1.unwrap().unknown,
        vec![(0x1122_3344_5566_7788, 0x99)]
    );
    // A data size past the cluster is what the parser measures.
    let mut e = img.clone();
    feature_field::DATA_SIZE.put_at(&mut e, feature, 1 << 20);
    assert!(
        parse(&e).2.contains("parallels.ext.features"),
        "{}",
        parse(&e).2
    );
    // The extension magic and the checksum are where the parser looks.
    let mut e = img.clone();
    field::MAGIC.put_at(&mut e, ext_at, 1);
    assert!(parse(&e).1.is_none());
    let mut e = img.clone();
    e[ext_at + field::CHECKSUM.start] ^= 1;
    assert!(
        parse(&e).2.contains("parallels.ext.checksum"),
        "{}",
        parse(&e).2
    );
}
