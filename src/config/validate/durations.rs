//! A duration written without a unit (`deprecate_after = "90"`, as Packer's and many tools' numbers of seconds
//! or days are) is refused with the unit its key's range calls for, so the error says `90d` where days are
//! meant rather than `90s`.

use super::spans::{KeyPath, Segment};

/// The scale a duration key's sensible values are on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum DurationScale {
    /// `[fleet] deprecate_after` (a minute to 10 years; images are retired after weeks or months),
    /// `[retention] logs` (14 days by default).
    Days,
    /// `keep_failed` (a failed build kept to look at), `[sim] credentials.expires_after` (a session's life).
    Hours,
    /// `[aws] duration`: AWS's `DurationSeconds` (900 to 43,200), which Packer and the CLI take as a number.
    Seconds,
    /// Timeouts and waits: `[ssh] timeout`, `host_key_wait`, `provisioner_timeout`, a provisioner's `timeout`,
    /// `[limits] image_timeout`, `capacity_patience`, and the `[sim]` table's durations.
    Minutes,
}

impl DurationScale {
    /// The scale of the key `path` ends in.
    pub(super) fn of(path: &KeyPath) -> DurationScale {
        let key = path.segments().iter().rev().find_map(|segment| match segment {
            Segment::Key(key) => Some(key.as_str()),
            Segment::Index(_) => None,
        });
        match key {
            Some("deprecate_after" | "logs") => DurationScale::Days,
            Some("keep_failed" | "expires_after") => DurationScale::Hours,
            Some("duration") if path.segments().first() == Some(&Segment::Key("aws".to_string())) => {
                DurationScale::Seconds
            }
            _ => DurationScale::Minutes,
        }
    }

    /// `number` with this scale's unit, and the other units: `` `90d` (days; or `s`, `m`, `h`) ``.
    pub(super) fn example(self, number: &str) -> String {
        let (unit, name) = match self {
            DurationScale::Days => ("d", "days"),
            DurationScale::Hours => ("h", "hours"),
            DurationScale::Seconds => ("s", "seconds"),
            DurationScale::Minutes => ("m", "minutes"),
        };
        format!("`{number}{unit}` ({name})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_duration_key_has_the_scale_its_range_calls_for() {
        let root = KeyPath::root();
        let scale = |path: KeyPath| DurationScale::of(&path);
        assert_eq!(scale(root.key("fleet").key("deprecate_after")), DurationScale::Days);
        assert_eq!(scale(root.key("retention").key("logs")), DurationScale::Days);
        assert_eq!(scale(root.key("matrix").key("keep_failed")), DurationScale::Hours);
        assert_eq!(scale(root.key("sim").key("credentials").key("expires_after")), DurationScale::Hours);
        assert_eq!(scale(root.key("aws").key("duration")), DurationScale::Seconds);
        assert_eq!(scale(root.key("ssh").key("timeout")), DurationScale::Minutes);
        assert_eq!(
            scale(root.key("flavor").index(0).key("provisioners").index(1).key("timeout")),
            DurationScale::Minutes
        );
        assert_eq!(DurationScale::Days.example("90"), "`90d` (days)");
    }
}
