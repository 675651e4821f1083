//! `git-remote-s3` (also installed as `git-remote-s3+zip`): git's remote
//! helper for s3:// URLs. A thin shim: it forwards the protocol to the
//! git-s3 daemon, starting the daemon when none answers.
//!
//! `git-remote-s3 doctor …` (git-remote-s3 0.4.2's spelling) runs `git s3 doctor …`.

use git_s3_proto::pb::Program;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut argv = std::env::args();
    let argv0 = argv.next().unwrap_or_else(|| "git-remote-s3".into());
    let args: Vec<String> = argv.collect();
    let program = match args.first().map(String::as_str) {
        Some("doctor" | "delete-branch" | "protect" | "unprotect") => Program::Cli,
        Some("--version" | "-V") => {
            println!("git-remote-s3 (git-s3) {}", git_s3_proto::VERSION);
            return;
        }
        _ => Program::RemoteHelper,
    };
    let code = match git_s3_proto::client::run_session(program, args, argv0).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("fatal: git-remote-s3: {e}");
            128
        }
    };
    std::process::exit(code);
}
