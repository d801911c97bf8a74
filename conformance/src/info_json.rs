//! `qconform info --output json`: qemu-img's ImageInfo (the fields of
//! `qemu-img info --output=json`, with their names, presence rules and
//! values), and qconform's own header dump under the key `qconform`.
//!
//! Presence follows QEMU 10.0.2's block drivers: Parallels has no
//! cluster-size, dirty-flag or format-specific part (its driver implements
//! no get_info); QED has no format-specific part; qcow2 v2 shows only
//! compat, compression-type and refcount-bits; `bitmaps` appears with at
//! least one bitmap, `snapshots` with at least one snapshot, `encrypted`
//! only when true, the backing fields only with a backing file, and
//! `backing-filename-format` only when the image names one (QED: only
//! "raw", through QED_F_BACKING_FORMAT_NO_PROBE).

use qconform_core::formats::Info;
use qconform_core::qcow2::header as q;
use serde_json::{json, Map, Value};
use std::path::Path;

/// The ImageInfo of `path`, whose metadata is `info`.
pub fn image_info(path: &Path, info: &Info) -> Value {
    let filename = path.display().to_string();
    let (size, actual) = file_sizes(path);
    let mut m = Map::new();
    m.insert("filename".into(), json!(filename));
    m.insert("actual-size".into(), json!(actual));
    // The protocol layer qemu-img opens below the format: a plain file,
    // whose length QEMU's file driver rounds up to whole 512-byte sectors.
    let size = size.div_ceil(512).saturating_mul(512);
    m.insert(
        "children".into(),
        json!([{ "name": "file", "info": {
            "children": [], "virtual-size": size, "filename": filename, "format": "file",
            "actual-size": actual, "format-specific": { "type": "file", "data": {} },
            "dirty-flag": false,
        }}]),
    );
    match info {
        Info::Qcow2(i) => qcow2(&mut m, &filename, i),
        Info::Qed(i) => {
            m.insert("format".into(), json!("qed"));
            m.insert("virtual-size".into(), json!(i.image_size));
            m.insert("cluster-size".into(), json!(i.cluster_size));
            m.insert("dirty-flag".into(), json!(i.need_check));
            if let Some(b) = &i.backing_file {
                backing(&mut m, &filename, b, i.backing_format);
            }
        }
        Info::Parallels(i) => {
            m.insert("format".into(), json!("parallels"));
            m.insert("virtual-size".into(), json!(i.header.disk_size()));
        }
    }
    m.insert(
        "qconform".into(),
        serde_json::to_value(info).unwrap_or_default(),
    );
    Value::Object(m)
}

/// The file's length and the bytes it occupies (st_blocks x 512, what
/// qemu's file driver reports as actual-size).
fn file_sizes(path: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map_or((0, 0), |m| (m.len(), m.blocks() * 512))
}

/// The backing fields. full-backing-filename is the name resolved the way
/// QEMU resolves it for display: absolute names and protocol names as they
/// are, relative names after the image's own path up to its last `/`.
fn backing(m: &mut Map<String, Value>, image: &str, name: &str, format: Option<&str>) {
    m.insert("backing-filename".into(), json!(name));
    let protocol = name
        .split_once(':')
        .is_some_and(|(p, _)| !p.is_empty() && !p.contains('/'));
    let full = if name.starts_with('/') || protocol {
        name.to_owned()
    } else {
        let dir = image.rfind('/').map_or("", |i| &image[..=i]);
        format!("{dir}{name}")
    };
    m.insert("full-backing-filename".into(), json!(full));
    if let Some(f) = format {
        m.insert("backing-filename-format".into(), json!(f));
    }
}

fn qcow2(m: &mut Map<String, Value>, image: &str, i: &qconform_core::qcow2::check::Info) {
    let h = &i.header;
    m.insert("format".into(), json!("qcow2"));
    m.insert("virtual-size".into(), json!(h.size));
    m.insert("cluster-size".into(), json!(h.cluster_size()));
    m.insert(
        "dirty-flag".into(),
        json!(h.incompatible_features & q::INCOMPAT_DIRTY != 0),
    );
    if let Some(b) = &i.backing_file {
        backing(m, image, b, i.extensions.backing_format.as_deref());
    }
    let mut d = Map::new();
    let v3 = h.version >= 3;
    d.insert("compat".into(), json!(if v3 { "1.1" } else { "0.10" }));
    d.insert(
        "compression-type".into(),
        json!(if h.compression_type == 1 {
            "zstd"
        } else {
            "zlib"
        }),
    );
    d.insert("refcount-bits".into(), json!(h.refcount_bits()));
    if v3 {
        d.insert(
            "lazy-refcounts".into(),
            json!(h.compatible_features & 1 != 0),
        );
        d.insert(
            "corrupt".into(),
            json!(h.incompatible_features & q::INCOMPAT_CORRUPT != 0),
        );
        d.insert(
            "extended-l2".into(),
            json!(h.incompatible_features & q::INCOMPAT_EXTL2 != 0),
        );
    }
    if let Some(f) = &i.extensions.data_file {
        d.insert("data-file".into(), json!(f));
    }
    if h.has_data_file() {
        d.insert(
            "data-file-raw".into(),
            json!(h.autoclear_features & q::AUTOCLEAR_DATA_FILE_RAW != 0),
        );
    }
    if !i.bitmaps.is_empty() {
        let list: Vec<Value> = i
            .bitmaps
            .iter()
            .map(|b| {
                let mut flags = Vec::new();
                if b.in_use() {
                    flags.push("in-use");
                }
                if b.auto() {
                    flags.push("auto");
                }
                json!({ "name": b.name, "granularity": 1u64 << b.granularity_bits, "flags": flags })
            })
            .collect();
        d.insert("bitmaps".into(), json!(list));
    }
    if h.crypt_method != 0 {
        m.insert("encrypted".into(), json!(true));
        // qemu-img adds the LUKS header's details (cipher, slots, uuid),
        // which qconform does not parse: only the format is given.
        let format = if h.crypt_method == 1 { "aes" } else { "luks" };
        d.insert("encrypt".into(), json!({ "format": format }));
    }
    m.insert(
        "format-specific".into(),
        json!({ "type": "qcow2", "data": d }),
    );
    if !i.snapshots.snapshots.is_empty() {
        let list: Vec<Value> = i
            .snapshots
            .snapshots
            .iter()
            .map(|s| {
                let mut v = json!({
                    "id": s.id, "name": s.name, "vm-state-size": s.vm_state_size,
                    "date-sec": s.date_sec, "date-nsec": s.date_nsec,
                    "vm-clock-sec": s.vm_clock_nsec / 1_000_000_000,
                    "vm-clock-nsec": s.vm_clock_nsec % 1_000_000_000,
                });
                if let (Some(c), Some(o)) = (s.icount, v.as_object_mut()) {
                    o.insert("icount".into(), json!(c));
                }
                v
            })
            .collect();
        m.insert("snapshots".into(), json!(list));
    }
}
