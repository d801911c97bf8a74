//! Every request of the current spec (sections "Front-end message types" and
//! "Back-end message types"): its id, name, payload, reply, file descriptors
//! and the protocol feature that gates it.

use super::features::ProtocolFeature as PF;
use super::payload::PayloadKind as P;
use serde::{Deserialize, Serialize};

/// Which socket a message travels on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    /// The front-end's socket: front-end requests, back-end replies.
    Main,
    /// The socket passed with SET_BACKEND_REQ_FD: back-end requests,
    /// front-end replies.
    Backend,
}

/// What the receiver sends back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// No reply (an ack only with REPLY_ACK and NEED_REPLY).
    None,
    /// Always a reply with this payload.
    Always(P),
    /// A reply with this payload only when the feature is negotiated.
    IfFeature(PF, P),
}

/// File descriptors that travel with the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fds {
    None,
    One,
    /// One, or none when the NOFD bit (8) of the u64 payload is set.
    OneUnlessNofd,
    /// One per memory region of the table.
    PerRegion,
    /// One when the feature is negotiated, else none.
    OneIfFeature(PF),
    /// None (SHOULD); one is tolerated and must be closed unused.
    NoneOrOne,
}

/// What must be negotiated before the request may be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    None,
    /// The back-end offered VHOST_USER_F_PROTOCOL_FEATURES (bit 30).
    ProtocolFeaturesOffered,
    /// Bit 30 negotiated (see the session's strictness profile).
    ProtocolFeaturesNegotiated,
    Feature(PF),
    /// A virtio feature bit negotiated with SET_FEATURES.
    VirtioFeature(u32),
}

/// One row of the request tables.
#[derive(Debug, Clone, Copy)]
pub struct RequestInfo {
    pub id: u32,
    pub name: &'static str,
    pub payload: P,
    pub reply: Reply,
    pub fds: Fds,
    pub gate: Gate,
    /// Reply file descriptors: how many a successful reply may carry.
    pub reply_fds: usize,
}

const fn req(
    id: u32,
    name: &'static str,
    payload: P,
    reply: Reply,
    fds: Fds,
    gate: Gate,
) -> RequestInfo {
    RequestInfo {
        id,
        name,
        payload,
        reply,
        fds,
        gate,
        reply_fds: 0,
    }
}
const fn with_reply_fd(mut r: RequestInfo) -> RequestInfo {
    r.reply_fds = 1;
    r
}

use Fds as F;
use Gate as G;
use Reply as R;

/// Front-end requests, ids 1-45 (index = id - 1).
pub static FRONT_END: [RequestInfo; 45] = [
    req(
        1,
        "GET_FEATURES",
        P::Empty,
        R::Always(P::U64),
        F::None,
        G::None,
    ),
    req(2, "SET_FEATURES", P::U64, R::None, F::None, G::None),
    req(3, "SET_OWNER", P::Empty, R::None, F::None, G::None),
    req(4, "RESET_OWNER", P::Empty, R::None, F::None, G::None),
    req(
        5,
        "SET_MEM_TABLE",
        P::MemTable,
        R::None,
        F::PerRegion,
        G::None,
    ),
    req(
        6,
        "SET_LOG_BASE",
        P::Log,
        R::IfFeature(PF::LogShmfd, P::U64),
        F::OneIfFeature(PF::LogShmfd),
        G::None,
    ),
    req(7, "SET_LOG_FD", P::Empty, R::None, F::One, G::None),
    req(8, "SET_VRING_NUM", P::VringState, R::None, F::None, G::None),
    req(9, "SET_VRING_ADDR", P::VringAddr, R::None, F::None, G::None),
    req(
        10,
        "SET_VRING_BASE",
        P::VringState,
        R::None,
        F::None,
        G::None,
    ),
    req(
        11,
        "GET_VRING_BASE",
        P::VringState,
        R::Always(P::VringState),
        F::None,
        G::None,
    ),
    req(
        12,
        "SET_VRING_KICK",
        P::U64,
        R::None,
        F::OneUnlessNofd,
        G::None,
    ),
    req(
        13,
        "SET_VRING_CALL",
        P::U64,
        R::None,
        F::OneUnlessNofd,
        G::None,
    ),
    req(
        14,
        "SET_VRING_ERR",
        P::U64,
        R::None,
        F::OneUnlessNofd,
        G::None,
    ),
    req(
        15,
        "GET_PROTOCOL_FEATURES",
        P::Empty,
        R::Always(P::U64),
        F::None,
        G::ProtocolFeaturesOffered,
    ),
    req(
        16,
        "SET_PROTOCOL_FEATURES",
        P::U64,
        R::None,
        F::None,
        G::ProtocolFeaturesOffered,
    ),
    req(
        17,
        "GET_QUEUE_NUM",
        P::Empty,
        R::Always(P::U64),
        F::None,
        G::Feature(PF::Mq),
    ),
    req(
        18,
        "SET_VRING_ENABLE",
        P::VringState,
        R::None,
        F::None,
        G::ProtocolFeaturesNegotiated,
    ),
    req(
        19,
        "SEND_RARP",
        P::U64,
        R::None,
        F::None,
        G::Feature(PF::Rarp),
    ),
    req(
        20,
        "NET_SET_MTU",
        P::U64,
        R::None,
        F::None,
        G::Feature(PF::Mtu),
    ),
    req(
        21,
        "SET_BACKEND_REQ_FD",
        P::Empty,
        R::None,
        F::One,
        G::Feature(PF::BackendReq),
    ),
    req(
        22,
        "IOTLB_MSG",
        P::Iotlb,
        R::Always(P::U64),
        F::None,
        G::VirtioFeature(super::features::F_IOMMU_PLATFORM),
    ),
    req(
        23,
        "SET_VRING_ENDIAN",
        P::VringState,
        R::None,
        F::None,
        G::Feature(PF::CrossEndian),
    ),
    req(
        24,
        "GET_CONFIG",
        P::Config,
        R::Always(P::Config),
        F::None,
        G::Feature(PF::Config),
    ),
    req(
        25,
        "SET_CONFIG",
        P::Config,
        R::None,
        F::None,
        G::Feature(PF::Config),
    ),
    req(
        26,
        "CREATE_CRYPTO_SESSION",
        P::CryptoSession,
        R::Always(P::CryptoSession),
        F::None,
        G::Feature(PF::CryptoSession),
    ),
    req(
        27,
        "CLOSE_CRYPTO_SESSION",
        P::U64,
        R::None,
        F::None,
        G::Feature(PF::CryptoSession),
    ),
    with_reply_fd(req(
        28,
        "POSTCOPY_ADVISE",
        P::Empty,
        R::Always(P::Empty),
        F::None,
        G::Feature(PF::Pagefault),
    )),
    req(
        29,
        "POSTCOPY_LISTEN",
        P::Empty,
        R::None,
        F::None,
        G::Feature(PF::Pagefault),
    ),
    req(
        30,
        "POSTCOPY_END",
        P::Empty,
        R::Always(P::U64),
        F::None,
        G::Feature(PF::Pagefault),
    ),
    with_reply_fd(req(
        31,
        "GET_INFLIGHT_FD",
        P::Inflight,
        R::IfFeature(PF::InflightShmfd, P::Inflight),
        F::None,
        G::Feature(PF::InflightShmfd),
    )),
    req(
        32,
        "SET_INFLIGHT_FD",
        P::Inflight,
        R::None,
        F::One,
        G::Feature(PF::InflightShmfd),
    ),
    req(33, "GPU_SET_SOCKET", P::Empty, R::None, F::One, G::None),
    req(
        34,
        "RESET_DEVICE",
        P::Empty,
        R::None,
        F::None,
        G::Feature(PF::ResetDevice),
    ),
    req(
        35,
        "VRING_KICK",
        P::VringState,
        R::None,
        F::None,
        G::Feature(PF::InbandNotifications),
    ),
    req(
        36,
        "GET_MAX_MEM_SLOTS",
        P::Empty,
        R::Always(P::U64),
        F::None,
        G::Feature(PF::ConfigureMemSlots),
    ),
    req(
        37,
        "ADD_MEM_REG",
        P::SingleRegion,
        R::None,
        F::One,
        G::Feature(PF::ConfigureMemSlots),
    ),
    req(
        38,
        "REM_MEM_REG",
        P::SingleRegion,
        R::None,
        F::NoneOrOne,
        G::Feature(PF::ConfigureMemSlots),
    ),
    req(
        39,
        "SET_STATUS",
        P::U64,
        R::None,
        F::None,
        G::Feature(PF::Status),
    ),
    req(
        40,
        "GET_STATUS",
        P::Empty,
        R::Always(P::U64),
        F::None,
        G::Feature(PF::Status),
    ),
    with_reply_fd(req(
        41,
        "GET_SHARED_OBJECT",
        P::SharedObject,
        R::Always(P::U64),
        F::None,
        G::Feature(PF::SharedObject),
    )),
    with_reply_fd(req(
        42,
        "SET_DEVICE_STATE_FD",
        P::DeviceState,
        R::Always(P::U64),
        F::One,
        G::Feature(PF::DeviceState),
    )),
    req(
        43,
        "CHECK_DEVICE_STATE",
        P::Empty,
        R::Always(P::U64),
        F::None,
        G::Feature(PF::DeviceState),
    ),
    req(
        44,
        "GET_SHMEM_CONFIG",
        P::Empty,
        R::Always(P::ShmemConfig),
        F::None,
        G::Feature(PF::Shmem),
    ),
    req(
        45,
        "GET_VRING_BASE_SKIP_DRAIN",
        P::VringState,
        R::Always(P::VringState),
        F::None,
        G::Feature(PF::GetVringBaseSkipDrain),
    ),
];

/// Back-end requests on the back-end channel, ids 1-10.
pub static BACK_END: [RequestInfo; 10] = [
    req(
        1,
        "BACKEND_IOTLB_MSG",
        P::Iotlb,
        R::None,
        F::None,
        G::VirtioFeature(super::features::F_IOMMU_PLATFORM),
    ),
    req(
        2,
        "BACKEND_CONFIG_CHANGE_MSG",
        P::Empty,
        R::None,
        F::None,
        G::Feature(PF::Config),
    ),
    req(
        3,
        "BACKEND_VRING_HOST_NOTIFIER_MSG",
        P::VringArea,
        R::None,
        F::OneUnlessNofd,
        G::Feature(PF::HostNotifier),
    ),
    req(
        4,
        "BACKEND_VRING_CALL",
        P::VringState,
        R::None,
        F::None,
        G::Feature(PF::InbandNotifications),
    ),
    req(
        5,
        "BACKEND_VRING_ERR",
        P::VringState,
        R::None,
        F::None,
        G::Feature(PF::InbandNotifications),
    ),
    req(
        6,
        "BACKEND_SHARED_OBJECT_ADD",
        P::SharedObject,
        R::None,
        F::None,
        G::Feature(PF::SharedObject),
    ),
    req(
        7,
        "BACKEND_SHARED_OBJECT_REMOVE",
        P::SharedObject,
        R::None,
        F::None,
        G::Feature(PF::SharedObject),
    ),
    with_reply_fd(req(
        8,
        "BACKEND_SHARED_OBJECT_LOOKUP",
        P::SharedObject,
        R::Always(P::U64),
        F::None,
        G::Feature(PF::SharedObject),
    )),
    req(
        9,
        "BACKEND_SHMEM_MAP",
        P::ShmemMap,
        R::None,
        F::One,
        G::Feature(PF::Shmem),
    ),
    req(
        10,
        "BACKEND_SHMEM_UNMAP",
        P::ShmemMap,
        R::None,
        F::None,
        G::Feature(PF::Shmem),
    ),
];

/// Looks a request up by channel and id.
pub fn lookup(channel: Channel, id: u32) -> Option<&'static RequestInfo> {
    let table: &'static [RequestInfo] = match channel {
        Channel::Main => &FRONT_END,
        Channel::Backend => &BACK_END,
    };
    id.checked_sub(1).and_then(|i| table.get(i as usize))
}

/// Finds a front-end request id by name (without the VHOST_USER_ prefix).
pub fn by_name(channel: Channel, name: &str) -> Option<&'static RequestInfo> {
    let table: &'static [RequestInfo] = match channel {
        Channel::Main => &FRONT_END,
        Channel::Backend => &BACK_END,
    };
    table.iter().find(|r| r.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `:id:` of the spec entry that starts with ``VHOST_USER_<name>``.
    fn spec_id(spec: &str, name: &str) -> Option<u32> {
        spec.match_indices(&format!("\n``VHOST_USER_{name}``"))
            .find_map(|(start, _)| {
                let next_line = spec[start + 1..].lines().nth(1)?;
                next_line.trim().strip_prefix(":id:")?.trim().parse().ok()
            })
    }

    #[test]
    fn ids_match_their_position_and_names_are_in_the_spec() {
        let spec = include_str!("../../../specs/upstream/vhost-user.rst");
        for (i, r) in FRONT_END.iter().enumerate() {
            assert_eq!(r.id as usize, i + 1, "{}", r.name);
            assert_eq!(spec_id(spec, r.name), Some(r.id), "{}", r.name);
        }
        for (i, r) in BACK_END.iter().enumerate() {
            assert_eq!(r.id as usize, i + 1, "{}", r.name);
            assert_eq!(spec_id(spec, r.name), Some(r.id), "{}", r.name);
        }
        assert!(lookup(Channel::Main, 0).is_none());
        assert!(lookup(Channel::Main, 46).is_none());
        assert!(lookup(Channel::Backend, 11).is_none());
    }
}
