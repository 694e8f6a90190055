//! The distribution reference grammar (`[DOMAIN[:PORT]/]PATH[:TAG][@ALGORITHM:HEX]`), checked by hand.
//!
//! The OCI crates parse it with one regular expression whose `[\w]{0,127}` tag part (Unicode classes, bounded
//! repetition) takes about 70 ms of CPU to compile, once per process: most of a one-shot `agentbox run --image`.
//! This follows that expression (oci-spec's `REFERENCE_REGEXP`, itself docker/distribution's) and its domain
//! split, with two differences: a tag is ASCII (`[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`, as the distribution spec
//! writes it), and a repository with upper-case letters is refused wherever it stands (docker refuses it too;
//! the expression let `Upper/name` through as a repository on Docker Hub).

use oci_client::{ParseError, Reference};

const NAME_TOTAL_LENGTH_MAX: usize = 255;
const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_LEGACY: &str = "index.docker.io";

/// Parses `input` into a normalized reference (Docker Hub's domain and `library/` filled in, `latest` when there
/// is neither tag nor digest).
pub(super) fn parse(input: &str) -> Result<Reference, ParseError> {
    if input.is_empty() {
        return Err(ParseError::NameEmpty);
    }
    let (rest, digest) = match input.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (input, None),
    };
    // A tag follows the last ':' after the last '/' (a ':' before it is a port).
    let (name, tag) = match rest.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name, Some(tag)),
        _ => (rest, None),
    };
    if !valid_name(name) || !tag.is_none_or(valid_tag) || !digest.is_none_or(valid_digest_format) {
        return Err(ParseError::ReferenceInvalidFormat);
    }
    let (registry, repository) = split_domain(name);
    if repository.len() > NAME_TOTAL_LENGTH_MAX {
        return Err(ParseError::NameTooLong);
    }
    if repository.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(ParseError::NameContainsUppercase);
    }
    if let Some(digest) = digest {
        check_digest_length(digest)?;
    }
    Ok(match (tag, digest) {
        (Some(tag), Some(digest)) => Reference::with_tag_and_digest(registry, repository, tag.into(), digest.into()),
        (None, Some(digest)) => Reference::with_digest(registry, repository, digest.into()),
        (tag, None) => Reference::with_tag(registry, repository, tag.unwrap_or("latest").into()),
    })
}

/// `[DOMAIN[:PORT]/]PATH(/PATH)*`: the first component may be a domain when more follow.
fn valid_name(name: &str) -> bool {
    let parts: Vec<&str> = name.split('/').collect();
    match parts.as_slice() {
        [] => false,
        [only] => valid_path_component(only),
        [first, rest @ ..] => {
            (valid_domain(first) || valid_path_component(first)) && rest.iter().all(|p| valid_path_component(p))
        }
    }
}

/// `DOMAIN-COMPONENT(.DOMAIN-COMPONENT)*[:PORT]`.
fn valid_domain(domain: &str) -> bool {
    let (host, port) = match domain.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (domain, None),
    };
    let component = |c: &str| {
        let b = c.as_bytes();
        !b.is_empty()
            && b.iter().all(|x| x.is_ascii_alphanumeric() || *x == b'-')
            && b.first().is_some_and(u8::is_ascii_alphanumeric)
            && b.last().is_some_and(u8::is_ascii_alphanumeric)
    };
    host.split('.').all(component) && port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// `[a-z0-9]+` runs joined by `.`, `_`, `__` or one or more `-`.
fn valid_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: &u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if !b.first().is_some_and(alnum) || !b.last().is_some_and(alnum) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(&b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(&b[i]) {
            i += 1;
        }
        let separator = &b[start..i];
        let ok = matches!(separator, b"." | b"_" | b"__") || separator.iter().all(|x| *x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
fn valid_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    let word = |x: &u8| x.is_ascii_alphanumeric() || *x == b'_';
    (1..=128).contains(&b.len()) && b.first().is_some_and(word) && b.iter().all(|x| word(x) || *x == b'.' || *x == b'-')
}

/// `ALGORITHM:HEX` with `ALGORITHM` = `[A-Za-z][A-Za-z0-9]*([-_+.][A-Za-z][A-Za-z0-9]*)*` and at least 32 hex digits.
fn valid_digest_format(digest: &str) -> bool {
    let Some((algorithm, hex)) = digest.split_once(':') else { return false };
    let algorithm_ok = algorithm.split(['-', '_', '+', '.']).all(|part| {
        let b = part.as_bytes();
        b.first().is_some_and(u8::is_ascii_alphabetic) && b.iter().all(u8::is_ascii_alphanumeric)
    });
    algorithm_ok && hex.len() >= 32 && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

fn check_digest_length(digest: &str) -> Result<(), ParseError> {
    let (algorithm, hex) = digest.split_once(':').ok_or(ParseError::DigestInvalidFormat)?;
    let wanted = match algorithm {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return Err(ParseError::DigestUnsupported),
    };
    if hex.len() == wanted { Ok(()) } else { Err(ParseError::DigestInvalidLength) }
}

/// Docker's domain split: the first component is a domain when it has a `.` or a `:` or is `localhost`;
/// otherwise the name is on Docker Hub, where a one-component name is an official image (`library/`).
fn split_domain(name: &str) -> (String, String) {
    let (mut domain, mut remainder) = match name.split_once('/') {
        Some((left, right)) if left.contains('.') || left.contains(':') || left == "localhost" => {
            (left.to_owned(), right.to_owned())
        }
        _ => (DOCKER_HUB.to_owned(), name.to_owned()),
    };
    if domain == DOCKER_HUB_LEGACY {
        domain = DOCKER_HUB.to_owned();
    }
    if domain == DOCKER_HUB && !remainder.contains('/') {
        remainder = format!("library/{remainder}");
    }
    (domain, remainder)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    /// Inputs for the comparison with the OCI crate's regular expression: its own test cases, and hostile ones.
    const CASES: &[&str] = &[
        "busybox",
        "test.com:tag",
        "test.com:5000",
        "test.com/repo:tag",
        "test:5000/repo",
        "test:5000/repo:tag",
        "test:5000/repo@sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        "test:5000/repo:tag@sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        "lowercase:Uppercase",
        "sub-dom1.foo.com/bar/baz/quux",
        "sub-dom1.foo.com/bar/baz/quux:some-long-tag",
        "b.gcr.io/test.example.com/my-app:test.example.com",
        "xn--n3h.com/myimage:xn--n3h.com",
        "foo_bar.com:8080",
        "foo/foo_bar.com:8080",
        "opensuse/leap:15.3",
        "index.docker.io/library/python:3.12",
        "index.docker.io/python",
        "localhost/x",
        "localhost:5000/team/agent:1",
        "127.0.0.1:5055/debian-python:bookworm",
        "a__b/c--d/e.f_g:_tag",
        "a___b",
        "a..b",
        "a._b",
        "-a",
        "a-",
        "a/",
        "/a",
        "a//b",
        "",
        ":justtag",
        "@sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        "repo@sha256:ffffffffffffffffffffffffffffffffff",
        "validname@invaliddigest:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        "repo@sha256:gggggggggggggggggggggggggggggggggggggggggggggggggggggggggggggggg",
        "repo@sha256",
        "repo@@sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        "Uppercase:tag",
        "test:5000/Uppercase/lowercase:tag",
        "aa/asdf$$^/aa",
        "host:/x",
        "host:port/x",
        "-host.com/x",
        "host-.com/x",
        "ho_st.com/x",
        "repo:-tag",
        "repo:.tag",
        "repo:tag:tag",
        "repo:t/g",
        "x:",
        "x@",
        "x y",
        "x\n",
        "x\0",
    ];

    #[test]
    fn agrees_with_the_oci_regular_expression_except_for_upper_case_repositories() {
        let long_tag = format!("x:{}", "t".repeat(128));
        let too_long_tag = format!("x:{}", "t".repeat(129));
        let long_name = format!("x/{}", "a".repeat(253));
        let too_long_name = format!("x/{}", "a".repeat(254));
        let extra = [long_tag.as_str(), &too_long_tag, &long_name, &too_long_name];
        for input in CASES.iter().copied().chain(extra) {
            let ours = parse(input);
            let theirs = Reference::from_str(input);
            match (&ours, &theirs) {
                (Ok(a), Ok(b)) => assert_eq!(a.whole(), b.whole(), "{input:?}"),
                (Err(a), Err(b)) => assert_eq!(a, b, "{input:?}"),
                (Err(ParseError::NameContainsUppercase), Ok(b)) => {
                    assert!(b.repository().bytes().any(|c| c.is_ascii_uppercase()), "{input:?}");
                }
                _ => panic!("{input:?}: ours {ours:?}, the regular expression's {theirs:?}"),
            }
        }
    }

    #[test]
    fn upper_case_repositories_and_non_ascii_tags_are_refused() {
        assert_eq!(parse("Uppercase/lowercase:tag").unwrap_err(), ParseError::NameContainsUppercase);
        assert_eq!(parse("x:caf\u{e9}").unwrap_err(), ParseError::ReferenceInvalidFormat);
    }
}
