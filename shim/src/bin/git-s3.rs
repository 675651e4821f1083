//! `git-s3` (`git s3 …`): the user's command. Daemon control runs here;
//! everything else (status, doctor, delete-branch, protect, lfs, cache) is a
//! session served by the daemon.

use std::time::{Duration, Instant};

use git_s3_proto::client;
use git_s3_proto::pb::{self, Program};

const DAEMON_HELP: &str = "usage: git s3 daemon <start|stop|restart|run|status> [--json]

  start     start the daemon in the background (no-op when it runs)
  stop      stop the running daemon
  restart   stop, then start
  run       run the daemon in the foreground (for systemd/launchd)
  status    is it running? pid, version, uptime, socket

Documentation: docs/operations.md#git-s3-daemon in the git-s3 repository; man git-s3-daemon";

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut argv = std::env::args();
    let argv0 = argv.next().unwrap_or_else(|| "git-s3".into());
    let args: Vec<String> = argv.collect();
    let code = match args.first().map(String::as_str) {
        Some("daemon") => daemon(&args[1..]).await,
        Some("--version" | "-V") => {
            println!("git-s3 {}", git_s3_proto::VERSION);
            0
        }
        _ => match client::run_session(Program::Cli, args, argv0).await {
            Ok(code) => code,
            Err(e) => {
                eprintln!("git s3: {e}");
                1
            }
        },
    };
    std::process::exit(code);
}

async fn daemon(args: &[String]) -> i32 {
    let json = args.iter().any(|a| a == "--json");
    let socket = git_s3_proto::paths::socket_path();
    match args.first().map(String::as_str) {
        Some("start") => match client::connect_or_start().await {
            Ok(mut c) => match c.hello(pb::HelloRequest { client_version: git_s3_proto::VERSION.into() }).await {
                Ok(r) => {
                    let r = r.into_inner();
                    println!("git-s3 daemon {} running (pid {}, socket {})", r.version, r.pid, r.socket_path);
                    0
                }
                Err(e) => {
                    eprintln!("git s3 daemon start: {}", e.message());
                    1
                }
            },
            Err(e) => {
                eprintln!("git s3 daemon start: {e}");
                1
            }
        },
        Some("stop") => stop(&socket).await,
        Some("restart") => {
            let rc = stop(&socket).await;
            if rc > 1 {
                return rc;
            }
            Box::pin(daemon(&["start".to_string()])).await
        }
        Some("run") => {
            use std::os::unix::process::CommandExt;
            let err = std::process::Command::new(client::daemon_exe()).arg("run").arg("--foreground").args(&args[1..]).exec();
            eprintln!("git s3 daemon run: cannot run {}: {err}", client::daemon_exe().display());
            1
        }
        Some("status") => status(&socket, json).await,
        _ => {
            eprintln!("{DAEMON_HELP}");
            if args.is_empty() || args[0] == "--help" || args[0] == "-h" {
                0
            } else {
                2
            }
        }
    }
}

/// `git s3 daemon status`: 0 whether it runs or not (not running is an
/// answer), 1 when a running daemon does not answer.
async fn status(socket: &std::path::Path, json: bool) -> i32 {
    let mut last_error = String::new();
    // A daemon killed a moment ago still accepts a connection (its socket
    // lives until the process is torn down), then drops it: ask again.
    for attempt in 0..3 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let Ok(mut c) = client::connect(socket).await else {
            if json {
                println!("{}", serde_json::json!({"running": false, "socket": socket.display().to_string()}));
            } else {
                println!("not running (socket {})", socket.display());
            }
            return 0;
        };
        match c.daemon_status(pb::DaemonStatusRequest {}).await {
            Ok(r) => {
                let r = r.into_inner();
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"running": true, "pid": r.pid, "version": r.version,
                            "uptime_seconds": r.uptime_seconds, "socket": r.socket_path, "log_file": r.log_file,
                            "active_sessions": r.active_sessions})
                    );
                } else {
                    println!("running: pid {} version {} uptime {}s socket {}", r.pid, r.version, r.uptime_seconds, r.socket_path);
                }
                return 0;
            }
            Err(e) => last_error = e.message().to_string(),
        }
    }
    eprintln!("git s3 daemon status: the daemon accepts connections but does not answer ({last_error}); `git s3 daemon restart` starts a new one");
    1
}

/// 0: stopped; 1: was not running.
async fn stop(socket: &std::path::Path) -> i32 {
    let mut c = match client::connect(socket).await {
        Ok(c) => c,
        Err(_) => {
            println!("git-s3 daemon is not running");
            return 1;
        }
    };
    let pid = c.hello(pb::HelloRequest { client_version: git_s3_proto::VERSION.into() }).await.map(|r| r.into_inner().pid).ok();
    if let Err(e) = c.shutdown(pb::ShutdownRequest {}).await {
        eprintln!("git s3 daemon stop: {}", e.message());
        return 2;
    }
    drop(c);
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        // Gone: no socket, and the process has exited (it finishes its
        // background work, e.g. uploads, after closing the socket).
        let exited = pid.is_none_or(|p| !client::process_alive(p));
        if client::connect(socket).await.is_err() && !socket.exists() && exited {
            match pid {
                Some(p) => println!("git-s3 daemon stopped (pid {p})"),
                None => println!("git-s3 daemon stopped"),
            }
            return 0;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("git s3 daemon stop: the daemon did not exit within 60 s");
    2
}
