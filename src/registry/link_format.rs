//! The LwM2M object list of a Register or Update payload (Content-Format 40,
//! application/link-format): a strict RFC 6690 parser and the typed [`ObjectList`] it yields.
//!
//! Two steps, as smoltcp's `Packet`/`Repr`: [`links`] splits the payload into RFC 6690 link
//! values (`<target>` plus `;name[=value]` parameters, quoted strings unescaped, commas inside
//! quotes kept), then [`parse`] reads the LwM2M meaning (LwM2M Core 1.1 §6.2.1, §5.2.2):
//!
//! * the link whose `rt` contains `oma.lwm2m` gives the root path (`</>` by default, or an
//!   alternate root such as `</lwm2m>`) and, with `ct`, the content formats the client
//!   supports (`ct=110` or `ct="60 110"`);
//! * every other link is an object (`</3>`) or an object instance (`</3/0>`) under that root,
//!   optionally with `ver=major.minor`. Other parameters are ignored (forward compatibility).
//!
//! Work is bounded: the payload is at most [`MAX_PAYLOAD`] bytes and [`MAX_ENTRIES`] links,
//! each with at most [`MAX_PARAMS`] parameters. Every input yields `Ok` or a typed
//! [`LinkFormatError`]; nothing panics. This file owns no CoAP and no registration state.

use std::fmt;

/// Longest object-list payload accepted, in bytes (after Block1 reassembly).
pub const MAX_PAYLOAD: usize = 32 * 1024;
/// Most links one payload may hold.
pub const MAX_ENTRIES: usize = 1024;
/// Most parameters one link may carry.
pub const MAX_PARAMS: usize = 16;

/// The resource type that marks the LwM2M root link.
const ROOT_RT: &str = "oma.lwm2m";

/// Why an object list is refused. Every variant is the client's fault (4.00 Bad Request).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LinkFormatError {
    /// The payload is longer than [`MAX_PAYLOAD`].
    #[error("object list of {len} bytes exceeds {max}")]
    TooLong {
        /// The payload length.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// The payload is not UTF-8.
    #[error("object list is not UTF-8")]
    NotUtf8,
    /// The payload holds no link at all.
    #[error("object list is empty")]
    Empty,
    /// More than [`MAX_ENTRIES`] links.
    #[error("object list has more than {max} entries")]
    TooManyEntries {
        /// The bound.
        max: usize,
    },
    /// Two commas in a row, or a leading or trailing comma.
    #[error("entry {index} is empty")]
    EmptyEntry {
        /// Zero-based entry index.
        index: usize,
    },
    /// An entry does not start with `<`.
    #[error("entry {index} does not start with '<'")]
    ExpectedLink {
        /// Zero-based entry index.
        index: usize,
    },
    /// A `<` without its `>`.
    #[error("entry {index}: unterminated '<'")]
    Unterminated {
        /// Zero-based entry index.
        index: usize,
    },
    /// A parameter is malformed: bad name, unterminated quote, garbage after `>` or a value.
    #[error("entry {index}: malformed parameter")]
    BadParameter {
        /// Zero-based entry index.
        index: usize,
    },
    /// More than [`MAX_PARAMS`] parameters on one link.
    #[error("entry {index} has more than {max} parameters")]
    TooManyParams {
        /// Zero-based entry index.
        index: usize,
        /// The bound.
        max: usize,
    },
    /// A link where an object path is expected is not `<root>/obj` or `<root>/obj/inst`
    /// with decimal ids (instance 65535 is reserved).
    #[error("entry {index}: {target:?} is not an object or object instance path")]
    BadObjectPath {
        /// Zero-based entry index.
        index: usize,
        /// The link target as sent.
        target: String,
    },
    /// The root link's target is not `/` or `/segment(/segment)*`.
    #[error("entry {index}: {target:?} is not a valid root path")]
    BadRootPath {
        /// Zero-based entry index.
        index: usize,
        /// The link target as sent.
        target: String,
    },
    /// More than one link with `rt="oma.lwm2m"`.
    #[error("entry {index}: a second root link")]
    DuplicateRoot {
        /// Zero-based entry index.
        index: usize,
    },
    /// `ver` is not `major.minor` with decimal numbers.
    #[error("entry {index}: bad object version")]
    BadVersion {
        /// Zero-based entry index.
        index: usize,
    },
    /// `ct` on the root link is not a space-separated list of Content-Format numbers.
    #[error("entry {index}: bad content format list")]
    BadContentFormat {
        /// Zero-based entry index.
        index: usize,
    },
}

/// One RFC 6690 link value: the target between `<` and `>`, and its parameters in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// The URI reference between `<` and `>`.
    pub target: String,
    /// `(name, value)`; `None` for a parameter without `=` (e.g. `obs`). Quoted values
    /// come unquoted and unescaped.
    pub params: Vec<(String, Option<String>)>,
}

impl Link {
    /// The value of the first parameter called `name`, if it has one.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_deref())
    }
}

/// An object version, `ver=major.minor` (LwM2M Core 1.1 §6.2.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectVersion {
    /// Major number.
    pub major: u16,
    /// Minor number.
    pub minor: u16,
}

impl fmt::Display for ObjectVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// One entry of the object list: an object (`instance: None`) or an object instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ObjectLink {
    /// Object ID.
    pub object: u16,
    /// Object Instance ID, if the link names an instance.
    pub instance: Option<u16>,
    /// `ver`, if given.
    pub version: Option<ObjectVersion>,
}

/// The typed object list of a Register or Update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectList {
    /// The root path: `/` unless the client announced an alternate one (`</lwm2m>;rt="oma.lwm2m"`).
    pub root: String,
    /// The content formats from `ct` on the root link, in the order given; empty if absent.
    pub content_formats: Vec<u16>,
    /// The objects and object instances, in the order given (paths relative to `root`).
    pub objects: Vec<ObjectLink>,
}

impl Default for ObjectList {
    fn default() -> Self {
        Self {
            root: "/".into(),
            content_formats: Vec::new(),
            objects: Vec::new(),
        }
    }
}

/// Parses a Register/Update payload into an [`ObjectList`].
pub fn parse(payload: &[u8]) -> Result<ObjectList, LinkFormatError> {
    let links = links(payload)?;
    let mut list = ObjectList::default();
    let mut root_seen = false;
    for (index, link) in links.iter().enumerate() {
        if is_root(link) {
            if root_seen {
                return Err(LinkFormatError::DuplicateRoot { index });
            }
            root_seen = true;
            list.root = root_path(index, &link.target)?;
            list.content_formats = content_formats(index, link)?;
        }
    }
    for (index, link) in links.iter().enumerate() {
        if !is_root(link) {
            list.objects.push(object_link(index, link, &list.root)?);
        }
    }
    Ok(list)
}

/// Splits a link-format payload into its link values (RFC 6690 §2), strictly: no whitespace
/// between tokens, no empty entries.
pub fn links(payload: &[u8]) -> Result<Vec<Link>, LinkFormatError> {
    if payload.len() > MAX_PAYLOAD {
        return Err(LinkFormatError::TooLong {
            len: payload.len(),
            max: MAX_PAYLOAD,
        });
    }
    let text = std::str::from_utf8(payload).map_err(|_| LinkFormatError::NotUtf8)?;
    if text.is_empty() {
        return Err(LinkFormatError::Empty);
    }
    let mut cursor = Cursor { rest: text };
    let mut out = Vec::new();
    loop {
        let index = out.len();
        if index == MAX_ENTRIES {
            return Err(LinkFormatError::TooManyEntries { max: MAX_ENTRIES });
        }
        out.push(cursor.link(index)?);
        match cursor.bump() {
            None => return Ok(out),
            Some(',') => {}
            Some(_) => return Err(LinkFormatError::BadParameter { index }),
        }
    }
}

/// A byte cursor over the payload text.
struct Cursor<'a> {
    rest: &'a str,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<char> {
        self.rest.chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.rest = &self.rest[c.len_utf8()..];
        Some(c)
    }

    /// `"<" target ">" *(";" param)`, stopping before `,` or the end.
    fn link(&mut self, index: usize) -> Result<Link, LinkFormatError> {
        match self.bump() {
            Some('<') => {}
            None | Some(',') => return Err(LinkFormatError::EmptyEntry { index }),
            Some(_) => return Err(LinkFormatError::ExpectedLink { index }),
        }
        let end = self
            .rest
            .find(['>', '<', ','])
            .filter(|&i| self.rest.as_bytes()[i] == b'>')
            .ok_or(LinkFormatError::Unterminated { index })?;
        let target = self.rest[..end].to_string();
        self.rest = &self.rest[end + 1..];
        let mut params = Vec::new();
        while self.peek() == Some(';') {
            self.bump();
            if params.len() == MAX_PARAMS {
                return Err(LinkFormatError::TooManyParams {
                    index,
                    max: MAX_PARAMS,
                });
            }
            params.push(self.param(index)?);
        }
        Ok(Link { target, params })
    }

    /// `parmname [ "=" ( ptoken / quoted-string ) ]`.
    fn param(&mut self, index: usize) -> Result<(String, Option<String>), LinkFormatError> {
        let bad = LinkFormatError::BadParameter { index };
        let name = self.take_while(is_name_char);
        if name.is_empty() {
            return Err(bad);
        }
        if self.peek() != Some('=') {
            return Ok((name.to_string(), None));
        }
        self.bump();
        let value = if self.peek() == Some('"') {
            self.bump();
            self.quoted().ok_or(bad)?
        } else {
            let token = self.take_while(is_ptoken_char);
            if token.is_empty() {
                return Err(bad);
            }
            token.to_string()
        };
        Ok((name.to_string(), Some(value)))
    }

    /// The rest of a quoted string after its opening `"`, unescaped; `None` if unterminated.
    fn quoted(&mut self) -> Option<String> {
        let mut out = String::new();
        loop {
            match self.bump()? {
                '"' => return Some(out),
                '\\' => out.push(self.bump()?),
                c => out.push(c),
            }
        }
    }

    fn take_while(&mut self, pred: fn(char) -> bool) -> &'a str {
        let end = self.rest.find(|c| !pred(c)).unwrap_or(self.rest.len());
        let (head, tail) = self.rest.split_at(end);
        self.rest = tail;
        head
    }
}

/// RFC 5987 `parmname` characters (RFC 6690 `link-extension`), plus `*` for `title*`.
fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$&+-.^_`|~*".contains(c)
}

/// RFC 6690 `ptokenchar`.
fn is_ptoken_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'()*+-./:<=>?@[]^_`{|}~".contains(c)
}

fn is_root(link: &Link) -> bool {
    link.param("rt")
        .is_some_and(|rt| rt.split(' ').any(|t| t == ROOT_RT))
}

fn root_path(index: usize, target: &str) -> Result<String, LinkFormatError> {
    let valid = target == "/"
        || target
            .strip_prefix('/')
            .is_some_and(|p| p.split('/').all(|s| !s.is_empty() && !s.contains('?')));
    if valid {
        Ok(target.to_string())
    } else {
        Err(LinkFormatError::BadRootPath {
            index,
            target: target.to_string(),
        })
    }
}

fn content_formats(index: usize, link: &Link) -> Result<Vec<u16>, LinkFormatError> {
    let Some(ct) = link.param("ct") else {
        return Ok(Vec::new());
    };
    ct.split(' ')
        .map(|n| decimal(n).ok_or(LinkFormatError::BadContentFormat { index }))
        .collect()
}

fn object_link(index: usize, link: &Link, root: &str) -> Result<ObjectLink, LinkFormatError> {
    let bad = || LinkFormatError::BadObjectPath {
        index,
        target: link.target.clone(),
    };
    let relative = strip_root(&link.target, root).ok_or_else(bad)?;
    let mut ids = relative.split('/').map(decimal);
    let object = ids.next().flatten().ok_or_else(bad)?;
    let instance = match ids.next() {
        None => None,
        Some(Some(i)) if i != u16::MAX => Some(i),
        Some(_) => return Err(bad()),
    };
    if ids.next().is_some() {
        return Err(bad());
    }
    let version = match link.param("ver") {
        None => None,
        Some(v) => Some(object_version(v).ok_or(LinkFormatError::BadVersion { index })?),
    };
    Ok(ObjectLink {
        object,
        instance,
        version,
    })
}

/// `target` without the root prefix and its separating `/`: `"/3/0"` under `"/"` is `"3/0"`,
/// `"/lwm2m/3"` under `"/lwm2m"` is `"3"`.
fn strip_root<'a>(target: &'a str, root: &str) -> Option<&'a str> {
    let rest = target.strip_prefix(root)?;
    if root == "/" {
        Some(rest)
    } else {
        rest.strip_prefix('/')
    }
}

/// `major.minor`, both decimal.
fn object_version(v: &str) -> Option<ObjectVersion> {
    let (major, minor) = v.split_once('.')?;
    Some(ObjectVersion {
        major: decimal(major)?,
        minor: decimal(minor)?,
    })
}

/// A decimal `u16` of 1 to 5 ASCII digits (no sign, no spaces).
pub(crate) fn decimal(s: &str) -> Option<u16> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(object: u16, instance: Option<u16>) -> ObjectLink {
        ObjectLink {
            object,
            instance,
            version: None,
        }
    }

    fn ver(mut o: ObjectLink, major: u16, minor: u16) -> ObjectLink {
        o.version = Some(ObjectVersion { major, minor });
        o
    }

    #[track_caller]
    fn refused(payload: &str) -> LinkFormatError {
        parse(payload.as_bytes()).expect_err(payload)
    }

    /// Wakaama's example client (PEERS.md), with the entries PEERS.md lists.
    #[test]
    fn wakaama_payload() {
        let p = br#"</>;rt="oma.lwm2m";ct=110,</1>;ver=1.1,</1/0>,</2/0>,</3/0>,</31024>;ver=1.0,</31024/10>"#;
        let list = parse(p).unwrap();
        assert_eq!(list.root, "/");
        assert_eq!(list.content_formats, vec![110]);
        assert_eq!(
            list.objects,
            vec![
                ver(obj(1, None), 1, 1),
                obj(1, Some(0)),
                obj(2, Some(0)),
                obj(3, Some(0)),
                ver(obj(31024, None), 1, 0),
                obj(31024, Some(10)),
            ]
        );
    }

    /// Anjay's demo client (PEERS.md): no root link, so root `/` and no `ct`.
    #[test]
    fn anjay_payload() {
        let list = parse(b"</1/1>,</2>,</3/0>,</10>;ver=1.1,</10/0>").unwrap();
        assert_eq!(list.root, "/");
        assert!(list.content_formats.is_empty());
        assert_eq!(
            list.objects,
            vec![
                obj(1, Some(1)),
                obj(2, None),
                obj(3, Some(0)),
                ver(obj(10, None), 1, 1),
                obj(10, Some(0)),
            ]
        );
    }

    #[test]
    fn alternate_root_and_ct_list() {
        let list =
            parse(br#"</lwm2m>;rt="oma.lwm2m";ct="60 110",</lwm2m/3/0>,</lwm2m/5>"#).unwrap();
        assert_eq!(list.root, "/lwm2m");
        assert_eq!(list.content_formats, vec![60, 110]);
        assert_eq!(list.objects, vec![obj(3, Some(0)), obj(5, None)]);
    }

    #[test]
    fn root_link_may_come_later_and_rt_may_be_a_list() {
        let list = parse(br#"</a/3/0>,</a>;rt="core.rd oma.lwm2m""#).unwrap();
        assert_eq!(list.root, "/a");
        assert_eq!(list.objects, vec![obj(3, Some(0))]);
    }

    #[test]
    fn quoted_unquoted_and_valueless_parameters() {
        let list = parse(br#"</3/0>;ver="1.2";obs;title="a,b;\"c\"",</4>;x=y"#).unwrap();
        assert_eq!(list.objects, vec![ver(obj(3, Some(0)), 1, 2), obj(4, None)]);
        let links = links(br#"</3/0>;obs;title="a,b;\"c\"""#).unwrap();
        assert_eq!(links[0].params[0], ("obs".to_string(), None));
        assert_eq!(links[0].param("title"), Some(r#"a,b;"c""#));
    }

    #[test]
    fn unquoted_rt_marks_the_root() {
        let list = parse(b"</x>;rt=oma.lwm2m,</x/1/0>").unwrap();
        assert_eq!(list.root, "/x");
    }

    #[test]
    fn refuses_empty_payload_and_entries() {
        assert_eq!(refused(""), LinkFormatError::Empty);
        assert_eq!(refused(",</1>"), LinkFormatError::EmptyEntry { index: 0 });
        assert_eq!(
            refused("</1>,,</2>"),
            LinkFormatError::EmptyEntry { index: 1 }
        );
        assert_eq!(refused("</1>,"), LinkFormatError::EmptyEntry { index: 1 });
    }

    #[test]
    fn refuses_unterminated_and_missing_angle() {
        assert_eq!(refused("</1"), LinkFormatError::Unterminated { index: 0 });
        assert_eq!(
            refused("</1,</2>"),
            LinkFormatError::Unterminated { index: 0 }
        );
        assert_eq!(refused("</1<>"), LinkFormatError::Unterminated { index: 0 });
        assert_eq!(refused("/1>"), LinkFormatError::ExpectedLink { index: 0 });
        assert_eq!(
            refused("</1>, </2>"),
            LinkFormatError::ExpectedLink { index: 1 }
        );
    }

    #[test]
    fn refuses_malformed_parameters() {
        for p in [
            "</1>x",
            "</1>;",
            "</1>;=3",
            "</1>;ver=",
            r#"</1>;title="open"#,
            "</1>;ver=1.1 ",
            r#"</1>;a="b"c"#,
        ] {
            assert_eq!(
                refused(p),
                LinkFormatError::BadParameter { index: 0 },
                "{p}"
            );
        }
    }

    #[test]
    fn refuses_bad_object_paths() {
        for p in [
            "</abc>",
            "</3/x>",
            "</3/0/1>",
            "</>",
            "<3/0>",
            "</3/>",
            "<//3>",
            "</70000>",
            "</3/65535>",
            "</-1>",
            "</+3>",
        ] {
            assert!(
                matches!(refused(p), LinkFormatError::BadObjectPath { index: 0, .. }),
                "{p}"
            );
        }
    }

    #[test]
    fn objects_must_sit_under_the_alternate_root() {
        let e = refused(r#"</lwm2m>;rt="oma.lwm2m",</3/0>"#);
        assert_eq!(
            e,
            LinkFormatError::BadObjectPath {
                index: 1,
                target: "/3/0".into()
            }
        );
        assert!(matches!(
            refused(r#"</lwm2m>;rt="oma.lwm2m",</lwm2mx/3>"#),
            LinkFormatError::BadObjectPath { index: 1, .. }
        ));
    }

    #[test]
    fn refuses_bad_root_version_and_ct() {
        assert!(matches!(
            refused(r#"<lwm2m>;rt="oma.lwm2m""#),
            LinkFormatError::BadRootPath { .. }
        ));
        assert!(matches!(
            refused(r#"</a//b>;rt="oma.lwm2m""#),
            LinkFormatError::BadRootPath { .. }
        ));
        assert_eq!(
            refused(r#"</>;rt="oma.lwm2m",</a>;rt="oma.lwm2m""#),
            LinkFormatError::DuplicateRoot { index: 1 }
        );
        for v in ["1", "1.x", "1.1.1", ".1", "\"\""] {
            let p = format!("</3>;ver={v}");
            assert_eq!(refused(&p), LinkFormatError::BadVersion { index: 0 }, "{p}");
        }
        assert_eq!(
            refused(r#"</>;rt="oma.lwm2m";ct="110  112""#),
            LinkFormatError::BadContentFormat { index: 0 }
        );
        assert_eq!(
            refused(r#"</>;rt="oma.lwm2m";ct=abc"#),
            LinkFormatError::BadContentFormat { index: 0 }
        );
    }

    #[test]
    fn refuses_non_utf8_and_oversize() {
        assert_eq!(parse(b"</3/\xff>").unwrap_err(), LinkFormatError::NotUtf8);
        let long = vec![b'a'; MAX_PAYLOAD + 1];
        assert_eq!(
            parse(&long).unwrap_err(),
            LinkFormatError::TooLong {
                len: MAX_PAYLOAD + 1,
                max: MAX_PAYLOAD
            }
        );
    }

    #[test]
    fn bounds_entries_and_parameters() {
        let ok = vec!["</3>"; MAX_ENTRIES].join(",");
        assert_eq!(parse(ok.as_bytes()).unwrap().objects.len(), MAX_ENTRIES);
        let over = vec!["</3>"; MAX_ENTRIES + 1].join(",");
        assert_eq!(
            refused(&over),
            LinkFormatError::TooManyEntries { max: MAX_ENTRIES }
        );
        let many = format!("</3>{}", ";a".repeat(MAX_PARAMS + 1));
        assert_eq!(
            refused(&many),
            LinkFormatError::TooManyParams {
                index: 0,
                max: MAX_PARAMS
            }
        );
    }

    /// Totality: 20 000 pseudo-random payloads over the grammar's own characters (and a
    /// non-ASCII one) yield `Ok` or an error, never a panic.
    #[test]
    fn never_panics_on_grammar_soup() {
        let alphabet: Vec<char> = "<>/;=,\"\\0139a.rtoma.lwm2mctver é".chars().collect();
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 40) as usize;
            let text: String = (0..len)
                .map(|i| alphabet[((state >> (i % 50)) as usize + i * 7) % alphabet.len()])
                .collect();
            let _ = parse(text.as_bytes());
        }
    }

    #[test]
    fn version_displays_as_major_dot_minor() {
        assert_eq!(ObjectVersion { major: 1, minor: 2 }.to_string(), "1.2");
    }
}
