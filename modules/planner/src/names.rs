//! Every name a tenant's previews get on the host: the Compose project (which is also the
//! workspace directory under `{state_dir}/previews/`) and the preview's host name from
//! `[preview].url_template`. One place, so that the planner can refuse tenants whose names could
//! meet before anything runs.
//!
//! # The encoding
//! [`escape`] turns a GitHub owner or repository name into letters, digits and single hyphens,
//! reversibly (see [`unescape`]), and leaves ordinary names alone: `hello-world` stays
//! `hello-world`. GitHub names are case-insensitive, so they are lowercased first. `q` is the
//! escape letter:
//!
//! | in the name | written |
//! |---|---|
//! | `.` | `qd` |
//! | `_` | `qs` |
//! | `-` first, last, or next to another `-` | `qh` |
//! | `-` anywhere else | `-` |
//! | `q` followed by something written `q…`, `d…`, `s…`, `h…` or `x…` | `qq` |
//! | `q` otherwise | `q` (so `jquery` stays `jquery`) |
//! | any other byte (never in a valid name) | `qx` and two hex digits |
//!
//! An escaped name is never empty (names are not), contains no `--`, and neither starts nor ends
//! with `-`. So:
//! - the Compose project is `pb--{escape(owner)}--{escape(repo)}--{number}`: splitting at `--`
//!   gives the three parts back, and [`unescape`] the names. Longer than Compose's 63 characters,
//!   it is cut to 44 characters followed by `--h` and 16 hex digits of the SHA-256 of the full
//!   name. Names from before this encoding (`pb-acme-shop-pr-7`, stored in the previews table and
//!   used for their teardown) always end in `-pr-{digits}`, which no new name does.
//! - a placeholder (`{owner}`, `{repo}`) in a host is [`label`]: the escaped name, or, past
//!   [`LABEL_MAX`] characters, 26 of them, `--` and 12 hex digits of the SHA-256 of the name.
//!   Whether two tenants' hosts can be equal also depends on the template's own text
//!   (`{repo}{number}` makes `a1`#2 and `a`#12 meet), so [`conflicts`] decides that for the
//!   configured tenants, exactly.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;

use sha2::{Digest, Sha256};

use crate::Tenant;

/// Compose's limit on a project name, kept for the router names derived from it as well.
pub const PROJECT_MAX: usize = 63;
/// The longest value a placeholder puts into a host: leaves room in a 63-character DNS label for
/// the template's own text, as in `{repo}-pr-{number}`.
pub const LABEL_MAX: usize = 40;
/// The longest DNS label.
const DNS_LABEL_MAX: usize = 63;
/// The widest pull request number the label-length check assumes.
const NUMBER_DIGITS_CHECKED: usize = 6;

/// Codes after the escape letter `q`.
const ESCAPED: [u8; 5] = [b'q', b'd', b's', b'h', b'x'];

/// A GitHub owner or repository name as letters, digits and single inner hyphens, reversibly.
pub fn escape(name: &str) -> String {
    let bytes: Vec<u8> = name.bytes().map(|b| b.to_ascii_lowercase()).collect();
    let mut out = String::with_capacity(bytes.len() + 4);
    // What each byte is written as; a `q` looks at what its neighbour is written as.
    let code = |i: usize| -> String {
        let b = bytes[i];
        match b {
            b'a'..=b'z' | b'0'..=b'9' => (b as char).to_string(),
            b'.' => "qd".into(),
            b'_' => "qs".into(),
            b'-' if i == 0
                || i + 1 == bytes.len()
                || bytes[i - 1] == b'-'
                || bytes[i + 1] == b'-' =>
            {
                "qh".into()
            }
            b'-' => "-".into(),
            other => format!("qx{other:02x}"),
        }
    };
    for i in 0..bytes.len() {
        if bytes[i] == b'q' {
            let next_is_coded = i + 1 < bytes.len() && {
                let next = code(i + 1);
                ESCAPED.contains(&next.as_bytes()[0])
            };
            out.push_str(if next_is_coded { "qq" } else { "q" });
        } else {
            out.push_str(&code(i));
        }
    }
    out
}

/// The inverse of [`escape`] (of the lowercased name); `None` for text `escape` never writes.
pub fn unescape(escaped: &str) -> Option<String> {
    let b = escaped.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'q' => match b.get(i + 1) {
                Some(b'q') => {
                    out.push(b'q');
                    i += 2;
                }
                Some(b'd') => {
                    out.push(b'.');
                    i += 2;
                }
                Some(b's') => {
                    out.push(b'_');
                    i += 2;
                }
                Some(b'h') => {
                    out.push(b'-');
                    i += 2;
                }
                Some(b'x') => {
                    let hex = escaped.get(i + 2..i + 4)?;
                    out.push(u8::from_str_radix(hex, 16).ok()?);
                    i += 4;
                }
                _ => {
                    out.push(b'q');
                    i += 1;
                }
            },
            c @ (b'a'..=b'z' | b'0'..=b'9' | b'-') => {
                out.push(c);
                i += 1;
            }
            _ => return None,
        }
    }
    String::from_utf8(out).ok()
}

/// The first `hex_digits` hex digits of the SHA-256 of `text`.
fn hash(text: &str, hex_digits: usize) -> String {
    let mut hex = String::with_capacity(64);
    for byte in Sha256::digest(text.as_bytes()) {
        let _ = write!(hex, "{byte:02x}");
    }
    hex.truncate(hex_digits);
    hex
}

/// `text` cut to at most `len` bytes (it is ASCII), without a trailing `-`.
fn cut(text: &str, len: usize) -> &str {
    text[..len.min(text.len())].trim_end_matches('-')
}

/// What a placeholder (`{owner}`, `{repo}`) puts into a preview host: a DNS label of at most
/// [`LABEL_MAX`] characters, distinct for distinct names.
pub fn label(name: &str) -> String {
    let escaped = escape(name);
    if escaped.len() <= LABEL_MAX {
        return escaped;
    }
    // An escaped name has no `--`, so a cut one cannot equal an uncut one.
    let digest = hash(&name.to_ascii_lowercase(), 12);
    format!("{}--{digest}", cut(&escaped, LABEL_MAX - 2 - 12))
}

/// The Compose project name of a preview, which is also its workspace directory's name:
/// lowercase letters, digits and `-`, starting with a letter, at most 63 characters, distinct
/// for distinct `(owner, repo, number)` (GitHub names being case-insensitive).
pub fn project(owner: &str, repo: &str, number: u64) -> String {
    let full = format!("pb--{}--{}--{number}", escape(owner), escape(repo));
    if full.len() <= PROJECT_MAX {
        return full;
    }
    // Uncut names end in `--{digits}`; a cut one in `--h{hex}`.
    let digest = hash(&full, 16);
    format!("{}--h{digest}", cut(&full, PROJECT_MAX - 3 - 16))
}

/// [`project`] of `owner/name`.
pub fn project_of(repo: &str, number: u64) -> String {
    let (owner, name) = repo.split_once('/').unwrap_or(("", repo));
    project(owner, name, number)
}

/// The preview URL: `template` with `{owner}`, `{repo}` ([`label`]s), `{number}` and `{domain}`
/// filled in. Placeholders are replaced in one pass, so a value never forms another placeholder.
pub fn url(template: &str, domain: &str, repo: &str, number: u64) -> String {
    let (owner, name) = repo.split_once('/').unwrap_or(("", repo));
    let number = number.to_string();
    let values = [
        ("owner", label(owner)),
        ("repo", label(name)),
        ("number", number),
        ("domain", domain.to_owned()),
    ];
    let mut out = String::with_capacity(template.len() + 32);
    for part in parse(template) {
        match part {
            Part::Text(text) => out.push_str(text),
            Part::Placeholder(name) => match values.iter().find(|(k, _)| *k == name) {
                Some((_, value)) => out.push_str(value),
                None => {
                    out.push('{');
                    out.push_str(name);
                    out.push('}');
                }
            },
        }
    }
    out
}

/// The host of a preview URL: between `://` and the first `/` or `:`. Traefik routes by it.
pub fn host(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    rest.split(['/', ':']).next().unwrap_or_default()
}

enum Part<'a> {
    Text(&'a str),
    Placeholder(&'a str),
}

fn parse(template: &str) -> Vec<Part<'_>> {
    let mut parts = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        let Some(len) = rest[start..].find('}') else {
            break;
        };
        parts.push(Part::Text(&rest[..start]));
        parts.push(Part::Placeholder(&rest[start + 1..start + len]));
        rest = &rest[start + len + 1..];
    }
    parts.push(Part::Text(rest));
    parts
}

/// One symbol of a host pattern: a byte, or a pull request number (`[1-9][0-9]*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sym {
    Byte(u8),
    Number,
}

/// A tenant's host with the number left open, lowercased (host names are case-insensitive).
fn host_pattern(template: &str, domain: &str, owner: &str, repo: &str) -> Vec<Sym> {
    // Render with a byte no value or template can hold where the number goes, then cut the host.
    const HOLE: char = '\u{0}';
    let rendered = url(
        &template.replace("{number}", "\u{0}"),
        domain,
        &format!("{owner}/{repo}"),
        0,
    );
    host(&rendered)
        .bytes()
        .map(|b| match b {
            b if b == HOLE as u8 => Sym::Number,
            b => Sym::Byte(b.to_ascii_lowercase()),
        })
        .collect()
}

/// One host both patterns can produce, if any: the product of the two patterns' automata,
/// searched breadth first. Exact when `{number}` appears once; with several, each occurrence is
/// taken on its own, which can only find more collisions.
fn common_host(a: &[Sym], b: &[Sym]) -> Option<String> {
    // A state is (position, inside a number that has at least one digit).
    type State = (usize, bool);
    type Pair = (State, State);
    // Where a state can be without reading anything: the end of a number is optional.
    fn closure(s: State) -> Vec<State> {
        if s.1 {
            vec![s, (s.0 + 1, false)]
        } else {
            vec![s]
        }
    }
    fn step(p: &[Sym], s: State, byte: u8) -> Option<State> {
        match (s, p.get(s.0)) {
            ((i, true), _) if byte.is_ascii_digit() => Some((i, true)),
            ((i, false), Some(Sym::Number)) if (b'1'..=b'9').contains(&byte) => Some((i, true)),
            ((i, false), Some(Sym::Byte(c))) if *c == byte => Some((i + 1, false)),
            _ => None,
        }
    }
    let accepts = |p: &[Sym], s: State| s == (p.len(), false);
    let start = ((0, false), (0, false));
    let mut came_from: HashMap<Pair, Option<(Pair, u8)>> = HashMap::new();
    came_from.insert(start, None);
    let mut queue = VecDeque::from([start]);
    while let Some(pair) = queue.pop_front() {
        for sa in closure(pair.0) {
            for sb in closure(pair.1) {
                if accepts(a, sa) && accepts(b, sb) {
                    let mut bytes = Vec::new();
                    let mut at = pair;
                    while let Some(Some((prev, byte))) = came_from.get(&at) {
                        bytes.push(*byte);
                        at = *prev;
                    }
                    bytes.reverse();
                    return Some(String::from_utf8_lossy(&bytes).into_owned());
                }
                let candidates: Vec<u8> = match (sa, a.get(sa.0)) {
                    ((_, true), _) | ((_, false), Some(Sym::Number)) => (b'0'..=b'9').collect(),
                    ((_, false), Some(Sym::Byte(c))) => vec![*c],
                    _ => Vec::new(),
                };
                for byte in candidates {
                    if let (Some(na), Some(nb)) = (step(a, sa, byte), step(b, sb, byte))
                        && !came_from.contains_key(&(na, nb))
                    {
                        came_from.insert((na, nb), Some((pair, byte)));
                        queue.push_back((na, nb));
                    }
                }
            }
        }
    }
    None
}

/// Why tenants' previews could get each other's names, one sentence each; empty when none can.
/// `tenants` are those with previews. Pure: the planner and `check` call it before anything runs.
pub fn conflicts(tenants: &[&Tenant], url_template: &str, domain: &str) -> Vec<String> {
    let mut problems = Vec::new();
    if tenants.is_empty() {
        return problems;
    }
    let patterns: Vec<Vec<Sym>> = tenants
        .iter()
        .map(|t| host_pattern(url_template, domain, &t.owner, &t.name))
        .collect();
    if !patterns[0].contains(&Sym::Number) {
        problems.push(format!(
            "preview.url_template {url_template:?} has no {{number}} in its host: every pull request would get the same host (Traefik routes by host); put {{number}} before the first `/`, for example \"https://{{repo}}-pr-{{number}}.{{domain}}\""
        ));
        return problems;
    }
    let wide = "9".repeat(NUMBER_DIGITS_CHECKED);
    for (tenant, pattern) in tenants.iter().zip(&patterns) {
        let host: String = pattern
            .iter()
            .map(|s| match s {
                Sym::Byte(b) => (*b as char).to_string(),
                Sym::Number => wide.clone(),
            })
            .collect();
        if let Some(long) = host.split('.').find(|l| l.len() > DNS_LABEL_MAX) {
            problems.push(format!(
                "tenant {} ({}): its preview hosts, such as {host}, would have a part {long:?} longer than DNS allows ({DNS_LABEL_MAX} characters); shorten the text around the placeholders in preview.url_template, or put them in separate parts (`.`)",
                tenant.repo(),
                tenant.source,
            ));
        }
    }
    for i in 0..tenants.len() {
        for j in i + 1..tenants.len() {
            if let Some(example) = common_host(&patterns[i], &patterns[j]) {
                let (a, b) = (tenants[i], tenants[j]);
                let hint = if url_template.contains("{owner}") {
                    "separate the placeholders in preview.url_template with text that cannot be part of a name or number, for example \"https://{repo}-{owner}-pr-{number}.{domain}\""
                } else {
                    "put {owner} in preview.url_template, for example \"https://{repo}-{owner}-pr-{number}.{domain}\""
                };
                problems.push(format!(
                    "tenants {} ({}) and {} ({}) can get the same preview host, for example {example}, from preview.url_template {url_template:?}; each would replace the other's preview: {hint}",
                    a.repo(),
                    a.source,
                    b.repo(),
                    b.source,
                ));
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests;
