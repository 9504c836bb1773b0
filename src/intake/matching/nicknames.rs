//! Common nicknames and their formal first names, so that "Bob Smith" and "Robert Smith" get
//! the same name key.
//!
//! The table is this service's own, and deliberately conservative: a nickname is listed only
//! when it stands for one formal name in the populations intake serves (English and Spanish
//! names). Ambiguous ones are left out — "al" (Albert, Alfred, Alan), "bert" (Albert,
//! Robert, Herbert), "jamie", "terry", "nate", "kim", "meg", "frank", "beto" — because a wrong
//! entry makes two different people look alike, while a missing one only loses a match that
//! the SSN or address rule may still make. A few common ones are a documented choice rather than
//! unambiguous: "pat" → patricia (not patrick), "chris" → christopher, "alex" → alexander,
//! "sam" → samuel, "ted" → edward, "rick" → richard; both people in such a pair still need the
//! same last name and date of birth to match.
//!
//! Spelling variants of one name share its entry (catherine, kathryn → katherine; stephen →
//! steven; geoffrey → jeffrey). Changing the table changes the keys of the names it touches:
//! stored keys of those cases must be recomputed from the stored columns
//! (`case-intake duplicates reindex`, through `MatchKeys::from_parts`) or they stop matching
//! new intakes.

/// (nickname, formal name), sorted by nickname for [`canonical`]'s binary search; every entry
/// is already normalized (`normalize::name`), and no formal name is itself a nickname, so
/// `canonical` is idempotent.
static NICKNAMES: &[(&str, &str)] = &[
    ("abbie", "abigail"),
    ("abby", "abigail"),
    ("alex", "alexander"),
    ("andy", "andrew"),
    ("babs", "barbara"),
    ("barb", "barbara"),
    ("becca", "rebecca"),
    ("becky", "rebecca"),
    ("ben", "benjamin"),
    ("benji", "benjamin"),
    ("benny", "benjamin"),
    ("beth", "elizabeth"),
    ("betsy", "elizabeth"),
    ("betty", "elizabeth"),
    ("bill", "william"),
    ("billy", "william"),
    ("bob", "robert"),
    ("bobbie", "robert"),
    ("bobby", "robert"),
    ("catherine", "katherine"),
    ("cathryn", "katherine"),
    ("cathy", "katherine"),
    ("charlie", "charles"),
    ("chayo", "rosario"),
    ("chris", "christopher"),
    ("chucho", "jesus"),
    ("chuck", "charles"),
    ("chuy", "jesus"),
    ("cindy", "cynthia"),
    ("concha", "concepcion"),
    ("conchita", "concepcion"),
    ("dan", "daniel"),
    ("danny", "daniel"),
    ("dave", "david"),
    ("davey", "david"),
    ("deb", "deborah"),
    ("debbie", "deborah"),
    ("debby", "deborah"),
    ("debra", "deborah"),
    ("dick", "richard"),
    ("dot", "dorothy"),
    ("dottie", "dorothy"),
    ("doug", "douglas"),
    ("ed", "edward"),
    ("eddie", "edward"),
    ("eddy", "edward"),
    ("elisabeth", "elizabeth"),
    ("eliza", "elizabeth"),
    ("fred", "frederick"),
    ("freddie", "frederick"),
    ("freddy", "frederick"),
    ("geoffrey", "jeffrey"),
    ("greg", "gregory"),
    ("hank", "henry"),
    ("jack", "john"),
    ("jake", "jacob"),
    ("jeff", "jeffrey"),
    ("jen", "jennifer"),
    ("jenn", "jennifer"),
    ("jenny", "jennifer"),
    ("jim", "james"),
    ("jimmy", "james"),
    ("joe", "joseph"),
    ("joey", "joseph"),
    ("johnny", "john"),
    ("jon", "jonathan"),
    ("josh", "joshua"),
    ("judy", "judith"),
    ("kat", "katherine"),
    ("kate", "katherine"),
    ("katharine", "katherine"),
    ("kathryn", "katherine"),
    ("kathy", "katherine"),
    ("katie", "katherine"),
    ("ken", "kenneth"),
    ("kenny", "kenneth"),
    ("kitty", "katherine"),
    ("lalo", "eduardo"),
    ("larry", "lawrence"),
    ("laurence", "lawrence"),
    ("liz", "elizabeth"),
    ("lizzie", "elizabeth"),
    ("lizzy", "elizabeth"),
    ("lola", "dolores"),
    ("lupe", "guadalupe"),
    ("lupita", "guadalupe"),
    ("maggie", "margaret"),
    ("manny", "manuel"),
    ("manolo", "manuel"),
    ("marge", "margaret"),
    ("margie", "margaret"),
    ("matt", "matthew"),
    ("matty", "matthew"),
    ("meche", "mercedes"),
    ("memo", "guillermo"),
    ("mickey", "michael"),
    ("mike", "michael"),
    ("mikey", "michael"),
    ("nacho", "ignacio"),
    ("ned", "edward"),
    ("nick", "nicholas"),
    ("nicky", "nicholas"),
    ("nicolas", "nicholas"),
    ("paca", "francisca"),
    ("paco", "francisco"),
    ("pam", "pamela"),
    ("pancha", "francisca"),
    ("pancho", "francisco"),
    ("paquita", "francisca"),
    ("pat", "patricia"),
    ("patsy", "patricia"),
    ("patty", "patricia"),
    ("peggy", "margaret"),
    ("pepe", "jose"),
    ("pete", "peter"),
    ("phil", "philip"),
    ("phillip", "philip"),
    ("quique", "enrique"),
    ("rafa", "rafael"),
    ("ray", "raymond"),
    ("rich", "richard"),
    ("richie", "richard"),
    ("rick", "richard"),
    ("ricky", "richard"),
    ("rob", "robert"),
    ("robbie", "robert"),
    ("robby", "robert"),
    ("ron", "ronald"),
    ("ronnie", "ronald"),
    ("sam", "samuel"),
    ("sammy", "samuel"),
    ("stephen", "steven"),
    ("steve", "steven"),
    ("stevie", "steven"),
    ("sue", "susan"),
    ("susie", "susan"),
    ("suzie", "susan"),
    ("suzy", "susan"),
    ("ted", "edward"),
    ("teddy", "edward"),
    ("tim", "timothy"),
    ("timmy", "timothy"),
    ("tom", "thomas"),
    ("tommy", "thomas"),
    ("tono", "antonio"),
    ("tony", "anthony"),
    ("tricia", "patricia"),
    ("trish", "patricia"),
    ("vicki", "victoria"),
    ("vicky", "victoria"),
    ("wally", "walter"),
    ("walt", "walter"),
    ("will", "william"),
    ("willie", "william"),
    ("willy", "william"),
    ("zach", "zachary"),
    ("zack", "zachary"),
];

/// The formal name of a normalized first name (`normalize::name`), or the name itself when it
/// is not a known nickname. A binary search in a static table: it runs on every intake, so it
/// allocates nothing but the returned `String`.
pub fn canonical(name: &str) -> String {
    match NICKNAMES.binary_search_by(|(nick, _)| (*nick).cmp(name)) {
        Ok(i) => NICKNAMES[i].1,
        Err(_) => name,
    }
    .to_owned()
}

#[cfg(test)]
mod tests {
    use chrono::NaiveDate;

    use super::*;
    use crate::intake::matching::MatchKeys;
    use crate::intake::matching::normalize;

    /// Every group of the table: formal name, nicknames and variants.
    const GROUPS: &[(&str, &[&str])] = &[
        (
            "robert",
            &["bob", "bobby", "bobbie", "rob", "robbie", "robby"],
        ),
        ("william", &["bill", "billy", "will", "willie", "willy"]),
        (
            "elizabeth",
            &[
                "liz",
                "lizzie",
                "lizzy",
                "beth",
                "betty",
                "betsy",
                "eliza",
                "elisabeth",
            ],
        ),
        ("james", &["jim", "jimmy"]),
        ("michael", &["mike", "mikey", "mickey"]),
        (
            "katherine",
            &[
                "kate",
                "katie",
                "kathy",
                "kat",
                "catherine",
                "cathy",
                "kathryn",
                "katharine",
                "cathryn",
                "kitty",
            ],
        ),
        ("thomas", &["tom", "tommy"]),
        ("richard", &["dick", "rick", "ricky", "rich", "richie"]),
        ("margaret", &["peggy", "maggie", "marge", "margie"]),
        ("susan", &["sue", "susie", "suzie", "suzy"]),
        ("anthony", &["tony"]),
        ("christopher", &["chris"]),
        ("daniel", &["dan", "danny"]),
        ("david", &["dave", "davey"]),
        ("joseph", &["joe", "joey"]),
        ("john", &["jack", "johnny"]),
        ("nicholas", &["nick", "nicky", "nicolas"]),
        ("samuel", &["sam", "sammy"]),
        ("steven", &["steve", "stevie", "stephen"]),
        ("alexander", &["alex"]),
        ("edward", &["ed", "eddie", "eddy", "ted", "teddy", "ned"]),
        ("andrew", &["andy"]),
        ("patricia", &["pat", "patty", "patsy", "trish", "tricia"]),
        ("jennifer", &["jen", "jenn", "jenny"]),
        ("abigail", &["abby", "abbie"]),
        ("jose", &["pepe"]),
        ("francisco", &["paco", "pancho"]),
        ("guadalupe", &["lupe", "lupita"]),
        ("jesus", &["chuy", "chucho"]),
        ("guillermo", &["memo"]),
        ("ignacio", &["nacho"]),
        ("eduardo", &["lalo"]),
        ("concepcion", &["concha", "conchita"]),
        ("benjamin", &["ben", "benny", "benji"]),
        ("charles", &["charlie", "chuck"]),
        ("deborah", &["deb", "debbie", "debby", "debra"]),
        ("dorothy", &["dot", "dottie"]),
        ("frederick", &["fred", "freddie", "freddy"]),
        ("gregory", &["greg"]),
        ("jacob", &["jake"]),
        ("jeffrey", &["jeff", "geoffrey"]),
        ("joshua", &["josh"]),
        ("kenneth", &["ken", "kenny"]),
        ("lawrence", &["larry", "laurence"]),
        ("matthew", &["matt", "matty"]),
        ("peter", &["pete"]),
        ("philip", &["phil", "phillip"]),
        ("raymond", &["ray"]),
        ("ronald", &["ron", "ronnie"]),
        ("timothy", &["tim", "timmy"]),
        ("victoria", &["vicky", "vicki"]),
        ("walter", &["walt", "wally"]),
        ("zachary", &["zach", "zack"]),
        ("douglas", &["doug"]),
        ("henry", &["hank"]),
        ("jonathan", &["jon"]),
        ("barbara", &["barb", "babs"]),
        ("cynthia", &["cindy"]),
        ("pamela", &["pam"]),
        ("rebecca", &["becky", "becca"]),
        ("judith", &["judy"]),
        ("manuel", &["manny", "manolo"]),
        ("enrique", &["quique"]),
        ("rosario", &["chayo"]),
        ("dolores", &["lola"]),
        ("francisca", &["paca", "pancha", "paquita"]),
        ("rafael", &["rafa"]),
        ("antonio", &["tono"]),
        ("mercedes", &["meche"]),
    ];

    fn dob() -> Option<NaiveDate> {
        NaiveDate::from_ymd_opt(1984, 3, 17)
    }

    fn name_key(first: &str, last: &str) -> Option<i64> {
        MatchKeys::from_parts(first, last, dob(), None).name
    }

    #[test]
    fn table_is_sorted_normalized_and_idempotent() {
        assert!(
            NICKNAMES.windows(2).all(|w| w[0].0 < w[1].0),
            "sorted, no repeats"
        );
        for (nick, formal) in NICKNAMES {
            assert_eq!(normalize::name(nick), *nick);
            assert_eq!(normalize::name(formal), *formal);
            assert_eq!(canonical(formal), *formal, "{formal} is itself a nickname");
        }
    }

    #[test]
    fn groups_cover_the_table() {
        let listed: usize = GROUPS.iter().map(|(_, nicks)| nicks.len()).sum();
        assert_eq!(listed, NICKNAMES.len());
        for (formal, nicks) in GROUPS {
            for nick in *nicks {
                assert_eq!(canonical(nick), *formal, "{nick}");
            }
        }
    }

    #[test]
    fn unknown_names_are_themselves() {
        for n in ["", "robert", "zelda", "al", "bert", "kim", "ximena", "a"] {
            assert_eq!(canonical(n), n);
        }
    }

    #[test]
    fn every_group_gives_one_name_key_both_ways() {
        for (formal, nicks) in GROUPS {
            let formal_key = name_key(formal, "Smith");
            assert!(formal_key.is_some());
            for nick in *nicks {
                // The nickname and the formal name, in either order of the two intakes, and
                // with the first and last names swapped on one of them.
                assert_eq!(name_key(nick, "Smith"), formal_key, "{nick} / {formal}");
                assert_eq!(formal_key, name_key(nick, "Smith"), "{formal} / {nick}");
                assert_eq!(name_key("Smith", nick), formal_key, "swapped {nick}");
                assert_eq!(name_key(&nick.to_uppercase(), "SMITH"), formal_key);
            }
        }
    }

    #[test]
    fn nicknames_do_not_join_different_people() {
        assert_ne!(name_key("Bob", "Smith"), name_key("Bill", "Smith"));
        assert_ne!(name_key("Bob", "Smith"), name_key("Robert", "Smyth"));
        let other_day = NaiveDate::from_ymd_opt(1984, 3, 18);
        assert_ne!(
            MatchKeys::from_parts("Bob", "Smith", other_day, None).name,
            name_key("Robert", "Smith")
        );
    }

    #[test]
    fn accented_nicknames_fold_first() {
        assert_eq!(name_key("Toño", "Pérez"), name_key("Antonio", "Perez"));
        assert_eq!(name_key("Pepe", "Núñez"), name_key("José", "Nunez"));
        assert_eq!(name_key("Concha", "Ruiz"), name_key("Concepción", "Ruiz"));
        assert_eq!(name_key("Chuy", "Ruiz"), name_key("Jesús", "Ruiz"));
    }
}
