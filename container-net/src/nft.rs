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

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_GETRULE: u16 = 7;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLA_F_NESTED: u16 = 0x8000;

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
            a.be32(1, *reg as u32); // NFTA_META_DREG
            a.be32(2, *key as u32); // NFTA_META_KEY
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
        if !data.0.is_empty() {
            elem.put(NFTA_EXPR_DATA | NLA_F_NESTED, &data.0);
        }
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
#[expect(clippy::unwrap_used, reason = "tests")]
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
}
