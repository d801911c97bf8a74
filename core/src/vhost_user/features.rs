//! Feature bits (spec sections "Communication" and "Protocol features").

/// Virtio feature bit 30, reused to gate protocol feature negotiation.
pub const F_PROTOCOL_FEATURES: u32 = 30;
/// Virtio feature bit 26: log all writes (migration).
pub const F_LOG_ALL: u32 = 26;
/// Virtio feature bit 32: VIRTIO_F_VERSION_1.
pub const F_VERSION_1: u32 = 32;
/// Virtio feature bit 33: VIRTIO_F_IOMMU_PLATFORM (gates IOTLB messages).
pub const F_IOMMU_PLATFORM: u32 = 33;

/// The protocol features of the current spec, by bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum ProtocolFeature {
    Mq = 0,
    LogShmfd = 1,
    Rarp = 2,
    ReplyAck = 3,
    Mtu = 4,
    BackendReq = 5,
    CrossEndian = 6,
    CryptoSession = 7,
    Pagefault = 8,
    Config = 9,
    BackendSendFd = 10,
    HostNotifier = 11,
    InflightShmfd = 12,
    ResetDevice = 13,
    InbandNotifications = 14,
    ConfigureMemSlots = 15,
    Status = 16,
    XenMmap = 17,
    SharedObject = 18,
    DeviceState = 19,
    GetVringBaseInflight = 20,
    GpaAddresses = 21,
    Shmem = 22,
    GetVringBaseSkipDrain = 23,
}

impl ProtocolFeature {
    pub fn bit(self) -> u64 {
        1 << (self as u32)
    }
    pub fn name(self) -> &'static str {
        PROTOCOL_FEATURE_NAMES[self as usize]
    }
}

/// Names as the spec spells them, after VHOST_USER_PROTOCOL_F_.
pub const PROTOCOL_FEATURE_NAMES: [&str; 24] = [
    "MQ",
    "LOG_SHMFD",
    "RARP",
    "REPLY_ACK",
    "MTU",
    "BACKEND_REQ",
    "CROSS_ENDIAN",
    "CRYPTO_SESSION",
    "PAGEFAULT",
    "CONFIG",
    "BACKEND_SEND_FD",
    "HOST_NOTIFIER",
    "INFLIGHT_SHMFD",
    "RESET_DEVICE",
    "INBAND_NOTIFICATIONS",
    "CONFIGURE_MEM_SLOTS",
    "STATUS",
    "XEN_MMAP",
    "SHARED_OBJECT",
    "DEVICE_STATE",
    "GET_VRING_BASE_INFLIGHT",
    "GPA_ADDRESSES",
    "SHMEM",
    "GET_VRING_BASE_SKIP_DRAIN",
];

/// Bits 0-23: every protocol feature the current spec defines.
pub const KNOWN_PROTOCOL_FEATURES: u64 = (1 << 24) - 1;

/// Names of the protocol feature bits set in `bits` ("bit N" for unknown ones).
pub fn protocol_feature_names(bits: u64) -> Vec<String> {
    (0..64)
        .filter(|b| bits >> b & 1 == 1)
        .map(|b| {
            PROTOCOL_FEATURE_NAMES
                .get(b as usize)
                .map_or_else(|| format!("bit {b}"), |n| n.to_string())
        })
        .collect()
}

pub fn has(bits: u64, f: ProtocolFeature) -> bool {
    bits & f.bit() != 0
}
