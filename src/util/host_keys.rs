//! SSH host keys as text: a public key (`ssh-ed25519 AAAA…`) checked for its shape, its SHA256 fingerprint as
//! ssh prints it, the known_hosts line for a host and port, and the keys cloud-init prints on an instance's
//! console between `-----BEGIN SSH HOST KEY KEYS-----` and `-----END SSH HOST KEY KEYS-----`.
//!
//! The console is untrusted input (anything on the instance can print to it): only well-formed lines of known
//! key types are taken, at most [`MOST_KEYS`] of them, each at most [`LONGEST_KEY`] characters; anything else
//! in the block is skipped. Pure: no file, no network.

use std::fmt;

use base64::Engine as _;
use sha2::Digest as _;

/// The key types ssh accepts as host keys (cloud-init prints the first four).
pub const KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// The longest base64 key taken (an RSA 16384-bit key is ~2,800 characters).
pub const LONGEST_KEY: usize = 4096;

/// At most this many keys are taken from a console.
pub const MOST_KEYS: usize = 16;

/// The console text read for keys: its last this many bytes (cloud-init prints them near the end of boot).
pub const LONGEST_CONSOLE: usize = 1024 * 1024;

const BEGIN: &str = "-----BEGIN SSH HOST KEY KEYS-----";
const END: &str = "-----END SSH HOST KEY KEYS-----";

/// One host public key: its type and its base64 blob, checked to decode and to name the same type inside.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostKey {
    key_type: String,
    base64: String,
}

/// Why a text is not a host key.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("`{0}` is not a host key type ssh knows ({types})", types = KEY_TYPES.join(", "))]
    UnknownType(String),
    #[error("the key is not base64")]
    NotBase64,
    #[error("the key is longer than {LONGEST_KEY} characters")]
    TooLong,
    #[error("the key's data does not start with its type `{0}`")]
    TypeMismatch(String),
    #[error("expected `<key type> <base64 key>`")]
    Shape,
}

impl HostKey {
    /// `key_type` and `base64` as a known_hosts line or a console writes them.
    pub fn new(key_type: &str, base64: &str) -> Result<HostKey, KeyError> {
        if !KEY_TYPES.contains(&key_type) {
            return Err(KeyError::UnknownType(key_type.chars().take(64).collect()));
        }
        if base64.len() > LONGEST_KEY {
            return Err(KeyError::TooLong);
        }
        let blob = base64::engine::general_purpose::STANDARD.decode(base64).map_err(|_| KeyError::NotBase64)?;
        // The blob starts with the type as an SSH string: a 4-byte big-endian length, then the name.
        let named = blob
            .get(..4)
            .map(|length| u32::from_be_bytes([length[0], length[1], length[2], length[3]]) as usize)
            .and_then(|length| blob.get(4..4 + length));
        if named != Some(key_type.as_bytes()) {
            return Err(KeyError::TypeMismatch(key_type.to_string()));
        }
        Ok(HostKey { key_type: key_type.to_string(), base64: base64.to_string() })
    }

    /// `<key type> <base64> [comment]`.
    pub fn parse(line: &str) -> Result<HostKey, KeyError> {
        let mut fields = line.split_ascii_whitespace();
        match (fields.next(), fields.next()) {
            (Some(key_type), Some(base64)) => HostKey::new(key_type, base64),
            _ => Err(KeyError::Shape),
        }
    }

    pub fn key_type(&self) -> &str {
        &self.key_type
    }

    /// The type as ssh names it in its messages: `ED25519`, `ECDSA`, `RSA`.
    pub fn kind(&self) -> &'static str {
        match self.key_type.as_str() {
            "ssh-ed25519" => "ED25519",
            "ssh-rsa" => "RSA",
            "sk-ssh-ed25519@openssh.com" => "ED25519-SK",
            "sk-ecdsa-sha2-nistp256@openssh.com" => "ECDSA-SK",
            _ => "ECDSA",
        }
    }

    /// `SHA256:` and the unpadded base64 of the blob's SHA-256, as `ssh-keygen -l` and ssh's warnings print it.
    pub fn fingerprint(&self) -> Fingerprint {
        let blob = base64::engine::general_purpose::STANDARD.decode(&self.base64).unwrap_or_default();
        Fingerprint::of_blob(&blob)
    }

    /// The known_hosts line for this key at `host:port` (`[host]:port` unless the port is 22).
    pub fn known_hosts_line(&self, host: &str, port: u16) -> String {
        format!("{} {self}", known_hosts_pattern(host, port))
    }
}

impl fmt::Display for HostKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.key_type, self.base64)
    }
}

/// How known_hosts names `host` on `port`: the host alone on 22, else `[host]:port`.
pub fn known_hosts_pattern(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    }
}

/// A key's SHA256 fingerprint as ssh prints it: `SHA256:` and 43 base64 characters.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(String);

impl Fingerprint {
    pub fn of_blob(blob: &[u8]) -> Fingerprint {
        let digest = sha2::Sha256::digest(blob);
        Fingerprint(format!("SHA256:{}", base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)))
    }

    /// A fingerprint as ssh printed it (`SHA256:` and 43 base64 characters), if `text` is one.
    pub fn parse(text: &str) -> Option<Fingerprint> {
        let digest = text.strip_prefix("SHA256:")?;
        let valid = digest.len() == 43 && digest.chars().all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '/');
        valid.then(|| Fingerprint(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The host keys an instance printed: never empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostKeys(Vec<HostKey>);

impl HostKeys {
    /// `keys` without repeats; `None` if there are none.
    pub fn new(mut keys: Vec<HostKey>) -> Option<HostKeys> {
        keys.sort();
        keys.dedup();
        keys.truncate(MOST_KEYS);
        (!keys.is_empty()).then_some(HostKeys(keys))
    }

    /// The keys in the last complete block cloud-init printed on `console` (an instance rebooted prints a new
    /// block; the last is the current one); `None` if there is no complete block with a valid key.
    pub fn from_console(console: &str) -> Option<HostKeys> {
        let console = tail(console, LONGEST_CONSOLE);
        let mut block: Option<Vec<HostKey>> = None;
        let mut last = None;
        for line in console.lines() {
            let line = console_line(line);
            if line == BEGIN {
                block = Some(Vec::new());
            } else if line == END {
                if let Some(keys) = block.take() {
                    if let Some(keys) = HostKeys::new(keys) {
                        last = Some(keys);
                    }
                }
            } else if let Some(keys) = block.as_mut() {
                if keys.len() < MOST_KEYS {
                    keys.extend(HostKey::parse(line).ok());
                }
            }
        }
        last
    }

    pub fn iter(&self) -> impl Iterator<Item = &HostKey> {
        self.0.iter()
    }

    /// Whether `fingerprint` is one of these keys'.
    pub fn has(&self, fingerprint: &Fingerprint) -> bool {
        self.0.iter().any(|key| &key.fingerprint() == fingerprint)
    }

    /// The known_hosts file for `host:port`: one line per key.
    pub fn known_hosts(&self, host: &str, port: u16) -> String {
        self.0.iter().map(|key| format!("{}\n", key.known_hosts_line(host, port))).collect()
    }

    /// `SHA256:… (ED25519), SHA256:… (RSA)`.
    pub fn fingerprints(&self) -> String {
        let each: Vec<String> = self.0.iter().map(|key| format!("{} ({})", key.fingerprint(), key.kind())).collect();
        each.join(", ")
    }
}

/// The last `most` bytes of `text`, cut at a character boundary.
fn tail(text: &str, most: usize) -> &str {
    let mut start = text.len().saturating_sub(most);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// A console line without what the console put around cloud-init's text: a `[   12.345678]` kernel timestamp,
/// cloud-init's `ec2: ` prefix (or `ci-info: `), and a carriage return.
fn console_line(line: &str) -> &str {
    let mut line = line.trim();
    if let Some(rest) = line.strip_prefix('[') {
        if let Some((stamp, after)) = rest.split_once(']') {
            if stamp.trim().chars().all(|c| c.is_ascii_digit() || c == '.') {
                line = after.trim_start();
            }
        }
    }
    for prefix in ["ec2:", "ci-info:"] {
        if let Some(rest) = line.strip_prefix(prefix) {
            line = rest.trim_start();
        }
    }
    line
}

/// The public half of a made-up ed25519 key from `seed` (32 bytes of SHA-256): the simulated instances' host
/// keys and the tests'.
pub fn ed25519_from_seed(seed: &str) -> HostKey {
    let mut blob = Vec::with_capacity(51);
    blob.extend_from_slice(&11u32.to_be_bytes());
    blob.extend_from_slice(b"ssh-ed25519");
    blob.extend_from_slice(&32u32.to_be_bytes());
    blob.extend_from_slice(&sha2::Sha256::digest(seed.as_bytes()));
    let base64 = base64::engine::general_purpose::STANDARD.encode(&blob);
    HostKey { key_type: "ssh-ed25519".into(), base64 }
}

/// What cloud-init prints on the console for `keys`: the block, each line prefixed `ec2: `.
pub fn console_block(keys: &[HostKey]) -> String {
    let mut text = format!("ec2: {BEGIN}\n");
    for key in keys {
        text.push_str(&format!("ec2: {key}\n"));
    }
    text.push_str(&format!("ec2: {END}\n"));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real ed25519 host key and what `ssh-keygen -lf` says of it.
    const ED25519: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH6rKfOY3oyLa53Kw+cWZiHRIdFUJ9F5boORGMkHruzt root@host";
    const ED25519_FINGERPRINT: &str = "SHA256:4to74o0UCZ7nVKa8aWf8n9x+u+aCHgKYDGVhOK11pmQ";

    #[test]
    fn a_key_is_fingerprinted_as_ssh_keygen_does() {
        let key = HostKey::parse(ED25519).unwrap();
        assert_eq!(key.key_type(), "ssh-ed25519");
        assert_eq!(key.kind(), "ED25519");
        let fingerprint = key.fingerprint();
        assert_eq!(Fingerprint::parse(fingerprint.as_str()), Some(fingerprint.clone()));
        assert_eq!(fingerprint.as_str(), ED25519_FINGERPRINT);
    }

    #[test]
    fn malformed_keys_are_refused() {
        assert_eq!(HostKey::parse("ssh-dss AAAAB3NzaC1kc3M="), Err(KeyError::UnknownType("ssh-dss".into())));
        assert_eq!(HostKey::parse("ssh-ed25519 not*base64"), Err(KeyError::NotBase64));
        assert_eq!(HostKey::parse("ssh-ed25519"), Err(KeyError::Shape));
        // An RSA blob labelled ed25519.
        assert_eq!(
            HostKey::parse("ssh-ed25519 AAAAB3NzaC1yc2EAAAADAQAB"),
            Err(KeyError::TypeMismatch("ssh-ed25519".into()))
        );
        let long = format!("ssh-rsa {}", "A".repeat(LONGEST_KEY + 4));
        assert_eq!(HostKey::parse(&long), Err(KeyError::TooLong));
    }

    #[test]
    fn known_hosts_names_a_port_other_than_22_in_brackets() {
        let key = HostKey::parse(ED25519).unwrap();
        let base64 = ED25519.split(' ').nth(1).unwrap();
        assert_eq!(key.known_hosts_line("203.0.113.7", 22), format!("203.0.113.7 ssh-ed25519 {base64}"));
        assert_eq!(key.known_hosts_line("127.0.0.1", 2222), format!("[127.0.0.1]:2222 ssh-ed25519 {base64}"));
    }

    #[test]
    fn the_console_block_is_read_through_prefixes_timestamps_and_noise() {
        let other = ed25519_from_seed("other");
        let console = format!(
            "[    0.000000] Linux version 6.1\r\n\
             Cloud-init v. 23.4 running 'modules:final'\r\n\
             [   12.345678] ec2: -----BEGIN SSH HOST KEY KEYS-----\r\n\
             [   12.345679] ec2: {ED25519}\r\n\
             ec2: ssh-dss AAAAB3NzaC1kc3M= root@host\r\n\
             ec2: \x1b]0;PWNED\x07 garbage\r\n\
             ec2: {other}\r\n\
             ec2: -----END SSH HOST KEY KEYS-----\r\n\
             login:"
        );
        let keys = HostKeys::from_console(&console).unwrap();
        let types: Vec<&str> = keys.iter().map(HostKey::key_type).collect();
        assert_eq!(types, ["ssh-ed25519", "ssh-ed25519"]);
        assert!(keys.has(&HostKey::parse(ED25519).unwrap().fingerprint()));
        assert!(keys.has(&other.fingerprint()));
    }

    #[test]
    fn no_block_an_unfinished_one_or_one_without_valid_keys_is_no_keys() {
        assert_eq!(HostKeys::from_console("Linux version 2.6.16-xenU\nlogin:"), None);
        assert_eq!(HostKeys::from_console(&format!("ec2: {BEGIN}\nec2: {ED25519}\n")), None);
        assert_eq!(HostKeys::from_console(&format!("{BEGIN}\nssh-ed25519 !!!\n{END}\n")), None);
    }

    #[test]
    fn the_last_complete_block_is_the_current_one() {
        let first = ed25519_from_seed("first boot");
        let second = ed25519_from_seed("second boot");
        let console = format!("{}{}", console_block(&[first]), console_block(std::slice::from_ref(&second)));
        let keys = HostKeys::from_console(&console).unwrap();
        assert_eq!(keys, HostKeys::new(vec![second]).unwrap());
    }

    #[test]
    fn a_console_flooded_with_keys_gives_a_bounded_set() {
        let many: Vec<HostKey> = (0..100).map(|n| ed25519_from_seed(&n.to_string())).collect();
        let keys = HostKeys::from_console(&console_block(&many)).unwrap();
        assert_eq!(keys.iter().count(), MOST_KEYS);
    }

    #[test]
    fn a_made_up_key_is_a_valid_ed25519_key() {
        let key = ed25519_from_seed("i-0123");
        assert_eq!(HostKey::parse(&key.to_string()), Ok(key.clone()));
        assert_ne!(key, ed25519_from_seed("i-0124"));
    }
}
