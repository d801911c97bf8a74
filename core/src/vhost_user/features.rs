//! Feature bits (spec sections "Communication" and "Protocol features").

/// Virtio feature bit 30, reused to gate protocol feature negotiation.
pub const F_PROTOCOL_FEATURES: u32 = 30;
/// Virtio feature bit 26: log all writes (migration).
pub const F_LOG_ALL: u32 = 26;
/// Virtio feature bit 32: VIRTIO_F_VERSION_1.
pub const F_VERSION_1: u32 = 32;
/// Virtio feature bit 33: VIRTIO_F_IOMMU_PLATFORM (gates IOTLB messages).
pub const F_IOMMU_PLATFORM: u32 = 33;

/// Declares the protocol features once, `Variant = bit, "NAME";` per row:
/// the enum, its names and the mask of the bits the spec defines.
macro_rules! protocol_features {
    ($( $Variant:ident = $bit:literal, $name:literal; )*) => {
        /// The protocol features of the current spec, by bit.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
        pub enum ProtocolFeature {
            $(
                #[doc = concat!("`VHOST_USER_PROTOCOL_F_", $name, "` (bit ", stringify!($bit), ").")]
                $Variant = $bit,
            )*
        }

        impl ProtocolFeature {
            /// Every protocol feature, by bit.
            pub const ALL: &'static [ProtocolFeature] = &[$( ProtocolFeature::$Variant ),*];

            /// The feature as a mask (`1 << bit`) of the protocol features u64.
            pub fn bit(self) -> u64 {
                1 << (self as u32)
            }
            /// The name as the spec spells it, after VHOST_USER_PROTOCOL_F_.
            pub fn name(self) -> &'static str {
                match self {
                    $( ProtocolFeature::$Variant => $name, )*
                }
            }
        }

        /// Every protocol feature bit the current spec defines.
        pub const KNOWN_PROTOCOL_FEATURES: u64 = 0 $( | 1 << $bit )*;
    };
}

protocol_features! {
    Mq = 0, "MQ";
    LogShmfd = 1, "LOG_SHMFD";
    Rarp = 2, "RARP";
    ReplyAck = 3, "REPLY_ACK";
    Mtu = 4, "MTU";
    BackendReq = 5, "BACKEND_REQ";
    CrossEndian = 6, "CROSS_ENDIAN";
    CryptoSession = 7, "CRYPTO_SESSION";
    Pagefault = 8, "PAGEFAULT";
    Config = 9, "CONFIG";
    BackendSendFd = 10, "BACKEND_SEND_FD";
    HostNotifier = 11, "HOST_NOTIFIER";
    InflightShmfd = 12, "INFLIGHT_SHMFD";
    ResetDevice = 13, "RESET_DEVICE";
    InbandNotifications = 14, "INBAND_NOTIFICATIONS";
    ConfigureMemSlots = 15, "CONFIGURE_MEM_SLOTS";
    Status = 16, "STATUS";
    XenMmap = 17, "XEN_MMAP";
    SharedObject = 18, "SHARED_OBJECT";
    DeviceState = 19, "DEVICE_STATE";
    GetVringBaseInflight = 20, "GET_VRING_BASE_INFLIGHT";
    GpaAddresses = 21, "GPA_ADDRESSES";
    Shmem = 22, "SHMEM";
    GetVringBaseSkipDrain = 23, "GET_VRING_BASE_SKIP_DRAIN";
}

/// Names of the protocol feature bits set in `bits` ("bit N" for unknown ones).
pub fn protocol_feature_names(bits: u64) -> Vec<String> {
    (0..64)
        .filter(|b| bits >> b & 1 == 1)
        .map(|b| {
            ProtocolFeature::ALL
                .iter()
                .find(|f| f.bit() == 1 << b)
                .map_or_else(|| format!("bit {b}"), |f| f.name().to_string())
        })
        .collect()
}

/// Whether the protocol features `bits` include `f`.
pub fn has(bits: u64, f: ProtocolFeature) -> bool {
    bits & f.bit() != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_protocol_feature_is_the_specs_define() {
        let spec = include_str!("../../../specs/upstream/vhost-user.rst");
        let defines: Vec<(String, u32)> = spec
            .lines()
            .filter_map(|l| {
                let rest = l.trim().strip_prefix("#define VHOST_USER_PROTOCOL_F_")?;
                let mut w = rest.split_whitespace();
                Some((w.next()?.to_string(), w.next()?.parse().ok()?))
            })
            .collect();
        let ours: Vec<(String, u32)> = ProtocolFeature::ALL
            .iter()
            .map(|f| (f.name().to_string(), f.bit().trailing_zeros()))
            .collect();
        assert_eq!(ours, defines);
        assert_eq!(KNOWN_PROTOCOL_FEATURES, (1 << 24) - 1);
        assert_eq!(
            protocol_feature_names(0x9 | 1 << 40),
            ["MQ", "REPLY_ACK", "bit 40"]
        );
    }
}
