use clap::{Parser, Subcommand};
use qconform::{check, conform, golden, rules_cmd, Output};
use std::path::PathBuf;
use std::process::ExitCode;

/// Conformance harness for the qcow2, QED and Parallels image formats.
#[derive(Parser)]
#[command(name = "qconform", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check images like `qemu-img check` (exit 0 clean, 1 not checked, 2 corruptions, 3 leaks only).
    Check {
        /// Format (qcow2); detected from the magic when absent.
        #[arg(short = 'f', long = "format")]
        format: Option<String>,
        #[arg(long, value_enum, default_value = "human")]
        output: Output,
        /// Count spec violations qemu-img ignores as corruptions.
        #[arg(long)]
        strict: bool,
        #[arg(required = true)]
        images: Vec<PathBuf>,
    },
    /// Show the header, features, extensions, snapshots and bitmaps.
    Info {
        #[arg(long, value_enum, default_value = "human")]
        output: Output,
        image: PathBuf,
    },
    /// List every rule qconform checks.
    Rules {
        #[arg(long, value_enum, default_value = "human")]
        output: Output,
    },
    /// Golden files: verify the corpus against them, or rewrite them.
    Golden {
        #[command(subcommand)]
        action: GoldenAction,
    },
    /// The main job: check every corpus image and compare with golden/.
    Conform {
        #[arg(long, value_enum, default_value = "human")]
        output: Output,
        /// Repository root holding corpus/ and golden/.
        #[arg(long, default_value = ".")]
        root: PathBuf,
    },
}

#[derive(Subcommand)]
enum GoldenAction {
    /// Compare every corpus case with its golden file.
    Verify { root: Option<PathBuf> },
    /// Rewrite the golden files from the current reports.
    Update { root: Option<PathBuf> },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Check {
            format,
            output,
            strict,
            images,
        } => check::run_check(format.as_deref(), output, strict, &images),
        Command::Info { output, image } => check::run_info(output, &image),
        Command::Rules { output } => rules_cmd::run(output),
        Command::Golden { action } => match action {
            GoldenAction::Verify { root } => {
                conform::run(&root.unwrap_or_else(|| ".".into()), Output::Human)
            }
            GoldenAction::Update { root } => golden::update(&root.unwrap_or_else(|| ".".into())),
        },
        Command::Conform { output, root } => conform::run(&root, output),
    };
    ExitCode::from(code as u8)
}
