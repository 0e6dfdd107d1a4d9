//! Removing the build's temporary key from the SSH user's `~/.ssh/authorized_keys` before the instance stops,
//! so no image trusts it (`[ssh] clear_authorized_keys`). Exactly the lines holding the key's base64 blob go;
//! every other line stays, and the file keeps its mode and owner. The work is a small script uploaded over the
//! connection (`umask 077`) and run; it says what it did on one line, and checks the key is gone.

use crate::remote::ssh::shell_quote;
use crate::remote::{Connection, Exit, RemoteError};
use crate::report::events::OutputStream;

/// The public half of the key a connection logged in with: its base64 blob, what an `authorized_keys` line is
/// matched by (whatever options precede it, whatever comment follows).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoginKey {
    blob: String,
}

impl LoginKey {
    /// What a connection answers for [`Connection::login_key`](super::Connection::login_key) from the public key
    /// line it derived when it connected (`ssh-keygen -y`), or why it could not.
    pub fn of_connection(line: &Result<String, String>) -> Result<Option<LoginKey>, super::RemoteError> {
        let line = line.as_ref().map_err(|error| super::RemoteError(error.clone()))?;
        LoginKey::from_public_line(line)
            .map(Some)
            .ok_or_else(|| super::RemoteError(format!("`ssh-keygen -y` gave no public key: `{line}`")))
    }

    /// The blob of a public key line (`ssh-ed25519 AAAA… comment`); `None` if it has none.
    pub fn from_public_line(line: &str) -> Option<LoginKey> {
        let blob = line.split_whitespace().nth(1)?;
        let base64 = |c: char| c.is_ascii_alphanumeric() || c == '+' || c == '/' || c == '=';
        (blob.len() >= 16 && blob.chars().all(base64)).then(|| LoginKey { blob: blob.to_string() })
    }

    pub fn blob(&self) -> &str {
        &self.blob
    }
}

/// What clearing found and did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cleared {
    /// `removed` lines held the key; `kept` other lines stay.
    Removed { removed: usize, kept: usize },
    /// The file had no line with the key (it came in some other way): nothing to remove.
    NotThere { kept: usize },
    /// The user has no `~/.ssh/authorized_keys`.
    NoFile,
}

impl std::fmt::Display for Cleared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cleared::Removed { removed, kept } => write!(
                f,
                "removed the build key from `~/.ssh/authorized_keys` ({removed} line{}; {kept} other kept)",
                if *removed == 1 { "" } else { "s" }
            ),
            Cleared::NotThere { kept } => {
                write!(f, "the build key is not in `~/.ssh/authorized_keys` ({kept} other lines kept)")
            }
            Cleared::NoFile => write!(f, "no `~/.ssh/authorized_keys` to remove the build key from"),
        }
    }
}

/// The prefix of the line the script ends with.
const SAID: &str = "fleetbake-authorized-keys:";

/// The script: counts the key's lines; if any, copies the file with its mode (`cp -p`), writes every other line
/// into the copy, moves it over the file, and checks no line with the key is left.
fn script(key: &LoginKey) -> String {
    format!(
        r#"set -u
keys="$HOME/.ssh/authorized_keys"
blob={blob}
if [ ! -e "$keys" ]; then echo "{SAID} no-file"; exit 0; fi
matched=$(grep -cF -e "$blob" "$keys"); [ $? -le 1 ] || exit 1
total=$(grep -c '' "$keys"); [ $? -le 1 ] || exit 1
if [ "$matched" -eq 0 ]; then echo "{SAID} removed 0 kept $total"; exit 0; fi
copy="$keys.fleetbake-$$"
cp -p "$keys" "$copy" || exit 1
grep -vF -e "$blob" "$keys" > "$copy"; [ $? -le 1 ] || {{ rm -f "$copy"; exit 1; }}
mv -f "$copy" "$keys" || {{ rm -f "$copy"; exit 1; }}
if grep -qF -e "$blob" "$keys"; then echo "the key is still in $keys" >&2; exit 1; fi
echo "{SAID} removed $matched kept $(grep -c '' "$keys")"
"#,
        blob = shell_quote(&key.blob)
    )
}

/// What the script's last line says.
fn parse_said(line: &str) -> Option<Cleared> {
    let said = line.strip_prefix(SAID)?.trim();
    if said == "no-file" {
        return Some(Cleared::NoFile);
    }
    let mut words = said.split_whitespace();
    let (Some("removed"), Some(removed), Some("kept"), Some(kept)) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        return None;
    };
    let (removed, kept) = (removed.parse().ok()?, kept.parse().ok()?);
    Some(if removed == 0 { Cleared::NotThere { kept } } else { Cleared::Removed { removed, kept } })
}

/// Removes `key`'s lines from the SSH user's `authorized_keys` over `connection`, and checks they are gone.
pub async fn clear(connection: &dyn Connection, key: &LoginKey) -> Result<Cleared, RemoteError> {
    let path = format!("/tmp/fleetbake-authorized-keys-{:08x}.sh", fastrand::u32(..));
    connection.upload(script(key).as_bytes(), &path).await?;
    let quoted = shell_quote(&path);
    let command = format!("sh {quoted} < /dev/null; status=$?; rm -f {quoted}; exit $status");
    let (mut said, mut errors) = (None, Vec::new());
    let mut output = |stream, line: crate::report::events::OutputLine| {
        let text = line.text().into_owned();
        match (stream, parse_said(&text)) {
            (OutputStream::Stdout, Some(cleared)) => said = Some(cleared),
            _ => errors.push(text),
        }
    };
    let exit = connection.exec(&command, &mut output).await?;
    let errors = errors.join(" | ");
    match (exit, said) {
        (Exit::Success, Some(cleared)) => Ok(cleared),
        (Exit::Success, None) => Err(RemoteError(format!("removing the build key said nothing: {errors}"))),
        (Exit::Code(code), _) => {
            Err(RemoteError(format!("removing the build key exited with status {code}: {errors}")))
        }
        (Exit::Abnormal(reason), _) => Err(RemoteError(format!("removing the build key ended abnormally: {reason}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_its_blob_whatever_surrounds_it() {
        let key = LoginKey::from_public_line("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB5w comment here").unwrap();
        assert_eq!(key.blob(), "AAAAC3NzaC1lZDI1NTE5AAAAIB5w");
        assert_eq!(LoginKey::from_public_line("ssh-rsa"), None);
        assert_eq!(LoginKey::from_public_line("ssh-rsa not'base64!!!!!!!!!!!!"), None);
    }

    #[test]
    fn what_the_script_says_is_read_back() {
        assert_eq!(
            parse_said("fleetbake-authorized-keys: removed 1 kept 2"),
            Some(Cleared::Removed { removed: 1, kept: 2 })
        );
        assert_eq!(parse_said("fleetbake-authorized-keys: removed 0 kept 3"), Some(Cleared::NotThere { kept: 3 }));
        assert_eq!(parse_said("fleetbake-authorized-keys: no-file"), Some(Cleared::NoFile));
        assert_eq!(parse_said("something else"), None);
    }

    /// The script itself, run by `sh` on a copy of a home: only the key's lines go (an options-prefixed one
    /// too), the others stay in order, the mode is kept, and a second run finds nothing.
    #[test]
    fn the_script_removes_exactly_the_keys_lines_and_keeps_the_mode() {
        use std::os::unix::fs::PermissionsExt;
        let home = tempfile::tempdir().unwrap();
        let ssh = home.path().join(".ssh");
        std::fs::create_dir(&ssh).unwrap();
        let keys = ssh.join("authorized_keys");
        let blob = "AAAAC3NzaC1lZDI1NTE5AAAAIBUILDKEY";
        std::fs::write(
            &keys,
            format!(
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOTHER1 alice\nssh-ed25519 {blob} fleetbake-build\n\
                 no-port-forwarding,command=\"echo no\" ssh-ed25519 {blob} root-guard\nssh-rsa AAAAB3OTHER2 bob\n"
            ),
        )
        .unwrap();
        std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o640)).unwrap();
        let key = LoginKey { blob: blob.into() };
        let run = || {
            let output =
                std::process::Command::new("sh").arg("-c").arg(script(&key)).env("HOME", home.path()).output().unwrap();
            assert!(output.status.success(), "{output:?}");
            parse_said(String::from_utf8_lossy(&output.stdout).trim()).unwrap()
        };
        assert_eq!(run(), Cleared::Removed { removed: 2, kept: 2 });
        assert_eq!(
            std::fs::read_to_string(&keys).unwrap(),
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOTHER1 alice\nssh-rsa AAAAB3OTHER2 bob\n"
        );
        assert_eq!(std::fs::metadata(&keys).unwrap().permissions().mode() & 0o777, 0o640);
        assert_eq!(run(), Cleared::NotThere { kept: 2 });
        assert_eq!(std::fs::read_dir(&ssh).unwrap().count(), 1, "no copy left beside");
        std::fs::remove_file(&keys).unwrap();
        assert_eq!(run(), Cleared::NoFile);
    }
}
