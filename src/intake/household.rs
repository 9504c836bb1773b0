//! The household rules of the seed, as a pure function over plain values.
//!
//! * No household given → a household is created and the case is its head.
//! * Household given, `head_of_household` true → the case becomes head, replacing the old one.
//! * Household given, `head_of_household` false → the case joins; it becomes head only when the
//!   household has no case yet (a household MUST have a head).

/// Where a new case goes, decided from the request and the household's current head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// No household was given: create one with this case as its head.
    NewHousehold,
    /// Join an existing household whose head stays.
    Join { household: i64 },
    /// Join a household that has no case yet: the case becomes its head whatever was asked.
    JoinAsOnlyCase { household: i64 },
    /// Join and take over as head from `previous`.
    ReplaceHead { household: i64, previous: i64 },
}

impl Placement {
    /// Whether the case is the household's head once placed.
    pub fn is_head(self) -> bool {
        !matches!(self, Placement::Join { .. })
    }

    /// The head this placement displaced, if any.
    pub fn previous_head(self) -> Option<i64> {
        match self {
            Placement::ReplaceHead { previous, .. } => Some(previous),
            _ => None,
        }
    }
}

/// Decides the placement of a case asking for `household` (if any) with `wants_head`, where
/// `current_head` is that household's head at this moment (`None` when it has no case).
pub fn place(household: Option<i64>, wants_head: bool, current_head: Option<i64>) -> Placement {
    match (household, current_head) {
        (None, _) => Placement::NewHousehold,
        (Some(household), None) => Placement::JoinAsOnlyCase { household },
        (Some(household), Some(previous)) if wants_head => Placement::ReplaceHead {
            household,
            previous,
        },
        (Some(household), Some(_)) => Placement::Join { household },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_household_creates_one_and_heads_it() {
        for wants_head in [true, false] {
            let p = place(None, wants_head, None);
            assert_eq!(p, Placement::NewHousehold);
            assert!(p.is_head());
        }
    }

    #[test]
    fn head_true_replaces_the_previous_head() {
        let p = place(Some(7), true, Some(70));
        assert_eq!(
            p,
            Placement::ReplaceHead {
                household: 7,
                previous: 70
            }
        );
        assert!(p.is_head());
        assert_eq!(p.previous_head(), Some(70));
    }

    #[test]
    fn head_false_joins_without_changing_the_head() {
        let p = place(Some(7), false, Some(70));
        assert_eq!(p, Placement::Join { household: 7 });
        assert!(!p.is_head());
        assert_eq!(p.previous_head(), None);
    }

    #[test]
    fn the_only_case_becomes_head_even_when_false() {
        let p = place(Some(7), false, None);
        assert_eq!(p, Placement::JoinAsOnlyCase { household: 7 });
        assert!(p.is_head());
    }

    #[test]
    fn any_sequence_keeps_exactly_one_head() {
        // Replays every combination of three requests on one household and checks that the
        // tracked head is always the last case that was placed as head.
        for mask in 0..8u8 {
            let mut head = Some(1);
            for (i, bit) in (0..3).enumerate() {
                let case_id = 10 + i as i64;
                let p = place(Some(5), mask & (1 << bit) != 0, head);
                if p.is_head() {
                    head = Some(case_id);
                }
                assert!(head.is_some());
                assert_eq!(p.is_head(), mask & (1 << bit) != 0);
            }
        }
    }
}
