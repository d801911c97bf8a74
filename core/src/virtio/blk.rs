//! virtio-blk requests (virtio 1.2 §5.2.6): a 16-byte header the device
//! reads (le32 type, le32 reserved, le64 sector), the data, and one status
//! byte the device writes.

use super::split_ring::Buffer;

/// Bytes of a sector: "The sector number indicates the offset (multiplied
/// by 512) where the read or write is to occur." (§5.2.6)
pub const SECTOR: u64 = 512;
/// Bytes of the header the device reads.
pub const HEADER_LEN: u32 = 16;
/// Bytes of the device id a GET_ID returns: "the device ID string ... up to
/// 20 bytes" (VIRTIO_BLK_ID_BYTES, §5.2.6).
pub const ID_BYTES: u32 = 20;

/// The request types this driver sends (§5.2.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestType {
    /// VIRTIO_BLK_T_IN (0): read sectors into device-writable data.
    In,
    /// VIRTIO_BLK_T_OUT (1): write device-readable data to sectors.
    Out,
    /// VIRTIO_BLK_T_FLUSH (4).
    Flush,
    /// VIRTIO_BLK_T_GET_ID (8).
    GetId,
}

impl RequestType {
    /// The type field's value.
    pub fn code(self) -> u32 {
        match self {
            RequestType::In => 0,
            RequestType::Out => 1,
            RequestType::Flush => 4,
            RequestType::GetId => 8,
        }
    }

    /// Whether the data buffer is device-writable.
    pub fn device_writes_data(self) -> bool {
        matches!(self, RequestType::In | RequestType::GetId)
    }
}

/// The status byte (§5.2.6): OK 0, IOERR 1, UNSUPP 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// VIRTIO_BLK_S_OK.
    Ok,
    /// VIRTIO_BLK_S_IOERR.
    IoErr,
    /// VIRTIO_BLK_S_UNSUPP.
    Unsupp,
    /// A value the spec does not define.
    Other(u8),
}

impl Status {
    /// The status of the byte the device wrote.
    pub fn decode(b: u8) -> Status {
        match b {
            0 => Status::Ok,
            1 => Status::IoErr,
            2 => Status::Unsupp,
            v => Status::Other(v),
        }
    }
}

/// The 16-byte request header for `kind` at `sector`.
pub fn header(kind: RequestType, sector: u64) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&kind.code().to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    h
}

/// Where one request's three parts lie in guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// The header.
    pub header: u64,
    /// The data (`data_len` bytes; none for a flush).
    pub data: u64,
    /// Bytes of data.
    pub data_len: u32,
    /// The status byte.
    pub status: u64,
}

/// A request: its type, sector, and where its parts go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// What it asks.
    pub kind: RequestType,
    /// First sector (ignored by the device for flush and get-id).
    pub sector: u64,
    /// Its buffers.
    pub at: Placement,
}

impl Request {
    /// The chain to post: header (device-readable), data if any (readable
    /// for OUT, writable for IN and GET_ID), status (writable, one byte).
    /// "The driver MUST place any device-writable descriptor elements after
    /// any device-readable descriptor elements." (§2.7.4.2)
    pub fn buffers(&self) -> Vec<Buffer> {
        let mut v = vec![Buffer {
            addr: self.at.header,
            len: HEADER_LEN,
            writable: false,
        }];
        if self.at.data_len > 0 {
            v.push(Buffer {
                addr: self.at.data,
                len: self.at.data_len,
                writable: self.kind.device_writes_data(),
            });
        }
        v.push(Buffer {
            addr: self.at.status,
            len: 1,
            writable: true,
        });
        v
    }

    /// The header bytes to write at `at.header`.
    pub fn header(&self) -> [u8; 16] {
        header(self.kind, self.sector)
    }

    /// The most a used length may say for this request: the data the
    /// device writes plus the status byte.
    pub fn writable_len(&self) -> u64 {
        let data = if self.kind.device_writes_data() {
            self.at.data_len as u64
        } else {
            0
        };
        data + 1
    }
}

/// The capacity field of the virtio-blk configuration space: "capacity ...
/// in 512-byte sectors" at offset 0 (§5.2.4), le64.
pub fn capacity(config: &[u8]) -> Option<u64> {
    let b: [u8; 8] = config.get(..8)?.try_into().ok()?;
    Some(u64::from_le_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_type_reserved_sector_little_endian() {
        let h = header(RequestType::Out, 0x0102_0304_0506_0708);
        assert_eq!(&h[0..4], &[1, 0, 0, 0]);
        assert_eq!(&h[4..8], &[0; 4]);
        assert_eq!(&h[8..16], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(header(RequestType::GetId, 0)[0], 8);
        assert_eq!(header(RequestType::Flush, 0)[0], 4);
        assert_eq!(header(RequestType::In, 0)[0], 0);
    }

    #[test]
    fn readable_buffers_come_before_writable_ones() {
        let at = Placement {
            header: 0x100,
            data: 0x1000,
            data_len: 4096,
            status: 0x2000,
        };
        for kind in [RequestType::In, RequestType::Out, RequestType::GetId] {
            let b = Request {
                kind,
                sector: 8,
                at,
            }
            .buffers();
            assert_eq!(b.len(), 3);
            let first_w = b.iter().position(|b| b.writable).unwrap();
            assert!(b[first_w..].iter().all(|b| b.writable), "{kind:?}: {b:?}");
            assert_eq!(
                b[2],
                Buffer {
                    addr: 0x2000,
                    len: 1,
                    writable: true
                }
            );
        }
        let flush = Request {
            kind: RequestType::Flush,
            sector: 0,
            at: Placement { data_len: 0, ..at },
        };
        assert_eq!(flush.buffers().len(), 2);
        assert_eq!(flush.writable_len(), 1);
        assert_eq!(
            Request {
                kind: RequestType::In,
                sector: 0,
                at
            }
            .writable_len(),
            4097
        );
    }

    #[test]
    fn status_and_capacity_decode() {
        assert_eq!(Status::decode(0), Status::Ok);
        assert_eq!(Status::decode(1), Status::IoErr);
        assert_eq!(Status::decode(2), Status::Unsupp);
        assert_eq!(Status::decode(0xff), Status::Other(0xff));
        assert_eq!(capacity(&131072u64.to_le_bytes()), Some(131072));
        assert_eq!(capacity(&[1, 2, 3]), None);
    }
}
