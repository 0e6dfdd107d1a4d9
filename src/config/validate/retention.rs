//! Warnings about `[retention]`: a rule that cannot remove anything is said, at its `file:line:column`, and
//! does not fail validation (the fleet is valid; it only does less than it reads).

use super::*;

/// What `validate` and `gc` warn about the fleet file, located as its errors are; none if the file cannot be
/// read again (its errors were said when it was loaded).
pub fn warnings(file: &Path, fleet: &Fleet) -> Vec<ConfigError> {
    let Ok(text) = std::fs::read_to_string(file) else { return Vec::new() };
    let Some(tree) = Node::parse(&text) else { return Vec::new() };
    locate_problems(file, &text, &tree, retention_warnings(fleet))
}

/// With `[sharing]` every image the fleet builds in this account is shared (tagged `fleetbake:shared`), and
/// with `shared = "leave"` (the default) gc deregisters no shared image: `keep` / `keep_days` can then retire
/// only failed images (and `[[distribution]]` accounts' copies, which are not shared).
fn retention_warnings(fleet: &Fleet) -> Vec<Problem> {
    let retention = &fleet.retention;
    let rule = match (retention.keep, retention.keep_days) {
        (Some(keep), _) => ("keep", format!("keep = {keep}")),
        (None, Some(days)) => ("keep_days", format!("keep_days = {days}")),
        (None, None) => return Vec::new(),
    };
    if !fleet.sharing.any() || retention.deregister_shared {
        return Vec::new();
    }
    let copies = if fleet.distributions.is_empty() {
        ""
    } else {
        " (only failed images, and the `[[distribution]]` accounts' copies)"
    };
    vec![Problem {
        path: KeyPath::root().key("retention").key(rule.0),
        message: format!(
            "`[sharing]` shares every image this account builds and `[retention] shared` is `leave` (the default), so `{}` deregisters none of them{copies}: set `shared = \"deregister\"` to retire shared images too (gc still spares those in use in this account)",
            rule.1
        ),
    }]
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLEET: &str = "[fleet]\nname = \"w\"\n\n[defaults]\ninstance_type = \"t3.micro\"\nssh_username = \"u\"\n\n\
                         [[flavor]]\nname = \"a\"\nsource_ami = { id = \"ami-1\" }\n\n[regions]\nus-west-2 = []\n";

    fn warned(extra: &str) -> Vec<String> {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("fleet.toml");
        std::fs::write(&path, format!("{FLEET}{extra}")).unwrap();
        let fleet = crate::config::load(&path).expect("the fleet is valid: a warning is not an error");
        warnings(&path, &fleet)
            .iter()
            .map(|warning| format!("{}:{}: `{}`", warning.line, warning.column, warning.key))
            .collect()
    }

    #[test]
    fn keep_over_shared_images_left_is_warned_at_its_line_and_fixed_by_deregister() {
        let sharing = "\n[sharing]\naccounts = [\"111122223333\"]\n\n[retention]\n";
        assert_eq!(warned(&format!("{sharing}keep = 3\n")), ["19:8: `retention.keep`"]);
        assert_eq!(warned(&format!("{sharing}keep_days = 30\n")), ["19:13: `retention.keep_days`"]);
        assert!(warned(&format!("{sharing}keep = 3\nshared = \"deregister\"\n")).is_empty());
        assert!(warned("\n[retention]\nkeep = 3\n").is_empty(), "no sharing: keep retires images");
        assert!(warned(sharing).is_empty(), "no rule: nothing to warn about");
    }
}
