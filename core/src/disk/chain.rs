//! The chain of layers a virtual disk reads through: the top image, the
//! backing files below it (opened through a [`Resolver`], each checked first
//! unless `verify` is off), and the reads and the map over them. Formats are
//! opened through the registry ([`crate::formats`]), never by name here.

use super::*;
use crate::formats::{self, ImageFormat};

/// Opens one layer of a chain: `format` None is a raw file.
fn open_layer(
    src: Box<dyn ReadAt>,
    format: Option<&'static dyn ImageFormat>,
    resolver: &dyn Resolver,
    opts: &OpenOptions<'_>,
    snapshot: Option<&str>,
) -> Result<Opened, ReadError> {
    let opened = match format {
        Some(f) => {
            if opts.verify {
                verify(src.as_ref(), f, &opts.limits)?;
            }
            f.open_layer(src, resolver, opts, snapshot)?
        }
        None => (Box::new(raw::RawLayer::new(src)) as Box<dyn Layer>, None),
    };
    valid_size(opened.0.size())?;
    Ok(opened)
}

/// Refuses a virtual size above QEMU's BDRV_MAX_LENGTH before anything is
/// read or streamed. Each format's header rules already stop such sizes
/// (qcow2's L1 cap, QED's image_size rule, Parallels' disk-size limit);
/// this is the format-neutral backstop for every layer, raw files included.
fn valid_size(size: u64) -> Result<(), ReadError> {
    if size > MAX_VIRTUAL_SIZE {
        return Err(ReadError::rule(
            &prule::VIRTUAL_SIZE,
            None,
            format!("virtual size {size} is larger than {MAX_VIRTUAL_SIZE} bytes"),
        ));
    }
    Ok(())
}

/// Checks one image and refuses it at the first corruption or check error,
/// as `qemu-img convert` refuses (with EIO) what it cannot trust.
fn verify(src: &dyn ReadAt, format: &dyn ImageFormat, limits: &Limits) -> Result<(), ReadError> {
    let report = format.check(src, "image", limits);
    match report
        .findings
        .iter()
        .find(|f| matches!(f.severity, Severity::Error | Severity::Corruption))
    {
        Some(f) => Err(ReadError::rule(
            f.rule,
            f.offset(),
            format!(
                "{} (reads refuse a corrupt image; --force reads it anyway)",
                f.detail
            ),
        )),
        None => Ok(()),
    }
}

/// A virtual disk: the image and the layers below it.
pub struct VirtualDisk {
    layers: Vec<Box<dyn Layer>>,
    /// Steps one map may take (Limits::max_entries_visited).
    max_steps: u64,
}

impl VirtualDisk {
    /// Opens the image in `src`, its backing chain (if followed) and data file.
    pub fn open(
        src: Box<dyn ReadAt>,
        resolver: &dyn Resolver,
        opts: &OpenOptions<'_>,
    ) -> Result<VirtualDisk, ReadError> {
        // The top image must be one of ours; anything else is judged as the
        // first registered format (qcow2), so that the error names its magic rule.
        let format = formats::probe(src.as_ref()).unwrap_or(formats::FORMATS[0]);
        let (top, mut backing) = open_layer(src, Some(format), resolver, opts, opts.snapshot)?;
        let mut layers = vec![top];
        let mut seen: HashSet<String> = HashSet::new();
        let mut current: Option<Box<dyn Resolver>> = None;
        let max_depth = opts.limits.max_backing_depth;
        while let Some(b) = backing.take() {
            if opts.backing == Backing::Ignore {
                break;
            }
            if layers.len() > max_depth {
                return Err(ReadError::rule(
                    &prule::BACKING_DEPTH,
                    None,
                    format!("backing chain deeper than {max_depth} (Limits::max_backing_depth)"),
                ));
            }
            let r: &dyn Resolver = current.as_deref().unwrap_or(resolver);
            let resolved = r.open(&b.name, Role::BackingFile)?;
            if !seen.insert(resolved.key.clone()) {
                return Err(ReadError::rule(
                    &prule::BACKING_CYCLE,
                    None,
                    format!("backing chain loops back to {}", resolved.key),
                ));
            }
            // A named format is used as named; otherwise the file is probed,
            // and what is none of ours is raw (as QEMU probes).
            let format = match b.format.as_deref() {
                Some("raw") => None,
                Some(f) => Some(formats::by_name(f).ok_or_else(|| {
                    ReadError::Open(format!(
                        "backing file {:?}: format {f} is not supported",
                        b.name
                    ))
                })?),
                None => formats::probe(resolved.source.as_ref()),
            };
            let (layer, next) = open_layer(
                resolved.source,
                format,
                resolved.resolver.as_ref(),
                opts,
                None,
            )?;
            layers.push(layer);
            backing = next;
            current = Some(resolved.resolver);
        }
        Ok(VirtualDisk {
            layers,
            max_steps: opts.limits.max_entries_visited,
        })
    }

    /// Virtual size in bytes.
    pub fn size(&self) -> u64 {
        self.layers.first().map_or(0, |l| l.size())
    }

    /// Images in the chain (1: no backing file).
    pub fn depth(&self) -> usize {
        self.layers.len()
    }

    /// Status of `guest` in layer `i`, and the length it covers (bounded by
    /// `max`, at least 1).
    fn layer_status(&mut self, i: usize, guest: u64, max: u64) -> Result<(Status, u64), ReadError> {
        let Some(layer) = self.layers.get_mut(i) else {
            return Ok((Status::Zero { host: None }, max));
        };
        let size = layer.size();
        if guest >= size {
            // Past the end of a (shorter) backing file: zeros.
            return Ok((Status::Zero { host: None }, max));
        }
        let (st, len) = layer.status(guest)?;
        Ok((st, len.min(max).min(size - guest).max(1)))
    }

    /// Fills `buf` with the virtual disk's bytes at `offset`; bytes past its
    /// end read as zeros.
    pub fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        let size = self.size();
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset.saturating_add(done as u64);
            let Some(out) = buf.get_mut(done..) else {
                break;
            };
            if pos >= size {
                out.fill(0);
                break;
            }
            let mut layer = 0;
            // Each layer below only decides within the run the layer above left unallocated.
            let mut bound = (out.len() as u64).min(size - pos);
            let (st, len) = loop {
                let (st, len) = self.layer_status(layer, pos, bound)?;
                match st {
                    Status::Unallocated { .. } if layer + 1 < self.layers.len() => {
                        layer += 1;
                        bound = len;
                    }
                    Status::Unallocated { .. } => break (Status::Zero { host: None }, len),
                    st => break (st, len),
                }
            };
            let len = (len as usize).min(out.len());
            let out = &mut out[..len];
            match (st, self.layers.get_mut(layer)) {
                (Status::Data { host }, Some(l)) => l.read_data(host, out)?,
                (Status::Compressed, Some(l)) => l.read_compressed(pos, out)?,
                _ => out.fill(0),
            }
            done += len;
        }
        Ok(())
    }

    /// The allocation map, merged like `qemu-img map --output=json`, handed
    /// to `sink` entry by entry as it is found (memory stays one entry).
    pub fn map_each(
        &mut self,
        mut sink: impl FnMut(&MapEntry) -> Result<(), ReadError>,
    ) -> Result<(), ReadError> {
        let size = self.size();
        let mut pending: Option<MapEntry> = None;
        let mut pos = 0u64;
        let mut steps = 0u64;
        let bottom = self.layers.len().saturating_sub(1);
        while pos < size {
            steps += 1;
            if steps > self.max_steps {
                return Err(ReadError::rule(
                    &crate::rules::general::WORK_LIMIT,
                    None,
                    format!(
                        "the map took more than {} steps (Limits::max_entries_visited)",
                        self.max_steps
                    ),
                ));
            }
            let e = self.map_step(pos, size - pos, bottom)?;
            pos = pos.saturating_add(e.length);
            match pending.as_mut() {
                Some(p) if p.absorbs(&e) => p.length += e.length,
                _ => {
                    if let Some(p) = pending.replace(e) {
                        sink(&p)?;
                    }
                }
            }
        }
        match pending {
            Some(p) => sink(&p),
            None => Ok(()),
        }
    }

    /// The whole allocation map in memory (tests and golden files; `map`
    /// streams with [`VirtualDisk::map_each`]).
    pub fn map(&mut self) -> Result<Vec<MapEntry>, ReadError> {
        let mut out = Vec::new();
        self.map_each(|e| {
            out.push(e.clone());
            Ok(())
        })?;
        Ok(out)
    }

    /// One unmerged map entry at `pos`.
    fn map_step(&mut self, pos: u64, left: u64, bottom: usize) -> Result<MapEntry, ReadError> {
        let mut layer = 0;
        let mut bound = left;
        let (st, len) = loop {
            let (st, len) = self.layer_status(layer, pos, bound)?;
            match st {
                // Past the end of a shorter backing file QEMU reports the
                // upper layer's own "unallocated, reads as zero".
                Status::Unallocated { .. }
                    if layer < bottom
                        && self.layers.get(layer + 1).is_some_and(|l| pos < l.size()) =>
                {
                    layer += 1;
                    bound = len;
                }
                st => break (st, len),
            }
        };
        let mut len = len.max(1);
        // Data over a hole of a sparse file reads as zero: QEMU reports
        // such a range as data and zero (preallocated metadata, say).
        let mut hole = false;
        let l = self.layers.get(layer);
        if let (Status::Data { host }, Some(src)) = (st, l.and_then(|l| l.hole_source())) {
            if let Some((is_hole, ext_len)) = src.extent(host) {
                hole = is_hole;
                len = len.min(ext_len.max(1));
            } else if host >= src.size() {
                // Past the end of the file (a raw file's last partial
                // sector): QEMU's file driver answers "zero", like a hole.
                hole = true;
            }
        }
        let raw = l.is_some_and(|l| l.is_raw());
        let (present, zero, data, compressed, offset) = match st {
            // A hole of a raw file is not data at all.
            Status::Data { host } if raw && hole => (true, true, false, false, Some(host)),
            Status::Data { host } => (true, hole, true, false, Some(host)),
            Status::Zero { host } => (true, true, false, false, host),
            Status::Compressed => (true, false, true, true, None),
            Status::Unallocated { host } => (false, true, false, false, host),
        };
        Ok(MapEntry {
            start: pos,
            length: len,
            depth: layer as u32,
            present,
            zero,
            data,
            compressed,
            offset,
        })
    }
}

/// The names an image carries (backing file, external data file), read
/// from its header without opening them, for [`policy::audit`].
pub fn named_files(src: &dyn ReadAt) -> Vec<NamedFile> {
    formats::probe(src).map_or_else(Vec::new, |f| f.named_files(src))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_above_bdrv_max_length_are_refused() {
        assert!(valid_size(MAX_VIRTUAL_SIZE).is_ok());
        let e = valid_size(MAX_VIRTUAL_SIZE + 1).err();
        assert_eq!(e.and_then(|e| e.rule_id()), Some("input.virtual-size"));
        assert!(valid_size(u64::MAX).is_err());
    }
}
