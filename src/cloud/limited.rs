//! [`Limited`]: any cloud with the client's request buckets and retries in front of it — how the simulated
//! cloud is called. (The aws adapter puts its calls through the same [`RegionLimiter`] itself, since a retry
//! rebuilds the SDK request.)

use std::sync::Arc;

use async_trait::async_trait;

use super::*;
use crate::cloud::limiter::{ApiLimits, RegionLimiter};
use crate::config::{ImageFilter, Place, Region, SubnetLookup, Tags};

pub struct Limited {
    inner: Arc<dyn Cloud>,
    limits: Arc<ApiLimits>,
}

impl Limited {
    pub fn new(inner: Arc<dyn Cloud>, limits: Arc<ApiLimits>) -> Self {
        Limited { inner, limits }
    }
}

#[async_trait]
impl Cloud for Limited {
    fn region(&self, region: &Region) -> Arc<dyn RegionCloud> {
        Arc::new(LimitedRegion { inner: self.inner.region(region), limiter: self.limits.region(region) })
    }

    async fn caller_identity(&self) -> CloudResult<Identity> {
        let limiter = self.limits.region(&Region::new(super::aws::STS));
        limiter.call(Action::GetCallerIdentity, || self.inner.caller_identity()).await
    }

    async fn credentials(&self) -> CloudResult<CredentialsStatus> {
        self.inner.credentials().await
    }

    fn place(&self, place: &Place) -> Arc<dyn RegionCloud> {
        Arc::new(LimitedRegion { inner: self.inner.place(place), limiter: self.limits.place(place) })
    }

    /// One unit's resolution, counted (and retried) as one `ListChildren` call under the pseudo-region
    /// `organizations`: the simulated cloud answers the whole tree at once.
    async fn organization_unit_accounts(&self, unit: &str) -> CloudResult<Vec<String>> {
        let limiter = self.limits.region(&Region::new(super::ORGANIZATIONS));
        limiter.call(Action::ListChildren, || self.inner.organization_unit_accounts(unit)).await
    }
}

struct LimitedRegion {
    inner: Arc<dyn RegionCloud>,
    limiter: Arc<RegionLimiter>,
}

#[async_trait]
impl RegionCloud for LimitedRegion {
    fn region(&self) -> &Region {
        self.inner.region()
    }

    async fn find_images(&self, filter: &ImageFilter) -> CloudResult<Vec<ImageSummary>> {
        self.limiter.call(Action::DescribeImages, || self.inner.find_images(filter)).await
    }

    async fn describe_images(&self, ids: &[ImageId]) -> CloudResult<Vec<ImageStatus>> {
        self.limiter.call(Action::DescribeImages, || self.inner.describe_images(ids)).await
    }

    async fn find_subnets(&self, lookup: &SubnetLookup) -> CloudResult<Vec<Subnet>> {
        self.limiter.call(Action::DescribeSubnets, || self.inner.find_subnets(lookup)).await
    }

    async fn find_vpc(&self, vpc: VpcLookup<'_>) -> CloudResult<Option<Vpc>> {
        self.limiter.call(Action::DescribeVpcs, || self.inner.find_vpc(vpc)).await
    }

    async fn instance_type_offered(&self, instance_type: &str, zone: Option<&str>) -> CloudResult<bool> {
        self.limiter
            .call(Action::DescribeInstanceTypeOfferings, || self.inner.instance_type_offered(instance_type, zone))
            .await
    }

    async fn create_key_pair(&self, name: &KeyPairName, tags: &Tags) -> CloudResult<PrivateKey> {
        self.limiter.call(Action::CreateKeyPair, || self.inner.create_key_pair(name, tags)).await
    }

    async fn delete_key_pair(&self, name: &KeyPairName) -> CloudResult<()> {
        self.limiter.call(Action::DeleteKeyPair, || self.inner.delete_key_pair(name)).await
    }

    async fn create_security_group(
        &self,
        name: &str,
        description: &str,
        vpc: Option<&VpcId>,
        tags: &Tags,
    ) -> CloudResult<SecurityGroupId> {
        self.limiter
            .call(Action::CreateSecurityGroup, || self.inner.create_security_group(name, description, vpc, tags))
            .await
    }

    async fn authorize_ingress(&self, group: &SecurityGroupId, port: u16, from: &IngressSources) -> CloudResult<()> {
        self.limiter
            .call(Action::AuthorizeSecurityGroupIngress, || self.inner.authorize_ingress(group, port, from))
            .await
    }

    async fn delete_security_group(&self, group: &SecurityGroupId) -> CloudResult<()> {
        self.limiter.call(Action::DeleteSecurityGroup, || self.inner.delete_security_group(group)).await
    }

    async fn run_instance(&self, spec: &LaunchSpec) -> CloudResult<InstanceId> {
        self.limiter.call(Action::RunInstances, || self.inner.run_instance(spec)).await
    }

    async fn describe_instances(&self, ids: &[InstanceId]) -> CloudResult<Vec<InstanceStatus>> {
        self.limiter.call(Action::DescribeInstances, || self.inner.describe_instances(ids)).await
    }

    async fn console_output(&self, instance: &InstanceId) -> CloudResult<ConsoleOutput> {
        self.limiter.call(Action::GetConsoleOutput, || self.inner.console_output(instance)).await
    }

    async fn stop_instance(&self, id: &InstanceId) -> CloudResult<()> {
        self.limiter.call(Action::StopInstances, || self.inner.stop_instance(id)).await
    }

    async fn terminate_instance(&self, id: &InstanceId) -> CloudResult<()> {
        self.limiter.call(Action::TerminateInstances, || self.inner.terminate_instance(id)).await
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
        self.limiter
            .call(Action::CreateImage, || self.inner.create_image(instance, name, description, tags, snapshot_tags, of))
            .await
    }

    async fn copy_image(&self, spec: &CopySpec) -> CloudResult<ImageId> {
        self.limiter.call(Action::CopyImage, || self.inner.copy_image(spec)).await
    }

    async fn create_tags(&self, resources: &[String], tags: &Tags) -> CloudResult<()> {
        self.limiter.call(Action::CreateTags, || self.inner.create_tags(resources, tags)).await
    }

    async fn find_owned_images(&self, query: &ImageQuery) -> CloudResult<Vec<OwnedImage>> {
        self.limiter.call(Action::DescribeImages, || self.inner.find_owned_images(query)).await
    }

    async fn find_instances(&self, tags: &Tags) -> CloudResult<Vec<Tagged<InstanceId>>> {
        self.limiter.call(Action::DescribeInstances, || self.inner.find_instances(tags)).await
    }

    async fn find_security_groups(&self, tags: &Tags) -> CloudResult<Vec<Tagged<SecurityGroupId>>> {
        self.limiter.call(Action::DescribeSecurityGroups, || self.inner.find_security_groups(tags)).await
    }

    async fn find_key_pairs(&self, tags: &Tags) -> CloudResult<Vec<Tagged<KeyPairName>>> {
        self.limiter.call(Action::DescribeKeyPairs, || self.inner.find_key_pairs(tags)).await
    }

    async fn deregister_image(&self, id: &ImageId) -> CloudResult<()> {
        self.limiter.call(Action::DeregisterImage, || self.inner.deregister_image(id)).await
    }

    async fn delete_snapshot(&self, id: &SnapshotId) -> CloudResult<()> {
        self.limiter.call(Action::DeleteSnapshot, || self.inner.delete_snapshot(id)).await
    }

    async fn require_imdsv2(&self, image: &ImageId) -> CloudResult<()> {
        self.limiter.call(Action::ModifyImageAttribute, || self.inner.require_imdsv2(image)).await
    }

    async fn deprecate_image(&self, image: &ImageId, at: chrono::DateTime<chrono::Utc>) -> CloudResult<()> {
        self.limiter.call(Action::EnableImageDeprecation, || self.inner.deprecate_image(image, at)).await
    }

    async fn share_image(&self, image: &ImageId, with: &LaunchPermissions) -> CloudResult<()> {
        self.limiter.call(Action::ModifyImageAttribute, || self.inner.share_image(image, with)).await
    }

    async fn share_snapshot(&self, snapshot: &SnapshotId, accounts: &[String]) -> CloudResult<()> {
        self.limiter.call(Action::ModifySnapshotAttribute, || self.inner.share_snapshot(snapshot, accounts)).await
    }

    async fn describe_key(&self, key: &str) -> CloudResult<Option<KmsKey>> {
        self.limiter.call(Action::DescribeKey, || self.inner.describe_key(key)).await
    }

    async fn put_image_parameter(&self, name: &str, image: &ImageId) -> CloudResult<u64> {
        self.limiter.call(Action::PutParameter, || self.inner.put_image_parameter(name, image)).await
    }

    /// CreateLaunchTemplateVersion has no client token: every attempt (a retry after a lost answer too) first
    /// looks for the version an earlier one made, and reuses it.
    async fn launch_template_version(
        &self,
        name: &str,
        image: &ImageId,
        description: &str,
    ) -> CloudResult<(String, u64)> {
        let call = || async {
            if let Some(made) = self.launch_template_version_made(name, image, description).await? {
                return Ok(made);
            }
            self.inner.launch_template_version(name, image, description).await
        };
        self.limiter.call(Action::CreateLaunchTemplateVersion, call).await
    }

    async fn agent_online(&self, instance: &InstanceId) -> CloudResult<bool> {
        self.limiter.call(Action::DescribeInstanceInformation, || self.inner.agent_online(instance)).await
    }

    async fn start_session(&self, instance: &InstanceId, port: u16) -> CloudResult<SsmSession> {
        self.limiter.call(Action::StartSession, || self.inner.start_session(instance, port)).await
    }

    async fn terminate_session(&self, session: &SessionId) -> CloudResult<()> {
        self.limiter.call(Action::TerminateSession, || self.inner.terminate_session(session)).await
    }

    async fn active_sessions(&self, instance: &InstanceId) -> CloudResult<Vec<SessionId>> {
        self.limiter.call(Action::DescribeSessions, || self.inner.active_sessions(instance)).await
    }

    async fn parameter_history(&self, name: &str) -> CloudResult<Option<ParameterHistory>> {
        self.limiter.call(Action::GetParameterHistory, || self.inner.parameter_history(name)).await
    }

    async fn label_parameter_version(&self, name: &str, version: u64, label: &str) -> CloudResult<()> {
        let call = || self.inner.label_parameter_version(name, version, label);
        self.limiter.call(Action::LabelParameterVersion, call).await
    }

    async fn unlabel_parameter_version(&self, name: &str, version: u64, labels: &[String]) -> CloudResult<()> {
        let call = || self.inner.unlabel_parameter_version(name, version, labels);
        self.limiter.call(Action::UnlabelParameterVersion, call).await
    }

    async fn launch_template_id(&self, name: &str) -> CloudResult<Option<String>> {
        self.limiter.call(Action::DescribeLaunchTemplates, || self.inner.launch_template_id(name)).await
    }

    async fn launch_template_version_made(
        &self,
        name: &str,
        image: &ImageId,
        description: &str,
    ) -> CloudResult<Option<(String, u64)>> {
        let call = || self.inner.launch_template_version_made(name, image, description);
        self.limiter.call(Action::DescribeLaunchTemplateVersions, call).await
    }

    async fn image_block_public_access(&self) -> CloudResult<ImageBlockPublicAccess> {
        self.limiter.call(Action::GetImageBlockPublicAccessState, || self.inner.image_block_public_access()).await
    }

    async fn launch_permissions(&self, image: &ImageId) -> CloudResult<LaunchPermissions> {
        self.limiter.call(Action::DescribeImageAttribute, || self.inner.launch_permissions(image)).await
    }

    async fn unshare_image(&self, image: &ImageId, from: &LaunchPermissions) -> CloudResult<()> {
        self.limiter.call(Action::ModifyImageAttribute, || self.inner.unshare_image(image, from)).await
    }

    async fn snapshot_permissions(&self, snapshot: &SnapshotId) -> CloudResult<Vec<String>> {
        self.limiter.call(Action::DescribeSnapshotAttribute, || self.inner.snapshot_permissions(snapshot)).await
    }

    async fn unshare_snapshot(&self, snapshot: &SnapshotId, accounts: &[String]) -> CloudResult<()> {
        self.limiter.call(Action::ModifySnapshotAttribute, || self.inner.unshare_snapshot(snapshot, accounts)).await
    }

    async fn describe_regions(&self) -> CloudResult<Vec<RegionOptIn>> {
        self.limiter.call(Action::DescribeRegions, || self.inner.describe_regions()).await
    }

    async fn parameter(&self, name: &str) -> CloudResult<Option<ParameterVersion>> {
        self.limiter.call(Action::GetParameter, || self.inner.parameter(name)).await
    }

    async fn grant_key_use(&self, key: &str, grantee: &str, name: &str) -> CloudResult<KmsGrantId> {
        self.limiter.call(Action::CreateGrant, || self.inner.grant_key_use(key, grantee, name)).await
    }

    async fn revoke_key_grant(&self, key: &str, grant: &KmsGrantId) -> CloudResult<()> {
        self.limiter.call(Action::RevokeGrant, || self.inner.revoke_key_grant(key, grant)).await
    }

    async fn snapshot_keys(&self, snapshots: &[SnapshotId]) -> CloudResult<Vec<SnapshotKey>> {
        self.limiter.call(Action::DescribeSnapshots, || self.inner.snapshot_keys(snapshots)).await
    }

    async fn launch_template_images(&self) -> CloudResult<Vec<TemplateImage>> {
        self.limiter.call(Action::DescribeLaunchTemplateVersions, || self.inner.launch_template_images()).await
    }

    async fn instances_of_images(&self, images: &[ImageId]) -> CloudResult<Vec<ImageUser>> {
        self.limiter.call(Action::DescribeInstances, || self.inner.instances_of_images(images)).await
    }
    /// Paced as the CreateTags it ends with (the DescribeKeyPairs before it is one small read).
    async fn tag_key_pair(&self, name: &KeyPairName, tags: &Tags) -> CloudResult<()> {
        self.limiter.call(Action::CreateTags, || self.inner.tag_key_pair(name, tags)).await
    }
}
