//! nf_tables messages, written by hand over a netfilter netlink socket.
//!
//! Why by hand: the pure-Rust crates either lack NAT expressions (`nf_tables` 0.1) or generate
//! their constants with bindgen at build time (`rustables`), which would put libclang and the
//! target's kernel headers into every build for both arches. The subset berth needs (one
//! table, three base chains, rules of meta/payload/bitwise/cmp/immediate/nat/masq
//! expressions, a rule dump) is small and fixed. The constants come from
//! `<linux/netfilter/nf_tables.h>`; the integration tests check the result against the kernel
//! (the rules are listed back, and the traffic they NAT is real).

use std::io;

use netlink_packet_core::{
    NLA_F_NESTED, NLMSG_DONE, NLMSG_ERROR, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_DUMP,
    NLM_F_REQUEST,
};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_GETRULE: u16 = 7;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;

/// `NFPROTO_IPV4`: the table's family.
pub const FAMILY_IPV4: u8 = 2;
const NF_ACCEPT: u32 = 1;

/// The legacy 128-bit registers; two are all berth's rules use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reg {
    R1 = 1,
    R2 = 2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Prerouting = 0,
    Output = 3,
    Postrouting = 4,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaKey {
    IifName = 6,
    OifName = 7,
    L4Proto = 16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq = 0,
    Neq = 1,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadBase {
    Network = 1,
    Transport = 2,
}

/// One expression of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    Meta(MetaKey, Reg),
    Payload {
        base: PayloadBase,
        offset: u32,
        len: u32,
        into: Reg,
    },
    Bitwise {
        reg: Reg,
        mask: Vec<u8>,
    },
    Cmp(Reg, CmpOp, Vec<u8>),
    Immediate(Reg, Vec<u8>),
    /// DNAT to the address in the first register and the port in the second.
    Dnat {
        addr: Reg,
        port: Reg,
    },
    Masquerade,
}

/// Netlink attributes, 4-byte aligned, nested where asked.
#[derive(Debug, Default)]
struct Attrs(Vec<u8>);

impl Attrs {
    fn put(&mut self, kind: u16, data: &[u8]) {
        let len = u16::try_from(4 + data.len()).unwrap_or(u16::MAX);
        self.0.extend_from_slice(&len.to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.0.len().is_multiple_of(4) {
            self.0.push(0);
        }
    }

    fn string(&mut self, kind: u16, text: &str) {
        let mut data = text.as_bytes().to_vec();
        data.push(0);
        self.put(kind, &data);
    }

    /// nf_tables' integers are big-endian.
    fn be32(&mut self, kind: u16, value: u32) {
        self.put(kind, &value.to_be_bytes());
    }

    fn nested(&mut self, kind: u16, build: impl FnOnce(&mut Attrs)) {
        let mut inner = Attrs::default();
        build(&mut inner);
        self.put(kind | NLA_F_NESTED, &inner.0);
    }

    fn data(&mut self, kind: u16, value: &[u8]) {
        self.nested(kind, |d| d.put(NFTA_DATA_VALUE, value));
    }
}

/// The expression's name, with its attributes written into `a`.
fn expression_data(expr: &Expr, a: &mut Attrs) -> &'static str {
    match expr {
        Expr::Meta(key, reg) => {
            a.be32(2, *key as u32); // NFTA_META_KEY
            a.be32(1, *reg as u32); // NFTA_META_DREG
            "meta"
        }
        Expr::Payload {
            base,
            offset,
            len,
            into,
        } => {
            a.be32(1, *into as u32); // NFTA_PAYLOAD_DREG
            a.be32(2, *base as u32); // NFTA_PAYLOAD_BASE
            a.be32(3, *offset); // NFTA_PAYLOAD_OFFSET
            a.be32(4, *len); // NFTA_PAYLOAD_LEN
            "payload"
        }
        Expr::Bitwise { reg, mask } => {
            a.be32(1, *reg as u32); // NFTA_BITWISE_SREG
            a.be32(2, *reg as u32); // NFTA_BITWISE_DREG
            a.be32(6, 0); // NFTA_BITWISE_OP: NFT_BITWISE_BOOL, the kernel's default, as nft sends it
            a.be32(3, u32::try_from(mask.len()).unwrap_or(0)); // NFTA_BITWISE_LEN
            a.data(4, mask); // NFTA_BITWISE_MASK
            a.data(5, &vec![0u8; mask.len()]); // NFTA_BITWISE_XOR
            "bitwise"
        }
        Expr::Cmp(reg, op, value) => {
            a.be32(1, *reg as u32); // NFTA_CMP_SREG
            a.be32(2, *op as u32); // NFTA_CMP_OP
            a.data(3, value); // NFTA_CMP_DATA
            "cmp"
        }
        Expr::Immediate(reg, value) => {
            a.be32(1, *reg as u32); // NFTA_IMMEDIATE_DREG
            a.data(2, value); // NFTA_IMMEDIATE_DATA
            "immediate"
        }
        Expr::Dnat { addr, port } => {
            a.be32(1, 1); // NFTA_NAT_TYPE: NFT_NAT_DNAT
            a.be32(2, u32::from(FAMILY_IPV4)); // NFTA_NAT_FAMILY
            a.be32(3, *addr as u32); // NFTA_NAT_REG_ADDR_MIN
            a.be32(5, *port as u32); // NFTA_NAT_REG_PROTO_MIN
            a.be32(7, 2); // NFTA_NAT_FLAGS: NF_NAT_RANGE_PROTO_SPECIFIED, as nft sends it
            "nat"
        }
        Expr::Masquerade => "masq",
    }
}

fn expression(list: &mut Attrs, expr: &Expr) {
    list.nested(NFTA_LIST_ELEM, |elem| {
        let mut data = Attrs::default();
        let name = expression_data(expr, &mut data);
        elem.string(NFTA_EXPR_NAME, name);
        // Empty for masq: nft sends the nest all the same.
        elem.put(NFTA_EXPR_DATA | NLA_F_NESTED, &data.0);
    });
}

/// A batch of nf_tables changes, applied by the kernel all together or not at all.
#[derive(Debug, Default)]
pub struct Batch {
    bytes: Vec<u8>,
    sequence: u32,
    /// Messages that will be acknowledged.
    acknowledged: usize,
}

impl Batch {
    fn message(&mut self, kind: u16, flags: u16, family: u8, res_id: u16, attrs: &Attrs) {
        self.sequence += 1;
        let len = u32::try_from(16 + 4 + attrs.0.len()).unwrap_or(u32::MAX);
        self.bytes.extend_from_slice(&len.to_ne_bytes());
        self.bytes.extend_from_slice(&kind.to_ne_bytes());
        self.bytes.extend_from_slice(&flags.to_ne_bytes());
        self.bytes.extend_from_slice(&self.sequence.to_ne_bytes());
        self.bytes.extend_from_slice(&0u32.to_ne_bytes());
        // struct nfgenmsg: family, version, resource id (big-endian).
        self.bytes.push(family);
        self.bytes.push(0);
        self.bytes.extend_from_slice(&res_id.to_be_bytes());
        self.bytes.extend_from_slice(&attrs.0);
    }

    fn command(&mut self, message: u16, flags: u16, attrs: &Attrs) {
        self.acknowledged += 1;
        self.message(
            (NFNL_SUBSYS_NFTABLES << 8) | message,
            NLM_F_REQUEST | NLM_F_ACK | flags,
            FAMILY_IPV4,
            0,
            attrs,
        );
    }

    pub fn new() -> Batch {
        let mut batch = Batch::default();
        batch.message(
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            0,
            NFNL_SUBSYS_NFTABLES,
            &Attrs::default(),
        );
        batch
    }

    pub fn add_table(&mut self, table: &str) {
        let mut attrs = Attrs::default();
        attrs.string(NFTA_TABLE_NAME, table);
        self.command(NFT_MSG_NEWTABLE, NLM_F_CREATE, &attrs);
    }

    pub fn delete_table(&mut self, table: &str) {
        let mut attrs = Attrs::default();
        attrs.string(NFTA_TABLE_NAME, table);
        self.command(NFT_MSG_DELTABLE, 0, &attrs);
    }

    /// A base chain of type nat with an accept policy.
    pub fn add_nat_chain(&mut self, table: &str, chain: &str, hook: Hook, priority: i32) {
        let mut attrs = Attrs::default();
        attrs.string(NFTA_CHAIN_TABLE, table);
        attrs.string(NFTA_CHAIN_NAME, chain);
        attrs.nested(NFTA_CHAIN_HOOK, |h| {
            h.be32(NFTA_HOOK_HOOKNUM, hook as u32);
            h.put(NFTA_HOOK_PRIORITY, &priority.to_be_bytes());
        });
        attrs.be32(NFTA_CHAIN_POLICY, NF_ACCEPT);
        attrs.string(NFTA_CHAIN_TYPE, "nat");
        self.command(NFT_MSG_NEWCHAIN, NLM_F_CREATE, &attrs);
    }

    pub fn add_rule(&mut self, table: &str, chain: &str, expressions: &[Expr]) {
        let mut attrs = Attrs::default();
        attrs.string(NFTA_RULE_TABLE, table);
        attrs.string(NFTA_RULE_CHAIN, chain);
        attrs.nested(NFTA_RULE_EXPRESSIONS, |list| {
            for expr in expressions {
                expression(list, expr);
            }
        });
        self.command(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, &attrs);
    }

    fn finish(mut self) -> (Vec<u8>, usize) {
        self.message(
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            0,
            NFNL_SUBSYS_NFTABLES,
            &Attrs::default(),
        );
        (self.bytes, self.acknowledged)
    }

    /// Sends the batch and waits for every acknowledgement; the first refusal is the error.
    pub fn send(self) -> io::Result<()> {
        let (bytes, mut expected) = self.finish();
        let socket = open()?;
        socket.send(&bytes, 0)?;
        let mut refused = None;
        while expected > 0 {
            let (reply, _) = socket.recv_from_full()?;
            for (kind, payload) in messages(&reply) {
                if kind == NLMSG_ERROR {
                    expected = expected.saturating_sub(1);
                    let code = payload
                        .get(..4)
                        .and_then(|b| <[u8; 4]>::try_from(b).ok())
                        .map_or(0, i32::from_ne_bytes);
                    if code != 0 && refused.is_none() {
                        refused = Some(io::Error::from_raw_os_error(-code));
                    }
                }
            }
        }
        refused.map_or(Ok(()), Err)
    }
}

/// How long PID 1 waits for the kernel's answer to a batch or a dump before giving up: the
/// loop must never wait without a bound, even on the kernel.
pub const ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

fn open() -> io::Result<Socket> {
    let mut socket = Socket::new(NETLINK_NETFILTER)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    bound_answers(&socket)?;
    Ok(socket)
}

/// A receive timeout on `socket`, so a missing acknowledgement is an error (`EAGAIN`), not a
/// hang.
pub(crate) fn bound_answers(socket: &Socket) -> io::Result<()> {
    use nix::sys::socket::{setsockopt, sockopt::ReceiveTimeout};
    use nix::sys::time::TimeVal;
    let timeout = TimeVal::new(
        i64::try_from(ANSWER_TIMEOUT.as_secs()).unwrap_or(i64::MAX),
        0,
    );
    setsockopt(socket, ReceiveTimeout, &timeout).map_err(io::Error::from)
}

/// (type, payload) of each netlink message in `buffer`.
fn messages(buffer: &[u8]) -> Vec<(u16, &[u8])> {
    let mut found = Vec::new();
    let mut rest = buffer;
    while rest.len() >= 16 {
        let len = rest
            .get(..4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map_or(0, u32::from_ne_bytes);
        let kind = rest
            .get(4..6)
            .and_then(|b| <[u8; 2]>::try_from(b).ok())
            .map_or(0, u16::from_ne_bytes);
        let len = usize::try_from(len).unwrap_or(0);
        if len < 16 {
            break;
        }
        found.push((kind, rest.get(16..len).unwrap_or_default()));
        let aligned = (len + 3) & !3;
        rest = rest.get(aligned..).unwrap_or_default();
    }
    found
}

/// The string attribute `kind` among `attrs`.
fn string_attr(mut attrs: &[u8], kind: u16) -> Option<String> {
    while attrs.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([*attrs.first()?, *attrs.get(1)?]));
        let this = u16::from_ne_bytes([*attrs.get(2)?, *attrs.get(3)?]) & !NLA_F_NESTED;
        if len < 4 {
            return None;
        }
        if this == kind {
            let value = attrs.get(4..len)?;
            let text = value.split(|b| *b == 0).next().unwrap_or_default();
            return Some(String::from_utf8_lossy(text).into_owned());
        }
        attrs = attrs.get(((len + 3) & !3).min(attrs.len())..)?;
    }
    None
}

/// The chain of every rule in `table` (one entry per rule), or an empty list without it.
pub fn rule_chains(table: &str) -> io::Result<Vec<String>> {
    let mut attrs = Attrs::default();
    attrs.string(NFTA_RULE_TABLE, table);
    let mut request = Batch::default();
    request.message(
        (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETRULE,
        NLM_F_REQUEST | NLM_F_DUMP,
        FAMILY_IPV4,
        0,
        &attrs,
    );
    let socket = open()?;
    socket.send(&request.bytes, 0)?;
    let mut chains = Vec::new();
    loop {
        let (reply, _) = socket.recv_from_full()?;
        for (kind, payload) in messages(&reply) {
            match kind {
                NLMSG_DONE => return Ok(chains),
                NLMSG_ERROR => {
                    let code = payload
                        .get(..4)
                        .and_then(|b| <[u8; 4]>::try_from(b).ok())
                        .map_or(0, i32::from_ne_bytes);
                    // No such table: no rules.
                    if code == -nix::libc::ENOENT || code == 0 {
                        return Ok(chains);
                    }
                    return Err(io::Error::from_raw_os_error(-code));
                }
                _ => {
                    let rule_table =
                        string_attr(payload.get(4..).unwrap_or_default(), NFTA_RULE_TABLE);
                    if rule_table.as_deref() == Some(table) {
                        chains.extend(string_attr(
                            payload.get(4..).unwrap_or_default(),
                            NFTA_RULE_CHAIN,
                        ));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
#[expect(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests"
)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_aligned_and_nested() {
        let mut attrs = Attrs::default();
        attrs.string(NFTA_TABLE_NAME, "berth");
        // len 10 ("berth\0" + 4), padded to 12.
        assert_eq!(
            attrs.0,
            [10, 0, 1, 0, b'b', b'e', b'r', b't', b'h', 0, 0, 0]
        );
        let mut outer = Attrs::default();
        outer.data(3, &[6]);
        assert_eq!(outer.0, [12, 0, 3, 0x80, 5, 0, 1, 0, 6, 0, 0, 0]);
        assert_eq!(string_attr(&attrs.0, NFTA_TABLE_NAME).unwrap(), "berth");
    }

    #[test]
    fn a_batch_is_framed_by_begin_and_end() {
        let mut batch = Batch::new();
        batch.add_table("berth");
        let (bytes, acknowledged) = batch.finish();
        let framed = messages(&bytes);
        let kinds: Vec<u16> = framed.iter().map(|(k, _)| *k).collect();
        assert_eq!(kinds, [16, (10 << 8), 17]);
        assert_eq!(acknowledged, 1);
    }

    #[test]
    fn the_kernel_gets_a_bounded_time_to_answer() {
        use nix::sys::socket::{getsockopt, sockopt::ReceiveTimeout};
        let socket = open().unwrap();
        let timeout = getsockopt(&socket, ReceiveTimeout).map(|t| t.tv_sec());
        assert_eq!(
            timeout.ok(),
            i64::try_from(ANSWER_TIMEOUT.as_secs()).ok(),
            "a receive timeout is set"
        );
    }

    /// The top-level attributes of one nf_tables message (after its nfgenmsg), by type.
    fn attributes(payload: &[u8]) -> std::collections::BTreeMap<u16, Vec<u8>> {
        let mut found = std::collections::BTreeMap::new();
        let mut rest = payload.get(4..).unwrap();
        while rest.len() >= 4 {
            let len = usize::from(u16::from_ne_bytes([rest[0], rest[1]]));
            let kind = u16::from_ne_bytes([rest[2], rest[3]]);
            found.insert(kind, rest[4..len].to_vec());
            rest = rest.get(len.next_multiple_of(4)..).unwrap_or_default();
        }
        found
    }

    /// Golden bytes: what nft 1.0.6 (Debian 12) sends for the same three changes, read off
    /// `strace -e trace=sendmsg nft -f` for
    ///   add table ip berth
    ///   add chain ip berth postrouting { type nat hook postrouting priority 100; policy accept; }
    ///   add rule ip berth postrouting oifname != "berth0" masquerade
    /// Attribute order within a message is free (the kernel looks each up by type); nft
    /// also sends NFTA_TABLE_FLAGS = 0, the kernel's default, which berth leaves out.
    #[test]
    #[cfg(target_endian = "little")]
    fn a_table_nat_chain_and_masquerade_rule_match_what_nft_sends() {
        let mut batch = Batch::new();
        batch.add_table("berth");
        batch.add_nat_chain("berth", "postrouting", Hook::Postrouting, 100);
        let mut berth0 = b"berth0".to_vec();
        berth0.resize(16, 0);
        batch.add_rule(
            "berth",
            "postrouting",
            &[
                Expr::Meta(MetaKey::OifName, Reg::R1),
                Expr::Cmp(Reg::R1, CmpOp::Neq, berth0),
                Expr::Masquerade,
            ],
        );
        let (bytes, acknowledged) = batch.finish();
        assert_eq!(acknowledged, 3);
        let framed = messages(&bytes);
        let [(_, begin), (_, table), (_, chain), (_, rule), (_, end)] = framed.as_slice() else {
            panic!("five messages, not {}", framed.len());
        };
        // nfgenmsg: AF_UNSPEC, version 0, res_id 10 (NFNL_SUBSYS_NFTABLES) for the framing;
        // AF_INET (NFPROTO_IPV4), version 0, res_id 0 for the changes.
        assert_eq!(begin[..4], [0, 0, 0, 10]);
        assert_eq!(end[..4], [0, 0, 0, 10]);
        for message in [table, chain, rule] {
            assert_eq!(message[..4], [2, 0, 0, 0]);
        }

        let nft_table = [(1, b"berth\0".to_vec())];
        let mut ours = attributes(table);
        assert_eq!(ours.remove(&2), None, "no NFTA_TABLE_FLAGS");
        assert_eq!(ours, nft_table.into_iter().collect());

        let nft_chain = [
            (1, b"berth\0".to_vec()),
            (3, b"postrouting\0".to_vec()),
            (7, b"nat\0".to_vec()),
            (5, vec![0, 0, 0, 1]),
            (
                0x8004,
                vec![8, 0, 1, 0, 0, 0, 0, 4, 8, 0, 2, 0, 0, 0, 0, 0x64],
            ),
        ];
        assert_eq!(attributes(chain), nft_chain.into_iter().collect());

        let nft_expressions = b"\x24\x00\x01\x80\x09\x00\x01\x00\x6d\x65\x74\x61\x00\x00\x00\x00\
            \x14\x00\x02\x80\x08\x00\x02\x00\x00\x00\x00\x07\x08\x00\x01\x00\x00\x00\x00\x01\
            \x38\x00\x01\x80\x08\x00\x01\x00\x63\x6d\x70\x00\x2c\x00\x02\x80\x08\x00\x01\x00\
            \x00\x00\x00\x01\x08\x00\x02\x00\x00\x00\x00\x01\x18\x00\x03\x80\x14\x00\x01\x00\
            \x62\x65\x72\x74\x68\x30\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x14\x00\x01\x80\
            \x09\x00\x01\x00\x6d\x61\x73\x71\x00\x00\x00\x00\x04\x00\x02\x80";
        let nft_rule = [
            (1, b"berth\0".to_vec()),
            (2, b"postrouting\0".to_vec()),
            (0x8004, nft_expressions.to_vec()),
        ];
        assert_eq!(attributes(rule), nft_rule.into_iter().collect());
    }

    /// Golden bytes, as above, for the two other kinds of rule berth writes:
    ///   add rule ip berth prerouting meta l4proto tcp tcp dport 8080 dnat to 172.17.0.2:80
    ///   add rule ip berth prerouting ip saddr & 255.255.0.0 == 172.17.0.0 masquerade
    #[test]
    #[cfg(target_endian = "little")]
    fn a_published_port_and_a_subnet_masquerade_match_what_nft_sends() {
        let nft_dnat: &[u8] = b"\x24\x00\x01\x80\x09\x00\x01\x00\x6d\x65\x74\x61\x00\x00\x00\x00\x14\x00\x02\x80\x08\x00\x02\x00\
            \x00\x00\x00\x10\x08\x00\x01\x00\x00\x00\x00\x01\x2c\x00\x01\x80\x08\x00\x01\x00\x63\x6d\x70\x00\
            \x20\x00\x02\x80\x08\x00\x01\x00\x00\x00\x00\x01\x08\x00\x02\x00\x00\x00\x00\x00\x0c\x00\x03\x80\
            \x05\x00\x01\x00\x06\x00\x00\x00\x34\x00\x01\x80\x0c\x00\x01\x00\x70\x61\x79\x6c\x6f\x61\x64\x00\
            \x24\x00\x02\x80\x08\x00\x01\x00\x00\x00\x00\x01\x08\x00\x02\x00\x00\x00\x00\x02\x08\x00\x03\x00\
            \x00\x00\x00\x02\x08\x00\x04\x00\x00\x00\x00\x02\x2c\x00\x01\x80\x08\x00\x01\x00\x63\x6d\x70\x00\
            \x20\x00\x02\x80\x08\x00\x01\x00\x00\x00\x00\x01\x08\x00\x02\x00\x00\x00\x00\x00\x0c\x00\x03\x80\
            \x06\x00\x01\x00\x1f\x90\x00\x00\x2c\x00\x01\x80\x0e\x00\x01\x00\x69\x6d\x6d\x65\x64\x69\x61\x74\
            \x65\x00\x00\x00\x18\x00\x02\x80\x08\x00\x01\x00\x00\x00\x00\x01\x0c\x00\x02\x80\x08\x00\x01\x00\
            \xac\x11\x00\x02\x2c\x00\x01\x80\x0e\x00\x01\x00\x69\x6d\x6d\x65\x64\x69\x61\x74\x65\x00\x00\x00\
            \x18\x00\x02\x80\x08\x00\x01\x00\x00\x00\x00\x02\x0c\x00\x02\x80\x06\x00\x01\x00\x00\x50\x00\x00\
            \x38\x00\x01\x80\x08\x00\x01\x00\x6e\x61\x74\x00\x2c\x00\x02\x80\x08\x00\x01\x00\x00\x00\x00\x01\
            \x08\x00\x02\x00\x00\x00\x00\x02\x08\x00\x03\x00\x00\x00\x00\x01\x08\x00\x05\x00\x00\x00\x00\x02\
            \x08\x00\x07\x00\x00\x00\x00\x02";
        let nft_masquerade_from: &[u8] = b"\x34\x00\x01\x80\x0c\x00\x01\x00\x70\x61\x79\x6c\x6f\x61\x64\x00\x24\x00\x02\x80\x08\x00\x01\x00\
            \x00\x00\x00\x01\x08\x00\x02\x00\x00\x00\x00\x01\x08\x00\x03\x00\x00\x00\x00\x0c\x08\x00\x04\x00\
            \x00\x00\x00\x04\x4c\x00\x01\x80\x0c\x00\x01\x00\x62\x69\x74\x77\x69\x73\x65\x00\x3c\x00\x02\x80\
            \x08\x00\x01\x00\x00\x00\x00\x01\x08\x00\x02\x00\x00\x00\x00\x01\x08\x00\x06\x00\x00\x00\x00\x00\
            \x08\x00\x03\x00\x00\x00\x00\x04\x0c\x00\x04\x80\x08\x00\x01\x00\xff\xff\x00\x00\x0c\x00\x05\x80\
            \x08\x00\x01\x00\x00\x00\x00\x00\x2c\x00\x01\x80\x08\x00\x01\x00\x63\x6d\x70\x00\x20\x00\x02\x80\
            \x08\x00\x01\x00\x00\x00\x00\x01\x08\x00\x02\x00\x00\x00\x00\x00\x0c\x00\x03\x80\x08\x00\x01\x00\
            \xac\x11\x00\x00\x14\x00\x01\x80\x09\x00\x01\x00\x6d\x61\x73\x71\x00\x00\x00\x00\x04\x00\x02\x80";
        let published = [
            Expr::Meta(MetaKey::L4Proto, Reg::R1),
            Expr::Cmp(Reg::R1, CmpOp::Eq, vec![6]),
            Expr::Payload {
                base: PayloadBase::Transport,
                offset: 2,
                len: 2,
                into: Reg::R1,
            },
            Expr::Cmp(Reg::R1, CmpOp::Eq, 8080u16.to_be_bytes().to_vec()),
            Expr::Immediate(Reg::R1, vec![172, 17, 0, 2]),
            Expr::Immediate(Reg::R2, 80u16.to_be_bytes().to_vec()),
            Expr::Dnat {
                addr: Reg::R1,
                port: Reg::R2,
            },
        ];
        let masquerade_from = [
            Expr::Payload {
                base: PayloadBase::Network,
                offset: 12,
                len: 4,
                into: Reg::R1,
            },
            Expr::Bitwise {
                reg: Reg::R1,
                mask: vec![255, 255, 0, 0],
            },
            Expr::Cmp(Reg::R1, CmpOp::Eq, vec![172, 17, 0, 0]),
            Expr::Masquerade,
        ];
        for (expressions, nft) in [
            (&published[..], nft_dnat),
            (&masquerade_from[..], nft_masquerade_from),
        ] {
            let mut batch = Batch::new();
            batch.add_rule("berth", "prerouting", expressions);
            let (bytes, _) = batch.finish();
            let framed = messages(&bytes);
            let rule = framed.get(1).map(|(_, payload)| attributes(payload));
            assert_eq!(
                rule.and_then(|mut attributes| attributes.remove(&0x8004)),
                Some(nft.to_vec()),
                "{expressions:?}"
            );
        }
    }
}
