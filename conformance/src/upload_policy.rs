//! `--policy default|upload|FILE.toml`: loading a policy and applying it to
//! a check (the rules themselves live in `qconform_core::upload`).
//!
//! A policy file:
//!
//! ```toml
//! base = "upload"              # or "default" (no upload rule unless turned on)
//! [caps]
//! virtual-size = "2T"          # bytes, or a number with K, M, G, T, P (powers of 1024)
//! compression-ratio = 20
//! snapshots = 4
//! bitmaps = 0
//! [rules]
//! "upload.snapshot-count" = "off"        # on | off | error | corruption | leak | violation | note
//! "upload.backing-file" = "note"
//! "qcow2.header.dirty" = "corruption"    # any rule of `qconform rules`
//! ```

use qconform_core::formats;
use qconform_core::rules;
use qconform_core::source::FileSource;
use qconform_core::upload::{Action, Input, Policy};
use qconform_core::{Limits, Report, Severity};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    base: Option<String>,
    #[serde(default)]
    caps: Caps,
    #[serde(default)]
    rules: BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Caps {
    virtual_size: Option<Size>,
    compression_ratio: Option<u64>,
    snapshots: Option<u64>,
    bitmaps: Option<u64>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Size {
    Bytes(u64),
    Text(String),
}

fn size(s: &Size) -> Result<u64, String> {
    let text = match s {
        Size::Bytes(n) => return Ok(*n),
        Size::Text(t) => t.trim(),
    };
    let (digits, shift) = match text.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                'P' => 50,
                _ => return Err(format!("size {text:?}: unknown suffix {c:?}")),
            };
            (&text[..i], shift)
        }
        _ => (text, 0),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1u64 << shift))
        .ok_or_else(|| format!("size {text:?} is not a byte count that fits in 64 bits"))
}

fn action(rule: &str, what: &str) -> Result<Action, String> {
    Ok(match what {
        "on" => Action::On,
        "off" => Action::Off,
        "error" => Action::Grade(Severity::Error),
        "corruption" => Action::Grade(Severity::Corruption),
        "leak" => Action::Grade(Severity::Leak),
        "violation" => Action::Grade(Severity::Violation),
        "note" => Action::Grade(Severity::Note),
        _ => {
            return Err(format!(
                "rule {rule}: {what:?} is not on, off, error, corruption, leak, violation or note"
            ))
        }
    })
}

/// Parses a policy file's text; the error names the key at fault.
pub fn from_toml(text: &str) -> Result<Policy, String> {
    let f: File = toml::from_str(text).map_err(|e| e.to_string())?;
    let base = f.base.as_deref().unwrap_or("default");
    let mut p = Policy::by_name(base)
        .ok_or_else(|| format!("base {base:?} is not \"default\" or \"upload\""))?;
    if let Some(s) = &f.caps.virtual_size {
        p.caps.virtual_size = size(s)?;
    }
    let c = &mut p.caps;
    c.compression_ratio = f.caps.compression_ratio.unwrap_or(c.compression_ratio);
    c.snapshots = f.caps.snapshots.unwrap_or(c.snapshots);
    c.bitmaps = f.caps.bitmaps.unwrap_or(c.bitmaps);
    for (id, what) in &f.rules {
        let rule = rules::by_id(id)
            .ok_or_else(|| format!("unknown rule {id:?} (see `qconform rules`)"))?;
        p.set(rule, action(id, what)?);
    }
    Ok(p)
}

/// The `--policy` value: `default`, `upload`, or the path of a TOML file.
/// A clap value parser, so a bad policy is a usage error (exit 1).
pub fn parse(arg: &str) -> Result<Policy, String> {
    if let Some(p) = Policy::by_name(arg) {
        return Ok(p);
    }
    let text = std::fs::read_to_string(arg).map_err(|e| {
        format!("{arg}: not \"default\" or \"upload\", and not a readable policy file: {e}")
    })?;
    from_toml(&text).map_err(|e| format!("{arg}: {e}"))
}

/// Applies `policy` to the report of `path`'s check (its format declared
/// with `declared`, or probed): the upload rules' refusals, then the
/// policy's re-grades. `golden` and `conform` call this on each report.
pub fn apply(
    report: &mut Report,
    path: &Path,
    declared: Option<&str>,
    limits: &Limits,
    policy: &Policy,
) {
    if policy.is_default() {
        return;
    }
    // An image that cannot be opened already carries its check error.
    let Ok(src) = FileSource::open(path) else {
        return;
    };
    let format = declared
        .map_or_else(|| formats::probe(&src), formats::by_name)
        .filter(|f| f.probe(&src));
    let name = path.display().to_string();
    let info = format.and_then(|f| f.info(&src, &name, limits).ok());
    let input = Input {
        src: &src,
        declared,
        info: info.as_ref(),
    };
    policy.apply(report, &input);
}

/// `check` under a policy: the report and its exit code.
pub fn check(
    path: &Path,
    declared: Option<&str>,
    limits: &Limits,
    policy: &Policy,
    strict: bool,
) -> (Report, i32) {
    let mut report = crate::check::check_file(path, declared, limits);
    apply(&mut report, path, declared, limits, policy);
    let code = policy.exit_code(&report, strict);
    (report, code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_binary_suffixes_and_refuse_overflow() {
        assert_eq!(size(&Size::Text("2T".into())), Ok(2 << 40));
        assert_eq!(size(&Size::Text("512".into())), Ok(512));
        assert_eq!(size(&Size::Bytes(7)), Ok(7));
        assert!(size(&Size::Text("99999999P".into())).is_err());
        assert!(size(&Size::Text("3Q".into())).is_err());
    }

    #[test]
    fn unknown_keys_rules_and_actions_are_errors() {
        assert!(from_toml("bsae = \"upload\"").is_err());
        assert!(from_toml("[rules]\n\"upload.nope\" = \"off\"").is_err());
        assert!(from_toml("[rules]\n\"upload.polyglot\" = \"maybe\"").is_err());
        assert!(from_toml("base = \"strict\"").is_err());
        let p =
            from_toml("base = \"upload\"\n[caps]\nsnapshots = 3").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.caps.snapshots, 3);
        assert!(p.upload);
    }
}
