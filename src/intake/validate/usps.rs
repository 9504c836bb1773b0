//! USPS address parts: two-letter state codes and ZIP / ZIP+4 codes.

pub(crate) const NOT_A_STATE: &str = "must be a USPS state code";
pub(crate) const NOT_A_ZIP: &str = "must be a ZIP code (12345 or 12345-6789)";

/// Every code USPS delivers to: the 50 states, DC, the territories and freely associated states,
/// and the military "states" (AA Americas, AE Europe etc., AP Pacific). Sorted for binary search.
const STATE_CODES: [&str; 63] = [
    "AA", "AE", "AK", "AL", "AP", "AR", "AS", "AZ", "CA", "CO", "CT", "DC", "DE", "FL", "FM", "GA",
    "GU", "HI", "IA", "ID", "IL", "IN", "KS", "KY", "LA", "MA", "MD", "ME", "MH", "MI", "MN", "MO",
    "MP", "MS", "MT", "NC", "ND", "NE", "NH", "NJ", "NM", "NV", "NY", "OH", "OK", "OR", "PA", "PR",
    "PW", "RI", "SC", "SD", "TN", "TX", "UM", "UT", "VA", "VI", "VT", "WA", "WI", "WV", "WY",
];

/// Accepts a code in any case and returns it uppercase, the form USPS and the store use.
pub(crate) fn parse_state(s: &str) -> Result<String, &'static str> {
    let upper = s.to_ascii_uppercase();
    if STATE_CODES.binary_search(&upper.as_str()).is_ok() {
        Ok(upper)
    } else {
        Err(NOT_A_STATE)
    }
}

/// Accepts exactly `12345` or `12345-6789` with ASCII digits, returned unchanged.
pub(crate) fn parse_zip(s: &str) -> Result<String, &'static str> {
    let b = s.as_bytes();
    let digits = |r: &[u8]| r.iter().all(u8::is_ascii_digit);
    let ok = match b.len() {
        5 => digits(b),
        10 => digits(&b[..5]) && b[5] == b'-' && digits(&b[6..]),
        _ => false,
    };
    if ok { Ok(s.to_owned()) } else { Err(NOT_A_ZIP) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_table_is_sorted_unique_and_complete() {
        assert!(STATE_CODES.windows(2).all(|w| w[0] < w[1]));
        // 50 states + DC + 9 territories/associated states + 3 military.
        assert_eq!(STATE_CODES.len(), 50 + 1 + 9 + 3);
        for code in [
            "AS", "GU", "MP", "PR", "VI", "UM", "FM", "MH", "PW", "AA", "AE", "AP", "DC",
        ] {
            assert!(STATE_CODES.contains(&code), "{code}");
        }
    }

    #[test]
    fn states_are_case_insensitive_and_uppercased() {
        assert_eq!(parse_state("NY"), Ok("NY".to_owned()));
        assert_eq!(parse_state("ny"), Ok("NY".to_owned()));
        assert_eq!(parse_state("Pr"), Ok("PR".to_owned()));
        assert_eq!(parse_state("ae"), Ok("AE".to_owned()));
    }

    #[test]
    fn unknown_states_are_rejected() {
        for bad in ["", "N", "NYC", "XX", "New York", "ZZ", "CZ", "ＮＹ", "N Y"] {
            assert_eq!(parse_state(bad), Err(NOT_A_STATE), "{bad}");
        }
    }

    #[test]
    fn zip_codes() {
        assert_eq!(parse_zip("12345"), Ok("12345".to_owned()));
        assert_eq!(parse_zip("00501"), Ok("00501".to_owned()));
        assert_eq!(parse_zip("12345-6789"), Ok("12345-6789".to_owned()));
        for bad in [
            "",
            "1234",
            "123456",
            "12345-678",
            "12345 6789",
            "123456789",
            "12345-67890",
            "abcde",
            "1234５",
            "12345-",
            "-12345",
        ] {
            assert_eq!(parse_zip(bad), Err(NOT_A_ZIP), "{bad}");
        }
    }
}
