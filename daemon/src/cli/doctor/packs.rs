//! `git s3 doctor` on a packs-format remote: the manifest is readable, every
//! pack it names is in the bucket (`.pack` and `.idx`, with the listed
//! size), HEAD names a ref (fixable), and it explains what else it finds: a
//! prefix holding both formats, a manifest frozen by an unfinished
//! migration, unreferenced or retired packs and piled-up packs (all for
//! `git s3 gc` or `git s3 migrate`, which it names).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::common::{choose_head, DoctorArgs, Report};
use crate::cli::remote::{branch_ref, Remote, View};
use crate::cli::{human_bytes, CliError, Ctx};
use crate::s3::store::ObjectInfo;
use crate::storage::crypt::RemoteKey;
use crate::storage::packs::gc::DEFAULT_GRACE_SECONDS;
use crate::storage::packs::manifest::{self, read_manifest, unix_now, update_manifest, Manifest};
use crate::storage::StorageError;

/// Packs at which doctor suggests a gc (the background gc's default).
const MANY_PACKS: usize = 16;

/// What the packs part found, for the JSON document.
pub(super) struct PacksFindings {
    pub(crate) refs: Vec<Value>,
    /// `"sha1"` / `"sha256"`, null when unknown (empty, or unreadable manifest).
    pub(crate) object_format: Value,
    pub(crate) head: Option<String>,
    pub(crate) manifest: Value,
}

/// Checks `remote` as a packs remote. None when the prefix has no manifest
/// (the bundle checks apply).
pub(super) async fn check(
    ctx: &mut Ctx,
    remote: &Remote,
    view: &View,
    args: &DoctorArgs,
    rep: &mut Report,
    interactive: bool,
) -> Result<Option<PacksFindings>, CliError> {
    let key = manifest::manifest_key(&remote.url);
    // An encrypted remote (issue 22): its key names and decrypts its objects.
    let crypt = remote.open_key(ctx).await?;
    let (m, etag) = match read_manifest(&remote.store, &remote.url).await {
        Ok(Some(found)) => found,
        Ok(None) => return Ok(None),
        Err(StorageError::Corrupt(msg)) => {
            rep.line(ctx, format!("{}: packs format", remote.url));
            rep.line(ctx, "");
            rep.line(ctx, format!("The manifest is unreadable: {msg}"));
            rep.line(
                ctx,
                "Nothing can be fetched or pushed until it is repaired: restore an earlier version of it (with bucket \
versioning), or push a complete clone to a new prefix (`git push --mirror`).",
            );
            rep.issues.push(json!({"kind": "manifest_unreadable", "key": key, "error": msg}));
            rep.errors.push(format!("{key}: {msg}"));
            return Ok(Some(PacksFindings {
                refs: Vec::new(),
                object_format: Value::Null,
                head: None,
                manifest: json!({"key": key, "readable": false}),
            }));
        }
        Err(e) => return Err(e.into()),
    };
    let protected = |r: &str| m.protected.contains(r) || view.is_protected(r);
    rep.line(ctx, format!("{}: packs format (manifest serial {}, {} packs, {})", remote.url, m.serial, m.packs.len(), human_bytes(m.pack_bytes())));
    if m.refs.is_empty() {
        rep.line(ctx, "  no refs (empty repository)");
    }
    for (name, sha) in &m.refs {
        let mark = if protected(name) { "*" } else { " " };
        rep.line(ctx, format!(" {mark} {name}: {}", &sha[..12.min(sha.len())]));
    }
    match m.known_format() {
        Some(f) => rep.line(ctx, format!("  object format: {f}")),
        None => rep.line(ctx, "  object format: none yet (the first push sets it)"),
    }
    match (&m.head, m.live_head()) {
        (Some(h), Some(_)) => rep.line(ctx, format!("  HEAD: {h}")),
        (Some(h), None) => rep.line(ctx, format!("  HEAD: {h} (dangling)")),
        (None, _) => rep.line(ctx, "  HEAD: missing"),
    }

    if let Some(why) = &m.frozen {
        rep.issues.push(json!({"kind": "frozen_manifest", "why": why}));
        rep.line(ctx, "");
        rep.line(
            ctx,
            format!("The manifest is frozen ({why}): a `git s3 migrate --to bundles` started and has not finished, so pushes are refused."),
        );
        rep.line(
            ctx,
            format!("Finish it with `git s3 migrate --to bundles {}`, or stay with packs: `git s3 migrate --to packs {}`.", remote.url, remote.url),
        );
    }
    if !view.scan.bundles.is_empty() {
        explain_both_formats(ctx, remote, view, &m, rep);
    }
    if crypt.is_none() && remote.store.head(&crate::storage::crypt::keyring_key(&remote.url)).await?.is_some() {
        explain_unfinished_crypt_migration(ctx, remote, rep);
    }
    check_packs(ctx, remote, crypt.as_ref(), &m, args, rep).await?;
    if let Err(e) = fix_head(ctx, remote, &m, args, rep, interactive).await {
        if matches!(e, CliError::Aborted | CliError::Usage(_)) {
            return Err(e);
        }
        rep.errors.push(format!("HEAD: {e}"));
        rep.line(ctx, format!("  failed: {e}"));
    }
    Ok(Some(PacksFindings {
        refs: m.refs.iter().map(|(n, s)| json!({"name": n, "sha": s, "protected": protected(n)})).collect(),
        object_format: json!(m.known_format()),
        head: m.head.clone(),
        manifest: json!({
            "key": key, "readable": true, "etag": etag, "serial": m.serial, "frozen": m.frozen, "object_format": m.known_format(),
            "packs": m.packs.len(), "pack_bytes": m.pack_bytes(), "retired": m.retired.len(),
        }),
    }))
}

/// A keyring beside a plaintext manifest: a `git s3 migrate --encrypt-to`
/// that has not switched yet, or a `--decrypt` that switched and has not
/// deleted the keyring (issue 22). Readers see the plaintext remote.
fn explain_unfinished_crypt_migration(ctx: &Ctx, remote: &Remote, rep: &mut Report) {
    let url = &remote.url;
    rep.issues.push(json!({"kind": "unfinished_crypt_migration", "keyring": crate::storage::crypt::keyring_key(url)}));
    rep.line(ctx, "");
    rep.line(
        ctx,
        format!(
            "A keyring is beside the plaintext manifest: a `git s3 migrate --encrypt-to` or `--decrypt` has not finished (readers see the plaintext remote). \
Finish it by running it again: `git s3 migrate --encrypt-to age1… {url}` or `git s3 migrate --decrypt {url}`."
        ),
    );
}

/// A prefix with a manifest and 0.4.2 bundles: git-s3 refuses it. Shows
/// each ref on both sides and the two ways out.
fn explain_both_formats(ctx: &Ctx, remote: &Remote, view: &View, m: &Manifest, rep: &mut Report) {
    let mut sides: BTreeMap<&str, (Option<&str>, Option<&str>)> = BTreeMap::new();
    for (r, s) in &m.refs {
        sides.entry(r).or_default().0 = Some(s);
    }
    for (r, b) in &view.scan.bundles {
        sides.entry(r).or_default().1 = b.first().map(|x| x.0.as_str());
    }
    rep.line(ctx, "");
    rep.line(ctx, "This prefix holds both formats (a packs manifest and git-remote-s3 bundles), so git-s3 refuses to read or push it:");
    let mut refs = Vec::new();
    for (r, (packs, bundles)) in &sides {
        let state = match (packs, bundles) {
            (Some(p), Some(b)) if p == b => "same in both".to_string(),
            (Some(p), Some(b)) => format!("manifest {}, bundle {}", &p[..12.min(p.len())], &b[..12.min(b.len())]),
            (Some(_), None) => "only in the manifest".to_string(),
            (None, Some(_)) => "only as a bundle".to_string(),
            (None, None) => continue,
        };
        rep.line(ctx, format!("  {r}: {state}"));
        refs.push(json!({"ref": r, "manifest": packs, "bundle": bundles}));
    }
    rep.issues.push(json!({"kind": "both_formats", "refs": refs}));
    rep.line(ctx, "To keep the packs format with every ref, run:");
    rep.line(ctx, format!("  git s3 migrate --to packs {}", remote.url));
    rep.line(
        ctx,
        "    (the bundles' refs are added to the manifest, a bundle winning over the manifest for the same ref, then the bundles are deleted)",
    );
    rep.line(ctx, "To go back to the git-remote-s3 0.4.2 layout instead, run:");
    rep.line(ctx, format!("  git s3 migrate --to bundles {}", remote.url));
    rep.line(ctx, "    (the manifest's refs are written as bundles, the manifest winning for the same ref; refs only in bundles stay)");
}

/// Every pack of the manifest is in the bucket; reports unreferenced,
/// retired and piled-up packs.
async fn check_packs(
    ctx: &Ctx,
    remote: &Remote,
    crypt: Option<&Arc<RemoteKey>>,
    m: &Manifest,
    args: &DoctorArgs,
    rep: &mut Report,
) -> Result<(), CliError> {
    let key = crypt.map(|k| &**k);
    let dir = manifest::packs_dir(&remote.url);
    let objects = remote.store.list(&dir).await?;
    let found = found_packs(&dir, &objects, key, m);
    let mut broken = 0;
    for p in &m.packs {
        let (pack, idx, _) = found.get(&p.name).cloned().unwrap_or((None, None, Duration::ZERO));
        if pack.is_some_and(|s| size_fits(key, p.size, s)) && idx.is_none() {
            restore_idx(ctx, remote, crypt, p, args, rep).await;
            continue;
        }
        let object = |ext: &str| match key {
            Some(k) => {
                let g = k.of_generation(p.key).unwrap_or(k);
                format!("pack-{}.{ext} (object {})", p.name, g.object_name(&format!("pack-{}.{ext}", p.name)))
            }
            None => format!("pack-{}.{ext}", p.name),
        };
        let problem = match pack {
            None => Some(format!("{} is missing", object("pack"))),
            Some(s) if !size_fits(key, p.size, s) => Some(format!("{} has {s} bytes, the manifest says {}", object("pack"), p.size)),
            _ => None,
        };
        if let Some(problem) = problem {
            broken += 1;
            rep.issues.push(json!({"kind": "broken_pack", "pack": p.name, "problem": problem}));
            rep.errors.push(problem.clone());
            rep.line(ctx, "");
            rep.line(ctx, format!("{problem} (listed in the manifest): clones and fetches that need it fail."));
        }
    }
    if broken > 0 {
        rep.line(
            ctx,
            "Packs cannot be rebuilt from the bucket alone. From a complete clone, push to a new prefix (`git push --mirror <new url>`) and switch to it.",
        );
    }
    let listed = m.referenced_pack_names();
    check_views(ctx, remote, m, &found, key, rep);
    let unreferenced: Vec<(&String, u64)> =
        found.iter().filter(|(n, _)| !listed.contains(n.as_str())).map(|(n, (p, i, _))| (n, p.unwrap_or(0) + i.unwrap_or(0))).collect();
    let grace = DEFAULT_GRACE_SECONDS;
    if !unreferenced.is_empty() {
        let bytes: u64 = unreferenced.iter().map(|u| u.1).sum();
        rep.issues.push(json!({"kind": "unreferenced_packs", "count": unreferenced.len(), "bytes": bytes,
            "packs": unreferenced.iter().map(|u| u.0.clone()).collect::<Vec<_>>()}));
        rep.line(ctx, "");
        rep.line(
            ctx,
            format!(
                "{} unreferenced pack(s), {} (left by pushes that died before their manifest write, or by a gc that lost a race): \
`git s3 gc {}` deletes them once they are older than its grace period ({grace} s by default).",
                unreferenced.len(),
                human_bytes(bytes),
                remote.url
            ),
        );
    }
    let now = unix_now();
    let expired = m.retired.iter().filter(|r| now.saturating_sub(r.since) >= grace).count();
    if expired > 0 {
        rep.issues.push(json!({"kind": "retired_packs_expired", "count": expired}));
        rep.line(ctx, "");
        rep.line(ctx, format!("{expired} retired pack(s) are past their grace period: `git s3 gc {}` deletes them.", remote.url));
    }
    if m.packs.len() >= MANY_PACKS {
        rep.issues.push(json!({"kind": "many_packs", "count": m.packs.len()}));
        rep.line(ctx, "");
        rep.line(ctx, format!("{} packs: fetches and clones make one request per pack. `git s3 gc {}` combines them.", m.packs.len(), remote.url));
    }
    Ok(())
}

/// The `.pack` and `.idx` in the bucket, by pack name: name → (.pack
/// size, .idx size, age). Plaintext objects are `pack-<name>.<ext>`; an
/// encrypted remote's (issue 22) are the HMAC'd names of the manifest's
/// packs, and any other object is listed under its own name (unreferenced).
/// Object maps (`.map`, encrypted ones by their HMAC'd names) are optional: left out.
type Found = BTreeMap<String, (Option<u64>, Option<u64>, Duration)>;

fn found_packs(dir: &str, objects: &[ObjectInfo], key: Option<&RemoteKey>, m: &Manifest) -> Found {
    // By object name: (pack name, is the .pack), or None for an object map.
    let named: HashMap<String, Option<(String, bool)>> = match key {
        Some(k) => m
            .referenced_pack_names()
            .into_iter()
            .flat_map(|n| {
                // Under every generation of the key: a pack may predate a rotation.
                k.generations().flat_map(move |g| {
                    [
                        (g.object_name(&format!("pack-{n}.pack")), Some((n.to_string(), true))),
                        (g.object_name(&format!("pack-{n}.idx")), Some((n.to_string(), false))),
                        (g.object_name(&format!("pack-{n}.map")), None),
                    ]
                })
            })
            .collect(),
        None => HashMap::new(),
    };
    let mut found = Found::new();
    for o in objects {
        let Some(leaf) = o.key.strip_prefix(dir) else { continue };
        let (name, is_pack) = match (key, named.get(leaf)) {
            (Some(_), Some(None)) => continue,
            (Some(_), Some(Some((n, p)))) => (n.clone(), *p),
            (Some(_), None) => (leaf.to_string(), true),
            (None, _) => match leaf
                .strip_prefix("pack-")
                .and_then(|r| r.strip_suffix(".pack").map(|n| (n, true)).or_else(|| r.strip_suffix(".idx").map(|n| (n, false))))
            {
                Some((n, p)) => (n.to_string(), p),
                None => continue,
            },
        };
        let e = found.entry(name).or_insert((None, None, o.age()));
        if is_pack {
            e.0 = Some(o.size);
        } else {
            e.1 = Some(o.size);
        }
    }
    found
}

/// Whether an object of `size` bytes holds a pack of `plain` bytes: the
/// same size, or for an age file (encrypted remote) the plaintext plus 16
/// bytes per 64 KiB chunk and a header (a few hundred bytes).
fn size_fits(key: Option<&RemoteKey>, plain: u64, size: u64) -> bool {
    match key {
        None => size == plain,
        Some(_) => {
            let payload = plain.saturating_add(16 * plain.div_ceil(64 * 1024).max(1));
            size > payload && size - payload <= 4096
        }
    }
}

/// Views: missing, older than the packs, or naming packs gone from the
/// bucket (`found`, from [`found_packs`]): advice to run gc.
fn check_views(ctx: &Ctx, remote: &Remote, m: &Manifest, found: &Found, key: Option<&RemoteKey>, rep: &mut Report) {
    let gone: Vec<&str> = m
        .views
        .iter()
        .flat_map(|v| v.packs())
        .filter(|p| !found.get(&p.name).and_then(|f| f.0).is_some_and(|s| size_fits(key, p.size, s)))
        .map(|p| p.name.as_str())
        .collect();
    if !m.packs.is_empty() && (crate::storage::packs::gc::views_stale(m) || !gone.is_empty()) {
        let uncovered: u64 = m.uncovered().map(|p| p.size).sum();
        let why = if m.views.is_none() {
            "no views".to_string()
        } else if !gone.is_empty() {
            format!("views naming {} pack(s) missing from the bucket", gone.len())
        } else {
            format!("views older than {} pack(s) ({})", m.uncovered().count(), human_bytes(uncovered))
        };
        rep.advice.push(json!({"kind": "views_stale", "views": m.views.is_some(), "uncovered_packs": m.uncovered().count(), "uncovered_bytes": uncovered, "missing": gone}));
        rep.line(ctx, "");
        rep.line(
            ctx,
            format!(
                "{why}: shallow (--depth 1) and partial (--filter=blob:none) clones download those packs whole. \
`git s3 gc {}` writes new views.",
                remote.url
            ),
        );
    }
}

/// A pack whose `.idx` is missing (a daemon stopped right after the push's
/// manifest write): readers do not need it, so this is not an error; doctor
/// re-creates it from the pack unless `--dry-run`.
async fn restore_idx(ctx: &Ctx, remote: &Remote, key: Option<&Arc<RemoteKey>>, pack: &manifest::PackEntry, args: &DoctorArgs, rep: &mut Report) {
    let name = &pack.name;
    rep.issues.push(json!({"kind": "missing_idx", "pack": name}));
    rep.line(ctx, "");
    rep.line(ctx, format!("pack-{name}.idx is missing (a daemon stopped before uploading it; fetches do not need it)."));
    if args.dry_run {
        rep.line(ctx, "Would re-create it from the pack.");
        rep.actions.push(json!({"action": "would_restore_idx", "pack": name}));
        return;
    }
    let tmp = ctx.state.cache.root().join("tmp");
    match crate::storage::packs::scratch::restore_idx(&remote.store, &remote.url, key, pack, &tmp, &ctx.env).await {
        Ok(bytes) => {
            rep.line(ctx, format!("Re-created pack-{name}.idx ({})", human_bytes(bytes)));
            rep.actions.push(json!({"action": "restored_idx", "pack": name}));
        }
        Err(e) => {
            rep.line(ctx, format!("  failed: {e}"));
            rep.errors.push(format!("pack-{name}.idx: {e}"));
        }
    }
}

/// The manifest's HEAD names no ref while branches exist: set it (flag,
/// prompt, or main/master/first branch), with a conditional manifest write.
async fn fix_head(ctx: &mut Ctx, remote: &Remote, m: &Manifest, args: &DoctorArgs, rep: &mut Report, interactive: bool) -> Result<(), CliError> {
    let branches: Vec<String> = m.refs.keys().filter(|r| r.starts_with("refs/heads/")).cloned().collect();
    if m.live_head().is_some() || branches.is_empty() {
        return Ok(());
    }
    rep.line(ctx, "");
    match &m.head {
        Some(h) => {
            rep.issues.push(json!({"kind": "dangling_head", "head": h}));
            rep.line(ctx, format!("HEAD names {h}, which does not exist"));
        }
        None => {
            rep.issues.push(json!({"kind": "missing_head"}));
            rep.line(ctx, "HEAD is missing");
        }
    }
    let choice = args.head.as_deref().map(branch_ref).transpose()?;
    let target = choose_head(ctx, &branches, choice, interactive).await?;
    if args.dry_run {
        rep.line(ctx, format!("Would set HEAD to {target}"));
        rep.actions.push(json!({"action": "would_set_head", "ref": target}));
        return Ok(());
    }
    let t = target.clone();
    update_manifest(&remote.store, &remote.url, |m| {
        if m.live_head().is_some() || !m.refs.contains_key(&t) {
            return Ok(false); // fixed or changed by someone else meanwhile
        }
        m.head = Some(t.clone());
        Ok(true)
    })
    .await?;
    rep.line(ctx, format!("Set HEAD to {target}"));
    rep.actions.push(json!({"action": "set_head", "ref": target}));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_age_file_fits_the_plaintext_size_the_manifest_lists() {
        let k = RemoteKey::generate();
        for n in [0usize, 1, 1000, 65_535, 65_536, 65_537, 3 * 65_536, 300_000] {
            let data = vec![7u8; n];
            let enc = crate::storage::crypt::codec::encrypt_bytes(&k, &data).unwrap();
            let len = enc.len() as u64;
            assert!(size_fits(Some(&k), n as u64, len), "{n} bytes: an age file of {len}");
            // a pack of another size (one chunk more or less) does not fit
            assert!(!size_fits(Some(&k), n as u64 + 65_536, len), "{n}");
            assert!(!size_fits(Some(&k), (n as u64).saturating_sub(65_536), len) || n < 65_536, "{n}");
            assert!(!size_fits(None, n as u64, len));
        }
        assert!(size_fits(None, 10, 10));
    }

    #[test]
    fn encrypted_objects_are_found_by_name_mapping() {
        let k = RemoteKey::generate();
        let (a, b) = ("a".repeat(40), "b".repeat(40));
        let m = Manifest {
            packs: vec![manifest::PackEntry { name: a.clone(), size: 5, idx_size: 3, objects: 1, tips: vec![], created: 0, key: None, map_size: 0 }],
            ..Default::default()
        };
        let obj = |leaf: String, size: u64| ObjectInfo {
            key: format!("p/.git-s3/packs/{leaf}"),
            size,
            etag: String::new(),
            last_modified: std::time::SystemTime::now(),
        };
        let objects = vec![
            obj(k.object_name(&format!("pack-{a}.pack")), 200),
            obj(k.object_name(&format!("pack-{a}.idx")), 190),
            obj(k.object_name(&format!("pack-{b}.pack")), 180),
            // a's object map: optional, not a pack
            obj(k.object_name(&format!("pack-{a}.map")), 60),
        ];
        let found = found_packs("p/.git-s3/packs/", &objects, Some(&k), &m);
        assert_eq!(found.get(&a).map(|f| (f.0, f.1)), Some((Some(200), Some(190))));
        // b is not in the manifest: listed under its object name, unreferenced
        let leaf = k.object_name(&format!("pack-{b}.pack"));
        assert_eq!(found.get(&leaf).map(|f| f.0), Some(Some(180)));
        assert_eq!(found.len(), 2);
        // without the key, the HMAC'd names are nobody's packs
        assert!(found_packs("p/.git-s3/packs/", &objects, None, &m).is_empty());
    }
}
