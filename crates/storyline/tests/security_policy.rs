//! SECURITY.md gives a real reporting route: the repository's private vulnerability reporting, and no invented
//! address (a mailbox at a reserved or placeholder domain reaches nobody, and a reporter who trusts it goes
//! unheard).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

fn security_md() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../SECURITY.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The text of the `## Reporting a vulnerability` section, up to the next `## ` heading.
fn reporting_section(doc: &str) -> &str {
    let start =
        doc.find("\n## Reporting a vulnerability\n").expect("SECURITY.md has a `## Reporting a vulnerability` section");
    let body = &doc[start + 1..];
    let end = body[3..].find("\n## ").map_or(body.len(), |i| i + 3);
    &body[..end]
}

/// Every `local@domain` in `text` (a word with one `@` and a dot after it).
fn email_addresses(text: &str) -> Vec<String> {
    text.split(|c: char| c.is_whitespace() || "`()<>[],;:\"'".contains(c))
        .map(|w| w.trim_end_matches('.'))
        .filter(|w| {
            let mut parts = w.splitn(2, '@');
            matches!((parts.next(), parts.next()), (Some(local), Some(domain)) if !local.is_empty() && domain.contains('.'))
        })
        .map(str::to_owned)
        .collect()
}

#[test]
fn vulnerabilities_are_reported_through_the_repositorys_private_vulnerability_reporting() {
    let doc = security_md();
    let section = reporting_section(&doc);
    assert!(section.contains("private vulnerability reporting"), "the section names the route:\n{section}");
    assert!(section.contains("\"Report a vulnerability\""), "the section says which button to press:\n{section}");
    assert!(section.contains("/security/advisories/new"), "the section gives the route's address:\n{section}");
    assert!(section.contains("do not open a public issue"), "the section says not to report in public:\n{section}");
}

#[test]
fn the_security_policy_names_no_invented_address() {
    let doc = security_md();
    let addresses = email_addresses(&doc);
    assert!(
        addresses.is_empty(),
        "SECURITY.md names mail addresses {addresses:?}; the reporting route is the repository's private vulnerability reporting"
    );
    // Reserved and placeholder domains (RFC 2606, RFC 6761) reach nobody: none in the reporting route. (Examples
    // elsewhere, such as a command's `--url https://storyline.example.com`, are not places to report to.)
    let section = reporting_section(&doc);
    for placeholder in [".invalid", ".example", "example.com", "example.org", "example.net", ".localhost"] {
        let found = section.lines().find(|l| l.contains(placeholder));
        assert!(found.is_none(), "the reporting section points at a placeholder domain: {found:?}");
    }
}

#[test]
fn the_address_finder_finds_addresses() {
    assert_eq!(email_addresses("or by email to `security@storyline.invalid`."), ["security@storyline.invalid"]);
    assert!(email_addresses("a @mention, user@localhost and a@b").is_empty());
}
