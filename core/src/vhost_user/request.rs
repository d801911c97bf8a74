//! Every request of the current spec (sections "Front-end message types" and
//! "Back-end message types"), in one table per channel: its id, name,
//! payload, reply, file descriptors and the feature that gates it. The
//! `requests!` macro turns each table into a typed enum ([`FrontEnd`],
//! [`BackEnd`]) and the rows callers look up ([`RequestInfo`]); ids, id
//! ranges and counts all come from the table, so a new request is one line.

use super::features::{self as feat, ProtocolFeature as PF};
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
    /// No file descriptor.
    None,
    /// Exactly one file descriptor.
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
    /// Nothing: the request may always be sent.
    None,
    /// The back-end offered VHOST_USER_F_PROTOCOL_FEATURES (bit 30).
    ProtocolFeaturesOffered,
    /// Bit 30 negotiated (see the session's strictness profile).
    ProtocolFeaturesNegotiated,
    /// The protocol feature negotiated with SET_PROTOCOL_FEATURES.
    Feature(PF),
    /// A virtio feature bit negotiated with SET_FEATURES.
    VirtioFeature(u32),
}

/// A request of either channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Request {
    /// A front-end request (main channel).
    Front(FrontEnd),
    /// A back-end request (back-end channel).
    Back(BackEnd),
}

/// One row of the request tables.
#[derive(Debug, Clone, Copy)]
pub struct RequestInfo {
    /// The request, typed.
    pub request: Request,
    /// The wire id (`request` as a number).
    pub id: u32,
    /// The name as the spec spells it, after `VHOST_USER_`.
    pub name: &'static str,
    /// The socket the request travels on.
    pub channel: Channel,
    /// The layout of the request's payload.
    pub payload: P,
    /// What the receiver sends back.
    pub reply: Reply,
    /// File descriptors that travel with the request.
    pub fds: Fds,
    /// What must be negotiated before the request may be sent.
    pub gate: Gate,
    /// Reply file descriptors: how many a successful reply may carry.
    pub reply_fds: usize,
}

/// Declares one channel's request table: `Variant = id, "NAME", payload
/// kind, reply, fds, gate[, reply_fds n];` per row. It generates the enum
/// (discriminant = wire id), its `ALL` list, and the static table of
/// [`RequestInfo`] rows in the same order.
macro_rules! requests {
    (
        $(#[$doc:meta])* $Enum:ident, $TABLE:ident, $channel:expr, $wrap:path;
        $( $Variant:ident = $id:literal, $name:literal, $payload:ident, $reply:expr, $fds:expr, $gate:expr $(, reply_fds $rfds:literal)?; )*
    ) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u32)]
        pub enum $Enum {
            $(
                #[doc = concat!("`VHOST_USER_", $name, "` (id ", stringify!($id), ", payload `", stringify!($payload), "`): see its entry in the spec.")]
                $Variant = $id,
            )*
        }

        impl $Enum {
            /// Every request of the channel, in id order.
            pub const ALL: &'static [$Enum] = &[$( $Enum::$Variant ),*];

            /// The request with wire id `id`; `None` for an id the channel does not define.
            pub fn from_id(id: u32) -> Option<$Enum> {
                match id {
                    $( $id => Some($Enum::$Variant), )*
                    _ => None,
                }
            }
            /// The wire id (the header's `request` field).
            pub const fn id(self) -> u32 {
                self as u32
            }
            /// The row of each wire id in the table (ids are below 256),
            /// built at compile time: a message costs one load, not a scan
            /// of the table (50 traced comparisons under the fuzzers).
            const POSITION: [u8; 256] = {
                let mut t = [0u8; 256];
                let mut i = 0;
                while i < $Enum::ALL.len() {
                    t[$Enum::ALL[i] as usize] = i as u8;
                    i += 1;
                }
                t
            };
            /// The table row of this request.
            pub fn info(self) -> &'static RequestInfo {
                // The table is in enum order: the position of `self` in ALL.
                let i = Self::POSITION.get(self as usize).copied().unwrap_or(0);
                $TABLE.get(i as usize).unwrap_or(&$TABLE[0])
            }
            /// The name as the spec spells it, after `VHOST_USER_`.
            pub fn name(self) -> &'static str {
                self.info().name
            }
        }

        impl From<$Enum> for Request {
            fn from(r: $Enum) -> Request {
                $wrap(r)
            }
        }

        /// The wire id.
        impl From<$Enum> for u32 {
            fn from(r: $Enum) -> u32 {
                r.id()
            }
        }

        #[doc = concat!("The [`RequestInfo`] rows of [`", stringify!($Enum), "`], in id order.")]
        pub static $TABLE: [RequestInfo; $Enum::ALL.len()] = [
            $( RequestInfo {
                request: $wrap($Enum::$Variant),
                id: $id,
                name: $name,
                channel: $channel,
                payload: P::$payload,
                reply: $reply,
                fds: $fds,
                gate: $gate,
                reply_fds: 0 $( + $rfds )?,
            }, )*
        ];
    };
}

use Fds as F;
use Gate as G;
use Reply as R;

requests! {
    /// Front-end requests (section "Front-end message types").
    FrontEnd, FRONT_END, Channel::Main, Request::Front;
    GetFeatures = 1, "GET_FEATURES", Empty, R::Always(P::U64), F::None, G::None;
    SetFeatures = 2, "SET_FEATURES", U64, R::None, F::None, G::None;
    SetOwner = 3, "SET_OWNER", Empty, R::None, F::None, G::None;
    ResetOwner = 4, "RESET_OWNER", Empty, R::None, F::None, G::None;
    SetMemTable = 5, "SET_MEM_TABLE", MemTable, R::None, F::PerRegion, G::None;
    SetLogBase = 6, "SET_LOG_BASE", Log, R::IfFeature(PF::LogShmfd, P::U64), F::OneIfFeature(PF::LogShmfd), G::None;
    SetLogFd = 7, "SET_LOG_FD", Empty, R::None, F::One, G::None;
    SetVringNum = 8, "SET_VRING_NUM", VringState, R::None, F::None, G::None;
    SetVringAddr = 9, "SET_VRING_ADDR", VringAddr, R::None, F::None, G::None;
    SetVringBase = 10, "SET_VRING_BASE", VringState, R::None, F::None, G::None;
    GetVringBase = 11, "GET_VRING_BASE", VringState, R::Always(P::VringState), F::None, G::None;
    SetVringKick = 12, "SET_VRING_KICK", U64, R::None, F::OneUnlessNofd, G::None;
    SetVringCall = 13, "SET_VRING_CALL", U64, R::None, F::OneUnlessNofd, G::None;
    SetVringErr = 14, "SET_VRING_ERR", U64, R::None, F::OneUnlessNofd, G::None;
    GetProtocolFeatures = 15, "GET_PROTOCOL_FEATURES", Empty, R::Always(P::U64), F::None, G::ProtocolFeaturesOffered;
    SetProtocolFeatures = 16, "SET_PROTOCOL_FEATURES", U64, R::None, F::None, G::ProtocolFeaturesOffered;
    GetQueueNum = 17, "GET_QUEUE_NUM", Empty, R::Always(P::U64), F::None, G::Feature(PF::Mq);
    SetVringEnable = 18, "SET_VRING_ENABLE", VringState, R::None, F::None, G::ProtocolFeaturesNegotiated;
    SendRarp = 19, "SEND_RARP", U64, R::None, F::None, G::Feature(PF::Rarp);
    NetSetMtu = 20, "NET_SET_MTU", U64, R::None, F::None, G::Feature(PF::Mtu);
    SetBackendReqFd = 21, "SET_BACKEND_REQ_FD", Empty, R::None, F::One, G::Feature(PF::BackendReq);
    IotlbMsg = 22, "IOTLB_MSG", Iotlb, R::Always(P::U64), F::None, G::VirtioFeature(feat::F_IOMMU_PLATFORM);
    SetVringEndian = 23, "SET_VRING_ENDIAN", VringState, R::None, F::None, G::Feature(PF::CrossEndian);
    GetConfig = 24, "GET_CONFIG", Config, R::Always(P::Config), F::None, G::Feature(PF::Config);
    SetConfig = 25, "SET_CONFIG", Config, R::None, F::None, G::Feature(PF::Config);
    CreateCryptoSession = 26, "CREATE_CRYPTO_SESSION", CryptoSession, R::Always(P::CryptoSession), F::None, G::Feature(PF::CryptoSession);
    CloseCryptoSession = 27, "CLOSE_CRYPTO_SESSION", U64, R::None, F::None, G::Feature(PF::CryptoSession);
    PostcopyAdvise = 28, "POSTCOPY_ADVISE", Empty, R::Always(P::Empty), F::None, G::Feature(PF::Pagefault), reply_fds 1;
    PostcopyListen = 29, "POSTCOPY_LISTEN", Empty, R::None, F::None, G::Feature(PF::Pagefault);
    PostcopyEnd = 30, "POSTCOPY_END", Empty, R::Always(P::U64), F::None, G::Feature(PF::Pagefault);
    GetInflightFd = 31, "GET_INFLIGHT_FD", Inflight, R::IfFeature(PF::InflightShmfd, P::Inflight), F::None, G::Feature(PF::InflightShmfd), reply_fds 1;
    SetInflightFd = 32, "SET_INFLIGHT_FD", Inflight, R::None, F::One, G::Feature(PF::InflightShmfd);
    GpuSetSocket = 33, "GPU_SET_SOCKET", Empty, R::None, F::One, G::None;
    ResetDevice = 34, "RESET_DEVICE", Empty, R::None, F::None, G::Feature(PF::ResetDevice);
    VringKick = 35, "VRING_KICK", VringState, R::None, F::None, G::Feature(PF::InbandNotifications);
    GetMaxMemSlots = 36, "GET_MAX_MEM_SLOTS", Empty, R::Always(P::U64), F::None, G::Feature(PF::ConfigureMemSlots);
    AddMemReg = 37, "ADD_MEM_REG", SingleRegion, R::None, F::One, G::Feature(PF::ConfigureMemSlots);
    RemMemReg = 38, "REM_MEM_REG", SingleRegion, R::None, F::NoneOrOne, G::Feature(PF::ConfigureMemSlots);
    SetStatus = 39, "SET_STATUS", U64, R::None, F::None, G::Feature(PF::Status);
    GetStatus = 40, "GET_STATUS", Empty, R::Always(P::U64), F::None, G::Feature(PF::Status);
    GetSharedObject = 41, "GET_SHARED_OBJECT", SharedObject, R::Always(P::U64), F::None, G::Feature(PF::SharedObject), reply_fds 1;
    SetDeviceStateFd = 42, "SET_DEVICE_STATE_FD", DeviceState, R::Always(P::U64), F::One, G::Feature(PF::DeviceState), reply_fds 1;
    CheckDeviceState = 43, "CHECK_DEVICE_STATE", Empty, R::Always(P::U64), F::None, G::Feature(PF::DeviceState);
    GetShmemConfig = 44, "GET_SHMEM_CONFIG", Empty, R::Always(P::ShmemConfig), F::None, G::Feature(PF::Shmem);
    GetVringBaseSkipDrain = 45, "GET_VRING_BASE_SKIP_DRAIN", VringState, R::Always(P::VringState), F::None, G::Feature(PF::GetVringBaseSkipDrain);
}

requests! {
    /// Back-end requests on the back-end channel (section "Back-end message types").
    BackEnd, BACK_END, Channel::Backend, Request::Back;
    BackendIotlbMsg = 1, "BACKEND_IOTLB_MSG", Iotlb, R::None, F::None, G::VirtioFeature(feat::F_IOMMU_PLATFORM);
    BackendConfigChangeMsg = 2, "BACKEND_CONFIG_CHANGE_MSG", Empty, R::None, F::None, G::Feature(PF::Config);
    BackendVringHostNotifierMsg = 3, "BACKEND_VRING_HOST_NOTIFIER_MSG", VringArea, R::None, F::OneUnlessNofd, G::Feature(PF::HostNotifier);
    BackendVringCall = 4, "BACKEND_VRING_CALL", VringState, R::None, F::None, G::Feature(PF::InbandNotifications);
    BackendVringErr = 5, "BACKEND_VRING_ERR", VringState, R::None, F::None, G::Feature(PF::InbandNotifications);
    BackendSharedObjectAdd = 6, "BACKEND_SHARED_OBJECT_ADD", SharedObject, R::None, F::None, G::Feature(PF::SharedObject);
    BackendSharedObjectRemove = 7, "BACKEND_SHARED_OBJECT_REMOVE", SharedObject, R::None, F::None, G::Feature(PF::SharedObject);
    BackendSharedObjectLookup = 8, "BACKEND_SHARED_OBJECT_LOOKUP", SharedObject, R::Always(P::U64), F::None, G::Feature(PF::SharedObject), reply_fds 1;
    BackendShmemMap = 9, "BACKEND_SHMEM_MAP", ShmemMap, R::None, F::One, G::Feature(PF::Shmem);
    BackendShmemUnmap = 10, "BACKEND_SHMEM_UNMAP", ShmemMap, R::None, F::None, G::Feature(PF::Shmem);
}

/// The request table of a channel, in id order.
pub fn table(channel: Channel) -> &'static [RequestInfo] {
    match channel {
        Channel::Main => &FRONT_END,
        Channel::Backend => &BACK_END,
    }
}

/// Looks a request up by channel and id.
pub fn lookup(channel: Channel, id: u32) -> Option<&'static RequestInfo> {
    match channel {
        Channel::Main => FrontEnd::from_id(id).map(FrontEnd::info),
        Channel::Backend => BackEnd::from_id(id).map(BackEnd::info),
    }
}

/// Finds a request by name (without the VHOST_USER_ prefix).
pub fn by_name(channel: Channel, name: &str) -> Option<&'static RequestInfo> {
    table(channel).iter().find(|r| r.name == name)
}

/// The ids a channel defines, as the spec numbers them ("1-45").
pub fn id_range(channel: Channel) -> String {
    let t = table(channel);
    match (t.first(), t.last()) {
        (Some(a), Some(b)) => format!("{}-{}", a.id, b.id),
        _ => String::new(),
    }
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
        assert!(lookup(Channel::Main, FRONT_END.len() as u32 + 1).is_none());
        assert!(lookup(Channel::Backend, BACK_END.len() as u32 + 1).is_none());
        assert_eq!(id_range(Channel::Main), "1-45");
        assert_eq!(id_range(Channel::Backend), "1-10");
        // The enum, its table row and the wire id agree.
        for r in FrontEnd::ALL {
            assert_eq!(FrontEnd::from_id(r.id()), Some(*r));
            assert_eq!(r.info().request, Request::Front(*r));
            assert_eq!(r.info().id, r.id());
        }
        for r in BackEnd::ALL {
            assert_eq!(BackEnd::from_id(r.id()), Some(*r));
            assert_eq!(r.info().request, Request::Back(*r));
        }
    }
}
