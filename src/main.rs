//! The `understudy` binary: parses the command line and calls into the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use understudy::cli::{self, AdminCall};
use understudy::config::Config;

/// mimalloc: glibc's malloc/free was 8 % of the proxy's CPU under load (benches/README.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// A simulated LLM upstream (OpenAI and Anthropic shapes), for tests and benchmarks.
    #[command(hide = true)]
    MockUpstream {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    match args.cmd {
        Cmd::CheckConfig { file } => match Config::load(&file) {
            Ok(cfg) => {
                cli::say(&format!(
                    "{}: ok ({} upstreams, {} routes)",
                    file.display(),
                    cfg.upstreams.len(),
                    cfg.routes.len()
                ));
                ExitCode::SUCCESS
            }
            Err(e) => {
                cli::complain(&e.to_string());
                ExitCode::from(2)
            }
        },
        Cmd::Serve { config } => cli::serve(&config),
        Cmd::Demo { port, exit } => cli::demo(port, exit),
        Cmd::MockUpstream { listen } => cli::mock_upstream(&listen),
        Cmd::Status { route, json } => cli::admin(AdminCall::Status { route, json }),
        Cmd::History { route, json } => cli::admin(AdminCall::History { route, json }),
        Cmd::Promote {
            route,
            phase,
            share,
        } => cli::admin(AdminCall::Promote {
            route,
            phase,
            share,
        }),
        Cmd::Rollback { route, to, reason } => {
            cli::admin(AdminCall::Rollback { route, to, reason })
        }
        Cmd::Finalize { route } => cli::admin(AdminCall::Finalize { route }),
    }
}
