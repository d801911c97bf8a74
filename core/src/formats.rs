//! The format registry: one trait, [`ImageFormat`], and one static list,
//! [`FORMATS`]. Detection ([`probe`]), the CLI (`-f` values), `check` and
//! `info` dispatch, the golden files, `conform`, the fuzz targets and xtask
//! all go through it, so a format is added in one place.
//!
//! Adding a format: its folder under core/src/ (header, check, info, read,
//! write, mutate), its rules in [`crate::rules`], one `impl ImageFormat` and
//! one line in [`FORMATS`] here, a variant of [`Info`] (and of
//! [`Format`]), and its corpus recipes in
//! conformance/src/corpus.rs (images named `<case>.<extension>`).

use crate::disk::{NamedFile, OpenOptions, Opened, ReadError, Resolver};
use crate::limits::Limits;
use crate::report::Report;
use crate::source::ReadAt;
use crate::{parallels, qcow2, qed};
use serde::Serialize;

/// Formats qconform knows; each has one entry in [`FORMATS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// QEMU's qcow2 (versions 2 and 3; spec qcow2.rst).
    Qcow2,
    /// QEMU Enhanced Disk (spec qed_spec.rst).
    Qed,
    /// Parallels disk images (spec parallels.rst).
    Parallels,
}

impl Format {
    /// The format's name as `-f` takes it ("qcow2", "qed", "parallels").
    pub fn name(self) -> &'static str {
        of(self).map_or("unknown", |f| f.name())
    }
    /// The format `-f` names, None for a name qconform does not know.
    pub fn from_name(s: &str) -> Option<Format> {
        by_name(s).map(|f| f.format())
    }
}

/// What `qconform info` shows, per format. Serialized without a tag: the
/// JSON is the format's own `Info`.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Info {
    /// A qcow2 image's metadata.
    Qcow2(Box<qcow2::check::Info>),
    /// A QED image's metadata.
    Qed(Box<qed::info::Info>),
    /// A Parallels image's metadata.
    Parallels(Box<parallels::check::Info>),
}

impl Info {
    /// The virtual disk's size in bytes, as the reader presents it.
    pub fn virtual_size(&self) -> u64 {
        match self {
            Info::Qcow2(i) => i.header.size,
            Info::Qed(i) => i.header.image_size,
            Info::Parallels(i) => i.header.disk_size(),
        }
    }

    /// The cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        match self {
            Info::Qcow2(i) => i.header.cluster_size(),
            Info::Qed(i) => i.cluster_size,
            Info::Parallels(i) => i.cluster_size,
        }
    }

    /// The guest clusters the format's tables can describe, as `check`
    /// counts them in [`crate::ImageStats::total_clusters`] (qemu-img's
    /// total-clusters): the virtual size in clusters, rounded up, or for
    /// Parallels the BAT's entries.
    pub fn guest_clusters(&self) -> u64 {
        match self {
            Info::Parallels(i) => i.header.nb_bat_entries as u64,
            _ => self.virtual_size().div_ceil(self.cluster_size().max(1)),
        }
    }

    /// The backing file name the image carries, as written in it.
    pub fn backing_file(&self) -> Option<&str> {
        match self {
            Info::Qcow2(i) => i.backing_file.as_deref(),
            Info::Qed(i) => i.backing_file.as_deref(),
            Info::Parallels(_) => None,
        }
    }
}

/// One image format qconform knows.
///
/// The reader ([`crate::disk::VirtualDisk`]) opens each image of a chain
/// through [`ImageFormat::open_layer`] and checks it first through
/// [`ImageFormat::check`]; `check` audits the names
/// [`ImageFormat::named_files`] returns under the path policy.
pub trait ImageFormat: Sync {
    /// The format's id, for code that stores which format a layer is.
    fn format(&self) -> Format;
    /// The name `-f` takes and reports carry (qemu-img's name).
    fn name(&self) -> &'static str;
    /// The file extension of the format's corpus images: its name.
    fn extension(&self) -> &'static str {
        self.name()
    }
    /// Whether the first bytes of `src` are this format's magic.
    fn probe(&self, src: &dyn ReadAt) -> bool;
    /// The consistency check (`qconform check`); never panics.
    fn check(&self, src: &dyn ReadAt, filename: &str, limits: &Limits) -> Report;
    /// The parsed metadata (`qconform info`); the error names the rule that stopped it.
    fn info(&self, src: &dyn ReadAt, filename: &str, limits: &Limits) -> crate::Result<Info>;
    /// The image as a layer of a virtual disk, and the file it names below.
    fn open_layer(
        &self,
        src: Box<dyn ReadAt>,
        resolver: &dyn Resolver,
        opts: &OpenOptions<'_>,
        snapshot: Option<&str>,
    ) -> Result<Opened, ReadError>;
    /// The backing and data file names the image carries, unopened.
    fn named_files(&self, src: &dyn ReadAt) -> Vec<NamedFile>;
    /// About the bytes of metadata [`ImageFormat::check`] reads (a progress
    /// bar's total), from the header and the top-level tables; `None` when
    /// the header does not parse.
    fn metadata_size(&self, src: &dyn ReadAt) -> Option<u64>;
}

/// The first 16 bytes of a source (zero padded; zeros when unreadable).
fn head(src: &dyn ReadAt) -> [u8; 16] {
    let mut b = [0u8; 16];
    if src.read_zero_padded(&mut b, 0).is_err() {
        b = [0; 16];
    }
    b
}

/// One `impl ImageFormat`: its id (also its [`Info`] variant), its name,
/// the test its first 16 bytes pass, its checker and its info parser.
macro_rules! image_format {
    ($ty:ident, $name:literal, probe $probe:expr, check $check:path, info $info:path,
     open $open:path, names $names:expr, metadata $header:path, $meta:path) => {
        #[doc = concat!("The `", $name, "` format: probe, checker, info parser and layer opener.")]
        pub struct $ty;
        impl ImageFormat for $ty {
            fn format(&self) -> Format {
                Format::$ty
            }
            fn name(&self) -> &'static str {
                $name
            }
            fn probe(&self, src: &dyn ReadAt) -> bool {
                let probe: fn(&[u8; 16]) -> bool = $probe;
                probe(&head(src))
            }
            fn check(&self, src: &dyn ReadAt, filename: &str, limits: &Limits) -> Report {
                $check(src, filename, limits)
            }
            fn info(
                &self,
                src: &dyn ReadAt,
                filename: &str,
                limits: &Limits,
            ) -> crate::Result<Info> {
                $info(src, filename, limits).map(|i| Info::$ty(Box::new(i)))
            }
            fn open_layer(
                &self,
                src: Box<dyn ReadAt>,
                resolver: &dyn Resolver,
                opts: &OpenOptions<'_>,
                snapshot: Option<&str>,
            ) -> Result<Opened, ReadError> {
                $open(src, resolver, opts, snapshot)
            }
            fn named_files(&self, src: &dyn ReadAt) -> Vec<NamedFile> {
                let names: fn(&dyn ReadAt) -> Vec<NamedFile> = $names;
                names(src)
            }
            fn metadata_size(&self, src: &dyn ReadAt) -> Option<u64> {
                // The header's findings are the check's to report.
                let mut scratch = Report::new("", $name, &Limits::default());
                let h = $header(src, &mut scratch)?;
                Some($meta(src, &h))
            }
        }
    };
}

image_format!(Qcow2, "qcow2",
    probe |h| h.starts_with(&qcow2::MAGIC),
    check qcow2::check, info qcow2::check::info,
    open qcow2::read::open_layer, names qcow2::read::named_files,
    metadata qcow2_header, qcow2::check::metadata_size);
image_format!(Qed, "qed",
    probe |h| h.starts_with(&qed::header::MAGIC),
    check qed::check, info qed::info::info,
    open qed::read::open_layer, names qed::read::named_files,
    metadata qed::header::parse, qed::header::metadata_size);
image_format!(Parallels, "parallels",
    probe |h| h == parallels::header::MAGIC_V1 || h == parallels::header::MAGIC_V2,
    check parallels::check, info parallels::check::info,
    open parallels::read::open_layer, names |_| Vec::new(),
    metadata parallels::header::parse, parallels::header::metadata_size);

/// The qcow2 header alone (its parser returns the extensions too).
fn qcow2_header(src: &dyn ReadAt, report: &mut Report) -> Option<qcow2::header::Header> {
    qcow2::header::parse(src, report).map(|p| p.header)
}

/// Every format qconform knows, in probing order.
pub static FORMATS: &[&dyn ImageFormat] = &[&Qcow2, &Qed, &Parallels];

/// The format whose magic `src` starts with.
pub fn probe(src: &dyn ReadAt) -> Option<&'static dyn ImageFormat> {
    FORMATS.iter().copied().find(|f| f.probe(src))
}

/// The format `-f NAME` names.
pub fn by_name(name: &str) -> Option<&'static dyn ImageFormat> {
    FORMATS.iter().copied().find(|f| f.name() == name)
}

/// The registry entry of a [`Format`] id.
pub fn of(format: Format) -> Option<&'static dyn ImageFormat> {
    FORMATS.iter().copied().find(|f| f.format() == format)
}

/// The names of every format, in registry order.
pub fn names() -> impl Iterator<Item = &'static str> {
    FORMATS.iter().map(|f| f.name())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_extensions_and_ids_are_unique_and_every_id_is_registered() {
        for (i, a) in FORMATS.iter().enumerate() {
            for b in &FORMATS[i + 1..] {
                assert_ne!(a.name(), b.name());
                assert_ne!(a.extension(), b.extension());
                assert_ne!(a.format(), b.format());
            }
            assert_eq!(by_name(a.name()).map(|f| f.format()), Some(a.format()));
        }
        for f in [Format::Qcow2, Format::Qed, Format::Parallels] {
            assert!(of(f).is_some(), "{f:?} is not in FORMATS");
        }
    }

    /// The progress total of a check follows the metadata the check reads:
    /// between the header and the file for writer images, and what a
    /// hostile header claims beyond the file is not counted.
    #[test]
    fn metadata_size_counts_what_the_check_reads() {
        let mut d = qcow2::write::Description::new(1 << 30, 16);
        for k in [0u64, 9000, 16383] {
            d.clusters
                .insert(k, qcow2::write::ClusterData::Data(vec![1; 65536]));
        }
        let Ok(w) = qcow2::write::write(&d) else {
            panic!("the writer failed")
        };
        let mut img = w.image;
        struct Counted<'a>(&'a [u8], std::cell::Cell<u64>);
        impl ReadAt for Counted<'_> {
            fn size(&self) -> u64 {
                self.0.size()
            }
            fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> crate::Result<()> {
                self.1.set(self.1.get() + buf.len() as u64);
                self.0.read_exact_at(buf, offset)
            }
        }
        let counted = Counted(&img, Default::default());
        let _ = Qcow2.check(&counted, "t", &Limits::default());
        let read = counted.1.get();
        let Some(total) = Qcow2.metadata_size(&img.as_slice()) else {
            panic!("no total")
        };
        // Header cluster, L1, two L2 tables, refcount table, and of the
        // refcount block the refcounts of the file's clusters.
        assert!(total >= 4 * 65536 && total <= img.len() as u64, "{total}");
        assert!(total <= read && read < 2 * total, "{total} vs {read}");
        // l1_size claimed at QEMU's 32 MiB limit in a small file: only the
        // part of the table the file holds counts.
        img[36..40].copy_from_slice(&(4u32 << 20).to_be_bytes());
        let claimed = Qcow2.metadata_size(&img.as_slice()).unwrap_or(u64::MAX);
        assert!(claimed <= 2 * img.len() as u64, "{claimed}");
    }

    #[test]
    fn each_format_probes_what_its_own_writer_writes_and_nothing_else() {
        let qcow2_img = qcow2::write::write(&qcow2::write::Description::new(1 << 20, 16))
            .map(|w| w.image)
            .unwrap_or_default();
        let qed_img =
            qed::write::write(&qed::write::Description::new(1 << 20, 4096, 1)).unwrap_or_default();
        let par_img =
            parallels::write::write(&parallels::write::Description::new(1 << 20, 1 << 16, true))
                .unwrap_or_default();
        for (img, name) in [
            (qcow2_img, "qcow2"),
            (qed_img, "qed"),
            (par_img, "parallels"),
        ] {
            assert!(!img.is_empty(), "{name}: the writer failed");
            let found = probe(&img.as_slice()).map(|f| f.name());
            assert_eq!(found, Some(name));
            let f = by_name(name).unwrap_or(FORMATS[0]);
            assert_eq!(
                f.check(&img.as_slice(), "t", &Limits::default())
                    .exit_code(false),
                0
            );
            assert!(
                f.info(&img.as_slice(), "t", &Limits::default()).is_ok(),
                "{name}"
            );
        }
        assert!(probe(&vec![0u8; 4096].as_slice()).is_none());
        assert!(probe(&b"QFI".as_slice()).is_none());
    }
}
