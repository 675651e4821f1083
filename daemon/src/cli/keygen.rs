//! `git s3 keygen [--json]`: a new age X25519 identity in the caller's
//! identities file (see `storage::crypt::identities`), its recipient
//! printed: what `git s3 init --encrypt-to` takes.

use clap::Args;
use serde_json::json;

use super::{CliError, CliResult, Ctx};
use crate::storage::crypt::{fingerprint, identities, CryptError};

#[derive(Args, Debug)]
pub(crate) struct KeygenArgs {
    /// Print one JSON document instead of text
    #[arg(long)]
    pub(crate) json: bool,
}

pub(crate) async fn run(ctx: &mut Ctx, args: KeygenArgs) -> CliResult {
    let (recipient, path) = identities::keygen(&ctx.env).await.map_err(|e| match e {
        CryptError::Io(io) => CliError::Refused(format!("cannot write the identities file: {io}")),
        other => CliError::Storage(other.into()),
    })?;
    if args.json {
        ctx.println(json!({ "recipient": recipient, "fingerprint": fingerprint(&recipient), "identities": path.display().to_string() }).to_string());
    } else {
        ctx.eprintln(format!("Wrote a new age identity to {} (keep it private; back it up)", path.display()));
        ctx.println(recipient);
    }
    Ok(0)
}
