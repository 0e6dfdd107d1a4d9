//! What the fleet file may put into an ssh argument or a line of the private ssh config file a bastion
//! connection reads: host names, user names and the paths ssh opens. Checked at validate (each problem at its
//! `file:line:column`), and again where the config file is written (`remote::ssh`), since a path resolved
//! against the fleet file's folder can bring in what the key itself did not hold.
//!
//! The rules, and why:
//! - No control character anywhere (a newline in an ssh config file starts a new directive, such as
//!   `ProxyCommand`, which ssh runs through the shell; a carriage return or escape can hide one in a log).
//! - Hosts and users are allow-listed: a host is a DNS name or an IP address (letters, digits, `.`, `-`, `_`,
//!   `:` for IPv6); a user is letters, digits, `.`, `_`, `-` and `@` (a directory user like
//!   `admin@corp.example`). Neither may start with `-` (ssh would take `-oProxyCommand=…` as an option) nor
//!   hold whitespace (a second word on a config line), `%` (ssh expands `%` tokens), `#` (a comment), quotes
//!   or backslashes (ssh's own quoting).
//! - Paths may hold spaces, quotes, backslashes and `%`: [`config_quoted`] writes them in double quotes with
//!   ssh's escapes (`\"`, `\\`) and `%` doubled. They may not hold `${` (ssh expands environment variables in
//!   the paths it reads, and has no escape for it) or a control character.

use std::path::Path;

/// Why `host` cannot be the host name or address ssh connects to (`[ssh] host`, `bastion.host`), if so.
pub fn host_problem(host: &str) -> Option<String> {
    word_problem(host, "a host name or IP address", |c| c.is_ascii_alphanumeric() || ".-_:".contains(c))
        .map(|why| format!("{why}; a host is a DNS name or an IP address: letters, digits, `.`, `-`, `_`, `:`"))
}

/// Why `user` cannot be the user ssh logs in as (`ssh_username`, `bastion.user`), if so.
pub fn user_problem(user: &str) -> Option<String> {
    word_problem(user, "a user name", |c| c.is_ascii_alphanumeric() || "._-@".contains(c))
        .map(|why| format!("{why}; a user name is letters, digits, `.`, `_`, `-`, `@`"))
}

/// Why `path` cannot be named in an ssh config file (`bastion.private_key_file`, `bastion.known_hosts`), if so.
pub fn path_problem(path: &Path) -> Option<String> {
    let text = path.to_str()?;
    if let Some(problem) = control_problem(text) {
        return Some(problem);
    }
    if text.contains("${") {
        return Some("holds `${`: ssh expands environment variables in the paths it reads".to_string());
    }
    None
}

/// Why ssh must not be run for this connection, if so: the instance's host and user, and the bastion's host,
/// user and paths as resolved (the check at validate saw them as written; the instance's address comes from
/// EC2). The last line of defence before an ssh argument or config line is written.
pub fn connection_problem(host: &str, user: &str, bastion: Option<&super::Bastion>) -> Option<String> {
    let named = |what: &str, value: &str, problem: Option<String>| {
        problem.map(|why| format!("refusing to run ssh: {what} `{}` {why}", value.escape_default()))
    };
    named("the host", host, host_problem(host)).or_else(|| named("the user", user, user_problem(user))).or_else(|| {
        let bastion = bastion?;
        named("the bastion host", &bastion.host, host_problem(&bastion.host))
            .or_else(|| named("the bastion user", &bastion.user, user_problem(&bastion.user)))
            .or_else(|| {
                let key = &bastion.private_key_file;
                named("the bastion key file", &key.to_string_lossy(), path_problem(key))
            })
            .or_else(|| {
                let super::BastionHostKey::KnownHostsFile(known_hosts) = &bastion.host_key else { return None };
                named("the bastion known_hosts file", &known_hosts.to_string_lossy(), path_problem(known_hosts))
            })
    })
}

/// `text` as one argument of an ssh config line: in double quotes, `"` and `\` escaped as ssh reads them, `%`
/// doubled (ssh expands `%` tokens in file names). For values [`host_problem`], [`user_problem`] and
/// [`path_problem`] passed; a control character is not made safe by quoting.
pub fn config_quoted(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('"');
    for c in text.chars() {
        match c {
            '"' | '\\' => {
                quoted.push('\\');
                quoted.push(c);
            }
            '%' => quoted.push_str("%%"),
            _ => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

/// Why `text` cannot be in an ssh config line if it holds a control character (a newline would start a directive
/// of its own).
fn control_problem(text: &str) -> Option<String> {
    let control = text.chars().find(|c| c.is_control())?;
    Some(format!(
        "holds a control character ({}): in ssh's config file it would end the line and start a directive of its own",
        control.escape_default()
    ))
}

/// The first problem of `text` as one ssh word of `what`: a control character, a leading `-`, whitespace,
/// then any character `allowed` refuses.
fn word_problem(text: &str, what: &str, allowed: impl Fn(char) -> bool) -> Option<String> {
    if let Some(problem) = control_problem(text) {
        return Some(problem);
    }
    if text.starts_with('-') {
        return Some("starts with `-`: ssh would take it for an option".to_string());
    }
    if text.chars().any(char::is_whitespace) {
        return Some("holds whitespace: ssh would read the rest as another argument".to_string());
    }
    let refused = text.chars().find(|&c| !allowed(c))?;
    Some(format!("`{refused}` cannot be in {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_names_or_addresses() {
        for host in ["bastion.example.com", "10.0.0.5", "::1", "fe80::1", "ip-10-0-0-5.ec2.internal", "b_1"] {
            assert_eq!(host_problem(host), None, "{host}");
        }
        let refused = |host: &str| host_problem(host).unwrap_or_else(|| panic!("{host:?} passed"));
        assert!(refused("b\nProxyCommand touch /tmp/x").starts_with("holds a control character (\\n)"));
        assert!(refused("b\r").starts_with("holds a control character (\\r)"));
        assert!(refused("-oProxyCommand=touch").starts_with("starts with `-`"));
        assert!(refused("b ProxyCommand").starts_with("holds whitespace"));
        assert!(refused("b\u{a0}c").starts_with("holds whitespace"));
        for (host, character) in [("b%h", '%'), ("b#x", '#'), ("b\"x", '"'), ("user@b", '@'), ("b\\x", '\\')] {
            assert!(refused(host).starts_with(&format!("`{character}` cannot be in a host name")), "{host}");
        }
    }

    #[test]
    fn users_are_plain_names() {
        for user in ["ec2-user", "ubuntu", "admin@corp.example", "svc.build_1"] {
            assert_eq!(user_problem(user), None, "{user}");
        }
        for user in ["a\nb", "-l", "ec2 user", "ec2%u", "a'b", "a;b", "ünï"] {
            assert!(user_problem(user).is_some(), "{user:?} passed");
        }
    }

    #[test]
    fn paths_may_hold_anything_quoting_carries() {
        for path in ["/home/me/My Keys/bastion", "/keys/100%/k", "/keys/a\"b\\c", "/keys/$HOME"] {
            assert_eq!(path_problem(Path::new(path)), None, "{path}");
        }
        assert!(path_problem(Path::new("/keys/k\nProxyCommand x")).unwrap().starts_with("holds a control"));
        assert!(path_problem(Path::new("/keys/${HOME}/k")).unwrap().starts_with("holds `${`"));
        assert_eq!(config_quoted("/a b/100%/\"q\"\\"), r#""/a b/100%%/\"q\"\\""#);
    }

    /// What the real ssh client reads back from a config file written with [`config_quoted`] (`ssh -G`
    /// prints the configuration it resolved, without connecting).
    #[test]
    fn the_ssh_client_reads_quoted_paths_back_as_written() {
        let directory = tempfile::tempdir().unwrap();
        let known_hosts = directory.path().join("known hosts, 100% \"ours\"");
        let config = directory.path().join("config");
        std::fs::write(
            &config,
            format!(
                "Host fleetbake-bastion\n  HostName b.example.com\n  UserKnownHostsFile {}\n",
                config_quoted(known_hosts.to_str().unwrap())
            ),
        )
        .unwrap();
        let output = std::process::Command::new("ssh")
            .arg("-G")
            .arg("-F")
            .arg(&config)
            .arg("fleetbake-bastion")
            .output()
            .expect("the ssh client runs");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let resolved = String::from_utf8_lossy(&output.stdout);
        let line = resolved.lines().find(|line| line.starts_with("userknownhostsfile ")).unwrap();
        assert!(line.contains(known_hosts.to_str().unwrap()), "{line}");
        assert!(resolved.lines().any(|line| line == "hostname b.example.com"), "{resolved}");
    }
}
