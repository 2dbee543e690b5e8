//! `alknet call`: one call (or the operation list) against a node, results as JSON lines.
//!
//! The server's key is pinned with `--fingerprint` or checked against the known-servers file
//! (trust on first use), as `alknet connect` does.

use crate::builtins::ServiceList;
use crate::client::{CallClient, CallOptions};
use crate::ops::{CallError, Operations};
use alknet_core::client::{KnownServers, TrustedConnect, connect_trusted};
use alknet_core::config::{Config, DriverKind};
use alknet_core::identity::tls::NodeKey;
use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Arguments of `alknet call`.
#[derive(Debug, Clone, clap::Args)]
#[command(
    after_help = "Examples:\n  alknet call gw.example:4433 --list\n  alknet call gw.example:4433 /node/info\n  alknet call gw.example:4433 /services/schema '{\"operationId\":\"/node/info\"}'"
)]
pub struct CallArgs {
    /// The node: host:port, or the name of a server stored by `alknet join --as NAME`.
    pub addr: String,
    /// The operation, `/service/operation`.
    #[arg(required_unless_present = "list")]
    pub op: Option<String>,
    /// The input as JSON (default `null`).
    pub input: Option<String>,
    /// List the operations you may call, one per line with a description.
    #[arg(long, conflicts_with_all = ["op", "input"])]
    pub list: bool,
    /// Expect exactly this server key (`ed25519:<hex>`) instead of the known-servers file.
    #[arg(long)]
    pub fingerprint: Option<String>,
    /// File holding the vault passphrase, if the node key is in a vault.
    #[arg(long)]
    pub passphrase_file: Option<PathBuf>,
    /// Seconds the call may take.
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
    /// Print errors and the operation list as JSON too.
    #[arg(long)]
    pub json: bool,
}

/// Runs `alknet call` with the client key `node_key` and the known-servers file of `data_dir`.
pub fn run(args: CallArgs, data_dir: &Path, node_key: NodeKey) -> Result<()> {
    let pinned = alknet_core::client::parse_pin("--fingerprint", args.fingerprint.as_deref())
        .map_err(anyhow::Error::msg)?;
    let input: Value = match &args.input {
        None => Value::Null,
        Some(text) => serde_json::from_str(text)
            .map_err(|e| anyhow!("the input is not JSON ({e}); quote it, e.g. '{{\"key\":1}}'"))?,
    };
    let op = if args.list {
        "/services/list".to_owned()
    } else {
        let op = args.op.clone().unwrap_or_default();
        if !crate::ops::valid_operation_id(&op) {
            bail!("{op:?} is not an operation id; they look like /service/operation (try --list)");
        }
        op
    };
    if args.timeout == 0 {
        bail!("--timeout must be at least 1 second");
    }
    let server = alknet_core::client::resolve_server(data_dir, &args.addr)?;
    let known = KnownServers::in_dir(data_dir);
    let target = TrustedConnect {
        config: Arc::new(Config::default()),
        node_key: &node_key,
        known: &known,
        server_name: &server.server_name,
        addr: server.addr,
        alpn: crate::ALPN,
        pinned: pinned.or(server.pinned),
    };
    let mut result: Result<()> = Ok(());
    alknet_core::net::server::run_on_driver(DriverKind::Auto, 0, || async {
        result = session(&target, &op, input, &args).await;
    })
    .context("cannot start the runtime")?;
    result
}

async fn session(
    target: &TrustedConnect<'_>,
    op: &str,
    input: Value,
    args: &CallArgs,
) -> Result<()> {
    let (endpoint, conn) = connect_trusted(target).await?;
    let client = CallClient::new(conn.clone(), Operations::new());
    let options = CallOptions {
        timeout: Some(Duration::from_secs(args.timeout)),
        ..CallOptions::default()
    };
    let outcome = run_call(&client, op, input, options, args).await;
    conn.close(alknet_core::close_code::NO_ERROR, b"");
    endpoint.wait_idle(Duration::from_secs(1)).await;
    outcome
}

async fn run_call(
    client: &CallClient,
    op: &str,
    input: Value,
    options: CallOptions,
    args: &CallArgs,
) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    let fail = |e: CallError, out: &mut std::io::StdoutLock<'_>| -> anyhow::Error {
        if args.json {
            let _ = writeln!(
                out,
                "{}",
                serde_json::json!({"error": {"code": e.code, "message": e.message, "retryable": e.retryable, "details": e.details}})
            );
        }
        match client.connection().close_reason() {
            Some(reason) => anyhow!("{op}: {e} (connection closed: {reason})"),
            None => anyhow!("{op}: {e}"),
        }
    };
    let mut stream = match client.start(op, input, options).await {
        Ok(s) => s,
        Err(e) => return Err(fail(e, &mut stdout)),
    };
    while let Some(item) = stream.next().await {
        let value = match item {
            Ok(v) => v,
            Err(e) => return Err(fail(e, &mut stdout)),
        };
        if args.list && !args.json {
            let list: ServiceList = serde_json::from_value(value)
                .map_err(|e| anyhow!("unexpected answer to /services/list: {e}"))?;
            let width = list
                .operations
                .iter()
                .map(|o| o.id.len())
                .max()
                .unwrap_or(0);
            for o in list.operations {
                writeln!(stdout, "{:width$}  {}", o.id, o.description)?;
            }
        } else {
            writeln!(stdout, "{value}")?;
        }
        stdout.flush()?;
    }
    Ok(())
}
