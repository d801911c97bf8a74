//! The qconform CLI's library half: subcommands, the shipped corpus recipes
//! and golden-file handling, so integration tests and xtask can reuse them.

pub mod check;
pub mod ci_report;
pub mod conform;
pub mod corpus;
pub mod fuzz;
pub mod golden;
pub mod info_json;
pub mod out;
pub mod progress;
pub mod read;
pub mod repair;
pub mod rules_cmd;
pub mod upload_policy;
pub mod vhost;

/// Output format of a subcommand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Human,
    Json,
}
