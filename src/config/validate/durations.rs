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
    /// `[aws] duration`: AWS's `DurationSeconds` (900 to 43,200), which Packer and the CLI take as a number;
    /// the `[sim]` durations whose defaults are seconds (`boot` 60s, `ssh_ready`, `stop`, `terminate` 30s,
    /// `test` 3m as 180s, `agent_online` 90s, `consistency_lag` 3s, `console_keys`, `snapshot_in_use`,
    /// `grant_lag` 0s).
    Seconds,
    /// `[sim] api_latency` (80ms by default).
    Milliseconds,
    /// Timeouts and waits: `[ssh] timeout`, `host_key_wait`, `provisioner_timeout`, a provisioner's `timeout`,
    /// `[limits] image_timeout`, `capacity_patience`, and the `[sim]` durations whose defaults are minutes
    /// (`provision`, `create_image`, `copy_image`, `spot.interrupt_after`).
    Minutes,
}

impl DurationScale {
    /// The scale of the key `path` ends in.
    pub(super) fn of(path: &KeyPath) -> DurationScale {
        let key = path.segments().iter().rev().find_map(|segment| match segment {
            Segment::Key(key) => Some(key.as_str()),
            Segment::Index(_) => None,
        });
        let table = match path.segments().first() {
            Some(Segment::Key(table)) => table.as_str(),
            _ => "",
        };
        match (table, key) {
            (_, Some("deprecate_after" | "logs")) => DurationScale::Days,
            (_, Some("keep_failed" | "expires_after")) => DurationScale::Hours,
            ("aws", Some("duration")) => DurationScale::Seconds,
            ("sim", Some("api_latency")) => DurationScale::Milliseconds,
            (
                "sim",
                Some(
                    "boot" | "ssh_ready" | "stop" | "terminate" | "test" | "console_keys" | "agent_online"
                    | "consistency_lag" | "snapshot_in_use" | "grant_lag",
                ),
            ) => DurationScale::Seconds,
            _ => DurationScale::Minutes,
        }
    }

    /// `number` with this scale's unit, and the other units: `` `90d` (days; or `s`, `m`, `h`) ``.
    pub(super) fn example(self, number: &str) -> String {
        let (unit, name) = match self {
            DurationScale::Days => ("d", "days"),
            DurationScale::Hours => ("h", "hours"),
            DurationScale::Seconds => ("s", "seconds"),
            DurationScale::Milliseconds => ("ms", "milliseconds"),
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
        let sim = |key: &str| scale(root.key("sim").key(key));
        assert_eq!(sim("api_latency"), DurationScale::Milliseconds);
        for key in [
            "boot",
            "ssh_ready",
            "stop",
            "terminate",
            "test",
            "console_keys",
            "agent_online",
            "consistency_lag",
            "snapshot_in_use",
            "grant_lag",
        ] {
            assert_eq!(sim(key), DurationScale::Seconds, "[sim] {key}");
        }
        for key in ["provision", "create_image", "copy_image"] {
            assert_eq!(sim(key), DurationScale::Minutes, "[sim] {key}");
        }
        assert_eq!(scale(root.key("sim").key("spot").key("interrupt_after")), DurationScale::Minutes);
        // Only `[sim]`'s: a flavor's provisioner `timeout` or `test` elsewhere keeps its own scale.
        assert_eq!(scale(root.key("flavor").index(0).key("test")), DurationScale::Minutes);
        assert_eq!(DurationScale::Days.example("90"), "`90d` (days)");
        assert_eq!(DurationScale::Milliseconds.example("80"), "`80ms` (milliseconds)");
        assert_eq!(DurationScale::Seconds.example("3"), "`3s` (seconds)");
    }
}
