//! The `understudy` binary: parses the command line and calls into the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use understudy::{
    admin_command, check_config, drill_command, export_command, replay_command, serve, AdminCall,
    Pick, ReplayArgs,
};

#[derive(Parser)]
#[command(
    name = "understudy",
    version,
    about = "Shadow, score and roll back LLM releases behind one base URL"
)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the proxy.
    Serve {
        #[arg(long, default_value = "config/understudy.toml")]
        config: PathBuf,
    },
    /// Self-contained demo on simulated upstreams; no API key needed.
    #[cfg(feature = "sim")]
    Demo {
        /// Proxy port (admin and /metrics on the next one).
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Exit when the scenario has played out instead of serving until Ctrl-C.
        #[arg(long)]
        exit: bool,
    },
    /// Validate a configuration file; print every problem with its line.
    CheckConfig { file: PathBuf },
    /// Routes with phase, releases and quality (from the admin API).
    Status {
        route: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// A route's release history and events.
    History {
        route: String,
        #[arg(long)]
        json: bool,
    },
    /// Move a route's candidate to a phase.
    Promote {
        route: String,
        #[arg(long)]
        phase: String,
        #[arg(long)]
        share: Option<f64>,
    },
    /// Roll a route back to stable, or to an earlier release.
    Rollback {
        route: String,
        #[arg(long)]
        to: Option<u32>,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Make a promoted candidate the new stable.
    Finalize { route: String },
    /// Embedding routes: mark a vector index dropped (rolling back onto it is then refused).
    DropIndex { route: String, index: String },
    /// Pause, resume or skip a step of a route's automatic rollout.
    Rollout {
        route: String,
        #[arg(value_parser = ["pause", "resume", "skip"])]
        action: String,
    },
    /// Captured pairs as JSON Lines on stdout (request messages, stable's answer as the
    /// reference, the candidate's answer, scores, release numbers).
    Export {
        route: String,
        /// The N lowest-scored pairs (the default, N = 200).
        #[arg(long, value_name = "N", conflicts_with = "random")]
        worst: Option<usize>,
        /// N pairs drawn uniformly from every pair scored.
        #[arg(long, value_name = "N")]
        random: Option<usize>,
        #[arg(long, default_value = "jsonl")]
        format: String,
    },
    /// Score a release on saved cases; exit 1 if the judge would roll it back.
    Replay {
        route: String,
        /// JSON Lines: `understudy export` output, or one API request per line.
        #[arg(long)]
        cases: PathBuf,
        /// The release to test (default: the route's candidate).
        #[arg(long)]
        release: Option<u32>,
        /// Cases in flight at once.
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        /// Replay at most this many cases (the first ones of the file).
        #[arg(long)]
        max_cases: Option<usize>,
        /// Stop starting cases once this many tokens were spent (all three answers counted).
        #[arg(long)]
        max_tokens: Option<u64>,
        /// Write the JSON report here.
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// Timed rollback drill on a running server: roll back, probe, restore the candidate.
    Drill {
        route: String,
        /// The proxy listener the probe request goes through.
        #[arg(
            long,
            env = "UNDERSTUDY_PROXY_URL",
            default_value = "http://127.0.0.1:8080"
        )]
        proxy_url: String,
    },
    /// A simulated LLM upstream (OpenAI and Anthropic shapes), for tests and benchmarks.
    #[cfg(feature = "sim")]
    #[command(hide = true)]
    MockUpstream {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
        /// A fault for every model: a 4xx/5xx status, reset, hang, stall or broken-sse.
        #[arg(long)]
        fault: Option<understudy_sim::Fault>,
        /// The share of requests the fault applies to.
        #[arg(long, default_value_t = 1.0)]
        fault_rate: f64,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    match args.cmd {
        Cmd::CheckConfig { file } => check_config(&file),
        Cmd::Serve { config } => serve(&config),
        #[cfg(feature = "sim")]
        Cmd::Demo { port, exit } => understudy::demo(port, exit),
        #[cfg(feature = "sim")]
        Cmd::MockUpstream {
            listen,
            fault,
            fault_rate,
        } => understudy::mock_upstream(&listen, fault, fault_rate),
        Cmd::Status { route, json } => admin_command(AdminCall::Status { route, json }),
        Cmd::History { route, json } => admin_command(AdminCall::History { route, json }),
        Cmd::Promote {
            route,
            phase,
            share,
        } => admin_command(AdminCall::Promote {
            route,
            phase,
            share,
        }),
        Cmd::Rollback { route, to, reason } => {
            admin_command(AdminCall::Rollback { route, to, reason })
        }
        Cmd::Finalize { route } => admin_command(AdminCall::Finalize { route }),
        Cmd::DropIndex { route, index } => admin_command(AdminCall::DropIndex { route, index }),
        Cmd::Rollout { route, action } => admin_command(AdminCall::Rollout { route, action }),
        Cmd::Export {
            route,
            worst,
            random,
            format,
        } => {
            let pick = match random {
                Some(n) => Pick::Random(n),
                None => Pick::Worst(worst.unwrap_or(200)),
            };
            export_command(&route, pick, &format)
        }
        Cmd::Replay {
            route,
            cases,
            release,
            concurrency,
            max_cases,
            max_tokens,
            report,
        } => replay_command(&ReplayArgs {
            route,
            cases,
            release,
            concurrency,
            max_cases,
            max_tokens,
            report,
        }),
        Cmd::Drill { route, proxy_url } => drill_command(&route, &proxy_url),
    }
}
