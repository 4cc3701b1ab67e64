//! Reverse DNS (PTR) lookups, hand-written: what DNS discovery asks to learn a replica's name from its address.
//!
//! Docker's embedded DNS (127.0.0.11) answers a PTR query for a container's address on a user-defined network
//! with the container's name, e.g. `dmutex_node_3.dmutex_default` for compose's third `node` replica; that
//! name is what makes a replica's node id stable across `--scale` ([`super::discovery`]). The system
//! resolver's `getnameinfo` would need NSS, which a static binary in an empty image does not have, so this
//! module sends one query over UDP to the first `nameserver` of `/etc/resolv.conf`.
//!
//! The message codec ([`encode_query`], [`decode_answer`]) is sans-I/O and tested on its own; [`lookup`] only
//! sends and waits. Must never: panic or loop on a malformed answer (every length and pointer is checked,
//! compression pointers may only point backwards), or take an answer for another query (id and question are
//! compared).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// Record type PTR.
const TYPE_PTR: u16 = 12;
/// Class IN.
const CLASS_IN: u16 = 1;
/// The longest name DNS allows, in presentation form.
const MAX_NAME: usize = 255;
/// Compression pointers followed while decoding one name, at most (a loop needs more).
const MAX_JUMPS: usize = 32;

/// Why an answer could not be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// The message ends before a field it announces.
    #[error("answer truncated at byte {0}")]
    Short(usize),
    /// The answer is for another query (id, or not a response, or another question).
    #[error("answer does not match the query")]
    Mismatch,
    /// The server set TC: the answer did not fit into UDP.
    #[error("answer truncated by the server (TC)")]
    Truncated,
    /// The server failed (SERVFAIL, REFUSED, …): worth asking again later.
    #[error("server answered rcode {0}")]
    Rcode(u8),
    /// A name in the answer is malformed (label type, pointer, length).
    #[error("malformed name at byte {0}")]
    BadName(usize),
}

/// What a well-formed answer says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PtrAnswer {
    /// The address's name (the first PTR record), without the trailing dot, e.g. `dmutex_node_3.dmutex_default`.
    Name(String),
    /// The server knows no name for the address (NXDOMAIN, or an answer without a PTR record).
    NoName,
}

/// The query name of `ip`: `4.3.2.1.in-addr.arpa` or the 32 reversed nibbles of an IPv6 address `.ip6.arpa`.
pub fn reverse_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            format!("{d}.{c}.{b}.{a}.in-addr.arpa")
        }
        IpAddr::V6(v6) => {
            let mut name = String::with_capacity(72);
            for byte in v6.octets().iter().rev() {
                name.push_str(&format!("{:x}.{:x}.", byte & 0xf, byte >> 4));
            }
            name.push_str("ip6.arpa");
            name
        }
    }
}

/// A PTR query for `ip` with message id `id`, recursion desired.
pub fn encode_query(id: u16, ip: IpAddr) -> Vec<u8> {
    let mut msg = Vec::with_capacity(96);
    msg.extend_from_slice(&id.to_be_bytes());
    msg.extend_from_slice(&0x0100u16.to_be_bytes()); // RD
    msg.extend_from_slice(&1u16.to_be_bytes()); // QDCOUNT
    msg.extend_from_slice(&[0; 6]); // ANCOUNT, NSCOUNT, ARCOUNT
    for label in reverse_name(ip).split('.') {
        // Labels of a reverse name are 1–8 ASCII characters.
        msg.push(label.len() as u8);
        msg.extend_from_slice(label.as_bytes());
    }
    msg.push(0);
    msg.extend_from_slice(&TYPE_PTR.to_be_bytes());
    msg.extend_from_slice(&CLASS_IN.to_be_bytes());
    msg
}

/// Decodes the answer to [`encode_query`]`(id, ip)`.
pub fn decode_answer(id: u16, ip: IpAddr, msg: &[u8]) -> Result<PtrAnswer, DnsError> {
    let header = msg.get(..12).ok_or(DnsError::Short(msg.len()))?;
    let word = |i: usize| u16::from_be_bytes([header[i], header[i + 1]]);
    let flags = word(2);
    let is_response = flags & 0x8000 != 0;
    let opcode = (flags >> 11) & 0xf;
    if word(0) != id || !is_response || opcode != 0 {
        return Err(DnsError::Mismatch);
    }
    if flags & 0x0200 != 0 {
        return Err(DnsError::Truncated);
    }
    let (questions, answers) = (word(4), word(6));
    if questions != 1 {
        return Err(DnsError::Mismatch);
    }
    let mut at = 12;
    let (qname, end) = read_name(msg, at)?;
    let qtail = msg.get(end..end + 4).ok_or(DnsError::Short(msg.len()))?;
    if !qname.eq_ignore_ascii_case(&reverse_name(ip)) || qtail != [0, 12, 0, 1] {
        return Err(DnsError::Mismatch);
    }
    at = end + 4;
    match (flags & 0xf) as u8 {
        0 => {}
        3 => return Ok(PtrAnswer::NoName),
        rcode => return Err(DnsError::Rcode(rcode)),
    }
    for _ in 0..answers {
        let (_, end) = read_name(msg, at)?;
        let fixed = msg.get(end..end + 10).ok_or(DnsError::Short(msg.len()))?;
        let rtype = u16::from_be_bytes([fixed[0], fixed[1]]);
        let class = u16::from_be_bytes([fixed[2], fixed[3]]);
        let len = usize::from(u16::from_be_bytes([fixed[8], fixed[9]]));
        let data = end + 10;
        if msg.len() < data + len {
            return Err(DnsError::Short(msg.len()));
        }
        if rtype == TYPE_PTR && class == CLASS_IN {
            let (name, name_end) = read_name(msg, data)?;
            if name_end > data + len || name.is_empty() {
                return Err(DnsError::BadName(data));
            }
            return Ok(PtrAnswer::Name(name));
        }
        // A CNAME first (RFC 2317 delegation) or anything else: skip it.
        at = data + len;
    }
    Ok(PtrAnswer::NoName)
}

/// Reads the (possibly compressed) name at `start`: its dotted form without the trailing dot, and where the
/// name ends in the message (after its first pointer, if any).
fn read_name(msg: &[u8], start: usize) -> Result<(String, usize), DnsError> {
    let mut name = String::new();
    let mut at = start;
    let mut end = None;
    let mut jumps = 0;
    loop {
        let len = *msg.get(at).ok_or(DnsError::Short(msg.len()))?;
        match len & 0xc0 {
            0x00 if len == 0 => {
                return Ok((name, end.unwrap_or(at + 1)));
            }
            0x00 => {
                let label = msg.get(at + 1..at + 1 + usize::from(len)).ok_or(DnsError::Short(msg.len()))?;
                if !name.is_empty() {
                    name.push('.');
                }
                // Only what a host name may hold (and `_`, which compose names have); anything else is refused
                // rather than passed on.
                if !label.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
                    return Err(DnsError::BadName(at));
                }
                name.extend(label.iter().map(|&b| char::from(b)));
                if name.len() > MAX_NAME {
                    return Err(DnsError::BadName(at));
                }
                at += 1 + usize::from(len);
            }
            0xc0 => {
                let low = *msg.get(at + 1).ok_or(DnsError::Short(msg.len()))?;
                let target = usize::from(u16::from_be_bytes([len & 0x3f, low]));
                // Backwards only: with the jump limit, no loop.
                jumps += 1;
                if target >= at || jumps > MAX_JUMPS {
                    return Err(DnsError::BadName(at));
                }
                end.get_or_insert(at + 2);
                at = target;
            }
            _ => return Err(DnsError::BadName(at)),
        }
    }
}

/// The first usable `nameserver` of a `resolv.conf` text (a scoped IPv6 address, `fe80::1%eth0`, is skipped).
pub fn nameserver(resolv_conf: &str) -> Option<IpAddr> {
    resolv_conf.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        (words.next() == Some("nameserver")).then_some(())?;
        words.next()?.parse().ok()
    })
}

/// Asks the system's name server (first `nameserver` of `/etc/resolv.conf`) for the name of `ip`: `Ok` with
/// what a well-formed answer says, `Err` when no usable answer came within `timeout` (two tries).
pub async fn lookup(ip: IpAddr, timeout: Duration) -> io::Result<PtrAnswer> {
    let conf = tokio::fs::read_to_string("/etc/resolv.conf").await?;
    let server = nameserver(&conf)
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no nameserver in /etc/resolv.conf"))?;
    lookup_at(SocketAddr::new(server, 53), ip, timeout).await
}

/// [`lookup`] at an explicit server.
pub async fn lookup_at(server: SocketAddr, ip: IpAddr, timeout: Duration) -> io::Result<PtrAnswer> {
    let bind: SocketAddr = if server.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
    let socket = tokio::net::UdpSocket::bind(bind).await?;
    socket.connect(server).await?;
    let mut last = io::Error::new(io::ErrorKind::TimedOut, format!("no answer from {server} for {ip}"));
    for attempt in 0..2u16 {
        // Not secret, only distinct per query: the low bits of the clock and the attempt.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let id = (nanos as u16) ^ attempt.rotate_left(8);
        socket.send(&encode_query(id, ip)).await?;
        let deadline = tokio::time::Instant::now() + timeout / 2;
        let mut buf = [0u8; 1500];
        loop {
            match tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await {
                Err(_) => break,
                Ok(Err(e)) => {
                    last = e;
                    break;
                }
                Ok(Ok(n)) => match decode_answer(id, ip, &buf[..n]) {
                    Ok(answer) => return Ok(answer),
                    // Someone else's answer (a late one to the first try): keep waiting for ours.
                    Err(DnsError::Mismatch) => continue,
                    Err(e) => {
                        last = io::Error::new(io::ErrorKind::InvalidData, format!("{server}: {e}"));
                        break;
                    }
                },
            }
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(172, 18, 0, 4));

    /// What Docker's embedded DNS sends back: the question, then one PTR record whose owner is a pointer to
    /// the question's name.
    fn answer(id: u16, ip: IpAddr, rcode: u8, records: &[(u16, &[u8])]) -> Vec<u8> {
        let query = encode_query(id, ip);
        let mut msg = query.clone();
        msg[2] = 0x81; // QR, RD
        msg[3] = 0x80 | rcode; // RA
        msg[7] = records.len() as u8;
        for (rtype, data) in records {
            msg.extend_from_slice(&[0xc0, 12]);
            msg.extend_from_slice(&rtype.to_be_bytes());
            msg.extend_from_slice(&[0, 1, 0, 0, 2, 88]);
            msg.extend_from_slice(&(data.len() as u16).to_be_bytes());
            msg.extend_from_slice(data);
        }
        msg
    }

    fn wire_name(name: &str) -> Vec<u8> {
        let mut out = Vec::new();
        for label in name.split('.') {
            out.push(label.len() as u8);
            out.extend_from_slice(label.as_bytes());
        }
        out.push(0);
        out
    }

    #[test]
    fn the_query_is_a_ptr_question_for_the_reversed_address() {
        let q = encode_query(0xbeef, IP);
        assert_eq!(&q[..12], &[0xbe, 0xef, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
        let mut question = wire_name("4.0.18.172.in-addr.arpa");
        question.extend_from_slice(&[0, 12, 0, 1]);
        assert_eq!(&q[12..], &question[..]);
        let v6: IpAddr = "fd00::1:2".parse().unwrap();
        assert_eq!(
            reverse_name(v6),
            "2.0.0.0.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa"
        );
        assert_eq!(read_name(&encode_query(1, v6), 12).unwrap().0, reverse_name(v6));
    }

    #[test]
    fn decodes_the_name_docker_gives() {
        let data = wire_name("dmutex_node_3.dmutex_default");
        let msg = answer(7, IP, 0, &[(TYPE_PTR, &data)]);
        assert_eq!(decode_answer(7, IP, &msg), Ok(PtrAnswer::Name("dmutex_node_3.dmutex_default".into())));
    }

    #[test]
    fn follows_compression_pointers_and_skips_other_records() {
        // A CNAME first, then a PTR whose name ends in a pointer back to "in-addr.arpa" of the question.
        let cname = wire_name("x");
        let question_arpa_at = 12 + 2 + 2 + 3 + 4; // "4", "0", "18", "172" labels, then "in-addr"
        let mut ptr = vec![4];
        ptr.extend_from_slice(b"host");
        ptr.extend_from_slice(&[0xc0, question_arpa_at as u8]);
        let msg = answer(9, IP, 0, &[(5, &cname), (TYPE_PTR, &ptr)]);
        assert_eq!(decode_answer(9, IP, &msg), Ok(PtrAnswer::Name("host.in-addr.arpa".into())));
    }

    #[test]
    fn no_name_and_server_errors() {
        assert_eq!(decode_answer(1, IP, &answer(1, IP, 3, &[])), Ok(PtrAnswer::NoName));
        assert_eq!(decode_answer(1, IP, &answer(1, IP, 0, &[])), Ok(PtrAnswer::NoName));
        assert_eq!(decode_answer(1, IP, &answer(1, IP, 2, &[])), Err(DnsError::Rcode(2)));
        let mut tc = answer(1, IP, 0, &[]);
        tc[2] |= 0x02;
        assert_eq!(decode_answer(1, IP, &tc), Err(DnsError::Truncated));
    }

    #[test]
    fn an_answer_to_another_query_is_not_taken() {
        let data = wire_name("a");
        let msg = answer(5, IP, 0, &[(TYPE_PTR, &data)]);
        assert_eq!(decode_answer(6, IP, &msg), Err(DnsError::Mismatch), "another id");
        let other: IpAddr = "172.18.0.5".parse().unwrap();
        assert_eq!(decode_answer(5, other, &msg), Err(DnsError::Mismatch), "another question");
        assert_eq!(decode_answer(5, IP, &encode_query(5, IP)), Err(DnsError::Mismatch), "not a response");
    }

    #[test]
    fn malformed_answers_are_errors_never_panics() {
        let data = wire_name("dmutex_node_3.dmutex_default");
        let good = answer(3, IP, 0, &[(TYPE_PTR, &data)]);
        // Every truncation of a good answer.
        for n in 0..good.len() {
            assert!(decode_answer(3, IP, &good[..n]).is_err(), "prefix of {n} bytes");
        }
        // A pointer to itself, a forward pointer, a reserved label type, a bad character, an overlong name.
        let self_pointer = answer(3, IP, 0, &[(TYPE_PTR, &[0xc0, 0])]);
        let at = self_pointer.len() - 2;
        let mut looped = self_pointer.clone();
        looped[at + 1] = at as u8;
        assert!(matches!(decode_answer(3, IP, &looped), Err(DnsError::BadName(_))));
        let mut forward = self_pointer.clone();
        forward[at + 1] = 200;
        assert!(matches!(decode_answer(3, IP, &forward), Err(DnsError::BadName(_))));
        assert!(matches!(
            decode_answer(3, IP, &answer(3, IP, 0, &[(TYPE_PTR, &[0x80, 0])])),
            Err(DnsError::BadName(_))
        ));
        assert!(matches!(
            decode_answer(3, IP, &answer(3, IP, 0, &[(TYPE_PTR, b"\x03a b\x00")])),
            Err(DnsError::BadName(_))
        ));
        let long: Vec<u8> = (0..6).flat_map(|_| std::iter::once(63).chain([b'a'; 63])).chain([0]).collect();
        assert!(matches!(
            decode_answer(3, IP, &answer(3, IP, 0, &[(TYPE_PTR, &long)])),
            Err(DnsError::BadName(_))
        ));
        // A record longer than the message; an empty PTR name; a name running past its record.
        let mut overlong = good.clone();
        let len_at = good.len() - data.len() - 2;
        overlong[len_at + 1] = 0xff;
        assert!(matches!(decode_answer(3, IP, &overlong), Err(DnsError::Short(_))));
        assert!(decode_answer(3, IP, &answer(3, IP, 0, &[(TYPE_PTR, &[0])])).is_err());
        let mut short_record = good.clone();
        short_record[len_at + 1] = 2;
        assert!(decode_answer(3, IP, &short_record).is_err());
        // Random bytes after a valid header never panic.
        let mut state = 0x1234_5678u32;
        for _ in 0..2000 {
            let mut msg = good.clone();
            for _ in 0..4 {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                let i = (state >> 8) as usize % msg.len();
                msg[i] = (state >> 24) as u8;
            }
            let _ = decode_answer(3, IP, &msg);
        }
    }

    #[test]
    fn finds_the_nameserver() {
        let conf = "# generated\nsearch x\nnameserver fe80::1%eth0\nnameserver 127.0.0.11\noptions ndots:0\n";
        assert_eq!(nameserver(conf), Some("127.0.0.11".parse().unwrap()));
        assert_eq!(nameserver("options ndots:0\n"), None);
    }

    #[tokio::test]
    async fn lookup_asks_the_server_and_waits_for_its_own_answer() {
        // A one-shot server on loopback: first a stray answer with another id, then the real one.
        let server = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = server.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 512];
            let (n, from) = server.recv_from(&mut buf).await.unwrap();
            let id = u16::from_be_bytes([buf[0], buf[1]]);
            let name = wire_name("p-node-2.p_default");
            let stray = answer(id.wrapping_add(1), IP, 0, &[(TYPE_PTR, &name)]);
            server.send_to(&stray, from).await.unwrap();
            let real = answer(id, IP, 0, &[(TYPE_PTR, &name)]);
            assert_eq!(&real[12..n], &buf[12..n], "the answer repeats the question");
            server.send_to(&real, from).await.unwrap();
        });
        let got = lookup_at(addr, IP, Duration::from_secs(5)).await.unwrap();
        assert_eq!(got, PtrAnswer::Name("p-node-2.p_default".into()));
        task.await.unwrap();
        // Nobody answers: an error after the timeout, not a hang.
        let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let e = lookup_at(silent.local_addr().unwrap(), IP, Duration::from_millis(100)).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }
}
