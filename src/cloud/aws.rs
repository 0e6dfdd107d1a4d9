//! The real adapter: [`RegionCloud`] over aws-sdk-ec2, one client per region, every call through the limiter.
//!
//! Credentials come from aws-config's standard chain, whose providers (STS, SSO, IMDS) keep the SDK's own
//! retries: a refresh in hour two that fails once is retried there. The EC2 client's retries are off:
//! throttling and transient errors are retried in one place, [`RegionLimiter::call`], so they are counted and
//! never double-retried.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use aws_config::retry::RetryConfig;
use aws_config::BehaviorVersion;
use aws_sdk_ec2::config::http::HttpResponse;
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::operation::describe_instances::DescribeInstancesOutput;
use aws_sdk_ec2::types::{
    AttributeValue, BlockDeviceMapping, EbsBlockDevice, Filter, HttpTokensState, IamInstanceProfileSpecification,
    ImageAttributeName, InstanceInterruptionBehavior, InstanceMarketOptionsRequest, InstanceMetadataEndpointState,
    InstanceMetadataOptionsRequest, InstanceNetworkInterfaceSpecification, InstanceStateName, IpPermission, IpRange,
    Ipv6Range, KeyType, LaunchPermission, LaunchPermissionModifications, LocationType, MarketType, OperationType,
    PermissionGroup, PrefixListId as PrefixListEntry, ResourceType, SnapshotAttributeName, SpotInstanceType,
    SpotMarketOptions, Tag, TagSpecification, UserIdGroupPair, VolumeType,
};
use aws_sdk_ec2::Client;
use dashmap::DashMap;
use ipnet::IpNet;

use super::*;
use crate::cloud::limiter::{ApiLimits, RegionLimiter};
use crate::config::{Account, AwsSettings, Place, SubnetLookup};
use crate::plan::RunId;

/// Where STS calls are counted: they are not EC2's, and not of a region fleetbake builds in.
pub const STS: &str = "sts";

/// How long one request may go unanswered before it is given up as a timeout (transient: retried). Without
/// it a connection that took the request and never answers would hold its job, and the run, forever.
pub const ATTEMPT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// EC2 takes at most 200 values in one filter.
const FILTER_VALUES_PER_CALL: usize = 200;

/// Sends one request built from the region's client through the limiter, mapping the SDK's error.
/// `ec2_call!(self, Action::X, |client| client.x().field(..))` evaluates to `CloudResult<XOutput>`.
macro_rules! ec2_call {
    ($region:ident, $action:expr, |$client:ident| $request:expr) => {{
        let action = $action;
        $region
            .limiter
            .call(action, || {
                let $client = &$region.client;
                let request = $request;
                async move { request.send().await.map_err(|error| $region.error(action, error)) }
            })
            .await
    }};
}

/// EC2 in every region, through aws-sdk-ec2.
pub struct AwsCloud {
    sdk: aws_config::SdkConfig,
    /// With `[aws] role_arn`: the chain's own credentials, which the role is assumed with.
    base: Option<aws_config::SdkConfig>,
    limits: Arc<ApiLimits>,
    regions: DashMap<Region, Arc<AwsRegion>>,
    /// `[[distribution]]`: each destination account's role, and the SDK config acting as it (made on first use).
    distribution_roles: BTreeMap<String, String>,
    run_id: RunId,
    accounts: DashMap<Place, Arc<AwsRegion>>,
}

impl AwsCloud {
    /// Loads the standard credential chain once; `[aws] profile` and `endpoint_url` (or `AWS_ENDPOINT_URL`) apply.
    ///
    /// With `[aws] role_arn`, every client acts as that role: STS AssumeRole on top of the chain (session
    /// `fleetbake-<run id>` unless named), renewed by the SDK's identity cache before each session ends, for as
    /// long as the run lasts. STS is asked in the region the environment names, else in `home` (a build
    /// region): EC2's clients name their own.
    pub async fn connect(settings: &AwsSettings, run_id: &RunId, home: &Region, limits: Arc<ApiLimits>) -> Self {
        let home = aws_config::Region::new(home.to_string());
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(aws_config::meta::region::RegionProviderChain::default_provider().or_else(home));
        if let Some(profile) = &settings.profile {
            loader = loader.profile_name(profile);
        }
        if let Some(url) = &settings.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        let mut sdk = loader.load().await;
        let mut base = None;
        if let Some(role) = &settings.role {
            base = Some(sdk.clone());
            let session = role.session_name.clone().unwrap_or_else(|| format!("fleetbake-{run_id}"));
            let mut assume = aws_config::sts::AssumeRoleProvider::builder(&role.arn)
                .configure(&sdk)
                .session_name(session)
                .session_length(role.duration);
            if let Some(external_id) = &role.external_id {
                assume = assume.external_id(external_id);
            }
            let provider = assume.build().await;
            sdk = sdk
                .into_builder()
                .credentials_provider(aws_credential_types::provider::SharedCredentialsProvider::new(provider))
                .build();
        }
        AwsCloud {
            sdk,
            base,
            limits,
            regions: DashMap::new(),
            distribution_roles: settings.distribution_roles.clone(),
            run_id: run_id.clone(),
            accounts: DashMap::new(),
        }
    }
}

#[async_trait]
impl Cloud for AwsCloud {
    /// STS GetCallerIdentity, retried like any call; counted under the pseudo-region `sts`.
    async fn caller_identity(&self) -> CloudResult<Identity> {
        identity(&self.sdk, &self.limits).await
    }

    fn region(&self, region: &Region) -> Arc<dyn RegionCloud> {
        self.regions
            .entry(region.clone())
            .or_insert_with(|| Arc::new(region_clients(&self.sdk, region, self.limits.region(region))))
            .clone()
    }

    /// The provider chain's credentials (the role's, with `[aws] role_arn`), and the base credentials' and
    /// their identity when a role is assumed on top of them.
    async fn credentials(&self) -> CloudResult<CredentialsStatus> {
        let (source, expires_in, temporary) = read_credentials(&self.sdk).await?;
        let base = match &self.base {
            Some(base) => {
                let (base_source, base_expires_in, base_temporary) = read_credentials(base).await?;
                Some(Box::new(BaseCredentials {
                    arn: identity(base, &self.limits).await?.arn,
                    refreshable: CredentialsStatus::is_refreshable(&base_source),
                    source: base_source,
                    expires_in: base_expires_in,
                    temporary: base_temporary,
                }))
            }
            None => None,
        };
        let refreshable = CredentialsStatus::is_refreshable(&source);
        Ok(CredentialsStatus { refreshable, source, expires_in, temporary, base })
    }

    /// Another account's region acts as the role `[[distribution]]` names for it: an `AssumeRoleProvider`
    /// on top of the run's own credentials (renewed before each session ends), session `fleetbake-<run id>`.
    /// An account no table names (a bug) acts as the run itself, and EC2 answers for the own account.
    fn place(&self, place: &Place) -> Arc<dyn RegionCloud> {
        let Account::Id(account) = &place.account else { return self.region(&place.region) };
        if let Some(existing) = self.accounts.get(place) {
            return Arc::clone(existing.value()) as Arc<dyn RegionCloud>;
        }
        let limiter = self.limits.place(place);
        let sdk = match self.distribution_roles.get(account) {
            Some(role) => {
                let provider = DistributionRole {
                    role: role.clone(),
                    session: format!("fleetbake-{}", self.run_id),
                    sdk: self.sdk.clone(),
                    provider: tokio::sync::OnceCell::new(),
                };
                self.sdk
                    .clone()
                    .into_builder()
                    .credentials_provider(aws_credential_types::provider::SharedCredentialsProvider::new(provider))
                    .build()
            }
            // Never the run's own credentials in another account's place: every call there would act on the own
            // account while the run names it another's (gc would deregister the wrong images).
            None => self
                .sdk
                .clone()
                .into_builder()
                .credentials_provider(aws_credential_types::provider::SharedCredentialsProvider::new(NoRole {
                    account: account.clone(),
                }))
                .build(),
        };
        let clients = Arc::new(region_clients(&sdk, &place.region, limiter));
        Arc::clone(self.accounts.entry(place.clone()).or_insert(clients).value()) as Arc<dyn RegionCloud>
    }

    /// Walks the unit's tree breadth first: each unit's accounts (`ListAccountsForParent`), then its child
    /// units (`ListChildren`), every page (`NextToken`) of each, with the run's own credentials. Organizations
    /// is a global service whose endpoint is in us-east-1 (Organizations API Reference, "Endpoints"); its calls
    /// are counted under the pseudo-region `organizations`. An account is kept when ACTIVE (`State`, or the
    /// older `Status` where `State` is absent): one suspended or being closed cannot take a copy.
    async fn organization_unit_accounts(&self, unit: &str) -> CloudResult<Vec<String>> {
        use aws_sdk_organizations::types::{AccountState, AccountStatus, ChildType};
        let region = Region::new(super::ORGANIZATIONS);
        let limiter = self.limits.region(&region);
        let config = aws_sdk_organizations::config::Builder::from(&self.sdk)
            .region(aws_sdk_organizations::config::Region::new("us-east-1"))
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                self.sdk
                    .timeout_config()
                    .map(aws_config::timeout::TimeoutConfig::to_builder)
                    .unwrap_or_default()
                    .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                    .build(),
            )
            .build();
        let client = aws_sdk_organizations::Client::from_conf(config);
        let mut accounts: Vec<String> = Vec::new();
        let mut units = std::collections::VecDeque::from([unit.to_string()]);
        let mut seen = std::collections::BTreeSet::new();
        while let Some(parent) = units.pop_front() {
            if !seen.insert(parent.clone()) {
                continue;
            }
            let mut token: Option<String> = None;
            loop {
                let page = limiter
                    .call(Action::ListAccountsForParent, || async {
                        client
                            .list_accounts_for_parent()
                            .parent_id(&parent)
                            .set_next_token(token.clone())
                            .send()
                            .await
                            .map_err(|error| sdk_error(&region, Action::ListAccountsForParent, error))
                    })
                    .await?;
                for account in page.accounts() {
                    let active = match account.state() {
                        Some(state) => *state == AccountState::Active,
                        #[allow(deprecated)]
                        None => account.status() == Some(&AccountStatus::Active),
                    };
                    if let (true, Some(id)) = (active, account.id()) {
                        if !accounts.iter().any(|known| known == id) {
                            accounts.push(id.to_string());
                        }
                    }
                }
                token = page.next_token().map(str::to_string);
                if token.is_none() {
                    break;
                }
            }
            let mut token: Option<String> = None;
            loop {
                let page = limiter
                    .call(Action::ListChildren, || async {
                        client
                            .list_children()
                            .parent_id(&parent)
                            .child_type(ChildType::OrganizationalUnit)
                            .set_next_token(token.clone())
                            .send()
                            .await
                            .map_err(|error| sdk_error(&region, Action::ListChildren, error))
                    })
                    .await?;
                units.extend(page.children().iter().filter_map(|child| child.id().map(str::to_string)));
                token = page.next_token().map(str::to_string);
                if token.is_none() {
                    break;
                }
            }
        }
        Ok(accounts)
    }
}

/// The role of a destination account, assumed with the run's own credentials on the first call that needs it
/// (building an `AssumeRoleProvider` is async; a region's handle is not).
#[derive(Debug)]
struct DistributionRole {
    role: String,
    session: String,
    sdk: aws_config::SdkConfig,
    provider: tokio::sync::OnceCell<aws_config::sts::AssumeRoleProvider>,
}

impl aws_credential_types::provider::ProvideCredentials for DistributionRole {
    fn provide_credentials<'a>(&'a self) -> aws_credential_types::provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        aws_credential_types::provider::future::ProvideCredentials::new(async move {
            let provider = self
                .provider
                .get_or_init(|| async {
                    let base = self.sdk.credentials_provider().expect("the chain gives a provider");
                    aws_config::sts::AssumeRoleProvider::builder(&self.role)
                        .configure(&self.sdk)
                        .session_name(&self.session)
                        .build_from_provider(base)
                        .await
                })
                .await;
            provider.provide_credentials().await.map_err(|error| match RoleRefused::of(&self.role, &error) {
                Some(refused) => aws_credential_types::provider::error::CredentialsError::provider_error(refused),
                None => error,
            })
        })
    }
}

/// A place of an account no `[[distribution]]` names (a bug if it happens): every call there is refused, as
/// a role STS refused, instead of acting as the run's own account.
#[derive(Debug)]
struct NoRole {
    account: String,
}

impl aws_credential_types::provider::ProvideCredentials for NoRole {
    fn provide_credentials<'a>(&'a self) -> aws_credential_types::provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        let refused = RoleRefused {
            role: format!("(none: no [[distribution]] names account {})", self.account),
            answer: "AccessDenied: fleetbake has no role to act as in this account".into(),
        };
        aws_credential_types::provider::future::ProvideCredentials::ready(Err(
            aws_credential_types::provider::error::CredentialsError::provider_error(refused),
        ))
    }
}

/// STS refused to let the run assume a destination account's role (its trust policy does not name the run's
/// identity, or the role does not exist: `AccessDenied`). Every call in that account fails, and only those:
/// the run's own credentials are fine, so it is not [`ErrorKind::Credentials`] (which would stop the night)
/// but a permanent `AccessDenied` naming the role ([`hints::role_refused`]).
#[derive(Debug)]
struct RoleRefused {
    role: String,
    /// What STS said, as the provider reported it.
    answer: String,
}

impl RoleRefused {
    fn of(role: &str, error: &aws_credential_types::provider::error::CredentialsError) -> Option<RoleRefused> {
        let answer = format!("{}", DisplayErrorContext(error));
        answer.contains("AccessDenied").then(|| RoleRefused { role: role.to_string(), answer })
    }
}

impl std::fmt::Display for RoleRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "not authorized to perform: sts:AssumeRole on resource: {} (STS: {})", self.role, self.answer)
    }
}

impl std::error::Error for RoleRefused {}

/// The refused destination role in a failure's causes, if that is what it is.
fn role_refused<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a RoleRefused> {
    let mut cause = Some(error);
    while let Some(current) = cause {
        if let Some(refused) = current.downcast_ref::<RoleRefused>() {
            return Some(refused);
        }
        cause = current.source();
    }
    None
}

/// A region's EC2, KMS and SSM clients from `sdk` (whose credentials they sign with). Retries off on these
/// clients only: the limiter retries their calls; the credential providers keep theirs. Each attempt has a
/// deadline (the SDK's defaults set none), the rest of the timeouts as loaded.
fn region_clients(sdk: &aws_config::SdkConfig, region: &Region, limiter: Arc<RegionLimiter>) -> AwsRegion {
    let timeouts = sdk
        .timeout_config()
        .map(aws_config::timeout::TimeoutConfig::to_builder)
        .unwrap_or_default()
        .operation_attempt_timeout(ATTEMPT_TIMEOUT)
        .build();
    let config = aws_sdk_ec2::config::Builder::from(sdk)
        .region(aws_sdk_ec2::config::Region::new(region.as_str().to_string()))
        .retry_config(RetryConfig::disabled())
        .timeout_config(timeouts.clone())
        .build();
    let kms = aws_sdk_kms::config::Builder::from(sdk)
        .region(aws_sdk_kms::config::Region::new(region.as_str().to_string()))
        .retry_config(RetryConfig::disabled())
        .timeout_config(timeouts.clone())
        .build();
    let ssm = aws_sdk_ssm::config::Builder::from(sdk)
        .region(aws_sdk_ssm::config::Region::new(region.as_str().to_string()))
        .retry_config(RetryConfig::disabled())
        .timeout_config(timeouts)
        .build();
    AwsRegion {
        region: region.clone(),
        client: Client::from_conf(config),
        kms: aws_sdk_kms::Client::from_conf(kms),
        ssm: aws_sdk_ssm::Client::from_conf(ssm),
        limiter,
    }
}

/// STS GetCallerIdentity with `sdk`'s credentials, retried like any call; counted under the pseudo-region `sts`.
async fn identity(sdk: &aws_config::SdkConfig, limits: &ApiLimits) -> CloudResult<Identity> {
    let sts = aws_sdk_sts::Client::new(sdk);
    let region = Region::new(STS);
    let limiter = limits.region(&region);
    let answer = limiter
        .call(Action::GetCallerIdentity, || async {
            sts.get_caller_identity().send().await.map_err(|error| sdk_error(&region, Action::GetCallerIdentity, error))
        })
        .await?;
    Ok(Identity {
        account: answer.account().unwrap_or_default().to_string(),
        arn: answer.arn().unwrap_or_default().to_string(),
    })
}

/// Asks `sdk`'s provider for credentials: which provider gave them, how long until they end, and whether they
/// are session credentials.
async fn read_credentials(sdk: &aws_config::SdkConfig) -> CloudResult<(String, Option<std::time::Duration>, bool)> {
    use aws_credential_types::provider::ProvideCredentials;
    let refused = |message: String| CloudError {
        action: Action::GetCallerIdentity,
        region: Region::new(STS),
        kind: ErrorKind::Credentials,
        code: None,
        message,
    };
    let provider = sdk.credentials_provider().ok_or_else(|| refused("no credential provider is configured".into()))?;
    let credentials = provider.provide_credentials().await.map_err(|error| refused(error_chain(&error)))?;
    let source = provider_name(&credentials);
    let expires_in = match credentials.expiry() {
        Some(at) => Some(at.duration_since(std::time::SystemTime::now()).unwrap_or_default()),
        // The environment provider keeps no expiry; tools that export session keys often give it beside them
        // (`aws configure export-credentials --format env`, aws-vault).
        None if source == "EnvironmentVariable" => std::env::var("AWS_CREDENTIAL_EXPIRATION")
            .ok()
            .and_then(|text| chrono::DateTime::parse_from_rfc3339(text.trim()).ok())
            .map(|at| (at.with_timezone(&chrono::Utc) - chrono::Utc::now()).to_std().unwrap_or_default()),
        None => None,
    };
    Ok((source, expires_in, credentials.session_token().is_some()))
}

/// The name of the provider that gave `credentials`. The SDK keeps it private but shows it first in their
/// `Debug` (`Credentials { provider_name: "EnvironmentVariable", …`), whose secret is redacted; the text is
/// parsed here and dropped.
fn provider_name(credentials: &aws_credential_types::Credentials) -> String {
    let shown = format!("{credentials:?}");
    shown
        .split("provider_name: \"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or(crate::cloud::UNKNOWN_PROVIDER)
        .to_string()
}

/// One region's clients (EC2, KMS for its keys, SSM for publishing) and request buckets.
pub struct AwsRegion {
    region: Region,
    client: Client,
    kms: aws_sdk_kms::Client,
    ssm: aws_sdk_ssm::Client,
    limiter: Arc<RegionLimiter>,
}

impl AwsRegion {
    fn error<E>(&self, action: Action, error: SdkError<E, HttpResponse>) -> CloudError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        sdk_error(&self.region, action, error)
    }

    fn missing(&self, action: Action, what: &str) -> CloudError {
        self.permanent(action, format!("the response has no {what}"))
    }

    /// A request this side could not make (an SDK builder refused it): permanent, no AWS code.
    fn permanent(&self, action: Action, message: impl ToString) -> CloudError {
        CloudError {
            action,
            region: self.region.clone(),
            kind: ErrorKind::Permanent,
            code: None,
            message: message.to_string(),
        }
    }
}

/// Whether EC2 refused GetConsoleOutput's `Latest` for the instance (not a Nitro instance).
fn refuses_latest(error: &CloudError) -> bool {
    error.code.as_deref().is_some_and(|code| code == "UnsupportedOperation" || code.starts_with("InvalidParameter"))
}

/// An SDK error as the port's error: its AWS code and kind, and a message without the SDK's debug dump.
fn sdk_error<E>(region: &Region, action: Action, error: SdkError<E, HttpResponse>) -> CloudError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let (kind, code, message) = match &error {
        SdkError::ServiceError(service) => {
            let code = service.err().code().map(str::to_string);
            let status = service.raw().status().as_u16();
            let kind = match &code {
                Some(code) => ErrorKind::of_code(code),
                None if status == 429 || status == 503 => ErrorKind::Throttled,
                None if status >= 500 => ErrorKind::Transient,
                None => ErrorKind::Permanent,
            };
            let message = service
                .err()
                .message()
                .map(str::to_string)
                .unwrap_or_else(|| format!("HTTP {status}: {}", DisplayErrorContext(&error)));
            (kind, code, message)
        }
        // Credentials that could not be loaded or refreshed are their own kind (cleanup retries them); a
        // request the client could not build (a user error) will not work next time; a dropped or timed-out
        // connection may. A connection closed before the answer came (hyper's "connection closed before message
        // completed") is neither io nor timeout to the SDK: it is a dropped connection, so transient too.
        // A destination account's role STS refused: that account's calls fail, at once, naming the role.
        SdkError::DispatchFailure(_) if role_refused(&error).is_some() => {
            let refused = role_refused(&error).map(ToString::to_string).unwrap_or_default();
            (ErrorKind::Permanent, Some("AccessDenied".to_string()), refused)
        }
        SdkError::DispatchFailure(failure)
            if !(failure.is_io() || failure.is_timeout()) && is_credentials_failure(&error) =>
        {
            (ErrorKind::Credentials, None, error_chain(&error))
        }
        SdkError::DispatchFailure(failure) if failure.is_user() => (ErrorKind::Permanent, None, error_chain(&error)),
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            (ErrorKind::Transient, None, error_chain(&error))
        }
        _ => (ErrorKind::Permanent, None, error_chain(&error)),
    };
    CloudError { action, region: region.clone(), kind, code, message }
}

/// Whether a dispatch failure came from the credential provider chain (nothing found, a refresh that failed).
fn is_credentials_failure(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(current) = cause {
        if current.is::<aws_credential_types::provider::error::CredentialsError>() {
            return true;
        }
        cause = current.source();
    }
    false
}

/// An error and its causes, `: `-separated, without the SDK's debug dump.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// A one-time spot request through RunInstances, terminated when EC2 interrupts it, with no maximum price: AWS
/// recommends none (EC2 User Guide, "Best practices for Amazon EC2 Spot": setting a maximum price raises the
/// chance of interruption; without one the on-demand price caps what is paid). A one-time request ends with its
/// instance, so the instance is all a cleanup has to remove.
fn spot_market_options() -> InstanceMarketOptionsRequest {
    InstanceMarketOptionsRequest::builder()
        .market_type(MarketType::Spot)
        .spot_options(
            SpotMarketOptions::builder()
                .spot_instance_type(SpotInstanceType::OneTime)
                .instance_interruption_behavior(InstanceInterruptionBehavior::Terminate)
                .build(),
        )
        .build()
}

fn tag_specification(resource: ResourceType, tags: &Tags) -> TagSpecification {
    let mut specification = TagSpecification::builder().resource_type(resource);
    for (key, value) in tags {
        specification = specification.tags(Tag::builder().key(key).value(value).build());
    }
    specification.build()
}

/// CreateImage's and CopyImage's TagSpecifications: the image's, and its snapshots' (both take ResourceType
/// `snapshot`: "CreateImage", "CopyImage", Amazon EC2 API Reference), so both are tagged at creation.
fn image_tag_specifications(image: &Tags, snapshots: &Tags) -> Vec<TagSpecification> {
    let mut specifications = vec![tag_specification(ResourceType::Image, image)];
    if !snapshots.is_empty() {
        specifications.push(tag_specification(ResourceType::Snapshot, snapshots));
    }
    specifications
}

fn image_state(image: &aws_sdk_ec2::types::Image) -> ImageState {
    use aws_sdk_ec2::types::ImageState as Ec2;
    let reason = || image.state_reason().and_then(|reason| reason.message()).unwrap_or("no reason given").to_string();
    match image.state() {
        Some(Ec2::Available) => ImageState::Available,
        Some(Ec2::Pending) | Some(Ec2::Transient) | None => ImageState::Pending,
        Some(other) => ImageState::Failed(format!("{}: {}", other.as_str(), reason())),
    }
}

#[async_trait]
impl RegionCloud for AwsRegion {
    fn region(&self) -> &Region {
        &self.region
    }

    async fn find_images(&self, filter: &ImageFilter) -> CloudResult<Vec<ImageSummary>> {
        let action = Action::DescribeImages;
        let output = ec2_call!(self, action, |client| {
            let mut request = client
                .describe_images()
                .set_owners(Some(filter.owners.clone()))
                .filters(Filter::builder().name("name").values(&filter.name_pattern).build())
                .filters(Filter::builder().name("state").values("available").build());
            if let Some(architecture) = &filter.architecture {
                request = request.filters(Filter::builder().name("architecture").values(architecture).build());
            }
            request
        })?;
        Ok(output
            .images()
            .iter()
            .filter(|image| !matches!(image_state(image), ImageState::Failed(_)))
            .filter_map(|image| {
                Some(ImageSummary {
                    id: ImageId(image.image_id()?.to_string()),
                    name: image.name().unwrap_or_default().to_string(),
                    creation_date: image.creation_date().unwrap_or_default().to_string(),
                    root_device: image.root_device_name().map(str::to_string),
                    owner: image.owner_id().map(str::to_string),
                })
            })
            .collect())
    }

    async fn describe_images(&self, ids: &[ImageId]) -> CloudResult<Vec<ImageStatus>> {
        let action = Action::DescribeImages;
        let mut found = Vec::new();
        for filter in id_filters("image-id", ids.iter().map(ImageId::as_str)) {
            let output = ec2_call!(self, action, |client| client.describe_images().filters(filter.clone()))?;
            found.extend(output.images().iter().filter_map(|image| {
                Some(ImageStatus {
                    id: ImageId(image.image_id()?.to_string()),
                    state: image_state(image),
                    snapshot_ids: snapshots_of(image),
                    root_device: image.root_device_name().map(str::to_string),
                })
            }));
        }
        Ok(found)
    }

    async fn find_subnets(&self, lookup: &SubnetLookup) -> CloudResult<Vec<Subnet>> {
        let action = Action::DescribeSubnets;
        let (ids, filters) = match lookup {
            SubnetLookup::Ids(ids) => (Some(ids.clone()), None),
            SubnetLookup::Tagged(tags) => (None, Some(tag_filters(tags))),
        };
        let (ids, filters) = (&ids, &filters);
        all_pages(|token| async move {
            let output = ec2_call!(self, action, |client| client
                .describe_subnets()
                .set_subnet_ids(ids.clone())
                .set_filters(filters.clone())
                .set_next_token(token.clone()))?;
            let found = output
                .subnets()
                .iter()
                .filter_map(|subnet| {
                    Some(Subnet {
                        id: SubnetId(subnet.subnet_id()?.to_string()),
                        vpc: VpcId(subnet.vpc_id()?.to_string()),
                        availability_zone: subnet.availability_zone().unwrap_or_default().to_string(),
                        available_addresses: subnet.available_ip_address_count().unwrap_or(0).max(0) as u32,
                        maps_public_ip: subnet.map_public_ip_on_launch().unwrap_or(false),
                    })
                })
                .collect();
            Ok((found, output.next_token().map(str::to_string)))
        })
        .await
    }

    async fn find_vpc(&self, vpc: VpcLookup<'_>) -> CloudResult<Option<Vpc>> {
        let action = Action::DescribeVpcs;
        let output = ec2_call!(self, action, |client| match vpc {
            VpcLookup::Id(id) => client.describe_vpcs().vpc_ids(id.as_str()),
            VpcLookup::Default =>
                client.describe_vpcs().filters(Filter::builder().name("is-default").values("true").build()),
        })?;
        Ok(output.vpcs().first().and_then(|found| {
            let mut cidrs: Vec<IpNet> = found
                .cidr_block_association_set()
                .iter()
                .filter_map(|association| association.cidr_block()?.parse().ok())
                .collect();
            if cidrs.is_empty() {
                cidrs.extend(found.cidr_block().and_then(|cidr| cidr.parse::<IpNet>().ok()));
            }
            Some(Vpc { id: VpcId(found.vpc_id()?.to_string()), cidrs })
        }))
    }

    async fn instance_type_offered(&self, instance_type: &str, zone: Option<&str>) -> CloudResult<bool> {
        let action = Action::DescribeInstanceTypeOfferings;
        let (location_type, location) = match zone {
            Some(zone) => (LocationType::AvailabilityZone, zone.to_string()),
            None => (LocationType::Region, self.region.to_string()),
        };
        let output = ec2_call!(self, action, |client| client
            .describe_instance_type_offerings()
            .location_type(location_type.clone())
            .filters(Filter::builder().name("instance-type").values(instance_type).build())
            .filters(Filter::builder().name("location").values(&location).build()))?;
        Ok(!output.instance_type_offerings().is_empty())
    }

    async fn create_key_pair(&self, name: &KeyPairName, tags: &Tags) -> CloudResult<PrivateKey> {
        let action = Action::CreateKeyPair;
        let output = ec2_call!(self, action, |client| client
            .create_key_pair()
            .key_name(name.as_str())
            .key_type(KeyType::Rsa)
            .tag_specifications(tag_specification(ResourceType::KeyPair, tags)))?;
        let material = output.key_material().ok_or_else(|| self.missing(action, "key material"))?;
        Ok(PrivateKey::new(material.to_string()))
    }

    async fn delete_key_pair(&self, name: &KeyPairName) -> CloudResult<()> {
        let action = Action::DeleteKeyPair;
        ec2_call!(self, action, |client| client.delete_key_pair().key_name(name.as_str()))?;
        Ok(())
    }

    async fn create_security_group(
        &self,
        name: &str,
        description: &str,
        vpc: Option<&VpcId>,
        tags: &Tags,
    ) -> CloudResult<SecurityGroupId> {
        let action = Action::CreateSecurityGroup;
        let output = ec2_call!(self, action, |client| client
            .create_security_group()
            .group_name(name)
            .description(description)
            .set_vpc_id(vpc.map(|vpc| vpc.0.clone()))
            .tag_specifications(tag_specification(ResourceType::SecurityGroup, tags)))?;
        output.group_id().map(|id| SecurityGroupId(id.to_string())).ok_or_else(|| self.missing(action, "group id"))
    }

    async fn authorize_ingress(&self, group: &SecurityGroupId, port: u16, from: &IngressSources) -> CloudResult<()> {
        let action = Action::AuthorizeSecurityGroupIngress;
        let mut permission = IpPermission::builder().ip_protocol("tcp").from_port(port.into()).to_port(port.into());
        // A source group is named by id alone: the same account's, in this VPC or a peered one ("Security group
        // rules", Amazon VPC User Guide); a prefix list by its id.
        for source in &from.security_groups {
            permission = permission.user_id_group_pairs(
                UserIdGroupPair::builder().group_id(source.as_str()).description("fleetbake build SSH").build(),
            );
        }
        for list in &from.prefix_lists {
            permission = permission.prefix_list_ids(
                PrefixListEntry::builder().prefix_list_id(list.as_str()).description("fleetbake build SSH").build(),
            );
        }
        for cidr in &from.cidrs {
            permission = match cidr {
                IpNet::V4(v4) => permission
                    .ip_ranges(IpRange::builder().cidr_ip(v4.to_string()).description("fleetbake build SSH").build()),
                IpNet::V6(v6) => permission.ipv6_ranges(
                    Ipv6Range::builder().cidr_ipv6(v6.to_string()).description("fleetbake build SSH").build(),
                ),
            };
        }
        let permission = permission.build();
        ec2_call!(self, action, |client| client
            .authorize_security_group_ingress()
            .group_id(group.as_str())
            .ip_permissions(permission.clone()))?;
        Ok(())
    }

    async fn delete_security_group(&self, group: &SecurityGroupId) -> CloudResult<()> {
        let action = Action::DeleteSecurityGroup;
        ec2_call!(self, action, |client| client.delete_security_group().group_id(group.as_str()))?;
        Ok(())
    }

    async fn run_instance(&self, spec: &LaunchSpec) -> CloudResult<InstanceId> {
        let action = Action::RunInstances;
        let output = ec2_call!(self, action, |client| {
            let mut request = client
                .run_instances()
                .image_id(spec.image_id.as_str())
                .instance_type(spec.instance_type.as_str().into())
                .min_count(1)
                .max_count(1)
                .key_name(spec.key_name.as_str())
                .client_token(&spec.client_token)
                .tag_specifications(tag_specification(ResourceType::Instance, &spec.tags))
                .tag_specifications(tag_specification(ResourceType::Volume, &spec.tags));
            let subnet = spec.subnet_id.as_ref().map(|subnet| subnet.0.clone());
            request = match (subnet, spec.associate_public_ip) {
                (subnet, Some(associate)) => request.network_interfaces(
                    InstanceNetworkInterfaceSpecification::builder()
                        .device_index(0)
                        .set_subnet_id(subnet)
                        .associate_public_ip_address(associate)
                        .groups(spec.security_group.as_str())
                        .delete_on_termination(true)
                        .build(),
                ),
                (subnet, None) => request.set_subnet_id(subnet).security_group_ids(spec.security_group.as_str()),
            };
            let tokens =
                if spec.metadata.tokens_required { HttpTokensState::Required } else { HttpTokensState::Optional };
            request = request.metadata_options(
                InstanceMetadataOptionsRequest::builder()
                    .http_endpoint(InstanceMetadataEndpointState::Enabled)
                    .http_tokens(tokens)
                    .set_http_put_response_hop_limit(spec.metadata.hop_limit.map(i32::from))
                    .build(),
            );
            if let Some(root) = &spec.root_volume {
                let volume = &root.volume;
                let ebs = EbsBlockDevice::builder()
                    .delete_on_termination(true)
                    .set_volume_size(volume.size_gb.map(|size| size as i32))
                    .set_volume_type(volume.volume_type.as_deref().map(VolumeType::from))
                    .set_iops(volume.iops.map(|iops| iops as i32))
                    .set_throughput(volume.throughput.map(|throughput| throughput as i32))
                    .set_encrypted(root.kms_key.as_ref().map(|_| true))
                    .set_kms_key_id(root.kms_key.clone())
                    .build();
                request = request.block_device_mappings(
                    BlockDeviceMapping::builder().device_name(&root.device_name).ebs(ebs).build(),
                );
            }
            if let Some(profile) = &spec.iam_instance_profile {
                request =
                    request.iam_instance_profile(IamInstanceProfileSpecification::builder().name(profile).build());
            }
            if let Some(data) = &spec.user_data {
                use base64::Engine;
                request = request.user_data(base64::engine::general_purpose::STANDARD.encode(data.as_bytes()));
            }
            if spec.market == Market::Spot {
                request = request.instance_market_options(spot_market_options());
            }
            request
        })?;
        output
            .instances()
            .first()
            .and_then(|instance| instance.instance_id())
            .map(|id| InstanceId(id.to_string()))
            .ok_or_else(|| self.missing(action, "instance"))
    }

    async fn describe_instances(&self, ids: &[InstanceId]) -> CloudResult<Vec<InstanceStatus>> {
        let action = Action::DescribeInstances;
        let mut found = Vec::new();
        for filter in id_filters("instance-id", ids.iter().map(InstanceId::as_str)) {
            let output = ec2_call!(self, action, |client| client.describe_instances().filters(filter.clone()))?;
            found.extend(instance_statuses(&output));
        }
        Ok(found)
    }

    /// GetConsoleOutput with `Latest = true` first. EC2's API reference: `Latest` "retrieves the latest console
    /// output for the instance" and is supported only on instances built on the Nitro System; otherwise EC2
    /// keeps only what it captured (shortly after boot, updated every few minutes) and answers a request for
    /// the latest with an error (`UnsupportedOperation`, or an `InvalidParameter…` code): then the call is
    /// made again without it. The output is base64; it is decoded here, bytes that are not UTF-8 replaced.
    async fn console_output(&self, instance: &InstanceId) -> CloudResult<ConsoleOutput> {
        let action = Action::GetConsoleOutput;
        let latest =
            ec2_call!(self, action, |client| client.get_console_output().instance_id(instance.as_str()).latest(true));
        let output = match latest {
            Err(error) if refuses_latest(&error) => {
                tracing::debug!(%instance, "GetConsoleOutput refused `Latest`, asking without it: {error}");
                ec2_call!(self, action, |client| client.get_console_output().instance_id(instance.as_str()))?
            }
            answer => answer?,
        };
        let encoded = output.output().unwrap_or_default();
        // EC2 keeps at most 64 KB of console; more than a megabyte is not a console.
        let encoded = &encoded[..encoded.len().min(2 * 1024 * 1024)];
        let bytes = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, encoded.trim())
            .map_err(|_| self.missing(action, "base64 console output"))?;
        Ok(ConsoleOutput(String::from_utf8_lossy(&bytes).into_owned()))
    }

    async fn stop_instance(&self, id: &InstanceId) -> CloudResult<()> {
        let action = Action::StopInstances;
        ec2_call!(self, action, |client| client.stop_instances().instance_ids(id.as_str()))?;
        Ok(())
    }

    async fn terminate_instance(&self, id: &InstanceId) -> CloudResult<()> {
        let action = Action::TerminateInstances;
        ec2_call!(self, action, |client| client.terminate_instances().instance_ids(id.as_str()))?;
        Ok(())
    }

    async fn create_image(
        &self,
        instance: &InstanceId,
        name: &str,
        description: Option<&str>,
        tags: &Tags,
        snapshot_tags: &Tags,
        of: ImageOf,
    ) -> CloudResult<ImageId> {
        let no_reboot = match of {
            ImageOf::Stopped => None,
            // `NoReboot` false, said explicitly: the instance is running (a one-time spot instance cannot be
            // stopped), and EC2 reboots it for a consistent snapshot (CreateImage, EC2 API Reference).
            ImageOf::RunningRebooted => Some(false),
        };
        let action = Action::CreateImage;
        let specifications = image_tag_specifications(tags, snapshot_tags);
        let output = ec2_call!(self, action, |client| client
            .create_image()
            .instance_id(instance.as_str())
            .name(name)
            .set_no_reboot(no_reboot)
            .set_description(description.map(str::to_string))
            .set_tag_specifications(Some(specifications.clone())))?;
        output.image_id().map(|id| ImageId(id.to_string())).ok_or_else(|| self.missing(action, "image id"))
    }

    async fn copy_image(&self, spec: &CopySpec) -> CloudResult<ImageId> {
        let action = Action::CopyImage;
        let output = ec2_call!(self, action, |client| client
            .copy_image()
            .source_region(spec.source_region.as_str())
            .source_image_id(spec.source_image.as_str())
            .name(&spec.name)
            .set_description(spec.description.clone())
            .client_token(&spec.client_token)
            .set_encrypted(spec.kms_key.as_ref().map(|_| true))
            .set_kms_key_id(spec.kms_key.clone())
            .set_tag_specifications(Some(image_tag_specifications(&spec.tags, &spec.snapshot_tags))))?;
        output.image_id().map(|id| ImageId(id.to_string())).ok_or_else(|| self.missing(action, "image id"))
    }

    async fn create_tags(&self, resources: &[String], tags: &Tags) -> CloudResult<()> {
        let action = Action::CreateTags;
        let tags: Vec<Tag> = tags.iter().map(|(key, value)| Tag::builder().key(key).value(value).build()).collect();
        ec2_call!(self, action, |client| client
            .create_tags()
            .set_resources(Some(resources.to_vec()))
            .set_tags(Some(tags.clone())))?;
        Ok(())
    }

    async fn find_owned_images(&self, query: &ImageQuery) -> CloudResult<Vec<OwnedImage>> {
        let action = Action::DescribeImages;
        // Names go in chunks, one call each; tags are all ANDed in one call.
        let calls: Vec<Vec<Filter>> = match query {
            ImageQuery::Named(names) => {
                id_filters("name", names.iter().map(String::as_str)).into_iter().map(|filter| vec![filter]).collect()
            }
            ImageQuery::Tagged(tags) => vec![tag_filters(tags)],
        };
        let mut found = Vec::new();
        for filters in calls {
            let output = ec2_call!(self, action, |client| client
                .describe_images()
                .owners("self")
                .set_filters(Some(filters.clone())))?;
            found.extend(output.images().iter().filter_map(|image| {
                Some(OwnedImage {
                    id: ImageId(image.image_id()?.to_string()),
                    name: image.name().unwrap_or_default().to_string(),
                    state: image_state(image),
                    creation_date: image.creation_date().unwrap_or_default().to_string(),
                    snapshot_ids: snapshots_of(image),
                    tags: tags_of(image.tags()),
                })
            }));
        }
        Ok(found)
    }

    async fn find_instances(&self, tags: &Tags) -> CloudResult<Vec<Tagged<InstanceId>>> {
        let mut filters = tag_filters(tags);
        filters.push(
            Filter::builder()
                .name("instance-state-name")
                .values("pending")
                .values("running")
                .values("stopping")
                .values("stopped")
                .build(),
        );
        let instances = self.instances_where(filters).await?;
        Ok(instances
            .iter()
            .filter_map(|instance| {
                Some(Tagged { id: InstanceId(instance.instance_id()?.to_string()), tags: tags_of(instance.tags()) })
            })
            .collect())
    }

    async fn find_security_groups(&self, tags: &Tags) -> CloudResult<Vec<Tagged<SecurityGroupId>>> {
        let action = Action::DescribeSecurityGroups;
        let filters = &tag_filters(tags);
        all_pages(|token| async move {
            let output = ec2_call!(self, action, |client| client
                .describe_security_groups()
                .set_filters(Some(filters.clone()))
                .set_next_token(token.clone()))?;
            let found = output
                .security_groups()
                .iter()
                .filter_map(|group| {
                    Some(Tagged { id: SecurityGroupId(group.group_id()?.to_string()), tags: tags_of(group.tags()) })
                })
                .collect();
            Ok((found, output.next_token().map(str::to_string)))
        })
        .await
    }

    async fn find_key_pairs(&self, tags: &Tags) -> CloudResult<Vec<Tagged<KeyPairName>>> {
        let action = Action::DescribeKeyPairs;
        let filters = tag_filters(tags);
        let output = ec2_call!(self, action, |client| client.describe_key_pairs().set_filters(Some(filters.clone())))?;
        Ok(output
            .key_pairs()
            .iter()
            .filter_map(|pair| {
                Some(Tagged { id: KeyPairName(pair.key_name()?.to_string()), tags: tags_of(pair.tags()) })
            })
            .collect())
    }

    async fn deregister_image(&self, id: &ImageId) -> CloudResult<()> {
        let action = Action::DeregisterImage;
        ec2_call!(self, action, |client| client.deregister_image().image_id(id.as_str()))?;
        Ok(())
    }

    async fn delete_snapshot(&self, id: &SnapshotId) -> CloudResult<()> {
        let action = Action::DeleteSnapshot;
        ec2_call!(self, action, |client| client.delete_snapshot().snapshot_id(id.as_str()))?;
        Ok(())
    }

    async fn require_imdsv2(&self, image: &ImageId) -> CloudResult<()> {
        let action = Action::ModifyImageAttribute;
        ec2_call!(self, action, |client| client
            .modify_image_attribute()
            .image_id(image.as_str())
            .imds_support(AttributeValue::builder().value("v2.0").build()))?;
        Ok(())
    }

    async fn deprecate_image(&self, image: &ImageId, at: chrono::DateTime<chrono::Utc>) -> CloudResult<()> {
        let action = Action::EnableImageDeprecation;
        let at = aws_sdk_ec2::primitives::DateTime::from_secs(at.timestamp());
        ec2_call!(self, action, |client| client.enable_image_deprecation().image_id(image.as_str()).deprecate_at(at))?;
        Ok(())
    }

    async fn share_image(&self, image: &ImageId, with: &LaunchPermissions) -> CloudResult<()> {
        let action = Action::ModifyImageAttribute;
        let add = LaunchPermissionModifications::builder().set_add(Some(launch_permission_list(with))).build();
        ec2_call!(self, action, |client| client
            .modify_image_attribute()
            .image_id(image.as_str())
            .launch_permission(add.clone()))?;
        Ok(())
    }

    /// The `Attribute` / `OperationType` / `UserIds` form (moto keeps only this one; EC2 takes both).
    async fn share_snapshot(&self, snapshot: &SnapshotId, accounts: &[String]) -> CloudResult<()> {
        let action = Action::ModifySnapshotAttribute;
        ec2_call!(self, action, |client| client
            .modify_snapshot_attribute()
            .snapshot_id(snapshot.as_str())
            .attribute(SnapshotAttributeName::CreateVolumePermission)
            .operation_type(OperationType::Add)
            .set_user_ids(Some(accounts.to_vec())))?;
        Ok(())
    }

    async fn describe_key(&self, key: &str) -> CloudResult<Option<KmsKey>> {
        let action = Action::DescribeKey;
        let answer = self
            .limiter
            .call(action, || async {
                self.kms.describe_key().key_id(key).send().await.map_err(|error| self.error(action, error))
            })
            .await;
        let answer = match answer {
            Err(error) if error.code.as_deref() == Some("NotFoundException") => return Ok(None),
            other => other?,
        };
        Ok(answer.key_metadata().map(|metadata| KmsKey {
            arn: metadata.arn().unwrap_or_default().to_string(),
            enabled: metadata.enabled(),
            aws_managed: metadata.key_manager() == Some(&aws_sdk_kms::types::KeyManagerType::Aws),
        }))
    }

    /// PutParameter (`aws:ec2:image`: SSM checks the id asynchronously, so the version it answers may never
    /// appear); SSM keeps the earlier versions (GetParameterHistory).
    async fn put_image_parameter(&self, name: &str, image: &ImageId) -> CloudResult<u64> {
        let action = Action::PutParameter;
        let put = self
            .limiter
            .call(action, || async {
                self.ssm
                    .put_parameter()
                    .name(name)
                    .value(image.as_str())
                    .r#type(aws_sdk_ssm::types::ParameterType::String)
                    .data_type(IMAGE_DATA_TYPE)
                    .overwrite(true)
                    .description("fleetbake: the newest image")
                    .send()
                    .await
                    .map_err(|error| self.error(action, error))
            })
            .await?;
        Ok(u64::try_from(put.version()).unwrap_or_default())
    }

    /// CreateLaunchTemplateVersion from the default version (`SourceVersion`), with the new image; then
    /// ModifyLaunchTemplate makes it the default. CreateLaunchTemplateVersion takes no client token, so every
    /// attempt (a retry after a lost answer too) first looks for the version an earlier one made
    /// ([`RegionCloud::launch_template_version_made`]) and reuses it.
    async fn launch_template_version(
        &self,
        name: &str,
        image: &ImageId,
        description: &str,
    ) -> CloudResult<(String, u64)> {
        let action = Action::CreateLaunchTemplateVersion;
        let data = aws_sdk_ec2::types::RequestLaunchTemplateData::builder().image_id(image.as_str()).build();
        let (id, version) = self
            .limiter
            .call(action, || async {
                if let Some(made) = self.launch_template_version_made(name, image, description).await? {
                    return Ok(made);
                }
                let created = self
                    .client
                    .create_launch_template_version()
                    .launch_template_name(name)
                    .source_version("$Default")
                    .version_description(description)
                    .launch_template_data(data.clone())
                    .send()
                    .await
                    .map_err(|error| self.error(action, error))?;
                let made = created.launch_template_version().ok_or_else(|| self.missing(action, "a version"))?;
                let version = made.version_number().ok_or_else(|| self.missing(action, "a version number"))?;
                let id = made.launch_template_id().unwrap_or_default().to_string();
                Ok((id, u64::try_from(version).unwrap_or_default()))
            })
            .await?;
        let action = Action::ModifyLaunchTemplate;
        ec2_call!(self, action, |client| client
            .modify_launch_template()
            .launch_template_name(name)
            .default_version(version.to_string()))?;
        Ok((id, version))
    }
    /// DescribeInstanceInformation with the `InstanceIds` filter (`InstanceInformationFilterList`): one
    /// instance, one page. An instance whose agent never registered is not listed (or, in some regions' answers,
    /// `InvalidInstanceId`): both are "not yet".
    async fn agent_online(&self, instance: &InstanceId) -> CloudResult<bool> {
        let action = Action::DescribeInstanceInformation;
        let filter = aws_sdk_ssm::types::InstanceInformationFilter::builder()
            .key(aws_sdk_ssm::types::InstanceInformationFilterKey::InstanceIds)
            .value_set(instance.as_str())
            .build()
            .map_err(|error| self.permanent(action, error))?;
        let answer = self
            .limiter
            .call(action, || async {
                self.ssm
                    .describe_instance_information()
                    .instance_information_filter_list(filter.clone())
                    .send()
                    .await
                    .map_err(|error| self.error(action, error))
            })
            .await;
        let answer = match answer {
            Err(error) if error.code.as_deref() == Some("InvalidInstanceId") => return Ok(false),
            other => other?,
        };
        Ok(answer.instance_information_list().iter().any(|information| {
            information.instance_id() == Some(instance.as_str())
                && information.ping_status() == Some(&aws_sdk_ssm::types::PingStatus::Online)
        }))
    }

    /// StartSession with `AWS-StartSSHSession` to the instance's own sshd. The answer's TokenValue goes into a
    /// [`SessionToken`] at once and nowhere else.
    async fn start_session(&self, instance: &InstanceId, port: u16) -> CloudResult<SsmSession> {
        let action = Action::StartSession;
        let answer = self
            .limiter
            .call(action, || async {
                self.ssm
                    .start_session()
                    .target(instance.as_str())
                    .document_name(SSH_SESSION_DOCUMENT)
                    .parameters("portNumber", vec![port.to_string()])
                    .reason("fleetbake: provisioning a build")
                    .send()
                    .await
                    .map_err(|error| self.error(action, error))
            })
            .await?;
        let id = answer.session_id().ok_or_else(|| self.missing(action, "SessionId"))?;
        let stream_url = answer.stream_url().ok_or_else(|| self.missing(action, "StreamUrl"))?;
        let token = answer.token_value().ok_or_else(|| self.missing(action, "TokenValue"))?;
        Ok(SsmSession {
            id: SessionId::new(id),
            stream_url: stream_url.to_string(),
            token: SessionToken::new(token.to_string()),
        })
    }

    /// TerminateSession. SSM answers success for a session that already ended; one it no longer knows
    /// (`DoesNotExistException`: its history expired) has ended too.
    async fn terminate_session(&self, session: &SessionId) -> CloudResult<()> {
        let action = Action::TerminateSession;
        let answer = self
            .limiter
            .call(action, || async {
                self.ssm
                    .terminate_session()
                    .session_id(session.as_str())
                    .send()
                    .await
                    .map_err(|error| self.error(action, error))
            })
            .await;
        match answer {
            Err(error) if error.code.as_deref() == Some("DoesNotExistException") => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// DescribeSessions, `State = Active`, filter `Target = instance`, every page.
    async fn active_sessions(&self, instance: &InstanceId) -> CloudResult<Vec<SessionId>> {
        let action = Action::DescribeSessions;
        let filter = aws_sdk_ssm::types::SessionFilter::builder()
            .key(aws_sdk_ssm::types::SessionFilterKey::TargetId)
            .value(instance.as_str())
            .build()
            .map_err(|error| self.permanent(action, error))?;
        all_pages(|token| {
            let filter = filter.clone();
            async move {
                let answer = self
                    .limiter
                    .call(action, || async {
                        self.ssm
                            .describe_sessions()
                            .state(aws_sdk_ssm::types::SessionState::Active)
                            .filters(filter.clone())
                            .set_next_token(token.clone())
                            .send()
                            .await
                            .map_err(|error| self.error(action, error))
                    })
                    .await?;
                let sessions = answer
                    .sessions()
                    .iter()
                    .filter(|session| session.target().is_none_or(|target| target == instance.as_str()))
                    .filter_map(|session| session.session_id())
                    .map(SessionId::new)
                    .collect();
                Ok((sessions, answer.next_token().map(str::to_string)))
            }
        })
        .await
    }

    /// GetParameterHistory, every page (SSM gives at most 50 a page, oldest first). The data type is the
    /// newest version's (it never changes). `ParameterNotFound`: `None`.
    async fn parameter_history(&self, name: &str) -> CloudResult<Option<ParameterHistory>> {
        let action = Action::GetParameterHistory;
        let pages = all_pages(|token| async move {
            let answer = self
                .limiter
                .call(action, || async {
                    self.ssm
                        .get_parameter_history()
                        .name(name)
                        .max_results(50)
                        .set_next_token(token.clone())
                        .send()
                        .await
                        .map_err(|error| self.error(action, error))
                })
                .await?;
            let versions: Vec<(String, ParameterVersion)> = answer
                .parameters()
                .iter()
                .map(|found| {
                    let version = ParameterVersion {
                        version: u64::try_from(found.version()).unwrap_or_default(),
                        value: found.value().unwrap_or_default().to_string(),
                        labels: found.labels().to_vec(),
                    };
                    (found.data_type().unwrap_or("text").to_string(), version)
                })
                .collect();
            Ok((versions, answer.next_token().map(str::to_string)))
        })
        .await;
        let mut versions = match pages {
            Err(error) if error.code.as_deref() == Some("ParameterNotFound") => return Ok(None),
            other => other?,
        };
        versions.sort_by_key(|(_, version)| version.version);
        let data_type = versions.last().map(|(data_type, _)| data_type.clone()).unwrap_or_default();
        Ok(Some(ParameterHistory { data_type, versions: versions.into_iter().map(|(_, version)| version).collect() }))
    }

    async fn label_parameter_version(&self, name: &str, version: u64, label: &str) -> CloudResult<()> {
        let action = Action::LabelParameterVersion;
        let version = i64::try_from(version).unwrap_or(i64::MAX);
        let answer = self
            .limiter
            .call(action, || async {
                self.ssm
                    .label_parameter_version()
                    .name(name)
                    .parameter_version(version)
                    .labels(label)
                    .send()
                    .await
                    .map_err(|error| self.error(action, error))
            })
            .await?;
        // SSM answers 200 with the labels it refused (a label already on another version of a parameter
        // at its 10-label limit, a malformed one): not a label the manifest may list.
        if !answer.invalid_labels().is_empty() {
            let refused = answer.invalid_labels().join(", ").escape_debug().take(200).collect::<String>();
            return Err(
                self.permanent(action, format!("SSM refused the label(s) {refused} of `{name}` version {version}"))
            );
        }
        Ok(())
    }

    async fn unlabel_parameter_version(&self, name: &str, version: u64, labels: &[String]) -> CloudResult<()> {
        let action = Action::UnlabelParameterVersion;
        let version = i64::try_from(version).unwrap_or(i64::MAX);
        self.limiter
            .call(action, || async {
                self.ssm
                    .unlabel_parameter_version()
                    .name(name)
                    .parameter_version(version)
                    .set_labels(Some(labels.to_vec()))
                    .send()
                    .await
                    .map_err(|error| self.error(action, error))
            })
            .await?;
        Ok(())
    }

    /// DescribeLaunchTemplates by name; EC2 answers `InvalidLaunchTemplateName.NotFoundException` for a name
    /// the region does not have.
    async fn launch_template_id(&self, name: &str) -> CloudResult<Option<String>> {
        let action = Action::DescribeLaunchTemplates;
        let answer = ec2_call!(self, action, |client| client.describe_launch_templates().launch_template_names(name));
        let answer = match answer {
            Err(error) if error.code.as_deref().is_some_and(|code| code.starts_with("InvalidLaunchTemplateName")) => {
                return Ok(None)
            }
            other => other?,
        };
        Ok(answer
            .launch_templates()
            .iter()
            .find(|template| template.launch_template_name() == Some(name))
            .and_then(|template| template.launch_template_id().map(str::to_string)))
    }

    /// DescribeLaunchTemplateVersions filtered by `image-id`, every page; the description and image are
    /// checked here too (moto ignores the filter).
    async fn launch_template_version_made(
        &self,
        name: &str,
        image: &ImageId,
        description: &str,
    ) -> CloudResult<Option<(String, u64)>> {
        let action = Action::DescribeLaunchTemplateVersions;
        let filter = Filter::builder().name("image-id").values(image.as_str()).build();
        let versions = all_pages(|token| {
            let filter = filter.clone();
            async move {
                let answer = ec2_call!(self, action, |client| client
                    .describe_launch_template_versions()
                    .launch_template_name(name)
                    .filters(filter.clone())
                    .set_next_token(token.clone()))?;
                let made: Vec<(String, u64)> = answer
                    .launch_template_versions()
                    .iter()
                    .filter(|version| version.version_description() == Some(description))
                    .filter(|version| {
                        version.launch_template_data().and_then(|data| data.image_id()) == Some(image.as_str())
                    })
                    .filter_map(|version| {
                        let number = u64::try_from(version.version_number()?).ok()?;
                        Some((version.launch_template_id().unwrap_or_default().to_string(), number))
                    })
                    .collect();
                Ok((made, answer.next_token().map(str::to_string)))
            }
        })
        .await?;
        Ok(versions.into_iter().min_by_key(|(_, number)| *number))
    }

    async fn image_block_public_access(&self) -> CloudResult<ImageBlockPublicAccess> {
        let action = Action::GetImageBlockPublicAccessState;
        let answer = ec2_call!(self, action, |client| client.get_image_block_public_access_state())?;
        let state = answer.image_block_public_access_state().ok_or_else(|| self.missing(action, "state"))?;
        Ok(ImageBlockPublicAccess::from_state(state))
    }

    async fn launch_permissions(&self, image: &ImageId) -> CloudResult<LaunchPermissions> {
        let action = Action::DescribeImageAttribute;
        let answer = ec2_call!(self, action, |client| client
            .describe_image_attribute()
            .image_id(image.as_str())
            .attribute(ImageAttributeName::LaunchPermission))?;
        let mut found = LaunchPermissions::default();
        for permission in answer.launch_permissions() {
            if let Some(account) = permission.user_id() {
                found.accounts.push(account.to_string());
            }
            if let Some(arn) = permission.organization_arn() {
                found.organizations.push(arn.to_string());
            }
            if let Some(arn) = permission.organizational_unit_arn() {
                found.organizational_units.push(arn.to_string());
            }
            if permission.group() == Some(&PermissionGroup::All) {
                found.public = true;
            }
        }
        Ok(found)
    }

    async fn unshare_image(&self, image: &ImageId, from: &LaunchPermissions) -> CloudResult<()> {
        let action = Action::ModifyImageAttribute;
        let remove = LaunchPermissionModifications::builder().set_remove(Some(launch_permission_list(from))).build();
        ec2_call!(self, action, |client| client
            .modify_image_attribute()
            .image_id(image.as_str())
            .launch_permission(remove.clone()))?;
        Ok(())
    }

    async fn snapshot_permissions(&self, snapshot: &SnapshotId) -> CloudResult<Vec<String>> {
        let action = Action::DescribeSnapshotAttribute;
        let answer = ec2_call!(self, action, |client| client
            .describe_snapshot_attribute()
            .snapshot_id(snapshot.as_str())
            .attribute(SnapshotAttributeName::CreateVolumePermission))?;
        Ok(answer.create_volume_permissions().iter().filter_map(|p| p.user_id()).map(str::to_string).collect())
    }

    /// The same form as [`RegionCloud::share_snapshot`], `OperationType = remove`.
    async fn unshare_snapshot(&self, snapshot: &SnapshotId, accounts: &[String]) -> CloudResult<()> {
        let action = Action::ModifySnapshotAttribute;
        ec2_call!(self, action, |client| client
            .modify_snapshot_attribute()
            .snapshot_id(snapshot.as_str())
            .attribute(SnapshotAttributeName::CreateVolumePermission)
            .operation_type(OperationType::Remove)
            .set_user_ids(Some(accounts.to_vec())))?;
        Ok(())
    }

    async fn describe_regions(&self) -> CloudResult<Vec<RegionOptIn>> {
        let answer = ec2_call!(self, Action::DescribeRegions, |client| client.describe_regions().all_regions(true))?;
        Ok(answer
            .regions()
            .iter()
            .filter_map(|region| {
                Some(RegionOptIn {
                    region: Region::new(region.region_name()?),
                    // EC2 leaves it out of regions that need no opt-in only in old answers.
                    opt_in_status: region.opt_in_status().unwrap_or("opt-in-not-required").to_string(),
                })
            })
            .collect())
    }

    /// GetParameter (no decryption: an image id is not a secret). `ParameterNotFound`: `None`.
    async fn parameter(&self, name: &str) -> CloudResult<Option<ParameterVersion>> {
        let action = Action::GetParameter;
        let answer = self
            .limiter
            .call(action, || async {
                self.ssm.get_parameter().name(name).send().await.map_err(|error| self.error(action, error))
            })
            .await;
        let answer = match answer {
            Err(error) if error.code.as_deref() == Some("ParameterNotFound") => return Ok(None),
            other => other?,
        };
        Ok(answer.parameter().map(|found| ParameterVersion {
            version: u64::try_from(found.version()).unwrap_or_default(),
            value: found.value().unwrap_or_default().to_string(),
            labels: Vec::new(),
        }))
    }

    /// CreateGrant takes a key by id or ARN, not by alias: an alias is resolved to its key's ARN first
    /// (DescribeKey). The operations are those EC2 uses the source key for in a cross-account CopyImage
    /// (EC2 User Guide, "Share an AMI with specific AWS accounts": the target account needs these on the key
    /// that encrypts the source's snapshots).
    async fn grant_key_use(&self, key: &str, grantee: &str, name: &str) -> CloudResult<KmsGrantId> {
        use aws_sdk_kms::types::GrantOperation;
        let key = self.key_by_id_or_arn(Action::CreateGrant, key).await?;
        let action = Action::CreateGrant;
        let operations = vec![
            GrantOperation::Decrypt,
            GrantOperation::DescribeKey,
            GrantOperation::CreateGrant,
            GrantOperation::ReEncryptFrom,
            GrantOperation::ReEncryptTo,
            GrantOperation::GenerateDataKeyWithoutPlaintext,
        ];
        let answer = self
            .limiter
            .call(action, || async {
                self.kms
                    .create_grant()
                    .key_id(&key)
                    .grantee_principal(grantee)
                    .set_operations(Some(operations.clone()))
                    .name(name)
                    .send()
                    .await
                    .map_err(|error| self.error(action, error))
            })
            .await?;
        answer.grant_id().map(KmsGrantId::new).ok_or_else(|| self.missing(action, "grant id"))
    }

    /// RevokeGrant; KMS's answer for a grant it no longer has (`NotFoundException`, `InvalidGrantIdException`)
    /// is `Ok`: the grant is gone either way.
    async fn revoke_key_grant(&self, key: &str, grant: &KmsGrantId) -> CloudResult<()> {
        let key = self.key_by_id_or_arn(Action::RevokeGrant, key).await?;
        let action = Action::RevokeGrant;
        let answer = self
            .limiter
            .call(action, || async {
                self.kms
                    .revoke_grant()
                    .key_id(&key)
                    .grant_id(grant.as_str())
                    .send()
                    .await
                    .map_err(|error| self.error(action, error))
            })
            .await;
        match answer {
            Err(error) if matches!(error.code.as_deref(), Some("NotFoundException" | "InvalidGrantIdException")) => {
                Ok(())
            }
            other => other.map(|_| ()),
        }
    }

    /// DescribeSnapshots by id (one request: fleetbake asks about an image's few snapshots).
    async fn snapshot_keys(&self, snapshots: &[SnapshotId]) -> CloudResult<Vec<SnapshotKey>> {
        if snapshots.is_empty() {
            return Ok(Vec::new());
        }
        let action = Action::DescribeSnapshots;
        let ids: Vec<String> = snapshots.iter().map(|snapshot| snapshot.to_string()).collect();
        let output = ec2_call!(self, action, |client| client.describe_snapshots().set_snapshot_ids(Some(ids.clone())))?;
        Ok(output
            .snapshots()
            .iter()
            .filter_map(|snapshot| {
                Some(SnapshotKey {
                    snapshot: SnapshotId(snapshot.snapshot_id()?.to_string()),
                    encrypted: snapshot.encrypted().unwrap_or(false),
                    kms_key: snapshot.kms_key_id().map(str::to_string),
                })
            })
            .collect())
    }

    /// DescribeLaunchTemplates (every page; moto ignores its NextToken and answers at most `MaxResults`), then
    /// per template DescribeLaunchTemplateVersions `$Default` and `$Latest` (EC2 API reference,
    /// DescribeLaunchTemplateVersions `Versions`: "$Latest, $Default, and numbers"); which is which is read from
    /// the template's `DefaultVersionNumber` / `LatestVersionNumber`.
    async fn launch_template_images(&self) -> CloudResult<Vec<TemplateImage>> {
        let templates = all_pages(|token| async move {
            let answer = ec2_call!(self, Action::DescribeLaunchTemplates, |client| client
                .describe_launch_templates()
                .max_results(200)
                .set_next_token(token.clone()))?;
            let found: Vec<(String, String, Option<i64>, Option<i64>)> = answer
                .launch_templates()
                .iter()
                .filter_map(|template| {
                    Some((
                        template.launch_template_id()?.to_string(),
                        template.launch_template_name().unwrap_or_default().to_string(),
                        template.default_version_number(),
                        template.latest_version_number(),
                    ))
                })
                .collect();
            Ok((found, answer.next_token().map(str::to_string)))
        })
        .await?;
        let mut images = Vec::new();
        for (template_id, template_name, default, latest) in templates {
            let id = &template_id;
            let versions = all_pages(|token| async move {
                let answer = ec2_call!(self, Action::DescribeLaunchTemplateVersions, |client| client
                    .describe_launch_template_versions()
                    .launch_template_id(id)
                    .versions("$Default")
                    .versions("$Latest")
                    .set_next_token(token.clone()))?;
                let found: Vec<(i64, String)> = answer
                    .launch_template_versions()
                    .iter()
                    .filter_map(|version| {
                        let image = version.launch_template_data()?.image_id()?;
                        Some((version.version_number()?, image.to_string()))
                    })
                    .collect();
                Ok((found, answer.next_token().map(str::to_string)))
            })
            .await?;
            for (number, image) in versions {
                let kinds = [(default, TemplateVersionKind::Default), (latest, TemplateVersionKind::Latest)];
                for (_, kind) in kinds.into_iter().filter(|(which, _)| *which == Some(number)) {
                    let image = TemplateImage {
                        template_id: template_id.clone(),
                        template_name: template_name.clone(),
                        kind,
                        version: u64::try_from(number).unwrap_or_default(),
                        image: ImageId(image.clone()),
                    };
                    if !images.contains(&image) {
                        images.push(image);
                    }
                }
            }
        }
        Ok(images)
    }

    /// DescribeInstances filtered by `image-id` (at most 200 values a filter: in batches) and every state but
    /// `terminated`, every page.
    async fn instances_of_images(&self, images: &[ImageId]) -> CloudResult<Vec<ImageUser>> {
        let mut users = Vec::new();
        for batch in images.chunks(200) {
            let states = ["pending", "running", "shutting-down", "stopping", "stopped"];
            let filters = vec![
                Filter::builder()
                    .name("image-id")
                    .set_values(Some(batch.iter().map(|id| id.0.clone()).collect()))
                    .build(),
                Filter::builder()
                    .name("instance-state-name")
                    .set_values(Some(states.map(str::to_string).to_vec()))
                    .build(),
            ];
            let instances = self.instances_where(filters).await?;
            users.extend(instances.iter().filter_map(|instance| {
                Some(ImageUser {
                    instance: InstanceId(instance.instance_id()?.to_string()),
                    state: instance.state()?.name()?.as_str().to_string(),
                    image: ImageId(instance.image_id()?.to_string()),
                })
            }));
        }
        Ok(users)
    }

    /// DescribeKeyPairs by name for its id, then CreateTags on that id.
    async fn tag_key_pair(&self, name: &KeyPairName, tags: &Tags) -> CloudResult<()> {
        let action = Action::DescribeKeyPairs;
        let output = ec2_call!(self, action, |client| client.describe_key_pairs().key_names(name.as_str()))?;
        let id = output
            .key_pairs()
            .iter()
            .find(|pair| pair.key_name() == Some(name.as_str()))
            .and_then(|pair| pair.key_pair_id())
            .ok_or_else(|| CloudError {
                action,
                region: self.region.clone(),
                kind: ErrorKind::NotFound,
                code: Some("InvalidKeyPair.NotFound".into()),
                message: format!("The key pair '{name}' does not exist"),
            })?
            .to_string();
        self.create_tags(&[id], tags).await
    }
}

impl AwsRegion {
    /// `key` as CreateGrant and RevokeGrant take it: an id or a key ARN as given, an alias (`alias/…`, or an
    /// alias ARN) resolved to its key's ARN by DescribeKey. A key DescribeKey does not find is `NotFound`.
    async fn key_by_id_or_arn(&self, action: Action, key: &str) -> CloudResult<String> {
        let is_alias = key.starts_with("alias/") || (key.starts_with("arn:") && key.contains(":alias/"));
        if !is_alias {
            return Ok(key.to_string());
        }
        match self.describe_key(key).await? {
            Some(found) => Ok(found.arn),
            None => Err(CloudError {
                action,
                region: self.region.clone(),
                kind: ErrorKind::NotFound,
                code: Some("NotFoundException".into()),
                message: format!("Alias {key} is not found."),
            }),
        }
    }

    /// Every instance DescribeInstances answers with `filters`, every page (the sweep's tagged instances, gc's
    /// users of images).
    async fn instances_where(&self, filters: Vec<Filter>) -> CloudResult<Vec<aws_sdk_ec2::types::Instance>> {
        let filters = &filters;
        all_pages(|token| async move {
            let output = ec2_call!(self, Action::DescribeInstances, |client| client
                .describe_instances()
                .set_filters(Some(filters.clone()))
                .set_next_token(token.clone()))?;
            let instances =
                output.reservations().iter().flat_map(|reservation| reservation.instances().iter().cloned());
            Ok((instances.collect(), output.next_token().map(str::to_string)))
        })
        .await
    }
}

/// Launch permissions as ModifyImageAttribute lists them (to add or to remove).
fn launch_permission_list(with: &LaunchPermissions) -> Vec<LaunchPermission> {
    let mut permissions = Vec::new();
    permissions.extend(with.accounts.iter().map(|account| LaunchPermission::builder().user_id(account).build()));
    permissions.extend(with.organizations.iter().map(|arn| LaunchPermission::builder().organization_arn(arn).build()));
    permissions.extend(
        with.organizational_units.iter().map(|arn| LaunchPermission::builder().organizational_unit_arn(arn).build()),
    );
    if with.public {
        permissions.push(LaunchPermission::builder().group(PermissionGroup::All).build());
    }
    permissions
}

/// Every item of a paginated describe: `page(token)` sends one request and answers its items and the next
/// page's token (none, or empty, on the last page).
async fn all_pages<T, F, Page>(mut page: F) -> CloudResult<Vec<T>>
where
    F: FnMut(Option<String>) -> Page,
    Page: std::future::Future<Output = CloudResult<(Vec<T>, Option<String>)>>,
{
    let mut found = Vec::new();
    let mut token = None;
    loop {
        let (items, next) = page(token).await?;
        found.extend(items);
        token = next.filter(|next| !next.is_empty());
        if token.is_none() {
            return Ok(found);
        }
    }
}

/// One `tag:key = value` filter per tag.
fn tag_filters(tags: &Tags) -> Vec<Filter> {
    tags.iter().map(|(key, value)| Filter::builder().name(format!("tag:{key}")).values(value).build()).collect()
}

fn tags_of(tags: &[Tag]) -> Tags {
    tags.iter().filter_map(|tag| Some((tag.key()?.to_string(), tag.value().unwrap_or_default().to_string()))).collect()
}

fn snapshots_of(image: &aws_sdk_ec2::types::Image) -> Vec<SnapshotId> {
    image
        .block_device_mappings()
        .iter()
        .filter_map(|mapping| mapping.ebs()?.snapshot_id())
        .map(|id| SnapshotId(id.to_string()))
        .collect()
}

/// Filters on `name` (`image-id`, `instance-id`) over `ids`, one per call's worth of values. A filter, not
/// `ImageIds`/`InstanceIds`: an id EC2 does not know yet (just created) would fail the whole call.
fn id_filters<'a>(name: &str, ids: impl Iterator<Item = &'a str>) -> Vec<Filter> {
    let ids: Vec<String> = ids.map(str::to_string).collect();
    ids.chunks(FILTER_VALUES_PER_CALL)
        .map(|chunk| Filter::builder().name(name).set_values(Some(chunk.to_vec())).build())
        .collect()
}

/// The instances in a DescribeInstances answer.
fn instance_statuses(output: &DescribeInstancesOutput) -> Vec<InstanceStatus> {
    output
        .reservations()
        .iter()
        .flat_map(|reservation| reservation.instances())
        .filter_map(|instance| {
            let state = match instance.state()?.name()? {
                InstanceStateName::Pending => InstanceState::Pending,
                InstanceStateName::Running => InstanceState::Running,
                InstanceStateName::Stopping => InstanceState::Stopping,
                InstanceStateName::Stopped => InstanceState::Stopped,
                InstanceStateName::ShuttingDown => InstanceState::ShuttingDown,
                InstanceStateName::Terminated => InstanceState::Terminated,
                _ => InstanceState::Pending,
            };
            let reason = instance.state_reason().and_then(|reason| match (reason.code(), reason.message()) {
                (Some(code), Some(message)) if message.starts_with(code) => Some(message.to_string()),
                (Some(code), Some(message)) => Some(format!("{code}: {message}")),
                (code, message) => code.or(message).map(str::to_string),
            });
            Some(InstanceStatus {
                id: InstanceId(instance.instance_id()?.to_string()),
                state,
                public_ip: instance.public_ip_address().map(str::to_string),
                private_ip: instance.private_ip_address().map(str::to_string),
                public_dns: instance.public_dns_name().filter(|name| !name.is_empty()).map(str::to_string),
                private_dns: instance.private_dns_name().filter(|name| !name.is_empty()).map(str::to_string),
                state_reason: reason,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use aws_sdk_ec2::error::ConnectorError;
    use aws_sdk_ec2::operation::create_image::CreateImageError;

    use super::*;

    fn kind_of(failure: ConnectorError) -> ErrorKind {
        let error: SdkError<CreateImageError, HttpResponse> = SdkError::dispatch_failure(failure);
        sdk_error(&Region::new("us-west-2"), Action::CreateImage, error).kind
    }

    /// SSM answering the Session Manager calls: a local HTTP server that answers each request by its
    /// `X-Amz-Target` from `answers` (status, JSON body), and records each request's target and body.
    struct SsmStub {
        endpoint: String,
        requests: Arc<std::sync::Mutex<Vec<(String, String)>>>,
    }

    impl SsmStub {
        fn start(answers: Vec<(&'static str, u16, &'static str)>) -> SsmStub {
            use std::io::{BufRead, BufReader, Read, Write};
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let endpoint = format!("http://{}", listener.local_addr().unwrap());
            let requests = Arc::new(std::sync::Mutex::new(Vec::new()));
            let recorded = Arc::clone(&requests);
            // The stub stops by itself: it accepts for 30 s, and a connection left idle for 10 s is closed.
            listener.set_nonblocking(true).unwrap();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            std::thread::spawn(move || {
                while std::time::Instant::now() < deadline {
                    let mut stream = match listener.accept() {
                        Ok((stream, _)) => stream,
                        Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(std::time::Duration::from_millis(10));
                            continue;
                        }
                        Err(_) => return,
                    };
                    stream.set_nonblocking(false).unwrap();
                    stream.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    // Keep-alive requests on one connection are read in turn.
                    loop {
                        let (mut target, mut length) = (String::new(), 0usize);
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            break;
                        }
                        loop {
                            line.clear();
                            if reader.read_line(&mut line).is_err() {
                                return;
                            }
                            let header = line.trim_end();
                            if header.is_empty() {
                                break;
                            }
                            let (name, value) = header.split_once(':').unwrap();
                            match name.to_ascii_lowercase().as_str() {
                                "x-amz-target" => target = value.trim().trim_start_matches("AmazonSSM.").to_string(),
                                "content-length" => length = value.trim().parse().unwrap(),
                                _ => {}
                            }
                        }
                        let mut body = vec![0; length];
                        reader.read_exact(&mut body).unwrap();
                        // The Nth request of an action takes its Nth answer (the last one again after that).
                        let asked = {
                            let mut recorded = recorded.lock().unwrap();
                            recorded.push((target.clone(), String::from_utf8(body).unwrap()));
                            recorded.iter().filter(|(action, _)| *action == target).count()
                        };
                        let matching: Vec<_> = answers.iter().filter(|(action, _, _)| *action == target).collect();
                        let (status, answer) = matching
                            .get((asked - 1).min(matching.len().saturating_sub(1)))
                            .map(|(_, status, answer)| (*status, *answer))
                            .unwrap_or((500, "{}"));
                        let head = format!(
                            "HTTP/1.1 {status} X\r\nContent-Type: application/x-amz-json-1.1\r\nContent-Length: {}\r\n\r\n",
                            answer.len()
                        );
                        stream.write_all(head.as_bytes()).unwrap();
                        stream.write_all(answer.as_bytes()).unwrap();
                    }
                }
            });
            SsmStub { endpoint, requests }
        }

        /// An adapter region whose SSM client talks to the stub (static test credentials, no retries).
        fn region(&self) -> AwsRegion {
            use aws_credential_types::Credentials;
            let region = Region::new("us-west-2");
            let credentials = Credentials::new("AKIDTEST", "secret", None, None, "test");
            let sdk = aws_config::SdkConfig::builder()
                .behavior_version(BehaviorVersion::latest())
                .region(aws_config::Region::new("us-west-2"))
                .endpoint_url(&self.endpoint)
                .credentials_provider(aws_credential_types::provider::SharedCredentialsProvider::new(credentials))
                .retry_config(RetryConfig::disabled())
                .build();
            let limits = ApiLimits::new(
                &crate::config::ApiRates::default(),
                crate::cloud::retry::Policy::THROTTLED,
                crate::cloud::limiter::Pacing::Fixed,
            );
            AwsRegion {
                region: region.clone(),
                client: Client::new(&sdk),
                kms: aws_sdk_kms::Client::new(&sdk),
                ssm: aws_sdk_ssm::Client::new(&sdk),
                limiter: limits.region(&region),
            }
        }

        fn requests(&self) -> Vec<(String, String)> {
            self.requests.lock().unwrap().clone()
        }
    }

    /// The agent is online only when DescribeInstanceInformation, filtered by the instance's id, lists it
    /// `Online`; an empty list, another status or `InvalidInstanceId` (never registered) are "not yet".
    #[tokio::test]
    async fn the_agent_is_online_only_when_listed_online() {
        let instance = InstanceId::new("i-0123456789abcdef0");
        for (status, answer, online) in [
            (200, r#"{"InstanceInformationList":[{"InstanceId":"i-0123456789abcdef0","PingStatus":"Online"}]}"#, true),
            (
                200,
                r#"{"InstanceInformationList":[{"InstanceId":"i-0123456789abcdef0","PingStatus":"ConnectionLost"}]}"#,
                false,
            ),
            (200, r#"{"InstanceInformationList":[]}"#, false),
            (
                400,
                r#"{"__type":"InvalidInstanceId","message":"Instances [[i-0123456789abcdef0]] not in a valid state"}"#,
                false,
            ),
        ] {
            let stub = SsmStub::start(vec![("DescribeInstanceInformation", status, answer)]);
            assert_eq!(stub.region().agent_online(&instance).await.unwrap(), online, "{answer}");
            let requests = stub.requests();
            assert_eq!(requests.len(), 1);
            let sent: serde_json::Value = serde_json::from_str(&requests[0].1).unwrap();
            assert_eq!(
                sent["InstanceInformationFilterList"],
                serde_json::json!([{ "key": "InstanceIds", "valueSet": ["i-0123456789abcdef0"] }])
            );
        }
    }

    /// StartSession asks for `AWS-StartSSHSession` to the instance's port; its answer becomes an `SsmSession`
    /// (the token redacted in `Debug`); `TargetNotConnected` is not ready, and not retried by the limiter.
    #[tokio::test]
    async fn start_session_asks_for_the_ssh_document_and_target_not_connected_is_not_ready() {
        let instance = InstanceId::new("i-0123456789abcdef0");
        let stub = SsmStub::start(vec![(
            "StartSession",
            200,
            r#"{"SessionId":"fleetbake-0a1b2c3d4e5f","StreamUrl":"wss://ssmmessages.us-west-2.amazonaws.com/v1/data-channel/fleetbake-0a1b2c3d4e5f?role=publish_subscribe","TokenValue":"AAEAAsecret-token"}"#,
        )]);
        let session = stub.region().start_session(&instance, 2222).await.unwrap();
        assert_eq!(session.id.as_str(), "fleetbake-0a1b2c3d4e5f");
        assert!(session.stream_url.starts_with("wss://ssmmessages.us-west-2.amazonaws.com/"));
        assert_eq!(session.token.expose(), "AAEAAsecret-token");
        assert!(!format!("{session:?}").contains("secret-token"));
        let sent: serde_json::Value = serde_json::from_str(&stub.requests()[0].1).unwrap();
        assert_eq!(sent["Target"], "i-0123456789abcdef0");
        assert_eq!(sent["DocumentName"], "AWS-StartSSHSession");
        assert_eq!(sent["Parameters"], serde_json::json!({ "portNumber": ["2222"] }));

        let stub = SsmStub::start(vec![(
            "StartSession",
            400,
            r#"{"__type":"TargetNotConnected","message":"i-0123456789abcdef0 is not connected."}"#,
        )]);
        let refused = stub.region().start_session(&instance, 22).await.unwrap_err();
        assert_eq!((refused.kind, refused.code.as_deref()), (ErrorKind::NotReady, Some("TargetNotConnected")));
        assert_eq!(refused.action, Action::StartSession);
        assert_eq!(stub.requests().len(), 1, "not retried by the limiter");
    }

    /// GetParameterHistory over every page (oldest first, the data type kept), `ParameterNotFound` as no
    /// parameter; UnlabelParameterVersion sends the version and the labels.
    #[tokio::test]
    async fn a_parameters_history_is_read_over_every_page_and_labels_are_removed_by_version() {
        let stub = SsmStub::start(vec![
            (
                "GetParameterHistory",
                200,
                r#"{"Parameters":[{"Name":"/images/a","Version":1,"Value":"ami-1","DataType":"aws:ec2:image","Labels":["fleetbake-x","prod"]}],"NextToken":"page-2"}"#,
            ),
            (
                "GetParameterHistory",
                200,
                r#"{"Parameters":[{"Name":"/images/a","Version":2,"Value":"ami-2","DataType":"aws:ec2:image"}]}"#,
            ),
            (
                "GetParameterHistory",
                400,
                r#"{"__type":"ParameterNotFound","message":"Parameter /images/b not found."}"#,
            ),
            ("UnlabelParameterVersion", 200, r#"{"RemovedLabels":["fleetbake-x"],"InvalidLabels":[]}"#),
        ]);
        let region = stub.region();
        let history = region.parameter_history("/images/a").await.unwrap().unwrap();
        assert_eq!(history.data_type, "aws:ec2:image");
        let found: Vec<(u64, &str, Vec<String>)> =
            history.versions.iter().map(|v| (v.version, v.value.as_str(), v.labels.clone())).collect();
        assert_eq!(found, [(1, "ami-1", vec!["fleetbake-x".to_string(), "prod".to_string()]), (2, "ami-2", vec![])]);
        let second: serde_json::Value = serde_json::from_str(&stub.requests()[1].1).unwrap();
        assert_eq!(second["NextToken"], "page-2");
        assert_eq!(region.parameter_history("/images/b").await.unwrap(), None);
        region.unlabel_parameter_version("/images/a", 1, &["fleetbake-x".to_string()]).await.unwrap();
        let sent: serde_json::Value = serde_json::from_str(&stub.requests()[3].1).unwrap();
        assert_eq!(
            (sent["ParameterVersion"].as_i64(), &sent["Labels"]),
            (Some(1), &serde_json::json!(["fleetbake-x"]))
        );
    }

    /// TerminateSession of a session that ended, or that SSM no longer knows, is done; a refusal is not.
    #[tokio::test]
    async fn terminating_a_session_is_idempotent() {
        let session = SessionId::new("fleetbake-0a1b2c3d4e5f");
        let ended = SsmStub::start(vec![("TerminateSession", 200, r#"{"SessionId":"fleetbake-0a1b2c3d4e5f"}"#)]);
        ended.region().terminate_session(&session).await.unwrap();
        assert_eq!(ended.requests()[0].1, r#"{"SessionId":"fleetbake-0a1b2c3d4e5f"}"#);
        let unknown = SsmStub::start(vec![("TerminateSession", 400, r#"{"__type":"DoesNotExistException"}"#)]);
        unknown.region().terminate_session(&session).await.unwrap();
        let denied = SsmStub::start(vec![("TerminateSession", 400, r#"{"__type":"AccessDeniedException"}"#)]);
        let error = denied.region().terminate_session(&session).await.unwrap_err();
        assert_eq!(error.code.as_deref(), Some("AccessDeniedException"));
    }

    /// DescribeSessions asks for the active sessions to the instance (`State = Active`, filter `Target`) and
    /// follows every page; a session listed for another target is not taken.
    #[tokio::test]
    async fn active_sessions_lists_every_page_of_the_instances_active_sessions() {
        let instance = InstanceId::new("i-0123456789abcdef0");
        let stub = SsmStub::start(vec![
            (
                "DescribeSessions",
                200,
                r#"{"Sessions":[{"SessionId":"fleetbake-1","Target":"i-0123456789abcdef0","Status":"Connected"}],"NextToken":"page-2"}"#,
            ),
            (
                "DescribeSessions",
                200,
                r#"{"Sessions":[{"SessionId":"fleetbake-2","Target":"i-0123456789abcdef0","Status":"Disconnected"},{"SessionId":"other-3","Target":"i-0fedcba9876543210","Status":"Connected"}]}"#,
            ),
        ]);
        let sessions = stub.region().active_sessions(&instance).await.unwrap();
        assert_eq!(sessions, [SessionId::new("fleetbake-1"), SessionId::new("fleetbake-2")]);
        let sent: Vec<serde_json::Value> =
            stub.requests().iter().map(|(_, body)| serde_json::from_str(body).unwrap()).collect();
        assert_eq!(sent.len(), 2, "{sent:?}");
        for request in &sent {
            assert_eq!(request["State"], "Active");
            assert_eq!(request["Filters"], serde_json::json!([{ "key": "Target", "value": "i-0123456789abcdef0" }]));
        }
        assert!(sent[0]["NextToken"].is_null());
        assert_eq!(sent[1]["NextToken"], "page-2");
    }

    /// CreateGrant takes a key by id or ARN: an alias is resolved by DescribeKey first, and the grant names
    /// the grantee, the operations a cross-account copy needs and its name (KMS's idempotency); a key given by
    /// ARN is not described. RevokeGrant of a grant KMS no longer has (`NotFoundException`) is done.
    #[tokio::test]
    async fn a_grant_is_made_on_the_aliased_keys_arn_and_revoked_idempotently() {
        const ARN: &str = "arn:aws:kms:us-west-2:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab";
        const GRANT: &str = "0c237476b39f8bc44e45212e08498fbe3151305030726c0590dd8d3e9f3d6a60";
        let stub = SsmStub::start(vec![
            (
                "TrentService.DescribeKey",
                200,
                r#"{"KeyMetadata":{"KeyId":"1234abcd-12ab-34cd-56ef-1234567890ab","Arn":"arn:aws:kms:us-west-2:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab","Enabled":true,"KeyManager":"CUSTOMER"}}"#,
            ),
            (
                "TrentService.CreateGrant",
                200,
                r#"{"GrantId":"0c237476b39f8bc44e45212e08498fbe3151305030726c0590dd8d3e9f3d6a60","GrantToken":"token"}"#,
            ),
            ("TrentService.RevokeGrant", 200, "{}"),
            ("TrentService.RevokeGrant", 400, r#"{"__type":"NotFoundException","message":"Grant not found"}"#),
        ]);
        let region = stub.region();
        let grantee = "arn:aws:iam::222233334444:root";
        let grant = region.grant_key_use("alias/images", grantee, "fleetbake-web-copy").await.unwrap();
        assert_eq!(grant.as_str(), GRANT);
        region.grant_key_use(ARN, grantee, "fleetbake-web-copy").await.unwrap();
        region.revoke_key_grant(ARN, &grant).await.unwrap();
        region.revoke_key_grant(ARN, &grant).await.unwrap();

        let requests = stub.requests();
        let actions: Vec<&str> = requests.iter().map(|(action, _)| action.as_str()).collect();
        assert_eq!(
            actions,
            [
                "TrentService.DescribeKey",
                "TrentService.CreateGrant",
                "TrentService.CreateGrant",
                "TrentService.RevokeGrant",
                "TrentService.RevokeGrant"
            ]
        );
        let described: serde_json::Value = serde_json::from_str(&requests[0].1).unwrap();
        assert_eq!(described["KeyId"], "alias/images");
        for (_, body) in &requests[1..3] {
            let sent: serde_json::Value = serde_json::from_str(body).unwrap();
            assert_eq!(sent["KeyId"], ARN, "by the key's ARN, never the alias");
            assert_eq!(sent["GranteePrincipal"], grantee);
            assert_eq!(sent["Name"], "fleetbake-web-copy");
            let mut operations: Vec<&str> =
                sent["Operations"].as_array().unwrap().iter().map(|op| op.as_str().unwrap()).collect();
            operations.sort();
            assert_eq!(
                operations,
                [
                    "CreateGrant",
                    "Decrypt",
                    "DescribeKey",
                    "GenerateDataKeyWithoutPlaintext",
                    "ReEncryptFrom",
                    "ReEncryptTo"
                ]
            );
        }
        let revoked: serde_json::Value = serde_json::from_str(&requests[3].1).unwrap();
        assert_eq!((&revoked["KeyId"], &revoked["GrantId"]), (&serde_json::json!(ARN), &serde_json::json!(GRANT)));
    }

    /// A destination role STS refused is a permanent `AccessDenied` naming the role (only that account's calls
    /// fail), not the run's credentials failing (which stops the night); other credential failures stay so.
    #[test]
    fn a_refused_destination_role_is_access_denied_not_expired_credentials() {
        use aws_credential_types::provider::error::CredentialsError;
        let role = "arn:aws:iam::222233334444:role/image-distribution";
        let sts = CredentialsError::provider_error(
            "AccessDenied: User: arn:aws:iam::123456789012:user/ci is not authorized to perform: sts:AssumeRole",
        );
        let refused = RoleRefused::of(role, &sts).expect("STS said AccessDenied");
        let failure = ConnectorError::other(Box::new(CredentialsError::provider_error(refused)), None);
        let error: SdkError<CreateImageError, HttpResponse> = SdkError::dispatch_failure(failure);
        let error = sdk_error(&Region::new("us-east-1"), Action::CopyImage, error);
        assert_eq!((error.kind, error.code.as_deref()), (ErrorKind::Permanent, Some("AccessDenied")));
        let hint = crate::cloud::hints::hint(&error).unwrap();
        assert!(hint.starts_with(&format!("the role `{role}` could not be assumed")), "{hint}");

        let offline = CredentialsError::provider_error("dispatch failure: connection refused");
        assert!(RoleRefused::of(role, &offline).is_none());
        let failure = ConnectorError::other(Box::new(offline), None);
        assert_eq!(kind_of(failure), ErrorKind::Credentials);
    }

    /// A place of an account no `[[distribution]]` names never acts as the run's own account: every call there
    /// is refused (no request leaves), as a role STS refused.
    #[tokio::test]
    async fn a_place_of_an_account_without_a_role_is_refused_not_the_own_account() {
        use aws_credential_types::Credentials;
        let stub = SsmStub::start(Vec::new());
        let base = aws_config::defaults(BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .endpoint_url(&stub.endpoint)
            .credentials_provider(Credentials::new("AKIDTEST", "secret", None, None, "test"))
            .retry_config(RetryConfig::disabled())
            .load()
            .await;
        let limits = Arc::new(ApiLimits::new(
            &crate::config::ApiRates::default(),
            crate::cloud::retry::Policy::THROTTLED,
            crate::cloud::limiter::Pacing::Fixed,
        ));
        let cloud = AwsCloud {
            sdk: base,
            base: None,
            limits,
            regions: DashMap::new(),
            distribution_roles: BTreeMap::new(),
            run_id: RunId::new(chrono::Utc::now(), 1),
            accounts: DashMap::new(),
        };
        let place = Place { account: Account::Id("999988887777".into()), region: Region::new("us-east-1") };
        let error = cloud.place(&place).describe_key("alias/images").await.unwrap_err();
        assert_eq!((error.kind, error.code.as_deref()), (ErrorKind::Permanent, Some("AccessDenied")), "{error}");
        assert!(error.message.contains("999988887777"), "{error}");
        assert!(stub.requests().is_empty(), "nothing sent as the own account: {:?}", stub.requests());
    }
    /// Through the SDK: STS refusing a destination account's role (its XML error) fails a call in that account
    /// as a permanent `AccessDenied` naming the role, before anything reaches the service.
    #[tokio::test]
    async fn sts_refusing_a_destination_role_fails_its_calls_as_access_denied() {
        use aws_credential_types::Credentials;
        const ROLE: &str = "arn:aws:iam::222233334444:role/image-distribution";
        const REFUSAL: &str =
            "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error><Type>Sender</Type>\
            <Code>AccessDenied</Code><Message>User: arn:aws:iam::123456789012:user/ci is not authorized to perform: \
            sts:AssumeRole on resource: arn:aws:iam::222233334444:role/image-distribution</Message></Error>\
            <RequestId>fleetbake-test</RequestId></ErrorResponse>";
        // STS's query protocol has no X-Amz-Target: the stub files it under "".
        let stub = SsmStub::start(vec![("", 403, REFUSAL)]);
        // Loaded (not built) so it has the time source and sleep AssumeRoleProvider needs.
        let base = aws_config::defaults(BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .endpoint_url(&stub.endpoint)
            .credentials_provider(Credentials::new("AKIDTEST", "secret", None, None, "test"))
            .retry_config(RetryConfig::disabled())
            .load()
            .await;
        let role = DistributionRole {
            role: ROLE.into(),
            session: "fleetbake-test".into(),
            sdk: base.clone(),
            provider: tokio::sync::OnceCell::new(),
        };
        let acting = base
            .into_builder()
            .credentials_provider(aws_credential_types::provider::SharedCredentialsProvider::new(role))
            .build();
        let limits = ApiLimits::new(
            &crate::config::ApiRates::default(),
            crate::cloud::retry::Policy::THROTTLED,
            crate::cloud::limiter::Pacing::Fixed,
        );
        let east = Region::new("us-east-1");
        let region = region_clients(&acting, &east, limits.region(&east));
        let error = region.describe_key("alias/images").await.unwrap_err();
        assert_eq!((error.kind, error.code.as_deref()), (ErrorKind::Permanent, Some("AccessDenied")), "{error}");
        assert!(error.message.contains(&format!("sts:AssumeRole on resource: {ROLE}")), "{error}");
        let requests = stub.requests();
        assert!(
            !requests.is_empty()
                && requests.iter().all(|(target, body)| target.is_empty() && body.contains("Action=AssumeRole")),
            "{requests:?}"
        );
    }

    /// A connection closed before the answer came is what hyper reports as neither io nor timeout ("other"):
    /// it is a dropped connection, retried like one; a request the client could not build is not.
    #[test]
    fn a_dropped_connection_is_transient_and_a_user_error_is_not() {
        let closed = "connection closed before message completed";
        assert_eq!(kind_of(ConnectorError::other(closed.into(), None)), ErrorKind::Transient);
        assert_eq!(kind_of(ConnectorError::io("connection reset by peer".into())), ErrorKind::Transient);
        assert_eq!(kind_of(ConnectorError::user("invalid URI".into())), ErrorKind::Permanent);
    }
}
