//! SSH public keys as peers register them: parsed, checked and normalised to
//! `TYPE BASE64` (comment dropped), the form compared at authentication.

use russh::keys::PublicKey;

/// `line` (`ssh-ed25519 AAAA… [comment]`, as in `authorized_keys` without options) in its
/// normalised form, or why it is not a key.
pub fn normalize(line: &str) -> Result<String, String> {
    let line = line.trim();
    if line.is_empty() {
        return Err("empty SSH key; paste a line like `ssh-ed25519 AAAA… comment`".into());
    }
    let key = PublicKey::from_openssh(line).map_err(|e| {
        format!(
            "not an SSH public key ({e}); paste the whole line of a .pub file, e.g. `ssh-ed25519 AAAA… comment`"
        )
    })?;
    normalized_public(&key).ok_or_else(|| "cannot encode the SSH key".into())
}

/// The normalised form of a parsed key.
pub fn normalized_public(key: &PublicKey) -> Option<String> {
    let mut key = key.clone();
    key.set_comment("");
    key.to_openssh().ok().map(|s| s.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";

    #[test]
    fn comment_dropped_and_garbage_refused() {
        assert_eq!(normalize(&format!("{KEY} me@laptop")).unwrap(), KEY);
        assert_eq!(normalize(&format!("  {KEY}\n")).unwrap(), KEY);
        for bad in [
            "",
            "ssh-ed25519",
            "ssh-ed25519 !!!!",
            "hello world",
            "ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl",
        ] {
            assert!(normalize(bad).is_err(), "{bad:?} accepted");
        }
    }
}
