//! `git-lfs-s3`: git-lfs's standalone custom transfer agent for S3 remotes
//! (and `git-lfs-s3 install|uninstall|migrate|enable-debug|disable-debug`). A thin shim: the
//! git-s3 daemon does the transfers with its warm S3 clients.

use git_s3_proto::pb::Program;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut argv = std::env::args();
    let argv0 = argv.next().unwrap_or_else(|| "git-lfs-s3".into());
    let args: Vec<String> = argv.collect();
    let program = match args.first().map(String::as_str) {
        Some("--version" | "-V") => {
            println!("git-lfs-s3 (git-s3) {}", git_s3_proto::VERSION);
            return;
        }
        Some("install" | "enable-debug" | "disable-debug" | "uninstall" | "migrate" | "--help" | "-h" | "help") => {
            let mut cli = vec!["lfs".to_string()];
            cli.extend(args);
            return finish(git_s3_proto::client::run_session(Program::Cli, cli, argv0).await);
        }
        _ => Program::LfsAgent,
    };
    finish(git_s3_proto::client::run_session(program, args, argv0).await)
}

fn finish(r: Result<i32, git_s3_proto::client::ClientError>) {
    let code = match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("git-lfs-s3: {e}");
            1
        }
    };
    std::process::exit(code);
}
