//! `git-s3-daemon`: the per-user daemon. Normally started by a shim; `run`
//! stays in the foreground for service managers (`git s3 daemon run`).
#![warn(clippy::too_many_lines)]

use clap::Parser;

#[derive(Parser)]
#[command(name = "git-s3-daemon", version, about = "The git-s3 daemon (normally started by git-remote-s3 / git-lfs-s3 / git s3)")]
struct Args {
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(clap::Subcommand)]
enum Cmd {
    /// Run the daemon (in the foreground; logs also go to stderr with --foreground).
    Run {
        #[arg(long)]
        foreground: bool,
        /// Exit after this many idle seconds (default 1800, or GIT_S3_DAEMON_IDLE_SECONDS).
        #[arg(long)]
        idle_timeout: Option<u64>,
    },
    /// Run age plugins for the daemon, in the caller's environment (storage/crypt/plugins.rs).
    #[command(hide = true)]
    AgePluginBridge {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Write the man pages and shell completions of `git s3` (for packaging/install.sh).
    #[command(hide = true)]
    GenerateDocs {
        /// Directory for git-s3.1 and git-s3-<command>.1.
        #[arg(long)]
        man: Option<std::path::PathBuf>,
        /// Directory for the bash, zsh and fish completions.
        #[arg(long)]
        completions: Option<std::path::PathBuf>,
    },
}

fn main() {
    let args = Args::parse();
    let (foreground, idle) = match args.cmd {
        Some(Cmd::Run { foreground, idle_timeout }) => (foreground, idle_timeout),
        Some(Cmd::GenerateDocs { man, completions }) => std::process::exit(generate_docs(man, completions)),
        Some(Cmd::AgePluginBridge { args }) => std::process::exit(git_s3_daemon::age_plugin_bridge(&args)),
        None => (true, None),
    };
    // The daemon serves many callers: never let its own AWS environment leak
    // into a request. Clients are built only from what each shim forwards.
    let aws_vars: Vec<String> = std::env::vars().map(|(k, _)| k).filter(|k| k.starts_with("AWS_")).collect();
    for k in aws_vars {
        // SAFETY: single-threaded here, before the runtime starts.
        #[allow(unsafe_code)]
        unsafe {
            std::env::remove_var(k)
        };
    }
    let mut config = git_s3_daemon::server::socket::ServerConfig::from_env();
    if let Some(s) = idle {
        config.idle_timeout = std::time::Duration::from_secs(s);
    }
    let lock = match git_s3_daemon::server::socket::take_instance_lock() {
        Ok(l) => l,
        Err(git_s3_daemon::server::socket::ServerError::AlreadyRunning(p)) => {
            if foreground {
                eprintln!("git-s3-daemon: another daemon is already running (lock {} held)", p.display());
                std::process::exit(1);
            }
            std::process::exit(0);
        }
        Err(e) => {
            eprintln!("git-s3-daemon: {e}");
            std::process::exit(1);
        }
    };
    let _guard = git_s3_daemon::server::logging::init(&git_s3_proto::paths::log_file(), foreground);
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("git-s3-daemon: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(git_s3_daemon::server::socket::serve(config, lock)) {
        tracing::error!(error = %e, "daemon failed");
        eprintln!("git-s3-daemon: {e}");
        std::process::exit(1);
    }
}

fn generate_docs(man: Option<std::path::PathBuf>, completions: Option<std::path::PathBuf>) -> i32 {
    use git_s3_daemon::cli::{dispatch, help_docs};
    type Writer = fn(clap::Command, &std::path::Path) -> std::io::Result<Vec<std::path::PathBuf>>;
    if man.is_none() && completions.is_none() {
        eprintln!("git-s3-daemon generate-docs: give --man <dir> and/or --completions <dir>");
        return 2;
    }
    let jobs: [(Option<std::path::PathBuf>, Writer); 2] = [(man, help_docs::write_man_pages), (completions, help_docs::write_completions)];
    for (dir, write) in jobs {
        let Some(dir) = dir else { continue };
        match write(dispatch::command(), &dir) {
            Ok(files) => files.iter().for_each(|f| println!("{}", f.display())),
            Err(e) => {
                eprintln!("git-s3-daemon generate-docs: cannot write into {}: {e}", dir.display());
                return 1;
            }
        }
    }
    0
}
