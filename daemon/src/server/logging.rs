//! Logging: every event goes to the daemon's log file; events inside a
//! session whose caller asked for verbosity (`-v`, `GIT_REMOTE_S3_VERBOSE=1`,
//! `transfer.verbosity`) also go back to that caller's stderr, with the
//! span (S3 call, git subprocess) they happened in and its duration.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

use crate::session::OutputSender;

/// Attached to a session's root span.
#[derive(Clone)]
pub(crate) struct SessionSink {
    pub(crate) tx: OutputSender,
    pub(crate) verbosity: Arc<AtomicU8>,
}

tokio::task_local! {
    /// The sink of the session whose span is being created (read once, in on_new_span).
    pub(crate) static CURRENT_SINK: SessionSink;
}

struct SpanInfo {
    name: &'static str,
    fields: String,
    started: Instant,
}

#[derive(Default)]
struct FieldText(String);

impl Visit for FieldText {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{}{value:?}", if self.0.is_empty() { "" } else { " " });
        } else {
            let _ = write!(self.0, "{}{}={value:?}", if self.0.is_empty() { "" } else { " " }, field.name());
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            let _ = write!(self.0, "{}{value}", if self.0.is_empty() { "" } else { " " });
        } else {
            let _ = write!(self.0, "{}{}={value}", if self.0.is_empty() { "" } else { " " }, field.name());
        }
    }
}

pub(crate) struct SessionLayer;

impl SessionLayer {
    fn sink_of<S: Subscriber + for<'a> LookupSpan<'a>>(ctx: &Context<'_, S>, id: &Id) -> Option<SessionSink> {
        let span = ctx.span(id)?;
        for s in span.scope() {
            if let Some(sink) = s.extensions().get::<SessionSink>() {
                return Some(sink.clone());
            }
        }
        None
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for SessionLayer {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut fields = FieldText::default();
        attrs.record(&mut fields);
        let mut ext = span.extensions_mut();
        if attrs.metadata().name() == "session" {
            if let Ok(sink) = CURRENT_SINK.try_with(|s| s.clone()) {
                ext.insert(sink);
            }
        }
        ext.insert(SpanInfo { name: attrs.metadata().name(), fields: fields.0, started: Instant::now() });
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let Some(scope) = ctx.event_scope(event) else { return };
        let mut path = Vec::new();
        let mut sink = None;
        for span in scope {
            let ext = span.extensions();
            if let Some(info) = ext.get::<SpanInfo>() {
                if info.name != "session" {
                    path.push(info.name);
                }
            }
            if let Some(s) = ext.get::<SessionSink>() {
                sink = Some(s.clone());
                break;
            }
        }
        let Some(sink) = sink else { return };
        let mut text = FieldText::default();
        if event.metadata().target() == crate::s3::conditional::USER_WARNING_TARGET {
            // A warning for the caller whatever the verbosity: one line.
            event.record(&mut text);
            let _ = sink.tx.send(Ok(git_s3_proto::pb::SessionOutput {
                msg: Some(git_s3_proto::pb::session_output::Msg::Stderr(format!("warning: {}\n", text.0).into_bytes())),
            }));
            return;
        }
        if sink.verbosity.load(Ordering::Relaxed) < 2 {
            return;
        }
        event.record(&mut text);
        path.reverse();
        let _ = sink.tx.send(Ok(git_s3_proto::pb::SessionOutput {
            msg: Some(git_s3_proto::pb::session_output::Msg::Stderr(
                format!("git-s3: {} [{}] {}\n", event.metadata().level(), path.join(">"), text.0).into_bytes(),
            )),
        }));
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(sink) = Self::sink_of(&ctx, &id) else { return };
        if sink.verbosity.load(Ordering::Relaxed) < 2 {
            return;
        }
        let Some(span) = ctx.span(&id) else { return };
        let ext = span.extensions();
        let Some(info) = ext.get::<SpanInfo>() else { return };
        if info.name == "session" {
            return;
        }
        let _ = sink.tx.send(Ok(git_s3_proto::pb::SessionOutput {
            msg: Some(git_s3_proto::pb::session_output::Msg::Stderr(
                format!("git-s3: {} {} ({:.1} ms)\n", info.name, info.fields, info.started.elapsed().as_secs_f64() * 1000.0).into_bytes(),
            )),
        }));
    }
}

/// Installs the subscriber: the log file (level from `GIT_S3_LOG`, default
/// info) plus the per-session stderr layer. Returns the appender guard.
pub fn init(log_file: &std::path::Path, foreground: bool) -> Option<tracing_appender::non_blocking::WorkerGuard> {
    use tracing_subscriber::filter::{EnvFilter, Targets};
    use tracing_subscriber::prelude::*;
    let filter = EnvFilter::try_from_env("GIT_S3_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let session_filter = Targets::new().with_target("git_s3_daemon", tracing::Level::DEBUG);
    let (writer, guard) = match log_file.parent().map(std::fs::create_dir_all) {
        Some(Ok(())) => match std::fs::OpenOptions::new().create(true).append(true).open(log_file) {
            Ok(f) => {
                let (w, g) = tracing_appender::non_blocking(f);
                (Some(w), Some(g))
            }
            Err(_) => (None, None),
        },
        _ => (None, None),
    };
    let file_layer = writer.map(|w| tracing_subscriber::fmt::layer().with_writer(w).with_ansi(false).with_filter(filter));
    let stderr_layer = foreground.then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(EnvFilter::try_from_env("GIT_S3_LOG").unwrap_or_else(|_| EnvFilter::new("info")))
    });
    let _ = tracing_subscriber::registry().with(file_layer).with(stderr_layer).with(SessionLayer.with_filter(session_filter)).try_init();
    guard
}
