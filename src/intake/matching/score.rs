//! How the rules that matched a candidate become its score.

use crate::intake::matching::Rule;

/// Scores a candidate from the rules it matched: a number in (0, 1].
pub trait Scorer {
    fn score(&self, rules: &[Rule]) -> f64;
}

/// A weight per rule, combined as independent evidence.
#[derive(Debug, Clone, Copy, Default)]
pub struct RuleWeights;

impl Scorer for RuleWeights {
    fn score(&self, rules: &[Rule]) -> f64 {
        let miss: f64 = rules
            .iter()
            .map(|r| match r {
                Rule::Ssn => 0.05,
                Rule::NameDob => 0.15,
                Rule::LastNameDobAddress => 0.3,
            })
            .product();
        ((1.0 - miss) * 100.0).round() / 100.0
    }
}
