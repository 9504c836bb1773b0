//! Possible-duplicate matching: the keys a person is indexed and probed by, and how the rules
//! that matched a candidate are scored. Pure: the window looks candidates up by these keys in
//! one statement (`store::matching`) and decides by the caller network's policy.
//!
//! Rules are deterministic and each is reported by name ([`Rule`]). A rule is an equality of
//! one *blocking key*, computed from normalized values (`normalize`, `nicknames`) and never
//! from a placeholder (`placeholders`). How matched rules become a score is the [`Scorer`]
//! trait's business (`score`), so that a probabilistic model can replace the weights without
//! touching the lookup (docs/duplicates.md).

pub mod nicknames;
pub mod normalize;
pub mod placeholders;
pub mod score;

use chrono::NaiveDate;
use sha2::{Digest, Sha256};

use crate::domain::case::CaseInput;
pub use crate::domain::matching::{Candidate, MatchKeys, Rule};

pub use score::{RuleWeights, Scorer};

impl MatchKeys {
    /// The keys of a case as validated: the name rule needs both names and a date of birth
    /// that is not a placeholder; the address rule the last name, that date and a street
    /// address that normalizes to something.
    pub fn of(case: &CaseInput) -> Self {
        Self::from_parts(
            &case.first_name,
            &case.last_name,
            case.date_of_birth,
            case.street_address.as_deref(),
        )
    }

    /// The keys of a person from the stored columns (also used to index cases written before
    /// matching existed).
    pub fn from_parts(
        first_name: &str,
        last_name: &str,
        date_of_birth: Option<NaiveDate>,
        street_address: Option<&str>,
    ) -> Self {
        let Some(dob) = date_of_birth.filter(|d| !placeholders::is_placeholder_dob(*d)) else {
            return Self::default();
        };
        let first = nicknames::canonical(&normalize::name(first_name));
        let last = nicknames::canonical(&normalize::name(last_name));
        let name = (!first.is_empty() && !last.is_empty()).then(|| {
            // Swapped first and last names give the same key: the pair is sorted.
            let (a, b) = if first <= last {
                (&first, &last)
            } else {
                (&last, &first)
            };
            digest("name_dob", &[&dob_text(dob), a, b])
        });
        let street = street_address
            .map(normalize::street_address)
            .unwrap_or_default();
        let surname = normalize::name(last_name);
        let address = (!street.is_empty() && !surname.is_empty()).then(|| {
            digest(
                "last_name_dob_address",
                &[&dob_text(dob), &surname, &street],
            )
        });
        Self { name, address }
    }
}

/// The SSN digits a case may be matched by: `None` for a placeholder.
pub fn matchable_ssn(case: &CaseInput) -> Option<&str> {
    let ssn = case.ss_number.as_ref()?;
    (!placeholders::is_placeholder_ssn(ssn.digits())).then(|| ssn.digits())
}

fn dob_text(d: NaiveDate) -> String {
    d.format("%Y-%m-%d").to_string()
}

/// A stable 64-bit digest of a rule's normalized parts (SHA-256, first 8 bytes): the same on
/// every machine and release, since stored keys are compared with new ones.
pub fn digest(rule: &str, parts: &[&str]) -> i64 {
    let mut h = Sha256::new();
    h.update(b"case-intake/match/");
    h.update(rule.as_bytes());
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p.as_bytes());
    }
    let bytes: [u8; 32] = h.finalize().into();
    i64::from_be_bytes(bytes[..8].try_into().expect("8 bytes"))
}

/// The advisory-lock key of one blocking key in one network: concurrent windows that could
/// match the same person take the same lock (`store::matching::lock_keys`) before looking.
pub fn lock_key(network: i64, rule: Rule, key: &[u8]) -> i64 {
    let mut h = Sha256::new();
    h.update(b"case-intake/match-lock/");
    h.update(network.to_be_bytes());
    h.update(rule.as_str().as_bytes());
    h.update(key);
    let bytes: [u8; 32] = h.finalize().into();
    i64::from_be_bytes(bytes[..8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use serde_json::{Map, Value, json};

    use super::*;
    use crate::intake::validate::validate;

    fn ymd(y: i32, m: u32, d: u32) -> Option<NaiveDate> {
        NaiveDate::from_ymd_opt(y, m, d)
    }

    fn keys(first: &str, last: &str, dob: Option<NaiveDate>, street: Option<&str>) -> MatchKeys {
        MatchKeys::from_parts(first, last, dob, street)
    }

    /// A case as validation builds it from a body with these fields.
    fn case(fields: Value) -> CaseInput {
        let Value::Object(body) = fields else {
            unreachable!("an object")
        };
        let today = NaiveDate::from_ymd_opt(2024, 6, 1).expect("a date");
        validate(&body, today).expect("a valid body").case
    }

    #[test]
    fn digest_is_pinned() {
        // Stored keys (`cases.match_name`, `cases.match_address`) are compared with keys
        // computed by later releases: if this value changes, every stored key is orphaned and
        // no existing case matches a new intake until all keys are recomputed. Change it only
        // together with such a recomputation (`case-intake duplicates reindex`). The value was
        // computed once from this derivation and checked against an independent SHA-256.
        assert_eq!(
            digest("name_dob", &["1984-03-17", "robert", "smith"]),
            -4_863_913_393_890_939_844
        );
        // Parts are length-prefixed, so moving a boundary changes the digest.
        assert_ne!(digest("r", &["ab", "c"]), digest("r", &["a", "bc"]));
        assert_ne!(digest("r", &["a"]), digest("s", &["a"]));
    }

    #[test]
    fn name_key_is_the_pinned_digest() {
        // The key is the digest of the date and the sorted, canonical names: a change to how
        // the parts are assembled orphans stored keys just like a change to `digest`.
        let k = keys("Bob", "Smith", ymd(1984, 3, 17), None);
        assert_eq!(
            k.name,
            Some(digest("name_dob", &["1984-03-17", "robert", "smith"]))
        );
    }

    #[test]
    fn names_agree_across_spellings_nicknames_and_order() {
        let dob = ymd(1984, 3, 17);
        let robert = keys("Robert", "Smith", dob, None).name;
        assert!(robert.is_some());
        assert_eq!(keys("Bob", "Smith", dob, None).name, robert);
        assert_eq!(keys("Smith", "Robert", dob, None).name, robert);
        assert_eq!(keys("Smith", "Bobby", dob, None).name, robert);
        assert_eq!(keys("  ROBERT ", "smith.", dob, None).name, robert);
        assert_eq!(
            keys("José", "O'Brien", dob, None).name,
            keys("jose", "obrien", dob, None).name
        );
        assert_eq!(
            keys("Mary-Ann", "Smith", dob, None).name,
            keys("Maryann", "Smith", dob, None).name
        );
    }

    #[test]
    fn different_people_get_different_keys() {
        let dob = ymd(1984, 3, 17);
        let k = keys("Robert", "Smith", dob, Some("123 Main St"));
        assert_ne!(keys("Robert", "Smith", ymd(1984, 3, 18), None).name, k.name);
        assert_ne!(keys("Robert", "Smyth", dob, None).name, k.name);
        assert_ne!(keys("Roberta", "Smith", dob, None).name, k.name);
        assert_ne!(
            keys("Robert", "Smith", dob, Some("124 Main St")).address,
            k.address
        );
        assert_ne!(
            keys("Robert", "Smith", ymd(1985, 3, 17), Some("123 Main St")).address,
            k.address
        );
        // The name and address keys of one person never collide with each other.
        assert_ne!(k.name, k.address);
    }

    #[test]
    fn address_key_needs_last_name_dob_and_a_street() {
        let dob = ymd(1990, 5, 1);
        let a = keys("Ana", "García", dob, Some("123 North Main Street, Apt. 4")).address;
        assert!(a.is_some());
        // The first name is not part of the rule: a relative at the address shares it.
        assert_eq!(keys("Ana", "Garcia", dob, Some("123 N Main St")).address, a);
        assert_eq!(
            keys("Luisa", "garcia", dob, Some("123 n. main st")).address,
            a
        );
        assert_eq!(keys("Ana", "García", dob, None).address, None);
        assert_eq!(keys("Ana", "García", dob, Some(" ,. ")).address, None);
        assert_eq!(keys("Ana", "", dob, Some("123 Main St")).address, None);
        assert_eq!(
            keys("Ana", "García", None, Some("123 Main St")).address,
            None
        );
    }

    #[test]
    fn no_keys_without_a_real_date_of_birth() {
        for dob in [
            None,
            ymd(1900, 1, 1),
            ymd(1901, 1, 1),
            ymd(1800, 1, 1),
            ymd(1970, 1, 1),
            ymd(2000, 1, 1),
            ymd(1895, 7, 9),
        ] {
            assert_eq!(
                keys("Robert", "Smith", dob, Some("123 Main St")),
                MatchKeys::default(),
                "{dob:?}"
            );
        }
        // January 1 of another year is a real birthday.
        let k = keys("Robert", "Smith", ymd(1985, 1, 1), Some("123 Main St"));
        assert!(k.name.is_some() && k.address.is_some());
    }

    #[test]
    fn no_name_key_when_a_name_folds_to_nothing() {
        let dob = ymd(1984, 3, 17);
        assert_eq!(keys("-", "Smith", dob, None).name, None);
        assert_eq!(keys("Robert", "🙂", dob, None).name, None);
    }

    #[test]
    fn keys_of_a_validated_case() {
        let c = case(json!({
            "first_name": "Bob",
            "last_name": "O'Brien",
            "date_of_birth": "1984-03-17",
            "street_address": "12 West Elm Avenue, Apt 3"
        }));
        assert_eq!(
            MatchKeys::of(&c),
            keys("Robert", "OBrien", ymd(1984, 3, 17), Some("12 W Elm Ave"))
        );
    }

    #[test]
    fn only_real_ssns_are_matchable() {
        let with_ssn = |ssn: &str| {
            let mut body = Map::new();
            body.insert("first_name".into(), json!("Ana"));
            body.insert("last_name".into(), json!("Ruiz"));
            body.insert("ss_number".into(), json!(ssn));
            case(Value::Object(body))
        };
        let c = with_ssn("123-45-6788");
        assert_eq!(matchable_ssn(&c), Some("123456788"));
        for placeholder in ["123-45-6789", "111-11-1111", "078-05-1120", "219-09-9999"] {
            assert_eq!(matchable_ssn(&with_ssn(placeholder)), None);
        }
        assert_eq!(
            matchable_ssn(&case(json!({"first_name": "A", "last_name": "B"}))),
            None
        );
    }

    #[test]
    fn lock_keys_separate_networks_and_rules() {
        let k = b"key";
        assert_eq!(lock_key(1, Rule::Ssn, k), lock_key(1, Rule::Ssn, k));
        assert_ne!(lock_key(1, Rule::Ssn, k), lock_key(2, Rule::Ssn, k));
        assert_ne!(lock_key(1, Rule::Ssn, k), lock_key(1, Rule::NameDob, k));
    }

    #[test]
    fn rules_have_their_wire_names() {
        for r in Rule::ALL {
            assert_eq!(serde_json::to_value(r).expect("json"), json!(r.as_str()));
        }
    }
}
