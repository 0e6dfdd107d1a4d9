//! Turns the raw [`schema`](super::schema) into a [`Fleet`], collecting every problem with its key path.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use toml::Spanned;

use super::schema::{self, FleetFile, TagMap};
use super::spans::{self, KeyPath, Node};
use super::template::{NameContext, NameTemplate, Placeholder};
use super::*;

mod distribution;
mod durations;
mod forensics;
mod retention;
mod sim_accounts;
mod spot;
mod variables;
use durations::DurationScale;
pub use retention::warnings;
use variables::{resolve_variables, substitute_variables, SecretForms};

const DEFAULT_AMI_NAME: &str = "{flavor}-{build_region}-{timestamp}";
const DEFAULT_MANIFEST: &str = "manifest.json";
const DEFAULT_SSH_TIMEOUT: Duration = Duration::from_secs(10 * 60);
const DEFAULT_ROLE_DURATION: Duration = Duration::from_secs(60 * 60);
const DEFAULT_HOST_KEY_WAIT: Duration = Duration::from_secs(5 * 60);
/// Longest values the placeholders can take, for the AMI name length check.
const LONGEST_TIMESTAMP: &str = "20261126T143000Z";
const LONGEST_DATE: &str = "2026-11-26";
pub const RUN_ID_LENGTH: usize = 21;

struct Problem {
    path: KeyPath,
    message: String,
}

/// Collects problems while the fleet is resolved.
struct Checker<'a> {
    file: &'a Path,
    base_dir: PathBuf,
    problems: Vec<Problem>,
}

impl Checker<'_> {
    fn problem(&mut self, path: KeyPath, message: impl Into<String>) {
        self.problems.push(Problem { path, message: message.into() });
    }

    fn local_file(&mut self, path: KeyPath, relative: &str) -> PathBuf {
        let resolved = self.base_dir.join(relative);
        if !resolved.is_file() {
            let why = if resolved.exists() { "is not a regular file" } else { "does not exist" };
            self.problem(path, format!("`{}` {why}", resolved.display()));
        }
        resolved
    }

    fn duration(&mut self, path: KeyPath, text: &str) -> Option<Duration> {
        match humantime::parse_duration(text) {
            Ok(duration) if !duration.is_zero() => Some(duration),
            Ok(_) => {
                self.problem(path, "must be longer than zero");
                None
            }
            Err(_) if text.trim().parse::<f64>().is_ok() => {
                let example = DurationScale::of(&path).example(text.trim());
                self.problem(
                    path,
                    format!("`{text}` has no unit: a duration needs one (`s`, `m`, `h`, `d`), as in {example}"),
                );
                None
            }
            Err(error) => {
                self.problem(path, format!("`{text}` is not a duration like `90s`, `10m` or `2h`: {error}"));
                None
            }
        }
    }

    /// A duration that may be zero (`"0s"`).
    fn duration_or_zero(&mut self, path: KeyPath, text: &str) -> Option<Duration> {
        match humantime::parse_duration(text) {
            Ok(duration) => Some(duration),
            Err(_) => self.duration(path, text),
        }
    }

    fn tags(&mut self, path: KeyPath, tags: &TagMap) {
        for (key, value) in tags {
            let at = path.key(key);
            if key.is_empty() || key.len() > 128 {
                self.problem(at.clone(), "a tag key must be 1 to 128 characters");
            }
            if key.starts_with("aws:") || key.starts_with("fleetbake:") {
                self.problem(at.clone(), "tag keys starting with `aws:` or `fleetbake:` are reserved");
            }
            if value.len() > 256 {
                self.problem(at, "a tag value must be at most 256 characters");
            }
        }
    }

    fn name(&mut self, path: KeyPath, what: &str, name: &str) {
        let valid = !name.is_empty()
            && name.len() <= 64
            && name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        if !valid {
            self.problem(
                path,
                format!("`{name}` is not a valid {what} name: 1 to 64 of letters, digits, `.`, `_`, `-`"),
            );
        }
    }

    fn region(&mut self, path: KeyPath, name: &str) -> Region {
        if !is_region_name(name) {
            self.problem(path, format!("`{name}` is not an AWS region name like `us-west-2`"));
        }
        Region::new(name)
    }

    fn positive(&mut self, path: KeyPath, value: Option<usize>, default: usize) -> usize {
        match value {
            Some(0) => {
                self.problem(path, "must be at least 1");
                default
            }
            Some(value) => value,
            None => default,
        }
    }
}

/// `arn:aws:iam::123456789012:role/name` (or a role path), in any partition.
fn is_role_arn(text: &str) -> bool {
    let parts: Vec<&str> = text.splitn(6, ':').collect();
    parts.len() == 6
        && parts[0] == "arn"
        && parts[1].starts_with("aws")
        && parts[2] == "iam"
        && parts[3].is_empty()
        && is_account_id(parts[4])
        && parts[5].strip_prefix("role/").is_some_and(|name| !name.is_empty())
}

/// `us-west-2`, `eu-central-1`, `us-gov-west-1`, `ap-southeast-4`, ….
pub fn is_region_name(name: &str) -> bool {
    let parts: Vec<&str> = name.split('-').collect();
    parts.len() >= 3
        && parts
            .iter()
            .all(|part| !part.is_empty() && part.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()))
        && parts[0].len() == 2
        && parts[0].chars().all(|c| c.is_ascii_lowercase())
        && parts.last().is_some_and(|last| last.chars().all(|c| c.is_ascii_digit()))
}

pub fn parse(file: &Path, text: &str, inputs: &VariableInputs) -> Result<Fleet, ConfigErrors> {
    let tree = Node::parse(text);
    let mut raw: FleetFile = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(error) => {
            let span = error.span().unwrap_or(0..0);
            let key = tree.as_ref().map(|tree| spans::path_at(tree, span.start)).unwrap_or_default();
            let (line, column) = spans::line_column(text, span.start);
            return Err(ConfigErrors(vec![ConfigError {
                file: file.to_path_buf(),
                line,
                column,
                key: if key.segments().is_empty() { String::new() } else { key.to_string() },
                message: crate::config::packer::unknown_field_message(&key, error.message().trim())
                    .unwrap_or_else(|| error.message().trim().to_string()),
            }]));
        }
    };
    let base_dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
    let base_dir = if base_dir.as_os_str().is_empty() { PathBuf::from(".") } else { base_dir };
    let base_dir = std::path::absolute(&base_dir).unwrap_or(base_dir);
    let mut checker = Checker { file, base_dir, problems: Vec::new() };
    // Problems located outside the fleet file: a `--var-file`'s own lines, `--var` flags, the environment.
    let mut outside = Vec::new();
    let variables = resolve_variables(&mut checker, &raw.variables, inputs, &mut outside);
    let without_secrets = substitute_variables(&mut checker, &variables, &mut raw);
    check_ssh_fields(&mut checker, &raw);
    let mut fleet = resolve(&mut checker, raw, without_secrets);
    fleet.variables = variables;
    if checker.problems.is_empty() && outside.is_empty() {
        return Ok(fleet);
    }
    let tree = tree.expect("text that deserialized is TOML");
    let mut errors = locate_problems(checker.file, text, &tree, checker.problems);
    errors.extend(outside);
    Err(ConfigErrors(errors))
}

fn locate_problems(file: &Path, text: &str, tree: &Spanned<Node>, problems: Vec<Problem>) -> Vec<ConfigError> {
    let mut errors: Vec<ConfigError> = problems
        .into_iter()
        .map(|problem| {
            let located = spans::locate(tree, &problem.path);
            let (line, column) = spans::line_column(text, located.span.start);
            ConfigError {
                file: file.to_path_buf(),
                line,
                column,
                key: problem.path.to_string(),
                message: problem.message,
            }
        })
        .collect();
    errors.sort_by_key(|error| (error.line, error.column));
    errors
}

fn resolve(checker: &mut Checker<'_>, raw: FleetFile, without_secrets: SecretForms) -> Fleet {
    let root = KeyPath::root();
    let fleet_path = root.key("fleet");
    checker.name(fleet_path.key("name"), "fleet", &raw.fleet.name);
    checker.tags(fleet_path.key("tags"), &raw.fleet.tags);
    checker.tags(root.key("defaults").key("tags"), &raw.defaults.tags);

    let ami_name_source = raw.fleet.ami_name.as_deref().unwrap_or(DEFAULT_AMI_NAME);
    let ami_name = match NameTemplate::parse(ami_name_source) {
        Ok(template) => template,
        Err(message) => {
            checker.problem(fleet_path.key("ami_name"), message);
            NameTemplate::parse(DEFAULT_AMI_NAME).expect("default template parses")
        }
    };
    if !(ami_name.uses(Placeholder::Timestamp) || ami_name.uses(Placeholder::RunId) || ami_name.uses(Placeholder::Date))
    {
        checker.problem(
            fleet_path.key("ami_name"),
            "must contain `{timestamp}`, `{run_id}` or `{date}`: AMI names are unique per region, so a fixed name fails every run after the first",
        );
    }
    if let Some(description) = &raw.fleet.ami_description {
        if description.len() > 255 {
            checker.problem(fleet_path.key("ami_description"), "must be at most 255 characters");
        }
    }
    let manifest_path = checker.base_dir.join(raw.fleet.manifest.as_deref().unwrap_or(DEFAULT_MANIFEST));

    let (mut flavors, subnet_paths) = resolve_flavors(checker, &raw);
    for (index, flavor) in flavors.iter_mut().enumerate() {
        flavor.without_secrets = without_secrets.of_flavor(index, &raw.flavors[index]);
    }
    let regions = resolve_regions(checker, &raw.regions);
    let matrix = resolve_matrix(checker, &raw.matrix, &flavors, &regions);

    let flavor_names: Vec<FlavorName> = flavors.iter().map(|flavor| flavor.name.clone()).collect();
    let distributions = distribution::resolve_distributions(checker, raw.distributions, &flavor_names);
    let mut aws = resolve_aws(checker, raw.aws);
    aws.distribution_roles = distributions
        .accounts()
        .into_iter()
        .filter_map(|id| Some((id.clone(), distributions.role_for(&id)?)))
        .collect();
    let fleet = Fleet {
        file: checker.file.to_path_buf(),
        name: raw.fleet.name,
        ami_name,
        ami_description: raw.fleet.ami_description,
        manifest_path,
        packer_manifest_path: raw.fleet.packer_manifest.as_deref().map(|path| checker.base_dir.join(path)),
        keep_failed_images: raw.fleet.keep_failed_images.unwrap_or(false),
        tags: raw.fleet.tags,
        flavors,
        regions,
        matrix,
        aws,
        ssh: resolve_ssh(checker, raw.ssh),
        limits: resolve_limits(checker, raw.limits),
        sim: resolve_sim(checker, raw.sim),
        retention: forensics::resolve_retention(checker, &raw.retention),
        encryption: raw.encryption.map(|section| resolve_encryption(checker, section)),
        sharing: raw.sharing.map(|section| resolve_sharing(checker, section)).unwrap_or_default(),
        publish: raw.publish.and_then(|section| resolve_publish(checker, section)),
        deprecate_after: raw
            .fleet
            .deprecate_after
            .as_deref()
            .and_then(|text| checker.duration(fleet_path.key("deprecate_after"), text)),
        selection: Selection::default(),
        variables: Variables::default(),
        distributions,
        prices: spot::resolve_prices(checker, KeyPath::root().key("prices"), &raw.prices),
    };
    check_selection(checker, &fleet);
    check_layers(checker, &fleet);
    check_subnets(checker, &fleet, &subnet_paths);
    check_keys(checker, &fleet);
    check_ssh_source_regions(checker, &fleet);
    check_deprecation(checker, &fleet);
    check_public(checker, &fleet);
    check_publish_accounts(checker, &fleet);
    fleet
}

/// EC2 never makes an image with encrypted snapshots public (ModifyImageAttribute answers
/// `UnsupportedOperation`, "Encrypted snapshots can't be shared publicly"), and `[encryption]` encrypts every
/// image: the two cannot both hold.
fn check_public(checker: &mut Checker<'_>, fleet: &Fleet) {
    if fleet.sharing.public && fleet.encryption.is_some() {
        checker.problem(
            KeyPath::root().key("sharing").key("public"),
            "`public = true` with `[encryption] kms_keys`: EC2 never makes an image with encrypted snapshots public; share with `accounts` or `organizations` instead, or drop `[encryption]`",
        );
    }
}

/// EC2 refuses a deprecation time more than 10 years ahead (2 for public images), and rounds it to the minute
/// (EnableImageDeprecation, `DeprecateAt`).
fn check_deprecation(checker: &mut Checker<'_>, fleet: &Fleet) {
    let Some(after) = fleet.deprecate_after else { return };
    const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);
    let (limit, why) =
        if fleet.sharing.public { (2 * YEAR, "2 years for a public image") } else { (10 * YEAR, "10 years") };
    let path = KeyPath::root().key("fleet").key("deprecate_after");
    if after < Duration::from_secs(60) {
        checker.problem(path, "must be at least a minute (EC2 deprecates images to the minute)");
    } else if after > limit {
        checker.problem(path, format!("must be at most {why} (EC2's limit on a deprecation time)"));
    }
}

/// `[publish]`: templates with `{fleet}` and `{flavor}` only; an SSM parameter name as SSM allows it.
fn resolve_publish(checker: &mut Checker<'_>, section: schema::PublishSection) -> Option<Publish> {
    let path = KeyPath::root().key("publish");
    let mut template = |key: &str, text: Option<String>, allowed: fn(char) -> bool| {
        let text = text?;
        let rest = text.replace("{fleet}", "").replace("{flavor}", "");
        if rest.contains('{') || rest.contains('}') {
            checker.problem(path.key(key), format!("`{text}`: the placeholders are `{{fleet}}` and `{{flavor}}`"));
        } else if text.is_empty() || !rest.chars().all(allowed) {
            checker.problem(path.key(key), format!("`{text}` is not a valid name here"));
        }
        Some(text)
    };
    let ssm_parameter =
        template("ssm_parameter", section.ssm_parameter, |c| c.is_ascii_alphanumeric() || "_.-/".contains(c));
    let launch_template =
        template("launch_template", section.launch_template, |c| c.is_ascii_alphanumeric() || "()./_-".contains(c));
    if ssm_parameter.as_deref().is_some_and(|name| name.contains('/') && !name.starts_with('/')) {
        checker.problem(path.key("ssm_parameter"), "a parameter name with `/` must start with `/` (a hierarchy)");
    }
    let when = match section.when.as_deref() {
        None | Some("flavor_complete") => PublishWhen::FlavorComplete,
        Some("each") => PublishWhen::Each,
        Some(other) => {
            checker.problem(path.key("when"), format!("`{other}`: `flavor_complete` or `each`"));
            PublishWhen::FlavorComplete
        }
    };
    let accounts = match section.accounts {
        None | Some(schema::PublishAccountsField::All(false)) => PublishAccounts::None,
        Some(schema::PublishAccountsField::All(true)) => PublishAccounts::All,
        Some(schema::PublishAccountsField::Listed(ids)) => PublishAccounts::Listed(ids),
    };
    if ssm_parameter.is_none() && launch_template.is_none() {
        checker.problem(path, "set `ssm_parameter`, `launch_template` or both");
        return None;
    }
    Some(Publish { ssm_parameter, launch_template, when, accounts })
}

/// `[publish] accounts`: a listed account is one a `[[distribution]]` copies into (or it would have nothing to
/// publish); `true` with no `[[distribution]]` publishes nothing more, and says so.
fn check_publish_accounts(checker: &mut Checker<'_>, fleet: &Fleet) {
    let Some(publish) = &fleet.publish else { return };
    let path = KeyPath::root().key("publish").key("accounts");
    let distributed = fleet.distributions.accounts();
    // A unit's accounts are known once the preflight resolved it (`engine::preflight::units` checks them then).
    let units = !fleet.distributions.units().is_empty();
    match &publish.accounts {
        PublishAccounts::None => {}
        PublishAccounts::All if distributed.is_empty() && !units => checker.problem(
            path,
            "`true`, and no `[[distribution]]` copies into another account: there is nothing to publish in other accounts",
        ),
        PublishAccounts::All => {}
        PublishAccounts::Listed(ids) => {
            for (index, id) in ids.iter().enumerate() {
                if !distributed.contains(id) && !units {
                    checker.problem(
                        path.index(index),
                        format!("`{id}` is not an account a `[[distribution]]` copies into: list those accounts, or `true` for all of them"),
                    );
                }
            }
        }
    }
}

/// `[encryption] kms_keys`: region → key, `"*"` for any other.
fn resolve_encryption(checker: &mut Checker<'_>, section: schema::EncryptionSection) -> Encryption {
    let path = KeyPath::root().key("encryption").key("kms_keys");
    let mut encryption = Encryption { kms_keys: BTreeMap::new(), fallback: None };
    for (region, key) in section.kms_keys {
        let at = path.key(&region);
        if !is_kms_key(&key) {
            checker.problem(
                at.clone(),
                format!("`{key}` is not a KMS key: an alias (`alias/images`), a key id or a key ARN"),
            );
        }
        if region == "*" {
            encryption.fallback = Some(key);
            continue;
        }
        let region = checker.region(at.clone(), &region);
        // A key ARN names its region: it must be the one it is given for (KMS keys are regional).
        if let Some(arn_region) = key.strip_prefix("arn:").and_then(|rest| rest.split(':').nth(2)) {
            if key.starts_with("arn:aws") && key.contains(":kms:") && arn_region != region.as_str() {
                checker
                    .problem(at, format!("`{key}` is a key of {arn_region}, not of {region}: KMS keys are regional"));
            }
        }
        encryption.kms_keys.insert(region, key);
    }
    encryption
}

/// `[sharing]`: account ids, organization and OU ARNs, checked for their shape.
fn resolve_sharing(checker: &mut Checker<'_>, section: schema::SharingSection) -> Sharing {
    let path = KeyPath::root().key("sharing");
    for (key, accounts) in [("accounts", &section.accounts), ("snapshot_accounts", &section.snapshot_accounts)] {
        for (index, id) in accounts.iter().enumerate() {
            if !is_account_id(id) {
                checker.problem(path.key(key).index(index), format!("`{id}` is not an AWS account id (12 digits)"));
            }
        }
    }
    for (index, arn) in section.organizations.iter().enumerate() {
        if !is_organization_arn(arn) {
            checker.problem(
                path.key("organizations").index(index),
                format!("`{arn}` is not an organization ARN like `arn:aws:organizations::123456789012:organization/o-abc123def4`"),
            );
        }
    }
    for (index, arn) in section.organizational_units.iter().enumerate() {
        if !is_ou_arn(arn) {
            checker.problem(
                path.key("organizational_units").index(index),
                format!("`{arn}` is not an organizational unit ARN like `arn:aws:organizations::123456789012:ou/o-abc123def4/ou-ab12-cd34ef56`"),
            );
        }
    }
    Sharing {
        accounts: section.accounts,
        organizations: section.organizations,
        organizational_units: section.organizational_units,
        snapshot_accounts: section.snapshot_accounts,
        public: section.public.unwrap_or(false),
    }
}

/// `arn:aws:organizations::<account>:organization/o-<10 to 32>`.
fn is_organization_arn(arn: &str) -> bool {
    let Some((account, id)) = organizations_arn(arn, "organization/") else { return false };
    is_account_id(account) && is_org_id(id)
}

/// `arn:aws:organizations::<account>:ou/o-…/ou-…`.
fn is_ou_arn(arn: &str) -> bool {
    let Some((account, rest)) = organizations_arn(arn, "ou/") else { return false };
    let Some((org, ou)) = rest.split_once('/') else { return false };
    is_account_id(account)
        && is_org_id(org)
        && ou.strip_prefix("ou-").is_some_and(|ou| {
            ou.len() >= 9 && ou.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        })
}

/// The account (unchecked) and what follows `kind` in an organizations ARN.
fn organizations_arn<'a>(arn: &'a str, kind: &str) -> Option<(&'a str, &'a str)> {
    let rest = arn.strip_prefix("arn:")?;
    let (partition, rest) = rest.split_once(':')?;
    let rest = rest.strip_prefix("organizations::")?;
    let (account, resource) = rest.split_once(':')?;
    if !partition.starts_with("aws") {
        return None;
    }
    resource.strip_prefix(kind).map(|id| (account, id))
}

/// A KMS key as EC2 and KMS take it: an alias (`alias/images`), a key id (a UUID, or `mrk-…` for a
/// multi-Region key) or a key ARN.
fn is_kms_key(key: &str) -> bool {
    key.starts_with("alias/")
        || key.starts_with("arn:aws")
        || (key.len() == 36 && key.chars().all(|c| c.is_ascii_hexdigit() || c == '-'))
        || key.starts_with("mrk-")
}

/// An AWS account id: 12 digits.
fn is_account_id(id: &str) -> bool {
    id.len() == 12 && id.chars().all(|c| c.is_ascii_digit())
}

fn is_org_id(id: &str) -> bool {
    id.strip_prefix("o-").is_some_and(|id| {
        (10..=32).contains(&id.len()) && id.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    })
}

/// `[ssh] source_security_groups` and `source_prefix_lists` name build regions only: a group or prefix list
/// is regional, and one listed for a region that builds nothing (a misspelt region) would admit no one.
fn check_ssh_source_regions(checker: &mut Checker<'_>, fleet: &Fleet) {
    let keys = [
        ("source_security_groups", &fleet.ssh.source_security_groups),
        ("source_prefix_lists", &fleet.ssh.source_prefix_lists),
    ];
    for (key, per_region) in keys {
        for region in per_region.keys().filter(|region| !fleet.regions.contains_key(*region)) {
            let builds: Vec<String> = fleet.regions.keys().map(|region| format!("`{region}`")).collect();
            checker.problem(
                KeyPath::root().key("ssh").key(key).key(region.as_str()),
                format!("`{region}` is not a build region (the security groups are made in {})", builds.join(", ")),
            );
        }
    }
}

/// Every region an image lands in has a key; an image encrypted with the AWS-managed key is not shared.
fn check_keys(checker: &mut Checker<'_>, fleet: &Fleet) {
    let Some(encryption) = &fleet.encryption else { return };
    let path = KeyPath::root().key("encryption").key("kms_keys");
    let mut landings: BTreeSet<&Region> = BTreeSet::new();
    for (_, build) in fleet.selected_pairs() {
        landings.insert(build);
        landings.extend(&fleet.regions[build]);
    }
    let missing: Vec<String> =
        landings.iter().filter(|region| encryption.key_for(region).is_none()).map(|r| format!("`{r}`")).collect();
    if !missing.is_empty() {
        checker.problem(
            path.clone(),
            format!(
                "no key for {}, where images land; add one (`region = \"alias/…\"`), or `\"*\" = \"…\"` for every region not listed",
                missing.join(", ")
            ),
        );
    }
    if fleet.sharing.any() {
        for region in landings {
            if let Some(key) = encryption.key_for(region).filter(|key| key.starts_with(AWS_MANAGED_KEY_ALIASES)) {
                checker.problem(
                    path.clone(),
                    format!(
                        "`{region}`'s images would be encrypted with `{key}`, an AWS-managed key, which cannot be shared with other accounts; use a customer-managed key there"
                    ),
                );
                break;
            }
        }
    }
}

/// The flavors, and per flavor where its subnet was set (for the checks that need its build regions).
fn resolve_flavors(checker: &mut Checker<'_>, raw: &FleetFile) -> (Vec<Flavor>, Vec<Option<KeyPath>>) {
    let defaults = &raw.defaults;
    let default_timeout = defaults
        .provisioner_timeout
        .as_deref()
        .and_then(|text| checker.duration(KeyPath::root().key("defaults").key("provisioner_timeout"), text))
        .unwrap_or(DEFAULT_PROVISIONER_TIMEOUT);
    if raw.flavors.is_empty() {
        checker.problem(KeyPath::root().key("flavor"), "no `[[flavor]]` is defined");
    }
    let mut seen = BTreeSet::new();
    let mut flavors = Vec::new();
    let mut subnet_paths = Vec::new();
    for (index, flavor) in raw.flavors.iter().enumerate() {
        let path = KeyPath::root().key("flavor").index(index);
        checker.name(path.key("name"), "flavor", &flavor.name);
        if !seen.insert(flavor.name.clone()) {
            checker.problem(path.key("name"), format!("flavor `{}` is defined twice", flavor.name));
        }
        checker.tags(path.key("tags"), &flavor.tags);
        let ssh_username =
            required_inherited(checker, &path, "ssh_username", &flavor.ssh_username, &defaults.ssh_username);
        let mut tags = defaults.tags.clone();
        tags.extend(flavor.tags.clone());
        // The limit of its provisioners and tests that set none.
        let timeout = flavor
            .provisioner_timeout
            .as_deref()
            .and_then(|text| checker.duration(path.key("provisioner_timeout"), text))
            .unwrap_or(default_timeout);
        let (market, instance_types, spot_fallback) = spot::resolve_market(checker, &path, flavor, defaults);
        let instance_type = instance_types.first().cloned().unwrap_or_default();
        flavors.push(Flavor {
            name: FlavorName::new(&flavor.name),
            source_ami: resolve_source_ami(checker, path.key("source_ami"), &flavor.source_ami),
            instance_type,
            ssh_username,
            subnet: resolve_subnet(checker, &path, flavor, defaults, &mut subnet_paths),
            associate_public_ip: flavor.associate_public_ip.or(defaults.associate_public_ip),
            tags,
            provisioners: resolve_provisioner_list(checker, &path, "provisioners", &flavor.provisioners, timeout),
            tests: resolve_provisioner_list(checker, &path, "tests", &flavor.tests, timeout),
            sim_provision: flavor
                .sim_provision
                .as_deref()
                .and_then(|text| checker.duration_or_zero(path.key("sim_provision"), text)),
            host_key: match flavor.host_key.as_deref() {
                Some(text) => host_key_policy(checker, path.key("host_key"), text),
                // `[ssh] host_key`, checked (and any problem with it said) where `[ssh]` is resolved.
                None if raw.ssh.host_key.as_deref() == Some("accept") => HostKeyPolicy::Accept,
                None => HostKeyPolicy::Console,
            },
            interface: resolve_interface(checker, &path, flavor, defaults, &raw.ssh),
            metadata: resolve_metadata(checker, &path, flavor, defaults),
            root_volume: resolve_root_volume(checker, &path, flavor, defaults),
            iam_instance_profile: flavor.iam_instance_profile.clone().or_else(|| defaults.iam_instance_profile.clone()),
            user_data: resolve_user_data(checker, &path, flavor, defaults),
            run_tags: {
                checker.tags(path.key("run_tags"), &flavor.run_tags);
                let mut run_tags = defaults.run_tags.clone();
                run_tags.extend(flavor.run_tags.clone());
                run_tags
            },
            without_secrets: WithoutSecrets::default(),
            forensics: forensics::resolve_forensics(checker, &path, flavor, defaults, timeout),
            market,
            instance_types,
            spot_fallback,
        });
    }
    (flavors, subnet_paths)
}

/// The flavor's way in (its own `interface`, else `[ssh] interface`, whose problems are said where `[ssh]` is
/// resolved). Session Manager needs the instance's agent to register, which needs an instance profile: a
/// flavor reached so without one is a problem at the key that chose Session Manager.
fn resolve_interface(
    checker: &mut Checker<'_>,
    path: &KeyPath,
    flavor: &schema::FlavorSection,
    defaults: &schema::DefaultsSection,
    ssh: &schema::SshSection,
) -> SshInterface {
    let (interface, chosen_at) = match flavor.interface.as_deref() {
        Some(text) => (ssh_interface(checker, path.key("interface"), text), path.key("interface")),
        None => {
            let interface = ssh.interface.as_deref().and_then(interface_named).unwrap_or_default();
            (interface, KeyPath::root().key("ssh").key("interface"))
        }
    };
    let profile = flavor.iam_instance_profile.as_ref().or(defaults.iam_instance_profile.as_ref());
    if interface.is_session_manager() && profile.is_none_or(|name| name.trim().is_empty()) {
        checker.problem(
            chosen_at,
            format!(
                "flavor `{}` is reached through Session Manager, which needs an instance profile that lets its SSM agent register: set `iam_instance_profile` (e.g. a role with `AmazonSSMManagedInstanceCore`)",
                flavor.name
            ),
        );
    }
    interface
}

/// The flavor's subnet (its own `subnet` or `subnet_id`, else the defaults'), checked for its shape; records
/// where it was set.
fn resolve_subnet(
    checker: &mut Checker<'_>,
    flavor_path: &KeyPath,
    flavor: &schema::FlavorSection,
    defaults: &schema::DefaultsSection,
    paths: &mut Vec<Option<KeyPath>>,
) -> Option<SubnetChoice> {
    let (path, subnet, subnet_id) = if flavor.subnet.is_some() || flavor.subnet_id.is_some() {
        (flavor_path.clone(), &flavor.subnet, &flavor.subnet_id)
    } else {
        (KeyPath::root().key("defaults"), &defaults.subnet, &defaults.subnet_id)
    };
    let choice = match (subnet, subnet_id) {
        (None, None) => {
            paths.push(None);
            return None;
        }
        (Some(_), Some(_)) => {
            checker.problem(path.key("subnet_id"), "set `subnet` or `subnet_id`, not both");
            None
        }
        (None, Some(id)) => {
            if !id.starts_with("subnet-") {
                checker.problem(path.key("subnet_id"), format!("`{id}` is not a subnet id like `subnet-0a1b2c3d`"));
            }
            paths.push(Some(path.key("subnet_id")));
            return Some(SubnetChoice::Id(id.clone()));
        }
        (Some(section), None) => match (&section.tags, &section.ids) {
            (Some(tags), None) => {
                if tags.is_empty() {
                    checker.problem(path.key("subnet").key("tags"), "must name at least one tag to find subnets by");
                }
                Some(SubnetChoice::Tagged(tags.clone()))
            }
            (None, Some(ids)) => {
                let mut per_region = BTreeMap::new();
                for (region, id) in ids {
                    let at = path.key("subnet").key("ids").key(region);
                    let region = checker.region(at.clone(), region);
                    if !id.starts_with("subnet-") {
                        checker.problem(at, format!("`{id}` is not a subnet id like `subnet-0a1b2c3d`"));
                    }
                    per_region.insert(region, id.clone());
                }
                Some(SubnetChoice::PerRegion(per_region))
            }
            _ => {
                checker.problem(
                    path.key("subnet"),
                    "set `tags = { … }` (subnets found by their tags in each build region) or `ids = { region = \"subnet-…\" }`, one of the two",
                );
                None
            }
        },
    };
    paths.push(Some(path.key("subnet")));
    choice
}

/// The metadata options: the flavor's table, else the defaults', else IMDSv2 only.
fn resolve_metadata(
    checker: &mut Checker<'_>,
    flavor_path: &KeyPath,
    flavor: &schema::FlavorSection,
    defaults: &schema::DefaultsSection,
) -> Metadata {
    let (path, section) = match (&flavor.metadata, &defaults.metadata) {
        (Some(own), _) => (flavor_path.key("metadata"), own),
        (None, Some(inherited)) => (KeyPath::root().key("defaults").key("metadata"), inherited),
        (None, None) => return Metadata::default(),
    };
    let tokens_required = match section.http_tokens.as_deref() {
        None | Some("required") => true,
        Some("optional") => false,
        Some(other) => {
            checker.problem(path.key("http_tokens"), format!("`{other}`: use `required` (IMDSv2 only) or `optional`"));
            true
        }
    };
    if let Some(hops) = section.hop_limit {
        if !(1..=64).contains(&hops) {
            checker.problem(path.key("hop_limit"), "must be from 1 to 64");
        }
    }
    Metadata { tokens_required, hop_limit: section.hop_limit }
}

/// The root volume: the flavor's table, else the defaults'.
fn resolve_root_volume(
    checker: &mut Checker<'_>,
    flavor_path: &KeyPath,
    flavor: &schema::FlavorSection,
    defaults: &schema::DefaultsSection,
) -> Option<RootVolume> {
    let (path, section) = match (&flavor.root_volume, &defaults.root_volume) {
        (Some(own), _) => (flavor_path.key("root_volume"), own),
        (None, Some(inherited)) => (KeyPath::root().key("defaults").key("root_volume"), inherited),
        (None, None) => return None,
    };
    const TYPES: &[&str] = &["gp2", "gp3", "io1", "io2", "st1", "sc1", "standard"];
    if let Some(kind) = &section.volume_type {
        if !TYPES.contains(&kind.as_str()) {
            checker.problem(path.key("type"), format!("`{kind}` is not an EBS volume type: {}", TYPES.join(", ")));
        }
    }
    if section.size_gb.is_some_and(|size| size == 0 || size > 16_384) {
        checker.problem(path.key("size_gb"), "must be from 1 to 16384");
    }
    let provisioned = matches!(section.volume_type.as_deref(), Some("gp3" | "io1" | "io2"));
    if section.iops.is_some() && !provisioned {
        checker.problem(path.key("iops"), "goes with `type = \"gp3\"`, `\"io1\"` or `\"io2\"`");
    }
    if section.throughput.is_some() && section.volume_type.as_deref() != Some("gp3") {
        checker.problem(path.key("throughput"), "goes with `type = \"gp3\"`");
    }
    Some(RootVolume {
        size_gb: section.size_gb,
        volume_type: section.volume_type.clone(),
        iops: section.iops,
        throughput: section.throughput,
    })
}

/// `user_data` or the bytes of `user_data_file` as they are (gzip too; one of the two; the flavor's, else the
/// defaults'), at most EC2's 16 KB ([`UserData::MAX_BYTES`]). A file that cannot be read is a problem, never
/// empty user data.
fn resolve_user_data(
    checker: &mut Checker<'_>,
    flavor_path: &KeyPath,
    flavor: &schema::FlavorSection,
    defaults: &schema::DefaultsSection,
) -> Option<UserData> {
    let own = flavor.user_data.is_some() || flavor.user_data_file.is_some();
    let (path, text, file) = if own {
        (flavor_path.clone(), &flavor.user_data, &flavor.user_data_file)
    } else {
        (KeyPath::root().key("defaults"), &defaults.user_data, &defaults.user_data_file)
    };
    let data = match (text, file) {
        (None, None) => return None,
        (Some(_), Some(_)) => {
            checker.problem(path.key("user_data_file"), "set `user_data` or `user_data_file`, not both");
            return None;
        }
        (Some(text), None) => text.clone().into_bytes(),
        (None, Some(file)) => {
            let resolved = checker.local_file(path.key("user_data_file"), file);
            if !resolved.is_file() {
                return None;
            }
            match std::fs::read(&resolved) {
                Ok(bytes) => bytes,
                Err(error) => {
                    checker
                        .problem(path.key("user_data_file"), format!("cannot read `{}`: {error}", resolved.display()));
                    return None;
                }
            }
        }
    };
    if data.len() > UserData::MAX_BYTES {
        let key = if text.is_some() { "user_data" } else { "user_data_file" };
        checker.problem(
            path.key(key),
            format!(
                "is {} bytes; EC2 takes at most {} bytes of user data (before base64)",
                data.len(),
                UserData::MAX_BYTES
            ),
        );
    }
    Some(UserData::new(data))
}

fn required_inherited(
    checker: &mut Checker<'_>,
    flavor_path: &KeyPath,
    key: &str,
    own: &Option<String>,
    default: &Option<String>,
) -> String {
    match own.as_ref().or(default.as_ref()) {
        Some(value) if !value.trim().is_empty() => value.clone(),
        Some(_) => {
            let path = if own.is_some() { flavor_path.key(key) } else { KeyPath::root().key("defaults").key(key) };
            checker.problem(path, "must not be empty");
            String::new()
        }
        None => {
            checker
                .problem(flavor_path.clone(), format!("`{key}` is required: set it in the flavor or in `[defaults]`"));
            String::new()
        }
    }
}

fn resolve_source_ami(checker: &mut Checker<'_>, path: KeyPath, raw: &schema::SourceAmiSection) -> SourceAmi {
    if let Some(parent) = &raw.flavor {
        if raw.id.is_some()
            || raw.name.is_some()
            || raw.owners.is_some()
            || raw.architecture.is_some()
            || raw.ssm_parameter.is_some()
        {
            checker.problem(
                path.key("flavor"),
                "`flavor` cannot be combined with `id`, `owners`, `name`, `architecture` or `ssm_parameter`",
            );
        }
        return SourceAmi::Flavor(FlavorName::new(parent));
    }
    if let Some(name) = &raw.ssm_parameter {
        return resolve_ssm_source(checker, path, raw, name);
    }
    match (&raw.id, &raw.name) {
        (Some(id), None) => {
            if raw.owners.is_some() || raw.architecture.is_some() {
                checker.problem(path.key("id"), "`id` cannot be combined with `owners`, `name` or `architecture`");
            }
            if !id.starts_with("ami-") {
                checker.problem(path.key("id"), format!("`{id}` is not an image id like `ami-0123456789abcdef0`"));
            }
            SourceAmi::Id(id.clone())
        }
        (None, Some(name)) => {
            let owners = raw.owners.clone().unwrap_or_default();
            if owners.is_empty() {
                checker.problem(
                    path.clone(),
                    "`owners` is required with `name`: without it an image from any account could match",
                );
            }
            if name.is_empty() {
                checker.problem(path.key("name"), "must not be empty");
            }
            SourceAmi::Filter(ImageFilter {
                owners,
                name_pattern: name.clone(),
                architecture: raw.architecture.clone(),
            })
        }
        (Some(_), Some(_)) => {
            checker.problem(path, "set either `id` or `owners` + `name`, not both");
            SourceAmi::Id(String::new())
        }
        (None, None) => {
            checker.problem(
                path,
                "set `id = \"ami-…\"`, `owners = [...]` + `name = \"pattern\"` or `ssm_parameter = \"/name\"`",
            );
            SourceAmi::Id(String::new())
        }
    }
}

/// SSM's longest parameter name (GetParameter `Name`: 1 to 2048 characters).
const MAX_PARAMETER_NAME: usize = 2048;

/// `source_ami = { ssm_parameter = "/aws/service/…" }`: alone, and a name SSM accepts (SSM user guide,
/// "Parameter name requirements and constraints": letters, digits and `_.-/`; a name in a hierarchy starts
/// with `/`).
fn resolve_ssm_source(
    checker: &mut Checker<'_>,
    path: KeyPath,
    raw: &schema::SourceAmiSection,
    name: &str,
) -> SourceAmi {
    if raw.id.is_some() || raw.owners.is_some() || raw.name.is_some() || raw.architecture.is_some() {
        checker.problem(
            path.key("ssm_parameter"),
            "`ssm_parameter` cannot be combined with `id`, `owners`, `name` or `architecture`: set one source",
        );
    }
    if let Some(problem) = parameter_name_problem(name) {
        checker.problem(path.key("ssm_parameter"), problem);
    }
    SourceAmi::SsmParameter(name.to_string())
}

/// What is wrong with an SSM parameter name, if anything (the name is shown only when it is well formed).
fn parameter_name_problem(name: &str) -> Option<String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '/');
    if name.is_empty() {
        return Some("must not be empty: name an SSM parameter such as `/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64`".into());
    }
    if name.chars().count() > MAX_PARAMETER_NAME {
        return Some(format!("an SSM parameter name has at most {MAX_PARAMETER_NAME} characters"));
    }
    if !name.chars().all(allowed) {
        return Some("an SSM parameter name has only letters, digits and `_`, `.`, `-`, `/`".into());
    }
    if name.contains('/') && !name.starts_with('/') {
        return Some(format!("`{name}` is in a hierarchy, so it starts with `/`: `/{name}`"));
    }
    if name.contains("//") || (name.len() > 1 && name.ends_with('/')) || name == "/" {
        return Some(format!("`{name}` has an empty level: SSM refuses `//` and a trailing `/`"));
    }
    None
}

/// A flavor's `provisioners` or `tests` (`list`), each with its limit (its own `timeout`, else `default`).
fn resolve_provisioner_list(
    checker: &mut Checker<'_>,
    flavor_path: &KeyPath,
    list: &str,
    raw: &[schema::ProvisionerSection],
    default: Duration,
) -> Vec<ProvisionerEntry> {
    raw.iter()
        .enumerate()
        .filter_map(|(index, section)| {
            let path = flavor_path.key(list).index(index);
            let timeout = section.timeout.as_deref().and_then(|text| checker.duration(path.key("timeout"), text));
            let expect_disconnect = section.expect_disconnect.unwrap_or(false);
            if expect_disconnect && section.kind != "shell" {
                checker.problem(path.key("expect_disconnect"), "only a `shell` provisioner can expect a disconnect");
            }
            let provisioner = resolve_provisioner(checker, path, section)?;
            Some(ProvisionerEntry { provisioner, timeout: timeout.unwrap_or(default), expect_disconnect })
        })
        .collect()
}

fn resolve_provisioner(
    checker: &mut Checker<'_>,
    path: KeyPath,
    raw: &schema::ProvisionerSection,
) -> Option<Provisioner> {
    let not_for = |checker: &mut Checker<'_>, key: &str, present: bool| {
        if present {
            checker.problem(path.key(key), format!("`{key}` is not a key of a `{}` provisioner", raw.kind));
        }
    };
    match raw.kind.as_str() {
        "file" => {
            not_for(checker, "script", raw.script.is_some());
            not_for(checker, "inline", raw.inline.is_some());
            not_for(checker, "env", raw.env.is_some());
            let source = match &raw.source {
                Some(source) => checker.local_file(path.key("source"), source),
                None => {
                    checker.problem(path.clone(), "a `file` provisioner needs `source`");
                    PathBuf::new()
                }
            };
            let destination = match &raw.destination {
                Some(destination) if !destination.is_empty() => destination.clone(),
                _ => {
                    checker.problem(path.clone(), "a `file` provisioner needs `destination`");
                    String::new()
                }
            };
            Some(Provisioner::File { source, destination })
        }
        "shell" => {
            not_for(checker, "source", raw.source.is_some());
            not_for(checker, "destination", raw.destination.is_some());
            let script = match (&raw.script, &raw.inline) {
                (Some(script), None) => ShellScript::File(checker.local_file(path.key("script"), script)),
                (None, Some(lines)) => {
                    if lines.is_empty() {
                        checker.problem(path.key("inline"), "must hold at least one command");
                    }
                    ShellScript::Inline(lines.clone())
                }
                _ => {
                    checker.problem(path.clone(), "a `shell` provisioner needs exactly one of `script` or `inline`");
                    ShellScript::Inline(Vec::new())
                }
            };
            let env = raw.env.clone().unwrap_or_default();
            for name in env.keys() {
                let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !valid {
                    checker.problem(
                        path.key("env").key(name),
                        format!("`{name}` is not a valid environment variable name"),
                    );
                } else if name.starts_with("FLEETBAKE_") {
                    checker.problem(path.key("env").key(name), "`FLEETBAKE_` variables are set by fleetbake itself");
                }
            }
            Some(Provisioner::Shell { script, env })
        }
        other => {
            checker
                .problem(path.key("type"), format!("unknown provisioner type `{other}`; expected `file` or `shell`"));
            None
        }
    }
}

fn resolve_regions(checker: &mut Checker<'_>, raw: &BTreeMap<String, Vec<String>>) -> BTreeMap<Region, Vec<Region>> {
    let path = KeyPath::root().key("regions");
    if raw.is_empty() {
        checker
            .problem(path.clone(), "no build region is defined: add `[regions]` with `build-region = [copy targets]`");
    }
    let mut regions = BTreeMap::new();
    for (build, targets) in raw {
        let build_path = path.key(build);
        let build_region = checker.region(build_path.clone(), build);
        let mut seen = BTreeSet::new();
        let mut resolved = Vec::new();
        for (index, target) in targets.iter().enumerate() {
            let target_path = build_path.index(index);
            let target_region = checker.region(target_path.clone(), target);
            if target == build {
                checker
                    .problem(target_path, format!("`{target}` is the build region itself; its image is there already"));
            } else if !seen.insert(target.clone()) {
                checker.problem(target_path, format!("`{target}` is listed twice"));
            } else {
                resolved.push(target_region);
            }
        }
        resolved.sort();
        regions.insert(build_region, resolved);
    }
    regions
}

fn resolve_matrix(
    checker: &mut Checker<'_>,
    raw: &schema::MatrixSection,
    flavors: &[Flavor],
    regions: &BTreeMap<Region, Vec<Region>>,
) -> Matrix {
    let path = KeyPath::root().key("matrix");
    let known_flavor = |name: &str| flavors.iter().any(|flavor| flavor.name.as_str() == name);
    let known_flavors = || flavors.iter().map(|f| format!("`{}`", f.name)).collect::<Vec<_>>().join(", ");
    let known_regions = || regions.keys().map(|r| format!("`{r}`")).collect::<Vec<_>>().join(", ");
    let selected = raw.flavors.as_ref().map(|names| {
        let mut seen = BTreeSet::new();
        for (index, name) in names.iter().enumerate() {
            if !known_flavor(name) {
                checker.problem(
                    path.key("flavors").index(index),
                    format!("unknown flavor `{name}`; defined: {}", known_flavors()),
                );
            } else if !seen.insert(name.clone()) {
                checker.problem(path.key("flavors").index(index), format!("flavor `{name}` is listed twice"));
            }
        }
        names.iter().map(FlavorName::new).collect()
    });
    let mut exclude = Vec::new();
    for (index, entry) in raw.exclude.iter().enumerate() {
        let entry_path = path.key("exclude").index(index);
        if entry.flavor.is_none() && entry.region.is_none() {
            checker.problem(entry_path.clone(), "an exclusion needs `flavor`, `region` or both");
        }
        if let Some(name) = &entry.flavor {
            if !known_flavor(name) {
                checker.problem(
                    entry_path.key("flavor"),
                    format!("unknown flavor `{name}`; defined: {}", known_flavors()),
                );
            }
        }
        if let Some(region) = &entry.region {
            if !regions.contains_key(&Region::new(region)) {
                checker.problem(
                    entry_path.key("region"),
                    format!("`{region}` is not a build region; build regions: {}", known_regions()),
                );
            }
        }
        exclude.push(Exclusion {
            flavor: entry.flavor.as_ref().map(FlavorName::new),
            region: entry.region.as_ref().map(Region::new),
        });
    }
    let changed_only = match raw.rebuild.as_deref() {
        None | Some("always") => false,
        Some("changed") => true,
        Some(other) => {
            checker.problem(path.key("rebuild"), format!("`{other}`: `always` or `changed`"));
            false
        }
    };
    let keep_failed_state = forensics::resolve_kept_state(checker, raw);
    let keep_failed = forensics::resolve_keep_failed(checker, raw, keep_failed_state);
    Matrix { flavors: selected, exclude, changed_only, keep_failed, keep_failed_state }
}

/// Checks that need the whole fleet: a non-empty matrix, single-region source ids, unique AMI names.
fn check_selection(checker: &mut Checker<'_>, fleet: &Fleet) {
    let pairs = fleet.selected_pairs();
    if pairs.is_empty() && !fleet.flavors.is_empty() && !fleet.regions.is_empty() {
        checker.problem(KeyPath::root().key("matrix"), "the matrix is empty: every flavor × region pair is excluded");
    }
    for (index, flavor) in fleet.flavors.iter().enumerate() {
        let build_regions: Vec<&Region> =
            pairs.iter().filter(|(f, _)| f.name == flavor.name).map(|(_, r)| *r).collect();
        if matches!(flavor.source_ami, SourceAmi::Id(_)) && build_regions.len() > 1 {
            checker.problem(
                KeyPath::root().key("flavor").index(index).key("source_ami").key("id"),
                format!(
                    "an image id exists in one region only, but this flavor builds in {}; use `owners` + `name` or exclude regions in `[matrix]`",
                    build_regions.iter().map(|r| format!("`{r}`")).collect::<Vec<_>>().join(", ")
                ),
            );
        }
    }
    check_landings(checker, fleet, &pairs);
    // Every image lands in its build region and its copy targets; two images may not share a name in a region.
    let run_id = "r".repeat(RUN_ID_LENGTH);
    let mut names_by_region: BTreeMap<(&Region, String), (&FlavorName, &Region)> = BTreeMap::new();
    for (flavor, build_region) in &pairs {
        let name = fleet.ami_name.render(&NameContext {
            flavor: flavor.name.as_str(),
            build_region: build_region.as_str(),
            date: LONGEST_DATE,
            timestamp: LONGEST_TIMESTAMP,
            run_id: &run_id,
        });
        let path = KeyPath::root().key("fleet").key("ami_name");
        if name.len() < 3 || name.len() > 128 {
            checker.problem(
                path.clone(),
                format!("renders `{name}` ({} characters); an AMI name must be 3 to 128", name.len()),
            );
        }
        let holding = std::iter::once(*build_region).chain(fleet.regions[*build_region].iter());
        for region in holding {
            if let Some((other_flavor, other_build)) =
                names_by_region.insert((region, name.clone()), (&flavor.name, build_region))
            {
                checker.problem(
                    path.clone(),
                    format!(
                        "gives `{other_flavor}` built in `{other_build}` and `{}` built in `{build_region}` the same name in `{region}`; add `{{flavor}}` or `{{build_region}}`",
                        flavor.name
                    ),
                );
            }
        }
    }
}

/// A flavor holds one image per region: two of its build regions may not both land an image in one region (by
/// copying there, or one copying into the other). The manifest keeps one artifact per flavor and region, and
/// the copy's idempotency token names the flavor and both regions, so the second image would be lost.
fn check_landings(checker: &mut Checker<'_>, fleet: &Fleet, pairs: &[(&Flavor, &Region)]) {
    // (region, first build region, second build region) → the flavors both land there.
    let mut clashes: BTreeMap<(&Region, &Region, &Region), Vec<&FlavorName>> = BTreeMap::new();
    for flavor in &fleet.flavors {
        let mut landed_from: BTreeMap<&Region, &Region> = BTreeMap::new();
        for (_, build) in pairs.iter().filter(|(selected, _)| selected.name == flavor.name) {
            for region in std::iter::once(*build).chain(&fleet.regions[*build]) {
                if let Some(earlier) = landed_from.insert(region, build) {
                    clashes.entry((region, earlier, build)).or_default().push(&flavor.name);
                }
            }
        }
    }
    for ((region, first, second), flavors) in clashes {
        let flavors = flavors.iter().map(|name| format!("`{name}`")).collect::<Vec<_>>().join(", ");
        let how = if region == first || region == second {
            let (build, copying) = if region == first { (first, second) } else { (second, first) };
            format!("`{build}` builds {flavors} itself and `{copying}` copies them there")
        } else {
            format!("both `{first}` and `{second}` copy {flavors} there")
        };
        checker.problem(
            KeyPath::root().key("regions").key(second.as_str()),
            format!(
                "{flavors} would have two images in `{region}`: {how}; a flavor holds one image per region. Copy \
                 to `{region}` from one build region only, or exclude one of them for these flavors in `[matrix]`"
            ),
        );
    }
}

/// `source_ami = { flavor = … }`: the parent is a flavor of the fleet, no flavor is its own ancestor, and each
/// of the child's build regions is one where the parent lands (one of its build regions or their copy targets),
/// over the file's `[matrix]` (whatever `--only` later selects).
fn check_layers(checker: &mut Checker<'_>, fleet: &Fleet) {
    let parent_of = |flavor: &Flavor| match &flavor.source_ami {
        SourceAmi::Flavor(parent) => Some(parent.clone()),
        _ => None,
    };
    let pairs = fleet.matrix_pairs();
    for (index, flavor) in fleet.flavors.iter().enumerate() {
        let Some(parent) = parent_of(flavor) else { continue };
        let path = KeyPath::root().key("flavor").index(index).key("source_ami").key("flavor");
        let Some(parent_flavor) = fleet.flavor(&parent) else {
            let known: Vec<String> = fleet
                .flavors
                .iter()
                .filter(|other| other.name != flavor.name)
                .map(|f| format!("`{}`", f.name))
                .collect();
            checker
                .problem(path, format!("`{parent}` is not a flavor of this fleet; its flavors: {}", known.join(", ")));
            continue;
        };
        // The chain of parents from this flavor: a cycle comes back to it.
        let mut chain = vec![flavor.name.clone()];
        let mut next = Some(parent_flavor);
        let mut cycle = false;
        while let Some(ancestor) = next {
            chain.push(ancestor.name.clone());
            if ancestor.name == flavor.name {
                cycle = true;
                break;
            }
            if chain[..chain.len() - 1].contains(&ancestor.name) {
                break; // a cycle further up, reported at its own flavors
            }
            next = parent_of(ancestor).and_then(|name| fleet.flavor(&name));
        }
        let first_of_cycle = || {
            let position = |name: &FlavorName| fleet.flavors.iter().position(|f| &f.name == name);
            chain.iter().all(|name| position(name) >= Some(index))
        };
        if cycle && !first_of_cycle() {
            continue; // said once, at the cycle's first flavor in the file
        }
        if cycle {
            let names: Vec<String> = chain.iter().map(|name| format!("`{name}`")).collect();
            checker.problem(
                path,
                format!(
                    "a cycle of source flavors: {}; a flavor cannot be built from its own image",
                    names.join(" → ")
                ),
            );
            continue;
        }
        let lands: BTreeSet<&Region> = pairs
            .iter()
            .filter(|(selected, _)| selected.name == parent)
            .flat_map(|(_, build)| std::iter::once(*build).chain(&fleet.regions[*build]))
            .collect();
        let stranded: Vec<String> = pairs
            .iter()
            .filter(|(selected, region)| selected.name == flavor.name && !lands.contains(region))
            .map(|(_, region)| format!("`{region}`"))
            .collect();
        if !stranded.is_empty() {
            let landed: Vec<String> = lands.iter().map(|region| format!("`{region}`")).collect();
            let landed = if landed.is_empty() { "nowhere".to_string() } else { landed.join(", ") };
            checker.problem(
                path,
                format!(
                    "`{}` builds in {} where `{parent}` never lands (it lands in {landed}); build it only where its \
                     parent is built or copied to (exclude the rest in `[matrix]`)",
                    flavor.name,
                    stranded.join(", ")
                ),
            );
        }
    }
}

/// A subnet belongs to one region: `subnet_id` only for a flavor built in one region, and `subnet.ids` naming
/// exactly the flavor's build regions.
fn check_subnets(checker: &mut Checker<'_>, fleet: &Fleet, paths: &[Option<KeyPath>]) {
    let pairs = fleet.selected_pairs();
    for (flavor, path) in fleet.flavors.iter().zip(paths) {
        let (Some(choice), Some(path)) = (&flavor.subnet, path) else { continue };
        let builds: BTreeSet<&Region> =
            pairs.iter().filter(|(selected, _)| selected.name == flavor.name).map(|(_, region)| *region).collect();
        let listed =
            |regions: &BTreeSet<&Region>| regions.iter().map(|r| format!("`{r}`")).collect::<Vec<_>>().join(", ");
        match choice {
            SubnetChoice::Id(_) if builds.len() > 1 => checker.problem(
                path.clone(),
                format!(
                    "a subnet belongs to one region, but `{}` builds in {}; use `subnet = {{ ids = {{ region = \"subnet-…\", … }} }}` or `subnet = {{ tags = {{ … }} }}`",
                    flavor.name,
                    listed(&builds)
                ),
            ),
            SubnetChoice::PerRegion(ids) => {
                let named: BTreeSet<&Region> = ids.keys().collect();
                let missing: BTreeSet<&Region> = builds.difference(&named).copied().collect();
                if !missing.is_empty() {
                    checker.problem(
                        path.key("ids"),
                        format!("`{}` builds in {} too: name a subnet there", flavor.name, listed(&missing)),
                    );
                }
                for region in named.difference(&builds) {
                    checker.problem(
                        path.key("ids").key(region.as_str()),
                        format!("`{}` is not a build region of `{}`", region, flavor.name),
                    );
                }
            }
            _ => {}
        }
    }
}

fn resolve_aws(checker: &mut Checker<'_>, raw: schema::AwsSection) -> AwsSettings {
    if let Some(url) = &raw.endpoint_url {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            checker.problem(
                KeyPath::root().key("aws").key("endpoint_url"),
                format!("`{url}` is not an http:// or https:// URL"),
            );
        }
    }
    let path = KeyPath::root().key("aws");
    let role = match raw.role_arn {
        Some(arn) => {
            if !is_role_arn(&arn) {
                checker.problem(
                    path.key("role_arn"),
                    format!("`{arn}` is not a role ARN like `arn:aws:iam::123456789012:role/image-builder`"),
                );
            }
            if let Some(id) = &raw.external_id {
                if id.len() < 2 || id.len() > 1224 {
                    checker.problem(path.key("external_id"), "must be 2 to 1224 characters");
                }
            }
            if let Some(name) = &raw.session_name {
                let valid = (2..=64).contains(&name.len())
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || "_+=,.@-".contains(c));
                if !valid {
                    checker.problem(
                        path.key("session_name"),
                        format!("`{name}` is not a role session name: 2 to 64 of letters, digits and `_+=,.@-`"),
                    );
                }
            }
            let duration = match raw.duration.as_deref() {
                Some(text) => match checker.duration(path.key("duration"), text) {
                    Some(duration) if !(900..=43_200).contains(&duration.as_secs()) => {
                        checker.problem(path.key("duration"), "a role session lasts from `15m` to `12h`");
                        DEFAULT_ROLE_DURATION
                    }
                    Some(duration) => duration,
                    None => DEFAULT_ROLE_DURATION,
                },
                None => DEFAULT_ROLE_DURATION,
            };
            Some(AssumeRole { arn, external_id: raw.external_id, session_name: raw.session_name, duration })
        }
        None => {
            for (key, set) in [
                ("external_id", raw.external_id.is_some()),
                ("session_name", raw.session_name.is_some()),
                ("duration", raw.duration.is_some()),
            ] {
                if set {
                    checker.problem(path.key(key), "goes with `role_arn`");
                }
            }
            None
        }
    };
    AwsSettings { profile: raw.profile, endpoint_url: raw.endpoint_url, role, distribution_roles: BTreeMap::new() }
}

fn resolve_ssh(checker: &mut Checker<'_>, raw: schema::SshSection) -> SshSettings {
    let path = KeyPath::root().key("ssh");
    if raw.port == Some(0) {
        checker.problem(path.key("port"), "must be a port from 1 to 65535");
    }
    let timeout = raw
        .timeout
        .as_deref()
        .and_then(|text| checker.duration(path.key("timeout"), text))
        .unwrap_or(DEFAULT_SSH_TIMEOUT);
    let source_cidrs = raw.source_cidrs.map(|cidrs| {
        if cidrs.is_empty() {
            checker.problem(
                path.key("source_cidrs"),
                "must list at least one CIDR; leave it out to detect this machine's address",
            );
        }
        cidrs
            .iter()
            .enumerate()
            .filter_map(|(index, text)| match text.parse::<IpNet>() {
                Ok(net) => Some(net),
                Err(_) => {
                    let hint = if text.parse::<std::net::IpAddr>().is_ok() {
                        format!("; did you mean `{text}/32`?")
                    } else {
                        String::new()
                    };
                    checker.problem(
                        path.key("source_cidrs").index(index),
                        format!("`{text}` is not a CIDR block like `198.51.100.7/32`{hint}"),
                    );
                    None
                }
            })
            .collect()
    });
    let ip_detect_url = raw.ip_detect_url.unwrap_or_else(|| DEFAULT_IP_DETECT_URL.to_string());
    if !ip_detect_url.starts_with("http://") {
        checker.problem(
            path.key("ip_detect_url"),
            "must be a plain http:// URL that answers with this machine's public address",
        );
    }
    let interface =
        raw.interface.as_deref().map(|text| ssh_interface(checker, path.key("interface"), text)).unwrap_or_default();
    let bastion = raw.bastion.map(|bastion| {
        let at = path.key("bastion");
        if bastion.host.trim().is_empty() {
            checker.problem(at.key("host"), "must not be empty");
        }
        if bastion.user.trim().is_empty() {
            checker.problem(at.key("user"), "must not be empty");
        }
        if bastion.port == Some(0) {
            checker.problem(at.key("port"), "must be a port from 1 to 65535");
        }
        let private_key_file = checker.local_file(at.key("private_key_file"), &expand_home(&bastion.private_key_file));
        let port = bastion.port.unwrap_or(22);
        let host_key = match (bastion.known_hosts, bastion.host_key) {
            (Some(file), None) => {
                BastionHostKey::KnownHostsFile(checker.local_file(at.key("known_hosts"), &expand_home(&file)))
            }
            (None, Some(line)) => {
                if let Err(why) = bastion_host_key_line(&line) {
                    checker.problem(at.key("host_key"), why);
                }
                BastionHostKey::Line(line)
            }
            (Some(_), Some(_)) => {
                checker
                    .problem(at.key("host_key"), "set one of `known_hosts` (a file) and `host_key` (a line), not both");
                BastionHostKey::Line(String::new())
            }
            (None, None) => {
                checker.problem(
                    at.clone(),
                    "name the bastion's host key: `known_hosts = \"<file>\"` or `host_key = \"<known_hosts line>\"` \
                     (e.g. from `ssh-keyscan`, checked out of band); it is checked strictly, never learned",
                );
                BastionHostKey::Line(String::new())
            }
        };
        Bastion { host: bastion.host, port, user: bastion.user, private_key_file, host_key }
    });
    let host_key =
        raw.host_key.as_deref().map(|text| host_key_policy(checker, path.key("host_key"), text)).unwrap_or_default();
    let host_key_wait = raw
        .host_key_wait
        .as_deref()
        .and_then(|text| checker.duration(path.key("host_key_wait"), text))
        .unwrap_or(DEFAULT_HOST_KEY_WAIT);
    SshSettings {
        host: raw.host,
        port: raw.port.unwrap_or(22),
        timeout,
        source_cidrs,
        ip_detect_url,
        interface,
        bastion,
        clear_authorized_keys: raw.clear_authorized_keys.unwrap_or(true),
        host_key,
        host_key_wait,
        session_manager_plugin: match raw.session_manager_plugin {
            // A name alone is looked up on `PATH` when the preflight runs it; a path is made absolute.
            Some(plugin) if plugin.contains('/') => checker.base_dir.join(expand_home(&plugin)),
            Some(plugin) if plugin.trim().is_empty() => {
                checker.problem(path.key("session_manager_plugin"), "must not be empty");
                PathBuf::from(SESSION_MANAGER_PLUGIN)
            }
            Some(plugin) => PathBuf::from(plugin),
            None => PathBuf::from(SESSION_MANAGER_PLUGIN),
        },
        source_security_groups: per_region_ids(
            checker,
            path.key("source_security_groups"),
            raw.source_security_groups,
            ResourceIdKind::SecurityGroup,
        ),
        source_prefix_lists: per_region_ids(
            checker,
            path.key("source_prefix_lists"),
            raw.source_prefix_lists,
            ResourceIdKind::PrefixList,
        ),
    }
}

/// `[sim]`'s network: the runner's and the bastion's addresses, the runner's groups, the prefix lists.
fn resolve_sim_runner(checker: &mut Checker<'_>, path: &KeyPath, raw: &schema::SimSection, sim: &mut SimSettings) {
    let mut address = |key: &str, text: &Option<String>| {
        let text = text.as_deref()?;
        match text.parse::<std::net::IpAddr>() {
            Ok(address) => Some(address),
            Err(_) => {
                checker.problem(path.key(key), format!("`{text}` is not an IP address like `10.9.0.5`"));
                None
            }
        }
    };
    sim.runner_address = address("runner_address", &raw.runner_address);
    sim.bastion_address = address("bastion_address", &raw.bastion_address);
    for (index, id) in raw.runner_security_groups.iter().flatten().enumerate() {
        if let Some(problem) = ResourceIdKind::SecurityGroup.problem(id) {
            checker.problem(path.key("runner_security_groups").index(index), problem);
        }
    }
    sim.runner_security_groups = raw.runner_security_groups.clone().unwrap_or_default();
    for (id, cidrs) in raw.prefix_lists.iter().flatten() {
        let at = path.key("prefix_lists").key(id);
        if let Some(problem) = ResourceIdKind::PrefixList.problem(id) {
            checker.problem(at.clone(), problem);
        }
        let mut parsed = Vec::new();
        for (index, text) in cidrs.iter().enumerate() {
            match text.parse::<IpNet>() {
                Ok(net) => parsed.push(net),
                Err(_) => checker.problem(at.index(index), format!("`{text}` is not a CIDR block like `10.9.0.0/16`")),
            }
        }
        sim.prefix_lists.insert(id.clone(), parsed);
    }
}

/// The kinds of EC2 id a fleet file may name for `[ssh]`'s sources and `[sim]`'s runner.
#[derive(Clone, Copy)]
enum ResourceIdKind {
    SecurityGroup,
    PrefixList,
}

impl ResourceIdKind {
    fn prefix(self) -> &'static str {
        match self {
            ResourceIdKind::SecurityGroup => "sg-",
            ResourceIdKind::PrefixList => "pl-",
        }
    }

    fn what(self) -> &'static str {
        match self {
            ResourceIdKind::SecurityGroup => "a security group id",
            ResourceIdKind::PrefixList => "a managed prefix list id",
        }
    }

    /// Why `id` is not an id of this kind (`sg-` or `pl-` and 8 or 17 hex digits), if so.
    fn problem(self, id: &str) -> Option<String> {
        let hex = id.strip_prefix(self.prefix());
        if hex.is_some_and(|hex| matches!(hex.len(), 8 | 17) && hex.chars().all(|c| c.is_ascii_hexdigit())) {
            return None;
        }
        Some(format!("`{id}` is not {} (`{}` and 8 or 17 hex digits)", self.what(), self.prefix()))
    }
}

/// Ids of one kind listed per region (`{ "us-west-2" = ["sg-…"] }`): each region a region name, each id of
/// its kind, each list not empty.
fn per_region_ids(
    checker: &mut Checker<'_>,
    path: KeyPath,
    raw: Option<BTreeMap<String, Vec<String>>>,
    kind: ResourceIdKind,
) -> BTreeMap<Region, Vec<String>> {
    let mut resolved = BTreeMap::new();
    for (region, ids) in raw.unwrap_or_default() {
        let at = path.key(&region);
        let region = checker.region(at.clone(), &region);
        if ids.is_empty() {
            checker.problem(at.clone(), format!("must list at least one id; leave {region} out instead"));
        }
        for (index, id) in ids.iter().enumerate() {
            if let Some(problem) = kind.problem(id) {
                checker.problem(at.index(index), problem);
            }
        }
        resolved.insert(region, ids);
    }
    resolved
}

/// `[ssh] interface` or a flavor's `interface`: an address of the instance, or `session_manager`.
fn ssh_interface(checker: &mut Checker<'_>, path: KeyPath, text: &str) -> SshInterface {
    interface_named(text).unwrap_or_else(|| {
        checker.problem(
            path,
            format!("`{text}` is not one of `public_ip`, `private_ip`, `public_dns`, `private_dns`, `session_manager`"),
        );
        SshInterface::Default
    })
}

fn interface_named(text: &str) -> Option<SshInterface> {
    Some(match text {
        "public_ip" => SshInterface::PublicIp,
        "private_ip" => SshInterface::PrivateIp,
        "public_dns" => SshInterface::PublicDns,
        "private_dns" => SshInterface::PrivateDns,
        "session_manager" => SshInterface::SessionManager,
        _ => return None,
    })
}

/// Every value that reaches an ssh argument or the bastion's ssh config file, as written: hosts, users, paths
/// ([`ssh_fields`](super::ssh_fields) says what is refused and why).
fn check_ssh_fields(checker: &mut Checker<'_>, raw: &FleetFile) {
    let ssh = KeyPath::root().key("ssh");
    let mut refuse = |path: KeyPath, problem: Option<String>| {
        if let Some(message) = problem {
            checker.problem(path, message);
        }
    };
    if let Some(host) = &raw.ssh.host {
        refuse(ssh.key("host"), ssh_fields::host_problem(host));
    }
    if let Some(bastion) = &raw.ssh.bastion {
        let at = ssh.key("bastion");
        refuse(at.key("host"), ssh_fields::host_problem(&bastion.host).filter(|_| !bastion.host.trim().is_empty()));
        refuse(at.key("user"), ssh_fields::user_problem(&bastion.user).filter(|_| !bastion.user.trim().is_empty()));
        refuse(at.key("private_key_file"), ssh_fields::path_problem(Path::new(&bastion.private_key_file)));
        if let Some(known_hosts) = &bastion.known_hosts {
            refuse(at.key("known_hosts"), ssh_fields::path_problem(Path::new(known_hosts)));
        }
    }
    let users = std::iter::once((KeyPath::root().key("defaults"), &raw.defaults.ssh_username)).chain(
        raw.flavors
            .iter()
            .enumerate()
            .map(|(index, flavor)| (KeyPath::root().key("flavor").index(index), &flavor.ssh_username)),
    );
    for (path, user) in users {
        if let Some(user) = user.as_deref().filter(|user| !user.trim().is_empty()) {
            refuse(path.key("ssh_username"), ssh_fields::user_problem(user));
        }
    }
}

/// `"console"` or `"accept"`.
fn host_key_policy(checker: &mut Checker<'_>, path: KeyPath, text: &str) -> HostKeyPolicy {
    match text {
        "console" => HostKeyPolicy::Console,
        "accept" => HostKeyPolicy::Accept,
        other => {
            checker.problem(
                path,
                format!("`{other}` is not one of `console` (read from the instance's console, then checked) and `accept` (any key)"),
            );
            HostKeyPolicy::Console
        }
    }
}

/// A bastion's `host_key`: one known_hosts line (`hosts keytype base64 [comment]`) or a key alone (`keytype
/// base64 [comment]`); no marker (`@cert-authority`, `@revoked`), no hashed host, one line, a known key type.
pub fn bastion_host_key_line(line: &str) -> Result<(), String> {
    use crate::util::host_keys::{HostKey, KEY_TYPES};
    if line.chars().any(|c| c.is_control()) {
        return Err("must be one line, without control characters".into());
    }
    let fields: Vec<&str> = line.split_ascii_whitespace().collect();
    let key = match fields.as_slice() {
        [first, ..] if KEY_TYPES.contains(first) => &fields[..],
        [hosts, rest @ ..] if !hosts.starts_with('@') && !hosts.starts_with('|') && !rest.is_empty() => rest,
        _ => {
            return Err(
                "must be a known_hosts line (`bastion.example.com ssh-ed25519 AAAA…`) or a key (`ssh-ed25519 AAAA…`), without markers or hashed names".into(),
            )
        }
    };
    HostKey::parse(&key.join(" ")).map(|_| ()).map_err(|error| format!("not a host key: {error}"))
}

/// `~/x` as `$HOME/x`; other paths as written (relative ones are relative to the fleet file).
fn expand_home(path: &str) -> String {
    match (path.strip_prefix("~/"), std::env::var("HOME")) {
        (Some(rest), Ok(home)) => format!("{home}/{rest}"),
        _ => path.to_string(),
    }
}

fn resolve_limits(checker: &mut Checker<'_>, raw: schema::LimitsSection) -> Limits {
    let path = KeyPath::root().key("limits");
    let defaults = Limits::default();
    let mut bucket = |name: &str, raw: Option<schema::BucketSection>, default: Bucket| match raw {
        Some(raw) => {
            if raw.burst == 0 {
                checker.problem(path.key("api").key(name).key("burst"), "must be at least 1");
            }
            if !(raw.per_second > 0.0 && raw.per_second.is_finite()) {
                checker.problem(path.key("api").key(name).key("per_second"), "must be a positive number");
            }
            Bucket {
                burst: raw.burst.max(1),
                per_second: if raw.per_second > 0.0 { raw.per_second } else { default.per_second },
            }
        }
        None => default,
    };
    let api = ApiRates {
        non_mutating: bucket("non_mutating", raw.api.non_mutating, defaults.api.non_mutating),
        mutating: bucket("mutating", raw.api.mutating, defaults.api.mutating),
        run_instances: bucket("run_instances", raw.api.run_instances, defaults.api.run_instances),
        copy_image: bucket("copy_image", raw.api.copy_image, defaults.api.copy_image),
        create_tags: bucket("create_tags", raw.api.create_tags, defaults.api.create_tags),
    };
    Limits {
        max_parallel_builds: checker.positive(
            path.key("max_parallel_builds"),
            raw.max_parallel_builds,
            defaults.max_parallel_builds,
        ),
        max_parallel_copies_per_region: checker.positive(
            path.key("max_parallel_copies_per_region"),
            raw.max_parallel_copies_per_region,
            defaults.max_parallel_copies_per_region,
        ),
        image_timeout: raw
            .image_timeout
            .as_deref()
            .and_then(|text| checker.duration(path.key("image_timeout"), text))
            .unwrap_or(defaults.image_timeout),
        capacity_patience: raw
            .capacity_patience
            .as_deref()
            .and_then(|text| checker.duration_or_zero(path.key("capacity_patience"), text))
            .unwrap_or(defaults.capacity_patience),
        api,
    }
}

fn resolve_sim(checker: &mut Checker<'_>, raw: schema::SimSection) -> SimSettings {
    let path = KeyPath::root().key("sim");
    let defaults = SimSettings::default();
    let mut duration = |key: &str, raw: &Option<String>, default: Duration| {
        raw.as_deref().and_then(|text| checker.duration_or_zero(path.key(key), text)).unwrap_or(default)
    };
    let mut sim = SimSettings {
        seed: raw.seed.unwrap_or(defaults.seed),
        jitter: raw.jitter.unwrap_or(defaults.jitter),
        boot: duration("boot", &raw.boot, defaults.boot),
        ssh_ready: duration("ssh_ready", &raw.ssh_ready, defaults.ssh_ready),
        provision: duration("provision", &raw.provision, defaults.provision),
        stop: duration("stop", &raw.stop, defaults.stop),
        terminate: duration("terminate", &raw.terminate, defaults.terminate),
        create_image: duration("create_image", &raw.create_image, defaults.create_image),
        copy_image: duration("copy_image", &raw.copy_image, defaults.copy_image),
        api_latency: duration("api_latency", &raw.api_latency, defaults.api_latency),
        consistency_lag: duration("consistency_lag", &raw.consistency_lag, defaults.consistency_lag),
        copy_concurrency: defaults.copy_concurrency,
        vcpu_limit: raw.vcpu_limit,
        instance_vcpus: defaults.instance_vcpus,
        background_load: raw.background_load.unwrap_or(defaults.background_load),
        foreign_copies: raw.foreign_copies.unwrap_or(defaults.foreign_copies),
        default_vpc: raw.default_vpc.unwrap_or(defaults.default_vpc),
        test: duration("test", &raw.test, defaults.test),
        console_keys: duration("console_keys", &raw.console_keys, defaults.console_keys),
        agent_online: duration("agent_online", &raw.agent_online, defaults.agent_online),
        faults: Vec::new(),
        snapshot_in_use: duration("snapshot_in_use", &raw.snapshot_in_use, defaults.snapshot_in_use),
        require_tags_on_create: raw.require_tags_on_create.unwrap_or(defaults.require_tags_on_create),
        runner_address: None,
        bastion_address: None,
        runner_security_groups: Vec::new(),
        prefix_lists: BTreeMap::new(),
        launch_templates: Vec::new(),
        parameters: Vec::new(),
        block_public_access: BlockPublicAccess::default(),
        credentials: None,
        base_identity: defaults.base_identity,
        regions_not_enabled: Default::default(),
        accounts: Default::default(),
        account_faults: Default::default(),
        organizational_units: Default::default(),
        organizations_fault: None,
        ebs_default_key: raw.ebs_default_key.clone(),
        grant_lag: duration("grant_lag", &raw.grant_lag, defaults.grant_lag),
        spot: SimSpot::default(),
        prices: Prices::default(),
        state: None,
    };
    if let Some(state) = raw.state.as_deref() {
        if state.trim().is_empty() {
            checker.problem(path.key("state"), "must name a file (the simulated account kept between runs)");
        } else {
            sim.state = Some(checker.base_dir.join(state));
        }
    }
    sim.spot = spot::resolve_sim_spot(checker, raw.spot.as_ref());
    sim.prices = spot::resolve_prices(checker, path.key("prices"), &raw.prices);
    sim_accounts::resolve_sim_accounts(checker, &path, &raw, &mut sim);
    resolve_sim_runner(checker, &path, &raw, &mut sim);
    resolve_sim_publish_targets(checker, &path, &raw.launch_templates, &raw.parameters, &mut sim);
    resolve_sim_account(checker, &path, &raw, &mut sim);
    if let Some(table) = raw.block_public_access {
        for (key, blocks) in table {
            if key == "default" {
                sim.block_public_access.default = blocks;
            } else {
                let region = checker.region(path.key("block_public_access").key(&key), &key);
                sim.block_public_access.regions.insert(region, blocks);
            }
        }
    }
    if let Some(vcpus) = raw.instance_vcpus {
        sim.instance_vcpus = checker.positive(path.key("instance_vcpus"), Some(vcpus as usize), 2) as u32;
    }
    if !(0.0..1.0).contains(&sim.background_load) {
        checker.problem(path.key("background_load"), "must be a fraction from 0.0 up to (not including) 1.0");
        sim.background_load = 0.0;
    }
    sim.copy_concurrency =
        checker.positive(path.key("copy_concurrency"), raw.copy_concurrency, defaults.copy_concurrency);
    if !(0.0..1.0).contains(&sim.jitter) {
        checker.problem(path.key("jitter"), "must be a fraction from 0.0 up to (not including) 1.0");
        sim.jitter = 0.0;
    }
    for (index, fault) in raw.faults.into_iter().enumerate() {
        let at = path.key("faults").index(index);
        if fault.action == "test" || fault.action == "provision" {
            // Not an EC2 call: the image tests of a build (`[[flavor]] tests`), or its first provisioner, fail.
            let (kind, effect) = match fault.action.as_str() {
                "test" => ("test", FaultEffect::TestFails),
                _ => ("provision", FaultEffect::ProvisionFails),
            };
            if fault.error.as_deref() != Some("failed") || fault.image_state.is_some() || fault.instance_state.is_some()
            {
                let what =
                    if kind == "test" { "the image's tests fail" } else { "the build's first provisioner fails" };
                checker.problem(at.key("error"), format!("a `{kind}` fault is `error = \"failed\"`: {what}"));
                continue;
            }
            let region = fault.region.as_deref().map(|name| checker.region(at.key("region"), name));
            match (fault.nth, fault.probability) {
                (Some(nth), None) if nth >= 1 => sim.faults.push(SimFault {
                    action: None,
                    region,
                    effect,
                    when: FaultTrigger::Nth(nth),
                    answer_lost: false,
                }),
                (None, Some(p)) if p > 0.0 && p <= 1.0 => sim.faults.push(SimFault {
                    action: None,
                    region,
                    effect,
                    when: FaultTrigger::Probability(p),
                    answer_lost: false,
                }),
                _ => checker.problem(at.clone(), "set exactly one of `nth` (at least 1) and `probability` (0 to 1)"),
            }
            continue;
        }
        let action = match fault.action.as_str() {
            "*" => None,
            name => match super::api::Action::from_name(name) {
                Some(action) => Some(action),
                None => {
                    let names: Vec<String> = super::api::Action::ALL.iter().map(ToString::to_string).collect();
                    checker.problem(
                        at.key("action"),
                        format!(
                            "`{name}` is not an EC2 action fleetbake calls; use `*`, `test` or one of {}",
                            names.join(", ")
                        ),
                    );
                    continue;
                }
            },
        };
        let Some(effect) = fault_effect(checker, &at, action, &fault) else {
            continue;
        };
        let region = fault.region.as_deref().map(|name| checker.region(at.key("region"), name));
        let when = match (fault.nth, fault.probability) {
            (Some(nth), None) if nth >= 1 => FaultTrigger::Nth(nth),
            (Some(_), None) => {
                checker.problem(at.key("nth"), "must be at least 1 (the first matching call is 1)");
                continue;
            }
            (None, Some(probability)) if probability > 0.0 && probability <= 1.0 => {
                FaultTrigger::Probability(probability)
            }
            (None, Some(_)) => {
                checker.problem(at.key("probability"), "must be a number above 0 and at most 1");
                continue;
            }
            _ => {
                checker.problem(at, "set exactly one of `nth` and `probability`");
                continue;
            }
        };
        let answer_lost = fault.answer_lost.unwrap_or(false);
        if answer_lost && !matches!(effect, FaultEffect::Error(_)) {
            checker.problem(at.key("answer_lost"), "goes with `error` only: the call itself succeeds");
        }
        sim.faults.push(SimFault { action, region, effect, when, answer_lost });
    }
    sim
}

/// `[sim] launch_templates` and `[sim] parameters`: names as EC2 and SSM take them, data types SSM has.
fn resolve_sim_publish_targets(
    checker: &mut Checker<'_>,
    path: &KeyPath,
    launch_templates: &[String],
    parameters: &[schema::ParameterSection],
    sim: &mut SimSettings,
) {
    // EC2: a launch template's name is 3 to 128 characters of letters, digits and `()./_-`.
    let template_name = |name: &str| {
        (3..=128).contains(&name.len()) && name.chars().all(|c| c.is_ascii_alphanumeric() || "()./_-".contains(c))
    };
    for (index, name) in launch_templates.iter().enumerate() {
        if template_name(name) {
            sim.launch_templates.push(name.clone());
        } else {
            checker.problem(
                path.key("launch_templates").index(index),
                format!("`{name}` is not a launch template name (3 to 128 letters, digits and `()./_-`)"),
            );
        }
    }
    // SSM: a parameter's name is letters, digits and `_.-/`, at most 1011 characters.
    let parameter_name = |name: &str| {
        !name.is_empty() && name.len() <= 1011 && name.chars().all(|c| c.is_ascii_alphanumeric() || "_.-/".contains(c))
    };
    for (index, parameter) in parameters.iter().enumerate() {
        let at = path.key("parameters").index(index);
        if !parameter_name(&parameter.name) {
            checker.problem(
                at.key("name"),
                format!("`{}` is not an SSM parameter name (letters, digits and `_.-/`)", parameter.name),
            );
            continue;
        }
        if !["text", "aws:ec2:image", "aws:ssm:integration"].contains(&parameter.data_type.as_str()) {
            checker.problem(
                at.key("data_type"),
                format!(
                    "`{}` is not one of SSM's data types `text`, `aws:ec2:image` and `aws:ssm:integration`",
                    parameter.data_type
                ),
            );
            continue;
        }
        sim.parameters.push(ExistingParameter { name: parameter.name.clone(), data_type: parameter.data_type.clone() });
    }
}

/// `[sim] credentials`, `base_identity` and `regions_not_enabled`: the simulated account's credentials and
/// regions.
fn resolve_sim_account(checker: &mut Checker<'_>, path: &KeyPath, raw: &schema::SimSection, sim: &mut SimSettings) {
    if let Some(credentials) = &raw.credentials {
        let at = path.key("credentials");
        if let Some(expires_after) = checker.duration(at.key("expires_after"), &credentials.expires_after) {
            sim.credentials = Some(crate::config::SimCredentials {
                expires_after,
                refreshable: credentials.refreshable.unwrap_or(false),
            });
        }
    }
    sim.base_identity = match raw.base_identity.as_deref() {
        None | Some("user") => crate::config::BaseIdentity::User,
        Some("role") => crate::config::BaseIdentity::Role,
        Some(other) => {
            checker.problem(path.key("base_identity"), format!("`{other}` is not `\"user\"` or `\"role\"`"));
            crate::config::BaseIdentity::User
        }
    };
    for (index, name) in raw.regions_not_enabled.iter().flatten().enumerate() {
        let region = checker.region(path.key("regions_not_enabled").index(index), name);
        sim.regions_not_enabled.insert(region);
    }
}

/// For a fault of the instance a RunInstances launches (`key`: `console` or `agent`): checks its action is
/// RunInstances, and gives the flavor it is limited to, if any (checked as a name).
fn launch_fault_flavor(
    checker: &mut Checker<'_>,
    at: &KeyPath,
    action: Option<super::api::Action>,
    fault: &schema::FaultSection,
    key: &str,
) -> Option<FlavorName> {
    if action != Some(super::api::Action::RunInstances) {
        checker.problem(at.key("action"), format!("`{key}` goes with `RunInstances`: the instance it launches"));
    }
    fault.flavor.as_deref().map(|name| {
        checker.name(at.key("flavor"), "flavor", name);
        FlavorName::new(name)
    })
}

/// What a `[sim] faults` entry does: exactly one of `error`, `image_state = "failed"` (CreateImage, CopyImage)
/// and `instance_state = "terminated"` (RunInstances), `reason` only with the last two.
fn fault_effect(
    checker: &mut Checker<'_>,
    at: &KeyPath,
    action: Option<super::api::Action>,
    fault: &schema::FaultSection,
) -> Option<FaultEffect> {
    use super::api::Action;
    let reason = |default: &str| fault.reason.clone().unwrap_or_else(|| default.to_string());
    if fault.flavor.is_some() && fault.console.is_none() && fault.agent.is_none() {
        checker.problem(at.key("flavor"), "goes with `console` or `agent` only");
    }
    if let Some(validation) = &fault.validation {
        let others = fault.error.is_some()
            || fault.image_state.is_some()
            || fault.instance_state.is_some()
            || fault.console.is_some()
            || fault.agent.is_some();
        if others {
            checker.problem(
                at.clone(),
                "set exactly one of `error`, `image_state`, `instance_state`, `console`, `agent` and `validation`",
            );
            return None;
        }
        if action != Some(Action::PutParameter) {
            checker.problem(at.key("action"), "`validation` goes with `PutParameter`: SSM's check of the image id");
        }
        if validation != "fails" {
            checker.problem(
                at.key("validation"),
                format!(
                    "`{validation}` is not `fails` (SSM's validation of the image id fails: the version never appears)"
                ),
            );
            return None;
        }
        return Some(FaultEffect::ValidationFails);
    }
    let other_effects = fault.error.is_some() || fault.image_state.is_some() || fault.instance_state.is_some();
    if let Some(agent) = &fault.agent {
        if other_effects || fault.console.is_some() {
            checker.problem(
                at.clone(),
                "set exactly one of `error`, `image_state`, `instance_state`, `console` and `agent`",
            );
            return None;
        }
        let flavor = launch_fault_flavor(checker, at, action, fault, "agent");
        return match agent.as_str() {
            "never" => Some(FaultEffect::Agent { fault: AgentFault::Never, flavor }),
            other => {
                checker.problem(
                    at.key("agent"),
                    format!("`{other}` is not `never` (the instance's SSM agent never comes online)"),
                );
                None
            }
        };
    }
    if let Some(console) = &fault.console {
        if other_effects {
            checker.problem(at.clone(), "set exactly one of `error`, `image_state`, `instance_state` and `console`");
            return None;
        }
        let flavor = launch_fault_flavor(checker, at, action, fault, "console");
        return match console.as_str() {
            "no-keys" => Some(FaultEffect::Console { fault: ConsoleFault::NoKeys, flavor }),
            "other-key" => Some(FaultEffect::Console { fault: ConsoleFault::OtherKey, flavor }),
            other => {
                checker.problem(
                    at.key("console"),
                    format!("`{other}` is not one of `no-keys` (no host keys printed) and `other-key` (someone else answers)"),
                );
                None
            }
        };
    }
    let effect = match (&fault.error, &fault.image_state, &fault.instance_state) {
        (Some(error), None, None) => {
            if error.is_empty() || !error.chars().all(|c| c.is_ascii_alphanumeric() || c == '.') {
                checker.problem(at.key("error"), "must be an AWS error code like `InternalError`");
            }
            if fault.reason.is_some() {
                checker.problem(at.key("reason"), "goes with `image_state` or `instance_state`, not `error`");
            }
            FaultEffect::Error(error.clone())
        }
        (None, Some(state), None) => {
            if state != "failed" {
                checker.problem(
                    at.key("image_state"),
                    format!("`{state}`: the only state an image can be made to end in is `failed`"),
                );
            }
            if !matches!(action, Some(Action::CreateImage | Action::CopyImage)) {
                checker.problem(at.key("action"), "`image_state` goes with `CreateImage` or `CopyImage`");
            }
            FaultEffect::ImageFails { reason: reason("Client.InternalError: the image could not be created") }
        }
        (None, None, Some(state)) => {
            if state != "terminated" {
                checker.problem(
                    at.key("instance_state"),
                    format!("`{state}`: the only state a launch can be made to end in is `terminated`"),
                );
            }
            if action != Some(Action::RunInstances) {
                checker.problem(at.key("action"), "`instance_state` goes with `RunInstances`");
            }
            FaultEffect::InstanceTerminates {
                reason: reason("Server.InsufficientInstanceCapacity: Insufficient capacity."),
            }
        }
        _ => {
            checker.problem(at.clone(), "set exactly one of `error`, `image_state` and `instance_state`");
            return None;
        }
    };
    Some(effect)
}

impl Fleet {
    /// The flavor × build region pairs the run builds: what the file's `[matrix]` selects, then `--only` /
    /// `--except`; in flavor-file order then region order.
    pub fn selected_pairs(&self) -> Vec<(&Flavor, &Region)> {
        let mut pairs = self.matrix_pairs();
        pairs.retain(|(flavor, region)| self.selection.admits(&flavor.name, region));
        pairs
    }

    /// The pairs the file's `[matrix]` selects.
    pub fn matrix_pairs(&self) -> Vec<(&Flavor, &Region)> {
        let mut pairs = Vec::new();
        for flavor in &self.flavors {
            let selected = self.matrix.flavors.as_ref().is_none_or(|names| names.contains(&flavor.name));
            if !selected {
                continue;
            }
            for region in self.regions.keys() {
                if !self.matrix.exclude.iter().any(|exclusion| exclusion.matches(&flavor.name, region)) {
                    pairs.push((flavor, region));
                }
            }
        }
        pairs
    }

    /// Narrows the run to `selection`. Every pattern must match a build of the matrix, and something must be
    /// left: otherwise the problems, one per pattern (a typo must not make a run that builds nothing, or
    /// everything).
    pub fn select(&mut self, selection: Selection) -> Result<(), Vec<String>> {
        let pairs = self.matrix_pairs();
        let mut problems = Vec::new();
        let options = [("--only", &selection.only), ("--except", &selection.except)];
        for (option, patterns) in options {
            for pattern in patterns {
                if !pairs.iter().any(|(flavor, region)| pattern.matches(&flavor.name, region)) {
                    let known: Vec<String> = pairs.iter().map(|(f, r)| format!("{}/{r}", f.name)).collect();
                    problems.push(format!(
                        "{option} `{pattern}` matches no build of `{}` (its builds: {})",
                        self.file.display(),
                        known.join(", ")
                    ));
                }
            }
        }
        if problems.is_empty() && !pairs.iter().any(|(flavor, region)| selection.admits(&flavor.name, region)) {
            problems.push(format!("`{selection}` leaves no build of `{}` to make", self.file.display()));
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        self.selection = selection;
        Ok(())
    }

    /// The flavor of this name.
    pub fn flavor(&self, name: &FlavorName) -> Option<&Flavor> {
        self.flavors.iter().find(|flavor| &flavor.name == name)
    }

    /// The KMS key `[encryption]` names for images in `region`, if any.
    pub fn kms_key(&self, region: &Region) -> Option<&str> {
        self.encryption.as_ref().and_then(|encryption| encryption.key_for(region))
    }
}

#[cfg(test)]
mod tests {
    use super::bastion_host_key_line;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH6rKfOY3oyLa53Kw+cWZiHRIdFUJ9F5boORGMkHruzt";

    #[test]
    fn a_bastion_host_key_is_a_known_hosts_line_or_a_key_alone() {
        assert_eq!(bastion_host_key_line(KEY), Ok(()));
        assert_eq!(bastion_host_key_line(&format!("bastion.example.com {KEY} ops@laptop")), Ok(()));
        assert_eq!(bastion_host_key_line(&format!("[bastion.example.com]:2200,10.0.0.4 {KEY}")), Ok(()));
        for refused in [
            format!("@cert-authority *.example.com {KEY}"),
            format!("|1|c2FsdA==|aGFzaA== {KEY}"),
            format!("bastion.example.com {KEY}\nProxyCommand evil"),
            "bastion.example.com ssh-dss AAAAB3NzaC1kc3M=".to_string(),
            "bastion.example.com".to_string(),
            String::new(),
        ] {
            assert!(bastion_host_key_line(&refused).is_err(), "{refused:?}");
        }
    }
}
