//! Folding names and street addresses to the form the matching keys are computed from.
//!
//! Both folds are total: any `&str` (empty, emoji, control characters, very long) gives a
//! `String`, never a panic, since they run on every intake before anything is stored. They
//! only drop or replace characters, so an input with no letters and no digits folds to "".

use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

/// A name folded for comparison: compatibility-decomposed (NFKD), accents (combining marks)
/// dropped, lowercase, a few letters NFKD leaves whole spelled out (ß → ss, æ → ae, ø → o, …),
/// and only letters and digits kept — punctuation, apostrophes, hyphens and all whitespace
/// vanish.
///
/// So "O'Brien" = "obrien", "Mary-Ann  Smith" → "maryannsmith", "José" = "jose" (composed or
/// decomposed), "MÜLLER" = "muller", "Strauß" = "strauss".
pub fn name(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    push_folded(&mut out, s);
    out
}

/// Appends the [`name`] fold of `s` to `out` (one buffer for the words of an address).
fn push_folded(out: &mut String, s: &str) {
    for c in s.nfkd() {
        if is_combining_mark(c) {
            continue;
        }
        // Lowercasing may give more than one char (e.g. 'İ' would, but NFKD has already split
        // its dot off); each is folded and filtered on its own.
        for l in c.to_lowercase() {
            if let Some(spelled) = spell_out(l) {
                out.push_str(spelled);
            } else if l.is_alphanumeric() && !is_combining_mark(l) {
                out.push(l);
            }
        }
    }
}

/// Lowercase letters that NFKD does not decompose into a base letter and a mark, with the
/// Latin spelling people type for them on a keyboard without them. Small on purpose: it covers
/// the letters of European names that intake forms see; everything else passes through.
fn spell_out(c: char) -> Option<&'static str> {
    Some(match c {
        'ß' => "ss",
        'æ' => "ae",
        'œ' => "oe",
        'ø' => "o",
        'ł' => "l",
        'đ' => "d",
        'ð' => "d",
        'þ' => "th",
        'ı' => "i",
        'ħ' => "h",
        'ŧ' => "t",
        'ŋ' => "n",
        'ƒ' => "f",
        'ĸ' => "k",
        _ => return None,
    })
}

/// A street line folded for the address rule: words split on whitespace and punctuation,
/// each folded like [`name`], USPS standard suffixes and directionals abbreviated
/// ("Street" → "st", "North" → "n"), ordinal words written as numbers ("First" → "1st"), a
/// unit designator after the street and everything after it dropped ("Apt. 4", "Suite 200",
/// "#4B"), and the words joined with no separator.
///
/// So "123 North Main Street, Apt. 4" = "123 N Main St" = "123 n. main st" → "123nmainst".
/// The unit is dropped because the rule compares buildings: the same person at the same
/// street number is often recorded with and without the apartment (the form has a separate
/// apartment field, which the rule does not use).
pub fn street_address(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut seen_street_word = false;
    for raw in words(s) {
        let word = name_of_word(raw);
        if word.is_empty() {
            continue;
        }
        // A designator starts the unit only after a word with a letter (the street name):
        // in "100 Floor Rd" or a line that is only "Apt 4" it is part of what there is.
        if seen_street_word && is_unit_designator(&word) {
            break;
        }
        if word == "#" {
            // A number sign before any street word ("#12") says nothing of the building.
            continue;
        }
        seen_street_word |= word.chars().any(char::is_alphabetic);
        out.push_str(abbreviation(&word).unwrap_or(&word));
    }
    out
}

/// The words of a street line: runs of letters, digits and combining marks (so a decomposed
/// accent does not split a word); '#' is a word of its own since it designates a unit.
fn words(s: &str) -> impl Iterator<Item = &str> {
    let mut rest = s;
    std::iter::from_fn(move || {
        let start = rest.find(|c: char| is_word_char(c) || c == '#')?;
        rest = &rest[start..];
        let len = if rest.starts_with('#') {
            1
        } else {
            rest.find(|c: char| !is_word_char(c)).unwrap_or(rest.len())
        };
        let (word, tail) = rest.split_at(len);
        rest = tail;
        Some(word)
    })
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || is_combining_mark(c)
}

/// One word folded like a name; '#' is kept so that it can be recognized as a designator.
fn name_of_word(w: &str) -> String {
    if w == "#" { w.to_owned() } else { name(w) }
}

/// Words that introduce a secondary unit (USPS Publication 28, C2, the common ones), also
/// when written together with the unit's number ("apt4", "ste200", "#4").
fn is_unit_designator(word: &str) -> bool {
    const DESIGNATORS: [&str; 11] = [
        "#",
        "apt",
        "apartment",
        "unit",
        "ste",
        "suite",
        "rm",
        "room",
        "fl",
        "floor",
        "bldg",
    ];
    DESIGNATORS.iter().any(|d| {
        word.strip_prefix(d)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(|c: char| c.is_ascii_digit()))
    })
}

/// The standard abbreviation of a folded word: USPS street suffixes (Publication 28, C1, the
/// common ones and their usual misspellings), directionals, and ordinal words up to tenth.
/// "saint" → "st" too, so that "St. Paul Ave" and "Saint Paul Ave" agree (both spellings then
/// read "st", whichever word it stood for).
fn abbreviation(word: &str) -> Option<&'static str> {
    Some(match word {
        "street" | "str" | "strt" => "st",
        "saint" => "st",
        "avenue" | "av" | "aven" | "avenu" | "avn" | "avnue" => "ave",
        "road" => "rd",
        "drive" | "drv" | "driv" => "dr",
        "boulevard" | "boul" | "boulv" => "blvd",
        "lane" => "ln",
        "court" => "ct",
        "place" => "pl",
        "terrace" | "terr" => "ter",
        "circle" | "circ" | "circl" | "crcl" => "cir",
        "highway" | "highwy" | "hiway" | "hiwy" | "hway" => "hwy",
        "parkway" | "parkwy" | "pkway" | "pky" => "pkwy",
        "square" | "sqr" | "sqre" | "squ" => "sq",
        "trail" | "trails" | "trls" => "trl",
        "north" => "n",
        "south" => "s",
        "east" => "e",
        "west" => "w",
        "northeast" => "ne",
        "northwest" => "nw",
        "southeast" => "se",
        "southwest" => "sw",
        "first" => "1st",
        "second" => "2nd",
        "third" => "3rd",
        "fourth" => "4th",
        "fifth" => "5th",
        "sixth" => "6th",
        "seventh" => "7th",
        "eighth" => "8th",
        "ninth" => "9th",
        "tenth" => "10th",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    #[test]
    fn names_fold_case_accents_and_punctuation() {
        assert_eq!(name("O'Brien"), "obrien");
        assert_eq!(name("O\u{2019}Brien"), "obrien");
        assert_eq!(name("Mary-Ann  Smith"), "maryannsmith");
        assert_eq!(name("José"), "jose");
        assert_eq!(name("Jose\u{301}"), "jose");
        assert_eq!(name("MÜLLER"), "muller");
        assert_eq!(name("  Núñez\t"), "nunez");
        assert_eq!(name("François"), "francois");
        assert_eq!(name("İlker"), "ilker");
    }

    #[test]
    fn letters_nfkd_keeps_whole_are_spelled_out() {
        assert_eq!(name("Strauß"), "strauss");
        assert_eq!(name("STRAUẞ"), "strauss");
        assert_eq!(name("Æsa"), "aesa");
        assert_eq!(name("Søren"), "soren");
        assert_eq!(name("Łukasz"), "lukasz");
        assert_eq!(name("Đorđe"), "dorde");
        assert_eq!(name("Þór"), "thor");
        assert_eq!(name("Œuvre"), "oeuvre");
        assert_eq!(name("Yıldız"), "yildiz");
    }

    #[test]
    fn compatibility_forms_fold_to_plain_ones() {
        // Fullwidth letters (from some IMEs) and ligatures are the same name.
        assert_eq!(name("ＡＮＮＡ"), "anna");
        assert_eq!(name("ﬁona"), "fiona");
    }

    #[test]
    fn nothing_left_is_empty() {
        assert_eq!(name(""), "");
        assert_eq!(name(" -'. "), "");
        assert_eq!(name("🙂\u{0}\u{7}"), "");
        assert_eq!(street_address(""), "");
        assert_eq!(street_address(" ,.-#/ "), "");
        assert_eq!(street_address("🏠"), "");
    }

    #[test]
    fn street_addresses_agree_across_spellings() {
        let a = street_address("123 North Main Street, Apt. 4");
        assert_eq!(a, "123nmainst");
        assert_eq!(street_address("123 N Main St"), a);
        assert_eq!(street_address("123 n. main st"), a);
        assert_eq!(street_address("123 NORTH MAIN ST #4B"), a);
        assert_eq!(street_address("123 N. Main St., Suite 200"), a);
        assert_eq!(street_address("123 N Main St Apt4"), a);
        assert_eq!(street_address("123 N Main Street Unit 7, Floor 2"), a);
    }

    #[test]
    fn suffixes_directionals_and_ordinals_abbreviate() {
        assert_eq!(
            street_address("10 Avenue Road"),
            street_address("10 Ave Rd")
        );
        assert_eq!(street_address("10 Elm Av"), street_address("10 Elm Avenue"));
        assert_eq!(
            street_address("5 Sunset Boulevard"),
            street_address("5 Sunset Blvd")
        );
        assert_eq!(
            street_address("7 Oak Lane Southwest"),
            street_address("7 Oak Ln SW")
        );
        assert_eq!(
            street_address("1 First Avenue"),
            street_address("1 1st Ave")
        );
        assert_eq!(
            street_address("40 Tenth Street Northeast"),
            street_address("40 10th St NE")
        );
        assert_eq!(
            street_address("9 Garden Terrace"),
            street_address("9 garden ter")
        );
        assert_eq!(street_address("2 Milky Way"), "2milkyway");
        assert_eq!(
            street_address("12 Saint Paul Court"),
            street_address("12 St. Paul Ct")
        );
        assert_eq!(
            street_address("300 Calle José Martí"),
            street_address("300 calle jose marti")
        );
    }

    #[test]
    fn different_buildings_differ() {
        assert_ne!(street_address("123 Main St"), street_address("124 Main St"));
        assert_ne!(
            street_address("123 Main St"),
            street_address("123 Main Ave")
        );
        assert_ne!(
            street_address("123 N Main St"),
            street_address("123 S Main St")
        );
        assert_ne!(
            street_address("123 Main St"),
            street_address("123 Maine St")
        );
    }

    #[test]
    fn a_designator_before_the_street_name_is_kept() {
        // Not a unit: nothing names the street yet.
        assert_eq!(street_address("100 Floor Rd"), "100floorrd");
        assert_eq!(street_address("Apt 4"), "apt4");
        assert_eq!(street_address("#12"), "12");
    }

    #[test]
    fn odd_strings_never_panic() {
        let mut rng = StdRng::seed_from_u64(0x5eed);
        let pool: Vec<char> =
            "aZ09 -'.,#\t\n\u{0}\u{301}\u{308}éÜßæøłđ🙂İıﬁＡ\u{200d}\u{feff}\u{fffd}"
                .chars()
                .collect();
        for _ in 0..2000 {
            let len = rng.random_range(0..40);
            let s: String = (0..len)
                .map(|_| {
                    if rng.random_bool(0.2) {
                        // Any scalar value at all.
                        char::from_u32(rng.random_range(0..0x11_0000)).unwrap_or('\u{fffd}')
                    } else {
                        pool[rng.random_range(0..pool.len())]
                    }
                })
                .collect();
            let n = name(&s);
            assert!(n.chars().all(char::is_alphanumeric));
            // Folding is idempotent: keys computed from stored, already folded values agree.
            assert_eq!(name(&n), n);
            let a = street_address(&s);
            assert!(a.chars().all(char::is_alphanumeric));
            if !s.chars().any(char::is_alphanumeric) {
                assert_eq!(a, "");
            }
        }
        let long = "Ab-ü ".repeat(100_000);
        assert_eq!(name(&long).len(), 300_000);
        assert!(!street_address(&long).is_empty());
    }
}
