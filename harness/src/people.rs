//! Made-up people for the benchmark: person number `n` always has the same name, date of birth,
//! SSN and street address, so that a run can write one again the way another intake form would
//! (`PersonVariant`) and possible-duplicate matching has something realistic to find.
//!
//! Names, dates and addresses come from small pools, as in real data, so some people share a
//! name and date of birth; the SSN is derived from the number and is distinct per person.

use serde_json::{Value, json};
use sqlx::types::chrono::NaiveDate;

/// Formal first names, each with a nickname an intake form might use instead.
const FIRST_NAMES: [(&str, &str); 60] = [
    ("Robert", "Bob"),
    ("William", "Bill"),
    ("Elizabeth", "Liz"),
    ("Margaret", "Peggy"),
    ("Richard", "Dick"),
    ("James", "Jim"),
    ("Katherine", "Kate"),
    ("Joseph", "Joe"),
    ("Patricia", "Patty"),
    ("Michael", "Mike"),
    ("Jennifer", "Jenny"),
    ("Thomas", "Tom"),
    ("Christopher", "Chris"),
    ("Susan", "Sue"),
    ("Daniel", "Dan"),
    ("Deborah", "Debbie"),
    ("Anthony", "Tony"),
    ("Rebecca", "Becky"),
    ("Edward", "Ed"),
    ("Dorothy", "Dot"),
    ("Charles", "Chuck"),
    ("Barbara", "Barb"),
    ("Matthew", "Matt"),
    ("Jessica", "Jess"),
    ("Steven", "Steve"),
    ("Samantha", "Sam"),
    ("Andrew", "Andy"),
    ("Victoria", "Vicky"),
    ("Benjamin", "Ben"),
    ("Alexander", "Alex"),
    ("Nicholas", "Nick"),
    ("Abigail", "Abby"),
    ("Timothy", "Tim"),
    ("Kimberly", "Kim"),
    ("Gregory", "Greg"),
    ("Cynthia", "Cindy"),
    ("Lawrence", "Larry"),
    ("Theresa", "Terry"),
    ("Frederick", "Fred"),
    ("Gwendolyn", "Gwen"),
    ("José", "Pepe"),
    ("Zoë", "Zoe"),
    ("Renée", "Renee"),
    ("Chloé", "Chloe"),
    ("Andrés", "Andres"),
    ("Mariana", "Mari"),
    ("Francisco", "Paco"),
    ("Guadalupe", "Lupe"),
    ("Alejandro", "Ale"),
    ("Dolores", "Lola"),
    ("Ignacio", "Nacho"),
    ("Eduardo", "Lalo"),
    ("Mohammed", "Mo"),
    ("Nathaniel", "Nate"),
    ("Inés", "Ines"),
    ("Siobhán", "Siobhan"),
    ("Bartholomew", "Bart"),
    ("Penelope", "Penny"),
    ("Leonard", "Len"),
    ("Florence", "Flo"),
];

/// Last names, some with accents, apostrophes, hyphens or spaces that forms write differently.
const LAST_NAMES: [&str; 120] = [
    "Smith",
    "Johnson",
    "Williams",
    "Brown",
    "Jones",
    "Garcia",
    "Miller",
    "Davis",
    "Rodríguez",
    "Martínez",
    "Hernández",
    "López",
    "González",
    "Wilson",
    "Anderson",
    "Thomas",
    "Taylor",
    "Moore",
    "Jackson",
    "Martin",
    "Lee",
    "Pérez",
    "Thompson",
    "White",
    "Harris",
    "Sánchez",
    "Clark",
    "Ramírez",
    "Lewis",
    "Robinson",
    "Walker",
    "Young",
    "Allen",
    "King",
    "Wright",
    "Scott",
    "Torres",
    "Nguyen",
    "Hill",
    "Flores",
    "Green",
    "Adams",
    "Nelson",
    "Baker",
    "Hall",
    "Rivera",
    "Campbell",
    "Mitchell",
    "Carter",
    "Roberts",
    "O'Brien",
    "O'Connor",
    "McDonald",
    "MacLeod",
    "D'Angelo",
    "St. John",
    "Van der Berg",
    "De la Cruz",
    "Smith-Jones",
    "Núñez",
    "Gómez",
    "Díaz",
    "Reyes",
    "Morales",
    "Cruz",
    "Ortiz",
    "Gutiérrez",
    "Chávez",
    "Ramos",
    "Ruiz",
    "Álvarez",
    "Mendoza",
    "Castillo",
    "Jiménez",
    "Vásquez",
    "Moreno",
    "Romero",
    "Herrera",
    "Medina",
    "Aguilar",
    "Kowalski",
    "Nowak",
    "Wiśniewski",
    "Müller",
    "Schröder",
    "Öztürk",
    "Yılmaz",
    "Kim",
    "Park",
    "Choi",
    "Wang",
    "Li",
    "Zhang",
    "Chen",
    "Liu",
    "Tanaka",
    "Suzuki",
    "Patel",
    "Shah",
    "Singh",
    "Okafor",
    "Adeyemi",
    "Mensah",
    "Cohen",
    "Levy",
    "Murphy",
    "Kelly",
    "Sullivan",
    "Walsh",
    "Byrne",
    "Ryan",
    "O'Neill",
    "Fitzgerald",
    "Brennan",
    "Quinn",
    "Duffy",
    "Doyle",
    "Lynch",
    "Murray",
    "Ahmed",
];

const STREET_NAMES: [&str; 40] = [
    "Main",
    "Adams",
    "Washington",
    "Lincoln",
    "Jefferson",
    "Madison",
    "Oak",
    "Maple",
    "Pine",
    "Cedar",
    "Elm",
    "Walnut",
    "Chestnut",
    "Spruce",
    "Park",
    "Lake",
    "Hill",
    "River",
    "Church",
    "Market",
    "Franklin",
    "Highland",
    "Center",
    "Union",
    "Prospect",
    "Spring",
    "Ridge",
    "Broad",
    "Liberty",
    "Central",
    "Mill",
    "Grove",
    "Forest",
    "Sunset",
    "Meadow",
    "Jackson",
    "Front",
    "Water",
    "School",
    "Bridge",
];

/// Street types written out and as the USPS abbreviates them.
const STREET_TYPES: [(&str, &str); 6] = [
    ("Street", "St"),
    ("Avenue", "Ave"),
    ("Road", "Rd"),
    ("Boulevard", "Blvd"),
    ("Drive", "Dr"),
    ("Lane", "Ln"),
];

/// Directional prefixes written out and abbreviated; the empty one is the most common.
const DIRECTIONS: [(&str, &str); 5] = [
    ("", ""),
    ("North", "N"),
    ("South", "S"),
    ("East", "E"),
    ("West", "W"),
];

/// SSN groups 01–99 except 11, 22, …, 99: with them no number can be all one digit (a
/// placeholder, which never matches).
const GROUPS: usize = 90;

/// One person's identifying data. Never logged: it looks like the real thing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Person {
    /// Index into `FIRST_NAMES`.
    first: usize,
    pub last_name: &'static str,
    pub date_of_birth: NaiveDate,
    /// Nine digits.
    pub ssn: String,
    number: u32,
    direction: usize,
    street: usize,
    street_type: usize,
}

/// A stable hash of `n` for field `salt` (splitmix64), so that a person is a pure function of
/// their number: a run can rebuild a preloaded person without storing it.
fn mix(n: u64, salt: u64) -> u64 {
    let mut z = n
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(salt.wrapping_mul(0xD1B5_4A32_D192_ED03));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn pick(n: u64, salt: u64, len: usize) -> usize {
    (mix(n, salt) % len as u64) as usize
}

/// The SSN of person `n`: distinct per person, one the SSA could issue, never a placeholder.
pub fn ssn_of(n: u64) -> String {
    let serial = n % 9999 + 1;
    let g = ((n / 9999) % GROUPS as u64) as usize;
    // The g-th group of 01..99 that is not a repdigit.
    let group = (1..=99u64)
        .filter(|x| x % 11 != 0)
        .nth(g)
        .expect("90 groups");
    let mut area = (n / (9999 * GROUPS as u64)) % 898 + 1;
    if area >= 666 {
        area += 1;
    }
    format!("{area:03}{group:02}{serial:04}")
}

impl Person {
    /// Person number `n` (the same on every run).
    pub fn of(n: u64) -> Self {
        // 70 years of birth dates, 1935 to 2004 (the 365 first days of each).
        let year = 1935 + (mix(n, 3) % 70) as i32;
        let day = (mix(n, 8) % 365) as u32 + 1;
        Person {
            first: pick(n, 1, FIRST_NAMES.len()),
            last_name: LAST_NAMES[pick(n, 2, LAST_NAMES.len())],
            date_of_birth: NaiveDate::from_yo_opt(year, day).expect("a day of the year"),
            ssn: ssn_of(n),
            number: (mix(n, 4) % 9_899 + 1) as u32,
            direction: pick(n, 5, DIRECTIONS.len() * 2).saturating_sub(DIRECTIONS.len()),
            street: pick(n, 6, STREET_NAMES.len()),
            street_type: pick(n, 7, STREET_TYPES.len()),
        }
    }

    pub fn first_name(&self) -> &'static str {
        FIRST_NAMES[self.first].0
    }

    /// The street address written out in full, e.g. `123 North Main Street`.
    pub fn street_address(&self) -> String {
        self.address_with(|(full, _)| full, |(full, _)| full)
    }

    /// The street address as another form writes it, e.g. `123 N Main St`.
    fn street_address_abbreviated(&self) -> String {
        self.address_with(|(_, short)| short, |(_, short)| short)
    }

    fn address_with(
        &self,
        direction: impl Fn((&'static str, &'static str)) -> &'static str,
        street_type: impl Fn((&'static str, &'static str)) -> &'static str,
    ) -> String {
        let d = direction(DIRECTIONS[self.direction]);
        let d = if d.is_empty() {
            String::new()
        } else {
            format!("{d} ")
        };
        format!(
            "{} {d}{} {}",
            self.number,
            STREET_NAMES[self.street],
            street_type(STREET_TYPES[self.street_type])
        )
    }

    /// Writes this person into an intake body (names, date of birth, SSN, addresses).
    pub fn apply(&self, body: &mut Value) {
        self.write(body, &Variant::default());
    }

    /// Writes this person into an intake body the way another intake form might: the same
    /// person for matching, different text.
    pub fn apply_varied(&self, body: &mut Value, seed: u64) {
        let v = Variant {
            nickname: mix(seed, 11).is_multiple_of(2),
            swapped: mix(seed, 12).is_multiple_of(5),
            case: (mix(seed, 13) % 3) as u8,
            strip_marks: mix(seed, 14).is_multiple_of(2),
            abbreviated: mix(seed, 15).is_multiple_of(2),
            dashed_ssn: mix(seed, 16).is_multiple_of(2),
        };
        self.write(body, &v);
    }

    fn write(&self, body: &mut Value, v: &Variant) {
        let (formal, nick) = FIRST_NAMES[self.first];
        let first = v.text(if v.nickname { nick } else { formal });
        let last = v.text(self.last_name);
        let (first, last) = if v.swapped {
            (last, first)
        } else {
            (first, last)
        };
        let street = if v.abbreviated {
            self.street_address_abbreviated()
        } else {
            self.street_address()
        };
        let street = v.text(&street);
        let ssn = if v.dashed_ssn {
            format!("{}-{}-{}", &self.ssn[..3], &self.ssn[3..5], &self.ssn[5..])
        } else {
            self.ssn.clone()
        };
        body["first_name"] = json!(first);
        body["last_name"] = json!(last);
        body["date_of_birth"] = json!(self.date_of_birth.format("%Y-%m-%d").to_string());
        body["ss_number"] = json!(ssn);
        body["street_address"] = json!(street);
        body["mailing_address"] = json!(street);
        // The seed's nickname and middle name belong to its own John Smith.
        if let Some(b) = body.as_object_mut() {
            b.remove("nickname");
            b.remove("middle_name");
        }
    }
}

/// How a second form writes the same person.
#[derive(Default)]
struct Variant {
    nickname: bool,
    swapped: bool,
    /// 0 as is, 1 upper case, 2 lower case.
    case: u8,
    /// Accents and punctuation dropped (`José` → `Jose`, `O'Brien` → `OBrien`).
    strip_marks: bool,
    abbreviated: bool,
    dashed_ssn: bool,
}

impl Variant {
    fn text(&self, s: &str) -> String {
        let s: String = if self.strip_marks {
            s.chars()
                .filter(|c| !matches!(c, '\'' | '.' | '-'))
                .map(unaccented)
                .collect()
        } else {
            s.to_owned()
        };
        match self.case {
            1 => s.to_uppercase(),
            2 => s.to_lowercase(),
            _ => s,
        }
    }
}

/// The letter without its accent, for the accented letters of the pools.
fn unaccented(c: char) -> char {
    match c {
        'á' | 'à' | 'ä' | 'â' => 'a',
        'é' | 'è' | 'ë' | 'ê' => 'e',
        'í' | 'ì' | 'ï' | 'î' | 'ı' => 'i',
        'ó' | 'ò' | 'ö' | 'ô' => 'o',
        'ú' | 'ù' | 'ü' | 'û' => 'u',
        'ñ' => 'n',
        'ś' => 's',
        'Á' => 'A',
        'Ö' => 'O',
        'Ú' => 'U',
        'Ñ' => 'N',
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ssns_are_distinct_valid_and_never_placeholders() {
        let mut seen = HashSet::new();
        for n in (0..300_000u64).chain(8_990_000..9_010_000) {
            let s = ssn_of(n);
            assert_eq!(s.len(), 9);
            assert!(s.bytes().all(|b| b.is_ascii_digit()));
            let (area, group, serial) = (&s[..3], &s[3..5], &s[5..]);
            assert!(area != "000" && area != "666" && !area.starts_with('9'));
            assert!(group != "00" && serial != "0000");
            assert!(!s.chars().all(|c| s.starts_with(c)));
            assert!(seen.insert(s));
        }
    }

    #[test]
    fn a_person_is_a_function_of_their_number() {
        assert_eq!(Person::of(42), Person::of(42));
        assert_ne!(Person::of(42).ssn, Person::of(43).ssn);
        let p = Person::of(7);
        assert!(p.date_of_birth >= NaiveDate::from_ymd_opt(1935, 1, 1).unwrap());
        assert!(p.date_of_birth < NaiveDate::from_ymd_opt(2005, 1, 1).unwrap());
    }

    #[test]
    fn a_variant_keeps_the_ssn_digits_and_birth_date() {
        let p = Person::of(1234);
        for seed in 0..20 {
            let mut a = json!({});
            let mut b = json!({});
            p.apply(&mut a);
            p.apply_varied(&mut b, seed);
            let digits = |v: &Value| v["ss_number"].as_str().unwrap().replace('-', "");
            assert_eq!(digits(&a), digits(&b));
            assert_eq!(a["date_of_birth"], b["date_of_birth"]);
        }
    }
}
