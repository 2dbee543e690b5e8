//! `alknet vault …` subcommands, and where the vault passphrase comes from.
//!
//! The terminal side of the vault: clap arguments, prompts without echo, the order in which a
//! passphrase is looked for (flag, environment, systemd credential, terminal) and what is
//! printed. The file format, key derivation and secrets are the `alknet-vault` library's.
//!
//! Every interactive step has a file-based form for scripts and tests: `--passphrase-file`,
//! `--new-passphrase-file`, `--bip39-passphrase-file`, `--words-file`, `--words-out` and
//! `--yes`. Words and passphrases are never taken as arguments (they would show in `ps` and
//! shell history) and never printed except the words, once, by `init` on a terminal.

use std::ffi::OsString;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use alknet_vault::secret::{self, Mnemonic, Passphrase, read_secret_file};
use alknet_vault::{Error, KdfParams, UnlockedVault, fingerprint_of_seed};
use anyhow::Context;
use zeroize::Zeroizing;

/// Environment variable naming a file that holds the vault passphrase.
pub(crate) const PASSPHRASE_FILE_ENV: &str = "ALKNET_VAULT_PASSPHRASE_FILE";
/// Name of the systemd credential (`LoadCredential=alknet-vault-passphrase:…`) holding it.
pub(crate) const SYSTEMD_CREDENTIAL: &str = "alknet-vault-passphrase";

/// What goes wrong on the terminal side of the vault (the library's errors pass through).
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    /// The two entries of a new passphrase differ.
    #[error("the two passphrases differ; try again")]
    PassphraseMismatch,

    /// No source for the passphrase is available.
    #[error(
        "no vault passphrase: pass --passphrase-file FILE, set ALKNET_VAULT_PASSPHRASE_FILE, \
         provide the systemd credential `alknet-vault-passphrase` (LoadCredential=), \
         or run on a terminal"
    )]
    NoPassphraseSource,

    /// Interactive input was needed but stdin is not a terminal.
    #[error("{what} needs a terminal; {hint}")]
    NotATerminal {
        /// What needed the terminal.
        what: &'static str,
        /// The non-interactive alternative.
        hint: &'static str,
    },

    /// The confirmation word typed during `vault init` is not the one shown.
    #[error("word {position} does not match; nothing was written, run `alknet vault init` again")]
    ConfirmationMismatch {
        /// 1-based position that was asked.
        position: usize,
    },

    /// A library error (file, format, passphrase, words).
    #[error(transparent)]
    Vault(#[from] Error),
}

/// The `alknet vault` subcommands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum VaultCommand {
    /// Create a vault from a new random BIP39 mnemonic. Shows the words once (or writes them
    /// to --words-out) and asks to confirm one of them.
    Init(InitArgs),
    /// Create a vault from existing BIP39 words (read from the terminal or --words-file).
    /// Restoring the same words gives the same node fingerprint.
    Restore(RestoreArgs),
    /// Show whether a vault exists and how it is protected (no passphrase needed).
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Re-encrypt the vault under a new passphrase; also raises the Argon2id parameters to the
    /// given (or default) values. Use the same passphrase twice to only raise the parameters.
    ChangePassphrase(ChangePassphraseArgs),
    /// Unlock the vault and print the node and SSH host key fingerprints.
    ShowFingerprints {
        /// File holding the vault passphrase (else $ALKNET_VAULT_PASSPHRASE_FILE, the systemd
        /// credential `alknet-vault-passphrase`, or the terminal).
        #[arg(long, value_name = "FILE")]
        passphrase_file: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Argon2id cost options for writing a vault; they can only be raised above the default.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct KdfArgs {
    /// Argon2id memory in MiB (64..=4096).
    #[arg(long, value_name = "MIB", default_value_t = KdfParams::DEFAULT.memory_kib() / 1024)]
    pub(crate) kdf_memory_mib: u32,
    /// Argon2id iterations (3..=64).
    #[arg(long, value_name = "N", default_value_t = KdfParams::DEFAULT.iterations())]
    pub(crate) kdf_iterations: u32,
    /// Argon2id parallelism (1..=16).
    #[arg(long, value_name = "N", default_value_t = KdfParams::DEFAULT.parallelism())]
    pub(crate) kdf_parallelism: u32,
}

fn parse_word_count(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if secret::WORD_COUNTS.contains(&n) => Ok(n),
        _ => Err("must be 12, 15, 18, 21 or 24".into()),
    }
}

impl KdfArgs {
    fn params(&self) -> Result<KdfParams, Error> {
        KdfParams::new(
            self.kdf_memory_mib.saturating_mul(1024),
            self.kdf_iterations,
            self.kdf_parallelism,
        )
    }
}

/// Options of `alknet vault init`.
#[derive(Debug, clap::Args)]
pub(crate) struct InitArgs {
    /// Number of words of the new mnemonic.
    #[arg(long, value_name = "N", default_value_t = 24, value_parser = parse_word_count)]
    pub(crate) words: usize,
    /// Write the words to this new file (mode 0600) instead of showing them on the terminal.
    #[arg(long, value_name = "FILE")]
    pub(crate) words_out: Option<PathBuf>,
    /// Skip asking to confirm a word (for scripts; you must have saved the words).
    #[arg(long)]
    pub(crate) yes: bool,
    /// File holding the new vault passphrase (else $ALKNET_VAULT_PASSPHRASE_FILE, the systemd
    /// credential, or the terminal, asked twice).
    #[arg(long, value_name = "FILE")]
    pub(crate) passphrase_file: Option<PathBuf>,
    /// Ask on the terminal for an optional BIP39 passphrase (the "25th word"). It is needed,
    /// with the words, to restore.
    #[arg(long, conflicts_with = "bip39_passphrase_file")]
    pub(crate) bip39_passphrase: bool,
    /// File holding an optional BIP39 passphrase.
    #[arg(long, value_name = "FILE")]
    pub(crate) bip39_passphrase_file: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    pub(crate) json: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub(crate) kdf: KdfArgs,
}

/// Options of `alknet vault restore`.
#[derive(Debug, clap::Args)]
pub(crate) struct RestoreArgs {
    /// File holding the words, separated by spaces or newlines (else asked on the terminal,
    /// without echo).
    #[arg(long, value_name = "FILE")]
    pub(crate) words_file: Option<PathBuf>,
    /// File holding the new vault passphrase (else $ALKNET_VAULT_PASSPHRASE_FILE, the systemd
    /// credential, or the terminal, asked twice).
    #[arg(long, value_name = "FILE")]
    pub(crate) passphrase_file: Option<PathBuf>,
    /// Ask on the terminal for the BIP39 passphrase used at `init`, if one was.
    #[arg(long, conflicts_with = "bip39_passphrase_file")]
    pub(crate) bip39_passphrase: bool,
    /// File holding the BIP39 passphrase used at `init`, if one was.
    #[arg(long, value_name = "FILE")]
    pub(crate) bip39_passphrase_file: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    pub(crate) json: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub(crate) kdf: KdfArgs,
}

/// Options of `alknet vault change-passphrase`.
#[derive(Debug, clap::Args)]
pub(crate) struct ChangePassphraseArgs {
    /// File holding the current vault passphrase (else $ALKNET_VAULT_PASSPHRASE_FILE, the
    /// systemd credential, or the terminal).
    #[arg(long, value_name = "FILE")]
    pub(crate) passphrase_file: Option<PathBuf>,
    /// File holding the new vault passphrase (else the terminal, asked twice).
    #[arg(long, value_name = "FILE")]
    pub(crate) new_passphrase_file: Option<PathBuf>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub(crate) kdf: KdfArgs,
}

/// Runs one `alknet vault` subcommand against the vault in `data_dir`.
pub(crate) fn run(cmd: VaultCommand, data_dir: &Path) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match cmd {
        VaultCommand::Init(args) => init(args, data_dir, &mut out),
        VaultCommand::Restore(args) => restore(args, data_dir, &mut out),
        VaultCommand::Status { json } => status(json, data_dir, &mut out),
        VaultCommand::ChangePassphrase(args) => change_passphrase(args, data_dir, &mut out),
        VaultCommand::ShowFingerprints {
            passphrase_file,
            json,
        } => {
            require_vault(data_dir)?;
            let pass = read_passphrase(passphrase_file.as_deref(), "Vault passphrase: ")?;
            let vault = alknet_vault::unlock(data_dir, &pass)?;
            print_fingerprints(&vault, None, json, &mut out)
        }
    }
}

/// Fails with "no vault" before asking for a passphrase that could not be used.
fn require_vault(data_dir: &Path) -> Result<(), Error> {
    if alknet_vault::vault_exists(data_dir) {
        Ok(())
    } else {
        Err(Error::NotFound {
            path: alknet_vault::vault_path(data_dir),
        })
    }
}

fn refuse_existing(data_dir: &Path) -> Result<(), Error> {
    let path = alknet_vault::vault_path(data_dir);
    if path.exists() {
        return Err(Error::AlreadyExists { path });
    }
    Ok(())
}

fn bip39_passphrase(ask: bool, file: Option<&Path>) -> Result<Option<Passphrase>, CliError> {
    if let Some(f) = file {
        return Ok(Some(Passphrase::new(read_secret_file(f)?.to_string())?));
    }
    if !ask {
        return Ok(None);
    }
    if !std::io::stdin().is_terminal() {
        return Err(CliError::NotATerminal {
            what: "asking for the BIP39 passphrase",
            hint: "use --bip39-passphrase-file FILE",
        });
    }
    let first = prompt_hidden("BIP39 passphrase: ")?;
    let second = prompt_hidden("Repeat it: ")?;
    if first.as_bytes() != second.as_bytes() {
        return Err(CliError::PassphraseMismatch);
    }
    Ok(Some(first))
}

fn init(args: InitArgs, data_dir: &Path, out: &mut dyn Write) -> anyhow::Result<()> {
    refuse_existing(data_dir)?;
    let kdf = args.kdf.params()?;
    let interactive = std::io::stdin().is_terminal();
    if !args.yes && !interactive {
        return Err(CliError::NotATerminal {
            what: "confirming a word of the mnemonic",
            hint: "save the words with --words-out FILE and pass --yes",
        }
        .into());
    }
    if args.words_out.is_none() && !std::io::stdout().is_terminal() {
        return Err(CliError::NotATerminal {
            what: "showing the words",
            hint: "write them to a file with --words-out FILE",
        }
        .into());
    }
    let pass = read_new_passphrase(args.passphrase_file.as_deref(), "New vault passphrase: ")?;
    let bip39_pass =
        bip39_passphrase(args.bip39_passphrase, args.bip39_passphrase_file.as_deref())?;
    let mnemonic = Mnemonic::generate(args.words)?;

    match &args.words_out {
        Some(path) => {
            let mut text = Zeroizing::new(String::from(mnemonic.phrase()));
            text.push('\n');
            alknet_vault::store::write_new_private(path, text.as_bytes())?;
            eprintln!(
                "wrote {} words to {}; copy them to paper, then delete the file",
                mnemonic.word_count(),
                path.display()
            );
        }
        None => show_words(&mnemonic)?,
    }
    if !args.yes {
        confirm_one_word(&mnemonic)?;
    }
    if args.words_out.is_none() {
        // Clear the screen and the scrollback so the words do not linger on the terminal.
        let mut tty = std::io::stdout().lock();
        write!(tty, "\x1b[H\x1b[2J\x1b[3J")?;
        tty.flush()?;
    }

    let seed = mnemonic.to_seed(bip39_pass.as_ref())?;
    drop(mnemonic);
    let vault = alknet_vault::create(data_dir, seed, &pass, kdf)?;
    print_fingerprints(&vault, Some(data_dir), args.json, out)
}

fn show_words(mnemonic: &Mnemonic) -> anyhow::Result<()> {
    // Straight to the terminal, never through a logger.
    let mut tty = std::io::stdout().lock();
    writeln!(
        tty,
        "Write these {} words on paper, in order. They are shown only now; with them (and the \
         BIP39 passphrase, if you set one) the node's identity can be restored anywhere.\n",
        mnemonic.word_count()
    )?;
    for (i, w) in mnemonic.words().enumerate() {
        write!(tty, "{:>2}. {:<10}", i + 1, w)?;
        if i % 4 == 3 {
            writeln!(tty)?;
        }
    }
    writeln!(tty)?;
    tty.flush()?;
    Ok(())
}

fn confirm_one_word(mnemonic: &Mnemonic) -> anyhow::Result<()> {
    let mut r = [0u8; 2];
    alknet_vault::random_bytes(&mut r)?;
    let n = mnemonic.word_count();
    let position = usize::from(u16::from_be_bytes(r)) % n + 1;
    let answer = prompt_hidden(&format!("To confirm, type word #{position}: "))
        .map_err(|_| CliError::ConfirmationMismatch { position })?;
    let expected = mnemonic.words().nth(position - 1).unwrap_or_default();
    let typed = Zeroizing::new(answer.as_str().trim().to_lowercase());
    if typed.as_str() != expected {
        return Err(CliError::ConfirmationMismatch { position }.into());
    }
    Ok(())
}

fn restore(args: RestoreArgs, data_dir: &Path, out: &mut dyn Write) -> anyhow::Result<()> {
    refuse_existing(data_dir)?;
    let kdf = args.kdf.params()?;
    let words = match &args.words_file {
        Some(f) => read_secret_file(f)?,
        None => {
            if !std::io::stdin().is_terminal() {
                return Err(CliError::NotATerminal {
                    what: "reading the words",
                    hint: "use --words-file FILE",
                }
                .into());
            }
            let p = prompt_hidden("Words (on one line, separated by spaces): ")?;
            Zeroizing::new(p.as_str().to_owned())
        }
    };
    let mnemonic = Mnemonic::parse(&words)?;
    drop(words);
    let bip39_pass =
        bip39_passphrase(args.bip39_passphrase, args.bip39_passphrase_file.as_deref())?;
    let pass = read_new_passphrase(args.passphrase_file.as_deref(), "New vault passphrase: ")?;
    let seed = mnemonic.to_seed(bip39_pass.as_ref())?;
    drop(mnemonic);
    let vault = alknet_vault::create(data_dir, seed, &pass, kdf)?;
    print_fingerprints(&vault, Some(data_dir), args.json, out)
}

fn status(json: bool, data_dir: &Path, out: &mut dyn Write) -> anyhow::Result<()> {
    let info = match alknet_vault::inspect(data_dir) {
        Ok(info) => info,
        Err(Error::NotFound { path }) => {
            if json {
                let v = serde_json::json!({ "exists": false, "path": path });
                writeln!(out, "{v}")?;
            } else {
                writeln!(
                    out,
                    "no vault at {}: `alknet serve` uses the plain node key; create a vault with \
                     `alknet vault init` or `alknet vault restore`",
                    path.display()
                )?;
            }
            return Ok(());
        }
        Err(e) => return Err(e).context(format!("checking the vault in {}", data_dir.display())),
    };
    let weak = info.kdf.below_default();
    let loose = info.mode & 0o077 != 0;
    if json {
        let v = serde_json::json!({
            "exists": true,
            "path": info.path,
            "format_version": info.format_version,
            "kdf": {
                "algorithm": "argon2id",
                "memory_kib": info.kdf.memory_kib(),
                "iterations": info.kdf.iterations(),
                "parallelism": info.kdf.parallelism(),
                "below_default": weak,
            },
            "cipher": "aes-256-gcm",
            "mode": format!("{:04o}", info.mode),
        });
        writeln!(out, "{v}")?;
        return Ok(());
    }
    writeln!(out, "vault:  {}", info.path.display())?;
    writeln!(out, "format: {}", info.format_version)?;
    writeln!(
        out,
        "kdf:    argon2id, {} KiB, t={}, p={}",
        info.kdf.memory_kib(),
        info.kdf.iterations(),
        info.kdf.parallelism()
    )?;
    writeln!(out, "cipher: aes-256-gcm")?;
    writeln!(out, "mode:   {:04o}", info.mode)?;
    if weak {
        writeln!(
            out,
            "warning: argon2id parameters are below the default ({} KiB, t={}); raise them with \
             `alknet vault change-passphrase`",
            KdfParams::DEFAULT.memory_kib(),
            KdfParams::DEFAULT.iterations()
        )?;
    }
    if loose {
        writeln!(
            out,
            "warning: the vault file is readable by others; run `chmod 600 {}`",
            info.path.display()
        )?;
    }
    Ok(())
}

fn change_passphrase(
    args: ChangePassphraseArgs,
    data_dir: &Path,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let kdf = args.kdf.params()?;
    require_vault(data_dir)?;
    let current = read_passphrase(
        args.passphrase_file.as_deref(),
        "Current vault passphrase: ",
    )?;
    let mut vault = alknet_vault::unlock(data_dir, &current)?;
    drop(current);
    let new = match &args.new_passphrase_file {
        Some(f) => Passphrase::new(read_secret_file(f)?.to_string())?,
        None => {
            if !std::io::stdin().is_terminal() {
                return Err(CliError::NotATerminal {
                    what: "asking for the new passphrase",
                    hint: "use --new-passphrase-file FILE",
                }
                .into());
            }
            let first = prompt_hidden("New vault passphrase: ")?;
            let second = prompt_hidden("Repeat it: ")?;
            if first.as_bytes() != second.as_bytes() {
                return Err(CliError::PassphraseMismatch.into());
            }
            first
        }
    };
    vault.rewrite(data_dir, &new, kdf)?;
    writeln!(
        out,
        "vault re-encrypted at {} (argon2id {} KiB, t={}, p={})",
        alknet_vault::vault_path(data_dir).display(),
        kdf.memory_kib(),
        kdf.iterations(),
        kdf.parallelism()
    )?;
    Ok(())
}

fn print_fingerprints(
    vault: &UnlockedVault,
    created_in: Option<&Path>,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let node = fingerprint_of_seed(&vault.node_identity_seed());
    let ssh = fingerprint_of_seed(&vault.ssh_host_seed());
    if json {
        let mut v = serde_json::json!({ "node": node, "ssh_host": ssh });
        if let Some(dir) = created_in {
            v["vault"] = serde_json::json!(alknet_vault::vault_path(dir));
        }
        writeln!(out, "{v}")?;
    } else {
        if let Some(dir) = created_in {
            writeln!(
                out,
                "vault created at {}",
                alknet_vault::vault_path(dir).display()
            )?;
        }
        writeln!(out, "node:     {node}")?;
        writeln!(out, "ssh-host: {ssh}")?;
    }
    Ok(())
}

/// Where [`read_passphrase`] found (or will look for) the passphrase.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    File(PathBuf),
    Terminal,
}

/// Picks the first available passphrase source, in the documented order.
fn pick_source(
    explicit_file: Option<&Path>,
    env: &dyn Fn(&str) -> Option<OsString>,
    stdin_is_tty: bool,
) -> Result<Source, CliError> {
    if let Some(p) = explicit_file {
        return Ok(Source::File(p.to_owned()));
    }
    if let Some(p) = env(PASSPHRASE_FILE_ENV).filter(|p| !p.is_empty()) {
        return Ok(Source::File(PathBuf::from(p)));
    }
    if let Some(dir) = env("CREDENTIALS_DIRECTORY").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(dir).join(SYSTEMD_CREDENTIAL);
        if p.exists() {
            return Ok(Source::File(p));
        }
    }
    if stdin_is_tty {
        return Ok(Source::Terminal);
    }
    Err(CliError::NoPassphraseSource)
}

/// Reads the vault passphrase, trying in order: `explicit_file` (`--passphrase-file`), the file
/// named by `$ALKNET_VAULT_PASSPHRASE_FILE`, the systemd credential
/// `$CREDENTIALS_DIRECTORY/alknet-vault-passphrase`, then the terminal without echo (only when
/// stdin is a terminal). One trailing newline is stripped from files.
pub(crate) fn read_passphrase(
    explicit_file: Option<&Path>,
    prompt: &str,
) -> Result<Passphrase, CliError> {
    let env = |k: &str| std::env::var_os(k);
    match pick_source(explicit_file, &env, std::io::stdin().is_terminal())? {
        Source::File(p) => Ok(Passphrase::new(read_secret_file(&p)?.to_string())?),
        Source::Terminal => prompt_hidden(prompt),
    }
}

/// Like [`read_passphrase`], but on a terminal asks twice and checks both entries match: for
/// choosing a new passphrase.
fn read_new_passphrase(explicit_file: Option<&Path>, prompt: &str) -> Result<Passphrase, CliError> {
    let env = |k: &str| std::env::var_os(k);
    match pick_source(explicit_file, &env, std::io::stdin().is_terminal())? {
        Source::File(p) => Ok(Passphrase::new(read_secret_file(&p)?.to_string())?),
        Source::Terminal => {
            let first = prompt_hidden(prompt)?;
            let second = prompt_hidden("Repeat it: ")?;
            if first.as_bytes() != second.as_bytes() {
                return Err(CliError::PassphraseMismatch);
            }
            Ok(first)
        }
    }
}

/// Reads one line from the terminal without echo.
fn prompt_hidden(prompt: &str) -> Result<Passphrase, CliError> {
    let s = Zeroizing::new(
        rpassword::prompt_password(prompt).map_err(|e| Error::io("reading", "the terminal", e))?,
    );
    Ok(Passphrase::new(s.to_string())?)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use clap::Parser;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: VaultCommand,
    }

    fn parse(args: &[&str]) -> Result<VaultCommand, clap::Error> {
        Cli::try_parse_from(std::iter::once("vault").chain(args.iter().copied())).map(|c| c.cmd)
    }

    #[test]
    fn word_count_must_be_a_bip39_size() {
        assert!(parse(&["init", "--words", "13"]).is_err());
        match parse(&["init", "--words", "12", "--yes"]).unwrap() {
            VaultCommand::Init(a) => assert_eq!((a.words, a.yes), (12, true)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn kdf_flags_only_raise_the_default() {
        let VaultCommand::Init(a) = parse(&["init"]).unwrap() else {
            panic!()
        };
        assert_eq!(a.kdf.params().unwrap(), KdfParams::DEFAULT);
        let VaultCommand::Init(a) = parse(&["init", "--kdf-memory-mib", "32"]).unwrap() else {
            panic!()
        };
        assert!(matches!(
            a.kdf.params(),
            Err(Error::KdfParamOutOfRange { .. })
        ));
        let VaultCommand::ChangePassphrase(a) = parse(&[
            "change-passphrase",
            "--kdf-memory-mib",
            "256",
            "--kdf-iterations",
            "4",
        ])
        .unwrap() else {
            panic!()
        };
        let p = a.kdf.params().unwrap();
        assert_eq!((p.memory_kib(), p.iterations()), (256 * 1024, 4));
    }

    #[test]
    fn secrets_are_never_arguments() {
        // No flag takes a passphrase or words by value: only files.
        assert!(parse(&["init", "--passphrase", "x"]).is_err());
        assert!(parse(&["restore", "--words", "abandon"]).is_err());
    }

    #[test]
    fn status_without_vault_says_how_to_create_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut out = Vec::new();
        status(false, dir.path(), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("alknet vault init"), "{text}");
        let mut out = Vec::new();
        status(true, dir.path(), &mut out).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["exists"], false);
    }

    #[test]
    fn status_flags_weak_parameters() {
        let dir = tempfile::tempdir().unwrap();
        let seed = alknet_vault::Seed::from_bytes(Zeroizing::new([3; 64]));
        let pass = Passphrase::new("p".into()).unwrap();
        alknet_vault::create(dir.path(), seed, &pass, KdfParams::insecure_for_tests()).unwrap();
        let mut out = Vec::new();
        status(false, dir.path(), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("below the default") && text.contains("mode:   0600"),
            "{text}"
        );
    }

    #[test]
    fn passphrase_source_order() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(SYSTEMD_CREDENTIAL), "c").unwrap();
        let creds = dir.path().as_os_str().to_owned();
        let full = |k: &str| match k {
            PASSPHRASE_FILE_ENV => Some(OsString::from("/env/file")),
            "CREDENTIALS_DIRECTORY" => Some(creds.clone()),
            _ => None,
        };
        let explicit = Path::new("/explicit");
        assert_eq!(
            pick_source(Some(explicit), &full, true).unwrap(),
            Source::File(explicit.into())
        );
        assert_eq!(
            pick_source(None, &full, true).unwrap(),
            Source::File("/env/file".into())
        );
        let no_env = |k: &str| {
            if k == "CREDENTIALS_DIRECTORY" {
                Some(creds.clone())
            } else {
                None
            }
        };
        assert_eq!(
            pick_source(None, &no_env, false).unwrap(),
            Source::File(dir.path().join(SYSTEMD_CREDENTIAL))
        );
        let nothing = |_: &str| None;
        assert_eq!(pick_source(None, &nothing, true).unwrap(), Source::Terminal);
        let err = pick_source(None, &nothing, false).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("--passphrase-file") && msg.contains(PASSPHRASE_FILE_ENV));
    }
}
