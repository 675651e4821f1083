//! The ref-update rules of a push, in one pure function for both formats:
//! a valid destination, the lease (`--force-with-lease`), protected refs
//! (never deleted or force-moved), tags (never moved without force), and
//! fast-forward unless forced. The caller gathers the inputs (the remote's
//! old id, the local new id, and, when `decide` asks, how the new commit
//! relates to the old one in the local repository) and carries out the
//! decision; the refusals are the lines git shows its user.

use crate::local::git::Git;

/// How the pushed commit relates to the remote's old one, as the local
/// repository sees it (`git cat-file -e old`, `git merge-base --is-ancestor old new`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum History {
    /// The repository lacks the old commit: the user must fetch it first.
    OldMissing,
    /// The new commit descends from the old one (a fast-forward).
    Descends,
    /// The new commit does not descend from the old one.
    Diverged,
}

/// `History` as `git` sees it; `old_present`: whether the repository has
/// `old`, when the caller knows (else git is asked).
pub(crate) async fn local_history(git: &Git, old: &str, new: &str, old_present: Option<bool>) -> History {
    let present = match old_present {
        Some(p) => p,
        None => git.has_object(old).await,
    };
    if !present {
        History::OldMissing
    } else if git.is_ancestor(old, new).await {
        History::Descends
    } else {
        History::Diverged
    }
}

/// One `push` line with what the remote and the repository say about it.
#[derive(Debug, Clone, Default)]
pub(crate) struct RefUpdate<'a> {
    /// The remote ref (`refs/heads/main`, `refs/tags/v1`).
    pub(crate) dst: &'a str,
    /// The local side as git names it; None: delete `dst`.
    pub(crate) src: Option<&'a str>,
    /// The remote's id of `dst`; None when it does not exist.
    pub(crate) old: Option<&'a str>,
    /// The local id of `src`; None when `src` does not resolve.
    pub(crate) new: Option<&'a str>,
    /// `+src:dst` (or `git push --force`).
    pub(crate) force: bool,
    /// `dst` is protected (`git s3 protect`).
    pub(crate) protected: bool,
    /// `--force-with-lease`: the id `dst` must have; "" when it must not exist.
    pub(crate) lease: Option<&'a str>,
    /// How `new` relates to `old`, once `decide` has asked for it.
    pub(crate) history: Option<History>,
}

/// What to do with one update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// The remote already has it: nothing to write, success.
    Unchanged,
    /// Set `dst` to `new`.
    Set,
    /// Delete `dst`.
    Delete,
    /// The answer depends on `history`: find it and decide again.
    NeedsHistory,
    /// Refused, with the line git shows (`stale info`, `fetch first`,
    /// `already exists`, `non-fast-forward`, or one of our own).
    Refused(String),
}

impl RefUpdate<'_> {
    pub(crate) fn is_tag(&self) -> bool {
        self.dst.starts_with("refs/tags/")
    }

    /// The decision on this update.
    pub(crate) fn decide(&self) -> Decision {
        let dst = self.dst;
        if !dst.starts_with("refs/") {
            return Decision::Refused(format!("invalid destination ref {dst}"));
        }
        if let Some(expected) = self.lease {
            if self.old.unwrap_or("") != expected {
                return Decision::Refused("stale info".into());
            }
        }
        let Some(src) = self.src else {
            if self.protected {
                return Decision::Refused(format!("{dst} is protected: deletion refused (git s3 unprotect to allow it)"));
            }
            return Decision::Delete;
        };
        let Some(new) = self.new else {
            return Decision::Refused(format!("{src} not found in the local repository"));
        };
        let Some(old) = self.old else {
            return Decision::Set;
        };
        if old == new {
            return Decision::Unchanged;
        }
        // Force moves anything but a protected ref.
        if self.force && !self.protected {
            return Decision::Set;
        }
        match self.history {
            None => Decision::NeedsHistory,
            Some(History::OldMissing) => Decision::Refused("fetch first".into()),
            Some(_) if self.is_tag() => Decision::Refused("already exists".into()),
            Some(History::Descends) => Decision::Set,
            Some(History::Diverged) if self.force => {
                Decision::Refused(format!("{dst} is protected: force push refused (git s3 unprotect to allow it)"))
            }
            Some(History::Diverged) => Decision::Refused("non-fast-forward".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "1111111111111111111111111111111111111111";
    const B: &str = "2222222222222222222222222222222222222222";

    fn update<'a>(dst: &'a str, old: Option<&'a str>, new: Option<&'a str>) -> RefUpdate<'a> {
        RefUpdate { dst, src: new.map(|_| "HEAD"), old, new, ..Default::default() }
    }

    fn with_history(u: RefUpdate<'_>, h: History) -> Decision {
        assert_eq!(u.decide(), Decision::NeedsHistory, "{u:?} asks for the history first");
        RefUpdate { history: Some(h), ..u }.decide()
    }

    fn refused(s: &str) -> Decision {
        Decision::Refused(s.to_string())
    }

    #[test]
    fn create() {
        assert_eq!(update("refs/heads/new", None, Some(A)).decide(), Decision::Set);
        assert_eq!(update("refs/tags/v1", None, Some(A)).decide(), Decision::Set, "a new tag");
        let protected = RefUpdate { protected: true, ..update("refs/heads/main", None, Some(A)) };
        assert_eq!(protected.decide(), Decision::Set, "a protected ref that does not exist yet is created");
    }

    #[test]
    fn unchanged() {
        assert_eq!(update("refs/heads/main", Some(A), Some(A)).decide(), Decision::Unchanged);
        assert_eq!(update("refs/tags/v1", Some(A), Some(A)).decide(), Decision::Unchanged, "the same tag again");
        let protected = RefUpdate { protected: true, force: true, ..update("refs/heads/main", Some(A), Some(A)) };
        assert_eq!(protected.decide(), Decision::Unchanged);
    }

    #[test]
    fn fast_forward() {
        assert_eq!(with_history(update("refs/heads/main", Some(A), Some(B)), History::Descends), Decision::Set);
        let protected = RefUpdate { protected: true, ..update("refs/heads/main", Some(A), Some(B)) };
        assert_eq!(with_history(protected.clone(), History::Descends), Decision::Set, "a protected branch moves forward");
        let forced = RefUpdate { force: true, ..protected };
        assert_eq!(with_history(forced, History::Descends), Decision::Set, "a forced fast-forward of a protected branch");
    }

    #[test]
    fn non_fast_forward_refused() {
        assert_eq!(with_history(update("refs/heads/main", Some(A), Some(B)), History::Diverged), refused("non-fast-forward"));
    }

    #[test]
    fn old_tip_missing_locally_is_fetch_first() {
        assert_eq!(with_history(update("refs/heads/main", Some(A), Some(B)), History::OldMissing), refused("fetch first"));
        assert_eq!(with_history(update("refs/tags/v1", Some(A), Some(B)), History::OldMissing), refused("fetch first"));
        let protected = RefUpdate { protected: true, force: true, ..update("refs/heads/main", Some(A), Some(B)) };
        assert_eq!(with_history(protected, History::OldMissing), refused("fetch first"));
    }

    #[test]
    fn force_moves_without_history() {
        let forced = RefUpdate { force: true, ..update("refs/heads/main", Some(A), Some(B)) };
        assert_eq!(forced.decide(), Decision::Set, "no history needed");
    }

    #[test]
    fn tags_never_move_without_force() {
        let tag = update("refs/tags/v1", Some(A), Some(B));
        assert_eq!(with_history(tag.clone(), History::Descends), refused("already exists"), "even forward");
        assert_eq!(with_history(tag.clone(), History::Diverged), refused("already exists"));
        assert_eq!(RefUpdate { force: true, ..tag.clone() }.decide(), Decision::Set, "a forced tag moves");
        let protected = RefUpdate { force: true, protected: true, ..tag };
        assert_eq!(with_history(protected, History::Descends), refused("already exists"), "a protected tag never moves");
    }

    #[test]
    fn protected_never_force_moved() {
        let u = RefUpdate { force: true, protected: true, ..update("refs/heads/main", Some(A), Some(B)) };
        assert_eq!(with_history(u, History::Diverged), refused("refs/heads/main is protected: force push refused (git s3 unprotect to allow it)"));
        let unforced = RefUpdate { protected: true, ..update("refs/heads/main", Some(A), Some(B)) };
        assert_eq!(with_history(unforced, History::Diverged), refused("non-fast-forward"), "not forced: git's own word");
    }

    #[test]
    fn delete() {
        let del = RefUpdate { dst: "refs/heads/old", old: Some(A), ..Default::default() };
        assert_eq!(del.decide(), Decision::Delete);
        assert_eq!(RefUpdate { old: None, ..del.clone() }.decide(), Decision::Delete, "the format decides what deleting nothing is");
        assert_eq!(RefUpdate { force: true, ..del.clone() }.decide(), Decision::Delete);
        assert_eq!(RefUpdate { dst: "refs/tags/v1", ..del }.decide(), Decision::Delete, "a tag is deleted without force");
    }

    #[test]
    fn protected_never_deleted() {
        let del = RefUpdate { dst: "refs/heads/main", old: Some(A), protected: true, force: true, ..Default::default() };
        assert_eq!(del.decide(), refused("refs/heads/main is protected: deletion refused (git s3 unprotect to allow it)"));
    }

    #[test]
    fn lease() {
        let u = update("refs/heads/main", Some(A), Some(B));
        let held = RefUpdate { force: true, lease: Some(A), ..u.clone() };
        assert_eq!(held.decide(), Decision::Set, "the lease holds: a forced update lands");
        let stale = RefUpdate { force: true, lease: Some(B), ..u.clone() };
        assert_eq!(stale.decide(), refused("stale info"));
        let must_be_absent = RefUpdate { force: true, lease: Some(""), ..u };
        assert_eq!(must_be_absent.decide(), refused("stale info"), "expected absent, the remote has it");
        let create = RefUpdate { lease: Some(""), ..update("refs/heads/new", None, Some(A)) };
        assert_eq!(create.decide(), Decision::Set, "expected absent and absent");
        let gone = RefUpdate { lease: Some(A), ..update("refs/heads/new", None, Some(B)) };
        assert_eq!(gone.decide(), refused("stale info"), "expected an id, the ref is gone");
        let del = RefUpdate { dst: "refs/heads/old", old: Some(A), lease: Some(B), ..Default::default() };
        assert_eq!(del.decide(), refused("stale info"), "a delete with a stale lease");
        let protected = RefUpdate { protected: true, ..del };
        assert_eq!(protected.decide(), refused("stale info"), "the lease is checked before protection");
    }

    #[test]
    fn invalid_destination_and_missing_source() {
        assert_eq!(update("main", None, Some(A)).decide(), refused("invalid destination ref main"));
        let missing = RefUpdate { src: Some("nope"), new: None, ..update("refs/heads/main", Some(A), None) };
        assert_eq!(missing.decide(), refused("nope not found in the local repository"));
        let stale_first = RefUpdate { lease: Some(B), ..missing };
        assert_eq!(stale_first.decide(), refused("stale info"), "the lease comes before the local lookup");
    }
}
