//! How the rules that matched a candidate become its score.
//!
//! Matching is split in two on purpose. *Blocking* decides which existing cases are
//! candidates at all: an equality of one key per rule (`MatchKeys`, the SSN's HMAC), looked
//! up by index in one statement. *Scoring* decides how alike a candidate is, from the rules
//! it matched; that is this module, behind the [`Scorer`] trait.
//!
//! # How a probabilistic model would plug in
//!
//! A Fellegi–Sunter model would implement [`Scorer`] (taking the candidate's compared fields
//! rather than only the rule names, so the trait would grow a method or an argument). For each
//! field — SSN, first name, last name, date of birth, street address — it keeps two
//! probabilities estimated from reviewed pairs (or by EM on unreviewed ones): *m*, that the
//! field agrees when the two records are the same person, and *u*, that it agrees by chance
//! between different people. A pair's weight is the sum over fields of log2(m/u) where the
//! field agrees and log2((1−m)/(1−u)) where it disagrees (partial agreement, such as a name
//! within an edit distance, gets its own level). The total is a log-likelihood ratio; with a
//! prior λ it maps to a probability, p = 1 / (1 + 2^−(w + log2(λ/(1−λ)))), which is the same
//! kind of number in (0, 1] that the duplicate policy's threshold compares.
//!
//! Blocking stays as it is: the model scores only the candidates the same keys find, so the
//! lookup, its indexes and the advisory locks do not change, and stored keys stay valid. The
//! rules remain the reason a candidate is reported.

use crate::intake::matching::Rule;

/// Scores a candidate from the rules it matched: a number in (0, 1], or 0 for no rule.
pub trait Scorer {
    fn score(&self, rules: &[Rule]) -> f64;
}

/// The service's weights, one per rule: how likely a match by that rule alone is the same
/// person. Rules are combined as independent evidence (noisy-or): the candidate is a different
/// person only if every rule that matched is a coincidence, so
/// `score = 1 − Π (1 − weight)` over the distinct rules matched, rounded to two decimals.
///
/// | rules matched                       | score |
/// |-------------------------------------|-------|
/// | ssn                                 | 0.95  |
/// | name_dob                            | 0.85  |
/// | last_name_dob_address               | 0.60  |
/// | name_dob + last_name_dob_address    | 0.94  |
/// | ssn + last_name_dob_address         | 0.98  |
/// | ssn + name_dob                      | 0.99  |
/// | all three                           | 1.00  |
///
/// A unit value with the weights as constants: the same for every network, so that a score
/// means the same thing wherever a policy's threshold is set. Weights per network, if they
/// are ever wanted, would make this a struct with fields.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RuleWeights;

impl RuleWeights {
    /// The same SSN: rarely a coincidence, but typos and shared numbers within a family happen.
    pub const SSN: f64 = 0.95;
    /// The same first and last name (nicknames and swaps considered) and date of birth.
    pub const NAME_DOB: f64 = 0.85;
    /// The same last name and date of birth at one address: also twins, or a shared surname
    /// in a shelter's address.
    pub const LAST_NAME_DOB_ADDRESS: f64 = 0.6;

    /// The weight of one rule.
    pub const fn weight(rule: Rule) -> f64 {
        match rule {
            Rule::Ssn => Self::SSN,
            Rule::NameDob => Self::NAME_DOB,
            Rule::LastNameDobAddress => Self::LAST_NAME_DOB_ADDRESS,
        }
    }
}

impl Scorer for RuleWeights {
    fn score(&self, rules: &[Rule]) -> f64 {
        // Each rule counts once, however often the caller lists it: repeating the same
        // evidence is not more evidence.
        let miss: f64 = Rule::ALL
            .iter()
            .filter(|r| rules.contains(r))
            .map(|&r| 1.0 - Self::weight(r))
            .product();
        let p = ((1.0 - miss) * 100.0).round() / 100.0;
        p.clamp(0.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn score(rules: &[Rule]) -> f64 {
        RuleWeights.score(rules)
    }

    #[test]
    fn no_rule_scores_zero() {
        assert_eq!(score(&[]), 0.0);
    }

    #[test]
    fn values_of_every_combination() {
        use Rule::*;
        assert_eq!(score(&[Ssn]), 0.95);
        assert_eq!(score(&[NameDob]), 0.85);
        assert_eq!(score(&[LastNameDobAddress]), 0.6);
        assert_eq!(score(&[NameDob, LastNameDobAddress]), 0.94);
        assert_eq!(score(&[Ssn, LastNameDobAddress]), 0.98);
        assert_eq!(score(&[Ssn, NameDob]), 0.99);
        assert_eq!(score(&[Ssn, NameDob, LastNameDobAddress]), 1.0);
    }

    #[test]
    fn order_and_repeats_do_not_matter() {
        use Rule::*;
        assert_eq!(
            score(&[LastNameDobAddress, Ssn]),
            score(&[Ssn, LastNameDobAddress])
        );
        assert_eq!(score(&[NameDob, NameDob, NameDob]), score(&[NameDob]));
    }

    #[test]
    fn more_rules_never_lower_the_score() {
        // Every subset of the rules against every superset of it.
        let subsets: Vec<Vec<Rule>> = (0u8..8)
            .map(|mask| {
                Rule::ALL
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| mask & (1 << i) != 0)
                    .map(|(_, r)| *r)
                    .collect()
            })
            .collect();
        for a in &subsets {
            let s = score(a);
            assert!((0.0..=1.0).contains(&s));
            assert_eq!(s > 0.0, !a.is_empty());
            for b in &subsets {
                if a.iter().all(|r| b.contains(r)) {
                    assert!(score(b) >= s, "{b:?} scores below {a:?}");
                }
            }
        }
    }

    #[test]
    fn weights_are_probabilities() {
        for r in Rule::ALL {
            let w = RuleWeights::weight(r);
            assert!(w > 0.0 && w < 1.0);
        }
        // Callers that hold a `Default` scorer get these weights.
        fn default_of<T: Default>() -> T {
            T::default()
        }
        assert_eq!(
            default_of::<RuleWeights>().score(&[Rule::Ssn]),
            RuleWeights::SSN
        );
    }
}
