use clap::{Parser, Subcommand};
use qconform::vhost::{check as vcheck, probe, serve};
use qconform::{check, conform, golden, rules_cmd, Output};
use qconform_core::vhost_user::session::Profile;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Conformance harness for QEMU's disk image formats and vhost-user.
#[derive(Parser)]
#[command(name = "qconform", version, about = about())]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check images like `qemu-img check` (exit 0 clean, 1 not checked, 2 corruptions, 3 leaks only).
    ///
    /// With several images the exit code is the most severe verdict:
    /// corruptions (2) > could not check (1) > leaks only (3) > clean (0).
    /// Usage errors exit 1, like qemu-img's.
    Check {
        /// The image format; detected from the magic when absent.
        #[arg(short = 'f', long = "format", value_parser = format_names())]
        format: Option<String>,
        #[arg(long, value_enum, default_value = "human")]
        output: Output,
        /// Count spec violations qemu-img ignores as corruptions.
        #[arg(long)]
        strict: bool,
        /// `default`, `upload` (refuse what an untrusted image must not carry,
        /// exit 2), or a TOML policy file (see the README).
        #[arg(long, default_value = "default", value_parser = qconform::upload_policy::parse)]
        policy: qconform_core::upload::Policy,
        /// Repair into --repair-out, never in place, as `qemu-img check -r
        /// leaks|all` repairs (see the README's "Repair").
        #[arg(short = 'r', long = "repair", value_enum, requires = "repair_out")]
        repair: Option<qconform::repair::Repair>,
        /// The repaired copy -r writes (must not exist).
        #[arg(long, requires = "repair")]
        repair_out: Option<PathBuf>,
        /// No progress display (on a terminal: a spinner while one image is checked, a bar of images done for several).
        #[arg(short, long)]
        quiet: bool,
        #[command(flatten)]
        reports: CiArgs,
        #[arg(required = true)]
        images: Vec<PathBuf>,
    },
    /// Show the header, features, extensions, snapshots and bitmaps.
    Info {
        #[arg(long, value_enum, default_value = "human")]
        output: Output,
        image: PathBuf,
    },
    /// Write the virtual disk (what the guest sees) to stdout or a sparse file.
    Cat {
        /// Read this internal snapshot (id or name) instead of the active state.
        #[arg(long)]
        snapshot: Option<String>,
        #[arg(long, value_enum, default_value = "confined")]
        backing: BackingArg,
        /// Read an image the checker calls corrupt anyway (best effort).
        #[arg(long)]
        force: bool,
        /// Write to this file (sparse) instead of stdout.
        #[arg(short = 'o', long = "output-file")]
        out: Option<PathBuf>,
        /// No progress bar (shown for -o on a terminal).
        #[arg(short, long)]
        quiet: bool,
        image: PathBuf,
    },
    /// The allocation map, in the JSON shape of `qemu-img map --output=json`.
    Map {
        #[arg(long, value_enum, default_value = "human")]
        output: Output,
        #[arg(long, value_enum, default_value = "confined")]
        backing: BackingArg,
        /// Map an image the checker calls corrupt anyway (best effort).
        #[arg(long)]
        force: bool,
        image: PathBuf,
    },
    /// List every rule qconform checks.
    Rules {
        #[arg(long, value_enum, default_value = "human")]
        output: Output,
    },
    /// Golden records: verify images against them, or rewrite them.
    ///
    /// With PATHs (files or folders, searched recursively; formats found
    /// from the content), one record per image under --golden. Without, the
    /// repository's corpus/ and golden/ (as `conform`). `verify` exits 0
    /// when every image matches, 4 when any changed, is new (no record) or
    /// stale (a record without an image), 1 when it could not run.
    Golden {
        #[command(subcommand)]
        action: GoldenAction,
    },
    /// vhost-user: probe a back-end, serve a front-end, check a transcript.
    #[command(name = "vhost-user")]
    VhostUser {
        #[command(subcommand)]
        action: VhostAction,
    },
    /// Fuzz other implementations with qconform's reference code as the oracle.
    Fuzz {
        #[command(subcommand)]
        action: FuzzAction,
    },
    /// The main job: check every corpus image and compare with golden/.
    ///
    /// Exit 0 when every case matches its golden files, 4 when any differs
    /// (or has none), 1 when a matrix cell could not run.
    Conform {
        #[arg(long, value_enum, default_value = "human")]
        output: Output,
        /// Repository root holding corpus/ and golden/.
        #[arg(long, default_value = ".")]
        root: PathBuf,
        /// No progress bar.
        #[arg(short, long)]
        quiet: bool,
        /// Also judge every image under this policy (`default`, `upload` or
        /// a TOML file); the golden files stay the default policy's.
        #[arg(long, default_value = "default", value_parser = qconform::upload_policy::parse)]
        policy: qconform_core::upload::Policy,
        #[command(flatten)]
        reports: CiArgs,
    },
}

#[derive(Subcommand)]
enum FuzzAction {
    /// Out-of-process campaign against a command that reads images (exit 0
    /// no new findings, 2 new findings, 1 could not run).
    Image {
        #[arg(long, value_enum)]
        format: qconform::fuzz::generate::GenFormat,
        /// Shell command line: {image} is the image, {out} a file for guest
        /// bytes (read oracle), {dir} the scratch directory.
        #[arg(long)]
        target: String,
        #[arg(long, value_enum, default_value = "crash")]
        oracle: qconform::fuzz::Oracle,
        /// Stop after this many seconds.
        #[arg(long)]
        time: Option<u64>,
        /// Stop after this many runs (default 1000 when --time is absent).
        #[arg(long)]
        runs: Option<u64>,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Save each finding's minimised reproducer here.
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, default_value_t = 10000)]
        timeout_ms: u64,
        /// Address-space limit of the target in MiB (0: none, for ASan builds).
        #[arg(long, default_value_t = 2048)]
        memory_mb: u64,
        #[arg(long, default_value_t = 1)]
        jobs: usize,
        /// Known findings (KIND [RULE] per line): reported, but not a failure.
        #[arg(long)]
        expect: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "human")]
        output: Output,
    },
    /// Replay raw images (corpus files and folders, or generated ones)
    /// through qemu-img check, map and convert and compare with qconform
    /// (exit 0 no unexpected disagreement, 2 some, 1 could not run).
    Differential {
        #[arg(long, value_enum)]
        format: qconform::fuzz::generate::GenFormat,
        /// Files or folders of inputs (a folder: its files).
        #[arg(long)]
        corpus: Vec<PathBuf>,
        /// Also this many inputs generated from the writers and mutators.
        #[arg(long, default_value_t = 0)]
        generate: u64,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Known qemu-img faults (KIND [RULE] per line).
        #[arg(long)]
        expect: Option<PathBuf>,
        /// Copy each unexpected disagreement's input here.
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, default_value_t = 10000)]
        timeout_ms: u64,
        #[arg(long, default_value_t = 2048)]
        memory_mb: u64,
        #[arg(long, value_enum, default_value = "human")]
        output: Output,
    },
}

#[derive(Subcommand)]
enum VhostAction {
    /// Act as a front-end against a back-end: a full conversation, then robustness probes.
    Probe {
        #[arg(long)]
        socket: PathBuf,
        #[arg(long, value_enum, default_value = "human")]
        output: Output,
        /// Deadline for every reply, in milliseconds.
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
        /// Read ambiguous spec text the way real peers do.
        #[arg(long)]
        lenient: bool,
        /// Skip the robustness probes.
        #[arg(long)]
        no_robustness: bool,
        /// Write the main conversation as a transcript (JSON Lines).
        #[arg(long)]
        transcript: Option<PathBuf>,
        /// Start the back-end with this command before every connection.
        #[arg(long)]
        backend_cmd: Option<String>,
        /// Count notes (tester policy the spec does not require of a
        /// back-end) as violations.
        #[arg(long)]
        strict: bool,
        /// Drive ring 0 with real requests of this device type (split
        /// virtqueue in the shared memfd) and check the used ring and data.
        #[arg(long, value_enum, num_args = 0..=1, default_missing_value = "blk")]
        data_path: Option<qconform::vhost::datapath::Device>,
        /// With --data-path blk: the raw disk file the back-end exports,
        /// checked to hold the sectors written.
        #[arg(long, requires = "data_path")]
        disk: Option<PathBuf>,
        #[command(flatten)]
        reports: CiArgs,
    },
    /// Act as a reference back-end and judge the front-end that connects.
    Serve {
        #[arg(long)]
        socket: PathBuf,
        /// Serve one connection, then exit.
        #[arg(long)]
        once: bool,
        #[arg(long, value_enum, default_value = "human")]
        output: Output,
        /// Virtio features offered (default: VERSION_1, protocol features, blk basics).
        #[arg(long, value_parser = parse_u64)]
        features: Option<u64>,
        /// Protocol features offered.
        #[arg(long, value_parser = parse_u64)]
        protocol_features: Option<u64>,
        #[arg(long, default_value_t = 1)]
        queues: u64,
        /// The largest ring (SET_VRING_NUM) accepted; larger ones are refused.
        #[arg(long, default_value_t = serve::DEFAULT_MAX_RING_SIZE)]
        max_ring_size: u32,
        /// Milliseconds a connection may stay silent (and to wait for one).
        #[arg(long, default_value_t = 60000)]
        idle_timeout_ms: u64,
        #[arg(long)]
        lenient: bool,
        #[arg(long)]
        transcript: Option<PathBuf>,
    },
    /// Record a conversation: a transparent proxy between a front-end (which
    /// connects to --listen) and a back-end (at --connect), judged live.
    Record {
        #[arg(long)]
        listen: PathBuf,
        #[arg(long)]
        connect: PathBuf,
        /// The transcript (JSON Lines), written as the conversation goes.
        #[arg(long)]
        out: PathBuf,
        #[arg(long, value_enum, default_value = "human")]
        output: Output,
        /// Milliseconds to wait for the front-end to connect, and for a reply that is due
        /// (silence between messages is not limited: a running guest may say nothing for hours).
        #[arg(long, default_value_t = 60000)]
        idle_timeout_ms: u64,
        /// Milliseconds a message may take once it has begun.
        #[arg(long, default_value_t = 2000)]
        message_timeout_ms: u64,
        #[arg(long)]
        lenient: bool,
        /// A line saying how the recording was made (kept in the transcript).
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Replay the front-end side of a transcript against a back-end and
    /// compare every reply (exit 0 conforming, 1 could not run, 2 findings or divergences).
    Replay {
        file: PathBuf,
        #[arg(long)]
        socket: PathBuf,
        #[arg(long, value_enum, default_value = "human")]
        output: Output,
        /// Deadline for every reply, in milliseconds.
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
        #[arg(long)]
        lenient: bool,
        /// Start the back-end with this command first ({socket} is replaced by --socket).
        #[arg(long)]
        backend_cmd: Option<String>,
    },
    /// Replay every transcript of a directory against every back-end and
    /// print who conforms to what.
    Matrix {
        #[arg(long)]
        transcripts: PathBuf,
        /// NAME=COMMAND; {socket} in COMMAND is replaced by a fresh socket path.
        /// "serve" as the command is qconform's own reference back-end.
        #[arg(long = "backend", required = true)]
        backends: Vec<String>,
        #[arg(long, value_enum, default_value = "human")]
        output: Output,
        #[command(flatten)]
        reports: CiArgs,
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
    /// Stateful protocol fuzzing of a live back-end, started afresh for
    /// every run (exit 0 no new findings, 2 new findings, 1 could not run).
    Fuzz {
        /// The back-end's command line; {socket} is the socket it listens on.
        #[arg(long)]
        backend_cmd: String,
        /// Stop after this many seconds.
        #[arg(long)]
        time: Option<u64>,
        /// Stop after this many runs (default 100 when --time is absent).
        #[arg(long)]
        runs: Option<u64>,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Save each finding's minimised transcript and finding.json here.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Deadline of every read, in milliseconds.
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
        #[arg(long, default_value_t = 1)]
        jobs: usize,
        /// Known findings (KIND [RULE] per line): reported, but not a failure.
        #[arg(long)]
        expect: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "human")]
        output: Output,
    },
    /// Run the rule engine over a transcript (exit 0 conforming, 1 unreadable, 2 findings).
    Check {
        file: PathBuf,
        #[arg(long, value_enum, default_value = "human")]
        output: Output,
        #[arg(long)]
        lenient: bool,
        #[command(flatten)]
        reports: CiArgs,
    },
}

fn parse_u64(s: &str) -> Result<u64, String> {
    let r = match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.map_err(|e| e.to_string())
}

#[derive(Subcommand)]
enum GoldenAction {
    /// Compare images with their golden records (exit 0 all match, 4 any difference, 1 could not run).
    Verify(GoldenArgs),
    /// Rewrite the golden records from the images as they are now.
    Update(GoldenArgs),
}

/// `--junit FILE` and `--sarif FILE`: CI reports of a command that judges.
#[derive(clap::Args, Debug, Clone, Default)]
struct CiArgs {
    /// Also write a JUnit XML report here (one test case per image or transcript).
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    /// Also write a SARIF 2.1.0 report here (one result per finding).
    #[arg(long, value_name = "FILE")]
    sarif: Option<PathBuf>,
}

impl From<CiArgs> for qconform::ci_report::Targets {
    fn from(a: CiArgs) -> Self {
        Self {
            junit: a.junit,
            sarif: a.sarif,
        }
    }
}

#[derive(clap::Args)]
struct GoldenArgs {
    /// Where the golden records of PATHs are (default: ./qconform-golden).
    #[arg(long, value_name = "DIR")]
    golden: Option<PathBuf>,
    /// Without PATHs: the repository root holding corpus/ and golden/.
    #[arg(long, default_value = ".")]
    root: PathBuf,
    /// Do not hash the guest bytes (faster; content changes go unseen).
    #[arg(long)]
    no_content: bool,
    /// The backing policy the guest bytes are read under (as `cat --backing`).
    #[arg(long, value_enum, default_value = "confined")]
    backing: BackingArg,
    /// `default`, `upload` or a TOML policy file, as `check --policy` (without PATHs: as `conform --policy`).
    #[arg(long, default_value = "default", value_parser = qconform::upload_policy::parse)]
    policy: qconform_core::upload::Policy,
    /// No progress bar.
    #[arg(short, long)]
    quiet: bool,
    /// `verify` with PATHs: the verdicts and field diffs as text or JSON.
    #[arg(long, value_enum, default_value = "human")]
    output: Output,
    #[command(flatten)]
    reports: CiArgs,
    /// Image files or folders (recursive; formats found from the content).
    paths: Vec<PathBuf>,
}

/// `qconform golden update|verify`.
fn golden_cmd(update: bool, a: GoldenArgs) -> i32 {
    if a.paths.is_empty() {
        if a.golden.is_some() {
            eprintln!("qconform: --golden needs the PATHs of the images");
            return 1;
        }
        if update {
            return golden::update(&a.root);
        }
        let settings = conform::Settings {
            reports: a.reports.into(),
            quiet: a.quiet,
            policy: a.policy,
        };
        return conform::run(&a.root, a.output, &settings);
    }
    let s = golden::images::Settings {
        golden: a.golden.unwrap_or_else(|| "qconform-golden".into()),
        record: golden::record::Options {
            content: !a.no_content,
            backing: a.backing.into(),
            policy: a.policy,
        },
        quiet: a.quiet,
        reports: a.reports.into(),
        output: a.output,
    };
    if update {
        golden::images::update(&a.paths, &s)
    } else {
        golden::images::verify(&a.paths, &s)
    }
}

/// The one-line help, naming the formats of the registry.
fn about() -> String {
    let names: Vec<_> = qconform_core::formats::names().collect();
    format!(
        "Conformance harness for the {} image formats and for vhost-user.",
        names.join(", ")
    )
}

/// `-f` takes the name of a format of the registry.
fn format_names() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(qconform_core::formats::names())
}

/// Parses the command line. `--help` and `--version` exit 0; a usage error
/// exits 1 with clap's message (2 means "corruptions" to `check`'s callers,
/// and qemu-img exits 1 on usage errors too).
fn parse_cli() -> Result<Cli, ExitCode> {
    use clap::error::ErrorKind;
    Cli::try_parse().map_err(|e| {
        // Printing fails only on a closed stream, where nobody reads it anyway.
        let _ = e.print();
        match e.kind() {
            ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => ExitCode::SUCCESS,
            _ => ExitCode::from(1),
        }
    })
}

fn main() -> ExitCode {
    qconform::out::quiet_on_broken_pipe();
    let cli = match parse_cli() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let code = match cli.command {
        Command::Check {
            format,
            output,
            strict,
            policy,
            repair,
            repair_out,
            quiet,
            reports,
            images,
        } => match repair.zip(repair_out) {
            Some((mode, new)) => qconform::repair::run(mode, &images, &new, output, strict),
            None => check::run_check(
                format.as_deref(),
                output,
                strict,
                &policy,
                &images,
                &reports.into(),
                quiet,
            ),
        },
        Command::Info { output, image } => check::run_info(output, &image),
        Command::Rules { output } => rules_cmd::run(output),
        Command::Cat {
            snapshot,
            backing,
            force,
            out,
            quiet,
            image,
        } => {
            let o = qconform::read::ReadOptions {
                snapshot,
                force,
                ..qconform::read::ReadOptions::new(backing.into())
            };
            qconform::read::run_cat(&image, &o, out.as_deref(), quiet)
        }
        Command::Map {
            output,
            backing,
            force,
            image,
        } => {
            let o = qconform::read::ReadOptions {
                force,
                ..qconform::read::ReadOptions::new(backing.into())
            };
            qconform::read::run_map(&image, &o, output)
        }
        Command::Golden { action } => match action {
            GoldenAction::Verify(a) => golden_cmd(false, a),
            GoldenAction::Update(a) => golden_cmd(true, a),
        },
        Command::Conform {
            output,
            root,
            quiet,
            policy,
            reports,
        } => conform::run(
            &root,
            output,
            &conform::Settings {
                reports: reports.into(),
                quiet,
                policy,
            },
        ),
        Command::VhostUser { action } => vhost_user(action),
        Command::Fuzz {
            action:
                FuzzAction::Image {
                    format,
                    target,
                    oracle,
                    time,
                    runs,
                    seed,
                    out,
                    timeout_ms,
                    memory_mb,
                    jobs,
                    expect,
                    output,
                },
        } => qconform::fuzz::run(
            &qconform::fuzz::Options {
                format,
                target,
                oracle,
                time: time.map(Duration::from_secs),
                runs: runs.or(if time.is_none() { Some(1000) } else { None }),
                seed,
                out,
                timeout: Duration::from_millis(timeout_ms),
                memory_mb,
                jobs,
                expect,
            },
            output,
        ),
        Command::Fuzz {
            action:
                FuzzAction::Differential {
                    format,
                    corpus,
                    generate,
                    seed,
                    expect,
                    out,
                    timeout_ms,
                    memory_mb,
                    output,
                },
        } => qconform::fuzz::differential::run(
            &qconform::fuzz::differential::Options {
                corpus,
                generate,
                seed,
                expect,
                out,
                timeout: Duration::from_millis(timeout_ms),
                memory_mb,
                ..qconform::fuzz::differential::Options::new(format)
            },
            output,
        ),
    };
    ExitCode::from(code as u8)
}

fn vhost_user(action: VhostAction) -> i32 {
    match action {
        VhostAction::Probe {
            socket,
            output,
            timeout_ms,
            lenient,
            no_robustness,
            transcript,
            backend_cmd,
            strict,
            data_path,
            disk,
            reports,
        } => {
            // The CI reports judge the main conversation's transcript (a
            // scratch one when --transcript is not given) and carry the
            // robustness probes' findings.
            let targets: qconform::ci_report::Targets = reports.into();
            let scratch = tempfile::tempdir();
            let transcript = match (&transcript, &scratch, targets.any()) {
                (None, Ok(d), true) => Some(d.path().join("probe.jsonl")),
                _ => transcript,
            };
            let label = socket.display().to_string();
            let (code, robustness) = probe::run_reporting(
                &probe::Options {
                    socket,
                    timeout: Duration::from_millis(timeout_ms),
                    profile: Profile { lenient },
                    transcript: transcript.clone(),
                    robustness: !no_robustness,
                    backend_cmd,
                    strict,
                    data_path: data_path
                        .map(|device| qconform::vhost::datapath::Options { device, disk }),
                },
                output,
            );
            match (&transcript, targets.any()) {
                (Some(t), true) => qconform::ci_report::vhost::write(
                    "qconform vhost-user probe",
                    &label,
                    t,
                    Profile { lenient },
                    code,
                    &robustness,
                    &targets,
                ),
                _ => code,
            }
        }
        VhostAction::Serve {
            socket,
            once,
            output,
            features,
            protocol_features,
            queues,
            max_ring_size,
            idle_timeout_ms,
            lenient,
            transcript,
        } => {
            let reference = serve::Options::reference(socket, queues);
            serve::run(
                &serve::Options {
                    once,
                    caps: serve::Caps {
                        features: features.unwrap_or(reference.caps.features),
                        protocol_features: protocol_features
                            .unwrap_or(reference.caps.protocol_features),
                        max_ring_size,
                        ..reference.caps
                    },
                    idle_timeout: Duration::from_millis(idle_timeout_ms),
                    profile: Profile { lenient },
                    transcript,
                    ..reference
                },
                output,
            )
        }
        VhostAction::Check {
            file,
            output,
            lenient,
            reports,
        } => {
            let code = vcheck::run(&file, output, Profile { lenient });
            let targets: qconform::ci_report::Targets = reports.into();
            if targets.any() {
                let label = file.display().to_string();
                let t = "qconform vhost-user check";
                qconform::ci_report::vhost::write(
                    t,
                    &label,
                    &file,
                    Profile { lenient },
                    code,
                    &[],
                    &targets,
                )
            } else {
                code
            }
        }
        VhostAction::Record {
            listen,
            connect,
            out,
            output,
            idle_timeout_ms,
            message_timeout_ms,
            lenient,
            description,
        } => qconform::vhost::record::run(
            &qconform::vhost::record::Options {
                listen,
                connect,
                out,
                idle_timeout: Duration::from_millis(idle_timeout_ms),
                message_timeout: Duration::from_millis(message_timeout_ms),
                profile: Profile { lenient },
                description,
            },
            output,
        ),
        VhostAction::Replay {
            file,
            socket,
            output,
            timeout_ms,
            lenient,
            backend_cmd,
        } => qconform::vhost::replay::run_file(
            &file,
            &socket,
            backend_cmd.as_deref(),
            Duration::from_millis(timeout_ms),
            Profile { lenient },
            output,
        ),
        VhostAction::Fuzz {
            backend_cmd,
            time,
            runs,
            seed,
            out,
            timeout_ms,
            jobs,
            expect,
            output,
        } => qconform::vhost::fuzz::run(
            &qconform::vhost::fuzz::Options {
                backend_cmd,
                time: time.map(Duration::from_secs),
                runs: runs.or(if time.is_none() { Some(100) } else { None }),
                seed,
                out,
                timeout: Duration::from_millis(timeout_ms),
                jobs,
                expect,
            },
            output,
        ),
        VhostAction::Matrix {
            transcripts,
            backends,
            output,
            reports,
            timeout_ms,
        } => qconform::vhost::matrix::run(
            &transcripts,
            &backends,
            output,
            &reports.into(),
            Duration::from_millis(timeout_ms),
        ),
    }
}

/// Which files the backing and data file names inside an image may reach.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum BackingArg {
    /// Relative names that resolve, after symlinks, to regular files inside the image's directory.
    Confined,
    /// Also absolute names (still only regular files, never protocols such as json: or nbd:).
    Follow,
    /// Open no backing file and no data file.
    Ignore,
}

impl From<BackingArg> for qconform_core::disk::Backing {
    fn from(b: BackingArg) -> Self {
        match b {
            BackingArg::Confined => Self::Confined,
            BackingArg::Follow => Self::Follow,
            BackingArg::Ignore => Self::Ignore,
        }
    }
}
