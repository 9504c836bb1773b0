//! The counties and households the fresh intakes name, and the check that they belong
//! to the caller's network.

use std::collections::{HashMap, HashSet};

use crate::domain::error::FieldErrors;
use crate::store;
use crate::store::auth::Caller;
use crate::store::ids::InNetwork;

use super::authenticate::Callers;
use super::claim::Slot;
use super::prepare::Prepared;

/// The counties and households the fresh intakes name, scoped to their callers'
/// networks.
pub(super) struct References {
    pub(super) counties: Vec<InNetwork>,
    pub(super) households: Vec<InNetwork>,
}

impl References {
    pub(super) fn find(prepared: &[Prepared<'_>], slots: &[Slot], callers: &Callers) -> Self {
        let mut refs = Self {
            counties: Vec::new(),
            households: Vec::new(),
        };
        for (i, p) in prepared.iter().enumerate() {
            if let (true, Some(c), None) = (
                slots[i].is_decided_here(),
                callers.of(p),
                &p.env.forced_failure(),
            ) {
                if let Some(county) = p.county {
                    refs.counties.push(InNetwork {
                        id: county,
                        network: c.network_id(),
                    });
                }
                if let Some(h) = p.household {
                    refs.households.push(InNetwork {
                        id: h,
                        network: c.network_id(),
                    });
                }
            }
        }
        refs
    }
}

/// The county and household must exist in the caller's network. A reference into another
/// network gets the same message as a missing one, so nothing about that network leaks.
pub(super) fn check_references(
    p: &Prepared,
    caller: Caller,
    counties: &HashSet<InNetwork>,
    households: &HashMap<i64, store::HouseholdState>,
) -> FieldErrors {
    let mut fields = FieldErrors::new();
    if let Some(county) = p.county
        && !counties.contains(&InNetwork {
            id: county,
            network: caller.network_id(),
        })
    {
        fields.insert(
            "street_county".into(),
            vec!["is not a county of your network".into()],
        );
    }
    if let Some(h) = p.household
        && households
            .get(&h)
            .is_none_or(|s| s.network_id != caller.network_id())
    {
        fields.insert(
            "household".into(),
            vec!["is not a household of your network".into()],
        );
    }
    fields
}
