//! Generated histories that several test files measure: the same bytes in
//! every run (seeded), so byte counts are comparable across files.

use std::path::PathBuf;

use crate::TestEnv;

/// Commits of [`delta_history`].
pub const DELTA_HISTORY_COMMITS: u32 = 40;
/// The files every commit of [`delta_history`] rewrites a few lines of.
pub const DELTA_HISTORY_FILES: [&str; 3] = ["a.txt", "b.txt", "dir/c.txt"];

/// Pseudo-random, incompressible lines of 64 bytes (deterministic).
pub fn noise_line(seed: u64) -> String {
    let mut s: String = crate::xorshift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1).take(63).map(|x| (b'a' + (x % 26) as u8) as char).collect();
    s.push('\n');
    s
}

/// A repository at `work/<name>` (`object_format`: sha1, sha256) of
/// [`DELTA_HISTORY_COMMITS`] commits, each rewriting a few lines of three
/// ~40 KB files: git stores most versions of each file as deltas on another
/// one, so an old commit's files need their delta bases too. From commit 11
/// on, a new 20 KB file each: what an old commit lacks weighs on the remote
/// (a lazy checkout must not read it). Repacked with fresh deltas, so the
/// pushed pack has chains of them, as a real repository's packs do.
pub fn delta_history(env: &TestEnv, name: &str, object_format: &str) -> PathBuf {
    let repo = env.path(name);
    std::fs::create_dir_all(&repo).expect("repository directory");
    env.git(&repo, &["init", "-q", "-b", "main", &format!("--object-format={object_format}")]);
    let files = DELTA_HISTORY_FILES;
    let mut lines: Vec<Vec<String>> = (0..files.len()).map(|k| (0..640).map(|l| noise_line((k * 100_000 + l) as u64)).collect()).collect();
    let mut script = String::new();
    for i in 1..=DELTA_HISTORY_COMMITS {
        let when = 1_700_000_000 + u64::from(i) * 86_400;
        script.push_str(&format!("commit refs/heads/main\nmark :{i}\ncommitter T <t@example.com> {when} +0000\ndata <<EOM\ncommit {i}\nEOM\n"));
        if i > 1 {
            script.push_str(&format!("from :{}\n", i - 1));
        }
        for (k, f) in files.iter().enumerate() {
            for j in 0..4u64 {
                let line = ((u64::from(i) * 37 + j * 151 + k as u64 * 13) % 640) as usize;
                lines[k][line] = noise_line(1_000_000 + u64::from(i) * 1000 + j * 10 + k as u64);
            }
            let content: String = lines[k].concat();
            script.push_str(&format!("M 644 inline {f}\ndata {}\n{content}\n", content.len()));
        }
        if i > 10 {
            let content: String = (0..320u64).map(|l| noise_line(5_000_000 + u64::from(i) * 1000 + l)).collect();
            script.push_str(&format!("M 644 inline later/{i}.txt\ndata {}\n{content}\n", content.len()));
        }
    }
    crate::fast_import(env, &repo, &script);
    env.git(&repo, &["checkout", "-q", "main"]);
    env.git(&repo, &["repack", "-adfq"]);
    repo
}
