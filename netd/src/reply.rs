//! What netd takes from a DHCP server before `dhcproto` sees it, and why it refuses the rest.
//!
//! A server is as hostile as any other input. `dhcproto` stops decoding options at the first
//! one it cannot read and keeps those before it, so a reply with a bad option in the middle
//! would decode with the options after it silently gone (its subnet mask, its lease time) and
//! netd would apply a lease the server never meant. So a reply is checked on its bytes first:
//! the fixed BOOTP header and the magic cookie must be whole, every option must end inside the
//! packet, and every option netd reads must have decoded. Anything else is refused whole,
//! never repaired.

use std::net::Ipv4Addr;

use dhcproto::v4::{Message, OptionCode};
use dhcproto::Decodable;

use crate::dhcp::REQUESTED;

/// The fixed BOOTP header (RFC 2131 §2: op through file) and the magic cookie after it.
pub const OPTIONS_START: usize = 240;
const COOKIE: [u8; 4] = [99, 130, 83, 99];
const COOKIE_AT: usize = 236;
const OP_REPLY: u8 = 2;
const XID_AT: usize = 4;
const CHADDR_AT: usize = 28;
const OPTION_PAD: u8 = 0;
const OPTION_END: u8 = 255;
/// Whether netd reads `option` from an OFFER or ACK: those it asks for, the message type and
/// the server identifier. Each one present must decode.
fn read_by_netd(option: OptionCode) -> bool {
    matches!(
        option,
        OptionCode::MessageType | OptionCode::ServerIdentifier
    ) || REQUESTED.contains(&option)
}

/// Why a reply to this client's transaction was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("{len} bytes, shorter than the BOOTP header and magic cookie ({OPTIONS_START})")]
    Short { len: usize },
    #[error("no DHCP magic cookie")]
    Cookie,
    #[error("option {code} at byte {offset} runs past the end of the packet")]
    Overrun { code: u8, offset: usize },
    #[error("option {code} does not decode")]
    Undecodable { code: u8 },
    #[error("the packet does not decode")]
    Packet,
    #[error("no DHCP message type")]
    NoMessageType,
    #[error("the address {addr} is not a host's unicast address")]
    NotUnicast { addr: Ipv4Addr },
    #[error("the subnet mask {mask} is not a prefix of 1 to 32 bits")]
    Mask { mask: Ipv4Addr },
    #[error("the address {addr} is the network or broadcast address of its /{prefix}")]
    NotHost { addr: Ipv4Addr, prefix: u8 },
    #[error("a lease time of 0")]
    ZeroLease,
    #[error("server identifier {got}, not {expected}, the server this client talks to")]
    Server { got: Ipv4Addr, expected: Ipv4Addr },
    #[error("an ACK of {got}, not of {expected}, the address this client asked for")]
    Address { got: Ipv4Addr, expected: Ipv4Addr },
}

/// Whether `bytes` answers this client's transaction `xid` (a BOOTP reply with its xid and,
/// when the packet is long enough to hold one, its hardware address). Anything else belongs to
/// another client on the link and is ignored without a word, as broadcast replies to other
/// clients are ordinary traffic.
pub fn for_transaction(bytes: &[u8], xid: u32, mac: &[u8]) -> bool {
    let chaddr = bytes.get(CHADDR_AT..CHADDR_AT + 6);
    bytes.first() == Some(&OP_REPLY)
        && bytes.get(XID_AT..XID_AT + 4) == Some(xid.to_be_bytes().as_slice())
        && (chaddr.is_none() || chaddr == mac.get(..6))
}

/// The codes of the options in `bytes`, after checking that each one ends inside the packet.
/// The End option (or the packet's end, as some servers send it) closes the list.
fn option_codes(bytes: &[u8]) -> Result<Vec<u8>, Refused> {
    let mut codes = Vec::new();
    let mut at = OPTIONS_START;
    while let Some(&code) = bytes.get(at) {
        match code {
            OPTION_PAD => at += 1,
            OPTION_END => break,
            _ => {
                let overrun = Refused::Overrun { code, offset: at };
                let len = usize::from(*bytes.get(at + 1).ok_or(overrun.clone())?);
                let end = at + 2 + len;
                if end > bytes.len() {
                    return Err(overrun);
                }
                codes.push(code);
                at = end;
            }
        }
    }
    Ok(codes)
}

/// dhcproto's decoder unwraps on some malformed options; a hostile packet must not end netd.
fn decode(bytes: &[u8]) -> Option<Message> {
    std::panic::catch_unwind(|| Message::from_bytes(bytes).ok())
        .ok()
        .flatten()
}

/// The reply in `bytes`, when its header, framing and every option netd reads are whole.
pub fn parse(bytes: &[u8]) -> Result<Message, Refused> {
    if bytes.len() < OPTIONS_START {
        return Err(Refused::Short { len: bytes.len() });
    }
    if bytes.get(COOKIE_AT..OPTIONS_START) != Some(COOKIE.as_slice()) {
        return Err(Refused::Cookie);
    }
    let codes = option_codes(bytes)?;
    let message = decode(bytes).ok_or(Refused::Packet)?;
    // dhcproto keeps the options before one it cannot read and drops the rest: any option netd
    // reads that is in the packet but not in the decoded message was lost that way.
    for &code in &codes {
        let option = OptionCode::from(code);
        if read_by_netd(option) && message.opts().get(option).is_none() {
            return Err(Refused::Undecodable { code });
        }
    }
    if message.opts().get(OptionCode::MessageType).is_none() {
        return Err(Refused::NoMessageType);
    }
    Ok(message)
}

#[cfg(test)]
#[expect(clippy::unwrap_used, clippy::indexing_slicing, reason = "tests")]
mod tests {
    use super::*;

    const XID: u32 = 0x1234_5678;
    const MAC: [u8; 6] = [0x52, 0x54, 0, 0x77, 0, 1];

    /// A BOOTP reply header for `XID` and `MAC` offering 192.168.77.50, with the cookie, and
    /// `options` after it as raw bytes.
    fn packet(options: &[u8]) -> Vec<u8> {
        let mut bytes = vec![0u8; OPTIONS_START];
        bytes[0] = OP_REPLY;
        bytes[1] = 1;
        bytes[2] = 6;
        bytes[4..8].copy_from_slice(&XID.to_be_bytes());
        bytes[16..20].copy_from_slice(&[192, 168, 77, 50]);
        bytes[28..34].copy_from_slice(&MAC);
        bytes[236..240].copy_from_slice(&COOKIE);
        bytes.extend_from_slice(options);
        bytes
    }

    const OFFER: &[u8] = &[53, 1, 2, 54, 4, 192, 168, 77, 1];

    #[test]
    fn a_whole_offer_parses() {
        let bytes = packet(&[OFFER, &[1, 4, 255, 255, 255, 0, 51, 4, 0, 0, 0, 60, 255]].concat());
        assert!(for_transaction(&bytes, XID, &MAC));
        let message = parse(&bytes).unwrap();
        assert_eq!(message.yiaddr(), Ipv4Addr::new(192, 168, 77, 50));
    }

    #[test]
    fn replies_to_other_transactions_are_not_ours() {
        let bytes = packet(OFFER);
        assert!(!for_transaction(&bytes, XID + 1, &MAC));
        assert!(!for_transaction(&bytes, XID, &[0x52, 0x54, 0, 0x77, 0, 2]));
        let mut request = bytes.clone();
        request[0] = 1;
        assert!(!for_transaction(&request, XID, &MAC));
        // Too short to hold a hardware address, but with this transaction's id: ours, and
        // refused as short.
        assert!(for_transaction(bytes.get(..20).unwrap(), XID, &MAC));
        assert_eq!(
            parse(bytes.get(..120).unwrap()).unwrap_err(),
            Refused::Short { len: 120 }
        );
        assert_eq!(parse(&[]).unwrap_err(), Refused::Short { len: 0 });
    }

    #[test]
    fn a_wrong_cookie_is_refused() {
        let mut bytes = packet(OFFER);
        bytes[236] = 0;
        assert_eq!(parse(&bytes).unwrap_err(), Refused::Cookie);
    }

    /// Failed before this check: dhcproto drops the overrunning option and the reply decoded
    /// as an OFFER with no subnet mask.
    #[test]
    fn an_option_running_past_the_end_is_refused() {
        let bytes = packet(&[OFFER, &[1, 200, 255, 255, 255, 0]].concat());
        assert_eq!(
            parse(&bytes).unwrap_err(),
            Refused::Overrun {
                code: 1,
                offset: 249
            }
        );
        // A length byte cut off.
        let bytes = packet(&[OFFER, &[51]].concat());
        assert_eq!(
            parse(&bytes).unwrap_err(),
            Refused::Overrun {
                code: 51,
                offset: 249
            }
        );
    }

    /// Failed before this check: a hostname of 255 bytes that are not UTF-8 stops dhcproto's
    /// option decoding, and the lease time and subnet mask after it vanished from the reply.
    #[test]
    fn options_after_one_that_does_not_decode_are_not_lost() {
        let mut options = OFFER.to_vec();
        options.extend([12, 255]);
        options.extend([0xff_u8; 255]);
        options.extend([1, 4, 255, 255, 0, 0, 51, 4, 0, 0, 0, 60, 255]);
        let bytes = packet(&options);
        // What dhcproto alone makes of it.
        let decoded = decode(&bytes).unwrap();
        assert!(decoded.opts().get(OptionCode::SubnetMask).is_none());
        assert_eq!(
            parse(&bytes).unwrap_err(),
            Refused::Undecodable { code: 12 }
        );
        // A server identifier of 3 bytes.
        let bytes = packet(&[53, 1, 2, 54, 3, 192, 168, 77, 255]);
        assert_eq!(
            parse(&bytes).unwrap_err(),
            Refused::Undecodable { code: 54 }
        );
    }

    #[test]
    fn options_netd_does_not_read_may_be_anything() {
        // Option 224 (site-specific) of garbage, split in two (RFC 3396), before the End.
        let mut options = OFFER.to_vec();
        for _ in 0..2 {
            options.extend([224, 255]);
            options.extend([0xfe_u8; 255]);
        }
        options.push(255);
        let message = parse(&packet(&options)).unwrap();
        assert!(message.opts().get(OptionCode::ServerIdentifier).is_some());
    }

    #[test]
    fn a_reply_without_a_message_type_is_refused() {
        assert_eq!(
            parse(&packet(&[54, 4, 192, 168, 77, 1, 255])).unwrap_err(),
            Refused::NoMessageType
        );
    }
}
