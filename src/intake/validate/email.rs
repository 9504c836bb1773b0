//! A deliberately simple e-mail syntax check.
//!
//! Full RFC 5322 accepts addresses no case worker can use (quoted local parts, IP literals), so
//! this accepts the common `local@host.tld` shape and leaves deliverability to the mail system.

pub(crate) const NOT_AN_EMAIL: &str = "must be a valid email address";

/// The RFC 5321 limit on the part before the `@`.
const MAX_LOCAL_LEN: usize = 64;

/// Checks the shape; the address is stored as given, so nothing is returned.
pub(crate) fn check_email(s: &str) -> Result<(), &'static str> {
    if s.chars().any(char::is_whitespace) {
        return Err(NOT_AN_EMAIL);
    }
    let Some((local, domain)) = s.split_once('@') else {
        return Err(NOT_AN_EMAIL);
    };
    if local.is_empty() || local.len() > MAX_LOCAL_LEN || domain.contains('@') {
        return Err(NOT_AN_EMAIL);
    }
    if !domain.contains('.') || !domain.split('.').all(valid_label) {
        return Err(NOT_AN_EMAIL);
    }
    Ok(())
}

/// A DNS label: letters, digits and hyphens, not starting or ending with a hyphen.
fn valid_label(label: &str) -> bool {
    !label.is_empty()
        && !label.starts_with('-')
        && !label.ends_with('-')
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_common_addresses() {
        for good in [
            "john.smith@example.org",
            "a@b.co",
            "first+tag@mail.example-host.com",
            "UPPER@EXAMPLE.ORG",
            "x@1.2.3.4",
            "o'brien@example.ie",
        ] {
            assert_eq!(check_email(good), Ok(()), "{good}");
        }
        let local64 = format!("{}@example.org", "a".repeat(64));
        assert_eq!(check_email(&local64), Ok(()));
    }

    #[test]
    fn rejects_malformed_addresses() {
        let local65 = format!("{}@example.org", "a".repeat(65));
        for bad in [
            "",
            "plainaddress",
            "@example.org",
            "john@",
            "john@localhost",
            "john@@example.org",
            "john@doe@example.org",
            "john smith@example.org",
            "john@exa mple.org",
            "john@example.org\t",
            "john@.example.org",
            "john@example.org.",
            "john@example..org",
            "john@-example.org",
            "john@example-.org",
            "john@exam_ple.org",
            "john@exämple.org",
            "[email protected]",
            local65.as_str(),
        ] {
            assert_eq!(check_email(bad), Err(NOT_AN_EMAIL), "{bad}");
        }
    }
}
