//! `alknet git repos SERVER` (what the caller may read on a gateway) and `alknet git init
//! NAME` (a bare repository under this server's git root).

use alknet_git::GitSettings;
use alknet_git::name::RepoName;
use alknet_proto::git::{GitRequest, GitService};
use anyhow::{Context, Result, anyhow, bail};
use clap::Subcommand;
use std::path::{Path, PathBuf};

#[derive(Debug, Subcommand)]
pub(crate) enum GitCommand {
    /// List the repositories you may read on a gateway, with your access (read, write).
    Repos {
        /// Server: `host:port`, or the name of a server stored by `alknet join --as NAME`.
        server: String,
        /// Expected server key, `ed25519:<64 lowercase hex>`.
        #[arg(long, value_name = "FINGERPRINT", env = "ALKNET_SERVER_FINGERPRINT")]
        fingerprint: Option<String>,
        /// File holding the vault passphrase, when the node key lives in a vault.
        #[arg(long, value_name = "FILE")]
        passphrase_file: Option<PathBuf>,
        /// Print JSON: `[{"name": "org/app", "access": ["read", "write"]}]`.
        #[arg(long)]
        json: bool,
    },
    /// Create an empty bare repository under this server's git root (`[services.git] root`,
    /// default git/ in the data directory). Who may use it is up to `[[git.allow]]`.
    Init {
        /// The repository, e.g. `org/app` (stored as org/app.git).
        name: String,
        /// The server's config file, for `[services.git] root` and `default_branch`.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

pub(crate) fn run(data_dir: &Path, command: GitCommand) -> Result<()> {
    match command {
        GitCommand::Repos {
            server,
            fingerprint,
            passphrase_file,
            json,
        } => repos(
            data_dir,
            &server,
            fingerprint.as_deref(),
            passphrase_file.as_deref(),
            json,
        ),
        GitCommand::Init { name, config } => init(data_dir, &name, config.as_deref()),
    }
}

fn repos(
    data_dir: &Path,
    server: &str,
    fingerprint: Option<&str>,
    passphrase_file: Option<&Path>,
    json: bool,
) -> Result<()> {
    let pinned =
        alknet_core::client::parse_pin("--fingerprint", fingerprint).map_err(anyhow::Error::msg)?;
    let header = GitRequest {
        service: GitService::List,
        repo: String::new(),
        protocol: None,
    }
    .encode()
    .map_err(|e| anyhow!("{e}"))?;
    let answer = crate::connect::request(
        data_dir,
        server,
        "alknet/git",
        pinned,
        passphrase_file,
        bytes::Bytes::from(header),
        4 << 20,
    )?;
    if answer.get(4..8) == Some(b"ERR ") {
        let text = String::from_utf8_lossy(answer.get(8..).unwrap_or_default());
        bail!("the gateway refused: {}", text.trim());
    }
    let text = String::from_utf8(answer).context("the gateway's answer is not text")?;
    let entries: Vec<(&str, Vec<&str>)> = text
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(name, access)| (name, access.split(',').collect()))
        .collect();
    if json {
        let list: Vec<serde_json::Value> = entries
            .iter()
            .map(|(n, a)| serde_json::json!({ "name": n, "access": a }))
            .collect();
        println!("{}", serde_json::Value::Array(list));
    } else if entries.is_empty() {
        eprintln!("no repository you may read on {server}");
    } else {
        for (name, access) in entries {
            println!("{name:<40} {}", access.join(","));
        }
    }
    Ok(())
}

fn init(data_dir: &Path, name: &str, config: Option<&Path>) -> Result<()> {
    let settings = match config {
        Some(p) => {
            alknet_core::config::Config::load(p)?
                .service_section::<GitSettings>("git")?
                .config
        }
        None => GitSettings::default(),
    };
    let repo = RepoName::parse(name).map_err(|e| anyhow!("{e}"))?;
    let root = settings
        .root
        .clone()
        .unwrap_or_else(|| data_dir.join("git"));
    let mut path = root.clone();
    for seg in repo.segments() {
        path.push(seg);
    }
    if path.exists() {
        bail!("{} already exists", path.display());
    }
    std::fs::create_dir_all(&path).with_context(|| format!("cannot create {}", path.display()))?;
    let status = std::process::Command::new("git")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .args(["init", "--bare", "--quiet"])
        .arg(format!("--initial-branch={}", settings.default_branch))
        .arg(&path)
        .status()
        .context("cannot run git (is it installed?)")?;
    if !status.success() {
        let _ = std::fs::remove_dir_all(&path);
        bail!("git init failed for {}", path.display());
    }
    println!("created {repo} at {}", path.display());
    Ok(())
}
