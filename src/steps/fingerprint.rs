//! What determines an image's contents, hashed: the resolved source image (and, for a source read from an SSM
//! parameter, the parameter's name and the version read: a new version rebuilds), each provisioner in order (its
//! type, the bytes of its file or script, its inline lines, its env) and the flavor's image settings (root
//! volume, the build region's encryption key, metadata options, user data). Every image fleetbake makes
//! carries it as the tag `fleetbake:fingerprint`; `--changed-only` reuses the newest image with the same one.
//!
//! A second tag, `fleetbake:fingerprint-parts`, keeps a short digest per part, so a rebuild can say why:
//! the source moved, provisioner 2 changed, one was added.
//!
//! A copy carries its build's fingerprint and, as the rest of its own, the key CopyImage encrypted it with
//! (`fleetbake:kms-key`, the copy region's `[encryption]` key as the fleet names it): `--changed-only`
//! reuses a copy only with both, so a changed key makes a new copy. (A copy made before this tag existed has
//! none: with `[encryption]` it is copied once more.)

use std::fmt::Write as _;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::cloud::ImageId;
use crate::config::{Account, Flavor, Fleet, Place, Provisioner, Region, ShellScript, Tags};
use crate::outcome::SourceParameter;

pub const FINGERPRINT_TAG: &str = "fleetbake:fingerprint";
pub const PARTS_TAG: &str = "fleetbake:fingerprint-parts";
/// On a copy: the KMS key it was encrypted with, as `[encryption]` names it for its region.
pub const COPY_KEY_TAG: &str = "fleetbake:kms-key";

/// The value of a copy's [`COPY_KEY_TAG`] in `region` (`None`: no `[encryption]`, the tag is left off).
pub fn copy_key_tag(fleet: &Fleet, region: &Region) -> Option<String> {
    fleet.kms_key(region).map(str::to_string)
}

/// The value of a copy's [`COPY_KEY_TAG`] in `place`: `[encryption]`'s key for the own account's regions, the
/// `[[distribution]]` table's `kms_keys` for another account's (`None`: no key named, the tag is left off).
pub fn copy_key_tag_in(fleet: &Fleet, place: &Place) -> Option<String> {
    match &place.account {
        Account::Own => copy_key_tag(fleet, &place.region),
        Account::Id(account) => fleet
            .distributions
            .for_account(account)
            .and_then(|distribution| distribution.key_for(&place.region))
            .map(str::to_string),
    }
}

/// The tags that make a copy's key in `place` part of its fingerprint.
pub fn copy_tags_in(fleet: &Fleet, place: &Place) -> Tags {
    copy_key_tag_in(fleet, place).map(|key| Tags::from([(COPY_KEY_TAG.to_string(), key)])).unwrap_or_default()
}

/// The tags that make a copy's part of its fingerprint.
pub fn copy_tags(fleet: &Fleet, region: &Region) -> Tags {
    copy_key_tag(fleet, region).map(|key| Tags::from([(COPY_KEY_TAG.to_string(), key)])).unwrap_or_default()
}

/// A build's fingerprint and its parts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fingerprint {
    /// SHA-256, hex.
    pub digest: String,
    pub source: ImageId,
    /// The SSM parameter version the source was read from (`source_ami = { ssm_parameter = … }`).
    pub parameter: Option<SourceParameter>,
    /// The first 8 hex digits of each provisioner's own SHA-256, in order.
    pub provisioners: Vec<String>,
    /// The first 8 hex digits of the settings' SHA-256.
    pub settings: String,
}

impl Fingerprint {
    /// The fingerprint of `flavor` built in `region` from `source`; an error names a file it cannot read.
    pub fn of(fleet: &Fleet, flavor: &Flavor, region: &Region, source: &ImageId) -> Result<Fingerprint, String> {
        Fingerprint::of_source(fleet, flavor, region, source, None)
    }

    /// As [`Fingerprint::of`], with the SSM parameter version the source was read from, if any (a flavor
    /// without one has the fingerprint it always had).
    pub fn of_source(
        fleet: &Fleet,
        flavor: &Flavor,
        region: &Region,
        source: &ImageId,
        parameter: Option<&SourceParameter>,
    ) -> Result<Fingerprint, String> {
        let mut whole = Sha256::new();
        whole.update(b"fleetbake-fingerprint-1\0");
        whole.update(source.as_str().as_bytes());
        whole.update(b"\0");
        if let Some(parameter) = parameter {
            whole.update(b"ssm-parameter\0");
            whole.update(parameter.name.as_bytes());
            whole.update(b"\0");
            whole.update(parameter.version.to_le_bytes());
        }
        let mut provisioners = Vec::new();
        // Its time limit is not part of what an image is made of.
        for (index, entry) in flavor.provisioners.iter().enumerate() {
            let bytes = provisioner_bytes(&entry.provisioner, |name, value| {
                flavor.without_secrets.provisioner_env.get(&(index, name.to_string())).map_or(value, String::as_str)
            })?;
            whole.update(&bytes);
            provisioners.push(short(&Sha256::digest(&bytes)));
        }
        let settings = settings_bytes(fleet, flavor, region);
        whole.update(&settings);
        Ok(Fingerprint {
            digest: hex(&whole.finalize()),
            source: source.clone(),
            parameter: parameter.cloned(),
            provisioners,
            settings: short(&Sha256::digest(&settings)),
        })
    }

    /// Its two tags.
    pub fn tags(&self) -> Tags {
        Tags::from([(FINGERPRINT_TAG.to_string(), self.digest.clone()), (PARTS_TAG.to_string(), self.parts())])
    }

    /// `src=ami-…;s=9c0d1e2f;p=1a2b3c4d,5e6f7a8b` (with `;pv=3` after the source when it was read from
    /// version 3 of an SSM parameter), cut to EC2's 256 characters for a tag value (the why
    /// then covers fewer provisioners; the digest still covers them all).
    pub fn parts(&self) -> String {
        let version = self.parameter.as_ref().map(|read| format!(";pv={}", read.version)).unwrap_or_default();
        let mut text = format!("src={}{version};s={};p=", self.source, self.settings);
        for (index, part) in self.provisioners.iter().enumerate() {
            let piece = if index == 0 { part.clone() } else { format!(",{part}") };
            if text.len() + piece.len() > 256 {
                break;
            }
            text.push_str(&piece);
        }
        text
    }

    /// Why an image with `previous` parts (its tag) is not this one: one line per difference.
    pub fn why_not(&self, flavor: &Flavor, previous: &str) -> Vec<String> {
        let field = |key: &str| {
            previous.split(';').find_map(|part| part.strip_prefix(key)?.strip_prefix('=')).map(str::to_string)
        };
        let mut why = Vec::new();
        if let Some(source) = field("src").filter(|source| source != self.source.as_str()) {
            why.push(format!("the source image moved from {source} to {}", self.source));
        }
        let version = self.parameter.as_ref().map(|read| read.version.to_string());
        if let (Some(before), Some(now)) = (field("pv"), &version) {
            if &before != now {
                why.push(format!("the source parameter moved from version {before} to {now}"));
            }
        }
        if field("s").is_some_and(|settings| settings != self.settings) {
            why.push("the image settings changed (root volume, encryption key, metadata options or user data)".into());
        }
        let before: Vec<String> = field("p")
            .map(|list| list.split(',').filter(|p| !p.is_empty()).map(str::to_string).collect())
            .unwrap_or_default();
        for (index, part) in self.provisioners.iter().enumerate() {
            let what = flavor.provisioners.get(index).map(|entry| describe(&entry.provisioner)).unwrap_or_default();
            match before.get(index) {
                Some(old) if old != part => why.push(format!("provisioner {} ({what}) changed", index + 1)),
                None => why.push(format!("a new provisioner {} ({what})", index + 1)),
                Some(_) => {}
            }
        }
        if before.len() > self.provisioners.len() {
            why.push(format!("{} provisioner(s) removed", before.len() - self.provisioners.len()));
        }
        if why.is_empty() {
            why.push("the fingerprint changed".into());
        }
        why
    }
}

fn describe(provisioner: &Provisioner) -> String {
    let name = |path: &Path| path.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
    match provisioner {
        Provisioner::File { source, .. } => format!("file {}", name(source)),
        Provisioner::Shell { script: ShellScript::File(path), .. } => format!("script {}", name(path)),
        Provisioner::Shell { script: ShellScript::Inline(_), .. } => "inline shell".into(),
    }
}

/// A provisioner, canonically: its type, what it copies or runs, byte for byte, and its env (sorted), each env
/// value as `env_value` gives it (a value with a sensitive variable: as written, `{var.name}` left in).
fn provisioner_bytes<'a>(
    provisioner: &'a Provisioner,
    env_value: impl Fn(&str, &'a str) -> &'a str,
) -> Result<Vec<u8>, String> {
    let read = |path: &Path| std::fs::read(path).map_err(|error| format!("cannot read `{}`: {error}", path.display()));
    let mut bytes = Vec::new();
    let field = |bytes: &mut Vec<u8>, value: &[u8]| {
        bytes.extend_from_slice(&(value.len() as u64).to_le_bytes());
        bytes.extend_from_slice(value);
    };
    match provisioner {
        Provisioner::File { source, destination } => {
            field(&mut bytes, b"file");
            field(&mut bytes, destination.as_bytes());
            field(&mut bytes, &read(source)?);
        }
        Provisioner::Shell { script, env } => {
            match script {
                ShellScript::File(path) => {
                    field(&mut bytes, b"shell-script");
                    field(&mut bytes, &read(path)?);
                }
                ShellScript::Inline(lines) => {
                    field(&mut bytes, b"shell-inline");
                    for line in lines {
                        field(&mut bytes, line.as_bytes());
                    }
                }
            }
            for (key, value) in env {
                field(&mut bytes, key.as_bytes());
                field(&mut bytes, env_value(key, value).as_bytes());
            }
        }
    }
    Ok(bytes)
}

fn settings_bytes(fleet: &Fleet, flavor: &Flavor, region: &Region) -> Vec<u8> {
    let key = fleet.kms_key(region);
    // Text user data is hashed as it always was (`Some("…")`), so images made before user data became bytes
    // keep their fingerprints; other bytes (gzip) as hex.
    let user_data = match &flavor.user_data {
        None => "None".to_string(),
        // It uses a sensitive variable: hashed as written, so a rotated secret keeps the fingerprint.
        Some(_) if flavor.without_secrets.user_data.is_some() => {
            format!("{:?}", flavor.without_secrets.user_data.as_deref())
        }
        Some(data) => match std::str::from_utf8(data.as_bytes()) {
            Ok(text) => format!("{:?}", Some(text)),
            Err(_) => format!("Bytes({})", hex(data.as_bytes())),
        },
    };
    format!(
        "root_volume={:?}\0kms_key={key:?}\0metadata={:?}\0user_data={user_data}",
        flavor.root_volume, flavor.metadata
    )
    .into_bytes()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut text, byte| {
        let _ = write!(text, "{byte:02x}");
        text
    })
}

fn short(bytes: &[u8]) -> String {
    hex(&bytes[..4])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flavor_with(user_data: &str) -> (Fleet, Flavor) {
        let text = format!(
            "[fleet]\nname = \"f\"\n\n[defaults]\ninstance_type = \"t3.small\"\nssh_username = \"ec2-user\"\n{user_data}\n\n\
             [[flavor]]\nname = \"base\"\nsource_ami = {{ owners = [\"amazon\"], name = \"al2023-ami-*\" }}\n\n\
             [regions]\nus-west-2 = []\n"
        );
        let fleet = crate::config::parse(std::path::Path::new("/nonexistent/fleet.toml"), &text).unwrap();
        let flavor = fleet.flavors[0].clone();
        (fleet, flavor)
    }

    /// Text user data is hashed as it was when user data was a `String`, so images built before it became
    /// bytes keep their fingerprints (and `--changed-only` does not rebuild them for it).
    #[test]
    fn text_user_data_keeps_the_fingerprint_it_had_as_a_string() {
        let region = Region::new("us-west-2");
        let (fleet, flavor) = flavor_with("user_data = \"#!/bin/sh\\necho hi\\n\"");
        let as_a_string: Option<String> = Some("#!/bin/sh\necho hi\n".to_string());
        let before = format!(
            "root_volume={:?}\0kms_key={:?}\0metadata={:?}\0user_data={:?}",
            flavor.root_volume,
            fleet.kms_key(&region),
            flavor.metadata,
            as_a_string
        );
        assert_eq!(settings_bytes(&fleet, &flavor, &region), before.into_bytes());
        let (fleet, flavor) = flavor_with("");
        assert!(String::from_utf8(settings_bytes(&fleet, &flavor, &region)).unwrap().ends_with("user_data=None"));
    }

    /// A sensitive variable's value is not in the fingerprint (a rotated token keeps it); a plain one's is.
    #[test]
    fn a_rotated_secret_keeps_the_fingerprint_and_a_changed_variable_does_not() {
        let text = "[fleet]\nname = \"f\"\n\n[variables]\nbuild = \"dev\"\ntoken = { sensitive = true }\n\n                    [defaults]\ninstance_type = \"t3.small\"\nssh_username = \"ec2-user\"\n                    user_data = \"#!/bin/sh\\necho {var.build}\\n\"\n\n                    [[flavor]]\nname = \"base\"\nsource_ami = { id = \"ami-12345678\" }\n                    provisioners = [{ type = \"shell\", inline = [\"true\"], env = { T = \"{var.token}\", B = \"{var.build}\" } }]\n\n                    [regions]\nus-west-2 = []\n";
        let region = Region::new("us-west-2");
        let source = ImageId::new("ami-12345678");
        let fingerprint = |flags: &[&str]| {
            let inputs = crate::config::VariableInputs {
                flags: flags.iter().map(|flag| flag.to_string()).collect(),
                ..Default::default()
            };
            let fleet = crate::config::parse_with(Path::new("/nonexistent/fleet.toml"), text, &inputs)
                .unwrap_or_else(|e| panic!("{e}"));
            let flavor = fleet.flavors[0].clone();
            let Provisioner::Shell { env, .. } = &flavor.provisioners[0].provisioner else { panic!() };
            assert_eq!(env["T"], flags[0].trim_start_matches("token="), "the instance gets the value itself");
            Fingerprint::of(&fleet, &flavor, &region, &source).unwrap().digest
        };
        let first = fingerprint(&["token=one"]);
        assert_eq!(first, fingerprint(&["token=two"]), "a rotated secret rebuilds nothing");
        assert_ne!(first, fingerprint(&["token=one", "build=prod"]), "a plain variable reaches the image");
    }
}
