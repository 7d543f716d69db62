//! DNS messages on the wire: parse and validate queries and answers (with
//! `hickory-proto`), find the names of an answer that match rules (query name and CNAME
//! chain) with their addresses and TTLs, and the few byte-level edits the proxy makes
//! (message id, TTL cap). Pure and panic-free on any input: the fuzz tests feed it
//! random and mutated bytes.
//!
//! The proxy forwards the client's bytes (new message id) and relays the upstream's
//! bytes (client's id restored, TTLs of matched answers capped): what is checked is
//! what is sent, and nothing is lost in a re-encoding.

use std::net::IpAddr;

use hickory_proto::{
    op::{Edns, Message, MessageType, OpCode, ResponseCode},
    rr::{DNSClass, Name, RData, Record, RecordType},
    serialize::binary::{BinDecodable, BinDecoder},
};

use super::matcher::{Matcher, normalize};

/// Length of the fixed DNS header.
pub const HEADER_LEN: usize = 12;
/// Longest CNAME chain followed.
pub const MAX_CHAIN: usize = 16;

/// What to do with a query that cannot be served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Send nothing.
    Drop,
    /// Answer with this response code.
    Rcode(ResponseCode),
}

/// Why a query is not forwarded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("{0} bytes: shorter than a DNS header")]
    TooShort(usize),
    #[error("a response (QR set), not a query")]
    NotAQuery,
    #[error("{0} questions (exactly one is served)")]
    QuestionCount(u16),
    #[error("answer or authority records in a query")]
    RecordsInQuery,
    #[error("undecodable: {0}")]
    Decode(String),
    #[error("{0} bytes after the message")]
    Trailing(usize),
    #[error("TC set in a query")]
    Truncated,
    #[error("opcode {0} not supported")]
    OpCode(u8),
    #[error("class {0} not served")]
    Class(DNSClass),
    #[error("zone transfer ({0}) refused")]
    Transfer(RecordType),
}

impl QueryError {
    /// FORMERR for malformed queries (when the header is there to answer), NOTIMP for
    /// other opcodes, REFUSED for what is well-formed but not served; nothing for
    /// runts and responses.
    #[must_use]
    pub fn reply(&self) -> Reply {
        match self {
            Self::TooShort(_) | Self::NotAQuery => Reply::Drop,
            Self::QuestionCount(_)
            | Self::RecordsInQuery
            | Self::Decode(_)
            | Self::Trailing(_)
            | Self::Truncated => Reply::Rcode(ResponseCode::FormErr),
            Self::OpCode(_) => Reply::Rcode(ResponseCode::NotImp),
            Self::Class(_) | Self::Transfer(_) => Reply::Rcode(ResponseCode::Refused),
        }
    }

    /// Malformed (as opposed to well-formed but not served)?
    #[must_use]
    pub fn is_malformed(&self) -> bool {
        matches!(
            self,
            Self::TooShort(_)
                | Self::NotAQuery
                | Self::QuestionCount(_)
                | Self::RecordsInQuery
                | Self::Decode(_)
                | Self::Trailing(_)
                | Self::Truncated
        )
    }
}

/// A validated query.
#[derive(Clone, Debug)]
pub struct ParsedQuery {
    pub id: u16,
    pub msg: Message,
    pub name: Name,
    /// Lowercase, without the trailing dot; `None` if the name cannot match a rule
    /// (bytes outside host-name characters).
    pub key: Option<String>,
    pub qtype: RecordType,
    pub qclass: DNSClass,
}

fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([b[i], b[i + 1]])
}

enum DecodeFail {
    Bad(String),
    Trailing(usize),
}

/// Decode a whole message: every byte must belong to it.
fn decode(buf: &[u8]) -> Result<Message, DecodeFail> {
    let mut d = BinDecoder::new(buf);
    let m = Message::read(&mut d).map_err(|e| DecodeFail::Bad(e.to_string()))?;
    if !d.is_empty() {
        return Err(DecodeFail::Trailing(d.len()));
    }
    Ok(m)
}

/// The matchable form of a wire name: lowercase labels joined by dots, no trailing
/// dot; `None` if a label holds anything but letters, digits, `-` and `_`.
#[must_use]
pub fn name_key(name: &Name) -> Option<String> {
    let mut s = String::with_capacity(name.len());
    for label in name.iter() {
        if !s.is_empty() {
            s.push('.');
        }
        for &b in label {
            if !(b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
                return None;
            }
            s.push(char::from(b.to_ascii_lowercase()));
        }
    }
    normalize(&s).map(std::borrow::Cow::into_owned)
}

/// Parse and validate a query: header first (so a hostile count never drives an
/// allocation), then the whole message.
///
/// # Errors
/// [`QueryError`]; its [`QueryError::reply`] says how to answer.
pub fn parse_query(buf: &[u8]) -> Result<ParsedQuery, QueryError> {
    if buf.len() < HEADER_LEN {
        return Err(QueryError::TooShort(buf.len()));
    }
    if buf[2] & 0x80 != 0 {
        return Err(QueryError::NotAQuery);
    }
    let opcode = (buf[2] >> 3) & 0x0f;
    if opcode != 0 {
        return Err(QueryError::OpCode(opcode));
    }
    if buf[2] & 0x02 != 0 {
        return Err(QueryError::Truncated);
    }
    let qd = u16_at(buf, 4);
    if qd != 1 {
        return Err(QueryError::QuestionCount(qd));
    }
    if u16_at(buf, 6) != 0 || u16_at(buf, 8) != 0 {
        return Err(QueryError::RecordsInQuery);
    }
    let msg = match decode(buf) {
        Ok(m) => m,
        Err(DecodeFail::Trailing(n)) => return Err(QueryError::Trailing(n)),
        Err(DecodeFail::Bad(e)) => return Err(QueryError::Decode(e)),
    };
    let Some(q) = msg.queries.first() else {
        return Err(QueryError::QuestionCount(0));
    };
    let (name, qtype, qclass) = (q.name().clone(), q.query_type(), q.query_class());
    if qclass != DNSClass::IN {
        return Err(QueryError::Class(qclass));
    }
    if matches!(qtype, RecordType::AXFR | RecordType::IXFR) {
        return Err(QueryError::Transfer(qtype));
    }
    Ok(ParsedQuery {
        id: msg.metadata.id,
        key: name_key(&name),
        name,
        qtype,
        qclass,
        msg,
    })
}

/// A bare header answering `buf`'s header with `rcode` (id, opcode and RD copied, no
/// records): for queries too broken to echo their question. `None` for runts.
#[must_use]
pub fn header_reply(buf: &[u8], rcode: ResponseCode) -> Option<Vec<u8>> {
    if buf.len() < HEADER_LEN {
        return None;
    }
    let mut out = vec![0u8; HEADER_LEN];
    out[0] = buf[0];
    out[1] = buf[1];
    out[2] = 0x80 | (buf[2] & 0x78) | (buf[2] & 0x01);
    out[3] = rcode.low() & 0x0f;
    Some(out)
}

/// The answer to a query [`parse_query`] rejected with `err`: nothing, a bare header
/// (malformed), or the question echoed with the response code (well-formed but not
/// served).
#[must_use]
pub fn reply_for(buf: &[u8], err: &QueryError) -> Option<Vec<u8>> {
    let Reply::Rcode(rc) = err.reply() else {
        return None;
    };
    if !err.is_malformed()
        && buf.len() >= HEADER_LEN
        && u16_at(buf, 4) == 1
        && let Ok(msg) = decode(buf)
        && let Some(q) = msg.queries.first()
    {
        let p = ParsedQuery {
            id: msg.metadata.id,
            name: q.name().clone(),
            key: None,
            qtype: q.query_type(),
            qclass: q.query_class(),
            msg: msg.clone(),
        };
        let mut out = error_reply(&p, rc);
        // Keep the query's opcode (error_reply answers as QUERY).
        if out.len() >= HEADER_LEN {
            out[2] = (out[2] & !0x78) | (buf[2] & 0x78);
        }
        return Some(out);
    }
    header_reply(buf, rc)
}

/// Answer `q` with `rcode` and no records (question echoed, an OPT record if the
/// query had one). Never larger than the query plus an OPT record, so it cannot
/// amplify.
#[must_use]
pub fn error_reply(q: &ParsedQuery, rcode: ResponseCode) -> Vec<u8> {
    let mut m = Message::error_msg(q.id, OpCode::Query, rcode);
    m.metadata.recursion_desired = q.msg.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    m.metadata.checking_disabled = q.msg.metadata.checking_disabled;
    m.add_query(q.msg.queries[0].clone());
    if q.msg.edns.is_some() {
        let mut e = Edns::new();
        e.set_max_payload(1232);
        m.set_edns(e);
    }
    m.to_vec().unwrap_or_else(|_| {
        let mut raw = vec![0u8; HEADER_LEN];
        raw[..2].copy_from_slice(&q.id.to_be_bytes());
        raw[2] = 0x80 | u8::from(q.msg.metadata.recursion_desired);
        raw[3] = rcode.low() & 0x0f;
        raw
    })
}

/// An empty answer to `q` with TC set: the client retries over TCP.
#[must_use]
pub fn truncated_reply(q: &ParsedQuery) -> Vec<u8> {
    let mut m = Message::response(q.id, OpCode::Query);
    m.metadata.truncation = true;
    m.metadata.recursion_desired = q.msg.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    m.add_query(q.msg.queries[0].clone());
    m.to_vec().unwrap_or_else(|_| {
        let mut raw = vec![0u8; HEADER_LEN];
        raw[..2].copy_from_slice(&q.id.to_be_bytes());
        raw[2] = 0x80 | 0x02 | u8::from(q.msg.metadata.recursion_desired);
        raw
    })
}

/// Why an upstream answer was not used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    #[error("{0} bytes: shorter than a DNS header")]
    TooShort(usize),
    #[error("message id {got:#06x}, expected {want:#06x}")]
    Id { got: u16, want: u16 },
    #[error("not a response (QR clear)")]
    NotAResponse,
    #[error("question does not match the query")]
    Question,
    #[error("undecodable: {0}")]
    Decode(String),
}

impl ResponseError {
    /// Could this datagram be someone else's (stray or spoofed)? Those are ignored
    /// while waiting for the real answer.
    #[must_use]
    pub fn is_mismatch(&self) -> bool {
        matches!(
            self,
            Self::TooShort(_) | Self::Id { .. } | Self::NotAResponse | Self::Question
        )
    }
}

/// A validated upstream answer.
#[derive(Clone, Debug)]
pub struct ParsedResponse {
    pub msg: Message,
    pub rcode: ResponseCode,
    pub truncated: bool,
}

/// Parse and validate the upstream's answer to `q` sent with message id `id`: a
/// response, same id, opcode QUERY, the same question (name compared
/// case-insensitively); error answers may omit the question.
///
/// # Errors
/// [`ResponseError`].
pub fn parse_response(
    buf: &[u8],
    id: u16,
    q: &ParsedQuery,
) -> Result<ParsedResponse, ResponseError> {
    if buf.len() < HEADER_LEN {
        return Err(ResponseError::TooShort(buf.len()));
    }
    let got = u16_at(buf, 0);
    if got != id {
        return Err(ResponseError::Id { got, want: id });
    }
    if buf[2] & 0x80 == 0 {
        return Err(ResponseError::NotAResponse);
    }
    let qd = u16_at(buf, 4);
    if qd > 1 || (buf[2] >> 3) & 0x0f != 0 {
        return Err(ResponseError::Question);
    }
    let msg = decode(buf).map_err(|e| match e {
        DecodeFail::Bad(e) => ResponseError::Decode(e),
        DecodeFail::Trailing(n) => ResponseError::Decode(format!("{n} bytes after the message")),
    })?;
    let rcode = msg.metadata.response_code;
    match msg.queries.first() {
        Some(rq) => {
            if rq.query_type() != q.qtype
                || rq.query_class() != q.qclass
                || !rq.name().eq_ignore_root(&q.name)
            {
                return Err(ResponseError::Question);
            }
        }
        None if rcode != ResponseCode::NoError && msg.answers.is_empty() => {}
        None => return Err(ResponseError::Question),
    }
    Ok(ParsedResponse {
        truncated: msg.metadata.truncation,
        rcode,
        msg,
    })
}

/// A name of an answer that matches rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Matched {
    /// Lowercase, no trailing dot.
    pub name: String,
    pub rules: Vec<u32>,
    /// The addresses it resolves to, each with the smallest TTL (seconds) along the
    /// chain from this name to the address record.
    pub addrs: Vec<(IpAddr, u32)>,
}

/// The names of an answer to `qname` that match rules: the query name and every
/// name of its CNAME chain (followed through the answer section, at most
/// [`MAX_CHAIN`] links, loops cut), each with the A/AAAA addresses at the end of the
/// chain. Address records owned by names outside the chain are ignored.
#[must_use]
pub fn matched_names(matcher: &Matcher, qname: &Name, answers: &[Record]) -> Vec<Matched> {
    let Some(first) = name_key(qname) else {
        return Vec::new();
    };
    // chain[i] = (name, TTL of the CNAME leaving it)
    let mut chain: Vec<(String, u32)> = Vec::new();
    let mut current = first;
    loop {
        let next = answers.iter().find_map(|r| match &r.data {
            RData::CNAME(c) if name_key(&r.name).as_deref() == Some(current.as_str()) => {
                Some((name_key(&c.0), r.ttl))
            }
            _ => None,
        });
        match next {
            Some((Some(target), ttl))
                if chain.len() < MAX_CHAIN
                    && target != current
                    && !chain.iter().any(|(n, _)| *n == target) =>
            {
                chain.push((std::mem::replace(&mut current, target), ttl));
            }
            _ => break,
        }
    }
    chain.push((current, u32::MAX));
    let end = &chain[chain.len() - 1].0;
    let addrs: Vec<(IpAddr, u32)> = answers
        .iter()
        .filter(|r| name_key(&r.name).as_deref() == Some(end.as_str()))
        .filter_map(|r| match &r.data {
            RData::A(a) => Some((IpAddr::V4(a.0), r.ttl)),
            RData::AAAA(a) => Some((IpAddr::V6(a.0), r.ttl)),
            _ => None,
        })
        .collect();
    let mut out = Vec::new();
    for (i, (name, _)) in chain.iter().enumerate() {
        let rules = matcher.matches(name);
        if rules.is_empty() {
            continue;
        }
        let chain_ttl = chain[i..].iter().map(|c| c.1).min().unwrap_or(u32::MAX);
        let mut a: Vec<(IpAddr, u32)> = addrs
            .iter()
            .map(|&(ip, ttl)| (ip, ttl.min(chain_ttl)))
            .collect();
        a.sort_unstable();
        a.dedup_by_key(|x| x.0);
        out.push(Matched {
            name: name.clone(),
            rules,
            addrs: a,
        });
    }
    out
}

/// Set the message id (first two bytes).
pub fn set_id(buf: &mut [u8], id: u16) {
    if buf.len() >= 2 {
        buf[..2].copy_from_slice(&id.to_be_bytes());
    }
}

/// Skip a (possibly compressed) name at `i`; the index after it.
fn skip_name(buf: &[u8], mut i: usize) -> Option<usize> {
    for _ in 0..128 {
        let len = *buf.get(i)?;
        match len & 0xc0 {
            0x00 if len == 0 => return Some(i + 1),
            0x00 => i += 1 + usize::from(len),
            0xc0 => return (i + 2 <= buf.len()).then_some(i + 2),
            _ => return None,
        }
    }
    None
}

/// Lower the TTL of every answer-section record above `max_ttl` to `max_ttl`, in
/// place, so no client caches an allowed answer longer than the table keeps it.
/// Returns how many were lowered; `None` (and nothing changed) if the message does
/// not walk cleanly.
pub fn cap_answer_ttls(buf: &mut [u8], max_ttl: u32) -> Option<usize> {
    if buf.len() < HEADER_LEN {
        return None;
    }
    let (qd, an) = (u16_at(buf, 4), u16_at(buf, 6));
    let mut i = HEADER_LEN;
    for _ in 0..qd {
        i = skip_name(buf, i)? + 4;
    }
    let mut at = Vec::with_capacity(usize::from(an));
    for _ in 0..an {
        i = skip_name(buf, i)?;
        let ttl_at = i + 4;
        let rdlen_at = i + 8;
        if rdlen_at + 2 > buf.len() {
            return None;
        }
        let rdlen = usize::from(u16_at(buf, rdlen_at));
        at.push(ttl_at);
        i = rdlen_at + 2 + rdlen;
        if i > buf.len() {
            return None;
        }
    }
    let mut n = 0;
    for p in at {
        let ttl = u32::from_be_bytes([buf[p], buf[p + 1], buf[p + 2], buf[p + 3]]);
        if ttl > max_ttl {
            buf[p..p + 4].copy_from_slice(&max_ttl.to_be_bytes());
            n += 1;
        }
    }
    Some(n)
}

/// Build a query (tests, benchmarks, clients): recursion desired, optional EDNS.
#[must_use]
pub fn build_query(id: u16, name: &str, qtype: RecordType, edns: bool) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    let n = Name::from_ascii(name).unwrap_or_else(|_| Name::root());
    m.add_query(hickory_proto::op::Query::query(n, qtype));
    if edns {
        let mut e = Edns::new();
        e.set_max_payload(1232);
        m.set_edns(e);
    }
    m.to_vec().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use hickory_proto::rr::rdata::{A, AAAA, CNAME};
    use rand::{Rng, SeedableRng, rngs::StdRng};

    use super::*;

    fn n(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn rec(owner: &str, ttl: u32, data: RData) -> Record {
        Record::from_rdata(n(owner), ttl, data)
    }

    fn a(owner: &str, ttl: u32, ip: [u8; 4]) -> Record {
        rec(owner, ttl, RData::A(A(Ipv4Addr::from(ip))))
    }

    fn cname(owner: &str, ttl: u32, to: &str) -> Record {
        rec(owner, ttl, RData::CNAME(CNAME(n(to))))
    }

    fn response(q: &[u8], answers: Vec<Record>) -> Vec<u8> {
        let q = Message::from_vec(q).unwrap();
        let mut m = Message::response(q.metadata.id, OpCode::Query);
        m.add_queries(q.queries.clone());
        m.add_answers(answers);
        m.to_vec().unwrap()
    }

    #[test]
    fn query_validation() {
        let q = build_query(0x1234, "PyPI.org.", RecordType::A, true);
        let p = parse_query(&q).unwrap();
        assert_eq!(p.id, 0x1234);
        assert_eq!(p.key.as_deref(), Some("pypi.org"));
        assert_eq!(p.qtype, RecordType::A);

        assert_eq!(parse_query(&q[..5]).unwrap_err(), QueryError::TooShort(5));
        assert_eq!(parse_query(&q[..5]).unwrap_err().reply(), Reply::Drop);
        let e = parse_query(&q[..q.len() - 3]).unwrap_err();
        assert!(matches!(e, QueryError::Decode(_)), "{e:?}");
        assert_eq!(e.reply(), Reply::Rcode(ResponseCode::FormErr));
        let mut t = q.clone();
        t.extend_from_slice(&[0, 0]);
        assert_eq!(parse_query(&t).unwrap_err(), QueryError::Trailing(2));
        let mut r = q.clone();
        r[2] |= 0x80;
        assert_eq!(parse_query(&r).unwrap_err(), QueryError::NotAQuery);
        let mut two = q.clone();
        two[5] = 2;
        assert_eq!(parse_query(&two).unwrap_err(), QueryError::QuestionCount(2));
        let mut hostile = q.clone();
        hostile[4] = 0xff;
        hostile[5] = 0xff;
        assert_eq!(
            parse_query(&hostile).unwrap_err(),
            QueryError::QuestionCount(0xffff)
        );
        let mut op = q.clone();
        op[2] |= 2 << 3; // STATUS
        assert_eq!(
            parse_query(&op).unwrap_err().reply(),
            Reply::Rcode(ResponseCode::NotImp)
        );
        let axfr = build_query(1, "example.org.", RecordType::AXFR, false);
        assert_eq!(
            parse_query(&axfr).unwrap_err().reply(),
            Reply::Rcode(ResponseCode::Refused)
        );
        // A compression pointer to itself: the name never ends.
        let mut lp = q[..HEADER_LEN].to_vec();
        lp[10] = 0;
        lp[11] = 0; // no additional records
        lp.extend_from_slice(&[0xc0, 0x0c, 0x00, 0x01, 0x00, 0x01]);
        let e = parse_query(&lp).unwrap_err();
        assert_eq!(e.reply(), Reply::Rcode(ResponseCode::FormErr), "{e:?}");
        let h = header_reply(&lp, ResponseCode::FormErr).unwrap();
        assert_eq!(h.len(), HEADER_LEN);
        let hm = Message::from_vec(&h).unwrap();
        assert_eq!(hm.metadata.id, 0x1234);
        assert_eq!(hm.metadata.response_code, ResponseCode::FormErr);
        assert_eq!(hm.metadata.message_type, MessageType::Response);
    }

    #[test]
    fn error_and_truncated_replies_echo_the_question() {
        let q = build_query(7, "pypi.org.", RecordType::AAAA, true);
        let p = parse_query(&q).unwrap();
        let r = Message::from_vec(&error_reply(&p, ResponseCode::Refused)).unwrap();
        assert_eq!(r.metadata.id, 7);
        assert_eq!(r.metadata.response_code, ResponseCode::Refused);
        assert_eq!(r.queries, p.msg.queries);
        assert!(r.edns.is_some());
        assert!(error_reply(&p, ResponseCode::Refused).len() <= q.len() + 11);
        let t = Message::from_vec(&truncated_reply(&p)).unwrap();
        assert!(t.metadata.truncation);
        assert!(t.answers.is_empty());
        assert!(
            parse_response(&truncated_reply(&p), 7, &p)
                .unwrap()
                .truncated
        );
    }

    #[test]
    fn response_validation() {
        let q = build_query(9, "pypi.org.", RecordType::A, false);
        let p = parse_query(&q).unwrap();
        let ok = response(&q, vec![a("pypi.org.", 30, [151, 101, 0, 223])]);
        let r = parse_response(&ok, 9, &p).unwrap();
        assert_eq!(r.rcode, ResponseCode::NoError);
        assert_eq!(r.msg.answers.len(), 1);
        assert!(matches!(
            parse_response(&ok, 10, &p),
            Err(ResponseError::Id { .. })
        ));
        assert!(matches!(
            parse_response(&q, 9, &p),
            Err(ResponseError::NotAResponse)
        ));
        let other = build_query(9, "evil.org.", RecordType::A, false);
        let bad = response(&other, vec![a("pypi.org.", 30, [6, 6, 6, 6])]);
        assert_eq!(
            parse_response(&bad, 9, &p).unwrap_err(),
            ResponseError::Question
        );
        // Case differences in the echoed question are fine (0x20 randomisation).
        let upper = build_query(9, "PYPI.ORG.", RecordType::A, false);
        assert!(parse_response(&response(&upper, vec![]), 9, &p).is_ok());
        let cut = &ok[..ok.len() - 2];
        assert!(matches!(
            parse_response(cut, 9, &p),
            Err(ResponseError::Decode(_))
        ));
        assert!(!ResponseError::Decode(String::new()).is_mismatch());
        // SERVFAIL without a question is accepted.
        let sf = header_reply(&q, ResponseCode::ServFail).unwrap();
        let mut sf = sf;
        sf[2] |= 0x80;
        assert_eq!(
            parse_response(&sf, 9, &p).unwrap().rcode,
            ResponseCode::ServFail
        );
    }

    #[test]
    fn cname_chains_and_ttls() {
        let m =
            Matcher::from_patterns([("*.anaconda.org", 2), ("x.cdn.example", 9), ("pypi.org", 1)]);
        let answers = vec![
            cname("conda.anaconda.org.", 50, "mid.cdn.example."),
            cname("mid.cdn.example.", 20, "x.cdn.example."),
            a("x.cdn.example.", 300, [10, 99, 0, 5]),
            rec(
                "x.cdn.example.",
                40,
                RData::AAAA(AAAA(Ipv6Addr::new(0xfd99, 0, 0, 0, 0, 0, 0, 5))),
            ),
            // Not in the chain: must be ignored.
            a("pypi.org.", 30, [6, 6, 6, 6]),
            a("mid.cdn.example.", 30, [7, 7, 7, 7]),
        ];
        let got = matched_names(&m, &n("Conda.Anaconda.org."), &answers);
        assert_eq!(
            got,
            vec![
                Matched {
                    name: "conda.anaconda.org".into(),
                    rules: vec![2],
                    addrs: vec![
                        ("10.99.0.5".parse().unwrap(), 20),
                        ("fd99::5".parse().unwrap(), 20)
                    ],
                },
                Matched {
                    name: "x.cdn.example".into(),
                    rules: vec![9],
                    addrs: vec![
                        ("10.99.0.5".parse().unwrap(), 300),
                        ("fd99::5".parse().unwrap(), 40)
                    ],
                },
            ]
        );
        // Loops are cut, unmatched chains give nothing.
        let looped = vec![
            cname("a.example.", 5, "b.example."),
            cname("b.example.", 5, "a.example."),
        ];
        assert!(matched_names(&m, &n("a.example."), &looped).is_empty());
        let m2 = Matcher::from_patterns([("a.example", 1)]);
        let got = matched_names(&m2, &n("a.example."), &looped);
        assert_eq!(got.len(), 1);
        assert!(got[0].addrs.is_empty());
        // A long chain stops at MAX_CHAIN links.
        let long: Vec<Record> = (0..40)
            .map(|i| {
                cname(
                    &format!("n{i}.example."),
                    5,
                    &format!("n{}.example.", i + 1),
                )
            })
            .chain([a("n40.example.", 5, [1, 2, 3, 4])])
            .collect();
        let m3 = Matcher::from_patterns([("n0.example", 1)]);
        let got = matched_names(&m3, &n("n0.example."), &long);
        assert!(got[0].addrs.is_empty(), "the end is beyond MAX_CHAIN");
    }

    #[test]
    fn ttl_cap_and_id_rewrite_in_place() {
        let q = build_query(3, "conda.anaconda.org.", RecordType::A, true);
        let mut resp = response(
            &q,
            vec![
                cname("conda.anaconda.org.", 50_000, "x.cdn.example."),
                a("x.cdn.example.", 30, [10, 99, 0, 5]),
            ],
        );
        assert_eq!(cap_answer_ttls(&mut resp, 3600), Some(1));
        set_id(&mut resp, 0xbeef);
        let m = Message::from_vec(&resp).unwrap();
        assert_eq!(m.metadata.id, 0xbeef);
        assert_eq!(m.answers[0].ttl, 3600);
        assert_eq!(m.answers[1].ttl, 30);
        assert_eq!(cap_answer_ttls(&mut resp[..20], 1), None);
    }

    /// Random and mutated messages through every parser: no panic, and whatever
    /// parses as a query answers as one.
    #[test]
    fn fuzz_parsers_never_panic() {
        let mut rng = StdRng::seed_from_u64(0xfeed);
        let m = Matcher::from_patterns([("*.example", 1), ("pypi.org", 2)]);
        let q = build_query(1, "a.b.example.", RecordType::A, true);
        let pq = parse_query(&q).unwrap();
        let seeds = [
            q.clone(),
            response(
                &q,
                vec![
                    cname("a.b.example.", 5, "c.example."),
                    a("c.example.", 5, [1, 2, 3, 4]),
                ],
            ),
            build_query(2, "pypi.org.", RecordType::AAAA, false),
        ];
        for i in 0..20_000 {
            let mut buf = if i % 4 == 0 {
                let len = rng.random_range(0..600);
                (0..len).map(|_| rng.random()).collect::<Vec<u8>>()
            } else {
                let mut b = seeds[i % seeds.len()].clone();
                for _ in 0..rng.random_range(1..6) {
                    match rng.random_range(0..4) {
                        0 if !b.is_empty() => {
                            let j = rng.random_range(0..b.len());
                            b[j] = rng.random();
                        }
                        1 if !b.is_empty() => {
                            let j = rng.random_range(0..b.len());
                            b.truncate(j);
                        }
                        2 => {
                            let j = rng.random_range(0..=b.len());
                            b.insert(
                                j,
                                if rng.random_bool(0.5) {
                                    0xc0
                                } else {
                                    rng.random()
                                },
                            );
                        }
                        _ => b.extend((0..rng.random_range(0..8)).map(|_| rng.random::<u8>())),
                    }
                }
                b
            };
            match parse_query(&buf) {
                Ok(p) => {
                    let _ = error_reply(&p, ResponseCode::Refused);
                    let _ = truncated_reply(&p);
                }
                Err(e) => {
                    let _ = e.reply();
                    let _ = header_reply(&buf, ResponseCode::FormErr);
                }
            }
            let id = if buf.len() >= 2 { u16_at(&buf, 0) } else { 0 };
            if let Ok(r) = parse_response(&buf, id, &pq) {
                let _ = matched_names(&m, &pq.name, &r.msg.answers);
            }
            if let Ok(msg) = Message::from_vec(&buf)
                && let Some(qq) = msg.queries.first()
            {
                let _ = matched_names(&m, qq.name(), &msg.answers);
            }
            let _ = cap_answer_ttls(&mut buf, 60);
        }
    }
}
