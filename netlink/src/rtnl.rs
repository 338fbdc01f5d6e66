//! A small synchronous rtnetlink client: the request/acknowledge exchange and the two dumps
//! berth reads (links, addresses). Messages are `netlink-packet-route`'s (see `messages`).

use std::io;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::AddressMessage;
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

#[derive(Debug, thiserror::Error)]
pub enum RtnlError {
    #[error("netlink socket: {0}")]
    Socket(#[source] io::Error),
    #[error("{what}: {source}")]
    Refused {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("{what}: the kernel's answer does not parse: {detail}")]
    Decode { what: String, detail: String },
}

impl RtnlError {
    /// The errno the kernel refused a request with.
    pub fn errno(&self) -> Option<i32> {
        match self {
            RtnlError::Refused { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// One rtnetlink socket, in the network namespace of the thread that opened it.
#[derive(Debug)]
pub struct Rtnl {
    socket: Socket,
    sequence: u32,
}

impl Rtnl {
    pub fn open() -> Result<Rtnl, RtnlError> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(RtnlError::Socket)?;
        socket.bind_auto().map_err(RtnlError::Socket)?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(RtnlError::Socket)?;
        crate::nft::bound_answers(&socket).map_err(RtnlError::Socket)?;
        Ok(Rtnl {
            socket,
            sequence: 0,
        })
    }

    /// Sends `message` and collects the kernel's answers until its acknowledgement (or the end
    /// of a dump).
    fn exchange(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
        what: &str,
    ) -> Result<Vec<RouteNetlinkMessage>, RtnlError> {
        self.sequence = self.sequence.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        header.sequence_number = self.sequence;
        let mut request = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
        request.finalize();
        let mut buffer = vec![0u8; request.buffer_len()];
        request.serialize(&mut buffer);
        self.socket
            .send(&buffer, 0)
            .map_err(|source| RtnlError::Refused {
                what: what.to_string(),
                source,
            })?;
        let mut answers = Vec::new();
        loop {
            let (bytes, _) = self
                .socket
                .recv_from_full()
                .map_err(|source| RtnlError::Refused {
                    what: what.to_string(),
                    source,
                })?;
            let mut offset = 0;
            while let Some(rest) = bytes.get(offset..).filter(|rest| !rest.is_empty()) {
                let answer =
                    NetlinkMessage::<RouteNetlinkMessage>::deserialize(rest).map_err(|e| {
                        RtnlError::Decode {
                            what: what.to_string(),
                            detail: e.to_string(),
                        }
                    })?;
                let length = usize::try_from(answer.header.length).unwrap_or(0);
                if length == 0 {
                    break;
                }
                offset += length;
                if answer.header.sequence_number != self.sequence {
                    continue;
                }
                match answer.payload {
                    NetlinkPayload::Error(error) => {
                        return match error.code {
                            None => Ok(answers),
                            Some(code) => Err(RtnlError::Refused {
                                what: what.to_string(),
                                source: io::Error::from_raw_os_error(-code.get()),
                            }),
                        };
                    }
                    NetlinkPayload::Done(_) => return Ok(answers),
                    NetlinkPayload::InnerMessage(inner) => answers.push(inner),
                    _ => {}
                }
            }
        }
    }

    /// Creates something (a link, an address, a route); fails if it exists.
    pub fn create(&mut self, message: RouteNetlinkMessage, what: &str) -> Result<(), RtnlError> {
        self.exchange(message, NLM_F_CREATE | NLM_F_EXCL, what)
            .map(drop)
    }

    /// Creates something unless it is there already.
    pub fn ensure(&mut self, message: RouteNetlinkMessage, what: &str) -> Result<(), RtnlError> {
        match self.create(message, what) {
            Err(err) if err.errno() == Some(nix::libc::EEXIST) => Ok(()),
            other => other,
        }
    }

    /// Changes or deletes something.
    pub fn change(&mut self, message: RouteNetlinkMessage, what: &str) -> Result<(), RtnlError> {
        self.exchange(message, 0, what).map(drop)
    }

    /// Every link.
    pub fn links(&mut self) -> Result<Vec<LinkMessage>, RtnlError> {
        self.dump(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            "list links",
            |answer| match answer {
                RouteNetlinkMessage::NewLink(link) => Some(link),
                _ => None,
            },
        )
    }

    /// The addresses on link `index`.
    pub fn addresses(&mut self, index: u32) -> Result<Vec<AddressMessage>, RtnlError> {
        self.dump(
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            "list addresses",
            |answer| match answer {
                RouteNetlinkMessage::NewAddress(address) if address.header.index == index => {
                    Some(address)
                }
                _ => None,
            },
        )
    }

    /// A dump's answers that `pick` keeps.
    fn dump<T>(
        &mut self,
        request: RouteNetlinkMessage,
        what: &str,
        pick: impl FnMut(RouteNetlinkMessage) -> Option<T>,
    ) -> Result<Vec<T>, RtnlError> {
        let answers = self.exchange(request, NLM_F_DUMP, what)?;
        Ok(answers.into_iter().filter_map(pick).collect())
    }

    /// The index of the link called `name`.
    pub fn index_of(&mut self, name: &str) -> Result<Option<u32>, RtnlError> {
        Ok(self
            .links()?
            .iter()
            .find(|link| link_name(link) == Some(name))
            .map(|link| link.header.index))
    }
}

pub fn link_name(link: &LinkMessage) -> Option<&str> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(name) => Some(name.as_str()),
        _ => None,
    })
}
